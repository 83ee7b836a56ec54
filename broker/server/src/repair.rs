//! Repairs rotted partition data from another copy: the other replicas, or the object store
//! when the segment is tiered and still local. Replicas' segments are byte-identical (every
//! replica applies the same operations, and state sync copies whole segments), and a segment's
//! object is its file as uploaded, so a range that fails its checksums here is fetched —
//! through the state-sync fetch or the tier reader, both of which verify what they return —
//! checked against this log's index, and written over the damaged bytes
//! (`PartitionLog::overwrite_damaged`). Only the messages that fail to verify here are
//! fetched, so a peer with damage of its own elsewhere in the range still serves ours. The
//! scrubber asks for a repair when it finds damage; so does a poll that meets it (the poll
//! still answers `InvalidMessageChecksum`; the consumer's retry reads the repaired range), and
//! so does a peer's state-sync fetch that meets it (`sync::serve`).

use crate::broker::Broker;
use crate::replication::sync::{
    Connection, Fetch, Fetched, InProcess, Source, SyncError, CHUNK_BYTES,
};
use crate::state::partition::Partition;
use crate::storage::partition_log::RemoteRead;
use crate::storage::{tiered, StorageError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one repair may take, over all peers.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("no other copy: not a replica, and the object store does not hold the segment")]
    NoCopy,
    #[error("reading the object store's copy: {0}")]
    Store(#[from] iggy_tiering::StoreError),
    #[error(transparent)]
    Fetch(#[from] SyncError),
    #[error("{peer} has no copy of offsets {from}..{until} to give")]
    Missing { peer: String, from: u64, until: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A partition, by ids, and the range of offsets to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Damage {
    pub stream: u32,
    pub topic: u32,
    pub partition: u32,
    pub from: u64,
    pub until: u64,
}

impl Damage {
    /// `from..until` of `partition` (its ids from its directory).
    pub fn of(partition: &Partition, from: u64, until: u64) -> Option<Self> {
        let (stream, topic, partition) = tiered::ids_of(&tiered::key_base(partition.log().dir()))?;
        Some(Self {
            stream,
            topic,
            partition,
            from,
            until,
        })
    }
}

/// Repairs in progress, so a burst of polls of one damaged range starts one repair.
fn running() -> &'static Mutex<BTreeSet<Damage>> {
    static RUNNING: Mutex<BTreeSet<Damage>> = Mutex::new(BTreeSet::new());
    &RUNNING
}

/// Damage reported by polls, for [`run`] to repair.
static REPORTED: Mutex<BTreeMap<Damage, Arc<Partition>>> = Mutex::new(BTreeMap::new());
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Whether this broker has another copy to repair from: peers, or an object store.
pub fn has_copies(broker: &Broker) -> bool {
    broker.cluster_status().is_some() || broker.tiering.is_some()
}

/// The first offset of the segment whose index file `error` found damaged (its file is named
/// after it); `None` for any other error, damage in a log included.
pub fn damaged_index(error: &StorageError) -> Option<u64> {
    let StorageError::CorruptRead { path, .. } = error else {
        return None;
    };
    if path.extension()? != "index" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// Rebuilds the index file of `partition`'s segment holding `offset` from its log, after a
/// read met a damaged entry there ([`damaged_index`]). Blocking: it walks the segment under
/// the partition's lock. The index is derived from the log, so no other copy is needed, single
/// nodes included. Returns whether it was rebuilt.
pub fn rebuild_index(partition: &Partition, offset: u64) -> bool {
    let dir = partition.log().dir().to_owned();
    match partition.log().rebuild_index(offset) {
        Ok(()) => {
            tracing::warn!(partition = %dir.display(), offset, "rebuilt a damaged index file from its log");
            true
        }
        Err(error) => {
            tracing::error!(partition = %dir.display(), offset, %error, "a damaged index file could not be rebuilt");
            false
        }
    }
}

/// A poll met damage in `from..until` of `partition`: queue its repair (when there is another
/// copy; otherwise the poll's error and log line are all that can be done).
pub fn report(broker: &Broker, partition: &Arc<Partition>, from: u64, until: u64) {
    if !has_copies(broker) {
        return;
    }
    let until = until.min(partition.log().next_offset());
    if let Some(damage) = Damage::of(partition, from, until).filter(|d| d.from < d.until) {
        REPORTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(damage, partition.clone());
        WAKE.notify_one();
    }
}

/// Whether damage in `partition` was reported and not yet taken up for repair.
pub fn pending(partition: &Arc<Partition>) -> bool {
    REPORTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .any(|p| Arc::ptr_eq(p, partition))
}

/// Repairs what polls report, one range at a time, until the process ends (brokers with
/// another copy: [`has_copies`]).
pub async fn run(broker: Arc<Broker>) {
    loop {
        WAKE.notified().await;
        loop {
            let next = REPORTED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_first();
            let Some((damage, partition)) = next else {
                break;
            };
            let broker = broker.clone();
            let _ = tokio::task::spawn_blocking(move || repair(&broker, &partition, damage)).await;
        }
    }
}

/// Rewrites `damage` from the first peer that has an intact copy. Blocking. Returns how many
/// messages were rewritten (0 when the same repair is already running).
pub fn repair(broker: &Broker, partition: &Partition, damage: Damage) -> Result<u64, RepairError> {
    repair_with(broker, partition, damage, |part| {
        repair_from_any(broker, partition, part)
    })
}

/// [`repair`] from brokers in this process instead of the ring's peers (the simulator runs
/// every replica's broker in one process), tried in the order given.
pub fn repair_from_brokers(
    broker: &Broker,
    partition: &Partition,
    damage: Damage,
    peers: &[&Broker],
) -> Result<u64, RepairError> {
    repair_with(broker, partition, damage, |part| {
        let mut outcome = Err(RepairError::NoCopy);
        for peer in peers {
            outcome = repair_from(&mut InProcess(peer), partition, part);
            if outcome.is_ok() {
                break;
            }
        }
        outcome
    })
}

/// Rewrites each damaged segment's part of `damage` with `copy`, counting the outcomes.
fn repair_with(
    broker: &Broker,
    partition: &Partition,
    damage: Damage,
    copy: impl Fn(Damage) -> Result<u64, RepairError>,
) -> Result<u64, RepairError> {
    if !running()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(damage)
    {
        return Ok(0);
    }
    // Only the segments whose part of the range fails to verify are fetched: a poll reports
    // its whole range, and a retried one reports it again after the repair.
    let mut outcome = Ok(0);
    for part in damaged_parts(partition, damage) {
        match copy(part) {
            Ok(messages) => {
                broker.metrics.repairs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(damage = ?part, messages, "damaged messages rewritten from another copy");
                outcome = outcome.map(|done| done + messages);
            }
            Err(error) => {
                broker
                    .metrics
                    .repair_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(damage = ?part, %error, "damaged messages could not be repaired");
                outcome = Err(error);
            }
        }
    }
    running()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&damage);
    outcome
}

/// Peers first (in ring order), then the object store.
fn repair_from_any(
    broker: &Broker,
    partition: &Partition,
    damage: Damage,
) -> Result<u64, RepairError> {
    let deadline = Instant::now() + DEADLINE;
    let mut outcome = Err(RepairError::NoCopy);
    if let Some((status, secret)) = broker
        .cluster_status()
        .and_then(|status| Some((status, status.secret()?)))
    {
        let layout = status.layout();
        for (position, member) in layout.members.iter().enumerate() {
            if position == usize::from(status.position) {
                continue;
            }
            outcome = Connection::open(&member.replication, secret, deadline)
                .map_err(RepairError::from)
                .and_then(|mut peer| repair_from(&mut peer, partition, damage));
            match &outcome {
                Ok(_) => return outcome,
                Err(error) => {
                    tracing::warn!(peer = %member.replication, %error, "repair from this peer failed")
                }
            }
        }
    }
    if let Some(tiering) = &broker.tiering {
        let stored = tokio::runtime::Handle::try_current()
            .map_err(|_| RepairError::NoCopy)
            .and_then(|runtime| runtime.block_on(repair_from_store(tiering, partition, damage)));
        match stored {
            Ok(messages) => return Ok(messages),
            // The store does not hold it: the peers' answer (or "no copy") stands.
            Err(RepairError::NoCopy) => {}
            Err(error) => outcome = Err(error),
        }
    }
    outcome
}

/// Rewrites `damage` from the segment objects the store holds (tiered segments still local).
async fn repair_from_store(
    tiering: &Arc<crate::tiering::Tiering>,
    partition: &Partition,
    damage: Damage,
) -> Result<u64, RepairError> {
    let mut next = damage.from;
    while next < damage.until {
        let (segment, key_base) = {
            let log = partition.log();
            let segment = log.tiered().0.find(next).copied();
            (segment, tiered::key_base(log.dir()))
        };
        let Some(segment) = segment else {
            return Err(RepairError::NoCopy);
        };
        let read = RemoteRead {
            key_base,
            segment,
            next: None,
            offset: next,
            count: (damage.until.min(segment.next_offset) - next) as u32,
            max_bytes: usize::MAX,
        };
        let mut frames = Vec::new();
        let served = tiering.read(&read, &mut frames).await?;
        if served.count == 0 {
            return Err(RepairError::NoCopy);
        }
        next += partition
            .log()
            .overwrite_damaged(segment.start_offset, next, &frames)?;
    }
    Ok(next - damage.from)
}

/// Where damage starts in `partition` from `from` on (before `until`): the first message that
/// does not read back intact, or `until`. Read `window` bytes at a time, each once, so a
/// segment of a gigabyte is neither held in memory whole nor read again after every repaired
/// chunk.
fn damage_from(partition: &Partition, mut from: u64, until: u64, window: usize) -> u64 {
    let mut rebuilt = false;
    while from < until {
        let count = (until - from).min(u64::from(u32::MAX)) as u32;
        let plan = match partition.plan_read(from, count, window) {
            Ok((plan, _)) => plan,
            // A damaged entry in a segment's index file: rebuilt, once, and planned again.
            // Nothing else is placed through an index that cannot be read.
            Err(error) => match damaged_index(&error).filter(|_| !rebuilt) {
                Some(segment) if rebuild_index(partition, segment) => {
                    rebuilt = true;
                    continue;
                }
                _ => break,
            },
        };
        let intact = plan.intact_messages();
        from += u64::from(intact);
        if intact == 0 || intact < plan.count {
            break;
        }
    }
    from.min(until)
}

/// The parts of `damage`, one per local segment, that do not read back verified now, each from
/// its first damaged message.
fn damaged_parts(partition: &Partition, damage: Damage) -> Vec<Damage> {
    let mut parts = Vec::new();
    let mut next = damage.from;
    while next < damage.until {
        // Below the local window (tiered and evicted) there is nothing local to repair.
        let Some((_, end)) = partition.log().segment_bounds(next) else {
            break;
        };
        let until = end.min(damage.until);
        let start = damage_from(partition, next, until, CHUNK_BYTES);
        if start < until {
            parts.push(Damage {
                from: start,
                until,
                ..damage
            });
        }
        next = until;
    }
    parts
}

fn repair_from(
    peer: &mut impl Source,
    partition: &Partition,
    damage: Damage,
) -> Result<u64, RepairError> {
    let (mut next, mut rewritten) = (damage.from, 0);
    loop {
        // Only the damaged messages are fetched: what reads back intact here is skipped, so
        // a peer with damage of its own elsewhere in the range can still mend ours.
        next = damage_from(partition, next, damage.until, CHUNK_BYTES);
        if next >= damage.until {
            break;
        }
        let request = Fetch {
            stream: damage.stream,
            topic: damage.topic,
            partition: damage.partition,
            from: next,
            until: damage.until,
            created_at: Some(partition.created_at),
            // The live history's own messages: both sides hold it.
            last: None,
        };
        match peer.fetch(&request)? {
            Fetched::Chunk {
                frames,
                segment_start,
                ..
            } if !frames.is_empty() => {
                let written = partition
                    .log()
                    .overwrite_damaged(segment_start, next, &frames)?;
                (next, rewritten) = (next + written, rewritten + written);
            }
            _ => {
                return Err(RepairError::Missing {
                    peer: peer.peer(),
                    from: next,
                    until: damage.until,
                })
            }
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FsyncPolicy;
    use crate::replication::sync::serve_partition;
    use crate::storage::partition_log::tests::batch;
    use crate::storage::partition_log::PartitionLog;
    use std::os::unix::fs::FileExt;

    /// A peer in this process: its partition answers fetches as `sync::serve` does.
    struct Peer<'a>(&'a Partition);

    impl Source for Peer<'_> {
        fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
            Ok(serve_partition(self.0, request, |_| {}))
        }

        fn peer(&self) -> String {
            "the peer".into()
        }
    }

    /// A partition of ten equal messages, written alike on every replica.
    fn replica(dir: &std::path::Path) -> (Partition, std::path::PathBuf, usize) {
        let mut log = PartitionLog::create(dir, 1 << 20, false).unwrap();
        log.append(&mut batch(10, 100), 1, || 9).unwrap();
        let mut bytes = Vec::new();
        log.plan_read(0, 10, usize::MAX)
            .unwrap()
            .read_into(&mut bytes)
            .unwrap();
        let segment = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .unwrap();
        let partition = Partition::new(0, 1, log, FsyncPolicy::Never).unwrap();
        (partition, segment, bytes.len() / 10)
    }

    fn flip(segment: &std::path::Path, at: usize) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at as u64).unwrap();
        file.write_all_at(&[byte[0] ^ 0x04], at as u64).unwrap();
    }

    #[test]
    fn a_repair_fetches_only_the_damaged_messages_so_a_peer_damaged_elsewhere_still_serves() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (damaged, our_segment, frame) = replica(ours.path());
        let (peer, peer_segment, _) = replica(theirs.path());
        let intact = std::fs::read(&peer_segment).unwrap();
        assert_eq!(std::fs::read(&our_segment).unwrap(), intact);
        // Ours rotted in message 3, the peer's in message 7: the peer can serve 0..7 only.
        flip(&our_segment, 3 * frame + frame / 2);
        flip(&peer_segment, 7 * frame + frame / 2);
        let damage = Damage {
            stream: 0,
            topic: 0,
            partition: 0,
            from: 0,
            until: 10,
        };
        let rewritten = repair_from(&mut Peer(&peer), &damaged, damage).expect("repaired");
        assert_eq!(
            rewritten, 4,
            "messages 3..7, as far as the peer's copy is intact"
        );
        assert_eq!(std::fs::read(&our_segment).unwrap(), intact);

        // The other way round: ours, whole now, mends the peer from its damaged message on.
        let rewritten = repair_from(&mut Peer(&damaged), &peer, damage).expect("repaired");
        assert_eq!(rewritten, 3, "messages 7..10");
        assert_eq!(std::fs::read(&peer_segment).unwrap(), intact);

        // Nothing damaged: nothing fetched.
        assert_eq!(repair_from(&mut Peer(&peer), &damaged, damage).unwrap(), 0);
    }

    #[test]
    fn damage_is_found_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (partition, segment, frame) = replica(dir.path());
        // Windows of two and a half messages: each read holds two or three.
        let window = frame * 5 / 2;
        assert_eq!(damage_from(&partition, 0, 10, window), 10);
        assert_eq!(damage_from(&partition, 4, 10, window), 10);
        flip(&segment, 7 * frame + 3);
        assert_eq!(damage_from(&partition, 0, 10, window), 7);
        assert_eq!(damage_from(&partition, 7, 10, window), 7);
        assert_eq!(damage_from(&partition, 8, 10, window), 10);
        assert_eq!(damage_from(&partition, 0, 6, window), 6, "stops at `until`");
        assert_eq!(damage_from(&partition, 0, 10, usize::MAX), 7);
    }
}
