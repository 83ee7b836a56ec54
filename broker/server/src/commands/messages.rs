//! SendMessages, PollMessages and FlushUnsavedBuffer. A send is an `Append` operation (applied
//! in `apply/messages.rs`); a poll reads, and its auto-commit is a `StoreOffset` operation.

use super::submit;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::net::session::Session;
use crate::ops::Operation;
use crate::security::access::Access;
use crate::state::catalog::TopicTraffic;
use crate::state::groups::{find_group, GroupMember};
use crate::state::partition::Partition;
use crate::storage::offsets::consumer_key;
use crate::storage::StorageError;
use crate::tiering::reader::Served;
use iggy_wire::request::PartitionRef;
use iggy_wire::response::poll_header;
use iggy_wire::{ConsumerKind, Identifier, PollingStrategy};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Decodes the batch's header and submits its frames for appending, in place.
pub async fn send(broker: &Broker, user: Option<u32>, payload: &mut [u8]) -> Result<()> {
    let op = Operation::append(payload)?;
    submit(broker, user, op, &mut Vec::new()).await
}

/// Where a consumer's poll or offset command lands.
pub(super) struct ConsumerTarget {
    pub stream: u32,
    pub topic: u32,
    /// `None` when a group member owns no partition or asked for one it does not own: the
    /// poll is empty.
    pub partition: Option<Arc<Partition>>,
    pub kind: ConsumerKind,
    /// File name of the stored offset: the consumer's id, or the group's numeric id.
    pub key: String,
    /// The group and the member polling, for a group.
    pub member: Option<(u32, GroupMember)>,
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
    let (partition_id, key, member) = match target.consumer.kind {
        ConsumerKind::Consumer => (
            Some(target.partition.unwrap_or(0)),
            consumer_key(&target.consumer.id),
            None,
        ),
        ConsumerKind::Group => {
            let mut groups = topic.groups();
            let group = find_group(&mut groups, &target.consumer.id)?;
            let member = broker.group_member(session.client_id);
            let not_member = || BrokerError::ConsumerGroupMemberNotFound(session.client_id);
            let partition = match (polling, target.partition) {
                (true, requested) => group
                    .partition_for_poll(member, requested)
                    .ok_or_else(not_member)?,
                (false, Some(p)) => Some(p),
                (false, None) => {
                    let member = group.members.get(&member).ok_or_else(not_member)?;
                    member.last_polled.or(member.partitions.first().copied())
                }
            };
            (partition, group.id.to_string(), Some((group.id, member)))
        }
    };
    let partition = match partition_id {
        Some(id) => Some(topic.partition(id)?.clone()),
        None if polling => None,
        None => return Err(BrokerError::PartitionNotFound(0)),
    };
    Ok(ConsumerTarget {
        stream: s.id,
        topic: topic.id,
        partition,
        kind: target.consumer.kind,
        key,
        member,
        traffic: topic.traffic.clone(),
    })
}

pub async fn poll(
    broker: &Broker,
    session: &mut Session,
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
    // A timestamp below the local window is found in the tiered segment's index.
    let remote_time = match strategy {
        PollingStrategy::Timestamp(ts) => partition
            .log()
            .remote_segment_at_or_after(ts)
            .map(|segment| (segment, ts)),
        _ => None,
    };
    let remote_start = match (remote_time, &broker.tiering) {
        (Some((segment, ts)), Some(tiering)) => {
            let base = crate::storage::tiered::key_base(partition.log().dir());
            tiering
                .offset_at_or_after(&base, &segment, ts)
                .await
                .map_err(BrokerError::Tier)?
        }
        _ => None,
    };
    let start = {
        let log = partition.log();
        let first = log.first_offset();
        let start = match strategy {
            PollingStrategy::Offset(offset) => first.map(|f| offset.max(f)),
            PollingStrategy::Timestamp(ts) => match remote_start {
                Some(start) => Some(start),
                None => log.offset_at_or_after(ts)?,
            },
            PollingStrategy::First => first,
            PollingStrategy::Last => {
                first.map(|f| log.next_offset().saturating_sub(count as u64).max(f))
            }
            PollingStrategy::Next => match stored {
                Some(offset) => first.map(|f| (offset + 1).max(f)),
                None => first,
            },
        };
        // A consumer at the end waits for what comes next: L1 keeps it for its next poll.
        if start.is_none_or(|s| s >= log.next_offset()) {
            log.want_newest();
        }
        start.filter(|s| *s < log.next_offset())
    };
    // The response's memory comes out of the shared budget and is returned once it is written:
    // a reader that does not read keeps only what it got, and others poll with what is left.
    let mut reserved = broker
        .memory
        .reserve_available(broker.config.storage.max_poll_bytes.0);
    let max_bytes = reserved.bytes() as usize;
    let start = start.filter(|_| max_bytes > 0);
    let request = start.filter(|_| count > 0).map(|s| (s, count, max_bytes));
    let initial = body.len();
    let mut read = read_planned(broker, &partition, request, body).await;
    if read.as_ref().is_err_and(is_evicted_under_read) {
        // Planned while the segment was local, read after the tiering loop evicted it: plan
        // again, and the store serves it.
        body.truncate(initial);
        read = read_planned(broker, &partition, request, body).await;
    }
    let (plan, frames_start) = match read {
        Ok(read) => read,
        Err(BrokerError::Storage(error)) => {
            if let Some(segment) = crate::repair::damaged_index(&error) {
                // The index is rebuilt from the log in the background; the retry reads it.
                let partition = partition.clone();
                tokio::task::spawn_blocking(move || {
                    crate::repair::rebuild_index(&partition, segment)
                });
            }
            if matches!(error, StorageError::CorruptRead { .. }) {
                broker.metrics.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                // Rewritten from another copy (a peer, or the store) when there is one; the
                // consumer's retry reads it.
                if let Some((start, count, _)) = request {
                    let until = start + u64::from(count);
                    crate::repair::report(broker, &partition, start, until);
                }
            }
            return Err(error.into());
        }
        Err(error) => return Err(error),
    };
    let (plan, start) = match (start, resolved.member) {
        (Some(first), Some(member)) if plan.count > 0 => {
            let last = first + plan.count as u64 - 1;
            if still_polls(
                broker,
                (resolved.stream, resolved.topic),
                member,
                partition.id,
                last,
            ) {
                (plan, start)
            } else {
                // Its partition began to move to another member while this poll read: that
                // member polls these messages from the group's offset, so this one gets none.
                body.truncate(initial);
                let current = partition.log().current_offset();
                body.extend_from_slice(&poll_header(partition.id, current, 0));
                (Served { count: 0, bytes: 0 }, None)
            }
        }
        _ => (plan, start),
    };
    // Only what this response needs stays reserved: a small poll must not hold a large share.
    reserved.shrink_to(plan.bytes as u64);
    session.response_budget = reserved;
    crate::telemetry::record_poll(
        partition.id,
        plan.count,
        &body[frames_start.min(body.len())..],
    );
    if let (true, Some(start), true) = (auto_commit, start, plan.count > 0) {
        let op = Operation::StoreOffset {
            stream: resolved.stream,
            topic: resolved.topic,
            partition: partition.id,
            kind: resolved.kind,
            key: resolved.key.clone(),
            offset: start + plan.count as u64 - 1,
        };
        submit(broker, session.user_id, op, &mut Vec::new()).await?;
    }
    resolved
        .traffic
        .record_out(plan.count as u64, plan.bytes as u64);
    Ok(())
}

/// Records that a group member's poll read `partition` up to `last`; `false` if the member no
/// longer polls it (a rebalance began moving it while the poll read).
fn still_polls(
    broker: &Broker,
    (stream, topic): (u32, u32),
    (group, member): (u32, GroupMember),
    partition: u32,
    last: u64,
) -> bool {
    let catalog = broker.catalog();
    let Some(topic) = catalog.topic_by_ids(stream, topic) else {
        return false;
    };
    let mut groups = topic.groups();
    groups
        .get_mut(&group)
        .is_some_and(|g| g.finish_poll(member, partition, last))
}

/// Plans a read of `request` (start, count, byte budget; `None`: nothing to read) and appends
/// the poll's header and frames to `body`; returns what it served and where the frames start.
async fn read_planned(
    broker: &Broker,
    partition: &Partition,
    request: Option<(u64, u32, usize)>,
    body: &mut Vec<u8>,
) -> Result<(Served, usize)> {
    let (mut plan, current_offset) = match request {
        Some((start, count, max_bytes)) => partition.plan_poll(start, count, max_bytes)?,
        None => (Default::default(), partition.log().current_offset()),
    };
    let mut remote_frames = Vec::new();
    if let Some(remote) = plan.remote.take() {
        // Below the local window: the object store serves it; the header needs its count.
        let Some(tiering) = &broker.tiering else {
            return Err(BrokerError::TierMissing(partition.id));
        };
        let served = tiering
            .read(&remote, &mut remote_frames)
            .await
            .map_err(BrokerError::Tier)?;
        plan.count = served.count;
        plan.bytes = served.bytes;
    }
    body.extend_from_slice(&poll_header(partition.id, current_offset, plan.count));
    let frames_start = body.len();
    body.extend_from_slice(&remote_frames);
    drop(remote_frames);
    plan.read_into(body).map_err(BrokerError::Storage)?;
    let served = Served {
        count: plan.count,
        bytes: plan.bytes,
    };
    Ok((served, frames_start))
}

/// A local read that found its segment file gone: eviction to the object store since the plan.
fn is_evicted_under_read(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Storage(StorageError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
    )
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
