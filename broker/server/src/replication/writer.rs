//! How the replica thread's writes reach the journal: most go to the journal thread, but with
//! `fsync = never` a WAL append the journal thread is not busy with is done on the replica
//! thread itself.
//!
//! Why: a replicated send crosses about ten threads end to end, and on a machine whose cores
//! are busy each wake-up waits ~0.25 ms for a core (`perf sched latency`, docs/benchmarks.md).
//! On a backup, handing a prepare's WAL append to the journal thread and its completion back
//! costs two of those wake-ups on the critical path of every send, to move work that takes as
//! long as a wake-up: with no fsync, an append is one copy into the page cache. The journal
//! thread is kept for what must not hold up the replica thread — fsyncs (`fsync = always`),
//! superblocks, checkpoints (which it passes on to the checkpointer thread) — and for the
//! writeback hints after appends.
//!
//! Order: storage must see writes in the order the core issued them (a superblock makes the
//! WAL records before it durable first, and a checkpoint names data written before it). An
//! append is done inline only while nothing handed to the journal thread is unfinished, and
//! the inline appends of one batch of outputs are done before anything later is handed over.
//! They wait until the batch's sends are out, so a primary's prepare leaves for its backups
//! before its own append.

use crate::replication::journal::{Journal, Write, WrittenBody};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the journal thread is asked to do.
pub enum JournalJob {
    /// Carry out a write and report it done (`DriverInput::WriteDone`).
    Write(u64, Write),
    /// Appends were made inline: start writing back what the applies wrote since.
    Writeback,
}

/// The replica thread's side of the journal.
pub struct JournalWriter {
    jobs: Sender<JournalJob>,
    /// The journal, when appends may be made inline (`fsync = never`).
    inline: Option<Arc<Mutex<Journal>>>,
    /// Writes handed to the journal thread whose completion has not come back.
    unfinished: usize,
    /// Appends to make inline once the current batch of outputs is carried out.
    deferred: Vec<(u64, Write)>,
    /// Inline appends made and not yet reported to the core.
    done: Vec<u64>,
    bodies: Vec<WrittenBody>,
    /// A writeback job is queued and not yet taken.
    writeback_queued: Arc<AtomicBool>,
    /// Bytes appended inline since the last writeback job was queued.
    unhinted: usize,
}

/// Inline appends of this many bytes of prepares earn a writeback job. The applies write about
/// as much into segments, which the hint starts writing back so that the next checkpoint's
/// fsync finds little left. One job per append woke the journal thread for every small request
/// (20,000 wake-ups for 20,000 requests of 10 × 100 B on every replica): a wake-up costs more
/// than the hint saves when a request writes a few kilobytes. A megabyte batch still earns one
/// per append.
const WRITEBACK_AFTER: usize = 256 << 10;

impl JournalWriter {
    /// `inline` is the journal shared with the journal thread when appends may be made here.
    pub fn new(
        jobs: Sender<JournalJob>,
        inline: Option<Arc<Mutex<Journal>>>,
        writeback_queued: Arc<AtomicBool>,
    ) -> Self {
        Self {
            jobs,
            inline,
            unfinished: 0,
            deferred: Vec::new(),
            done: Vec::new(),
            bodies: Vec::new(),
            writeback_queued,
            unhinted: 0,
        }
    }

    /// Issues `write`: deferred to [`Self::flush`] if it is an append that may be made inline,
    /// else handed to the journal thread after any deferred ones are made.
    pub fn write(&mut self, io: u64, write: Write) {
        let inline =
            self.inline.is_some() && self.unfinished == 0 && matches!(write, Write::Wal { .. });
        if inline {
            self.deferred.push((io, write));
            return;
        }
        self.flush();
        self.unfinished += 1;
        // The journal thread outlives the driver; a send fails only while stopping.
        let _ = self.jobs.send(JournalJob::Write(io, write));
    }

    /// Makes the deferred appends.
    pub fn flush(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let Some(journal) = &self.inline else {
            return;
        };
        let (ios, writes): (Vec<u64>, Vec<Write>) =
            std::mem::take(&mut self.deferred).into_iter().unzip();
        let bodies = write_or_stop(&mut lock(journal), &writes);
        self.done.extend(ios);
        self.bodies.extend(bodies);
        self.unhinted += writes
            .iter()
            .map(|write| match write {
                Write::Wal { prepare, .. } => prepare.body.len(),
                _ => 0,
            })
            .sum::<usize>();
        if self.unhinted >= WRITEBACK_AFTER && !self.writeback_queued.swap(true, Ordering::AcqRel) {
            self.unhinted = 0;
            let _ = self.jobs.send(JournalJob::Writeback);
        }
    }

    /// The inline appends made since the last call, as the journal thread would report them.
    pub fn take_done(&mut self) -> Option<(Vec<u64>, Vec<WrittenBody>)> {
        if self.done.is_empty() {
            return None;
        }
        Some((
            std::mem::take(&mut self.done),
            std::mem::take(&mut self.bodies),
        ))
    }

    /// The journal thread reported `count` writes done.
    pub fn finished(&mut self, count: usize) {
        self.unfinished = self.unfinished.saturating_sub(count);
    }
}

/// Carries out `writes` on `journal`, from whichever thread, or stops the replica: it cannot
/// promise what its storage did not take.
pub fn write_or_stop(journal: &mut Journal, writes: &[Write]) -> Vec<WrittenBody> {
    journal
        .write_all(writes)
        .unwrap_or_else(|e| super::fail_stop(&format!("cannot write the replication journal: {e}")))
}

/// The journal, whoever panicked holding it last (a panic stops the process anyway).
pub fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver};
    use vsr::{Op, Prepare, Superblock};

    fn append(op: Op) -> Write {
        append_of(op, 100)
    }

    fn append_of(op: Op, body_len: usize) -> Write {
        let mut header = Prepare::root(1, 1, 0).header;
        header.op = op;
        Write::Wal {
            slot: op,
            prepare: Prepare::new(header, vec![op as u8; body_len]),
        }
    }

    fn superblock() -> Write {
        Write::Superblock(
            Superblock {
                sequence: 2,
                view: 1,
                log_view: 1,
                commit: 1,
                checkpoint: 0,
                membership: vsr::Membership::UNSET,
                start_checksum: 0,
                checksum: 0,
            }
            .sealed(),
        )
    }

    fn writer(dir: &std::path::Path, inline: bool) -> (JournalWriter, Receiver<JournalJob>) {
        let journal = Arc::new(Mutex::new(Journal::open(dir, false).unwrap().0));
        let (jobs, received) = channel();
        let inline = inline.then_some(journal);
        let writer = JournalWriter::new(jobs, inline, Arc::new(AtomicBool::new(false)));
        (writer, received)
    }

    /// The ios handed to the journal thread, in order (writeback requests left out).
    fn handed_over(jobs: &Receiver<JournalJob>) -> Vec<u64> {
        jobs.try_iter()
            .filter_map(|job| match job {
                JournalJob::Write(io, _) => Some(io),
                JournalJob::Writeback => None,
            })
            .collect()
    }

    #[test]
    fn appends_wait_for_the_flush_then_are_written_here_and_reported_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, jobs) = writer(dir.path(), true);
        writer.write(1, append(1));
        writer.write(2, append(2));
        assert!(
            writer.take_done().is_none(),
            "nothing written before the flush"
        );
        writer.flush();
        let (ios, _) = writer.take_done().unwrap();
        assert_eq!(ios, vec![1, 2]);
        assert!(handed_over(&jobs).is_empty());
        let image = Journal::open(dir.path(), false).unwrap().1;
        assert_eq!(image.wal.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_write_for_the_journal_thread_comes_after_the_appends_before_it_and_holds_back_later_ones()
    {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, jobs) = writer(dir.path(), true);
        writer.write(1, append(1));
        // The superblock goes to the thread: the append issued before it is made first.
        writer.write(2, superblock());
        assert_eq!(writer.take_done().map(|(ios, _)| ios), Some(vec![1]));
        assert_eq!(handed_over(&jobs), vec![2]);
        // While the thread has the superblock unfinished, appends queue behind it there.
        writer.write(3, append(3));
        writer.flush();
        assert!(writer.take_done().is_none());
        assert_eq!(handed_over(&jobs), vec![3]);
        writer.finished(2);
        writer.write(4, append(4));
        writer.flush();
        assert_eq!(writer.take_done().map(|(ios, _)| ios), Some(vec![4]));
    }

    #[test]
    fn without_inline_appends_everything_goes_to_the_journal_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, jobs) = writer(dir.path(), false);
        writer.write(1, append(1));
        writer.flush();
        assert!(writer.take_done().is_none());
        assert_eq!(handed_over(&jobs), vec![1]);
    }

    fn writebacks(jobs: &Receiver<JournalJob>) -> usize {
        jobs.try_iter()
            .filter(|job| matches!(job, JournalJob::Writeback))
            .count()
    }

    #[test]
    fn small_appends_earn_a_writeback_job_only_once_they_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, jobs) = writer(dir.path(), true);
        for op in 1..=20 {
            writer.write(op, append(op));
            writer.flush();
        }
        assert_eq!(writebacks(&jobs), 0, "2,000 bytes wake nobody");
        writer.write(21, append_of(21, WRITEBACK_AFTER));
        writer.flush();
        assert_eq!(writebacks(&jobs), 1);
        // Queued and not yet taken: no second job however much follows.
        writer.write(22, append_of(22, WRITEBACK_AFTER));
        writer.flush();
        assert_eq!(writebacks(&jobs), 0);
        writer.writeback_queued.store(false, Ordering::Release);
        writer.write(23, append(23));
        writer.flush();
        assert_eq!(
            writebacks(&jobs),
            1,
            "what piled up while one was queued counts"
        );
    }
}
