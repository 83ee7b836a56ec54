//! Message deduplication: a message whose id one of its partition's newest messages already
//! carries is dropped from its batch instead of stored (Iggy's `[system.message_deduplication]`).
//!
//! Iggy keeps the ids it saw in a per-process cache. A replicated broker cannot: every replica
//! must drop exactly the same messages, whatever it restarted, restored or state-synced, or
//! their logs part. So here the window is a function of the log alone. For a message that would
//! take offset `n` in a batch stamped `t`, it is the ids of the messages at offsets
//! `n - max_entries .. n` whose timestamp is at least [`Deduplication::cutoff`]`(t)`.
//! [`IdWindow`] keeps those ids in memory as appends go; it is dropped whenever the log changes
//! in any other way, and read back from the log's tail the next time it is needed. Both ways
//! give the same answer on every replica, because the log is the same on every replica.
//!
//! Reading the tail back needs it on local disk: tiering keeps the segments holding a
//! partition's last `max_entries` messages local while deduplication is on
//! (`tiering::uploader`), and messages stored before deduplication was turned on (or its
//! settings changed) never count, by the `since` cutoff, so segments evicted before cannot
//! matter.

use iggy_wire::message::{FrameHeader, FrameIter};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Deduplication as a broker is configured for it (`[message_deduplication]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeduplicationSettings {
    /// How many of a partition's newest messages a new message's id is compared with.
    pub max_entries: u32,
    /// How old (µs, by the batch's timestamp) a message may be and still count; 0: any age.
    pub expiry: u64,
}

/// The deduplication in force, as the catalog holds it (replicated: the primary's settings,
/// committed as an operation, so every replica uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduplication {
    #[serde(flatten)]
    pub settings: DeduplicationSettings,
    /// Messages stored before this (µs) never count: later than every message stored before
    /// the settings took effect (`apply::messages::set_deduplication`).
    pub since: u64,
}

impl Deduplication {
    /// The oldest timestamp a message may carry and still count against a batch stamped
    /// `timestamp`.
    pub fn cutoff(&self, timestamp: u64) -> u64 {
        let by_age = match self.settings.expiry {
            0 => 0,
            expiry => timestamp.saturating_sub(expiry),
        };
        by_age.max(self.since)
    }

    /// Whether a message seen at (offset, timestamp) counts for one taking offset `next`
    /// with `cutoff`.
    fn counts(&self, (offset, timestamp): (u64, u64), next: u64, cutoff: u64) -> bool {
        offset >= self.reach(next) && timestamp >= cutoff
    }

    /// The first offset that counts for a message taking offset `next`: where the window a
    /// partition whose next offset is `next` must keep readable starts.
    pub fn reach(&self, next: u64) -> u64 {
        next.saturating_sub(self.settings.max_entries as u64)
    }
}

/// Whether some message of the batch `messages` was sent with an id of its own (not 0).
pub fn carries_an_id(messages: &[u8]) -> bool {
    FrameIter::new(messages)
        .map_while(Result::ok)
        .filter_map(FrameHeader::new)
        .any(|header| header.id() != 0)
}

/// The ids of a partition's newest messages, for [`Deduplication`].
pub struct IdWindow {
    settings: Deduplication,
    /// (id, offset, timestamp), oldest first.
    entries: VecDeque<(u128, u64, u64)>,
    /// Each id's newest (offset, timestamp) among `entries`, and ids `trim` dropped from
    /// `entries` since the last sweep ([`Self::sweep`]): a lookup checks the offset and
    /// timestamp it finds, so an id left behind answers "not seen", and trimming costs no
    /// lookup per message.
    newest: HashMap<u128, (u64, u64), IdHash>,
    /// Entries [`Self::drop_duplicates`] added for messages sent with id 0, whose ids are
    /// known once the batch is stamped ([`Self::adopt_ids`]).
    unstamped: bool,
}

impl IdWindow {
    pub fn new(settings: Deduplication) -> Self {
        Self {
            settings,
            entries: VecDeque::new(),
            newest: HashMap::with_hasher(IdHash::new()),
            unstamped: false,
        }
    }

    pub fn settings(&self) -> &Deduplication {
        &self.settings
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds the stored frames `frames` (consecutive offsets from `base_offset`), as the log
    /// holds them. Frames stamped before `since` are skipped.
    pub fn remember(&mut self, frames: &[u8], base_offset: u64) {
        for (i, frame) in FrameIter::new(frames).map_while(Result::ok).enumerate() {
            let Some(header) = FrameHeader::new(frame) else {
                break;
            };
            self.push(header.id(), base_offset + i as u64, header.timestamp());
        }
    }

    fn push(&mut self, id: u128, offset: u64, timestamp: u64) {
        if timestamp < self.settings.since {
            return;
        }
        self.newest.insert(id, (offset, timestamp));
        self.entries.push_back((id, offset, timestamp));
    }

    /// Forgets what no longer counts for a message taking offset `next` in a batch stamped
    /// `timestamp` (timestamps never decrease along a partition, so those are the oldest
    /// entries).
    pub fn trim(&mut self, next: u64, timestamp: u64) {
        let (reach, cutoff) = (self.settings.reach(next), self.settings.cutoff(timestamp));
        while let Some(&(_, offset, timestamp)) = self.entries.front() {
            if offset >= reach && timestamp >= cutoff {
                break;
            }
            self.entries.pop_front();
        }
        self.sweep(reach, cutoff);
    }

    /// Drops the map's ids that no longer count, once it holds twice as many as the window
    /// (each sweep is paid for by as many appends as it removes).
    fn sweep(&mut self, reach: u64, cutoff: u64) {
        if self.newest.len() <= 2 * self.entries.len().max(1024) {
            return;
        }
        self.newest
            .retain(|_, &mut (offset, timestamp)| offset >= reach && timestamp >= cutoff);
    }

    /// Moves the frames of `messages` (a validated batch whose first message would take offset
    /// `next`, to be stamped `timestamp`) that are not duplicates to its front, in order,
    /// remembers them, and returns their length and how many were dropped. A message sent with
    /// id 0 gets a fresh id when stamped, so it is never a duplicate; its entry takes that id
    /// in [`Self::adopt_ids`]. A message whose id an earlier one of the batch carries is a
    /// duplicate like any other (the earlier one is remembered by then).
    pub fn drop_duplicates(
        &mut self,
        messages: &mut [u8],
        next: u64,
        timestamp: u64,
    ) -> (usize, u32) {
        let settings = self.settings;
        let cutoff = settings.cutoff(timestamp);
        let (mut read, mut write, mut kept, mut dropped) = (0usize, 0usize, 0u64, 0u32);
        while read < messages.len() {
            let frame = FrameHeader::new(&messages[read..]).map(|h| (h.id(), h.frame_len()));
            let Some((id, len)) = frame.filter(|&(_, len)| len <= (messages.len() - read) as u64)
            else {
                // Not a validated batch after all: keep the rest as it is, dropping nothing;
                // the append refuses it.
                let rest = messages.len() - read;
                messages.copy_within(read.., write);
                return (write + rest, dropped);
            };
            let len = len as usize;
            let offset = next + kept;
            let counted = timestamp >= settings.since;
            let duplicate = match (id, counted) {
                (0, _) => false,
                // One lookup both judges and remembers the message.
                (_, true) => match self.newest.entry(id) {
                    Entry::Occupied(seen) if settings.counts(*seen.get(), offset, cutoff) => true,
                    Entry::Occupied(mut seen) => {
                        seen.insert((offset, timestamp));
                        false
                    }
                    Entry::Vacant(slot) => {
                        slot.insert((offset, timestamp));
                        false
                    }
                },
                // Stamped before `since`: nothing counts, nothing is remembered.
                (_, false) => false,
            };
            if duplicate {
                dropped += 1;
            } else {
                if write != read {
                    messages.copy_within(read..read + len, write);
                }
                if counted {
                    self.entries.push_back((id, offset, timestamp));
                    self.unstamped |= id == 0;
                }
                write += len;
                kept += 1;
            }
            read += len;
        }
        (write, dropped)
    }

    /// Gives the entries of messages sent with id 0 the ids the append stamped into `frames`
    /// (the batch [`Self::drop_duplicates`] kept, as written).
    pub fn adopt_ids(&mut self, frames: &[u8], base_offset: u64) {
        if !std::mem::take(&mut self.unstamped) {
            return;
        }
        let newest = &mut self.newest;
        let from = self.entries.partition_point(|e| e.1 < base_offset);
        let stamped = FrameIter::new(frames).map_while(Result::ok);
        for (entry, frame) in self.entries.range_mut(from..).zip(stamped) {
            if entry.0 == 0 {
                if let Some(header) = FrameHeader::new(frame) {
                    entry.0 = header.id();
                    newest.insert(entry.0, (entry.1, entry.2));
                }
            }
        }
    }
}

/// Hashes ids with XXH3 under a seed drawn per window: fast (a lookup per message sent), and
/// ids chosen by clients to collide cannot be aimed at a seed they do not know.
#[derive(Clone)]
struct IdHash {
    seed: u64,
}

impl IdHash {
    fn new() -> Self {
        use std::hash::BuildHasher;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            seed: self.seed,
            hash: 0,
        }
    }
}

struct IdHasher {
    seed: u64,
    hash: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.hash = xxh3_64_with_seed(bytes, self.seed ^ self.hash);
    }

    fn write_u128(&mut self, id: u128) {
        self.write(&id.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iggy_wire::message::{stamp_batch, HEADER_SIZE};

    /// A batch of frames with these ids (payload of 10 bytes each).
    fn frames(ids: &[u128]) -> Vec<u8> {
        let mut out = Vec::new();
        for id in ids {
            let mut frame = vec![0u8; HEADER_SIZE + 10];
            frame[8..24].copy_from_slice(&id.to_le_bytes());
            frame[52..56].copy_from_slice(&10u32.to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    fn ids_of(bytes: &[u8]) -> Vec<u128> {
        FrameIter::new(bytes)
            .map(|f| FrameHeader::new(f.unwrap()).unwrap().id())
            .collect()
    }

    fn settings(max_entries: u32, expiry: u64) -> Deduplication {
        Deduplication {
            settings: DeduplicationSettings {
                max_entries,
                expiry,
            },
            since: 0,
        }
    }

    /// Filters `ids` as a batch at `next`, stamped `timestamp`, as an append does.
    fn send(window: &mut IdWindow, ids: &[u128], next: u64, timestamp: u64) -> Vec<u128> {
        window.trim(next, timestamp);
        let mut batch = frames(ids);
        let (len, _) = window.drop_duplicates(&mut batch, next, timestamp);
        batch.truncate(len);
        let mut fresh = 1000u128;
        stamp_batch(
            &mut batch,
            next,
            timestamp,
            || {
                fresh += 1;
                fresh
            },
            |_, _| {},
        );
        window.adopt_ids(&batch, next);
        ids_of(&batch)
    }

    #[test]
    fn a_seen_id_is_dropped_and_the_rest_keep_their_order() {
        let mut window = IdWindow::new(settings(100, 0));
        assert_eq!(send(&mut window, &[1, 2, 3], 0, 10), vec![1, 2, 3]);
        assert_eq!(send(&mut window, &[4, 2, 5, 3], 3, 20), vec![4, 5]);
        assert_eq!(
            send(&mut window, &[7, 7, 8], 5, 30),
            vec![7, 8],
            "in one batch"
        );
        assert_eq!(
            send(&mut window, &[1, 2, 3, 4, 5], 7, 40),
            Vec::<u128>::new()
        );
    }

    #[test]
    fn messages_sent_with_id_zero_are_never_duplicates() {
        let mut window = IdWindow::new(settings(100, 0));
        assert_eq!(send(&mut window, &[0, 0], 0, 10), vec![1001, 1002]);
        assert_eq!(send(&mut window, &[0], 2, 10), vec![1001]);
    }

    #[test]
    fn only_the_newest_max_entries_messages_count() {
        let mut window = IdWindow::new(settings(3, 0));
        send(&mut window, &[1, 2, 3], 0, 10);
        // Offset 3 compares with offsets 0..3; offset 4 with 1..4.
        assert_eq!(send(&mut window, &[4, 1], 3, 10), vec![4, 1]);
        assert_eq!(window.len(), 5);
        window.trim(5, 0);
        assert_eq!(window.len(), 3);
        // Offset 1 (id 2) is out of reach of offset 5; offset 3 (id 4) is not of offset 6.
        assert_eq!(send(&mut window, &[2, 4], 5, 10), vec![2]);
    }

    #[test]
    fn messages_older_than_the_expiry_or_since_do_not_count() {
        let mut window = IdWindow::new(settings(100, 50));
        send(&mut window, &[1], 0, 100);
        send(&mut window, &[2], 1, 140);
        assert_eq!(
            send(&mut window, &[1, 2], 2, 151),
            vec![1],
            "1 is 51 µs old"
        );
        let mut later = IdWindow::new(Deduplication {
            since: 120,
            ..settings(100, 0)
        });
        let mut log = frames(&[5, 6]);
        stamp_batch(&mut log, 0, 110, || 0, |_, _| {});
        later.remember(&log, 0);
        assert_eq!(later.len(), 0, "stored before since");
        assert_eq!(send(&mut later, &[5, 6], 2, 130), vec![5, 6]);
    }

    #[test]
    fn an_id_seen_again_after_it_expired_counts_from_its_newest_copy() {
        let mut window = IdWindow::new(settings(2, 0));
        send(&mut window, &[9], 0, 10);
        send(&mut window, &[1, 2], 1, 10);
        assert_eq!(
            send(&mut window, &[9], 3, 10),
            vec![9],
            "offset 0 is out of reach"
        );
        // Trimming the old copy at offset 0 must not forget the new one at offset 3.
        window.trim(4, 0);
        assert_eq!(send(&mut window, &[9], 4, 10), Vec::<u128>::new());
    }
}
