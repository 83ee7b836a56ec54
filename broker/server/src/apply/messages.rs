//! Appends and consumer offsets.

use super::Applied;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::{MessageIds, OpContext};
use crate::repair;
use crate::security::access::Access;
use crate::state::catalog::TopicTraffic;
use crate::state::partition::Partition;
use crate::storage::dedup::{Deduplication, DeduplicationSettings};
use crate::storage::partition_log::Unpublished;
use crate::storage::StorageError;
use iggy_wire::message::validate_batch;
use iggy_wire::{ConsumerKind, Identifier, Partitioning};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A SendMessages batch: where it goes and its frames, stamped in place.
pub(super) struct Batch<'b> {
    pub stream: &'b Identifier,
    pub topic: &'b Identifier,
    pub partitioning: &'b Partitioning,
    pub count: u32,
    pub index: &'b [u8],
    pub messages: &'b mut [u8],
}

/// Validates, routes and appends a batch. The frames are stamped in place (offsets, the
/// context's timestamp, ids derived from its entropy) and written as they are: no copy between
/// the socket buffer and the file.
pub(super) fn append(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    batch: Batch<'_>,
) -> Result<Applied> {
    let (partition, traffic, dedup) = route(broker, context, user, &batch, Turn::Take)?;
    validate_batch(batch.index, batch.messages, batch.count)?;
    let mut ids = MessageIds::new(context.entropy);
    let mut attempt = || {
        partition.append(
            batch.messages,
            context.timestamp,
            || ids.next_id(),
            dedup.as_ref(),
        )
    };
    let (appended, dropped) = match (attempt(), dedup) {
        // Only reading a deduplication window back reads on this path; nothing was written.
        (Err(error @ StorageError::CorruptRead { .. }), Some(settings)) => {
            match mend_window(broker, &partition, &settings, &error) {
                true => attempt(),
                false => Err(error),
            }
        }
        (outcome, _) => outcome,
    }
    .map_err(BrokerError::Append)?;
    traffic.record_in(appended.count as u64, appended.bytes);
    if dropped > 0 {
        broker
            .metrics
            .messages_deduplicated
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }
    Ok(Applied {
        sync: Some((partition, appended.seq)),
    })
}

/// A send's batch a replicated primary wrote into its partition ahead of the commit
/// ([`stage`]), for the apply of the same op to publish ([`publish`]).
pub struct StagedSend {
    partition: Arc<Partition>,
    batch: Unpublished,
}

impl StagedSend {
    /// Cuts the written batch off its partition: it will not be published.
    pub fn abandon(self) -> std::result::Result<(), StorageError> {
        self.partition.log().drop_unpublished()
    }
}

/// Stamps a send's batch as its apply will, in the state the apply will meet, and writes it
/// past its partition's end (`storage::partition_log::unpublished`). Only where the apply's
/// outcome is known now: the send is allowed, valid and routed to a partition without
/// message deduplication (the window may drop messages), and fits the active segment.
/// Otherwise nothing is written and `None` returned; the apply then does all the work.
pub(super) fn stage(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    batch: Batch<'_>,
) -> Option<StagedSend> {
    let (partition, _, dedup) = route(broker, context, user, &batch, Turn::Peek).ok()?;
    if dedup.is_some() || validate_batch(batch.index, batch.messages, batch.count).is_err() {
        return None;
    }
    let mut ids = MessageIds::new(context.entropy);
    let written = partition.write_unpublished(batch.messages, context.timestamp, || ids.next_id());
    match written {
        Ok(Some(batch)) => Some(StagedSend { partition, batch }),
        Ok(None) => None,
        Err(error) => {
            // The apply meets the same disk and answers for it.
            tracing::debug!(%error, "a batch could not be written ahead of its commit");
            None
        }
    }
}

/// Applies a send whose batch [`stage`] wrote: `batch` holds the frames it stamped. Takes the
/// written frames in when the send still goes where they lie; `None` otherwise (and the
/// partition's unpublished bytes are cut): the send must then be applied the ordinary way,
/// from the op's body.
pub(super) fn publish(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    batch: Batch<'_>,
    staged: StagedSend,
) -> Result<Option<Applied>> {
    // Staging runs in cluster mode only, where a balanced send goes by the op's entropy, not
    // by the cursor: peeking routes it where the apply would, and moves nothing.
    let traffic = match route(broker, context, user, &batch, Turn::Peek) {
        Ok((routed, traffic, None)) if Arc::ptr_eq(&routed, &staged.partition) => traffic,
        _ => return staged.abandon().map(|()| None).map_err(BrokerError::Append),
    };
    let StagedSend {
        partition,
        batch: written,
    } = staged;
    let published = partition.publish(written, batch.messages, context.timestamp);
    let Some(appended) = published.map_err(BrokerError::Append)? else {
        return Ok(None);
    };
    traffic.record_in(appended.count as u64, appended.bytes);
    Ok(Some(Applied {
        sync: Some((partition, appended.seq)),
    }))
}

/// Reading `partition`'s deduplication window back met damage (`error`); returns whether it
/// was mended, so the append is worth trying again. A damaged index is rebuilt from its log.
/// On a replica, rotted messages are fetched from a peer at once, as the repair worker would,
/// but blocking the replica thread: every replica must apply the send alike, and this one
/// cannot until it reads what the others read; if that fails too, the retried append fails
/// and the replica stops, as for any committed send it cannot apply. A single node has no
/// replicas to agree with (and its apply runs on an async worker, which must not block): it
/// reads the window from the messages that verify, without the rotted ones, and leaves their
/// repair, where another copy exists, to the repair worker.
fn mend_window(
    broker: &Broker,
    partition: &Arc<Partition>,
    settings: &Deduplication,
    error: &StorageError,
) -> bool {
    tracing::warn!(%error, "the messages of a deduplication window are damaged; repairing them");
    if let Some(offset) = repair::damaged_index(error) {
        return repair::rebuild_index(partition, offset);
    }
    let next = partition.log().next_offset();
    let reach = settings.reach(next);
    if broker.cluster_status().is_none() {
        repair::report(broker, partition, reach, next);
        return match partition.log().read_window_around_damage(*settings) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "the deduplication window could not be read");
                false
            }
        };
    }
    let Some(damage) = repair::Damage::of(partition, reach, next) else {
        return false;
    };
    match repair::repair(broker, partition, damage) {
        Ok(messages) => {
            tracing::warn!(messages, "repaired the deduplication window from a peer");
            true
        }
        Err(error) => {
            tracing::error!(%error, "the deduplication window could not be repaired");
            false
        }
    }
}

/// Turns message deduplication on or off for every partition. Messages stored before it takes
/// effect never count (`since` is later than each of them, `storage::dedup`): whether such a
/// message is still on local disk differs between replicas (tiering evicts at its own pace),
/// so counting it could make replicas drop different messages. Every partition's window is
/// read afresh with the new settings when next needed.
pub(super) fn set_deduplication(
    broker: &Broker,
    context: OpContext,
    settings: Option<DeduplicationSettings>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let newest = catalog
        .partitions()
        .map(|(_, p)| p.log().newest_timestamp())
        .max()
        .unwrap_or(0);
    let since = context.timestamp.max(newest.saturating_add(1));
    let before = catalog.deduplication;
    catalog.deduplication = settings.map(|settings| Deduplication { settings, since });
    if let Err(e) = broker.persist(&catalog) {
        catalog.deduplication = before;
        return Err(e);
    }
    tracing::info!(?settings, since, "message deduplication settings in force");
    Ok(())
}

/// The partition the topic's round-robin cursor names for the next balanced batch, moving the
/// cursor on; `None` when the topic is unknown or has no partitions (the apply then answers
/// for it).
pub(super) fn next_balanced(
    broker: &Broker,
    stream: &Identifier,
    topic: &Identifier,
) -> Option<u32> {
    let catalog = broker.catalog();
    let (_, topic) = catalog.topic(stream, topic).ok()?;
    let count = topic.partitions.len() as u32;
    (count > 0).then(|| topic.next_partition.fetch_add(1, Ordering::Relaxed) % count)
}

/// Whether routing a balanced batch moves the topic's round-robin cursor on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// The apply's: the next balanced batch goes to the next partition.
    Take,
    /// Only asks where the batch would go now.
    Peek,
}

/// The partition a batch goes to, after checking the caller may send to the topic, and the
/// deduplication in force.
fn route(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    batch: &Batch<'_>,
    turn: Turn,
) -> Result<(Arc<Partition>, Arc<TopicTraffic>, Option<Deduplication>)> {
    let catalog = broker.catalog();
    let (s, topic) = catalog.topic(batch.stream, batch.topic)?;
    catalog.authorize(user, Access::Send(s.id, topic.id))?;
    let count = topic.partitions.len() as u32;
    if count == 0 {
        return Err(BrokerError::NoPartitions);
    }
    let id = match batch.partitioning {
        // A replica's cursor is its own (no checkpoint holds it), so a balanced send that
        // reaches the log undecided — its member did not know the topic yet
        // (`apply::decide_partition`) — goes where the op's entropy says, alike everywhere.
        Partitioning::Balanced if broker.cluster_status().is_some() => {
            (context.entropy % u128::from(count)) as u32
        }
        Partitioning::Balanced if turn == Turn::Peek => {
            topic.next_partition.load(Ordering::Relaxed) % count
        }
        Partitioning::Balanced => topic.next_partition.fetch_add(1, Ordering::Relaxed) % count,
        Partitioning::PartitionId(id) => *id,
        Partitioning::MessagesKey(key) => Partitioning::partition_for_key(key, count),
    };
    let partition = topic.partition(id)?.clone();
    Ok((partition, topic.traffic.clone(), catalog.deduplication))
}

/// A partition a consumer may poll, by numeric ids.
fn consumer_partition(
    broker: &Broker,
    user: Option<u32>,
    (stream, topic, partition): (u32, u32, u32),
) -> Result<Arc<Partition>> {
    let catalog = broker.catalog();
    let (s, t) = catalog.topic(&Identifier::Numeric(stream), &Identifier::Numeric(topic))?;
    catalog.authorize(user, Access::Poll(s.id, t.id))?;
    Ok(t.partition(partition)?.clone())
}

/// An offset past the last message would make the next poll skip messages not yet written.
pub(super) fn store_offset(
    broker: &Broker,
    user: Option<u32>,
    at: (u32, u32, u32),
    kind: ConsumerKind,
    key: &str,
    offset: u64,
) -> Result<()> {
    let partition = consumer_partition(broker, user, at)?;
    let (empty, current) = {
        let log = partition.log();
        (log.is_empty(), log.current_offset())
    };
    if empty || offset > current {
        return Err(BrokerError::InvalidOffset { offset, current });
    }
    partition.offsets(kind).store(key, offset)?;
    if kind == ConsumerKind::Group {
        super::groups::offset_stored(broker, at, key);
    }
    Ok(())
}

pub(super) fn delete_offset(
    broker: &Broker,
    user: Option<u32>,
    at: (u32, u32, u32),
    kind: ConsumerKind,
    key: &str,
) -> Result<()> {
    let partition = consumer_partition(broker, user, at)?;
    if partition.offsets(kind).delete(key)? {
        Ok(())
    } else {
        Err(BrokerError::ConsumerOffsetNotFound)
    }
}
