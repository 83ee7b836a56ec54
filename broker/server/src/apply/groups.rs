//! Consumer groups: create, delete, join and leave. All need `read_topic` on the group's topic
//! (Iggy's rule: reading a topic includes managing its consumer groups). Membership changes are
//! operations too, so every replica assigns partitions alike; the broker itself issues the
//! ones no client asks for (a closed connection leaving, a restarted or lost node forgotten).

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::OpContext;
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::lowest_free_id;
use crate::state::groups::find_group;
use crate::state::groups::{ConsumerGroup, GroupMember, Handover};
use iggy_wire::request::GroupRef;
use iggy_wire::{ConsumerKind, Identifier};

pub(super) fn create(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    name: String,
    body: &mut Vec<u8>,
) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(BrokerError::InvalidConsumerGroupName);
    }
    // The write lock serialises group creation with every other metadata change, so
    // snapshots reach the disk in order.
    let catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(stream, topic)?;
    catalog.authorize(user, Access::ReadTopic(s.id, t.id))?;
    let id = {
        let mut groups = t.groups();
        if groups.values().any(|g| g.name == name) {
            return Err(BrokerError::ConsumerGroupNameExists(name));
        }
        let id = lowest_free_id(&groups);
        groups.insert(id, ConsumerGroup::new(id, name));
        id
    };
    if let Err(e) = broker.persist(&catalog) {
        t.groups().remove(&id);
        return Err(e);
    }
    if let Some(group) = t.groups().get(&id) {
        reply::group_details(group, t.partitions.len() as u32, body);
    }
    Ok(())
}

/// Deleting a group also deletes its stored offsets and ends its memberships.
pub(super) fn delete(broker: &Broker, user: Option<u32>, r: &GroupRef) -> Result<()> {
    let catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(&r.stream, &r.topic)?;
    catalog.authorize(user, Access::ReadTopic(s.id, t.id))?;
    let removed = {
        let mut groups = t.groups();
        let id = find_group(&mut groups, &r.group)?.id;
        groups.remove(&id)
    };
    let Some(removed) = removed else {
        return Err(BrokerError::ConsumerGroupNotFound(r.group.clone()));
    };
    if let Err(e) = broker.persist(&catalog) {
        t.groups().insert(removed.id, removed);
        return Err(e);
    }
    for partition in &t.partitions {
        let _ = partition
            .offsets(ConsumerKind::Group)
            .delete(&removed.id.to_string())?;
    }
    let membership = (s.id, t.id, removed.id);
    broker.clients.forget_groups(|m| *m == membership);
    Ok(())
}

/// Runs `change` on group `r` of a topic the user may read, with the topic's partition count.
fn with_group<T>(
    broker: &Broker,
    user: Option<u32>,
    r: &GroupRef,
    change: impl FnOnce(&mut ConsumerGroup, u32) -> Result<T>,
) -> Result<T> {
    let catalog = broker.catalog();
    let (s, t) = catalog.topic(&r.stream, &r.topic)?;
    catalog.authorize(user, Access::ReadTopic(s.id, t.id))?;
    let partitions = t.partitions.len() as u32;
    let mut groups = t.groups();
    change(find_group(&mut groups, &r.group)?, partitions)
}

pub(super) fn join(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    r: &GroupRef,
    member: GroupMember,
) -> Result<()> {
    with_group(broker, user, r, |group, partitions| {
        group.join(member, partitions, context.timestamp);
        Ok(())
    })?;
    broker.handovers.look();
    Ok(())
}

pub(super) fn leave(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    r: &GroupRef,
    member: GroupMember,
) -> Result<()> {
    with_group(broker, user, r, |group, partitions| {
        if group.leave(member, partitions, context.timestamp) {
            Ok(())
        } else {
            Err(BrokerError::ConsumerGroupMemberNotFound(member.client))
        }
    })?;
    broker.handovers.look();
    Ok(())
}

/// Drops the members `gone` names from every group of every topic.
pub(super) fn drop_members(
    broker: &Broker,
    context: OpContext,
    gone: impl Fn(&GroupMember) -> bool,
) {
    let catalog = broker.catalog();
    for topic in catalog.streams.values().flat_map(|s| s.topics.values()) {
        let partitions = topic.partitions.len() as u32;
        for group in topic.groups().values_mut() {
            group.drop_members(&gone, partitions, context.timestamp);
        }
    }
    broker.handovers.look();
}

/// A member hands a partition over (issued by the broker of the member's node, which alone
/// knows what the member polled). Stale ones — the group, the topic or the move gone since —
/// change nothing; the reply is `[1]` when it moved the partition, empty otherwise (so the
/// issuing node counts each handover once).
pub(super) fn hand_over(
    broker: &Broker,
    (stream, topic, group): (u32, u32, u32),
    handover: Handover,
    reply: &mut Vec<u8>,
) {
    let catalog = broker.catalog();
    let Some(t) = catalog.topic_by_ids(stream, topic) else {
        return;
    };
    let partitions = t.partitions.len() as u32;
    let mut groups = t.groups();
    if let Some(group) = groups.get_mut(&group) {
        if group.hand_over(handover, partitions) {
            reply.push(1);
        }
    }
}

/// A group stored an offset in a partition: if that partition is moving, its handover may be
/// due now (`handover`).
pub(super) fn offset_stored(
    broker: &Broker,
    (stream, topic, partition): (u32, u32, u32),
    key: &str,
) {
    let Ok(id) = key.parse::<u32>() else {
        return;
    };
    let catalog = broker.catalog();
    let moving = catalog.topic_by_ids(stream, topic).is_some_and(|t| {
        t.groups()
            .get(&id)
            .is_some_and(|g| g.moving.contains_key(&partition))
    });
    if moving {
        broker.handovers.look();
    }
}
