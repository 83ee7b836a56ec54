//! Tiered storage in the broker (docs/tiering.md): sealed segments move from local disk (L2) to
//! an object store (L3), and polls below the local window read them back in real time.
//!
//! - `uploader`: the loop that uploads sealed segments, keeps the store's copy of each
//!   partition's manifest current, evicts local copies the store holds, and deletes the objects
//!   of deleted data;
//! - `reader`: reads of segments only the store holds, through their index, with read-ahead
//!   and a bounded cache, verified frame by frame;
//! - `health`: what the last store requests did, for `/ready` and `/metrics`.
//!
//! The authority for which segments are tiered is each partition's local manifest
//! (`storage::tiered`), changed under the partition's lock; this module only moves bytes.

pub mod health;
pub mod reader;
pub mod uploader;

use crate::config::{Config, TierTarget};
use crate::storage::tiered;
use health::TierHealth;
use iggy_tiering::{ObjectStore, TieredSegment};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The tiering settings that matter at run time.
#[derive(Debug, Clone)]
pub struct TierSettings {
    pub interval: Duration,
    pub local_retention: Option<Duration>,
    pub local_max_size: Option<u64>,
    pub upload_concurrency: usize,
    /// Seal an active segment this long after its first message (`Config::seal_after`).
    pub seal_after: Option<Duration>,
}

pub struct Tiering {
    pub store: ObjectStore,
    pub settings: TierSettings,
    pub reader: reader::TierReader,
    pub health: TierHealth,
    /// Objects to delete, by partition key base, once the store's manifest of that partition
    /// no longer names them (retention, purge, DeleteSegments).
    deletions: Mutex<BTreeMap<String, Vec<String>>>,
    /// Key prefixes of deleted streams, topics and partitions whose objects must go.
    dropped_trees: Mutex<BTreeSet<String>>,
    /// Per partition key base: the manifest version the store holds, and when to try again
    /// after a failure.
    progress: Mutex<BTreeMap<String, uploader::Progress>>,
}

impl Tiering {
    /// `None` when no L3 is configured (the configuration was validated when it was loaded,
    /// so its target is known to be usable by this build).
    pub fn from_config(config: &Config) -> Option<Self> {
        let store = match config.tier_target().ok()?? {
            #[cfg(feature = "s3")]
            TierTarget::S3 { settings, prefix } => ObjectStore::s3(settings, &prefix),
            #[cfg(not(feature = "s3"))]
            TierTarget::S3 { .. } => return None,
            TierTarget::Directory { path, prefix } => ObjectStore::dir(&path, &prefix),
        };
        let l2 = &config.tiering.l2;
        let l3 = &config.tiering.l3;
        Some(Self {
            reader: reader::TierReader::new(l3.cache_size.0, l3.read_ahead.0),
            store,
            settings: TierSettings {
                interval: config.tiering.interval.0,
                // L2 off: a local copy goes as soon as the store's manifest names it.
                local_retention: match l2.enabled {
                    true => l2.local_retention.0.map(|d| d.0),
                    false => Some(Duration::ZERO),
                },
                seal_after: config.seal_after(),
                local_max_size: l2.local_max_size.0.map(|s| s.0),
                upload_concurrency: l3.upload_concurrency as usize,
            },
            health: TierHealth::default(),
            deletions: Mutex::default(),
            dropped_trees: Mutex::default(),
            progress: Mutex::default(),
        })
    }

    /// Queues the objects of segments a partition's manifest stopped naming.
    pub fn drop_segments(&self, partition_dir: &Path, segments: Vec<TieredSegment>) {
        if segments.is_empty() {
            return;
        }
        let base = tiered::key_base(partition_dir);
        let keys = segments
            .iter()
            .flat_map(|s| [log_key(&base, s), index_key(&base, s)]);
        lock(&self.deletions)
            .entry(base.clone())
            .or_default()
            .extend(keys);
    }

    /// Queues every object under a deleted stream's, topic's or partition's directory
    /// (`relative`: its path below the data directory, such as `streams/3`).
    pub fn drop_tree(&self, relative: &str) {
        lock(&self.dropped_trees).insert(format!("{}/", relative.trim_end_matches('/')));
    }
}

pub fn log_key(base: &str, segment: &TieredSegment) -> String {
    format!(
        "{base}/{}.log",
        crate::storage::segment::file_stem(segment.start_offset)
    )
}

pub fn index_key(base: &str, segment: &TieredSegment) -> String {
    format!(
        "{base}/{}.index",
        crate::storage::segment::file_stem(segment.start_offset)
    )
}

pub fn manifest_key(base: &str) -> String {
    format!("{base}/manifest.json")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
