//! Persistent state on local disk: per-partition segmented logs, their recovery at boot,
//! consumer offsets, and the metadata snapshot.
//!
//! Layout under the data directory (the same shape as Iggy's):
//! `streams/<s>/topics/<t>/partitions/<p>/<20-digit start offset>.{log,index}`,
//! `.../<p>/offsets/consumers/<consumer>`, `.../<p>/checkpoint`, and `state/metadata.json`.

pub mod checkpoint;
pub mod dedup;
pub mod descriptors;
pub mod faults;
pub mod fsutil;
pub mod graveyard;
pub mod l1;
pub mod metadata;
pub mod offsets;
pub mod partition_log;
pub mod recovery;
pub mod segment;
pub mod tiered;
pub mod trash;

use std::path::PathBuf;

/// A storage failure, always naming the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "corrupt message in {path} at byte {position} (expected offset {offset}): {reason}; \
         intact data follows, so this is not a torn write. Refusing to start: restore the \
         partition or remove the damaged segment by hand"
    )]
    Corrupt {
        path: PathBuf,
        position: u64,
        offset: u64,
        reason: String,
    },
    #[error(
        "corrupt message in {path} at byte {position}: {reason}; the range holding it is not \
         served (other ranges stay readable)"
    )]
    CorruptRead {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    #[error("metadata file {path} is invalid: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error(
        "no metadata file at {metadata}, but {data} holds the data of {streams} stream \
         director{plural}. Refusing to start as a first boot, which would create streams over \
         that data. Restore {metadata} from a backup, or move {data} away to start empty",
        plural = if *streams == 1 { "y" } else { "ies" }
    )]
    MetadataMissing {
        metadata: PathBuf,
        data: PathBuf,
        streams: usize,
    },
    #[error("partition at {path} failed an earlier fsync; it refuses writes until restart")]
    Poisoned { path: PathBuf },
    #[error(
        "cannot open {path}: the process is out of file descriptors (segment files are limited \
         to {budget} open at once; raise the open-files limit or lower the connection count)"
    )]
    OutOfDescriptors { path: PathBuf, budget: usize },
}

pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Io {
            path: path.to_owned(),
            source,
        })
    }
}
