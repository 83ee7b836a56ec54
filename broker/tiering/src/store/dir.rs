//! An object store in a directory: keys are relative paths, every write is a temporary file
//! renamed into place and synced, so a reader never sees half an object.

use super::{io_error, join_key, read_file_part, PART_SIZE};
use crate::StoreError;
use bytes::Bytes;
use std::path::{Path, PathBuf};

pub struct DirStore {
    root: PathBuf,
    prefix: String,
}

impl DirStore {
    pub fn new(root: &Path, prefix: &str) -> Self {
        Self {
            root: root.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    pub fn describe(&self) -> String {
        format!("directory {}", self.root.join(&self.prefix).display())
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let key = join_key(&self.prefix, key);
        // Keys come from the broker, but a `..` must never leave the root.
        if key.split('/').any(|part| part == ".." || part == ".") {
            return Err(StoreError::Io {
                path: key,
                detail: "object keys may not contain '.' or '..' components".into(),
            });
        }
        Ok(self.root.join(key))
    }

    fn missing_root(&self) -> Option<StoreError> {
        (!self.root.is_dir()).then(|| StoreError::NoBucket {
            store: self.describe(),
        })
    }

    pub async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        if let Some(error) = self.missing_root() {
            return Err(error);
        }
        let path = self.path(key)?;
        let body = body.to_vec();
        blocking(&path.clone(), move || write_atomically(&path, &body)).await
    }

    pub async fn put_file(&self, key: &str, source: &Path, len: u64) -> Result<u64, StoreError> {
        if let Some(error) = self.missing_root() {
            return Err(error);
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut body = Vec::with_capacity(len as usize);
        let mut at = 0;
        while at < len {
            let part = PART_SIZE.min(len - at);
            let bytes = read_file_part(source, at, part).await?;
            hasher.update(&bytes);
            body.extend_from_slice(&bytes);
            at += part;
        }
        self.put(key, &body).await?;
        Ok(hasher.digest())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.missing_root() {
                Some(error) => Err(error),
                None => Ok(None),
            },
            Err(e) => Err(io_error(&path, e)),
        }
    }

    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        if !path.exists() {
            return Err(match self.missing_root() {
                Some(error) => error,
                None => StoreError::NotFound {
                    store: self.describe(),
                    key: key.to_owned(),
                },
            });
        }
        let available = std::fs::metadata(&path)
            .map_err(|e| io_error(&path, e))?
            .len();
        let len = len.min(available.saturating_sub(start));
        Ok(Bytes::from(read_file_part(&path, start, len).await?))
    }

    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let base = self.root.join(&self.prefix);
        let start = self.path(prefix)?;
        let mut keys = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| io_error(&dir, e))?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&base) {
                    let key = relative.to_string_lossy().into_owned();
                    if !key.ends_with(".tmp") {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

async fn blocking(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io_error(path, std::io::Error::other(e)))?
        .map_err(|e| io_error(path, e))
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStore;

    #[tokio::test]
    async fn objects_round_trip_and_ranges_are_exact() {
        let root = tempfile::tempdir().unwrap();
        let store = ObjectStore::dir(root.path(), "cluster-1/");
        store
            .put("streams/1/a.log", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        assert_eq!(
            store.get("streams/1/a.log").await.unwrap().unwrap(),
            &b"0123456789"[..]
        );
        assert_eq!(
            store.get_range("streams/1/a.log", 2, 3).await.unwrap(),
            &b"234"[..]
        );
        assert!(matches!(
            store.get_range("streams/1/a.log", 8, 5).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get_range("streams/1/b.log", 0, 1).await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.get("streams/1/b.log").await.unwrap(), None);
        let source = root.path().join("source");
        std::fs::write(&source, vec![7u8; 1000]).unwrap();
        let checksum = store
            .put_file("streams/1/b.log", &source, 600)
            .await
            .unwrap();
        assert_eq!(checksum, crate::checksum(&[7u8; 600]));
        assert_eq!(
            store.list("streams/").await.unwrap(),
            vec!["streams/1/a.log", "streams/1/b.log"]
        );
        store
            .delete(&["streams/1/a.log".into(), "streams/1/zzz".into()])
            .await
            .unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["streams/1/b.log"]);
        assert!(store.put("../escape", Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn a_missing_root_is_a_missing_bucket() {
        let root = tempfile::tempdir().unwrap();
        let store = ObjectStore::dir(&root.path().join("absent"), "");
        assert!(matches!(
            store.put("x", Bytes::new()).await,
            Err(StoreError::NoBucket { .. })
        ));
    }
}
