//! The append-only log of one partition: an ordered run of segments, the active one last.
//!
//! Not thread-safe by itself; [`crate::state::partition::Partition`] wraps it in a mutex and keeps
//! fsyncs and file reads outside that mutex.

use super::checkpoint::Checkpoint;
use super::dedup::{self, Deduplication, IdWindow};
use super::descriptors::SegmentFile;
use super::l1::TailCache;
use super::recovery::{self, RecoveryReport};
use super::segment::{IndexEntry, Segment};
use super::{fsutil, graveyard, tiered, trash, IoContext, StorageError};

mod unpublished;
use bytes::Bytes;
use iggy_tiering::{Manifest, TieredSegment};
use iggy_wire::message::{checksum_matches, stamp_batch, FrameHeader, HEADER_SIZE};
use std::path::{Path, PathBuf};
pub use unpublished::Unpublished;

/// How much of a partition's tail one read takes when its deduplication window is read back.
const WINDOW_READ_BYTES: usize = 8 << 20;
/// Index entries a read plan takes from a segment in one read without first bounding them by
/// its byte budget (64 KiB of index).
const UNBOUNDED_SPAN: usize = 4096;

pub struct PartitionLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_size: u64,
    /// Whether sealing a segment fsyncs it (every policy but `never`).
    sync_on_roll: bool,
    last_timestamp: u64,
    messages_count: u64,
    size_bytes: u64,
    /// Incremented by every append; the group commit compares it with what is on disk.
    write_seq: u64,
    /// The checkpoint on disk, as far as this process knows: when it still describes the log,
    /// a clean shutdown or a running checkpoint has nothing to sync or write for it.
    checkpointed: Option<Checkpoint>,
    /// Bumped by every cut of the log: a running checkpoint captured before a cut describes
    /// bytes that may have been replaced since, so it is not installed
    /// ([`Self::install_checkpoint`]).
    cuts: u64,
    /// The sealed segments the object store holds (`storage::tiered`). Those below the first
    /// local segment exist only there; the others are on local disk too.
    tiered: Manifest,
    /// Bumped by every change of `tiered`, so the tiering loop knows when the store's copy of
    /// the manifest is behind.
    tiered_version: u64,
    /// The newest batches in memory (`storage::l1`).
    l1: TailCache,
    /// The stored checksum of the last message, as the append that wrote it stamped it; `None`
    /// after any other change, when [`Self::last_checksum`] reads it back from the segment.
    /// A replica's checkpoint asks every partition for it every 64 ops: with a thousand
    /// partitions, reading each back was a thousand reads per checkpoint: a quarter of a
    /// backup's CPU under small batches, and the p99 of every write queued behind it.
    last_checksum: Option<u64>,
    /// The ids message deduplication compares new messages with (`storage::dedup`): kept by
    /// [`Self::append_deduplicated`], dropped by every other change of the log's messages and
    /// read back from the log when next needed.
    dedup: Option<IdWindow>,
    /// A batch written past the active segment's end ahead of its commit and not published
    /// yet (`unpublished.rs`): its number. Every other change of the log's tail cuts it off
    /// first, so no sealed segment, cut or rebuilt index ever holds those bytes.
    unpublished: Option<u64>,
    /// How many batches were written ahead, to number the next.
    written_ahead: u64,
}

/// A read of a segment that only the object store holds; `storage` has no access to the
/// store, so the poll path performs it (`tiering::TierReader`).
#[derive(Debug, Clone)]
pub struct RemoteRead {
    /// `streams/<s>/topics/<t>/partitions/<p>`.
    pub key_base: String,
    pub segment: TieredSegment,
    /// The tiered segment after it, when that one is also only in the store: a consumer
    /// reading in order goes there next, so its first blocks are fetched ahead.
    pub next: Option<TieredSegment>,
    pub offset: u64,
    pub count: u32,
    pub max_bytes: usize,
}

/// A sealed local segment the object store does not hold yet.
#[derive(Debug, Clone)]
pub struct UploadCandidate {
    pub key_base: String,
    pub log_path: PathBuf,
    /// The segment's index as the broker holds it (the `.index` file may lag after a crash;
    /// memory is what recovery verified).
    pub index: Vec<u8>,
    pub segment: TieredSegment,
}

/// What retention took off the log: local segments whose files the caller unlinks, and
/// segments the object store held, whose objects go once the store's manifest no longer
/// names them.
#[derive(Default)]
pub struct Detached {
    pub local: Vec<Segment>,
    pub tiered: Vec<TieredSegment>,
    /// Segments taken in all, local or not.
    pub segments: usize,
    pub messages: u64,
    pub bytes: u64,
}

/// A batch stamped for the end of the active segment (`PartitionLog::stamp`).
struct Stamped {
    base_offset: u64,
    base_position: u64,
    timestamp: u64,
    /// The time the batch was stamped with, before the log's last timestamp raised it.
    now_micros: u64,
    entries: Vec<IndexEntry>,
    /// Where the last frame starts in the batch.
    last_start: usize,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub count: u32,
    pub bytes: u64,
    /// Sequence number to wait for when the send must be durable.
    pub seq: u64,
}

/// A byte range of one segment to read outside the partition lock. Safe because the log is
/// append-only: bytes below a segment's size never change while the broker runs.
pub struct ReadChunk {
    pub file: SegmentFile,
    pub path: PathBuf,
    /// The segment's first offset.
    pub segment: u64,
    pub position: u64,
    /// Bytes read from the file; the range's rest is `cached`.
    pub len: usize,
    /// The range's end as L1 holds it (`storage::l1`), served from memory after the `len`
    /// bytes read from the file.
    pub cached: Vec<Bytes>,
}

#[derive(Default)]
pub struct ReadPlan {
    pub chunks: Vec<ReadChunk>,
    pub count: u32,
    pub bytes: usize,
    /// Set instead of chunks when the offset is below the local window: the messages are in
    /// the object store, and `count`/`bytes` are known only once they are read.
    pub remote: Option<RemoteRead>,
}

impl ReadPlan {
    /// Appends the planned bytes to `out`, verified: corruption is never served as data.
    pub fn read_into(&self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        let at = out.len();
        self.read_intact_prefix(out)
            .inspect_err(|_| out.truncate(at))
    }

    /// How many of the planned messages, from the first, read back intact (a read that fails
    /// for another reason than damage counts none).
    pub fn intact_messages(&self) -> u32 {
        let mut bytes = Vec::new();
        match self.read_intact_prefix(&mut bytes) {
            Ok(()) => self.count,
            Err(StorageError::CorruptRead { .. }) => count_frames(&bytes),
            Err(_) => 0,
        }
    }

    /// [`read_into`](Self::read_into), except that when a frame is damaged `out` keeps the
    /// intact frames before it: a peer fetching the range can still take those (state sync),
    /// and fetch the rest elsewhere.
    pub fn read_intact_prefix(&self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        out.reserve(self.bytes);
        for chunk in &self.chunks {
            let at = out.len();
            if chunk.len > 0 {
                out.resize(at + chunk.len, 0);
                if let Err(e) = chunk.file.read_exact_at(&mut out[at..], chunk.position) {
                    out.truncate(at);
                    return Err(e);
                }
                let (intact, damage) = intact_frames(&out[at..], &chunk.path, chunk.position);
                if let Some(error) = damage {
                    out.truncate(at + intact);
                    return Err(error);
                }
            }
            // L1 holds what was written, not something read back: nothing to verify.
            for slice in &chunk.cached {
                out.extend_from_slice(slice);
            }
        }
        Ok(())
    }
}

/// The checksum field of the frame starting at `start` in `bytes` (a frame begins with it).
fn stored_checksum(bytes: &[u8], start: usize) -> Option<u64> {
    let field = bytes.get(start..start.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// How many whole frames `bytes` holds from its start (all of it verified already).
fn count_frames(bytes: &[u8]) -> u32 {
    let (mut at, mut count) = (0usize, 0u32);
    while let Some(header) = bytes.get(at..).and_then(FrameHeader::new) {
        let len = header.frame_len() as usize;
        if len == 0 || at + len > bytes.len() {
            break;
        }
        at += len;
        count += 1;
    }
    count
}

/// Checks frames read back from `path` at `position` (also objects read back from L3): their
/// length fields must tile the indexed range exactly (a flipped length would otherwise make a
/// client read half a batch) and every checksum must match (a flipped byte would otherwise be
/// served as a valid message). Boot verifies only what follows the last checkpoint, so this
/// (and the scrubber, which reads through it) is what catches rot in older data.
pub fn verify_frames_at(bytes: &[u8], path: &Path, position: u64) -> Result<(), StorageError> {
    match intact_frames(bytes, path, position) {
        (_, Some(damage)) => Err(damage),
        (_, None) => Ok(()),
    }
}

/// How many bytes of whole frames at the start of `bytes` verify, and the damage that ends
/// them (`None`: all of `bytes` does).
fn intact_frames(bytes: &[u8], path: &Path, position: u64) -> (usize, Option<StorageError>) {
    let mut at = 0usize;
    while at < bytes.len() {
        let damaged = |reason| StorageError::CorruptRead {
            path: path.to_owned(),
            position: position + at as u64,
            reason,
        };
        let Some(header) = FrameHeader::new(&bytes[at..]) else {
            return (at, Some(damaged("a frame header is cut short")));
        };
        let len = header.frame_len();
        if len > (bytes.len() - at) as u64 {
            let reason = "a frame's length runs past the range the index names";
            return (at, Some(damaged(reason)));
        }
        let frame = &bytes[at..at + len as usize];
        if !checksum_matches(frame) {
            return (at, Some(damaged("checksum mismatch")));
        }
        at += frame.len();
    }
    (at, None)
}

impl PartitionLog {
    /// Creates an empty partition directory with its first segment.
    pub fn create(dir: &Path, segment_size: u64, sync_on_roll: bool) -> Result<Self, StorageError> {
        let log = Self::create_unsynced(dir, segment_size, sync_on_roll)?;
        for level in fsutil::dirs_to_sync_after_creating(dir) {
            fsutil::sync_dir(&level)?;
        }
        Ok(log)
    }

    /// [`Self::create`] without making the new directory durable: for creating many partitions
    /// at once and syncing their directories together afterwards
    /// (`fsutil::dirs_to_sync_after_creating`, `fsutil::sync_dirs`).
    pub fn create_unsynced(
        dir: &Path,
        segment_size: u64,
        sync_on_roll: bool,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).at(dir)?;
        let segment = Segment::open(dir, 0)?;
        Ok(Self::from_segments(
            dir,
            vec![segment],
            segment_size,
            sync_on_roll,
        ))
    }

    /// The size the active segment rolls at from the next append on (`state::settings`).
    pub fn set_segment_size(&mut self, segment_size: u64) {
        self.segment_size = segment_size;
    }

    /// Opens an existing partition, recovering its tail (see [`recovery`]).
    pub fn open(
        dir: &Path,
        segment_size: u64,
        sync_on_roll: bool,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        std::fs::create_dir_all(dir).at(dir)?;
        let tiered = tiered::load(dir)?;
        let (segments, report) = recovery::recover(dir, &tiered)?;
        let mut log = Self::from_segments(dir, segments, segment_size, sync_on_roll);
        log.checkpointed = report.checkpoint;
        log.adopt_tiered(tiered)?;
        Ok((log, report))
    }

    /// Takes the tier manifest found at boot: the segments it names below the first local
    /// one must end exactly where the local ones start, and those it names at or above it must
    /// be local segments — anything else means files were lost or moved by hand.
    fn adopt_tiered(&mut self, tiered: Manifest) -> Result<(), StorageError> {
        self.last_checksum = None;
        let local_start = self.local_start();
        let inconsistent = |reason: String| StorageError::BadMetadata {
            path: self.dir.join(tiered::FILE_NAME),
            reason,
        };
        let remote: Vec<&TieredSegment> = tiered
            .segments
            .iter()
            .filter(|s| s.start_offset < local_start)
            .collect();
        if let Some(last) = remote.last() {
            if last.next_offset != local_start {
                return Err(inconsistent(format!(
                    "the object store's segments end at offset {}, but the local segments \
                     start at {local_start}",
                    last.next_offset
                )));
            }
        }
        for segment in tiered
            .segments
            .iter()
            .filter(|s| s.start_offset >= local_start)
        {
            let local = self
                .segments
                .iter()
                .find(|l| l.start_offset == segment.start_offset);
            if local.map(|l| l.next_offset()) != Some(segment.next_offset) {
                return Err(inconsistent(format!(
                    "segment {} is named by the manifest but not held locally as it says",
                    segment.start_offset
                )));
            }
        }
        self.tiered = tiered;
        self.recount();
        Ok(())
    }

    fn from_segments(
        dir: &Path,
        segments: Vec<Segment>,
        segment_size: u64,
        sync_on_roll: bool,
    ) -> Self {
        let mut log = Self {
            dir: dir.to_owned(),
            segments,
            segment_size,
            sync_on_roll,
            last_timestamp: 0,
            messages_count: 0,
            size_bytes: 0,
            write_seq: 0,
            checkpointed: None,
            cuts: 0,
            tiered: Manifest::new(),
            tiered_version: 0,
            l1: TailCache::default(),
            last_checksum: None,
            dedup: None,
            unpublished: None,
            written_ahead: 0,
        };
        log.recount();
        log
    }

    /// Derives the message count, size and last timestamp from the segments — local ones and
    /// those only the object store holds — after anything replaced them wholesale.
    fn recount(&mut self) {
        self.last_checksum = None;
        self.dedup = None;
        let (remote_messages, remote_bytes) = self
            .remote_segments()
            .iter()
            .fold((0, 0), |(m, b), s| (m + s.messages(), b + s.log_size));
        self.messages_count =
            remote_messages + self.segments.iter().map(|s| s.len() as u64).sum::<u64>();
        self.size_bytes = remote_bytes + self.segments.iter().map(|s| s.size).sum::<u64>();
        self.last_timestamp = self
            .segments
            .iter()
            .rev()
            .find_map(|s| s.last_entry().map(|e| e.timestamp))
            .unwrap_or(0);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active(&self) -> &Segment {
        // Invariant: a partition always has at least one segment (create/open/purge ensure it).
        &self.segments[self.segments.len() - 1]
    }

    pub fn next_offset(&self) -> u64 {
        self.active().next_offset()
    }

    /// The first offset of the active segment: everything below it is sealed.
    pub fn sealed_end(&self) -> u64 {
        self.active().start_offset
    }

    /// Where the part of the log the checkpoint on disk vouches for ends, as an offset: what
    /// a boot takes without verifying it. At least the sealed end (the scrubber covers sealed
    /// segments whether or not a checkpoint does).
    pub fn checkpointed_end(&self) -> Result<u64, StorageError> {
        let active = self.active();
        match self.checkpointed {
            Some(cp) if cp.segment_start == active.start_offset => {
                Ok(active.start_offset + active.messages_within(cp.position)? as u64)
            }
            _ => Ok(self.sealed_end()),
        }
    }

    /// Iggy's "current offset": the last offset written, 0 when empty.
    pub fn current_offset(&self) -> u64 {
        self.next_offset().saturating_sub(1)
    }

    pub fn first_offset(&self) -> Option<u64> {
        if let Some(remote) = self.remote_segments().first() {
            return Some(remote.start_offset);
        }
        self.local_first_offset()
    }

    /// The first offset held on local disk.
    pub fn local_first_offset(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| !s.is_empty())
            .map(|s| s.start_offset)
    }

    /// Where the local segments start: below it, segments are only in the object store.
    pub fn local_start(&self) -> u64 {
        self.segments[0].start_offset
    }

    /// The segments only the object store holds, oldest first.
    pub fn remote_segments(&self) -> &[TieredSegment] {
        let local_start = self.local_start();
        let n = self
            .tiered
            .segments
            .partition_point(|s| s.start_offset < local_start);
        &self.tiered.segments[..n]
    }

    pub fn tiered(&self) -> (&Manifest, u64) {
        (&self.tiered, self.tiered_version)
    }

    /// Where the next segment the tier manifest may record starts: where the manifest ends,
    /// or the first local offset while it names nothing. The object store takes sealed
    /// segments oldest first, so an entry for a later segment would leave a gap that the
    /// next `RecordTiered` of the segment before it could not continue.
    pub fn next_to_tier(&self) -> u64 {
        self.tiered.end().unwrap_or_else(|| self.local_start())
    }

    pub fn is_empty(&self) -> bool {
        self.messages_count == 0
    }

    pub fn messages_count(&self) -> u64 {
        self.messages_count
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Index entries held in memory, over every local segment: none once recovery is done
    /// (`segment.rs`).
    pub fn resident_index_entries(&self) -> usize {
        self.segments.iter().map(Segment::resident_entries).sum()
    }

    pub fn segments_count(&self) -> u32 {
        self.segments.len() as u32
    }

    /// The newest message's timestamp (µs), whether its segment is on local disk or only in
    /// the object store (the tier manifest is the same on every replica, what each evicted is
    /// not); 0 when the log holds none.
    pub fn newest_timestamp(&self) -> u64 {
        let tiered = self.tiered.segments.last().map_or(0, |s| s.last_timestamp);
        self.last_timestamp.max(tiered)
    }

    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    /// The active segment's log file, for the group commit's fsync.
    pub fn active_log(&self) -> SegmentFile {
        self.active().log.clone()
    }

    /// Stamps and appends a validated batch (see `iggy_wire::message::validate_batch`).
    /// Timestamps never go backwards within a partition, so time lookups can binary-search.
    pub fn append(
        &mut self,
        messages: &mut [u8],
        now_micros: u64,
        new_id: impl FnMut() -> u128,
    ) -> Result<Appended, StorageError> {
        self.drop_unpublished()?;
        if self.must_roll_for(messages.len()) {
            self.roll()?;
        }
        let stamped = self.stamp(messages, now_micros, new_id);
        self.last_checksum = None;
        let active_index = self.segments.len() - 1;
        self.segments[active_index].append(messages, &stamped.entries)?;
        Ok(self.count_in(&stamped, messages))
    }

    /// Whether a batch of `len` bytes starts a new segment: it would overfill a non-empty one.
    fn must_roll_for(&self, len: usize) -> bool {
        let active = self.active();
        active.size > 0 && active.size + len as u64 > self.segment_size
    }

    /// Stamps a batch for the end of the active segment: offsets from the log's next, the
    /// timestamp (never before the last one), ids for messages sent without; and the index
    /// entries it will add there.
    fn stamp(&self, messages: &mut [u8], now_micros: u64, new_id: impl FnMut() -> u128) -> Stamped {
        let timestamp = now_micros.max(self.last_timestamp);
        let active = self.active();
        let base_offset = active.next_offset();
        let base_relative = (base_offset - active.start_offset) as u32;
        let base_position = active.size;
        let mut entries = Vec::new();
        let (mut last_start, mut previous_end) = (0, 0);
        stamp_batch(messages, base_offset, timestamp, new_id, |i, end| {
            (last_start, previous_end) = (previous_end, end);
            entries.push(IndexEntry {
                relative_offset: base_relative + i,
                end: (base_position + end as u64) as u32,
                timestamp,
            })
        });
        Stamped {
            base_offset,
            base_position,
            timestamp,
            now_micros,
            entries,
            last_start,
        }
    }

    /// Counts a stamped batch in, once its frames and index entries are in the active segment.
    fn count_in(&mut self, stamped: &Stamped, messages: &[u8]) -> Appended {
        if !stamped.entries.is_empty() {
            self.last_checksum = stored_checksum(messages, stamped.last_start);
        }
        let start = self.active().start_offset;
        self.l1
            .push(start, stamped.base_position, messages, stamped.now_micros);
        self.last_timestamp = stamped.timestamp;
        self.messages_count += stamped.entries.len() as u64;
        self.size_bytes += messages.len() as u64;
        self.write_seq += 1;
        Appended {
            base_offset: stamped.base_offset,
            count: stamped.entries.len() as u32,
            bytes: messages.len() as u64,
            seq: self.write_seq,
        }
    }

    /// [`Self::append`] with message deduplication (`storage::dedup`): messages whose id the
    /// window holds are dropped from `messages` first (the kept frames move to its front).
    /// Returns what was appended — nothing, when every message was a duplicate — and how many
    /// messages were dropped.
    pub fn append_deduplicated(
        &mut self,
        messages: &mut [u8],
        now_micros: u64,
        new_id: impl FnMut() -> u128,
        settings: &Deduplication,
    ) -> Result<(Appended, u32), StorageError> {
        let timestamp = now_micros.max(self.last_timestamp);
        let next = self.next_offset();
        let kept = self.dedup.take().filter(|w| w.settings() == settings);
        // Producers that let the broker pick ids have nothing to compare: no window is built
        // for them. The first message that carries an id reads it back (it is the same).
        if kept.is_none() && !dedup::carries_an_id(messages) {
            return Ok((self.append(messages, now_micros, new_id)?, 0));
        }
        let mut window = match kept {
            Some(window) => window,
            None => self.read_window(*settings, false)?,
        };
        window.trim(next, timestamp);
        let (len, dropped) = window.drop_duplicates(messages, next, timestamp);
        if len == 0 {
            self.dedup = Some(window);
            let nothing = Appended {
                base_offset: next,
                count: 0,
                bytes: 0,
                seq: self.write_seq,
            };
            return Ok((nothing, dropped));
        }
        // A failed append leaves the window dropped, to be read back from what the log holds.
        let appended = self.append(&mut messages[..len], now_micros, new_id)?;
        window.adopt_ids(&messages[..len], appended.base_offset);
        self.dedup = Some(window);
        Ok((appended, dropped))
    }

    /// A single node's way past damage in its deduplication window (there are no replicas to
    /// agree with): the window is read back from the messages that verify, skipping those that
    /// do not, and kept for the next append. Their ids are not compared with until the range
    /// is repaired and the window read again.
    pub fn read_window_around_damage(
        &mut self,
        settings: Deduplication,
    ) -> Result<(), StorageError> {
        self.dedup = Some(self.read_window(settings, true)?);
        Ok(())
    }

    /// The deduplication window as the log's local tail gives it: the last `max_entries`
    /// messages, stored at or after `since` (see `storage::dedup` for why those are local).
    /// A damaged message fails the read, or with `skip_damaged` is left out.
    fn read_window(
        &self,
        settings: Deduplication,
        skip_damaged: bool,
    ) -> Result<IdWindow, StorageError> {
        let mut window = IdWindow::new(settings);
        let next = self.next_offset();
        let from = settings.reach(next).max(self.local_start());
        if from >= next {
            return Ok(window);
        }
        // Only segments with a message at or after `since` can add anything.
        let first = self.segments.iter().position(|s| {
            s.last_entry()
                .is_some_and(|e| e.timestamp >= settings.since)
        });
        let Some(first) = first else {
            return Ok(window);
        };
        // In pieces: a million large messages must not be read into memory at once.
        let mut from = from.max(self.segments[first].start_offset);
        let mut tail = Vec::new();
        while from < next {
            let plan = self.plan_read(from, (next - from) as u32, WINDOW_READ_BYTES)?;
            if plan.count == 0 {
                break;
            }
            tail.clear();
            match plan.read_into(&mut tail) {
                Ok(()) => window.remember(&tail, from),
                Err(StorageError::CorruptRead { .. }) if skip_damaged => {
                    // One message at a time, to keep those that verify.
                    for offset in from..from + plan.count as u64 {
                        tail.clear();
                        let one = self.plan_read(offset, 1, usize::MAX)?;
                        if one.read_into(&mut tail).is_ok() {
                            window.remember(&tail, offset);
                        }
                    }
                }
                Err(error) => return Err(error),
            }
            from += plan.count as u64;
        }
        Ok(window)
    }

    /// When the active segment's first message was stored (µs), if it holds any.
    pub fn active_since(&self) -> Option<u64> {
        self.active().first_entry().map(|e| e.timestamp)
    }

    /// Seals the active segment so it can be uploaded, if it holds messages and the log's next
    /// offset is `at` (a replicated seal names where the primary saw the log, so a replica
    /// applying it later cannot seal a different segment). Returns whether it sealed.
    pub fn seal_active(&mut self, at: u64) -> Result<bool, StorageError> {
        if self.active().is_empty() || self.next_offset() != at {
            return Ok(false);
        }
        self.roll()?;
        Ok(true)
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.drop_unpublished()?;
        // The last message now sits in a sealed segment, which rot and eviction may reach.
        self.last_checksum = None;
        if self.sync_on_roll {
            self.active().sync()?;
        }
        let segment = Segment::open(&self.dir, self.next_offset())?;
        if self.sync_on_roll {
            fsutil::sync_dir(&self.dir)?;
        }
        tracing::debug!(dir = %self.dir.display(), start = segment.start_offset, "new segment");
        self.segments.push(segment);
        Ok(())
    }

    /// Plans a read of up to `count` messages from `offset`, at most `max_bytes` (but always at
    /// least one message when one exists, however large). Fails only when a segment's index,
    /// read from its file, cannot be read or is damaged (`segment.rs`).
    pub fn plan_read(
        &self,
        offset: u64,
        count: u32,
        max_bytes: usize,
    ) -> Result<ReadPlan, StorageError> {
        let mut plan = ReadPlan::default();
        if offset < self.local_start() {
            if let Some(segment) = self.tiered.find(offset) {
                let local_start = self.local_start();
                let next = self
                    .tiered
                    .find(segment.next_offset)
                    .filter(|next| next.next_offset <= local_start)
                    .copied();
                plan.remote = Some(RemoteRead {
                    key_base: tiered::key_base(&self.dir),
                    segment: *segment,
                    next,
                    offset,
                    count,
                    max_bytes,
                });
                return Ok(plan);
            }
        }
        let mut next = offset;
        let mut remaining = count as usize;
        let first = self.segments.partition_point(|s| s.next_offset() <= next);
        for segment in &self.segments[first..] {
            if remaining == 0 || segment.is_empty() {
                continue;
            }
            let from = (next.max(segment.start_offset) - segment.start_offset) as usize;
            let mut upto = (from + remaining).min(segment.len());
            let budget = (max_bytes - plan.bytes) as u64;
            if upto - from > UNBOUNDED_SPAN {
                // A count far beyond what the byte budget holds (the scrubber's windows, a
                // state-sync chunk, the deduplication window ask for everything up to an end)
                // read every remaining entry of the segment for each window: 16 MB of index
                // and twice that in heap per megabyte read from a million-message segment.
                // Where the budget ends is a binary search away.
                let budget_end = segment.start_of(from)?.saturating_add(budget);
                upto = upto.min(segment.messages_within(budget_end)?.max(from + 1));
            }
            let (start, entries) = segment.span(from, upto)?;
            let budget_end = start.saturating_add(budget);
            let fit = entries.partition_point(|e| e.end as u64 <= budget_end);
            let taken = if fit == 0 && plan.count == 0 { 1 } else { fit };
            if taken == 0 {
                break;
            }
            let to = from + taken;
            let end = entries[taken - 1].end as u64;
            plan.chunks.push(ReadChunk {
                file: segment.log.clone(),
                path: segment.log_path.clone(),
                segment: segment.start_offset,
                position: start,
                len: (end - start) as usize,
                cached: Vec::new(),
            });
            plan.count += taken as u32;
            plan.bytes += (end - start) as usize;
            remaining -= taken;
            next = segment.start_offset + to as u64;
            if to < upto {
                break;
            }
        }
        Ok(plan)
    }

    /// A consumer polls at or near the end: cache appends for it for a while (`storage::l1`).
    pub fn want_newest(&self) {
        self.l1.want(fsutil::now_micros());
    }

    /// [`Self::plan_read`] for a consumer: ranges L1 holds are served from memory. (The
    /// scrubber and state sync read the disk, whose bytes they are checking or sending.)
    pub fn plan_poll(
        &self,
        offset: u64,
        count: u32,
        max_bytes: usize,
    ) -> Result<ReadPlan, StorageError> {
        let mut plan = self.plan_read(offset, count, max_bytes)?;
        // A consumer reading the active segment is keeping up: cache what comes next.
        if offset + plan.count as u64 >= self.active().start_offset {
            self.want_newest();
        }
        for chunk in &mut plan.chunks {
            if let Some(cached) = self.l1.lookup(chunk.segment, chunk.position, chunk.len) {
                chunk.len = (cached.from - chunk.position) as usize;
                chunk.cached = cached.slices;
            }
        }
        Ok(plan)
    }

    /// The object-store segment holding the first message at or after `timestamp`, when that
    /// message is below the local window (its exact offset needs the segment's index).
    pub fn remote_segment_at_or_after(&self, timestamp: u64) -> Option<TieredSegment> {
        self.remote_segments()
            .iter()
            .find(|s| s.last_timestamp >= timestamp)
            .copied()
    }

    /// Offset of the first local message stored at or after `timestamp` (µs).
    pub fn offset_at_or_after(&self, timestamp: u64) -> Result<Option<u64>, StorageError> {
        for segment in &self.segments {
            if let Some(i) = segment.first_at_or_after(timestamp)? {
                return Ok(Some(segment.start_offset + i as u64));
            }
        }
        Ok(None)
    }

    /// Deletes every message; the partition restarts empty at offset 0. Returns the segments
    /// the object store held, whose objects the tiering loop then deletes.
    pub fn purge(&mut self) -> Result<Vec<TieredSegment>, StorageError> {
        self.dedup = None;
        let tiered = self.start_again(0, Manifest::new())?;
        self.messages_count = 0;
        self.size_bytes = 0;
        self.last_timestamp = 0;
        Ok(tiered.segments)
    }

    /// Checks frames another replica already stamped (each verifies and continues the log's
    /// offsets, ids and timestamps kept) and returns each one's (position, length, timestamp).
    fn parse_stamped(&self, frames: &[u8]) -> Result<Vec<(usize, usize, u64)>, StorageError> {
        let invalid = |reason: String| StorageError::BadMetadata {
            path: self.dir.clone(),
            reason,
        };
        let mut at = 0usize;
        let mut expected = self.next_offset();
        let mut parsed = Vec::new();
        while at < frames.len() {
            let header = FrameHeader::new(&frames[at..])
                .ok_or_else(|| invalid("a synced frame is cut short".into()))?;
            let len = header.frame_len();
            if len > (frames.len() - at) as u64 || !checksum_matches(&frames[at..at + len as usize])
            {
                return Err(invalid(format!(
                    "synced frame at offset {expected} is damaged"
                )));
            }
            if header.offset() != expected {
                return Err(invalid(format!(
                    "synced frame has offset {}, expected {expected}",
                    header.offset()
                )));
            }
            parsed.push((at, len as usize, header.timestamp()));
            at += len as usize;
            expected += 1;
        }
        Ok(parsed)
    }

    fn append_parsed(
        &mut self,
        frames: &[u8],
        parsed: &[(usize, usize, u64)],
    ) -> Result<u64, StorageError> {
        self.drop_unpublished()?;
        let active_index = self.segments.len() - 1;
        let active = &mut self.segments[active_index];
        let base_relative = (active.next_offset() - active.start_offset) as u32;
        let base_position = active.size;
        let entries: Vec<IndexEntry> = parsed
            .iter()
            .enumerate()
            .map(|(i, (start, len, timestamp))| IndexEntry {
                relative_offset: base_relative + i as u32,
                end: (base_position + (start + len) as u64) as u32,
                timestamp: *timestamp,
            })
            .collect();
        self.last_checksum = None;
        self.dedup = None;
        active.append(frames, &entries)?;
        self.last_checksum = parsed
            .last()
            .and_then(|&(start, _, _)| stored_checksum(frames, start));
        self.last_timestamp = self
            .last_timestamp
            .max(parsed.iter().map(|p| p.2).max().unwrap_or(0));
        self.messages_count += entries.len() as u64;
        self.size_bytes += frames.len() as u64;
        self.write_seq += 1;
        Ok(entries.len() as u64)
    }

    /// Repair: writes `frames` — the messages from `from` on, as a peer holds them in its
    /// segment starting at `segment_start` — over this log's copy of them, which rotted.
    /// Replicas' segments are byte-identical, so the frames must land exactly on the local
    /// index: same segment, every frame verified, with the offset and end position the index
    /// records. Nothing is written otherwise. Returns how many messages were rewritten.
    pub fn overwrite_damaged(
        &mut self,
        segment_start: u64,
        from: u64,
        frames: &[u8],
    ) -> Result<u64, StorageError> {
        self.last_checksum = None;
        let refuse = |reason: String| StorageError::BadMetadata {
            path: self.dir.clone(),
            reason: format!("repair refused: {reason}"),
        };
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.start_offset == segment_start)
        else {
            return Err(refuse(format!(
                "no local segment starts at {segment_start}"
            )));
        };
        let first = from
            .checked_sub(segment_start)
            .map(|i| i as usize)
            .filter(|i| *i < segment.len())
            .ok_or_else(|| refuse(format!("offset {from} is not in segment {segment_start}")))?;
        // The entries the frames may cover, in one read: a frame is at least a header long.
        let most = (first + frames.len() / HEADER_SIZE).clamp(first + 1, segment.len());
        let (start, entries) = segment.span(first, most)?;
        let mut at = 0usize;
        let mut i = first;
        while at < frames.len() {
            let header = FrameHeader::new(&frames[at..])
                .ok_or_else(|| refuse("a frame is cut short".into()))?;
            let len = header.frame_len() as usize;
            let frame = frames
                .get(at..at + len)
                .ok_or_else(|| refuse("a frame runs past the chunk".into()))?;
            let expected = segment_start + i as u64;
            let entry = entries.get(i - first);
            if !checksum_matches(frame)
                || header.offset() != expected
                || entry.map(|e| e.end as u64) != Some(start + (at + len) as u64)
            {
                return Err(refuse(format!(
                    "the peer's message {expected} does not match this log's index"
                )));
            }
            at += len;
            i += 1;
        }
        segment.log.write_all_at(frames, start)?;
        segment.log.sync_data()?;
        Ok((i - first) as u64)
    }

    /// Rewrites the index file of the local segment holding `offset` from its log
    /// (`recovery::rebuild_index`): a read found a damaged entry in it.
    pub fn rebuild_index(&mut self, offset: u64) -> Result<(), StorageError> {
        // The rebuild reads the log file to its end: nothing unpublished may lie there.
        self.drop_unpublished()?;
        let Some(segment) = self
            .segments
            .iter_mut()
            .find(|s| s.start_offset <= offset && offset < s.next_offset())
        else {
            return Ok(());
        };
        recovery::rebuild_index(segment)
    }

    /// The local segment holding `offset`: (its first offset, one past its last message).
    pub fn segment_bounds(&self, offset: u64) -> Option<(u64, u64)> {
        self.segments
            .iter()
            .find(|s| s.start_offset <= offset && offset < s.next_offset())
            .map(|s| (s.start_offset, s.next_offset()))
    }

    /// State sync: appends frames a peer sent from its segment starting at `segment_start`, so
    /// that this log's segments begin where the peer's do — retention and tiering act on whole
    /// segments, and replicas must agree on them. The frames start a new segment when the
    /// peer's segment starts at this log's end; otherwise they continue the active segment,
    /// which must start where the peer's does. No segment is rolled by size: the peer sends
    /// at most one segment per chunk.
    /// Every frame must verify and continue the log's offsets; otherwise nothing is written.
    /// Returns how many messages were appended.
    pub fn append_synced(
        &mut self,
        frames: &[u8],
        segment_start: u64,
    ) -> Result<u64, StorageError> {
        self.last_checksum = None;
        let parsed = self.parse_stamped(frames)?;
        if parsed.is_empty() {
            return Ok(0);
        }
        self.l1.clear();
        let next = self.next_offset();
        let active_start = self.active().start_offset;
        if segment_start == next {
            if !self.active().is_empty() {
                self.roll()?;
            }
        } else if segment_start != active_start {
            return Err(StorageError::BadMetadata {
                path: self.dir.clone(),
                reason: format!(
                    "the peer's segment starts at offset {segment_start}, this log's active \
                     segment at {active_start}"
                ),
            });
        }
        self.append_parsed(frames, &parsed)
    }

    /// State sync of a partition whose peer no longer holds this log's end locally (retention
    /// deleted it, or it was tiered and evicted): every local segment goes and the log starts
    /// again, empty, at `first_local`, with `remote` — the peer's tier-manifest segments below
    /// `first_local`, which must end there — as what the object store holds before it.
    pub fn restart_at(
        &mut self,
        first_local: u64,
        remote: Vec<TieredSegment>,
    ) -> Result<(), StorageError> {
        self.last_checksum = None;
        let mut manifest = Manifest::new();
        for segment in remote {
            manifest
                .push(segment)
                .map_err(|e| StorageError::BadMetadata {
                    path: self.dir.join(tiered::FILE_NAME),
                    reason: e.to_string(),
                })?;
        }
        if manifest.end().is_some_and(|end| end != first_local) {
            return Err(StorageError::BadMetadata {
                path: self.dir.join(tiered::FILE_NAME),
                reason: format!(
                    "the peer's object-store segments end at {:?}, its local ones start at \
                     {first_local}",
                    manifest.end()
                ),
            });
        }
        self.start_again(first_local, manifest)?;
        self.recount();
        Ok(())
    }

    /// Replaces every local segment with an empty one at `first_local` and the tier manifest
    /// with `manifest` (a purge, or state sync's restart). While an op is applied (cluster
    /// mode), a restart from a checkpoint taken before it must find the log as it was, so the
    /// old manifest and segments are buried, and the restart is recorded after them and
    /// before any new file: boot then deletes what the log wrote since and moves the old files
    /// back (`graveyard::exhume`). Before, the old segments came back beside the new ones, a
    /// gap or overlap between them, and boot refused the partition (`make chaos` seed 40029,
    /// a member killed during a sync's restart). A single node empties the manifest first, so
    /// a crash halfway never shows the store's segments without the local ones. Returns the
    /// tier manifest replaced.
    fn start_again(
        &mut self,
        first_local: u64,
        manifest: Manifest,
    ) -> Result<Manifest, StorageError> {
        self.drop_unpublished()?;
        self.last_checksum = None;
        self.l1.clear();
        let changed = manifest != self.tiered;
        let set_aside = graveyard::bury(&self.dir.join(tiered::FILE_NAME))?;
        if changed && !set_aside {
            tiered::store(&self.dir, &manifest)?;
        }
        self.forget_checkpoint()?;
        remove_segment_files(&self.dir, &self.segments)?;
        graveyard::mark_restart(&self.dir, first_local)?;
        self.segments = vec![Segment::open(&self.dir, first_local)?];
        if set_aside && !manifest.segments.is_empty() {
            tiered::store(&self.dir, &manifest)?;
        }
        let replaced = match changed {
            true => {
                self.tiered_version += 1;
                std::mem::replace(&mut self.tiered, manifest)
            }
            // Equal to the one kept.
            false => manifest,
        };
        fsutil::sync_dir(&self.dir)?;
        Ok(replaced)
    }

    /// Cuts the log back so that `next_offset` is the next offset written: later segments are
    /// deleted, the one holding `next_offset` is cut there. Cluster mode uses it to bring a
    /// partition back to a checkpoint before the ops after it are replayed. Refuses (leaving
    /// the log as it was) when the log does not reach `next_offset` or retention already
    /// deleted the segment that holds it.
    pub fn truncate_to(&mut self, next_offset: u64) -> Result<(), StorageError> {
        self.drop_unpublished()?;
        self.last_checksum = None;
        let keep = self
            .segments
            .iter()
            .rposition(|s| s.start_offset <= next_offset)
            .filter(|_| next_offset <= self.next_offset());
        let Some(keep) = keep else {
            return Err(StorageError::BadMetadata {
                path: self.dir.clone(),
                reason: format!(
                    "cannot cut the log back to offset {next_offset}: it holds offsets {:?}..{}",
                    self.first_offset(),
                    self.next_offset()
                ),
            });
        };
        self.l1.clear();
        let segment = &self.segments[keep];
        let entries = (next_offset - segment.start_offset) as usize;
        self.before_cut(segment.start_offset, segment.start_of(entries)?)?;
        let removed: Vec<Segment> = self.segments.drain(keep + 1..).collect();
        remove_segment_files(&self.dir, &removed)?;
        self.segments[keep].cut_to(entries)?;
        // A tiered segment that was cut is no longer what the store holds.
        let tiered_before = self.tiered.segments.len();
        self.tiered
            .segments
            .retain(|s| s.next_offset <= next_offset);
        if self.tiered.segments.len() != tiered_before {
            self.tiered_version += 1;
            tiered::store(&self.dir, &self.tiered)?;
        }
        self.recount();
        Ok(())
    }

    /// [`Self::truncate_to`] a replication checkpoint, leaving the segments as the checkpoint
    /// had them: its active segment started at `active_start` (`None`: not recorded, by an
    /// older build). A cut back to the end of a segment leaves the segment an append rolled
    /// to after the checkpoint, empty; the checkpoint's own active segment was the one before.
    /// Left in place, the empty one would seal that segment early: a retention pass replayed
    /// before the append that re-rolls could delete it here and nowhere else, and a segment
    /// size changed meanwhile (`state::settings`) would move every later boundary. An empty
    /// active segment the checkpoint itself had (a `SealSegment`) starts at `active_start`
    /// and stays.
    pub fn cut_to_checkpoint(
        &mut self,
        next_offset: u64,
        active_start: Option<u64>,
    ) -> Result<(), StorageError> {
        self.truncate_to(next_offset)?;
        let Some(active_start) = active_start else {
            return Ok(());
        };
        // Not when the store holds the segment before (recorded after the checkpoint; the
        // cut keeps such records): an active segment must not be one the store holds.
        let rolled_after = self.segments.len() > 1
            && self.active().size == 0
            && self.active().start_offset > active_start
            && self.segments[self.segments.len() - 2].start_offset == active_start
            && !self
                .tiered
                .segments
                .iter()
                .any(|s| s.start_offset == active_start);
        if rolled_after {
            // A storage checkpoint taken in the segment that goes no longer says anything.
            if self
                .checkpointed
                .is_some_and(|cp| cp.segment_start > active_start)
            {
                self.forget_checkpoint()?;
            }
            let rolled: Vec<Segment> = self.segments.pop().into_iter().collect();
            remove_segment_files(&self.dir, &rolled)?;
            self.recount();
        }
        Ok(())
    }

    /// The first offset of the active segment.
    pub fn active_start(&self) -> u64 {
        self.active().start_offset
    }

    /// The stored checksum of the last message (the first 8 bytes of its frame), 0 when empty:
    /// with the next offset, what identifies a log's content at a checkpoint.
    pub fn last_checksum(&self) -> Result<u64, StorageError> {
        if let Some(kept) = self.last_checksum {
            debug_assert_eq!(
                Some(kept),
                self.read_last_checksum().ok(),
                "the kept checksum is the stored one ({})",
                self.dir.display()
            );
            return Ok(kept);
        }
        self.read_last_checksum()
    }

    fn read_last_checksum(&self) -> Result<u64, StorageError> {
        match self.next_offset().checked_sub(1) {
            Some(last) => Ok(self.checksum_of(last)?.unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// The stored checksum of the message at `offset`, if the log holds it.
    pub fn checksum_of(&self, offset: u64) -> Result<Option<u64>, StorageError> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.start_offset <= offset && offset < s.next_offset())
        else {
            return Ok(None);
        };
        let mut checksum = Vec::with_capacity(8);
        let i = (offset - segment.start_offset) as usize;
        segment.read_into(segment.start_of(i)?, 8, &mut checksum)?;
        Ok(Some(u64::from_le_bytes(
            checksum.try_into().unwrap_or_default(),
        )))
    }

    /// Deletes up to `count` of the oldest sealed segments — never the active one — and returns
    /// how many went. Readers holding a segment's file keep reading it until they finish.
    pub fn delete_oldest_segments(&mut self, count: usize) -> Result<usize, StorageError> {
        self.last_checksum = None;
        let removed = self.take_oldest_segments(count)?;
        remove_segment_files(&self.dir, &removed.local)?;
        Ok(removed.segments)
    }

    /// Detaches up to `count` of the oldest sealed segments from the log — those only the
    /// object store holds first, then local ones; counts updated at once — without touching
    /// files or objects, so the caller can unlink them after releasing the partition lock:
    /// unlinking a large file can take milliseconds that appends need not wait. The tier
    /// manifest stops naming them before this returns.
    pub fn take_oldest_segments(&mut self, count: usize) -> Result<Detached, StorageError> {
        self.last_checksum = None;
        let mut detached = Detached::default();
        let remote_held = self.remote_segments().len();
        let remote = remote_held.min(count);
        let local = (count - remote).min(self.segments.len() - 1);
        for segment in &self.tiered.segments[..remote] {
            detached.messages += segment.messages();
            detached.bytes += segment.log_size;
        }
        detached.local = self.segments.drain(..local).collect();
        detached.segments = remote + local;
        if detached.segments > 0 {
            self.dedup = None;
        }
        for segment in &detached.local {
            detached.messages += segment.len() as u64;
            detached.bytes += segment.size;
        }
        self.messages_count -= detached.messages;
        self.size_bytes -= detached.bytes;
        // The first segment kept: a tiered one when not all of those were taken.
        let first_kept = match remote < remote_held {
            true => self.tiered.segments[remote].start_offset,
            false => self.segments[0].start_offset,
        };
        detached.tiered = self.tiered.remove_below(first_kept);
        if !detached.tiered.is_empty() {
            self.tiered_version += 1;
            tiered::store(&self.dir, &self.tiered)?;
        }
        Ok(detached)
    }

    /// (last timestamp, bytes) of each sealed segment, oldest first — those only in the object
    /// store, then the local ones: what retention decides on.
    pub fn sealed_segments(&self) -> Vec<(u64, u64)> {
        let remote = self
            .remote_segments()
            .iter()
            .map(|s| (s.last_timestamp, s.log_size));
        let local = self.segments[..self.segments.len() - 1]
            .iter()
            .map(|s| (s.last_entry().map_or(0, |e| e.timestamp), s.size));
        remote.chain(local).collect()
    }

    /// Sealed local segments the object store does not hold yet, oldest first (each continues
    /// the manifest), with their index bytes.
    pub fn upload_candidates(&self, limit: usize) -> Result<Vec<UploadCandidate>, StorageError> {
        let key_base = tiered::key_base(&self.dir);
        self.sealed_not_tiered()
            .take(limit)
            .map(|s| {
                let index = s.index_bytes()?;
                Ok(UploadCandidate {
                    key_base: key_base.clone(),
                    log_path: s.log_path.clone(),
                    segment: TieredSegment {
                        start_offset: s.start_offset,
                        next_offset: s.next_offset(),
                        log_size: s.size,
                        index_size: index.len() as u64,
                        first_timestamp: s.first_entry().map_or(0, |e| e.timestamp),
                        last_timestamp: s.last_entry().map_or(0, |e| e.timestamp),
                        log_checksum: 0,
                        index_checksum: 0,
                        uploaded_at: 0,
                    },
                    index,
                })
            })
            .collect()
    }

    /// Sealed local segments the object store does not hold yet, and their bytes.
    pub fn upload_lag(&self) -> (u64, u64) {
        self.sealed_not_tiered()
            .fold((0, 0), |(n, bytes), s| (n + 1, bytes + s.size))
    }

    /// Sealed local segments with messages that the tier manifest does not name, oldest first.
    fn sealed_not_tiered(&self) -> impl Iterator<Item = &Segment> {
        self.segments[..self.segments.len() - 1]
            .iter()
            .filter(|s| !s.is_empty() && !self.tiered.holds(s.start_offset))
    }

    /// Records that the object store now holds `segment` (uploaded, checksums filled in): the
    /// manifest on disk names it before this returns. A segment retention took meanwhile, or
    /// one already recorded, is ignored.
    pub fn record_tiered(&mut self, segment: TieredSegment) -> Result<bool, StorageError> {
        let still_local = self.segments.iter().any(|s| {
            s.start_offset == segment.start_offset && s.next_offset() == segment.next_offset
        });
        if !still_local || self.tiered.holds(segment.start_offset) {
            return Ok(false);
        }
        let mut next = self.tiered.clone();
        next.push(segment).map_err(|e| StorageError::BadMetadata {
            path: self.dir.join(tiered::FILE_NAME),
            reason: e.to_string(),
        })?;
        tiered::store(&self.dir, &next)?;
        self.tiered = next;
        self.tiered_version += 1;
        Ok(true)
    }

    /// Detaches the oldest local sealed segments that the object store holds and `evict`
    /// (given each one's manifest entry and the bytes of such segments still local, itself
    /// included) says may go; the caller unlinks their files. Reads then come from the store.
    pub fn evict_local(&mut self, evict: impl Fn(&TieredSegment, u64) -> bool) -> Vec<Segment> {
        self.last_checksum = None;
        let sealed = self.segments.len() - 1;
        let mut held_bytes: u64 = self.segments[..sealed]
            .iter()
            .filter(|s| self.tiered.holds(s.start_offset))
            .map(|s| s.size)
            .sum();
        let mut n = 0;
        while n < sealed {
            let start = self.segments[n].start_offset;
            let Some(entry) = self.tiered.find(start).filter(|e| e.start_offset == start) else {
                break;
            };
            if !evict(entry, held_bytes) {
                break;
            }
            held_bytes -= self.segments[n].size;
            n += 1;
        }
        self.segments.drain(..n).collect()
    }

    /// fsyncs every segment (clean shutdown, `FlushUnsavedBuffer` with fsync).
    pub fn sync_all(&self) -> Result<(), StorageError> {
        for segment in &self.segments {
            segment.sync()?;
        }
        Ok(())
    }

    /// Every segment's files, for a sync that must not hold the partition's lock.
    pub fn sync_handles(&self) -> Vec<SegmentFile> {
        self.segments
            .iter()
            .flat_map(|segment| segment.sync_handles())
            .collect()
    }

    /// Records, after [`Self::sync_all`], that everything written so far is intact.
    pub fn write_checkpoint(&mut self) -> Result<(), StorageError> {
        let checkpoint = self.current_checkpoint();
        checkpoint.store(&self.dir)?;
        self.checkpointed = Some(checkpoint);
        Ok(())
    }

    /// What a running checkpoint would record now, when the one on disk no longer describes
    /// the log (see [`Self::needs_checkpoint`]): the log's end, and the files to fsync before
    /// it may be recorded — the segments from the last checkpoint's on, the earlier ones being
    /// durable since it was written.
    pub fn checkpoint_due(&self) -> Option<DueCheckpoint> {
        if !self.needs_checkpoint() {
            return None;
        }
        // The active file as this log has it open, held until the install checks that it is
        // still the file at the path; one the descriptor budget closed waits for a later pass
        // (opening it by its path now would prove nothing).
        let active = (self.active().log.if_open()?, self.active().log_path.clone());
        let synced_below = self.checkpointed.map_or(0, |c| c.segment_start);
        let files = self
            .segments
            .iter()
            .filter(|s| s.start_offset >= synced_below)
            .flat_map(|s| s.sync_handles())
            .collect();
        Some(DueCheckpoint {
            checkpoint: self.current_checkpoint(),
            write_seq: self.write_seq,
            cuts: self.cuts,
            files,
            active,
        })
    }

    /// Puts a [`DueCheckpoint`], its files fsynced and its record `staged`, in place of the
    /// checkpoint on disk, unless the log was cut since it was captured (then the staged file
    /// is left unused and `false` returned). The caller syncs the directory after releasing
    /// the lock this is called under.
    pub fn install_checkpoint(
        &mut self,
        due: &DueCheckpoint,
        staged: fsutil::Staged,
    ) -> Result<bool, StorageError> {
        if due.cuts != self.cuts || !Self::still_at_its_path(&due.active) {
            return Ok(false);
        }
        staged.install()?;
        self.checkpointed = Some(due.checkpoint);
        Ok(true)
    }

    /// Whether the file at `path` is still `open`, the segment file this log had open there
    /// when the checkpoint was captured. Not when the partition was deleted and another
    /// created at the same path since: a record staged there then describes another log's
    /// bytes. (The descriptor, held since the capture, keeps its inode alive, so the number
    /// cannot have been reused.)
    fn still_at_its_path((open, path): &(std::sync::Arc<std::fs::File>, PathBuf)) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (open.metadata(), std::fs::metadata(path)) {
            (Ok(open), Ok(at_path)) => (open.dev(), open.ino()) == (at_path.dev(), at_path.ino()),
            _ => false,
        }
    }

    /// Before the log is cut back to `position` of the segment starting at `start`: a running
    /// checkpoint captured earlier may describe bytes about to be replaced, so it will not be
    /// installed; the checkpoint on disk stays when it ends at or before the cut (a replica
    /// restoring its replication checkpoint at boot usually cuts above it) and goes, durably,
    /// when it reaches past it — before the cut, or it would spare the bytes written after the
    /// cut from the next boot's verification.
    fn before_cut(&mut self, start: u64, position: u64) -> Result<(), StorageError> {
        let still_true = self.checkpointed.is_some_and(|cp| {
            cp.segment_start < start || (cp.segment_start == start && cp.position <= position)
        });
        if still_true {
            self.cuts += 1;
            Ok(())
        } else {
            self.forget_checkpoint()
        }
    }

    /// Removes the checkpoint, durably, before the log is cut below its end or replaced.
    fn forget_checkpoint(&mut self) -> Result<(), StorageError> {
        self.cuts += 1;
        self.checkpointed = None;
        if Checkpoint::remove(&self.dir)? {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn current_checkpoint(&self) -> Checkpoint {
        let active = self.active();
        Checkpoint {
            segment_start: active.start_offset,
            position: active.size,
        }
    }

    /// Whether a clean shutdown must sync and checkpoint this partition: not when the checkpoint
    /// on disk already describes the log (nothing was written since), nor when the log is empty
    /// (recovery has nothing to verify). Idle partitions thus cost a shutdown nothing.
    pub fn needs_checkpoint(&self) -> bool {
        let empty = self.segments.len() == 1 && self.active().size == 0;
        !empty && self.checkpointed != Some(self.current_checkpoint())
    }
}

/// A checkpoint captured while running, to be recorded once its files are fsynced
/// ([`PartitionLog::checkpoint_due`]).
#[derive(Debug)]
pub struct DueCheckpoint {
    pub checkpoint: Checkpoint,
    /// The log's append sequence number when it was captured: everything up to it is on disk
    /// once `files` are synced.
    pub write_seq: u64,
    cuts: u64,
    pub files: Vec<SegmentFile>,
    /// The active segment's file as the log had it open at the capture, and its path.
    active: (std::sync::Arc<std::fs::File>, PathBuf),
}

/// Removes detached segments' files from the partition durably; the bytes are unlinked off
/// the caller's thread (see [`trash`]).
pub fn remove_segment_files(dir: &Path, segments: &[Segment]) -> Result<(), StorageError> {
    let mut files = Vec::with_capacity(segments.len() * 2);
    for file in segments
        .iter()
        .flat_map(|s| [s.log_path.as_path(), s.index_path.as_path()])
    {
        // A replica applying an op keeps them until no checkpoint needs them.
        if !graveyard::bury(file)? {
            files.push(file);
        }
    }
    trash::discard(dir, &files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::segment::file_stem;
    use iggy_wire::message::{
        validate_batch, FrameHeader, FrameIter, SendMessagesHeader, INDEX_ENTRY_SIZE,
    };
    use iggy_wire::{Identifier, Partitioning};

    /// A validated message block of `n` messages with `size`-byte payloads.
    pub(crate) fn batch(n: usize, size: usize) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; size]).collect();
        let messages: Vec<(u128, &[u8], &[u8])> = payloads
            .iter()
            .map(|p| (1u128, p.as_slice(), &[][..]))
            .collect();
        let mut out = Vec::new();
        SendMessagesHeader::encode_request(
            &Identifier::Numeric(0),
            &Identifier::Numeric(0),
            &Partitioning::Balanced,
            &messages,
            &mut out,
        );
        let header = SendMessagesHeader::decode(&out).unwrap();
        validate_batch(
            &out[header.index_start..header.messages_start],
            &out[header.messages_start..],
            header.count,
        )
        .unwrap();
        out.split_off(header.messages_start)
    }

    /// A validated message block with these ids and 100-byte payloads.
    fn batch_with_ids(ids: &[u128]) -> Vec<u8> {
        let mut out = batch(ids.len(), 100);
        let mut at = 0;
        for id in ids {
            out[at + 8..at + 24].copy_from_slice(&id.to_le_bytes());
            at += FrameHeader::new(&out[at..]).unwrap().frame_len() as usize;
        }
        out
    }

    fn stored_ids(log: &PartitionLog, from: u64) -> Vec<u128> {
        let plan = log
            .plan_read(from, (log.next_offset() - from) as u32, usize::MAX)
            .unwrap();
        let mut out = Vec::new();
        plan.read_into(&mut out).unwrap();
        iggy_wire::message::FrameIter::new(&out)
            .map(|f| FrameHeader::new(f.unwrap()).unwrap().id())
            .collect()
    }

    /// Deduplication's window is a function of the log: a log reopened before every append
    /// (its window read back from disk each time) drops exactly what one that kept its window
    /// in memory drops, across segment rolls, the count limit and the age limit.
    #[test]
    fn deduplication_drops_the_same_whether_the_window_was_kept_or_read_back() {
        let settings = Deduplication {
            settings: super::dedup::DeduplicationSettings {
                max_entries: 7,
                expiry: 50,
            },
            since: 0,
        };
        let (kept_dir, read_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 4 KiB segments of ~160-byte messages: a roll every two dozen messages.
        let mut kept = PartitionLog::create(kept_dir.path(), 4096, false).unwrap();
        drop(PartitionLog::create(read_dir.path(), 4096, false).unwrap());
        let mut seed = 7u64;
        let mut dropped_in_all = 0;
        for round in 0..60u64 {
            let ids: Vec<u128> = (0..1 + round % 5)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Ids 0..16: many repeats, some 0; the first rounds only 0 (no window
                    // is built until a message carries an id).
                    if round < 8 {
                        0
                    } else {
                        (seed >> 60) as u128
                    }
                })
                .collect();
            let now = 10 * round;
            let (mut a, mut b) = (batch_with_ids(&ids), batch_with_ids(&ids));
            let (appended, dropped) = kept
                .append_deduplicated(&mut a, now, || 99, &settings)
                .unwrap();
            let (mut read, _) = PartitionLog::open(read_dir.path(), 4096, false).unwrap();
            let (again, dropped_again) = read
                .append_deduplicated(&mut b, now, || 99, &settings)
                .unwrap();
            assert_eq!(
                (appended.count, dropped),
                (again.count, dropped_again),
                "round {round}"
            );
            assert_eq!(appended.count + dropped, ids.len() as u32);
            dropped_in_all += dropped;
        }
        assert!(
            dropped_in_all > 20,
            "the workload repeats ids: {dropped_in_all}"
        );
        let (read, _) = PartitionLog::open(read_dir.path(), 4096, false).unwrap();
        assert_eq!(stored_ids(&kept, 0), stored_ids(&read, 0));
        assert!(kept.segments_count() > 2, "the run rolled segments");
    }

    /// What deduplication compares with: ids among the last `max_entries` messages, so an id
    /// seen earlier is stored again; and a cut of the log (a replica brought back to its
    /// checkpoint) forgets what it cut.
    #[test]
    fn deduplication_compares_with_what_the_log_holds_now() {
        let settings = Deduplication {
            settings: super::dedup::DeduplicationSettings {
                max_entries: 3,
                expiry: 0,
            },
            since: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 20, false).unwrap();
        let send = |log: &mut PartitionLog, ids: &[u128]| {
            let mut messages = batch_with_ids(ids);
            let next = log.next_offset();
            log.append_deduplicated(&mut messages, 1, || 0, &settings)
                .unwrap();
            stored_ids(log, next)
        };
        assert_eq!(send(&mut log, &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(send(&mut log, &[3, 1]), Vec::<u128>::new());
        assert_eq!(send(&mut log, &[4, 5]), vec![4, 5]);
        assert_eq!(
            send(&mut log, &[1, 5]),
            vec![1],
            "1 at offset 0 is out of reach, 5 is not"
        );
        assert_eq!(log.next_offset(), 6);
        log.truncate_to(2).unwrap();
        assert_eq!(send(&mut log, &[3, 2]), vec![3], "3 was cut away");
        log.purge().unwrap();
        assert_eq!(send(&mut log, &[1, 2]), vec![1, 2]);
    }

    /// The last message's checksum a checkpoint records is the stored one after every kind of
    /// change: kept by appends (stamped or synced), read back after cuts, rolls and purges.
    #[test]
    fn the_kept_last_checksum_is_the_stored_one_through_appends_cuts_rolls_and_purges() {
        let stored = |log: &PartitionLog| match log.next_offset().checked_sub(1) {
            Some(last) => log.checksum_of(last).unwrap().unwrap_or(0),
            None => 0,
        };
        let dir = tempfile::tempdir().unwrap();
        // Segments of 4 KiB: a batch of 10 × 300 B fills one, so appends roll.
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        assert_eq!(log.last_checksum().unwrap(), 0, "an empty log");
        let mut ids = 0u128;
        for round in 0..3 {
            log.append(&mut batch(10, 300), 1 + round, || {
                ids += 1;
                ids
            })
            .unwrap();
            assert_ne!(log.last_checksum().unwrap(), 0);
            assert_eq!(log.last_checksum().unwrap(), stored(&log), "round {round}");
        }
        log.truncate_to(15).unwrap();
        assert_eq!(log.last_checksum().unwrap(), stored(&log), "after a cut");

        // A replica syncing the same messages from this log keeps them as they came.
        let peer = tempfile::tempdir().unwrap();
        let mut synced = PartitionLog::create(peer.path(), 4096, false).unwrap();
        let mut from = 0;
        while from < log.next_offset() {
            let (start, end) = log.segment_bounds(from).unwrap();
            let mut frames = Vec::new();
            log.plan_read(from, (end - from) as u32, usize::MAX)
                .unwrap()
                .read_into(&mut frames)
                .unwrap();
            synced.append_synced(&frames, start).unwrap();
            assert_eq!(
                synced.last_checksum().unwrap(),
                log.checksum_of(end - 1).unwrap().unwrap()
            );
            from = end;
        }
        assert_eq!(
            synced.last_checksum().unwrap(),
            log.last_checksum().unwrap()
        );

        log.purge().unwrap();
        assert_eq!(log.last_checksum().unwrap(), stored(&log), "after a purge");
    }

    fn read_offsets(log: &PartitionLog, from: u64, count: u32, max: usize) -> Vec<u64> {
        let plan = log.plan_read(from, count, max).unwrap();
        let mut out = Vec::new();
        plan.read_into(&mut out).unwrap();
        let offsets: Vec<u64> = FrameIter::new(&out)
            .map(|f| FrameHeader::new(f.unwrap()).unwrap().offset())
            .collect();
        assert_eq!(offsets.len(), plan.count as usize);
        offsets
    }

    /// A read asking for every message up to an end with a byte budget (the scrubber's
    /// windows, state-sync chunks) takes exactly what the budget holds, as reading all the
    /// remaining entries did; it now finds the budget's end by a binary search over the index
    /// instead (`UNBOUNDED_SPAN`).
    #[test]
    fn a_read_bounded_by_bytes_takes_what_the_budget_holds_from_a_large_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 30, false).unwrap();
        // 10,000 messages of 10 to 400 bytes, in batches of 100.
        for round in 0..100usize {
            log.append(&mut batch(100, 10 + (round * 37) % 390), 1000, || 7)
                .unwrap();
        }
        assert_eq!(log.messages_count(), 10_000);
        assert_eq!(log.resident_index_entries(), 0);
        let frames: Vec<u64> = {
            let mut all = Vec::new();
            log.plan_read(0, 10_000, usize::MAX)
                .unwrap()
                .read_into(&mut all)
                .unwrap();
            FrameIter::new(&all)
                .map(|f| f.unwrap().len() as u64)
                .collect()
        };
        for (from, budget) in [
            (0u64, 1 << 20),
            (17, 65_536),
            (4_000, 100_000),
            (9_990, 1 << 20),
            (5_000, 1),
        ] {
            // What fits, counted over every remaining frame.
            let (mut count, mut bytes) = (0u32, 0u64);
            for len in &frames[from as usize..] {
                if bytes + len > budget as u64 && count > 0 {
                    break;
                }
                count += 1;
                bytes += len;
            }
            let plan = log.plan_read(from, u32::MAX, budget).unwrap();
            assert_eq!(
                (plan.count, plan.bytes as u64),
                (count, bytes),
                "from {from}, budget {budget}"
            );
            assert_eq!(
                read_offsets(&log, from, u32::MAX, budget),
                (from..from + u64::from(count)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn no_segment_keeps_its_index_in_memory_and_every_read_is_placed_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 4 KiB: every batch of 10 × 300 B fills one.
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for round in 0..6u64 {
            log.append(&mut batch(10, 300), 1000 + round, || 7).unwrap();
            assert_eq!(log.resident_index_entries(), 0, "round {round}");
        }
        let check = |log: &PartitionLog, when: &str| {
            assert_eq!(log.segments_count(), 6, "{when}");
            // Reads starting anywhere, spanning sealed segments, with and without a byte
            // budget that cuts them inside a segment.
            for from in [0u64, 3, 9, 10, 27, 55] {
                let expected: Vec<u64> = (from..60).collect();
                assert_eq!(read_offsets(log, from, 100, usize::MAX), expected, "{when}");
                // Every frame has the same size: a budget of 1000 bytes takes as many whole
                // ones, across a segment's end too.
                let frame = log.size_bytes() / log.messages_count();
                let cut = read_offsets(log, from, 100, 1000);
                let fit = (from..(from + 1000 / frame).min(60)).collect::<Vec<_>>();
                assert_eq!(cut, fit, "{when}, from {from}");
            }
            // Each batch has its own time: the first of each is found, in sealed segments too.
            for round in 0..6u64 {
                assert_eq!(
                    log.offset_at_or_after(1000 + round).unwrap(),
                    Some(round * 10),
                    "{when}"
                );
            }
            assert_eq!(log.offset_at_or_after(999).unwrap(), Some(0), "{when}");
            assert_eq!(log.offset_at_or_after(1006).unwrap(), None, "{when}");
            let stored = |offset| log.checksum_of(offset).unwrap().unwrap();
            assert_ne!(stored(25), stored(26), "{when}");
            // The object store gets the index file's bytes, as memory would have encoded them.
            for candidate in log.upload_candidates(5).unwrap() {
                let file = std::fs::read(dir.path().join(format!(
                    "{}.index",
                    file_stem(candidate.segment.start_offset)
                )))
                .unwrap();
                assert_eq!(candidate.index, file, "{when}");
                assert_eq!(
                    candidate.segment.first_timestamp,
                    candidate.segment.last_timestamp
                );
            }
        };
        check(&log, "while running");
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(log.resident_index_entries(), 0, "after a boot");
        check(&log, "after a boot");
        // Cutting back into a sealed segment makes it the active one; appends continue it.
        log.truncate_to(25).unwrap();
        assert_eq!(log.resident_index_entries(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join(format!("{}.index", file_stem(20))))
                .unwrap()
                .len(),
            5 * INDEX_ENTRY_SIZE as u64,
            "the cut segment's index file holds its five entries"
        );
        assert_eq!(
            read_offsets(&log, 0, 100, usize::MAX),
            (0..25).collect::<Vec<_>>()
        );
        log.append(&mut batch(3, 300), 2000, || 7).unwrap();
        assert_eq!(
            read_offsets(&log, 20, 100, usize::MAX),
            (20..28).collect::<Vec<_>>()
        );
    }

    /// A sealed segment's index is read from its file, so a damaged entry there must never
    /// place a read: it is refused with the file named, other segments still read, and a boot
    /// rebuilds the entry from the log.
    #[test]
    fn a_damaged_entry_in_a_sealed_segments_index_file_is_refused_and_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for round in 0..3u64 {
            log.append(&mut batch(10, 300), 1000 + round, || 7).unwrap();
        }
        let index = dir.path().join(format!("{}.index", file_stem(10)));
        let mut bytes = std::fs::read(&index).unwrap();
        // Entry 4's end moves past the segment's log.
        bytes[4 * INDEX_ENTRY_SIZE + 4..4 * INDEX_ENTRY_SIZE + 8]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&index, &bytes).unwrap();
        match log.plan_read(12, 5, usize::MAX) {
            Err(StorageError::CorruptRead { path, position, .. }) => {
                assert_eq!(path, index);
                assert_eq!(position, (4 * INDEX_ENTRY_SIZE) as u64);
            }
            other => panic!(
                "a damaged entry placed a read: {:?}",
                other.map(|p| p.count)
            ),
        }
        assert_eq!(
            read_offsets(&log, 0, 10, usize::MAX),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(
            read_offsets(&log, 20, 10, usize::MAX),
            (20..30).collect::<Vec<_>>()
        );
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(
            read_offsets(&log, 0, 100, usize::MAX),
            (0..30).collect::<Vec<_>>()
        );
        let intact = std::fs::read(&index).unwrap();

        // Without a boot: the running log rebuilds the file from the segment's log.
        std::fs::write(&index, &bytes).unwrap();
        assert!(log.plan_read(12, 5, usize::MAX).is_err());
        log.rebuild_index(12).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), intact);
        assert_eq!(
            read_offsets(&log, 0, 100, usize::MAX),
            (0..30).collect::<Vec<_>>()
        );

        // Not from a log that does not verify either: nothing is written.
        std::fs::write(&index, &bytes).unwrap();
        let segment_log = dir.path().join(format!("{}.log", file_stem(10)));
        let mut frames = std::fs::read(&segment_log).unwrap();
        frames[100] ^= 0x01;
        std::fs::write(&segment_log, &frames).unwrap();
        assert!(log.rebuild_index(12).is_err());
        assert_eq!(std::fs::read(&index).unwrap(), bytes, "left as it was");
    }

    /// After a clean shutdown a boot takes a whole segment's index file at its word
    /// when its ends agree with the log (it does not read the entries between), and falls back
    /// to reading and checking the whole file when they do not.
    #[test]
    fn a_boot_after_a_clean_shutdown_reads_only_the_ends_of_the_index_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for round in 0..4u64 {
            log.append(&mut batch(10, 300), 1000 + round, || 7).unwrap();
        }
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let index = dir.path().join(format!("{}.index", file_stem(10)));
        let intact = std::fs::read(&index).unwrap();
        let entry_end = |i: usize| i * INDEX_ENTRY_SIZE + 4..i * INDEX_ENTRY_SIZE + 8;

        // A damaged middle entry: the boot does not see it; the read that takes it does.
        let mut middle = intact.clone();
        middle[entry_end(4)].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&index, &middle).unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(log.resident_index_entries(), 0);
        assert!(
            log.plan_read(12, 5, usize::MAX).is_err(),
            "the boot read only the file's ends"
        );
        log.rebuild_index(12).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), intact);
        assert_eq!(
            read_offsets(&log, 0, 100, usize::MAX),
            (0..40).collect::<Vec<_>>()
        );
        assert_eq!(log.offset_at_or_after(1002).unwrap(), Some(20));
        drop(log);

        // A damaged last entry: the ends disagree, so the boot reads the file and rebuilds it.
        let mut last = intact.clone();
        last[entry_end(9)].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&index, &last).unwrap();
        let (log, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), intact);
        assert_eq!(
            read_offsets(&log, 0, 100, usize::MAX),
            (0..40).collect::<Vec<_>>()
        );
        drop(log);

        // The checkpoint's own segment (the active one) is taken the same way when nothing
        // was written after the checkpoint.
        let active = dir.path().join(format!("{}.index", file_stem(30)));
        let mut damaged = std::fs::read(&active).unwrap();
        damaged[entry_end(4)].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&active, &damaged).unwrap();
        let (log, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert!(
            log.plan_read(32, 5, usize::MAX).is_err(),
            "the boot read only the ends"
        );
    }

    #[test]
    fn appends_roll_segments_and_reads_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, true).unwrap();
        for round in 0..10u64 {
            let appended = log.append(&mut batch(5, 100), 1000 + round, || 9).unwrap();
            assert_eq!(appended.base_offset, round * 5);
        }
        assert!(log.segments_count() > 1, "4 KiB segments must roll");
        assert_eq!(log.messages_count(), 50);
        assert_eq!(log.current_offset(), 49);
        assert_eq!(
            read_offsets(&log, 3, 20, usize::MAX),
            (3..23).collect::<Vec<_>>()
        );
        assert_eq!(read_offsets(&log, 48, 20, usize::MAX), vec![48, 49]);
        assert_eq!(read_offsets(&log, 50, 20, usize::MAX), Vec::<u64>::new());
        // A byte budget smaller than one message still returns that one message.
        assert_eq!(read_offsets(&log, 0, 20, 10), vec![0]);
        assert_eq!(log.offset_at_or_after(1003).unwrap(), Some(15));
        assert_eq!(log.offset_at_or_after(5000).unwrap(), None);
    }

    #[test]
    fn truncating_to_an_offset_cuts_segments_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, true).unwrap();
        let mut checksums = Vec::new();
        for round in 0..10u64 {
            log.append(&mut batch(5, 100), 1000 + round, || 9).unwrap();
            checksums.push(log.last_checksum().unwrap());
        }
        assert!(log.segments_count() > 2);
        // Back to the end of round 3 (offset 20 next), inside an earlier segment.
        log.truncate_to(20).unwrap();
        assert_eq!(log.next_offset(), 20);
        assert_eq!(log.messages_count(), 20);
        assert_eq!(log.last_checksum().unwrap(), checksums[3]);
        assert_eq!(
            read_offsets(&log, 15, 100, usize::MAX),
            (15..20).collect::<Vec<_>>()
        );
        let appended = log.append(&mut batch(5, 100), 2000, || 9).unwrap();
        assert_eq!(appended.base_offset, 20);
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), 4096, true).unwrap();
        assert_eq!(log.next_offset(), 25);
        let mut log = log;
        assert!(log.truncate_to(26).is_err(), "cannot grow by truncating");
        log.truncate_to(0).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.last_checksum().unwrap(), 0);
    }

    /// A cut back to a checkpoint taken just before an append rolled a segment leaves the
    /// segment that was active then active again; one whose active segment was sealed empty
    /// keeps it; one an older build recorded cuts as before.
    #[test]
    fn a_cut_to_a_checkpoint_leaves_the_segments_the_checkpoint_had() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, true).unwrap();
        while log.segments_count() < 2 {
            log.append(&mut batch(5, 100), 1000, || 9).unwrap();
        }
        let rolled_at = log.active_start();
        let (next, active) = (log.next_offset(), log.active_start());
        assert!(next > rolled_at && active == rolled_at);
        // Checkpoint: everything before the last append, in the first segment.
        let checkpoint = (rolled_at, 0);
        log.append(&mut batch(5, 100), 1001, || 9).unwrap();
        log.cut_to_checkpoint(checkpoint.0, Some(checkpoint.1))
            .unwrap();
        assert_eq!(log.segments_count(), 1, "the rolled segment went");
        assert_eq!((log.next_offset(), log.active_start()), (rolled_at, 0));
        // The append replayed rolls where it first did.
        log.append(&mut batch(5, 100), 1001, || 9).unwrap();
        assert_eq!(log.active_start(), rolled_at);
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), 4096, true).unwrap();
        assert_eq!(log.active_start(), rolled_at, "and so it reopens");

        // A checkpoint of a sealed, empty active segment keeps it.
        let sealed_at = log.next_offset();
        assert!(log.seal_active(sealed_at).unwrap());
        log.append(&mut batch(5, 100), 1002, || 9).unwrap();
        log.cut_to_checkpoint(sealed_at, Some(sealed_at)).unwrap();
        assert_eq!((log.segments_count(), log.active_start()), (3, sealed_at));

        // Without a recorded start (an older build's checkpoint): as `truncate_to`.
        log.cut_to_checkpoint(sealed_at, None).unwrap();
        assert_eq!(log.active_start(), sealed_at);
    }

    /// A log of 30 messages in batches of five, with 4 KiB segments (several of them).
    fn six_batches_of_five(dir: &Path) -> PartitionLog {
        let mut log = PartitionLog::create(dir, 4096, true).unwrap();
        for round in 0..6u64 {
            log.append(&mut batch(5, 100), 1000 + round, || 7).unwrap();
        }
        log
    }

    /// Copies `source` into `copy` from `copy`'s end the way state sync does: one source
    /// segment per chunk.
    fn sync_segments(source: &PartitionLog, copy: &mut PartitionLog) {
        while copy.next_offset() < source.next_offset() {
            let from = copy.next_offset();
            let (start, end) = source.segment_bounds(from).unwrap();
            let mut frames = Vec::new();
            source
                .plan_read(from, (end - from) as u32, usize::MAX)
                .unwrap()
                .read_into(&mut frames)
                .unwrap();
            copy.append_synced(&frames, start).unwrap();
        }
    }

    #[test]
    fn synced_frames_copy_a_log_and_its_segments_exactly_and_bad_ones_are_refused() {
        let source_dir = tempfile::tempdir().unwrap();
        let mut source = six_batches_of_five(source_dir.path());
        let (first_start, first_end) = source.segment_bounds(0).unwrap();
        let mut frames = Vec::new();
        source
            .plan_read(0, first_end as u32, usize::MAX)
            .unwrap()
            .read_into(&mut frames)
            .unwrap();
        // The copy has a larger segment size: boundaries still follow the source's.
        let copy_dir = tempfile::tempdir().unwrap();
        let mut copy = PartitionLog::create(copy_dir.path(), 1 << 20, true).unwrap();
        let mut damaged = frames.clone();
        damaged[100] ^= 1;
        assert!(copy.append_synced(&damaged, first_start).is_err());
        assert!(copy.is_empty(), "nothing of a bad chunk is written");
        assert_eq!(copy.append_synced(&frames, first_start).unwrap(), first_end);
        assert!(
            copy.append_synced(&frames, first_start).is_err(),
            "offsets must continue the log"
        );
        sync_segments(&source, &mut copy);
        assert_eq!(copy.next_offset(), 30);
        assert_eq!(copy.segments_count(), source.segments_count());
        assert_eq!(copy.sealed_segments(), source.sealed_segments());
        assert_eq!(
            copy.last_checksum().unwrap(),
            source.last_checksum().unwrap()
        );
        let (mut original, mut again) = (Vec::new(), Vec::new());
        source
            .plan_read(0, 30, usize::MAX)
            .unwrap()
            .read_into(&mut original)
            .unwrap();
        copy.plan_read(0, 30, usize::MAX)
            .unwrap()
            .read_into(&mut again)
            .unwrap();
        assert_eq!(again, original);
        // A chunk claiming a segment that starts neither at the copy's end nor where its
        // active segment does (segments here start at multiples of 5).
        source.append(&mut batch(5, 100), 2000, || 7).unwrap();
        let mut more = Vec::new();
        source
            .plan_read(30, 5, usize::MAX)
            .unwrap()
            .read_into(&mut more)
            .unwrap();
        assert!(copy.append_synced(&more, 31).is_err());
        assert_eq!(copy.next_offset(), 30);
    }

    #[test]
    fn a_log_restarted_at_a_peers_first_local_offset_continues_from_there() {
        let source_dir = tempfile::tempdir().unwrap();
        let mut source = six_batches_of_five(source_dir.path());
        // Retention took the source's oldest two segments.
        source.delete_oldest_segments(2).unwrap();
        let first_local = source.local_start();
        assert!(first_local > 0);

        let copy_dir = tempfile::tempdir().unwrap();
        let mut copy = PartitionLog::create(copy_dir.path(), 4096, true).unwrap();
        copy.append(&mut batch(3, 100), 1, || 7).unwrap();
        copy.restart_at(first_local, Vec::new()).unwrap();
        assert!(copy.is_empty());
        assert_eq!(copy.next_offset(), first_local);
        sync_segments(&source, &mut copy);
        assert_eq!(copy.first_offset(), source.first_offset());
        assert_eq!(copy.messages_count(), source.messages_count());
        assert_eq!(copy.sealed_segments(), source.sealed_segments());
        drop(copy);
        let (reopened, _) = PartitionLog::open(copy_dir.path(), 4096, true).unwrap();
        assert_eq!(reopened.first_offset(), source.first_offset());
        assert_eq!(reopened.next_offset(), source.next_offset());

        // The object store's segments must end where the local ones start.
        let mut other =
            PartitionLog::create(tempfile::tempdir().unwrap().path(), 4096, true).unwrap();
        let gap = TieredSegment {
            start_offset: 0,
            next_offset: first_local - 1,
            log_size: 1,
            index_size: 1,
            first_timestamp: 0,
            last_timestamp: 0,
            log_checksum: 0,
            index_checksum: 0,
            uploaded_at: 0,
        };
        assert!(other.restart_at(first_local, vec![gap]).is_err());
    }

    #[test]
    fn reopen_after_clean_shutdown_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, true).unwrap();
        for _ in 0..10 {
            log.append(&mut batch(5, 100), 1, || 9).unwrap();
        }
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), 4096, true).unwrap();
        assert_eq!(
            report.verified_bytes, 0,
            "a clean shutdown leaves nothing to verify"
        );
        assert_eq!(log.messages_count(), 50);
        assert_eq!(read_offsets(&log, 0, 100, usize::MAX).len(), 50);
    }

    #[test]
    fn the_checkpointed_end_is_the_offset_the_checkpoint_covers_up_to() {
        let dir = tempfile::tempdir().unwrap();
        // 164-byte messages in 1 KiB segments: six to a segment.
        let mut log = PartitionLog::create(dir.path(), 1024, true).unwrap();
        assert_eq!(log.checkpointed_end().unwrap(), 0, "no checkpoint");
        log.append(&mut batch(3, 100), 1, || 9).unwrap();
        log.write_checkpoint().unwrap();
        log.append(&mut batch(2, 100), 1, || 9).unwrap();
        assert_eq!(log.checkpointed_end().unwrap(), 3);
        log.write_checkpoint().unwrap();
        assert_eq!(log.checkpointed_end().unwrap(), 5, "the whole log");
        log.append(&mut batch(4, 100), 1, || 9).unwrap();
        assert_eq!(log.sealed_end(), 5);
        assert_eq!(
            log.checkpointed_end().unwrap(),
            5,
            "the checkpoint's segment was sealed: the sealed end"
        );
        log.append(&mut batch(1, 100), 1, || 9).unwrap();
        log.write_checkpoint().unwrap();
        log.truncate_to(7).unwrap();
        assert_eq!(log.checkpointed_end().unwrap(), 5, "cut below it: gone");
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 20, false).unwrap();
        log.append(&mut batch(1, 10), 500, || 1).unwrap();
        log.append(&mut batch(1, 10), 100, || 1).unwrap();
        let mut out = Vec::new();
        log.plan_read(1, 1, usize::MAX)
            .unwrap()
            .read_into(&mut out)
            .unwrap();
        assert_eq!(FrameHeader::new(&out).unwrap().timestamp(), 500);
    }

    #[test]
    fn deleting_old_segments_keeps_counts_exact_and_offsets_monotonic() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for _ in 0..10 {
            log.append(&mut batch(5, 100), 1, || 9).unwrap();
        }
        let segments = log.segments_count() as usize;
        let sealed = log.sealed_segments();
        assert_eq!(sealed.len(), segments - 1);
        let removed_bytes: u64 = sealed[..2].iter().map(|(_, size)| size).sum();
        let (messages, bytes) = (log.messages_count(), log.size_bytes());
        assert_eq!(log.delete_oldest_segments(2).unwrap(), 2);
        assert_eq!(log.size_bytes(), bytes - removed_bytes);
        let first = log.first_offset().unwrap();
        assert_eq!(log.messages_count(), messages - first);
        assert_eq!(
            read_offsets(&log, 0, 3, usize::MAX),
            vec![first, first + 1, first + 2]
        );
        assert_eq!(
            log.delete_oldest_segments(1000).unwrap(),
            segments - 3,
            "the active segment stays"
        );
        assert_eq!(log.segments_count(), 1);
        let (reopened, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(reopened.messages_count(), log.messages_count());
        assert_eq!(reopened.next_offset(), 50);
    }

    /// A restart from a checkpoint brings back a segment an op deleted after it (retention's,
    /// from the graveyard) but not the next one, which the tiering loop evicted meanwhile and
    /// the object store holds: the brought-back segment is dropped and the log opens at the
    /// gap's end (`make chaos` seed 38402 stopped a member at boot on that gap). A gap the
    /// store does not hold is still refused: messages would be missing.
    #[test]
    fn a_segment_brought_back_below_an_evicted_one_is_dropped_at_boot() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 4 KiB: every batch of 10 × 300 B fills one.
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for round in 0..4u64 {
            log.append(&mut batch(10, 300), 1000 + round, || 7).unwrap();
        }
        let oldest: Vec<PathBuf> = ["log", "index"]
            .iter()
            .map(|ext| dir.path().join(format!("{}.{ext}", file_stem(0))))
            .collect();
        let saved: Vec<Vec<u8>> = oldest.iter().map(|f| std::fs::read(f).unwrap()).collect();
        tier_oldest(&mut log, 2);
        assert_eq!(log.local_start(), 20);
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        drop(log);
        // The first segment comes back, the second does not.
        for (file, bytes) in oldest.iter().zip(&saved) {
            std::fs::write(file, bytes).unwrap();
        }
        let (log, _) = PartitionLog::open(dir.path(), 4096, false).expect("opens at the gap's end");
        assert_eq!(log.local_start(), 20);
        assert_eq!(log.remote_segments().len(), 2);
        assert_eq!(log.next_offset(), 40);
        assert_eq!(
            read_offsets(&log, 20, 100, usize::MAX),
            (20..40).collect::<Vec<_>>()
        );
        assert!(oldest.iter().all(|f| !f.exists()), "its files are gone");
        drop(log);

        // The same gap with a manifest that does not name it: refused, nothing removed.
        let tiered_file = dir.path().join(tiered::FILE_NAME);
        let mut manifest = tiered::load(dir.path()).unwrap();
        manifest.segments.truncate(1);
        tiered::store(dir.path(), &manifest).unwrap();
        for (file, bytes) in oldest.iter().zip(&saved) {
            std::fs::write(file, bytes).unwrap();
        }
        assert!(tiered_file.exists());
        assert!(matches!(
            PartitionLog::open(dir.path(), 4096, false),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(oldest.iter().all(|f| f.exists()));
    }

    /// A partition directory below `data` holding offsets 0..40 in four 4 KiB segments (every
    /// batch of 10 × 300 B fills one), the oldest tiered and evicted, synced and checkpointed.
    fn checkpointed_partition(data: &Path) -> (PathBuf, PartitionLog) {
        let dir = data.join("streams/1/topics/1/partitions/0");
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = PartitionLog::create(&dir, 4096, false).unwrap();
        for round in 0..4u64 {
            log.append(&mut batch(10, 300), 1000 + round, || 7).unwrap();
        }
        tier_oldest(&mut log, 1);
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        (dir, log)
    }

    /// State sync restarts a log at a peer's first local offset while the op that asked for it
    /// is not yet durable; a kill before it is must find the log as the durable checkpoint knew
    /// it. The old segments came back from the graveyard beside the sync's new ones, a gap
    /// between them the object store does not hold, and boot refused the partition (`make
    /// chaos` seed 40029, a member killed mid-sync): the restart is undone with the burials.
    #[test]
    fn a_restart_killed_before_its_checkpoint_is_durable_is_undone_at_boot() {
        let data = tempfile::tempdir().unwrap();
        let (dir, mut log) = checkpointed_partition(data.path());
        let manifest_before = std::fs::read(dir.join(tiered::FILE_NAME)).unwrap();

        // Op 50's sync: the peer's local data starts at 60, the store holds nothing below it;
        // the sync writes two segments' worth from there. Then the replica is killed.
        graveyard::during(data.path(), 50, || {
            log.restart_at(60, Vec::new()).unwrap();
            for round in 0..2u64 {
                log.append(&mut batch(10, 300), 2000 + round, || 7).unwrap();
            }
        });
        assert_eq!(log.next_offset(), 80);
        drop(log);

        // Boot from the checkpoint before op 50.
        assert!(graveyard::exhume(data.path(), 40).unwrap() > 0);
        let (log, _) = PartitionLog::open(&dir, 4096, false).expect("opens as before the sync");
        assert_eq!((log.local_start(), log.next_offset()), (10, 40));
        assert_eq!(
            std::fs::read(dir.join(tiered::FILE_NAME)).unwrap(),
            manifest_before,
            "the tier manifest is the log's own again"
        );
        assert_eq!(
            read_offsets(&log, 10, 100, usize::MAX),
            (10..40).collect::<Vec<_>>()
        );
        drop(log);

        // A boot from a checkpoint at or after op 50 keeps the synced log.
        let mut log = PartitionLog::open(&dir, 4096, false).unwrap().0;
        graveyard::during(data.path(), 60, || {
            log.restart_at(60, Vec::new()).unwrap();
            log.append(&mut batch(10, 300), 3000, || 7).unwrap();
        });
        drop(log);
        assert_eq!(graveyard::exhume(data.path(), 60).unwrap(), 0);
        let (log, _) = PartitionLog::open(&dir, 4096, false).unwrap();
        assert_eq!((log.local_start(), log.next_offset()), (60, 70));
    }

    /// The same for a purge applied after the checkpoint a replica restarts from: the log's new
    /// segments, cut at other offsets than the old ones, went on lying beside the old ones the
    /// graveyard gave back, and boot refused the overlap.
    #[test]
    fn a_purge_after_the_checkpoint_is_undone_at_boot() {
        let data = tempfile::tempdir().unwrap();
        let (dir, mut log) = checkpointed_partition(data.path());
        let starts = |log: &PartitionLog| -> Vec<u64> {
            log.segments.iter().map(|s| s.start_offset).collect()
        };
        let before = starts(&log);

        let dropped = graveyard::during(data.path(), 50, || {
            let dropped = log.purge().unwrap();
            for round in 0..4u64 {
                log.append(&mut batch(7, 300), 2000 + round, || 7).unwrap();
            }
            dropped
        });
        assert_eq!(
            dropped.len(),
            1,
            "the object store's segment goes with the purge"
        );
        assert!(log.remote_segments().is_empty());
        assert_ne!(starts(&log), before, "the new segments are cut elsewhere");
        drop(log);

        graveyard::exhume(data.path(), 40).unwrap();
        let (log, _) = PartitionLog::open(&dir, 4096, false).expect("opens as before the purge");
        assert_eq!(starts(&log), before);
        assert_eq!(log.remote_segments().len(), 1);
        assert_eq!(
            read_offsets(&log, 10, 100, usize::MAX),
            (10..40).collect::<Vec<_>>()
        );
    }

    /// Tiers and evicts the oldest `n` sealed segments, as the tiering loop would.
    fn tier_oldest(log: &mut PartitionLog, n: usize) {
        for candidate in log.upload_candidates(n).unwrap() {
            assert!(log.record_tiered(candidate.segment).unwrap());
        }
        let evicted = log.evict_local(|_, _| true);
        remove_segment_files(&log.dir.clone(), &evicted).unwrap();
    }

    fn read(plan: ReadPlan) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        plan.read_into(&mut out).map(|()| out)
    }

    #[test]
    fn a_damaged_read_keeps_only_the_intact_frames_before_the_damage_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 20, false).unwrap();
        log.append(&mut batch(10, 100), 1, || 9).unwrap();
        let whole = read(log.plan_read(0, 10, usize::MAX).unwrap()).unwrap();
        let frame = whole.len() / 10;
        let file = dir
            .path()
            .join(format!("{}.log", super::super::segment::file_stem(0)));
        let mut bytes = std::fs::read(&file).unwrap();
        // A payload byte of the seventh message.
        bytes[6 * frame + frame / 2] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();

        let mut out = b"kept".to_vec();
        let damage = log
            .plan_read(0, 10, usize::MAX)
            .unwrap()
            .read_into(&mut out);
        assert!(matches!(damage, Err(StorageError::CorruptRead { .. })));
        assert_eq!(out, b"kept", "read_into leaves nothing of a damaged range");

        let mut out = b"kept".to_vec();
        let damage = log
            .plan_read(0, 10, usize::MAX)
            .unwrap()
            .read_intact_prefix(&mut out);
        assert!(
            matches!(damage, Err(StorageError::CorruptRead { position, .. })
            if position == (6 * frame) as u64)
        );
        assert_eq!(
            out[4..],
            whole[..6 * frame],
            "the six messages before the damage"
        );

        assert_eq!(
            log.plan_read(0, 10, usize::MAX).unwrap().intact_messages(),
            6
        );
        assert_eq!(
            log.plan_read(2, 8, usize::MAX).unwrap().intact_messages(),
            4
        );
        assert_eq!(
            log.plan_read(7, 3, usize::MAX).unwrap().intact_messages(),
            3
        );

        let mut out = Vec::new();
        let damage = log
            .plan_read(6, 4, usize::MAX)
            .unwrap()
            .read_intact_prefix(&mut out);
        assert!(damage.is_err());
        assert!(out.is_empty(), "damage at the start leaves nothing");
        assert_eq!(
            log.plan_read(6, 4, usize::MAX).unwrap().intact_messages(),
            0
        );
    }

    #[test]
    fn polls_of_the_newest_batches_come_from_l1_without_reading_the_disk() {
        let _serial = super::super::l1::BUDGET_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        super::super::l1::set_capacity(1 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 20, false).unwrap();
        let now = fsutil::now_micros();
        log.append(&mut batch(5, 100), now, || 9).unwrap();
        assert_eq!(
            super::super::l1::used(),
            0,
            "no consumer at the end yet: nothing cached"
        );
        log.truncate_to(0).unwrap();
        log.want_newest();
        for round in 0..3 {
            log.append(&mut batch(5, 100), now + round, || 9).unwrap();
        }
        let written = read(log.plan_read(0, 100, usize::MAX).unwrap()).unwrap();
        assert_eq!(
            read(log.plan_poll(0, 100, usize::MAX).unwrap()).unwrap(),
            written
        );
        assert_eq!(
            read(log.plan_poll(7, 4, usize::MAX).unwrap())
                .unwrap()
                .len(),
            4 * (written.len() / 15)
        );

        // Rot on disk under the first batch: the disk read refuses it, the poll never sees it.
        let file = dir
            .path()
            .join(format!("{}.log", super::super::segment::file_stem(0)));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(
            read(log.plan_read(0, 100, usize::MAX).unwrap()),
            Err(StorageError::CorruptRead { .. })
        ));
        assert_eq!(
            read(log.plan_poll(0, 100, usize::MAX).unwrap()).unwrap(),
            written
        );

        // Cut back and rewritten differently: what L1 held there is gone with it.
        log.truncate_to(5).unwrap();
        log.append(&mut batch(3, 60), 2000, || 9).unwrap();
        let rewritten = read(log.plan_read(5, 100, usize::MAX).unwrap()).unwrap();
        assert_eq!(
            read(log.plan_poll(5, 100, usize::MAX).unwrap()).unwrap(),
            rewritten
        );
        assert_ne!(rewritten, written[written.len() / 3..]);
        // Only the new batch is cached: the first batch's rot shows again.
        assert!(read(log.plan_poll(0, 100, usize::MAX).unwrap()).is_err());
        super::super::l1::set_capacity(0);
    }

    #[test]
    fn tiered_segments_count_read_remotely_and_retention_takes_them_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for _ in 0..30 {
            log.append(&mut batch(5, 100), 1, || 9).unwrap();
        }
        let (messages, bytes) = (log.messages_count(), log.size_bytes());
        tier_oldest(&mut log, 4);
        assert_eq!(log.remote_segments().len(), 4);
        assert_eq!((log.messages_count(), log.size_bytes()), (messages, bytes));
        assert_eq!(log.first_offset(), Some(0));
        let plan = log.plan_read(0, 10, usize::MAX).unwrap();
        assert_eq!(plan.remote.map(|r| r.segment.start_offset), Some(0));
        // Reopened: the manifest and the local tail make the same log.
        let (reopened, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(reopened.remote_segments(), log.remote_segments());
        assert_eq!(reopened.messages_count(), messages);
        // Retention takes the oldest tiered segment only, then the rest.
        let taken = log.take_oldest_segments(1).unwrap();
        assert_eq!(
            (taken.segments, taken.tiered.len(), taken.local.len()),
            (1, 1, 0)
        );
        assert_eq!(log.remote_segments().len(), 3);
        let taken = log.take_oldest_segments(4).unwrap();
        assert_eq!(
            (taken.segments, taken.tiered.len(), taken.local.len()),
            (4, 3, 1)
        );
        remove_segment_files(dir.path(), &taken.local).unwrap();
        assert!(log.remote_segments().is_empty());
        assert_eq!(log.messages_count(), messages - log.first_offset().unwrap());
        let (reopened, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(reopened.first_offset(), log.first_offset());
    }

    #[test]
    fn purge_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4096, false).unwrap();
        for _ in 0..10 {
            log.append(&mut batch(5, 100), 1, || 9).unwrap();
        }
        log.purge().unwrap();
        assert!(log.is_empty());
        assert_eq!(
            log.append(&mut batch(1, 10), 1, || 1).unwrap().base_offset,
            0
        );
        let (reopened, _) = PartitionLog::open(dir.path(), 4096, false).unwrap();
        assert_eq!(reopened.messages_count(), 1);
    }
}
