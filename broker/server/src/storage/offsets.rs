//! Stored offsets of standalone consumers for one partition: one 8-byte little-endian file per
//! consumer under `offsets/consumers/`, as Iggy lays them out. An 8-byte write at position 0
//! never straddles a sector, so an interrupted store leaves the old or the new value.

use super::{fsutil, IoContext, StorageError};
use iggy_wire::Identifier;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct ConsumerOffsets {
    dir: PathBuf,
    offsets: HashMap<String, u64>,
    /// fsync each store (and a new file's directory): the partition's durability policy,
    /// decided here in storage rather than by every caller.
    sync: bool,
}

/// File name for a consumer: its number, or `name-<hex>` so any UTF-8 name is a safe file name.
pub fn consumer_key(id: &Identifier) -> String {
    match id {
        Identifier::Numeric(n) => n.to_string(),
        Identifier::Named(name) => {
            let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
            format!("name-{hex}")
        }
    }
}

impl ConsumerOffsets {
    /// Offsets of standalone consumers (`offsets/consumers/`); `sync` fsyncs every store.
    pub fn load(partition_dir: &Path, sync: bool) -> Result<Self, StorageError> {
        Self::load_from(partition_dir.join("offsets").join("consumers"), sync)
    }

    /// Offsets of consumer groups (`offsets/groups/<group id>`).
    pub fn load_groups(partition_dir: &Path, sync: bool) -> Result<Self, StorageError> {
        Self::load_from(partition_dir.join("offsets").join("groups"), sync)
    }

    fn load_from(dir: PathBuf, sync: bool) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&dir).at(&dir)?;
        let mut offsets = HashMap::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.ends_with(".tmp") {
                continue;
            }
            let bytes = std::fs::read(&path).at(&path)?;
            if let Ok(raw) = <[u8; 8]>::try_from(bytes.as_slice()) {
                offsets.insert(name, u64::from_le_bytes(raw));
            } else {
                tracing::warn!(file = %path.display(), "ignoring consumer offset file that is not 8 bytes");
            }
        }
        Ok(Self { dir, offsets, sync })
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.offsets.get(key).copied()
    }

    pub fn store(&mut self, key: &str, offset: u64) -> Result<(), StorageError> {
        let path = self.dir.join(key);
        let is_new = !self.offsets.contains_key(key);
        super::faults::check_write(&path).at(&path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        file.write_all_at(&offset.to_le_bytes(), 0).at(&path)?;
        if self.sync {
            file.sync_data().at(&path)?;
            if is_new {
                fsutil::sync_dir(&self.dir)?;
            }
        }
        self.offsets.insert(key.to_owned(), offset);
        Ok(())
    }

    /// Removes a stored offset; `false` when there was none.
    pub fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        if self.offsets.remove(key).is_none() {
            return Ok(false);
        }
        let path = self.dir.join(key);
        std::fs::remove_file(&path).at(&path)?;
        Ok(true)
    }

    /// Every stored offset, by key.
    pub fn entries(&self) -> Vec<(String, u64)> {
        let mut entries: Vec<(String, u64)> =
            self.offsets.iter().map(|(k, v)| (k.clone(), *v)).collect();
        entries.sort();
        entries
    }

    /// Makes the stored offsets exactly `entries` (a checkpoint's), touching only what differs.
    pub fn replace_all(&mut self, entries: &[(String, u64)]) -> Result<(), StorageError> {
        let stale: Vec<String> = self
            .offsets
            .keys()
            .filter(|key| !entries.iter().any(|(k, _)| k == *key))
            .cloned()
            .collect();
        for key in stale {
            self.delete(&key)?;
        }
        for (key, offset) in entries {
            if self.get(key) != Some(*offset) {
                self.store(key, *offset)?;
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) -> Result<(), StorageError> {
        let keys: Vec<String> = self.offsets.keys().cloned().collect();
        for key in keys {
            self.delete(&key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_reload_and_names_are_file_safe() {
        let dir = tempfile::tempdir().unwrap();
        let mut offsets = ConsumerOffsets::load(dir.path(), true).unwrap();
        let named = consumer_key(&Identifier::Named("a/b c".into()));
        assert!(!named.contains('/'));
        offsets.store("7", 41).unwrap();
        offsets.store(&named, 3).unwrap();
        let reloaded = ConsumerOffsets::load(dir.path(), false).unwrap();
        assert_eq!(reloaded.get("7"), Some(41));
        assert_eq!(reloaded.get(&named), Some(3));
        let mut reloaded = reloaded;
        assert!(reloaded.delete("7").unwrap());
        assert!(!reloaded.delete("7").unwrap());
        assert_eq!(
            ConsumerOffsets::load(dir.path(), false).unwrap().get("7"),
            None
        );
        reloaded
            .replace_all(&[("9".into(), 1), (named.clone(), 5)])
            .unwrap();
        let again = ConsumerOffsets::load(dir.path(), false).unwrap();
        assert_eq!(again.entries(), vec![("9".into(), 1), (named, 5)]);
    }
}
