//! The partitions the applies wrote since the journal thread last looked: the journal starts
//! their writeback after each group of writes, and syncs them before a checkpoint. Listing every
//! partition instead cost a vector of all of them per journal batch — 10,000 `Arc`s for a
//! broker with 10,000 partitions, on every prepare.
//!
//! The sets hold weak references: a partition deleted meanwhile needs no sync (no checkpoint
//! after its deletion names it, and a restart from an earlier one replays its writes from the
//! WAL onto data that checkpoint synced), and a strong one kept a deleted partition — with its
//! in-memory index, 16 bytes a message — alive until the next checkpoint, which on an idle
//! replica never comes (16 MiB per million messages after a load whose stream was deleted).

use crate::state::partition::Partition;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// Keyed by the partition's address: one entry however often it was written.
type Set<T> = BTreeMap<usize, Weak<T>>;

/// Generic only so that tests need not open partitions.
pub struct WrittenPartitions<T = Partition> {
    since_writeback: Mutex<Set<T>>,
    since_checkpoint: Mutex<Set<T>>,
}

impl<T> Default for WrittenPartitions<T> {
    fn default() -> Self {
        Self {
            since_writeback: Mutex::default(),
            since_checkpoint: Mutex::default(),
        }
    }
}

fn lock<T>(set: &Mutex<Set<T>>) -> std::sync::MutexGuard<'_, Set<T>> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

/// The partitions of `set` still alive; empties it.
fn take_alive<T>(set: &Mutex<Set<T>>) -> Vec<Arc<T>> {
    std::mem::take(&mut *lock(set))
        .into_values()
        .filter_map(|weak| weak.upgrade())
        .collect()
}

impl<T> WrittenPartitions<T> {
    /// An apply appended to `partition` (the replica thread, after the write).
    pub fn note(&self, partition: &Arc<T>) {
        let key = Arc::as_ptr(partition) as usize;
        for set in [&self.since_writeback, &self.since_checkpoint] {
            let mut set = lock(set);
            let entry = set.entry(key).or_default();
            // A partition dropped since may have left its address to this one.
            if entry.strong_count() == 0 {
                *entry = Arc::downgrade(partition);
            }
        }
    }

    /// The partitions written since the last call, for their writeback to start.
    pub fn take_for_writeback(&self) -> Vec<Arc<T>> {
        take_alive(&self.since_writeback)
    }

    /// The partitions written since the last checkpoint, for a checkpoint to sync. Everything
    /// an op up to the checkpoint wrote is here: the core issues the checkpoint's write after
    /// applying those ops, on the thread that notes them.
    pub fn take_for_checkpoint(&self) -> Vec<Arc<T>> {
        take_alive(&self.since_checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_dropped_before_the_checkpoint_is_neither_kept_alive_nor_synced() {
        let written = WrittenPartitions::default();
        let (kept, deleted) = (
            Arc::new("kept".to_string()),
            Arc::new("deleted".to_string()),
        );
        written.note(&kept);
        written.note(&deleted);
        written.note(&kept);
        let weak = Arc::downgrade(&deleted);
        drop(deleted);
        assert!(weak.upgrade().is_none(), "the sets do not keep it alive");
        assert_eq!(written.take_for_writeback(), std::slice::from_ref(&kept));
        assert_eq!(written.take_for_checkpoint(), std::slice::from_ref(&kept));
        assert!(written.take_for_checkpoint().is_empty());
    }

    #[test]
    fn a_partition_at_the_address_of_a_dropped_one_is_noted() {
        let written = WrittenPartitions::default();
        let first = Arc::new(1u64);
        written.note(&first);
        // Put a dead entry where the next partition lives, as a reused address would.
        let second = Arc::new(2u64);
        let key = Arc::as_ptr(&second) as usize;
        let dead = Arc::downgrade(&Arc::new(3u64));
        lock(&written.since_checkpoint).insert(key, dead);
        written.note(&second);
        let mut synced = written.take_for_checkpoint();
        synced.sort();
        assert_eq!(synced, [first, second]);
    }
}
