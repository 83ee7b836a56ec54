//! Consumer group commands: Get, GetAll, Create, Delete, Join, Leave. All need `read_topic` on
//! the group's topic (Iggy's rule: reading a topic includes managing its consumer groups).

use super::messages::find_group;
use crate::access::Access;
use crate::broker::Broker;
use crate::catalog::{lowest_free_id, Topic};
use crate::error::{BrokerError, Result};
use crate::groups::ConsumerGroup;
use crate::session::Session;
use iggy_wire::request::GroupRef;
use iggy_wire::{response, ConsumerKind, Identifier};

fn encode_group(group: &ConsumerGroup, partitions: u32, body: &mut Vec<u8>) {
    response::encode_consumer_group(
        group.id,
        partitions,
        group.members.len() as u32,
        &group.name,
        body,
    );
}

fn encode_details(group: &ConsumerGroup, partitions: u32, body: &mut Vec<u8>) {
    encode_group(group, partitions, body);
    for (client, member) in &group.members {
        response::encode_group_member(*client, &member.partitions, body);
    }
}

/// Runs `f` on a topic the caller may read, under the catalog's read lock.
fn with_topic<T>(
    broker: &Broker,
    session: &Session,
    stream: &Identifier,
    topic: &Identifier,
    f: impl FnOnce(u32, &Topic) -> Result<T>,
) -> Result<T> {
    let catalog = broker.catalog();
    let (s, t) = catalog.topic(stream, topic)?;
    catalog.authorize(session.user_id, Access::ReadTopic(s.id, t.id))?;
    f(s.id, t)
}

/// A missing group is an empty OK reply.
pub fn get(broker: &Broker, session: &Session, r: &GroupRef, body: &mut Vec<u8>) -> Result<()> {
    with_topic(broker, session, &r.stream, &r.topic, |_, topic| {
        let partitions = topic.partitions.len() as u32;
        if let Ok(group) = find_group(&mut topic.groups(), &r.group) {
            encode_details(group, partitions, body);
        }
        Ok(())
    })
}

pub fn get_all(
    broker: &Broker,
    session: &Session,
    stream: &Identifier,
    topic: &Identifier,
    body: &mut Vec<u8>,
) -> Result<()> {
    with_topic(broker, session, stream, topic, |_, topic| {
        let partitions = topic.partitions.len() as u32;
        for group in topic.groups().values() {
            encode_group(group, partitions, body);
        }
        Ok(())
    })
}

pub fn create(
    broker: &Broker,
    session: &Session,
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
    catalog.authorize(session.user_id, Access::ReadTopic(s.id, t.id))?;
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
        encode_details(group, t.partitions.len() as u32, body);
    }
    Ok(())
}

/// Deleting a group also deletes its stored offsets and ends its memberships.
pub fn delete(broker: &Broker, session: &Session, r: &GroupRef) -> Result<()> {
    let catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(&r.stream, &r.topic)?;
    catalog.authorize(session.user_id, Access::ReadTopic(s.id, t.id))?;
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

pub fn join(broker: &Broker, session: &Session, r: &GroupRef) -> Result<()> {
    let membership = with_topic(broker, session, &r.stream, &r.topic, |stream_id, topic| {
        let partitions = topic.partitions.len() as u32;
        let mut groups = topic.groups();
        let group = find_group(&mut groups, &r.group)?;
        group.join(session.client_id, partitions);
        Ok((stream_id, topic.id, group.id))
    })?;
    broker.clients.joined(session.client_id, membership);
    Ok(())
}

pub fn leave(broker: &Broker, session: &Session, r: &GroupRef) -> Result<()> {
    let membership = with_topic(broker, session, &r.stream, &r.topic, |stream_id, topic| {
        let partitions = topic.partitions.len() as u32;
        let mut groups = topic.groups();
        let group = find_group(&mut groups, &r.group)?;
        if !group.leave(session.client_id, partitions) {
            return Err(BrokerError::ConsumerGroupMemberNotFound(session.client_id));
        }
        Ok((stream_id, topic.id, group.id))
    })?;
    broker.clients.left(session.client_id, membership);
    Ok(())
}
