//! A checkpoint's manifest, kept up to date between checkpoints instead of read from every
//! partition at each one.
//!
//! The core takes a checkpoint every 64 ops, and the manifest names every partition: its next
//! offset, its last message's checksum and its stored offsets, beside the metadata as JSON.
//! Reading all of that at each checkpoint cost about 4.5 ms with 10,000 partitions, on every
//! replica, which is 70 µs for each of the 64 ops (docs/benchmarks.md, 2026-12-05,
//! "Checkpoints that read only what changed"). Almost every op between two checkpoints is an
//! append or an offset change in one partition, so the cache rereads only the partitions such
//! ops touched. Anything else (a new topic, a group joined, a retention pass, a failed op, a
//! restored checkpoint) makes the next capture read everything again.
//!
//! Debug builds compare every capture with a full read: every test, the brokers the
//! real-process tests and `make chaos` start, and the simulator's real-apply worlds as
//! `cargo test` runs them.

use super::machine::Manifest;
use crate::ops::codec::Decoded;
use crate::ops::Operation;
use crate::state::catalog::{Catalog, PartitionIds};
use crate::state::partition::Partition;
use iggy_wire::ConsumerKind;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Tags of the offsets' kinds in a manifest.
pub const CONSUMER: u8 = 0;
pub const GROUP: u8 = 1;

/// What an op may change of a manifest, as far as the cache can follow it.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// An append: the partition it wrote.
    Append,
    /// A stored or deleted offset in one partition.
    Offsets(PartitionIds),
    /// Anything else: the next capture reads everything.
    Other,
}

impl Change {
    /// Decided before the op is applied (applying takes the operation out of `decoded`).
    pub fn of(decoded: &Decoded) -> Self {
        match decoded.other() {
            None => Change::Append,
            Some(
                Operation::StoreOffset {
                    stream,
                    topic,
                    partition,
                    ..
                }
                | Operation::DeleteOffset {
                    stream,
                    topic,
                    partition,
                    ..
                },
            ) => Change::Offsets((*stream, *topic, *partition)),
            Some(_) => Change::Other,
        }
    }
}

#[derive(Default)]
pub struct ManifestCache {
    /// `None` until the first capture and after a change it cannot follow.
    current: Option<Current>,
}

/// The last manifest captured, and how to find what changed since.
struct Current {
    /// Its partitions in catalog order; its offsets are rebuilt from `offsets` at each capture.
    manifest: Manifest,
    /// In the manifest's order: the partition, and its stored consumer and group offsets.
    partitions: Vec<Weak<Partition>>,
    offsets: Vec<[Vec<(String, u64)>; 2]>,
    by_address: HashMap<usize, usize>,
    by_ids: HashMap<PartitionIds, usize>,
    /// Indices touched since the last capture (each once: `marked`).
    changed: Vec<usize>,
    marked: Vec<bool>,
    /// Indices touched before the last capture: each partition remembers its next offset at
    /// the last two checkpoints (`Partition::note_checkpoint`), so these are noted once more.
    settling: Vec<usize>,
}

impl ManifestCache {
    /// The next capture reads every partition.
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    /// An op of kind `change` applied without error; `appended` is the partition it appended
    /// to, if any.
    pub fn applied(&mut self, change: Change, appended: Option<&Arc<Partition>>) {
        match (change, appended) {
            (Change::Append, Some(partition)) => self.appended(partition),
            (Change::Offsets(ids), None) => self.offsets_changed(ids),
            // An append that wrote nothing, or an op the cache cannot follow.
            _ => self.invalidate(),
        }
    }

    /// An apply appended to `partition`.
    pub fn appended(&mut self, partition: &Arc<Partition>) {
        let address = Arc::as_ptr(partition) as usize;
        let found = self.current.as_ref().and_then(|c| {
            let &index = c.by_address.get(&address)?;
            // An address freed by a deleted partition may be a new one's.
            c.partitions[index]
                .upgrade()
                .is_some_and(|p| Arc::ptr_eq(&p, partition))
                .then_some(index)
        });
        self.mark(found);
    }

    /// An apply stored or deleted an offset in the partition `ids`.
    pub fn offsets_changed(&mut self, ids: PartitionIds) {
        let found = self
            .current
            .as_ref()
            .and_then(|c| c.by_ids.get(&ids).copied());
        self.mark(found);
    }

    fn mark(&mut self, index: Option<usize>) {
        match (&mut self.current, index) {
            (Some(current), Some(index)) => current.mark(index),
            // Not among the partitions of the last capture: read everything next time.
            _ => self.current = None,
        }
    }

    /// The manifest of the broker's state now. Notes each partition's next offset as a
    /// checkpoint's (`Partition::note_checkpoint`), as reading every partition did.
    pub fn capture(&mut self, catalog: &Catalog, digest: u128) -> &Manifest {
        let refreshed = self.current.as_mut().is_some_and(Current::refresh);
        if !refreshed {
            self.current = Some(Current::read(catalog));
        }
        let current = self
            .current
            .as_mut()
            .expect("a capture was just made or refreshed");
        current.manifest.digest = digest;
        current.rebuild_offsets();
        debug_assert_eq!(
            current.manifest,
            Manifest::read(catalog, digest),
            "the manifest kept between checkpoints is the broker's state"
        );
        &current.manifest
    }
}

impl Current {
    fn mark(&mut self, index: usize) {
        if !self.marked[index] {
            self.marked[index] = true;
            self.changed.push(index);
        }
    }

    /// Everything, from the catalog.
    fn read(catalog: &Catalog) -> Self {
        let mut current = Current {
            manifest: Manifest {
                digest: 0,
                metadata: serde_json::to_vec(&catalog.snapshot()).unwrap_or_default(),
                partitions: Vec::new(),
                offsets: Vec::new(),
                active_starts: Some(Vec::new()),
            },
            partitions: Vec::new(),
            offsets: Vec::new(),
            by_address: HashMap::new(),
            by_ids: HashMap::new(),
            changed: Vec::new(),
            marked: Vec::new(),
            settling: Vec::new(),
        };
        let mut unreadable = Vec::new();
        for (index, (ids, partition)) in catalog.partitions().enumerate() {
            let end = read_log(partition);
            if !end.read {
                unreadable.push(index);
            }
            partition.note_checkpoint(end.next_offset);
            current
                .manifest
                .partitions
                .push((ids.0, ids.1, ids.2, end.next_offset, end.last));
            current.starts().push(end.active_start);
            current.offsets.push(read_offsets(partition));
            current.partitions.push(Arc::downgrade(partition));
            current
                .by_address
                .insert(Arc::as_ptr(partition) as usize, index);
            current.by_ids.insert(ids, index);
            current.marked.push(false);
            // Noted once here; a second time at the next capture settles each pair.
            current.settling.push(index);
        }
        // A last message that could not be read is read again at the next capture.
        for index in unreadable {
            current.mark(index);
        }
        current
    }

    /// Rereads the partitions touched since the last capture; false when one of them is gone
    /// (then everything must be read).
    fn refresh(&mut self) -> bool {
        // All of them first: a partition must not note a checkpoint twice in one capture
        // (that would raise its eviction floor past the durable checkpoint's offset).
        let Some(alive) = self
            .changed
            .iter()
            .map(|&index| self.partitions[index].upgrade().map(|p| (index, p)))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        let changed = std::mem::take(&mut self.changed);
        let mut unreadable = Vec::new();
        for (index, partition) in alive {
            let end = read_log(&partition);
            if !end.read {
                unreadable.push(index);
            }
            partition.note_checkpoint(end.next_offset);
            let entry = &mut self.manifest.partitions[index];
            (entry.3, entry.4) = (end.next_offset, end.last);
            // An append may have rolled a segment.
            self.starts()[index] = end.active_start;
            self.offsets[index] = read_offsets(&partition);
        }
        for &index in &self.settling {
            if self.marked[index] {
                continue;
            }
            if let Some(partition) = self.partitions[index].upgrade() {
                partition.note_checkpoint(self.manifest.partitions[index].3);
            }
        }
        for &index in &changed {
            self.marked[index] = false;
        }
        self.settling = changed;
        for index in unreadable {
            self.mark(index);
        }
        true
    }

    /// The manifest's active segment starts (always recorded by this build).
    fn starts(&mut self) -> &mut Vec<u64> {
        self.manifest.active_starts.get_or_insert_with(Vec::new)
    }

    fn rebuild_offsets(&mut self) {
        let offsets = &mut self.manifest.offsets;
        offsets.clear();
        for (&(stream, topic, partition, ..), kinds) in
            self.manifest.partitions.iter().zip(&self.offsets)
        {
            for (tag, entries) in [CONSUMER, GROUP].into_iter().zip(kinds) {
                for (key, offset) in entries {
                    offsets.push((stream, topic, partition, tag, key.clone(), *offset));
                }
            }
        }
    }
}

/// What a checkpoint's manifest records of a partition's log, read under one lock.
pub struct LogEnd {
    pub next_offset: u64,
    /// The last message's checksum (0 when it could not be read, see `read`).
    pub last: u64,
    pub read: bool,
    /// Where the active segment starts (`Manifest::active_starts`).
    pub active_start: u64,
}

/// A partition's next offset, its last message's checksum and whether that could be read,
/// and where its active segment starts.
pub fn read_log(partition: &Partition) -> LogEnd {
    let log = partition.log();
    // An unreadable last message records 0, which no restore will match: the checkpoint is
    // then refused rather than trusted.
    let (last, read) = match log.last_checksum() {
        Ok(last) => (last, true),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a partition for a checkpoint");
            (0, false)
        }
    };
    LogEnd {
        next_offset: log.next_offset(),
        last,
        read,
        active_start: log.active_start(),
    }
}

/// A partition's stored consumer and group offsets, each sorted by key.
pub fn read_offsets(partition: &Partition) -> [Vec<(String, u64)>; 2] {
    [ConsumerKind::Consumer, ConsumerKind::Group].map(|kind| partition.offsets(kind).entries())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{append, apply_as_root, stream_and_topic};
    use crate::ops::Operation;
    use iggy_wire::Partitioning;

    fn partition(catalog: &Catalog, id: usize) -> Arc<Partition> {
        catalog.streams[&0].topics[&0].partitions[id].clone()
    }

    /// Between two captures only the partitions whose changes were reported are read again,
    /// and the result is what reading everything gives (debug builds check that at every
    /// capture, so a change left unreported fails here and in the simulator's real-apply
    /// worlds; leaving out the append's report failed both). Each partition's eviction floor moves
    /// as it did when every capture noted every partition: to its next offset at the older of
    /// the last two checkpoints.
    #[test]
    fn a_capture_rereads_what_changed_and_equals_reading_everything() {
        let dir = tempfile::tempdir().expect("dir");
        let broker = crate::broker::open_for_tests(dir.path());
        stream_and_topic(&broker, 3);
        let messages: Vec<(u128, &[u8], &[u8])> = vec![(0, b"m", b""); 10];
        let mut cache = ManifestCache::default();
        let catalog = || broker.catalog();

        append(&broker, Partitioning::PartitionId(0), &messages);
        assert_eq!(
            cache.capture(&catalog(), 1),
            &Manifest::read(&catalog(), 1),
            "the first capture reads everything"
        );
        let p0 = partition(&catalog(), 0);
        assert_eq!(p0.eviction_floor(), 0, "one checkpoint noted: (0, 10)");

        // Appends to two partitions and an offset, reported as the applies report them.
        append(&broker, Partitioning::PartitionId(0), &messages);
        cache.appended(&p0);
        apply_as_root(
            &broker,
            Operation::StoreOffset {
                stream: 0,
                topic: 0,
                partition: 0,
                kind: iggy_wire::ConsumerKind::Consumer,
                key: "c".into(),
                offset: 3,
            },
        );
        cache.offsets_changed((0, 0, 0));
        append(&broker, Partitioning::PartitionId(1), &messages);
        cache.appended(&partition(&catalog(), 1));
        let second = cache.capture(&catalog(), 2).clone();
        assert_eq!(second, Manifest::read(&catalog(), 2));
        assert_eq!(second.partitions[1].3, 10);
        assert_eq!(second.offsets, [(0, 0, 0, CONSUMER, "c".to_string(), 3)]);
        assert_eq!(p0.eviction_floor(), 10, "(10, 20)");

        // Partition 0 unchanged: it settles at its newest offset.
        append(&broker, Partitioning::PartitionId(2), &messages);
        cache.appended(&partition(&catalog(), 2));
        assert_eq!(cache.capture(&catalog(), 3), &Manifest::read(&catalog(), 3));
        assert_eq!(p0.eviction_floor(), 20, "(20, 20)");
        assert_eq!(partition(&catalog(), 2).eviction_floor(), 0, "(0, 10)");

        // A partition the cache does not know (a new topic) makes it read everything.
        apply_as_root(
            &broker,
            Operation::CreatePartitions {
                stream: iggy_wire::Identifier::Numeric(0),
                topic: iggy_wire::Identifier::Numeric(0),
                count: 1,
            },
        );
        let p3 = partition(&catalog(), 3);
        cache.appended(&p3);
        let last = cache.capture(&catalog(), u128::MAX);
        assert_eq!(last, &Manifest::read(&catalog(), u128::MAX));
        let encoded = postcard::to_stdvec(last).expect("encodes");
        assert!(encoded.len() <= last.encoded_len_bound());
    }

    /// A partition whose last message cannot be read when a checkpoint is captured records
    /// checksum 0 (no restore will match it) and is read again at the next capture, even with
    /// no change reported for it; once readable, the manifest holds its real checksum, as a
    /// full read does. (Kept at 0 instead, the debug comparison in `capture` fails here.)
    #[test]
    fn an_unreadable_last_message_is_read_again_at_the_next_capture() {
        let dir = tempfile::tempdir().expect("dir");
        let broker = crate::broker::open_for_tests(dir.path());
        stream_and_topic(&broker, 1);
        let messages: Vec<(u128, &[u8], &[u8])> = vec![(0, b"m", b""); 10];
        append(&broker, Partitioning::PartitionId(0), &messages);
        let mut cache = ManifestCache::default();
        let catalog = || broker.catalog();
        let p0 = partition(&catalog(), 0);
        let checksum = cache.capture(&catalog(), 1).partitions[0].4;
        assert_ne!(checksum, 0);

        // The last message now sits in a sealed segment, whose file loses its bytes.
        assert!(p0.log().seal_active(10).expect("seals"));
        let file = p0.log().dir().join(format!("{:020}.log", 0));
        let bytes = std::fs::read(&file).expect("the sealed segment's file");
        assert!(!bytes.is_empty());
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("segment file")
        };
        open().set_len(0).expect("truncate");
        cache.appended(&p0);
        let unreadable = cache.capture(&catalog(), 2).clone();
        assert_eq!(unreadable.partitions[0].3, 10);
        assert_eq!(unreadable.partitions[0].4, 0, "unreadable: recorded as 0");

        // Readable again, with nothing reported for the partition.
        std::os::unix::fs::FileExt::write_all_at(&open(), &bytes, 0).expect("restore");
        let again = cache.capture(&catalog(), 3).clone();
        assert_eq!(again.partitions[0].4, checksum);
        assert_eq!(again, Manifest::read(&catalog(), 3));
    }
}
