//! Encoders of broker state into Iggy response payloads, shared by the read commands and by
//! `apply` (a create's reply is the created object's details).

use crate::state::catalog::{Stream, Topic};
use crate::state::groups::ConsumerGroup;
use crate::storage::metadata::UserRecord;
use iggy_wire::response::{self, PartitionInfo, StreamInfo, TopicInfo};

pub const STATUS_ACTIVE: u8 = 1;
pub const STATUS_INACTIVE: u8 = 2;

pub fn stream(stream: &Stream, body: &mut Vec<u8>) {
    let totals = stream.totals();
    StreamInfo {
        id: stream.id,
        created_at: stream.created_at,
        topics_count: stream.topics.len() as u32,
        size_bytes: totals.bytes,
        messages_count: totals.messages,
        name: &stream.name,
    }
    .encode(body);
}

/// Stream header then every topic's header.
pub fn stream_details(s: &Stream, body: &mut Vec<u8>) {
    stream(s, body);
    for topic in s.topics.values() {
        topic_header(topic, body);
    }
}

pub fn topic_header(topic: &Topic, body: &mut Vec<u8>) {
    let totals = topic.totals();
    TopicInfo {
        id: topic.id,
        created_at: topic.created_at,
        partitions_count: topic.partitions.len() as u32,
        message_expiry: topic.message_expiry,
        compression: topic.compression,
        max_topic_size: topic.max_topic_size,
        replication_factor: topic.replication_factor,
        size_bytes: totals.bytes,
        messages_count: totals.messages,
        name: &topic.name,
    }
    .encode(body);
}

/// Topic header then every partition.
pub fn topic_details(topic: &Topic, body: &mut Vec<u8>) {
    topic_header(topic, body);
    for partition in &topic.partitions {
        let log = partition.log();
        PartitionInfo {
            id: partition.id,
            created_at: partition.created_at,
            segments_count: log.segments_count(),
            current_offset: log.current_offset(),
            size_bytes: log.size_bytes(),
            messages_count: log.messages_count(),
        }
        .encode(body);
    }
}

pub fn user_status(user: &UserRecord) -> u8 {
    if user.active {
        STATUS_ACTIVE
    } else {
        STATUS_INACTIVE
    }
}

pub fn user_details(user: &UserRecord, body: &mut Vec<u8>) {
    response::encode_user_details(
        user.id,
        user.created_at,
        user_status(user),
        &user.username,
        user.permissions.as_ref(),
        body,
    );
}

pub fn group(group: &ConsumerGroup, partitions: u32, body: &mut Vec<u8>) {
    response::encode_consumer_group(
        group.id,
        partitions,
        group.members.len() as u32,
        &group.name,
        body,
    );
}

/// Group header then every member with its partitions.
pub fn group_details(g: &ConsumerGroup, partitions: u32, body: &mut Vec<u8>) {
    group(g, partitions, body);
    for (client, member) in &g.members {
        response::encode_group_member(client.display_id(), &member.partitions, body);
    }
}
