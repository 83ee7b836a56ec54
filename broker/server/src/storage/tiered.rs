//! The local copy of a partition's tier manifest (`<partition>/tiered.json`): which sealed
//! segments the object store (L3) holds. It is the authority for this broker — the copy in the
//! store mirrors it — and it is written (atomically, synced) before any local copy of a segment
//! it names may be deleted. Segments it names below the first local segment are read from L3.

use super::{fsutil, StorageError};
use iggy_tiering::Manifest;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "tiered.json";

fn path(partition_dir: &Path) -> PathBuf {
    partition_dir.join(FILE_NAME)
}

/// The manifest on disk; an empty one when the partition never tiered anything.
pub fn load(partition_dir: &Path) -> Result<Manifest, StorageError> {
    let file = path(partition_dir);
    match std::fs::read(&file) {
        Ok(bytes) => Manifest::decode(&bytes).map_err(|e| StorageError::BadMetadata {
            path: file,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::new()),
        Err(source) => Err(StorageError::Io { path: file, source }),
    }
}

pub fn store(partition_dir: &Path, manifest: &Manifest) -> Result<(), StorageError> {
    fsutil::write_atomically(&path(partition_dir), &manifest.encode())
}

/// The object-key base of a partition directory: its last six components,
/// `streams/<s>/topics/<t>/partitions/<p>`, the layout the data directory and the bucket share.
pub fn key_base(partition_dir: &Path) -> String {
    let parts: Vec<String> = partition_dir
        .components()
        .rev()
        .take(6)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// `(stream, topic, partition)` of a key base `streams/<s>/topics/<t>/partitions/<p>`
/// ([`key_base`] of a partition directory).
pub fn ids_of(key_base: &str) -> Option<(u32, u32, u32)> {
    let parts: Vec<&str> = key_base.split('/').collect();
    match parts[..] {
        ["streams", s, "topics", t, "partitions", p] => {
            Some((s.parse().ok()?, t.parse().ok()?, p.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_base_is_the_layout_below_the_data_directory() {
        assert_eq!(
            key_base(Path::new("/data/streams/1/topics/2/partitions/3")),
            "streams/1/topics/2/partitions/3"
        );
        assert_eq!(ids_of("streams/1/topics/2/partitions/3"), Some((1, 2, 3)));
        assert_eq!(ids_of("streams/1/topics/2"), None);
    }
}
