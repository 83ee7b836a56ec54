//! The in-memory catalog of streams, topics, partitions and users, and its conversion to and
//! from the durable snapshot. Lookups by numeric id or by name follow Iggy's identifier rules.

use crate::error::{BrokerError, Result};
use crate::state::groups::ConsumerGroup;
use crate::state::partition::Partition;
use crate::state::settings::StateSettings;
use crate::storage::dedup::Deduplication;
use crate::storage::metadata::{
    GroupRecord, PartitionRecord, Snapshot, StreamRecord, TopicRecord, UserRecord, FORMAT_VERSION,
};
use iggy_wire::Identifier;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The root user's id; it cannot be deleted, deactivated or stripped of permissions.
pub const ROOT_USER_ID: u32 = 0;

#[derive(Default)]
pub struct Catalog {
    pub streams: BTreeMap<u32, Stream>,
    pub users: Vec<UserRecord>,
    /// Message deduplication in force for every partition, `None` while off.
    pub deduplication: Option<Deduplication>,
    /// The configured settings applying operations depends on, as last committed
    /// (`state::settings`); `None` until the first commit.
    pub settings: Option<StateSettings>,
}

pub struct Stream {
    pub id: u32,
    pub name: String,
    pub created_at: u64,
    pub topics: BTreeMap<u32, Topic>,
}

pub struct Topic {
    pub id: u32,
    pub name: String,
    pub created_at: u64,
    pub compression: u8,
    pub message_expiry: u64,
    pub max_topic_size: u64,
    pub replication_factor: u8,
    pub partitions: Vec<Arc<Partition>>,
    /// Round-robin cursor for Balanced partitioning.
    pub next_partition: AtomicU32,
    pub traffic: Arc<TopicTraffic>,
    /// Consumer groups behind their own lock: polls update member cursors under a read lock
    /// of the catalog.
    pub groups: Mutex<BTreeMap<u32, ConsumerGroup>>,
}

/// Per-topic traffic counters exported on /metrics.
#[derive(Default)]
pub struct TopicTraffic {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl TopicTraffic {
    pub fn record_in(&self, messages: u64, bytes: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn record_out(&self, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Messages and bytes of a set of partitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub messages: u64,
    pub bytes: u64,
}

impl Totals {
    pub fn of_partitions<'a>(partitions: impl IntoIterator<Item = &'a Arc<Partition>>) -> Self {
        partitions.into_iter().fold(Totals::default(), |acc, p| {
            let log = p.log();
            Totals {
                messages: acc.messages + log.messages_count(),
                bytes: acc.bytes + log.size_bytes(),
            }
        })
    }
}

impl Stream {
    pub fn totals(&self) -> Totals {
        Totals::of_partitions(self.topics.values().flat_map(|t| t.partitions.iter()))
    }

    pub fn topic(&self, id: &Identifier) -> Option<&Topic> {
        match id {
            Identifier::Numeric(n) => self.topics.get(n),
            Identifier::Named(name) => self.topics.values().find(|t| &t.name == name),
        }
    }

    pub fn topic_mut(&mut self, id: &Identifier) -> Option<&mut Topic> {
        match id {
            Identifier::Numeric(n) => self.topics.get_mut(n),
            Identifier::Named(name) => self.topics.values_mut().find(|t| &t.name == name),
        }
    }
}

impl Topic {
    pub fn groups(&self) -> MutexGuard<'_, BTreeMap<u32, ConsumerGroup>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn totals(&self) -> Totals {
        Totals::of_partitions(&self.partitions)
    }

    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(id as usize)
            .ok_or(BrokerError::PartitionNotFound(id))
    }
}

/// The lowest id not in use, as Iggy's slab allocator hands them out.
pub fn lowest_free_id<V>(map: &BTreeMap<u32, V>) -> u32 {
    let mut candidate = 0;
    for id in map.keys() {
        if *id != candidate {
            break;
        }
        candidate += 1;
    }
    candidate
}

/// (stream, topic, partition) ids.
pub type PartitionIds = (u32, u32, u32);

impl Catalog {
    /// Every partition with its ids, streams and topics in id order, partitions in their
    /// topic's order.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionIds, &Arc<Partition>)> {
        self.streams.values().flat_map(|stream| {
            stream.topics.values().flat_map(move |topic| {
                topic
                    .partitions
                    .iter()
                    .map(move |p| ((stream.id, topic.id, p.id), p))
            })
        })
    }

    /// A partition by its numeric ids, if it exists.
    /// A topic by the numeric ids an operation resolved earlier (`None` if deleted since).
    pub fn topic_by_ids(&self, stream: u32, topic: u32) -> Option<&Topic> {
        self.streams.get(&stream).and_then(|s| s.topics.get(&topic))
    }

    pub fn partition_by_ids(
        &self,
        stream: u32,
        topic: u32,
        partition: u32,
    ) -> Option<Arc<Partition>> {
        self.topic_by_ids(stream, topic)
            .and_then(|t| t.partitions.iter().find(|p| p.id == partition))
            .cloned()
    }

    pub fn user(&self, id: &Identifier) -> Option<&UserRecord> {
        match id {
            Identifier::Numeric(n) => self.users.iter().find(|u| u.id == *n),
            Identifier::Named(name) => self.users.iter().find(|u| &u.username == name),
        }
    }

    pub fn user_mut(&mut self, id: &Identifier) -> Option<&mut UserRecord> {
        match id {
            Identifier::Numeric(n) => self.users.iter_mut().find(|u| u.id == *n),
            Identifier::Named(name) => self.users.iter_mut().find(|u| &u.username == name),
        }
    }

    /// The logged-in user of a session, if it still exists and is active; permission changes
    /// and deactivation take effect on the very next request.
    pub fn session_user(&self, user_id: Option<u32>) -> Result<&UserRecord> {
        user_id
            .and_then(|id| self.users.iter().find(|u| u.id == id))
            .filter(|u| u.active)
            .ok_or(BrokerError::Unauthenticated)
    }

    /// The session's user, for changing its own records (tokens).
    pub fn session_user_mut(&mut self, user_id: Option<u32>) -> Result<&mut UserRecord> {
        let id = self.session_user(user_id)?.id;
        self.users
            .iter_mut()
            .find(|u| u.id == id)
            .ok_or(BrokerError::Unauthenticated)
    }

    /// Fails with `Unauthorized` unless the session's user holds `access`.
    pub fn authorize(
        &self,
        user_id: Option<u32>,
        access: crate::security::access::Access,
    ) -> Result<()> {
        let user = self.session_user(user_id)?;
        if crate::security::access::permits(user.permissions.as_ref(), access) {
            Ok(())
        } else {
            Err(BrokerError::Unauthorized)
        }
    }

    pub fn stream(&self, id: &Identifier) -> Result<&Stream> {
        match id {
            Identifier::Numeric(n) => self.streams.get(n),
            Identifier::Named(name) => self.streams.values().find(|s| &s.name == name),
        }
        .ok_or_else(|| BrokerError::StreamNotFound(id.clone()))
    }

    pub fn stream_mut(&mut self, id: &Identifier) -> Result<&mut Stream> {
        match id {
            Identifier::Numeric(n) => self.streams.get_mut(n),
            Identifier::Named(name) => self.streams.values_mut().find(|s| &s.name == name),
        }
        .ok_or_else(|| BrokerError::StreamNotFound(id.clone()))
    }

    pub fn topic(&self, stream: &Identifier, topic: &Identifier) -> Result<(&Stream, &Topic)> {
        let s = self.stream(stream)?;
        let t = s
            .topic(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(stream.clone(), topic.clone()))?;
        Ok((s, t))
    }

    pub fn topic_mut(&mut self, stream: &Identifier, topic: &Identifier) -> Result<&mut Topic> {
        self.stream_mut(stream)?
            .topic_mut(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(stream.clone(), topic.clone()))
    }

    /// The durable form of the catalog.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format_version: FORMAT_VERSION,
            streams: self
                .streams
                .values()
                .map(|s| StreamRecord {
                    id: s.id,
                    name: s.name.clone(),
                    created_at: s.created_at,
                    topics: s.topics.values().map(Topic::record).collect(),
                })
                .collect(),
            users: self.users.clone(),
            deduplication: self.deduplication,
            settings: self.settings,
        }
    }
}

impl Topic {
    pub fn record(&self) -> TopicRecord {
        TopicRecord {
            id: self.id,
            name: self.name.clone(),
            created_at: self.created_at,
            compression: self.compression,
            message_expiry: self.message_expiry,
            max_topic_size: self.max_topic_size,
            replication_factor: self.replication_factor,
            partitions: self
                .partitions
                .iter()
                .map(|p| PartitionRecord {
                    id: p.id,
                    created_at: p.created_at,
                })
                .collect(),
            groups: self
                .groups()
                .values()
                .map(|g| GroupRecord {
                    id: g.id,
                    name: g.name.clone(),
                    members: g.members.keys().copied().collect(),
                    places: g.recorded_places(),
                    moving: g.moving.values().copied().collect(),
                })
                .collect(),
        }
    }

    pub fn from_record(record: &TopicRecord, partitions: Vec<Arc<Partition>>) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            created_at: record.created_at,
            compression: record.compression,
            message_expiry: record.message_expiry,
            max_topic_size: record.max_topic_size,
            replication_factor: record.replication_factor,
            partitions,
            next_partition: AtomicU32::new(0),
            traffic: Arc::default(),
            groups: Mutex::new(
                record
                    .groups
                    .iter()
                    .map(|g| {
                        (
                            g.id,
                            ConsumerGroup::restore(g, record.partitions.len() as u32),
                        )
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_id_reuses_gaps() {
        let mut map = BTreeMap::new();
        assert_eq!(lowest_free_id(&map), 0);
        map.insert(0, ());
        map.insert(1, ());
        map.insert(3, ());
        assert_eq!(lowest_free_id(&map), 2);
    }
}
