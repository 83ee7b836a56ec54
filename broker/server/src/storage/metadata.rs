//! The metadata snapshot: streams, topics, partitions and users, rewritten atomically on every
//! change. Metadata changes are rare and small, so a whole-file snapshot (fsynced, renamed into
//! place) is simpler to reason about than Iggy's replayed state log and just as durable.

use super::{fsutil, IoContext, StorageError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "metadata.json";
/// Bumped when the snapshot format changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub format_version: u32,
    pub streams: Vec<StreamRecord>,
    pub users: Vec<UserRecord>,
    /// Message deduplication in force (`storage::dedup`); absent while it is off, so that
    /// snapshots of brokers that never turned it on read as they did before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication: Option<super::dedup::Deduplication>,
    /// The settings applying operations depends on (`state::settings`); absent in snapshots
    /// written before they were replicated state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<crate::state::settings::StateSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamRecord {
    pub id: u32,
    pub name: String,
    pub created_at: u64,
    pub topics: Vec<TopicRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: u32,
    pub name: String,
    pub created_at: u64,
    pub compression: u8,
    pub message_expiry: u64,
    pub max_topic_size: u64,
    pub replication_factor: u8,
    pub partitions: Vec<PartitionRecord>,
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionRecord {
    pub id: u32,
    pub created_at: u64,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub id: u32,
    pub username: String,
    /// PHC-format argon2id hash; the password itself is never stored.
    pub password_hash: String,
    pub created_at: u64,
    pub active: bool,
    /// `None` = no permissions at all.
    #[serde(default)]
    pub permissions: Option<iggy_wire::Permissions>,
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

/// A personal access token. Only a SHA-256 of the token is kept: tokens are long random strings,
/// so a fast hash is enough, and it lets a login find its token without trying every hash.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub token_sha256: String,
    /// Microseconds since the epoch; 0 = never expires.
    pub expiry_at: u64,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("expiry_at", &self.expiry_at)
            .finish_non_exhaustive()
    }
}

/// A consumer group and its members. Members are connections: they are part of the state so
/// that a replica restoring a checkpoint or syncing from a peer has the membership every other
/// replica has, and each node drops its own earlier incarnation's members when it starts
/// (`Operation::ForgetNode`). Files written before members were recorded read as none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::state::groups::GroupMember>,
    /// Where each partition belongs, and the partitions being handed over there (cooperative
    /// rebalancing, `state::groups`); files written before read as none (placed afresh).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub places: Vec<crate::state::groups::Place>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moving: Vec<crate::state::groups::Handover>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Space kept aside so metadata can still be saved on a full disk: without it, DeleteStream
/// and DeleteTopic — the operations that free space — failed at exactly 0 bytes free, because
/// the new metadata file could not be written.
const RESERVE_BYTES: usize = 1 << 20;
const RESERVE_NAME: &str = "reserve";

pub struct MetadataStore {
    path: PathBuf,
    reserve: PathBuf,
}

impl MetadataStore {
    pub fn new(system_path: &Path) -> Result<Self, StorageError> {
        let dir = system_path.join("state");
        fsutil::create_dir_durably(&dir)?;
        let store = Self {
            path: dir.join(FILE_NAME),
            reserve: dir.join(RESERVE_NAME),
        };
        store.keep_reserve();
        Ok(store)
    }

    /// Makes sure the reserve file exists; on a disk too full for it, carries on without.
    fn keep_reserve(&self) {
        if self.reserve.exists() {
            return;
        }
        let written = std::fs::write(&self.reserve, vec![0u8; RESERVE_BYTES])
            .and_then(|()| std::fs::File::open(&self.reserve)?.sync_all());
        if let Err(error) = written {
            let _ = std::fs::remove_file(&self.reserve);
            tracing::debug!(%error, "no room for the metadata reserve yet");
        }
    }

    /// `None` on first boot.
    pub fn load(&self) -> Result<Option<Snapshot>, StorageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StorageError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let snapshot: Snapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageError::BadMetadata {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        if snapshot.format_version != FORMAT_VERSION {
            return Err(StorageError::BadMetadata {
                path: self.path.clone(),
                reason: format!(
                    "format version {} is not {FORMAT_VERSION}",
                    snapshot.format_version
                ),
            });
        }
        Ok(Some(snapshot))
    }

    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(snapshot).map_err(|e| StorageError::BadMetadata {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        match fsutil::write_atomically(&self.path, &bytes) {
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull && self.reserve.exists() =>
            {
                tracing::warn!(
                    reserve = %self.reserve.display(),
                    "disk full: releasing the metadata reserve to save metadata"
                );
                let _ = std::fs::remove_file(&self.reserve);
                fsutil::write_atomically(&self.path, &bytes)
            }
            Err(error) => Err(error),
            Ok(()) => {
                self.keep_reserve();
                Ok(())
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory of one partition.
pub fn partition_dir(system_path: &Path, stream: u32, topic: u32, partition: u32) -> PathBuf {
    topic_dir(system_path, stream, topic)
        .join("partitions")
        .join(partition.to_string())
}

pub fn topic_dir(system_path: &Path, stream: u32, topic: u32) -> PathBuf {
    stream_dir(system_path, stream)
        .join("topics")
        .join(topic.to_string())
}

pub fn stream_dir(system_path: &Path, stream: u32) -> PathBuf {
    streams_dir(system_path).join(stream.to_string())
}

/// Where every stream's directory lives.
pub fn streams_dir(system_path: &Path) -> PathBuf {
    system_path.join("streams")
}

/// How many stream directories exist on disk (0 when there is no streams directory).
pub fn stream_dirs_on_disk(system_path: &Path) -> Result<usize, StorageError> {
    let dir = streams_dir(system_path);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut count = 0;
            for entry in entries {
                let entry = entry.map_err(|source| StorageError::Io {
                    path: dir.clone(),
                    source,
                })?;
                count += usize::from(entry.path().is_dir());
            }
            Ok(count)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StorageError::Io { path: dir, source }),
    }
}

/// Removes a directory tree, tolerating its absence — or, while a replica applies an op,
/// buries it until no checkpoint needs it (`graveyard`).
pub fn remove_tree(dir: &Path) -> Result<(), StorageError> {
    if super::graveyard::bury(dir)? {
        return Ok(());
    }
    remove_tree_now(dir)
}

/// Removes a directory tree (or a file) at once, tolerating its absence.
pub fn remove_tree_now(dir: &Path) -> Result<(), StorageError> {
    if dir.is_file() {
        return match std::fs::remove_file(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(dir),
            _ => Ok(()),
        };
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::new(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let snapshot = Snapshot {
            format_version: FORMAT_VERSION,
            streams: vec![StreamRecord {
                id: 0,
                name: "s".into(),
                created_at: 1,
                topics: vec![],
            }],
            users: vec![],
            deduplication: Some(super::super::dedup::Deduplication {
                settings: super::super::dedup::DeduplicationSettings {
                    max_entries: 10,
                    expiry: 20,
                },
                since: 30,
            }),
            settings: Some(crate::state::settings::StateSettings {
                segment_size: 4096,
                message_expiry: u64::MAX,
                max_topic_size: 1 << 30,
                max_tokens_per_user: 3,
            }),
        };
        store.save(&snapshot).unwrap();
        assert_eq!(store.load().unwrap(), Some(snapshot));
        std::fs::write(store.path(), b"{").unwrap();
        assert!(store
            .load()
            .unwrap_err()
            .to_string()
            .contains("metadata.json"));
    }
}
