//! Giving memory and disk space back, in the background, at idle CPU priority, with a bounded
//! backlog.
//!
//! Three jobs free resources in bursts: unmapping the last mapping of a deleted WAL file (the
//! kernel frees the file's pages then: 10–25 ms for 64 MiB on tmpfs), unlinking obsolete WAL
//! files, and unlinking the segments retention deleted. Each already ran on a thread of its own
//! so the hot threads never waited for it, but at normal priority those threads still took a
//! core from them — and every replica of a cluster checkpoints at the same op, so all of them
//! reclaimed at once. The two requests after each checkpoint were the produce p99 (measured,
//! docs/benchmarks.md). Under `SCHED_IDLE` the scheduler runs this work only on a core nothing
//! else wants: p99 of replicated produce 9–10 ms → 5–6 ms with throughput unchanged.
//!
//! A thread at idle priority can starve while the cores stay busy, and what it has not freed
//! yet stays allocated. So each reclaimer has a limit: with that many jobs waiting, the
//! submitting thread runs the next one itself, at its own priority. The backlog, and the memory
//! and disk it holds, never grows past the limit.
//!
//! Not for work done under a lock others wait on (the heap trimmer holds the allocator's lock
//! while it returns pages): preempted there at idle priority, it would stall every thread that
//! allocates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send>;

/// A background thread for jobs that only free resources; see the module notes.
pub struct Reclaimer {
    /// `None` if the thread could not be started: every job then runs where it is submitted.
    queue: Option<Sender<Job>>,
    /// Jobs submitted to the thread and not finished.
    waiting: Arc<AtomicUsize>,
    limit: usize,
}

impl Reclaimer {
    /// Starts the thread `name`, which takes up to `limit` jobs before submitters run them
    /// themselves. The thread ends when the reclaimer is dropped, after the jobs it holds.
    pub fn start(name: &str, limit: usize) -> Self {
        let (queue, jobs) = channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let finished = waiting.clone();
        let thread_name = name.to_owned();
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_own_priority(&thread_name);
                for job in jobs {
                    job();
                    finished.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if let Err(e) = &started {
            tracing::warn!(thread = name, error = %e, "cannot start a reclaiming thread; its work runs inline");
        }
        Reclaimer {
            queue: started.ok().map(|_| queue),
            waiting,
            limit,
        }
    }

    /// Runs `job` on the reclaiming thread, or here if that thread already has `limit` jobs
    /// waiting (or is gone).
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let Some(queue) = &self.queue else {
            return job();
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return job();
        }
        if let Err(refused) = queue.send(Box::new(job)) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            (refused.0)();
        }
    }

    /// Jobs handed to the thread and not finished.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Puts the calling thread under `SCHED_IDLE`, or at nice 19 where that is refused. Lowering
/// one's own priority needs no privilege; failing to only costs the tail latency above.
fn lower_own_priority(thread: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        return;
    }
    let idle = std::io::Error::last_os_error();
    // SAFETY: on Linux, PRIO_PROCESS with who = 0 names the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        let nice = std::io::Error::last_os_error();
        tracing::debug!(thread, %idle, %nice, "cannot lower a reclaiming thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    #[test]
    fn jobs_run_on_the_reclaiming_thread_at_idle_priority() {
        let reclaimer = Reclaimer::start("test-reclaim", 4);
        let (seen, ran) = channel();
        reclaimer.submit(move || {
            // SAFETY: queries the calling thread's policy and nice value.
            let (policy, nice) = unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            };
            let _ = seen.send((thread_name(), policy, nice));
        });
        let (name, policy, nice) = ran.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name, "test-reclaim");
        assert!(
            policy == libc::SCHED_IDLE || nice == 19,
            "policy {policy}, nice {nice}"
        );
    }

    #[test]
    fn past_the_limit_the_submitter_runs_the_job_itself() {
        let reclaimer = Reclaimer::start("test-reclaim", 2);
        let (release, held) = sync_channel::<()>(0);
        let (seen, ran) = channel();
        // The first job holds the thread; it and the next fill the limit of two.
        reclaimer.submit(move || {
            let _ = held.recv();
        });
        let second = seen.clone();
        reclaimer.submit(move || {
            let _ = second.send(thread_name());
        });
        assert_eq!(reclaimer.waiting(), 2);
        let third = seen.clone();
        reclaimer.submit(move || {
            let _ = third.send(thread_name());
        });
        let here = thread_name();
        assert_eq!(ran.try_recv().ok(), Some(here), "ran inline, at once");
        release.send(()).unwrap();
        assert_eq!(
            ran.recv_timeout(Duration::from_secs(10)).ok().as_deref(),
            Some("test-reclaim")
        );
        drop(reclaimer);
    }
}
