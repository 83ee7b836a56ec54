//! Consumer group commands: Get, GetAll, Join, Leave. All need `read_topic` on the group's
//! topic (Iggy's rule: reading a topic includes managing its consumer groups). Create, Delete,
//! Join and Leave are operations (`apply/groups.rs`); a join names the connection as a
//! [`GroupMember`](crate::state::groups::GroupMember), and the connection remembers its groups so
//! that closing it leaves them.

use super::submit;
use crate::broker::Broker;
use crate::error::Result;
use crate::net::session::Session;
use crate::ops::Operation;
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

pub async fn join(broker: &Broker, session: &Session, r: &GroupRef) -> Result<()> {
    let member = broker.group_member(session.client_id);
    let op = Operation::JoinGroup {
        group: r.clone(),
        member,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await?;
    if let Some(membership) = membership(broker, r) {
        broker.clients.joined(session.client_id, membership);
    }
    Ok(())
}

pub async fn leave(broker: &Broker, session: &Session, r: &GroupRef) -> Result<()> {
    let member = broker.group_member(session.client_id);
    let op = Operation::LeaveGroup {
        group: r.clone(),
        member,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await?;
    if let Some(membership) = membership(broker, r) {
        broker.clients.left(session.client_id, membership);
    }
    Ok(())
}

/// The numeric ids of group `r`, as the connection's record of its memberships keeps them.
fn membership(broker: &Broker, r: &GroupRef) -> Option<(u32, u32, u32)> {
    let catalog = broker.catalog();
    let (s, t) = catalog.topic(&r.stream, &r.topic).ok()?;
    let id = find_group(&mut t.groups(), &r.group).ok()?.id;
    Some((s.id, t.id, id))
}
