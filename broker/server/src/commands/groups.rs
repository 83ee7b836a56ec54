//! Consumer group commands: Get, GetAll, Join, Leave. All need `read_topic` on the group's
//! topic (Iggy's rule: reading a topic includes managing its consumer groups). Create and
//! Delete are operations (`apply/groups.rs`); membership belongs to the connection and stays
//! here.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::net::session::Session;
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::Topic;
use crate::state::groups::find_group;
use iggy_wire::request::GroupRef;
use iggy_wire::Identifier;

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
            reply::group_details(group, partitions, body);
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
            reply::group(group, partitions, body);
        }
        Ok(())
    })
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
