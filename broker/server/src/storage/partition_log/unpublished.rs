//! Batches written ahead of their commit. A replicated send waits for the backups'
//! acknowledgements and then for the primary's own apply, whose segment write (about half a
//! millisecond per megabyte here) lay on the path of every send. The primary now writes a
//! send's stamped frames past the active segment's end while the backups work
//! ([`PartitionLog::write_unpublished`]); the apply of the same op only writes the index
//! entries and counts the batch in ([`PartitionLog::publish`]).
//!
//! Until then the bytes are invisible: reads go by the segment's size and index, which do not
//! cover them. Whatever else changes the log's tail first — another append, a roll or seal, a
//! cut, a restart, a synced append, an index rebuild — cuts them off the file
//! ([`PartitionLog::drop_unpublished`]), so a sealed or uploaded segment never holds them.
//! A crash leaves them past what the replication checkpoint recorded, and restoring it cuts
//! them with the rest of the tail it did not cover.

use super::{Appended, PartitionLog, Stamped};
use crate::storage::StorageError;

/// A batch written past the active segment's end, not yet part of the log.
pub struct Unpublished {
    number: u64,
    stamped: Stamped,
    len: usize,
}

impl PartitionLog {
    /// Stamps `messages` as [`PartitionLog::append`] would now, and writes them past the
    /// active segment's end without taking them in. `None` when the batch would start a new
    /// segment: rolling is a change of the log, left to the apply. Replaces what an earlier
    /// call wrote and did not publish.
    pub fn write_unpublished(
        &mut self,
        messages: &mut [u8],
        now_micros: u64,
        new_id: impl FnMut() -> u128,
    ) -> Result<Option<Unpublished>, StorageError> {
        self.drop_unpublished()?;
        if self.must_roll_for(messages.len()) || messages.is_empty() {
            return Ok(None);
        }
        let stamped = self.stamp(messages, now_micros, new_id);
        self.active().write_past_end(messages)?;
        self.written_ahead += 1;
        self.unpublished = Some(self.written_ahead);
        Ok(Some(Unpublished {
            number: self.written_ahead,
            stamped,
            len: messages.len(),
        }))
    }

    /// Takes in a batch [`Self::write_unpublished`] wrote, as the append of `messages`
    /// stamped at `now_micros` would have: `messages` must be the frames it stamped. `None`
    /// when the log changed since (the bytes were cut off) or the batch is another: the caller
    /// appends it the ordinary way.
    pub fn publish(
        &mut self,
        batch: Unpublished,
        messages: &[u8],
        now_micros: u64,
    ) -> Result<Option<Appended>, StorageError> {
        let stamped = &batch.stamped;
        let still = self.unpublished == Some(batch.number)
            && batch.len == messages.len()
            && stamped.now_micros == now_micros
            && stamped.base_offset == self.next_offset()
            && stamped.base_position == self.active().size
            && stamped.timestamp == now_micros.max(self.last_timestamp);
        if !still {
            self.drop_unpublished()?;
            return Ok(None);
        }
        self.unpublished = None;
        self.last_checksum = None;
        let active_index = self.segments.len() - 1;
        self.segments[active_index].take_written(messages.len() as u64, &stamped.entries)?;
        Ok(Some(self.count_in(&batch.stamped, messages)))
    }

    /// Cuts what [`Self::write_unpublished`] wrote off the active segment's file. Kept marked
    /// when the cut fails, so the next change of the tail tries again before writing.
    pub fn drop_unpublished(&mut self) -> Result<(), StorageError> {
        if self.unpublished.is_some() {
            let active = self.active();
            active.log.set_len(active.size)?;
            self.unpublished = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::partition_log::{tests::batch, PartitionLog};
    use iggy_wire::message::FrameHeader;

    const SEGMENT: u64 = 4096;

    /// `n` messages of `size` bytes each, sent without ids (the broker gives them theirs).
    fn sent(n: usize, size: usize) -> Vec<u8> {
        let mut out = batch(n, size);
        let mut at = 0;
        while at < out.len() {
            out[at + 8..at + 24].fill(0);
            at += FrameHeader::new(&out[at..]).unwrap().frame_len() as usize;
        }
        out
    }

    fn open(dir: &tempfile::TempDir) -> PartitionLog {
        PartitionLog::open(dir.path(), SEGMENT, false).unwrap().0
    }

    fn ids() -> impl FnMut() -> u128 {
        let mut next = 100;
        move || {
            next += 1;
            next
        }
    }

    fn file_len(log: &PartitionLog) -> u64 {
        std::fs::metadata(&log.active().log_path).unwrap().len()
    }

    fn read_all(log: &PartitionLog) -> Vec<u8> {
        let mut out = Vec::new();
        let plan = log
            .plan_read(0, u32::MAX, usize::MAX)
            .expect("the log plans a read");
        plan.read_into(&mut out).expect("what the log holds reads");
        out
    }

    /// A published batch leaves the log byte for byte as an ordinary append of the same batch
    /// at the same time does, and is unseen until published.
    #[test]
    fn a_published_batch_is_the_append_it_stands_for() {
        let ahead_dir = tempfile::tempdir().unwrap();
        let plain_dir = tempfile::tempdir().unwrap();
        let mut ahead = open(&ahead_dir);
        let mut plain = open(&plain_dir);
        for log in [&mut ahead, &mut plain] {
            log.append(&mut sent(1, 10), 1_000, ids()).unwrap();
        }
        let mut messages = sent(2, 20);
        let unpublished = ahead
            .write_unpublished(&mut messages, 2_000, ids())
            .unwrap()
            .expect("it fits the active segment");
        assert_eq!(ahead.next_offset(), 1, "not counted before it is published");
        assert_eq!(read_all(&ahead).len(), read_all(&plain).len());
        let appended = ahead
            .publish(unpublished, &messages, 2_000)
            .unwrap()
            .expect("nothing changed in between");
        let expected = plain.append(&mut sent(2, 20), 2_000, ids()).unwrap();
        assert_eq!(appended, expected);
        assert_eq!(read_all(&ahead), read_all(&plain));
        assert_eq!(
            ahead.last_checksum().unwrap(),
            plain.last_checksum().unwrap()
        );
        assert_eq!(file_len(&ahead), file_len(&plain));
    }

    /// Anything else that changes the tail first cuts the unpublished bytes off, and the
    /// batch is then refused: the apply appends it the ordinary way.
    #[test]
    fn another_change_first_cuts_the_unpublished_bytes_and_refuses_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(&dir);
        log.append(&mut sent(1, 10), 1_000, ids()).unwrap();
        let before = file_len(&log);
        let mut messages = sent(3, 100);
        let unpublished = log
            .write_unpublished(&mut messages, 2_000, ids())
            .unwrap()
            .unwrap();
        assert!(file_len(&log) > before);
        log.append(&mut sent(1, 1), 2_000, ids()).unwrap();
        let after = file_len(&log);
        assert_eq!(after, log.active().size, "no stale bytes past the end");
        assert_eq!(log.publish(unpublished, &messages, 2_000).unwrap(), None);
        assert_eq!(log.next_offset(), 2);
        assert_eq!(file_len(&log), after);
    }

    /// A batch that would start a new segment is not written ahead; sealing cuts what was.
    #[test]
    fn nothing_unpublished_crosses_a_segment_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(&dir);
        log.append(&mut sent(1, 3000), 1_000, ids()).unwrap();
        let mut large = sent(1, 2000);
        assert!(log
            .write_unpublished(&mut large, 2_000, ids())
            .unwrap()
            .is_none());
        let sealed_len = log.active().size;
        let mut small = sent(1, 10);
        let unpublished = log
            .write_unpublished(&mut small, 2_000, ids())
            .unwrap()
            .unwrap();
        assert!(log.seal_active(1).unwrap());
        let sealed = &log.segments[0];
        assert_eq!(
            std::fs::metadata(&sealed.log_path).unwrap().len(),
            sealed_len
        );
        assert_eq!(log.publish(unpublished, &small, 2_000).unwrap(), None);
    }

    /// A cut back to a checkpoint, as a restore does, takes the unpublished bytes with it.
    #[test]
    fn a_cut_takes_the_unpublished_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(&dir);
        log.append(&mut sent(2, 10), 1_000, ids()).unwrap();
        let mut messages = sent(1, 10);
        log.write_unpublished(&mut messages, 2_000, ids())
            .unwrap()
            .unwrap();
        log.truncate_to(1).unwrap();
        assert_eq!(file_len(&log), log.active().size);
        assert_eq!(log.next_offset(), 1);
    }
}
