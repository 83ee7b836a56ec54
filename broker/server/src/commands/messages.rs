//! SendMessages, PollMessages and FlushUnsavedBuffer.

use crate::broker::Broker;
use crate::catalog::TopicTraffic;
use crate::error::{BrokerError, Result};
use crate::partition::Partition;
use crate::storage::fsutil::now_micros;
use crate::storage::offsets::consumer_key;
use iggy_wire::message::{validate_batch, SendMessagesHeader};
use iggy_wire::request::PartitionRef;
use iggy_wire::response::poll_header;
use iggy_wire::{ConsumerKind, Identifier, Partitioning, PollingStrategy};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Validates, routes and appends a batch. The payload's frames are stamped in place and written
/// as they are: no copy between the socket buffer and the file.
pub async fn send(broker: &Broker, payload: &mut [u8]) -> Result<()> {
    let header = SendMessagesHeader::decode(payload)?;
    let (head, messages) = payload.split_at_mut(header.messages_start);
    validate_batch(&head[header.index_start..], messages, header.count)?;
    let (partition, traffic) = route(broker, &header.stream, &header.topic, &header.partitioning)?;
    let appended = partition
        .append(messages, now_micros(), broker.durable_sends())
        .await
        .map_err(BrokerError::Append)?;
    traffic.record_in(appended.count as u64, appended.bytes);
    Ok(())
}

fn route(
    broker: &Broker,
    stream: &Identifier,
    topic: &Identifier,
    partitioning: &Partitioning,
) -> Result<(Arc<Partition>, Arc<TopicTraffic>)> {
    let catalog = broker.catalog();
    let (_, topic) = catalog.topic(stream, topic)?;
    let count = topic.partitions.len() as u32;
    if count == 0 {
        return Err(BrokerError::NoPartitions);
    }
    let id = match partitioning {
        Partitioning::Balanced => topic.next_partition.fetch_add(1, Ordering::Relaxed) % count,
        Partitioning::PartitionId(id) => *id,
        Partitioning::MessagesKey(key) => Partitioning::partition_for_key(key, count),
    };
    Ok((topic.partition(id)?.clone(), topic.traffic.clone()))
}

/// The partition a standalone consumer addresses (partition 0 when none is given). Consumer
/// groups arrive with the next milestone; until then no group exists to be found.
pub(super) fn consumer_partition(
    broker: &Broker,
    target: &PartitionRef,
) -> Result<(Arc<Partition>, Arc<TopicTraffic>)> {
    if target.consumer.kind == ConsumerKind::Group {
        return Err(BrokerError::ConsumerGroupNotFound(
            target.consumer.id.clone(),
        ));
    }
    let catalog = broker.catalog();
    let (_, topic) = catalog.topic(&target.stream, &target.topic)?;
    let partition = topic.partition(target.partition.unwrap_or(0))?.clone();
    Ok((partition, topic.traffic.clone()))
}

pub async fn poll(
    broker: &Broker,
    target: &PartitionRef,
    strategy: PollingStrategy,
    count: u32,
    auto_commit: bool,
    body: &mut Vec<u8>,
) -> Result<()> {
    let (partition, traffic) = consumer_partition(broker, target)?;
    let key = consumer_key(&target.consumer.id);
    let stored = match strategy {
        PollingStrategy::Next => partition.offsets().get(&key),
        _ => None,
    };
    let start = {
        let log = partition.log();
        let first = log.first_offset();
        let start = match strategy {
            PollingStrategy::Offset(offset) => first.map(|f| offset.max(f)),
            PollingStrategy::Timestamp(ts) => log.offset_at_or_after(ts),
            PollingStrategy::First => first,
            PollingStrategy::Last => {
                first.map(|f| log.next_offset().saturating_sub(count as u64).max(f))
            }
            PollingStrategy::Next => match stored {
                Some(offset) => first.map(|f| (offset + 1).max(f)),
                None => first,
            },
        };
        start.filter(|s| *s < log.next_offset())
    };
    let max_bytes = broker.config.storage.max_poll_bytes.0 as usize;
    let (plan, current_offset) = match start {
        Some(start) if count > 0 => partition.plan_read(start, count, max_bytes),
        _ => (Default::default(), partition.log().current_offset()),
    };
    body.extend_from_slice(&poll_header(partition.id, current_offset, plan.count));
    plan.read_into(body)?;
    if let (true, Some(start), true) = (auto_commit, start, plan.count > 0) {
        let last = start + plan.count as u64 - 1;
        partition
            .offsets()
            .store(&key, last, broker.durable_sends())?;
    }
    traffic.record_out(plan.count as u64, plan.bytes as u64);
    Ok(())
}

/// Appends reach the page cache before they are acknowledged, so there is no unsaved buffer to
/// write; with `fsync` this forces the partition to disk.
pub async fn flush(
    broker: &Broker,
    stream: &Identifier,
    topic: &Identifier,
    partition: u32,
    fsync: bool,
) -> Result<()> {
    let partition = broker
        .catalog()
        .topic(stream, topic)?
        .1
        .partition(partition)?
        .clone();
    if fsync {
        partition.sync_now().await.map_err(BrokerError::Storage)?;
    }
    Ok(())
}
