//! Consumer groups: create and delete. Both need `read_topic` on the group's topic (Iggy's
//! rule: reading a topic includes managing its consumer groups). Joining and leaving are
//! connection state, handled in `commands/groups.rs`.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::lowest_free_id;
use crate::state::groups::find_group;
use crate::state::groups::ConsumerGroup;
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
