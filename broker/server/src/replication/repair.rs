//! Repairs rotted partition data from the other replicas. Replicas' segments are byte-identical
//! (every replica applies the same operations, and state sync copies whole segments), so a
//! range that fails its checksums here is fetched from a peer — through the state-sync fetch,
//! which verifies what it sends — checked against this log's index, and written over the
//! damaged bytes (`PartitionLog::overwrite_damaged`). The scrubber asks for a repair when it
//! finds damage; so does a poll that meets it (the poll still answers
//! `InvalidMessageChecksum`; the consumer's retry reads the repaired range).

use super::sync::{Connection, Fetch, Fetched, Source, SyncError};
use crate::broker::Broker;
use crate::state::partition::Partition;
use crate::storage::{tiered, StorageError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one repair may take, over all peers.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("not a replica: there is no peer to repair from")]
    NoPeers,
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

/// A poll met damage in `from..until` of `partition`: queue its repair (replicas only; a
/// single node has no peer, and the scrubber's log line is all it can do).
pub fn report(broker: &Broker, partition: &Arc<Partition>, from: u64, until: u64) {
    if broker.cluster_status().is_none() {
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

/// Repairs what polls report, one range at a time, until the process ends (replicas only).
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
    let Some(status) = broker.cluster_status() else {
        return Err(RepairError::NoPeers);
    };
    if !running()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(damage)
    {
        return Ok(0);
    }
    if intact(partition, damage) {
        // Repaired since it was reported (a retried poll reports the same range again).
        running()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&damage);
        return Ok(0);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut outcome = Err(RepairError::NoPeers);
    for (position, member) in status.members.iter().enumerate() {
        if position == usize::from(status.position) {
            continue;
        }
        outcome = Connection::open(&member.replication, deadline)
            .map_err(RepairError::from)
            .and_then(|mut peer| repair_from(&mut peer, partition, damage));
        match &outcome {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(peer = %member.replication, %error, "repair from this peer failed")
            }
        }
    }
    running()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&damage);
    match &outcome {
        Ok(messages) => {
            broker.metrics.repairs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                ?damage,
                messages,
                "damaged messages rewritten from a peer's copy"
            );
        }
        Err(error) => {
            broker
                .metrics
                .repair_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(?damage, %error, "damaged messages could not be repaired");
        }
    }
    outcome
}

/// Whether the range reads back verified from the local files now.
fn intact(partition: &Partition, damage: Damage) -> bool {
    let count = (damage.until - damage.from).min(u64::from(u32::MAX)) as u32;
    let (plan, _) = partition.plan_read(damage.from, count, usize::MAX);
    plan.count as u64 == damage.until - damage.from && plan.read_into(&mut Vec::new()).is_ok()
}

fn repair_from(
    peer: &mut impl Source,
    partition: &Partition,
    damage: Damage,
) -> Result<u64, RepairError> {
    let mut next = damage.from;
    while next < damage.until {
        let request = Fetch {
            stream: damage.stream,
            topic: damage.topic,
            partition: damage.partition,
            from: next,
            until: damage.until,
            created_at: Some(partition.created_at),
        };
        match peer.fetch(&request)? {
            Fetched::Chunk {
                frames,
                segment_start,
                ..
            } if !frames.is_empty() => {
                next += partition
                    .log()
                    .overwrite_damaged(segment_start, next, &frames)?;
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
    Ok(next - damage.from)
}
