//! One segment: a `.log` of message frames exactly as on the wire, and a `.index` of 16-byte
//! entries (offset relative to the segment start, end position of the frame in the `.log`,
//! timestamp). The in-memory copy of the index answers every offset and time lookup; the file
//! exists so that boot does not have to walk the log, and it is always derivable from the log.

use super::descriptors::SegmentFile;
use super::{IoContext, StorageError};
use iggy_wire::message::INDEX_ENTRY_SIZE;
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
    pub index: Vec<IndexEntry>,
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
            index: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Offset of the last message, if any.
    pub fn last_offset(&self) -> Option<u64> {
        self.index
            .last()
            .map(|e| self.start_offset + e.relative_offset as u64)
    }

    pub fn next_offset(&self) -> u64 {
        self.start_offset + self.index.len() as u64
    }

    /// Byte position where message `i` (index position) starts.
    pub fn start_of(&self, i: usize) -> u64 {
        if i == 0 {
            0
        } else {
            self.index[i - 1].end as u64
        }
    }

    /// Appends frames and their index entries with positional writes. On failure the files are
    /// cut back to their previous length, so a full disk leaves no half-written batch behind.
    pub fn append(&mut self, frames: &[u8], entries: &[IndexEntry]) -> Result<(), StorageError> {
        let log_before = self.size;
        let index_before = (self.index.len() * INDEX_ENTRY_SIZE) as u64;
        if let Err(e) = self.log.write_all_at(frames, log_before) {
            let _ = self.log.set_len(log_before);
            return Err(e);
        }
        let mut encoded = Vec::with_capacity(entries.len() * INDEX_ENTRY_SIZE);
        for entry in entries {
            entry.encode(&mut encoded);
        }
        if let Err(e) = self.index_file.write_all_at(&encoded, index_before) {
            let _ = self.index_file.set_len(index_before);
            let _ = self.log.set_len(log_before);
            return Err(e);
        }
        self.size += frames.len() as u64;
        self.index.extend_from_slice(entries);
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
    pub fn first_at_or_after(&self, timestamp: u64) -> Option<usize> {
        let i = self.index.partition_point(|e| e.timestamp < timestamp);
        (i < self.index.len()).then_some(i)
    }

    /// Rewrites the `.index` file from memory (after recovery changed it) and trims the `.log`.
    pub fn rewrite_files(&mut self) -> Result<(), StorageError> {
        let mut encoded = Vec::with_capacity(self.index.len() * INDEX_ENTRY_SIZE);
        for entry in &self.index {
            entry.encode(&mut encoded);
        }
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
