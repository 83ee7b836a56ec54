//! Object storage for tiered segments (docs/tiering.md).
//!
//! The broker keeps a partition's newest data on local disk and moves sealed segments to an
//! object store, reading them back when a consumer asks for old data. This crate is the part
//! that knows nothing about partitions: an [`ObjectStore`] (S3 through the official SDK, or a
//! directory) with multipart upload, ranged reads and errors classified into what an operator
//! can act on, and the per-partition [`Manifest`] that says which segments the store holds.

pub mod error;
pub mod manifest;
pub mod store;

pub use error::StoreError;
pub use manifest::{Manifest, ManifestError, TieredSegment};
pub use store::{DirStore, ObjectStore, S3Settings};

/// XXH3-64 of an object's bytes, as the manifest records it.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(feature = "testing")]
pub mod testing;
