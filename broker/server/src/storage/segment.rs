//! One segment: a `.log` of message frames exactly as on the wire, and a `.index` of 16-byte
//! entries (offset relative to the segment start, end position of the frame in the `.log`,
//! timestamp). The file exists so that boot does not have to walk the log, and it is always
//! derivable from the log.
//!
//! No segment keeps its index entries in memory, only how many there are and the first and
//! last: a read takes the entries it covers from the file (one positional read, from the page
//! cache while the segment is in use), a timestamp search one 16-byte read per step. Every
//! entry costs 16 bytes, so keeping them made a broker's memory grow with what it stores: 32
//! MiB more for two million messages, on a broker that idles at 10 (docs/broker.md, "Reads").
//! Iggy 0.8.0 keeps the open segment's entries (`cache_indexes = "open_segment"`), up to about
//! 100 MiB for a 1 GiB segment of 100-byte messages, per partition.

use super::descriptors::SegmentFile;
use super::{IoContext, StorageError};
use iggy_wire::message::{HEADER_SIZE, INDEX_ENTRY_SIZE};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    /// Byte position in the `.log` where this message ends (it starts where the previous ends).
    pub end: u32,
    pub timestamp: u64,
}

impl IndexEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_le_bytes());
        out.extend_from_slice(&self.end.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
    }

    /// Whether this entry can stand at index position `position` of a log of `log_len` bytes
    /// whose previous message ends at `previous_end` (0 for the first): its relative offset is
    /// its position, and it ends at least a message header after the previous one, inside the
    /// log. Boot and every read of an index file hold entries to it.
    pub fn fits(&self, position: usize, previous_end: u64, log_len: u64) -> bool {
        let end = u64::from(self.end);
        self.relative_offset as usize == position
            && end >= previous_end + HEADER_SIZE as u64
            && end <= log_len
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[8..16]);
        Self {
            relative_offset: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            end: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            timestamp: u64::from_le_bytes(ts),
        }
    }
}

pub fn file_stem(start_offset: u64) -> String {
    format!("{start_offset:020}")
}

pub struct Segment {
    pub start_offset: u64,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    /// Opened on demand within the process's descriptor budget (`storage::descriptors`);
    /// clones share it, so the group-commit fsync can run outside the partition lock.
    pub log: SegmentFile,
    /// Shared for the same reason (a replication checkpoint's sync).
    index_file: SegmentFile,
    /// Bytes of valid frames in the `.log`.
    pub size: u64,
    index: Index,
}

/// A segment's index: the entries are in the `.index` file, which holds exactly them (appends
/// write the file before counting an entry; recovery rewrites a file that differs from the log;
/// a cut truncates it). Recovery builds a segment's entries in memory first (`Building`).
#[derive(Debug)]
enum Index {
    Building(Vec<IndexEntry>),
    InFile {
        len: usize,
        first: Option<IndexEntry>,
        last: Option<IndexEntry>,
    },
}

impl Index {
    const EMPTY: Index = Index::InFile {
        len: 0,
        first: None,
        last: None,
    };
}

impl Segment {
    /// Opens (creating if needed) the two files of the segment starting at `start_offset`.
    /// The caller fills `size` and `index` (fresh segments are empty; recovery computes them).
    pub fn open(dir: &Path, start_offset: u64) -> Result<Self, StorageError> {
        let stem = file_stem(start_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let index_path = dir.join(format!("{stem}.index"));
        Ok(Self {
            start_offset,
            log: SegmentFile::create(log_path.clone())?,
            index_file: SegmentFile::create(index_path.clone())?,
            log_path,
            index_path,
            size: 0,
            index: Index::EMPTY,
        })
    }

    /// Number of messages (index entries).
    pub fn len(&self) -> usize {
        match &self.index {
            Index::Building(entries) => entries.len(),
            Index::InFile { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn first_entry(&self) -> Option<IndexEntry> {
        match &self.index {
            Index::Building(entries) => entries.first().copied(),
            Index::InFile { first, .. } => *first,
        }
    }

    pub fn last_entry(&self) -> Option<IndexEntry> {
        match &self.index {
            Index::Building(entries) => entries.last().copied(),
            Index::InFile { last, .. } => *last,
        }
    }

    /// Offset of the last message, if any.
    pub fn last_offset(&self) -> Option<u64> {
        self.last_entry()
            .map(|e| self.start_offset + e.relative_offset as u64)
    }

    pub fn next_offset(&self) -> u64 {
        self.start_offset + self.len() as u64
    }

    /// Entries `from..upto` (`upto` at most [`Self::len`]): borrowed from memory, or read from
    /// the file and checked to belong where they are read.
    pub fn entries(&self, from: usize, upto: usize) -> Result<Cow<'_, [IndexEntry]>, StorageError> {
        match &self.index {
            Index::Building(entries) => Ok(Cow::Borrowed(&entries[from..upto])),
            Index::InFile { .. } => self.read_entries(from, upto).map(Cow::Owned),
        }
    }

    /// Where message `from` starts in the `.log` and the entries `from..upto`, in one read of
    /// the index (the entry before `from` gives the start).
    pub fn span(
        &self,
        from: usize,
        upto: usize,
    ) -> Result<(u64, Cow<'_, [IndexEntry]>), StorageError> {
        let read = self.entries(from.saturating_sub(1), upto)?;
        if from == 0 {
            return Ok((0, read));
        }
        let start = u64::from(read[0].end);
        let entries = match read {
            Cow::Borrowed(entries) => Cow::Borrowed(&entries[1..]),
            Cow::Owned(mut entries) => {
                entries.remove(0);
                Cow::Owned(entries)
            }
        };
        Ok((start, entries))
    }

    /// Entry `i`, if the segment holds it.
    pub fn entry(&self, i: usize) -> Result<Option<IndexEntry>, StorageError> {
        if i >= self.len() {
            return Ok(None);
        }
        Ok(self.entries(i, i + 1)?.first().copied())
    }

    /// How many of the segment's messages end at or before byte `position` (a binary search,
    /// one entry read per step).
    pub fn messages_within(&self, position: u64) -> Result<usize, StorageError> {
        if position >= self.size {
            return Ok(self.len());
        }
        self.count_leading(|entry| u64::from(entry.end) <= position)
    }

    /// How many entries from the first on satisfy `leading`, which must hold for a prefix of
    /// the index and fail for the rest: a binary search, one entry read per step.
    fn count_leading(&self, leading: impl Fn(&IndexEntry) -> bool) -> Result<usize, StorageError> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.entry(middle)? {
                Some(entry) if leading(&entry) => low = middle + 1,
                _ => high = middle,
            }
        }
        Ok(low)
    }

    /// Byte position where message `i` (index position) starts.
    pub fn start_of(&self, i: usize) -> Result<u64, StorageError> {
        match i.checked_sub(1) {
            None => Ok(0),
            Some(previous) => Ok(self.entry(previous)?.map_or(self.size, |e| e.end as u64)),
        }
    }

    /// Recovery found these entries; they stay in memory until [`Self::finish_building`].
    pub fn set_index(&mut self, entries: Vec<IndexEntry>) {
        self.index = Index::Building(entries);
    }

    /// Recovery is done with the segment: its entries are in its file (rewritten if they
    /// differed) and are read from there from now on.
    pub fn finish_building(&mut self) {
        if let Index::Building(entries) = &self.index {
            self.index = Index::InFile {
                len: entries.len(),
                first: entries.first().copied(),
                last: entries.last().copied(),
            };
        }
    }

    /// Boot, for a segment the checkpoint covers whole (before the checkpoint's segment): takes
    /// the index file as it is when its ends agree with the log — its length a whole number of
    /// entries, the first at relative offset 0, the last at the last position and ending where
    /// the log does — without reading the entries between. Those are checked as reads take
    /// them, and a damaged one is rebuilt from the log then. Returns whether it was taken.
    pub fn adopt_index_file(&mut self, log_len: u64) -> Result<bool, StorageError> {
        let file_len = self.index_file.file_len()?;
        let entry = INDEX_ENTRY_SIZE as u64;
        if file_len == 0 || file_len % entry != 0 {
            return Ok(false);
        }
        let len = (file_len / entry) as usize;
        let mut ends = [0u8; INDEX_ENTRY_SIZE];
        self.index_file.read_exact_at(&mut ends, 0)?;
        let first = IndexEntry::decode(&ends);
        self.index_file.read_exact_at(&mut ends, file_len - entry)?;
        let last = IndexEntry::decode(&ends);
        let agree = first.fits(0, 0, log_len)
            && last.relative_offset as usize == len - 1
            && u64::from(last.end) == log_len
            && first.end <= last.end;
        if agree {
            self.size = log_len;
            self.index = Index::InFile {
                len,
                first: Some(first),
                last: Some(last),
            };
        }
        Ok(agree)
    }

    /// Entries held in memory: only while recovery builds the segment.
    pub fn resident_entries(&self) -> usize {
        match &self.index {
            Index::Building(entries) => entries.len(),
            Index::InFile { .. } => 0,
        }
    }

    /// The `.index` file's bytes for these entries (what the object store gets beside the log).
    pub fn index_bytes(&self) -> Result<Vec<u8>, StorageError> {
        let entries = self.entries(0, self.len())?;
        let mut encoded = Vec::with_capacity(entries.len() * INDEX_ENTRY_SIZE);
        for entry in entries.iter() {
            entry.encode(&mut encoded);
        }
        Ok(encoded)
    }

    /// Reads entries `from..upto` from the file, each held to [`IndexEntry::fits`] (the first
    /// one read against a previous end of 0): a damaged file is refused, never used to place a
    /// read.
    fn read_entries(&self, from: usize, upto: usize) -> Result<Vec<IndexEntry>, StorageError> {
        let mut bytes = vec![0u8; (upto - from) * INDEX_ENTRY_SIZE];
        self.index_file
            .read_exact_at(&mut bytes, (from * INDEX_ENTRY_SIZE) as u64)?;
        let mut previous_end = 0;
        let mut entries = Vec::with_capacity(upto - from);
        for (k, chunk) in bytes.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
            let entry = IndexEntry::decode(chunk);
            if !entry.fits(from + k, previous_end, self.size) {
                return Err(StorageError::CorruptRead {
                    path: self.index_path.clone(),
                    position: ((from + k) * INDEX_ENTRY_SIZE) as u64,
                    reason: "an index entry does not fit its segment",
                });
            }
            previous_end = u64::from(entry.end);
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Appends frames and their index entries with positional writes. On failure the files are
    /// cut back to their previous length, so a full disk leaves no half-written batch behind.
    pub fn append(&mut self, frames: &[u8], entries: &[IndexEntry]) -> Result<(), StorageError> {
        self.write_past_end(frames)?;
        self.take_written(frames.len() as u64, entries)
    }

    /// Writes frames at the log's end without taking them in: the size and index stay as they
    /// were, so no read sees them until [`Self::take_written`]. On failure the file is cut back.
    pub fn write_past_end(&self, frames: &[u8]) -> Result<(), StorageError> {
        if let Err(e) = self.log.write_all_at(frames, self.size) {
            let _ = self.log.set_len(self.size);
            return Err(e);
        }
        Ok(())
    }

    /// Takes in `frames_len` bytes of frames written past the end ([`Self::write_past_end`])
    /// by writing their index entries. On failure both files are cut back to what they held
    /// before the frames.
    pub fn take_written(
        &mut self,
        frames_len: u64,
        entries: &[IndexEntry],
    ) -> Result<(), StorageError> {
        let log_before = self.size;
        let index_before = (self.len() * INDEX_ENTRY_SIZE) as u64;
        let mut encoded = Vec::with_capacity(entries.len() * INDEX_ENTRY_SIZE);
        for entry in entries {
            entry.encode(&mut encoded);
        }
        if let Err(e) = self.index_file.write_all_at(&encoded, index_before) {
            let _ = self.index_file.set_len(index_before);
            let _ = self.log.set_len(log_before);
            return Err(e);
        }
        self.size += frames_len;
        match &mut self.index {
            Index::Building(building) => building.extend_from_slice(entries),
            Index::InFile { len, first, last } => {
                *len += entries.len();
                *first = first.or_else(|| entries.first().copied());
                *last = entries.last().copied().or(*last);
            }
        }
        Ok(())
    }

    /// Appends `len` bytes of the `.log` starting at `position` to `out`.
    pub fn read_into(
        &self,
        position: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let at = out.len();
        out.resize(at + len, 0);
        self.log.read_exact_at(&mut out[at..], position)
    }

    /// Index position of the first message whose timestamp is at or after `timestamp`.
    pub fn first_at_or_after(&self, timestamp: u64) -> Result<Option<usize>, StorageError> {
        let len = self.len();
        // A binary search, one entry read per step; the kept ends answer without a read when
        // the time is outside the segment.
        match (self.first_entry(), self.last_entry()) {
            (_, None) => return Ok(None),
            (_, Some(last)) if last.timestamp < timestamp => return Ok(None),
            (Some(first), _) if first.timestamp >= timestamp => return Ok(Some(0)),
            _ => {}
        }
        let first = self.count_leading(|e| e.timestamp < timestamp)?;
        Ok((first < len).then_some(first))
    }

    /// Cuts the segment to its first `entries` messages, on disk too.
    pub fn cut_to(&mut self, entries: usize) -> Result<(), StorageError> {
        if entries >= self.len() {
            return Ok(());
        }
        let size = self.start_of(entries)?;
        let last = match entries.checked_sub(1) {
            Some(i) => self.entry(i)?,
            None => None,
        };
        self.index_file
            .set_len((entries * INDEX_ENTRY_SIZE) as u64)?;
        self.index_file.sync_all()?;
        self.log.set_len(size)?;
        self.log.sync_all()?;
        self.size = size;
        self.index = Index::InFile {
            len: entries,
            first: self.first_entry().filter(|_| entries > 0),
            last,
        };
        Ok(())
    }

    /// Rewrites the `.index` file from memory (after recovery changed it) and trims the `.log`.
    pub fn rewrite_files(&mut self) -> Result<(), StorageError> {
        let encoded = self.index_bytes()?;
        self.index_file.set_len(0)?;
        self.index_file.write_all_at(&encoded, 0)?;
        self.index_file.sync_all()?;
        self.log.set_len(self.size)?;
        self.log.sync_all()
    }

    /// The segment's two files, to fsync without holding the partition's lock.
    pub fn sync_handles(&self) -> [SegmentFile; 2] {
        [self.log.clone(), self.index_file.clone()]
    }

    pub fn sync(&self) -> Result<(), StorageError> {
        self.log.sync_data()?;
        self.index_file.sync_data()
    }

    pub fn remove_files(&self) -> Result<(), StorageError> {
        std::fs::remove_file(&self.log_path).at(&self.log_path)?;
        std::fs::remove_file(&self.index_path).at(&self.index_path)
    }
}
