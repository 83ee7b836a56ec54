//! The checkpointer thread: carries out the core's checkpoint writes beside the journal
//! thread instead of in its queue.
//!
//! A checkpoint must first make durable every partition written since the last one (its
//! manifest names their data, and the superblock that names it lets the WAL before it be
//! reused). Those fsyncs used to run on the journal thread, in line with the prepares: every
//! prepare queued behind a checkpoint waited for all of them — on a disk, tens of
//! milliseconds every 64 ops for small writes spread over many partitions, and for 64 MiB of
//! one partition's megabyte batches.
//!
//! Nothing else the journal writes depends on a checkpoint until the core names it in a
//! superblock, and the core issues that superblock only once the checkpoint is reported done
//! (`PendingWrite::Checkpoint` in the core), so the write need not keep its place in the queue.
//! The core takes completions in any order (the simulator completes each write after a
//! random delay). Checkpoints keep their order among themselves: one thread, one queue.

use super::driver::DriverInput;
use super::fail_stop;
use super::journal::write_checkpoint_file;
use super::written::WrittenPartitions;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use vsr::Checkpoint;

/// A checkpoint write the core issued, by its io number.
pub type Job = (u64, Box<Checkpoint>);

pub struct Checkpointer {
    /// The journal's directory, where checkpoint files live.
    pub dir: PathBuf,
    pub done: mpsc::Sender<DriverInput>,
    pub written: Arc<WrittenPartitions>,
}

impl Checkpointer {
    /// Starts the thread; it ends when the returned sender is dropped.
    pub fn start(self) -> std::io::Result<mpsc::Sender<Job>> {
        let (jobs, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("vsr-checkpoint".into())
            .spawn(move || self.run(received))?;
        Ok(jobs)
    }

    fn run(self, jobs: mpsc::Receiver<Job>) {
        while let Ok((io, checkpoint)) = jobs.recv() {
            // Everything the ops up to this checkpoint wrote is noted by now (the core issued
            // the write after applying them); what later ops wrote may be synced too.
            for partition in self.written.take_for_checkpoint() {
                if let Err(e) = partition.sync_written() {
                    fail_stop(&format!("cannot sync a partition for a checkpoint: {e}"));
                }
            }
            if let Err(e) = write_checkpoint_file(&self.dir, &checkpoint) {
                fail_stop(&format!("cannot write a checkpoint: {e}"));
            }
            if self
                .done
                .send(DriverInput::WriteDone(vec![io], Vec::new()))
                .is_err()
            {
                return;
            }
        }
    }
}
