//! The per-partition checkpoint: how far the log was known intact and durable when it was
//! written — at a clean shutdown, and while running every `storage.checkpoint_interval` for the
//! partitions written since (`Partition::checkpoint_running`). Boot recovery re-verifies
//! checksums only after it, so a restart after a clean stop is fast and a restart after a crash
//! checks what the crash could have damaged: what was written since the last checkpoint. It
//! stays true after a crash because the log is append-only; the operations that cut a log
//! (`PartitionLog::truncate_to`, `purge`, `restart_at`) remove it first, durably.

use super::{fsutil, StorageError};
use std::path::Path;

pub const FILE_NAME: &str = "checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Start offset of the segment the position refers to.
    pub segment_start: u64,
    /// Bytes of that segment's `.log` known intact; earlier segments are intact entirely.
    pub position: u64,
}

impl Checkpoint {
    /// Reads the checkpoint; a missing or damaged file means "verify everything".
    pub fn load(partition_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(partition_dir.join(FILE_NAME)).ok()?;
        if bytes.len() != 24 {
            return None;
        }
        let field = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(a)
        };
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..16]);
        (checksum == field(2)).then(|| Checkpoint {
            segment_start: field(0),
            position: field(1),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.segment_start.to_le_bytes());
        bytes.extend_from_slice(&self.position.to_le_bytes());
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    pub fn store(&self, partition_dir: &Path) -> Result<(), StorageError> {
        fsutil::write_atomically(&partition_dir.join(FILE_NAME), &self.encode())
    }

    /// Writes the checkpoint beside the current one, fsynced, for the caller to install once it
    /// knows the log was not cut meanwhile, then sync the directory.
    pub fn stage(&self, partition_dir: &Path) -> Result<fsutil::Staged, StorageError> {
        fsutil::stage(&partition_dir.join(FILE_NAME), &self.encode())
    }

    /// Removes the checkpoint; true when there was one (the caller then syncs the directory).
    pub fn remove(partition_dir: &Path) -> Result<bool, StorageError> {
        let path = partition_dir.join(FILE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StorageError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            segment_start: 1000,
            position: 4242,
        };
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()), Some(cp));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Checkpoint::load(dir.path()), None);
    }
}
