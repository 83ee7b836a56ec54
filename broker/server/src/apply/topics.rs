//! Topics and partitions: create, update, delete, purge, add and remove partitions, delete
//! segments.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::OpContext;
use crate::reply;
use crate::security::access::Access;
use crate::state::catalog::{lowest_free_id, Topic};
use crate::state::partition::Partition;
use crate::state::settings::StateSettings;
use crate::storage::metadata;
use crate::storage::partition_log::remove_segment_files;
use iggy_wire::request::TopicSettings;
use iggy_wire::{ConsumerKind, Identifier};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

/// Most partitions one CreateTopic or CreatePartitions may add (Iggy's limit).
const MAX_PARTITIONS_PER_REQUEST: u32 = 1000;
const COMPRESSION_NONE: u8 = 1;
const COMPRESSION_GZIP: u8 = 2;

/// Resolves "server default" sentinels and checks the settings (Iggy's rules: 0 means the
/// server default, which here is "never expire" and "unlimited"; a custom size must hold at
/// least one segment).
fn checked_settings(in_force: &StateSettings, settings: &TopicSettings) -> Result<TopicSettings> {
    if settings.name.is_empty() || settings.name.len() > 255 {
        return Err(BrokerError::InvalidTopicName);
    }
    if ![COMPRESSION_NONE, COMPRESSION_GZIP].contains(&settings.compression) {
        return Err(BrokerError::InvalidCompression(settings.compression));
    }
    let segment = in_force.segment_size;
    let default_size = in_force.max_topic_size;
    let default_expiry = in_force.message_expiry;
    let max_topic_size = match settings.max_topic_size {
        0 => default_size,
        size if size < segment => return Err(BrokerError::InvalidTopicSize { size, segment }),
        size => size,
    };
    Ok(TopicSettings {
        compression: settings.compression,
        message_expiry: if settings.message_expiry == 0 {
            default_expiry
        } else {
            settings.message_expiry
        },
        max_topic_size,
        replication_factor: settings.replication_factor.max(1),
        name: settings.name.clone(),
    })
}

pub(super) fn create(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    stream_id: &Identifier,
    partitions_count: u32,
    settings: TopicSettings,
    body: &mut Vec<u8>,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let stream_num = catalog.stream(stream_id)?.id;
    catalog.authorize(user, Access::ManageTopic(stream_num, None))?;
    if partitions_count > MAX_PARTITIONS_PER_REQUEST {
        return Err(BrokerError::TooManyPartitions);
    }
    let in_force = broker.state_settings(&catalog);
    let settings = checked_settings(&in_force, &settings)?;
    let stream = catalog.stream_mut(stream_id)?;
    if stream.topics.values().any(|t| t.name == settings.name) {
        return Err(BrokerError::TopicNameExists(settings.name));
    }
    let (stream_num, id) = (stream.id, lowest_free_id(&stream.topics));
    metadata::remove_tree(&metadata::topic_dir(
        &broker.config.system.path,
        stream_num,
        id,
    ))?;
    let partitions = broker.create_partitions(
        stream_num,
        id,
        0..partitions_count,
        context.timestamp,
        in_force.segment_size,
    )?;
    let topic = Topic {
        id,
        name: settings.name,
        created_at: context.timestamp,
        compression: settings.compression,
        message_expiry: settings.message_expiry,
        max_topic_size: settings.max_topic_size,
        replication_factor: settings.replication_factor,
        partitions,
        next_partition: AtomicU32::new(0),
        traffic: Arc::default(),
        groups: Default::default(),
    };
    stream.topics.insert(id, topic);
    if let Err(e) = broker.persist(&catalog) {
        if let Ok(stream) = catalog.stream_mut(stream_id) {
            stream.topics.remove(&id);
        }
        return Err(e);
    }
    let topic = &catalog.stream(stream_id)?.topics[&id];
    reply::topic_details(topic, body);
    Ok(())
}

pub(super) fn update(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    settings: TopicSettings,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let (s, current) = catalog.topic(stream, topic)?;
    let (stream_num, target) = (s.id, current.id);
    catalog.authorize(user, Access::ManageTopic(stream_num, Some(target)))?;
    let settings = checked_settings(&broker.state_settings(&catalog), &settings)?;
    if catalog
        .stream(stream)?
        .topics
        .values()
        .any(|t| t.name == settings.name && t.id != target)
    {
        return Err(BrokerError::TopicNameExists(settings.name));
    }
    let entry = catalog.topic_mut(stream, topic)?;
    let before = entry.record();
    entry.name = settings.name;
    entry.compression = settings.compression;
    entry.message_expiry = settings.message_expiry;
    entry.max_topic_size = settings.max_topic_size;
    entry.replication_factor = settings.replication_factor;
    if let Err(e) = broker.persist(&catalog) {
        if let Ok(entry) = catalog.topic_mut(stream, &Identifier::Numeric(target)) {
            entry.name = before.name;
            entry.compression = before.compression;
            entry.message_expiry = before.message_expiry;
            entry.max_topic_size = before.max_topic_size;
            entry.replication_factor = before.replication_factor;
        }
        return Err(e);
    }
    Ok(())
}

pub(super) fn delete(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(stream, topic)?;
    let (stream_num, topic_num) = (s.id, t.id);
    catalog.authorize(user, Access::ManageTopic(stream_num, Some(topic_num)))?;
    let removed = catalog.stream_mut(stream)?.topics.remove(&topic_num);
    if let Err(e) = broker.persist(&catalog) {
        if let (Some(t), Ok(s)) = (removed, catalog.stream_mut(stream)) {
            s.topics.insert(topic_num, t);
        }
        return Err(e);
    }
    drop(catalog);
    broker
        .clients
        .forget_groups(|(s, t, _)| (*s, *t) == (stream_num, topic_num));
    let dir = metadata::topic_dir(&broker.config.system.path, stream_num, topic_num);
    broker.drop_tiered_tree(&dir);
    if let Err(e) = metadata::remove_tree(&dir) {
        tracing::warn!(error = %e, "deleted topic's directory could not be removed");
    }
    Ok(())
}

pub(super) fn purge(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
) -> Result<()> {
    let partitions = {
        let catalog = broker.catalog();
        let (s, t) = catalog.topic(stream, topic)?;
        catalog.authorize(user, Access::ManageTopic(s.id, Some(t.id)))?;
        t.partitions.clone()
    };
    purge_partitions(broker, &partitions)
}

/// Empties partitions: messages and stored consumer offsets go, offsets restart at 0.
pub(super) fn purge_partitions(broker: &Broker, partitions: &[Arc<Partition>]) -> Result<()> {
    for partition in partitions {
        let (dir, tiered) = {
            let mut log = partition.log();
            (log.dir().to_owned(), log.purge()?)
        };
        broker.drop_tiered(&dir, tiered);
        partition.offsets(ConsumerKind::Consumer).clear()?;
        partition.offsets(ConsumerKind::Group).clear()?;
    }
    Ok(())
}

pub(super) fn create_partitions(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    count: u32,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(stream, topic)?;
    let (stream_num, topic_num, existing) = (s.id, t.id, t.partitions.len() as u32);
    catalog.authorize(user, Access::ManageTopic(stream_num, Some(topic_num)))?;
    if count == 0 {
        return Err(BrokerError::InvalidPartitionsCount(count));
    }
    if count > MAX_PARTITIONS_PER_REQUEST {
        return Err(BrokerError::TooManyPartitions);
    }
    let added = broker.create_partitions(
        stream_num,
        topic_num,
        existing..existing + count,
        context.timestamp,
        broker.state_settings(&catalog).segment_size,
    )?;
    catalog.topic_mut(stream, topic)?.partitions.extend(added);
    if let Err(e) = broker.persist(&catalog) {
        if let Ok(t) = catalog.topic_mut(stream, topic) {
            t.partitions.truncate(existing as usize);
        }
        return Err(e);
    }
    rebalance_groups(catalog.topic(stream, topic)?.1, context);
    Ok(())
}

/// Removes the last `count` partitions, as Iggy does.
pub(super) fn delete_partitions(
    broker: &Broker,
    context: OpContext,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    count: u32,
) -> Result<()> {
    let mut catalog = broker.catalog_mut();
    let (s, t) = catalog.topic(stream, topic)?;
    let (stream_num, topic_num, existing) = (s.id, t.id, t.partitions.len() as u32);
    catalog.authorize(user, Access::ManageTopic(stream_num, Some(topic_num)))?;
    if count == 0 || count > existing {
        return Err(BrokerError::InvalidPartitionsCount(count));
    }
    let keep = (existing - count) as usize;
    let removed: Vec<_> = catalog.topic_mut(stream, topic)?.partitions.split_off(keep);
    if let Err(e) = broker.persist(&catalog) {
        if let Ok(t) = catalog.topic_mut(stream, topic) {
            t.partitions.extend(removed);
        }
        return Err(e);
    }
    rebalance_groups(catalog.topic(stream, topic)?.1, context);
    drop(catalog);
    for partition in removed {
        let dir = metadata::partition_dir(
            &broker.config.system.path,
            stream_num,
            topic_num,
            partition.id,
        );
        broker.drop_tiered_tree(&dir);
        if let Err(e) = metadata::remove_tree(&dir) {
            tracing::warn!(error = %e, "deleted partition's directory could not be removed");
        }
    }
    Ok(())
}

/// Reassigns every group's partitions after the partition count changed.
fn rebalance_groups(topic: &Topic, context: OpContext) {
    let count = topic.partitions.len() as u32;
    for group in topic.groups().values_mut() {
        group.rebalance(count, context.timestamp);
    }
}

/// Deletes the oldest `count` sealed segments of a partition (the active one always stays).
pub(super) fn delete_segments(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    partition: u32,
    count: u32,
) -> Result<()> {
    if count == 0 {
        return Err(BrokerError::InvalidSegmentsCount);
    }
    let partition = {
        let catalog = broker.catalog();
        let (s, t) = catalog.topic(stream, topic)?;
        catalog.authorize(user, Access::ManageTopic(s.id, Some(t.id)))?;
        t.partition(partition)?.clone()
    };
    let (dir, removed) = {
        let mut log = partition.log();
        (
            log.dir().to_owned(),
            log.take_oldest_segments(count as usize)?,
        )
    };
    broker.drop_tiered(&dir, removed.tiered);
    remove_segment_files(&dir, &removed.local)?;
    Ok(())
}
