//! Streams: create, rename, delete, purge.

use super::topics::purge_partitions;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::OpContext;
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::{lowest_free_id, Stream};
use crate::storage::metadata;
use iggy_wire::Identifier;
use std::collections::BTreeMap;

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(BrokerError::InvalidStreamName);
    }
    Ok(())
}

pub(super) fn create(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    name: String,
    body: &mut Vec<u8>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    catalog.authorize(user, Access::ManageStreams)?;
    validate_name(&name)?;
    if catalog.streams.values().any(|s| s.name == name) {
        return Err(BrokerError::StreamNameExists(name));
    }
    let id = lowest_free_id(&catalog.streams);
    metadata::remove_tree(&metadata::stream_dir(&broker.config.system.path, id))?;
    let stream = Stream {
        id,
        name,
        created_at: context.timestamp,
        topics: BTreeMap::new(),
    };
    catalog.streams.insert(id, stream);
    if let Err(e) = broker.persist(&catalog) {
        catalog.streams.remove(&id);
        return Err(e);
    }
    reply::stream_details(&catalog.streams[&id], body);
    Ok(())
}

pub(super) fn update(
    broker: &Broker,
    user: Option<u32>,
    id: &Identifier,
    name: String,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let target = catalog.stream(id)?.id;
    catalog.authorize(user, Access::ManageStream(target))?;
    validate_name(&name)?;
    if catalog
        .streams
        .values()
        .any(|s| s.name == name && s.id != target)
    {
        return Err(BrokerError::StreamNameExists(name));
    }
    let stream = catalog.stream_mut(id)?;
    let old = std::mem::replace(&mut stream.name, name);
    if let Err(e) = broker.persist(&catalog) {
        if let Ok(stream) = catalog.stream_mut(&Identifier::Numeric(target)) {
            stream.name = old;
        }
        return Err(e);
    }
    Ok(())
}

pub(super) fn delete(broker: &Broker, user: Option<u32>, id: &Identifier) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let target = catalog.stream(id)?.id;
    catalog.authorize(user, Access::ManageStream(target))?;
    let removed = catalog.streams.remove(&target);
    if let Err(e) = broker.persist(&catalog) {
        if let Some(stream) = removed {
            catalog.streams.insert(target, stream);
        }
        return Err(e);
    }
    drop(catalog);
    broker.clients.forget_groups(|(s, _, _)| *s == target);
    // The metadata no longer names the directory; a failure here leaves an orphan that the next
    // create at this id removes.
    let dir = metadata::stream_dir(&broker.config.system.path, target);
    broker.drop_tiered_tree(&dir);
    if let Err(e) = metadata::remove_tree(&dir) {
        tracing::warn!(error = %e, "deleted stream's directory could not be removed");
    }
    Ok(())
}

pub(super) fn purge(broker: &Broker, user: Option<u32>, id: &Identifier) -> Result<()> {
    let partitions: Vec<_> = {
        let catalog = broker.catalog();
        let stream = catalog.stream(id)?;
        catalog.authorize(user, Access::ManageStream(stream.id))?;
        stream
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    };
    purge_partitions(broker, &partitions)
}
