//! Small filesystem helpers whose ordering matters for crash safety.

use super::{IoContext, StorageError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// fsyncs a directory so that entries created or renamed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `path` with `bytes` atomically: write a sibling temp file, fsync it, rename it over
/// the target, fsync the directory. A crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates a directory and its parents, then fsyncs each newly reachable level's parent.
pub fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).at(dir)?;
    let mut current = Some(dir);
    // Two levels are enough for our layout: the new leaf and its parent's entry.
    for _ in 0..2 {
        let Some(level) = current.and_then(Path::parent) else {
            break;
        };
        sync_dir(level)?;
        current = Some(level);
    }
    Ok(())
}

/// Microseconds since the Unix epoch, the unit of every Iggy timestamp.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
