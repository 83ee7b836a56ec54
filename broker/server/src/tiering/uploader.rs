//! The tiering loop. Every `tiering.interval`, for each partition (at most
//! `upload_concurrency` at once):
//!
//! 1. upload its sealed local segments the store does not hold, oldest first: the `.log` (in
//!    parts when large) and the index, then record the segment in the local manifest, which is
//!    synced before the step ends;
//! 2. bring the store's copy of the manifest up to the local one, then delete the objects of
//!    segments the manifest stopped naming (retention, purges) — in that order, so the store's
//!    manifest never names a missing object;
//! 3. once the store's manifest names them, evict local copies past the local window.
//!
//! A failed step is retried on a later pass with backoff (1 s doubling to a minute) per
//! partition; nothing is evicted unless the store confirmed it holds the segment. Deleted
//! streams, topics and partitions have their objects listed and deleted after every pass.

use super::{index_key, lock, log_key, manifest_key, Tiering};
use crate::broker::Broker;
use crate::ops::{Operation, Submission};
use crate::state::partition::Partition;
use crate::storage::fsutil::now_micros;
use crate::storage::partition_log::remove_segment_files;
use crate::storage::tiered;
use crate::submit::Submit;
use bytes::Bytes;
use iggy_tiering::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A partition's standing with the store.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// The manifest version the store holds (`None`: not known to hold any).
    pub pushed: Option<u64>,
    /// Whether this broker, since it started or last became primary, looked for objects that
    /// a lost deletion queue left behind (`sweep_orphans`).
    pub swept: bool,
    pub retry_at: Option<Instant>,
    pub backoff: Duration,
}

/// Runs until the process ends.
pub async fn run(broker: Arc<Broker>, tiering: Arc<Tiering>) {
    let mut tick = tokio::time::interval(tiering.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass(&broker, &tiering).await;
    }
}

/// One pass over every partition, then the deleted trees. Public for tests that want to
/// drive tiering step by step.
pub async fn pass(broker: &Arc<Broker>, tiering: &Arc<Tiering>) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        tiering.settings.upload_concurrency,
    ));
    let backup = broker
        .cluster_status()
        .is_some_and(|status| status.primary() != Some(status.position));
    if backup {
        // What this replica pushed as a primary may have been overwritten by the primaries
        // since: if it leads again, it pushes its manifests afresh.
        lock(&tiering.progress).clear();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for partition in broker.all_partitions() {
        let (broker, tiering, semaphore) = (broker.clone(), tiering.clone(), semaphore.clone());
        tasks.spawn(async move {
            let Ok(_permit) = semaphore.acquire_owned().await else {
                return;
            };
            if backup {
                let base = tiered::key_base(partition.log().dir());
                lock(&tiering.deletions).remove(&base);
                evict(&broker, &tiering, &partition);
            } else {
                tier_partition(&broker, &tiering, &partition).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    update_lag(broker, tiering);
    if backup {
        lock(&tiering.dropped_trees).clear();
    } else {
        delete_dropped_trees(broker, tiering).await;
    }
}

async fn tier_partition(broker: &Broker, tiering: &Tiering, partition: &Partition) {
    let base = tiered::key_base(partition.log().dir());
    let progress = lock(&tiering.progress)
        .get(&base)
        .cloned()
        .unwrap_or_default();
    if progress.retry_at.is_some_and(|at| Instant::now() < at) {
        return;
    }
    let outcome = async {
        seal_if_due(broker, tiering, partition, &base)
            .await
            .map_err(|error| StoreError::Io {
                path: base.clone(),
                detail: error.to_string(),
            })?;
        upload_sealed(broker, tiering, partition).await?;
        let pushed = push_manifest(tiering, partition, &base, progress.pushed).await?;
        delete_dropped_segments(tiering, &base).await?;
        if !progress.swept {
            sweep_orphans(tiering, partition, &base).await?;
        }
        evict(broker, tiering, partition);
        Ok::<_, StoreError>(pushed)
    }
    .await;
    let mut all = lock(&tiering.progress);
    let entry = all.entry(base.clone()).or_default();
    match outcome {
        Ok(pushed) => {
            entry.pushed = pushed;
            entry.swept = true;
            entry.retry_at = None;
            entry.backoff = Duration::ZERO;
            if tiering.health.succeeded() {
                tracing::info!(store = %tiering.store.describe(), "object store reachable again");
            }
        }
        Err(error) => {
            entry.backoff = (entry.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
            entry.retry_at = Some(Instant::now() + entry.backoff);
            tiering
                .health
                .upload_failures
                .fetch_add(1, Ordering::Relaxed);
            if tiering.health.failed(&error) {
                tracing::warn!(partition = %base, %error, "tiering failed; local data is kept and the upload retried");
            } else {
                tracing::debug!(partition = %base, %error, "tiering failed again");
            }
        }
    }
}

async fn upload_sealed(
    broker: &Broker,
    tiering: &Tiering,
    partition: &Partition,
) -> Result<(), StoreError> {
    loop {
        let candidates = partition.log().upload_candidates(1);
        let candidates = candidates.map_err(|error| StoreError::Io {
            path: partition.log().dir().display().to_string(),
            detail: error.to_string(),
        })?;
        let Some(candidate) = candidates.into_iter().next() else {
            return Ok(());
        };
        let mut segment = candidate.segment;
        let log_key = log_key(&candidate.key_base, &segment);
        segment.log_checksum = tiering
            .store
            .put_file(&log_key, &candidate.log_path, segment.log_size)
            .await?;
        segment.index_checksum = iggy_tiering::checksum(&candidate.index);
        tiering
            .store
            .put(
                &index_key(&candidate.key_base, &segment),
                Bytes::from(candidate.index),
            )
            .await?;
        segment.uploaded_at = now_micros();
        let recorded = record(broker, partition, &candidate.key_base, segment).await;
        match recorded {
            Ok(true) => {
                tiering
                    .health
                    .uploaded_segments
                    .fetch_add(1, Ordering::Relaxed);
                tiering
                    .health
                    .uploaded_bytes
                    .fetch_add(segment.log_size, Ordering::Relaxed);
                let waited = now_micros().saturating_sub(segment.first_timestamp);
                tiering.health.observe_delay(waited as f64 / 1e6);
                tracing::debug!(key = log_key, bytes = segment.log_size, "segment uploaded");
            }
            // Retention took the segment meanwhile; its objects are orphans to remove.
            Ok(false) => {
                let keys = [log_key, index_key(&candidate.key_base, &segment)];
                tiering.store.delete(&keys).await?;
            }
            Err(error) => {
                return Err(StoreError::Io {
                    path: candidate.key_base,
                    detail: error.to_string(),
                })
            }
        }
    }
}

/// Makes the partition's manifest name `segment`: directly on a single node, through the log on
/// a replicated one. `Ok(false)` when the segment is gone (retention took it meanwhile).
async fn record(
    broker: &Broker,
    partition: &Partition,
    key_base: &str,
    segment: iggy_tiering::TieredSegment,
) -> Result<bool, crate::storage::StorageError> {
    if broker.cluster_status().is_none() {
        return tokio::task::block_in_place(|| partition.log().record_tiered(segment));
    }
    let Some((stream, topic, partition_id)) = tiered::ids_of(key_base) else {
        return Ok(false);
    };
    let op = Operation::RecordTiered {
        stream,
        topic,
        partition: partition_id,
        segment,
    };
    // Not committed (no primary any more, or a timeout): the upload is repeated by whoever is
    // primary next; the objects are simply written again.
    commit(broker, key_base, op, "recording the upload").await?;
    Ok(partition.log().tiered().0.holds(segment.start_offset))
}

/// Seals the active segment once its first message is older than `seal_after`, so the store
/// receives recent data without waiting for the segment to fill: directly on a single node,
/// through the log on a replicated one (every replica must seal at the same offset).
async fn seal_if_due(
    broker: &Broker,
    tiering: &Tiering,
    partition: &Partition,
    key_base: &str,
) -> Result<(), crate::storage::StorageError> {
    let Some(after) = tiering.settings.seal_after else {
        return Ok(());
    };
    let (since, at) = {
        let log = partition.log();
        (log.active_since(), log.next_offset())
    };
    let due =
        since.is_some_and(|since| since.saturating_add(after.as_micros() as u64) <= now_micros());
    if !due {
        return Ok(());
    }
    if broker.cluster_status().is_none() {
        return tokio::task::block_in_place(|| partition.log().seal_active(at)).map(|_| ());
    }
    let Some((stream, topic, partition_id)) = tiered::ids_of(key_base) else {
        return Ok(());
    };
    let op = Operation::SealSegment {
        stream,
        topic,
        partition: partition_id,
        at,
    };
    commit(broker, key_base, op, "sealing the active segment").await
}

/// Commits an operation the tiering loop issues (as the primary) and applies it.
async fn commit(
    broker: &Broker,
    key_base: &str,
    op: Operation<'static>,
    what: &str,
) -> Result<(), crate::storage::StorageError> {
    let submission = Submission { user: None, op };
    broker
        .submitter()
        .submit(broker, submission, &mut Vec::new())
        .await
        .map_err(|error| crate::storage::StorageError::BadMetadata {
            path: key_base.into(),
            reason: format!("{what} through the log failed: {error}"),
        })
}

/// Puts the local manifest in the store when the store's copy is older. Returns the version
/// the store now holds.
async fn push_manifest(
    tiering: &Tiering,
    partition: &Partition,
    base: &str,
    pushed: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    let (manifest, version) = {
        let log = partition.log();
        let (manifest, version) = log.tiered();
        (manifest.clone(), version)
    };
    // An empty manifest nobody ever tiered into needs no copy in the store.
    if pushed == Some(version) || (pushed.is_none() && version == 0 && manifest.segments.is_empty())
    {
        return Ok(pushed);
    }
    tiering
        .store
        .put(&manifest_key(base), Bytes::from(manifest.encode()))
        .await?;
    Ok(Some(version))
}

async fn delete_dropped_segments(tiering: &Tiering, base: &str) -> Result<(), StoreError> {
    let Some(keys) = lock(&tiering.deletions).remove(base) else {
        return Ok(());
    };
    match tiering.store.delete(&keys).await {
        Ok(()) => {
            tiering
                .health
                .deleted_objects
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            lock(&tiering.deletions)
                .entry(base.to_owned())
                .or_default()
                .extend(keys);
            Err(error)
        }
    }
}

/// Deletes a partition's segment objects that its manifest does not name and that lie below
/// its local segments: data retention or a purge removed while the objects' deletion was only
/// queued in memory — by a primary that died, or by this broker before a restart. Objects at
/// or above the first local segment are left alone: they may be an upload whose recording is
/// still to come, which the next upload overwrites anyway.
async fn sweep_orphans(
    tiering: &Tiering,
    partition: &Partition,
    base: &str,
) -> Result<(), StoreError> {
    let (named, local_start) = {
        let log = partition.log();
        let named: std::collections::BTreeSet<u64> = log
            .tiered()
            .0
            .segments
            .iter()
            .map(|s| s.start_offset)
            .collect();
        (named, log.local_start())
    };
    let orphans: Vec<String> = tiering
        .store
        .list(&format!("{base}/"))
        .await?
        .into_iter()
        .filter(|key| {
            segment_start_of(base, key)
                .is_some_and(|start| start < local_start && !named.contains(&start))
        })
        .collect();
    if orphans.is_empty() {
        return Ok(());
    }
    tiering.store.delete(&orphans).await?;
    tiering
        .health
        .deleted_objects
        .fetch_add(orphans.len() as u64, Ordering::Relaxed);
    tracing::info!(partition = %base, objects = orphans.len(), "deleted objects no manifest names");
    Ok(())
}

/// The start offset of a segment object `<base>/<20 digits>.{log,index}`.
fn segment_start_of(base: &str, key: &str) -> Option<u64> {
    let name = key.strip_prefix(base)?.strip_prefix('/')?;
    let stem = name
        .strip_suffix(".log")
        .or_else(|| name.strip_suffix(".index"))?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// Local copies the store holds go once they are past the local window: older than
/// `local_retention` since their upload, or beyond `local_max_size` of such copies.
fn evict(broker: &Broker, tiering: &Tiering, partition: &Partition) {
    let settings = &tiering.settings;
    if settings.local_retention.is_none() && settings.local_max_size.is_none() {
        return;
    }
    let now = now_micros();
    // A replica keeps what restoring its durable checkpoint needs (`Partition::checkpoints`).
    let floor = match broker.cluster_status() {
        Some(_) => partition.eviction_floor(),
        None => u64::MAX,
    };
    // Message deduplication reads a partition's last `max_entries` messages back from local
    // disk, the same on every replica (`storage::dedup`). The catalog is held until the
    // eviction is decided (catalog before log, the order `apply` takes them in), so settings
    // turned on meanwhile cannot miss the segments appended under them.
    let catalog = broker.catalog();
    let dedup = catalog.deduplication;
    let (dir, evicted) = {
        let mut log = partition.log();
        let floor = match dedup {
            // A segment ending at or below the window's first offset holds none of it.
            Some(d) => floor.min(d.reach(log.next_offset()) + 1),
            None => floor,
        };
        let evicted = log.evict_local(|entry, held_bytes| {
            if entry.next_offset >= floor {
                return false;
            }
            let expired = settings.local_retention.is_some_and(|keep| {
                entry.uploaded_at.saturating_add(keep.as_micros() as u64) <= now
            });
            let over = settings.local_max_size.is_some_and(|max| held_bytes > max);
            expired || over
        });
        (log.dir().to_owned(), evicted)
    };
    drop(catalog);
    if evicted.is_empty() {
        return;
    }
    let bytes: u64 = evicted.iter().map(|s| s.size).sum();
    match tokio::task::block_in_place(|| remove_segment_files(&dir, &evicted)) {
        Ok(()) => {
            tiering
                .health
                .evicted_segments
                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            tiering
                .health
                .evicted_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            tracing::debug!(dir = %dir.display(), segments = evicted.len(), bytes, "local copies evicted; the object store serves them");
        }
        Err(error) => tracing::warn!(%error, "evicted segment files could not be removed"),
    }
}

fn update_lag(broker: &Broker, tiering: &Tiering) {
    let (mut segments, mut bytes) = (0u64, 0u64);
    for partition in broker.all_partitions() {
        let (s, b) = partition.log().upload_lag();
        segments += s;
        bytes += b;
    }
    tiering
        .health
        .lag_segments
        .store(segments, Ordering::Relaxed);
    tiering.health.lag_bytes.store(bytes, Ordering::Relaxed);
}

/// Deletes the objects under deleted streams', topics' and partitions' prefixes — except those
/// of partitions that exist again under the same ids (created since), whose objects are new.
async fn delete_dropped_trees(broker: &Broker, tiering: &Tiering) {
    let trees: Vec<String> = lock(&tiering.dropped_trees).iter().cloned().collect();
    if trees.is_empty() {
        return;
    }
    let live: Vec<String> = broker
        .all_partitions()
        .iter()
        .map(|p| format!("{}/", tiered::key_base(p.log().dir())))
        .collect();
    for tree in trees {
        let listed = tiering.store.list(&tree).await.map(|keys| {
            keys.into_iter()
                .filter(|key| !live.iter().any(|prefix| key.starts_with(prefix)))
                .collect::<Vec<_>>()
        });
        let deleted = match listed {
            Ok(keys) => tiering.store.delete(&keys).await.map(|()| keys.len()),
            Err(error) => Err(error),
        };
        match deleted {
            Ok(count) => {
                lock(&tiering.dropped_trees).remove(&tree);
                for base in lock(&tiering.progress).keys().cloned().collect::<Vec<_>>() {
                    if format!("{base}/").starts_with(&tree)
                        && !live.iter().any(|l| l == &format!("{base}/"))
                    {
                        lock(&tiering.progress).remove(&base);
                    }
                }
                tiering
                    .health
                    .deleted_objects
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::info!(
                    prefix = tree,
                    objects = count,
                    "deleted data removed from the object store"
                );
            }
            Err(error) => {
                tiering.health.failed(&error);
                tracing::warn!(prefix = tree, %error, "could not delete a deleted tree's objects; retrying on the next pass");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::segment_start_of;

    #[test]
    fn only_segment_objects_of_the_partition_have_a_start() {
        let base = "p/streams/1/topics/2/partitions/3";
        assert_eq!(
            segment_start_of(base, &format!("{base}/00000000000000000042.log")),
            Some(42)
        );
        assert_eq!(
            segment_start_of(base, &format!("{base}/00000000000000000042.index")),
            Some(42)
        );
        assert_eq!(
            segment_start_of(base, &format!("{base}/manifest.json")),
            None
        );
        assert_eq!(segment_start_of(base, &format!("{base}/42.log")), None);
        assert_eq!(
            segment_start_of(
                base,
                "p/streams/1/topics/2/partitions/33/00000000000000000042.log"
            ),
            None
        );
    }
}
