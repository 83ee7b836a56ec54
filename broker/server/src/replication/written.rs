//! The partitions the applies wrote since the journal thread last looked: the journal starts
//! their writeback after each group of writes, and syncs them before a checkpoint. Listing every
//! partition instead cost a vector of all of them per journal batch — 10,000 `Arc`s for a
//! broker with 10,000 partitions, on every prepare.

use crate::state::partition::Partition;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Keyed by the partition's address: one entry however often it was written.
type Set = BTreeMap<usize, Arc<Partition>>;

#[derive(Default)]
pub struct WrittenPartitions {
    since_writeback: Mutex<Set>,
    since_checkpoint: Mutex<Set>,
}

fn lock(set: &Mutex<Set>) -> std::sync::MutexGuard<'_, Set> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

impl WrittenPartitions {
    /// An apply appended to `partition` (the replica thread, after the write).
    pub fn note(&self, partition: &Arc<Partition>) {
        let key = Arc::as_ptr(partition) as usize;
        for set in [&self.since_writeback, &self.since_checkpoint] {
            lock(set).entry(key).or_insert_with(|| partition.clone());
        }
    }

    /// The partitions written since the last call, for their writeback to start.
    pub fn take_for_writeback(&self) -> Vec<Arc<Partition>> {
        std::mem::take(&mut *lock(&self.since_writeback))
            .into_values()
            .collect()
    }

    /// The partitions written since the last checkpoint, for a checkpoint to sync. Everything
    /// an op up to the checkpoint wrote is here: the core issues the checkpoint's write after
    /// applying those ops, on the thread that notes them.
    pub fn take_for_checkpoint(&self) -> Vec<Arc<Partition>> {
        std::mem::take(&mut *lock(&self.since_checkpoint))
            .into_values()
            .collect()
    }
}
