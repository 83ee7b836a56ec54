//! A bounded pool for password hashing. An argon2id run costs about 19 MiB and tens of
//! milliseconds of a core; run without a bound, a burst of logins (1,000 wrong passwords at
//! once) took 6.8 GB and starved logged-in clients for seconds. Here at most `workers` runs
//! happen at once on the blocking pool, at most `queue` callers wait for a turn, and none waits
//! longer than `wait`: the rest are refused at once with [`HashBusy`], which the client sees as
//! a plain error it may retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

pub struct HashPool {
    turns: Semaphore,
    workers: usize,
    waiting: AtomicUsize,
    queue: usize,
    wait: Duration,
}

/// The pool had no turn for this caller within its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is busy ({workers} running, {queue} waiting at most); retry later")]
pub struct HashBusy {
    pub workers: usize,
    pub queue: usize,
}

impl HashPool {
    /// `workers` 0 takes half the cores, at least one.
    pub fn new(workers: usize, queue: usize, wait: Duration) -> Self {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        } else {
            workers
        };
        Self {
            turns: Semaphore::new(workers),
            workers,
            waiting: AtomicUsize::new(0),
            queue,
            wait,
        }
    }

    /// Runs `work` on the blocking pool once a turn is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashBusy> {
        let busy = HashBusy {
            workers: self.workers,
            queue: self.queue,
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy);
        }
        let turn = tokio::time::timeout(self.wait, self.turns.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(Ok(_turn)) = turn else {
            return Err(busy);
        };
        // A panicking hash is a bug, not a client's fault; report it as a busy pool rather than
        // take the connection down with it.
        tokio::task::spawn_blocking(work).await.map_err(|_| busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_workers_run_and_the_queue_and_wait_are_bounded() {
        let pool = Arc::new(HashPool::new(1, 2, Duration::from_millis(300)));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        let mut done = 0;
        let mut refused = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(()) => done += 1,
                Err(_) => refused += 1,
            }
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one worker at a time");
        // One runs at once, two may wait (one of which gets its turn within 300 ms), the other
        // three are refused at once.
        assert!((1..=3).contains(&done), "{done} done");
        assert_eq!(done + refused, 6);
        assert!(refused >= 3, "{refused} refused");
    }
}
