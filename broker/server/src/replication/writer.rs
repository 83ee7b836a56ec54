//! How the replica thread's writes reach the journal: most go to the journal thread, but with
//! `fsync = never` a WAL append the journal thread is not busy with is done on the replica
//! thread itself.
//!
//! Why: a replicated send crosses about ten threads end to end, and on a machine whose cores
//! are busy each wake-up waits ~0.25 ms for a core (`perf sched latency`, docs/benchmarks.md).
//! On a backup, handing a prepare's WAL append to the journal thread and its completion back
//! costs two of those wake-ups on the critical path of every send, to move work that takes as
//! long as a wake-up: with no fsync, an append is one copy into the page cache. The journal
//! thread is kept for what must not hold up the replica thread — fsyncs (`fsync = always`), a
//! checkpoint's partition syncs, superblocks — and for the writeback hints after appends.
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
}

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
        }
    }

    /// Issues `write`: deferred to [`Self::flush`] if it is an append that may be made inline,
    /// else handed to the journal thread after any deferred ones are made.
    pub fn write(&mut self, io: u64, write: Write) {
        let inline = self.inline.is_some()
            && self.unfinished == 0
            && matches!(write, Write::Wal { .. });
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
        let (ios, writes): (Vec<u64>, Vec<Write>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .unzip();
        match lock(journal).write_all(&writes) {
            Ok(bodies) => {
                self.done.extend(ios);
                self.bodies.extend(bodies);
            }
            Err(e) => super::fail_stop(&format!("cannot write the replication journal: {e}")),
        }
        if !self.writeback_queued.swap(true, Ordering::AcqRel) {
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

/// The journal, whoever panicked holding it last (a panic stops the process anyway).
pub fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|e| e.into_inner())
}
