//! SendMessages, PollMessages and FlushUnsavedBuffer.

use crate::access::Access;
use crate::broker::Broker;
use crate::catalog::TopicTraffic;
use crate::error::{BrokerError, Result};
use crate::groups::ConsumerGroup;
use crate::partition::Partition;
use crate::session::Session;
use crate::storage::fsutil::now_micros;
use crate::storage::offsets::consumer_key;
use iggy_wire::message::{validate_batch, SendMessagesHeader};
use iggy_wire::request::PartitionRef;
use iggy_wire::response::poll_header;
use iggy_wire::{ConsumerKind, Identifier, Partitioning, PollingStrategy};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Validates, routes and appends a batch. The payload's frames are stamped in place and written
/// as they are: no copy between the socket buffer and the file.
pub async fn send(broker: &Broker, user: Option<u32>, payload: &mut [u8]) -> Result<()> {
    let header = SendMessagesHeader::decode(payload)?;
    let (head, messages) = payload.split_at_mut(header.messages_start);
    let (partition, traffic) = route(
        broker,
        user,
        &header.stream,
        &header.topic,
        &header.partitioning,
    )?;
    validate_batch(&head[header.index_start..], messages, header.count)?;
    let appended = partition
        .append(messages, now_micros(), broker.durable_sends())
        .await
        .map_err(BrokerError::Append)?;
    traffic.record_in(appended.count as u64, appended.bytes);
    Ok(())
}

fn route(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    partitioning: &Partitioning,
) -> Result<(Arc<Partition>, Arc<TopicTraffic>)> {
    let catalog = broker.catalog();
    let (s, topic) = catalog.topic(stream, topic)?;
    catalog.authorize(user, Access::Send(s.id, topic.id))?;
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

/// Where a consumer's poll or offset command lands.
pub(super) struct ConsumerTarget {
    /// `None` when a group member owns no partition or asked for one it does not own: the
    /// poll is empty.
    pub partition: Option<Arc<Partition>>,
    pub kind: ConsumerKind,
    /// File name of the stored offset: the consumer's id, or the group's numeric id.
    pub key: String,
    pub traffic: Arc<TopicTraffic>,
}

/// Resolves a standalone consumer (partition 0 when none is given) or a consumer group, where
/// the caller must be a member: a poll without a partition takes the member's partitions in
/// turn, an offset command without one applies to the partition the member polled last.
pub(super) fn consumer_target(
    broker: &Broker,
    session: &Session,
    target: &PartitionRef,
    polling: bool,
) -> Result<ConsumerTarget> {
    let catalog = broker.catalog();
    let (s, topic) = catalog.topic(&target.stream, &target.topic)?;
    catalog.authorize(session.user_id, Access::Poll(s.id, topic.id))?;
    let (partition_id, key) = match target.consumer.kind {
        ConsumerKind::Consumer => (
            Some(target.partition.unwrap_or(0)),
            consumer_key(&target.consumer.id),
        ),
        ConsumerKind::Group => {
            let mut groups = topic.groups();
            let group = find_group(&mut groups, &target.consumer.id)?;
            let not_member = || BrokerError::ConsumerGroupMemberNotFound(session.client_id);
            let partition = match (polling, target.partition) {
                (true, requested) => group
                    .partition_for_poll(session.client_id, requested)
                    .ok_or_else(not_member)?,
                (false, Some(p)) => Some(p),
                (false, None) => {
                    let member = group
                        .members
                        .get(&session.client_id)
                        .ok_or_else(not_member)?;
                    member.last_polled.or(member.partitions.first().copied())
                }
            };
            (partition, group.id.to_string())
        }
    };
    let partition = match partition_id {
        Some(id) => Some(topic.partition(id)?.clone()),
        None if polling => None,
        None => return Err(BrokerError::PartitionNotFound(0)),
    };
    Ok(ConsumerTarget {
        partition,
        kind: target.consumer.kind,
        key,
        traffic: topic.traffic.clone(),
    })
}

/// A topic's group by numeric id or name.
pub(super) fn find_group<'g>(
    groups: &'g mut BTreeMap<u32, ConsumerGroup>,
    id: &Identifier,
) -> Result<&'g mut ConsumerGroup> {
    let found = match id {
        Identifier::Numeric(n) => groups.get_mut(n),
        Identifier::Named(name) => groups.values_mut().find(|g| &g.name == name),
    };
    found.ok_or_else(|| BrokerError::ConsumerGroupNotFound(id.clone()))
}

pub async fn poll(
    broker: &Broker,
    session: &Session,
    target: &PartitionRef,
    strategy: PollingStrategy,
    count: u32,
    auto_commit: bool,
    body: &mut Vec<u8>,
) -> Result<()> {
    let resolved = consumer_target(broker, session, target, true)?;
    let Some(partition) = resolved.partition else {
        body.extend_from_slice(&poll_header(target.partition.unwrap_or(0), 0, 0));
        return Ok(());
    };
    let stored = match strategy {
        PollingStrategy::Next => partition.offsets(resolved.kind).get(&resolved.key),
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
            .offsets(resolved.kind)
            .store(&resolved.key, last, broker.durable_sends())?;
    }
    resolved
        .traffic
        .record_out(plan.count as u64, plan.bytes as u64);
    Ok(())
}

/// Appends reach the page cache before they are acknowledged, so there is no unsaved buffer to
/// write; with `fsync` this forces the partition to disk.
pub async fn flush(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    partition: u32,
    fsync: bool,
) -> Result<()> {
    let partition = {
        let catalog = broker.catalog();
        let (s, t) = catalog.topic(stream, topic)?;
        catalog.authorize(user, Access::Send(s.id, t.id))?;
        t.partition(partition)?.clone()
    };
    if fsync {
        partition.sync_now().await.map_err(BrokerError::Storage)?;
    }
    Ok(())
}
