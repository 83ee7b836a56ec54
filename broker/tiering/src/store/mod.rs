//! Where tiered segments go: S3 (or any S3-compatible server) or a directory (a mounted archive
//! volume, the seed's `archiver.kind = "disk"`). One enum rather than a trait object: two
//! implementations, async methods, and no dynamic dispatch to pay for.

mod dir;
#[cfg(feature = "s3")]
mod s3;

pub use dir::DirStore;
#[cfg(feature = "s3")]
pub use s3::S3Store;

use crate::StoreError;
use bytes::Bytes;
use std::fmt;
use std::path::Path;

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size of a multipart upload (S3 wants at least 5 MiB for every part but the last).
pub const PART_SIZE: u64 = 8 << 20;

/// How to reach an S3 bucket. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// Empty: AWS's own endpoint for the region.
    pub endpoint: String,
    pub force_path_style: bool,
    /// Empty: the SDK's default chain is not consulted; requests go unsigned and a bucket that
    /// needs credentials answers "access denied".
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// An object store under a key prefix: every key the methods take is relative to it.
pub enum ObjectStore {
    #[cfg(feature = "s3")]
    S3(S3Store),
    Dir(DirStore),
}

impl ObjectStore {
    /// An S3 store under `prefix` (`""` or a path such as `iggy/<cluster uid>/`).
    #[cfg(feature = "s3")]
    pub fn s3(settings: S3Settings, prefix: &str) -> Self {
        ObjectStore::S3(S3Store::new(settings, prefix))
    }

    pub fn dir(root: &Path, prefix: &str) -> Self {
        ObjectStore::Dir(DirStore::new(root, prefix))
    }

    /// `s3://bucket/prefix` or the directory: for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.describe(),
            ObjectStore::Dir(d) => d.describe(),
        }
    }

    /// Stores `body` at `key`, replacing what was there.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.put(key, body).await,
            ObjectStore::Dir(d) => d.put(key, &body).await,
        }
    }

    /// Uploads the first `len` bytes of the file at `path` (in parts when large, never more
    /// than one part in memory) and returns their XXH3-64.
    pub async fn put_file(&self, key: &str, path: &Path, len: u64) -> Result<u64, StoreError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.put_file(key, path, len).await,
            ObjectStore::Dir(d) => d.put_file(key, path, len).await,
        }
    }

    /// The whole object, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.get(key).await,
            ObjectStore::Dir(d) => d.get(key).await,
        }
    }

    /// `len` bytes from `start`. A shorter answer is an error: the manifest said how long the
    /// object is.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let bytes = match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.get_range(key, start, len).await?,
            ObjectStore::Dir(d) => d.get_range(key, start, len).await?,
        };
        if bytes.len() as u64 != len {
            return Err(StoreError::Corrupt {
                store: self.describe(),
                key: key.to_owned(),
                reason: format!(
                    "asked for {len} bytes at {start}, got {}: the object is shorter than the \
                     manifest says",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Deletes the objects; missing ones are not an error.
    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.delete(keys).await,
            ObjectStore::Dir(d) => d.delete(keys).await,
        }
    }

    /// Every key under `prefix` (relative to the store's own prefix).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.list(prefix).await,
            ObjectStore::Dir(d) => d.list(prefix).await,
        }
    }
}

/// `prefix` + `key` with exactly one `/` between them (none when the prefix is empty).
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let key = key.trim_start_matches('/');
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Reads `len` bytes of `path` at `at`, off the async workers.
pub(crate) async fn read_file_part(path: &Path, at: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&owned)?;
        let mut buffer = vec![0u8; len as usize];
        file.read_exact_at(&mut buffer, at)?;
        Ok::<_, std::io::Error>(buffer)
    })
    .await
    .map_err(|e| io_error(path, std::io::Error::other(e)))?
    .map_err(|e| io_error(path, e))
}

pub(crate) fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::join_key;

    #[test]
    fn keys_join_with_one_slash() {
        assert_eq!(join_key("", "streams/1"), "streams/1");
        assert_eq!(join_key("iggy/u-1/", "streams/1"), "iggy/u-1/streams/1");
        assert_eq!(join_key("/iggy", "/streams/1"), "iggy/streams/1");
    }
}
