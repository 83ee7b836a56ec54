//! The retention cleaner: deletes whole sealed segments whose newest message is older than the
//! topic's message expiry, then, for topics over their max size, the oldest sealed segments
//! across the topic's partitions until it fits. The active segment of a partition is never
//! deleted, so a topic may stay above its max size by up to one segment per partition.
//!
//! At its max size a topic keeps accepting messages — old data makes room, as Iggy's cleaner
//! does — rather than refusing sends.
//!
//! Segments are detached under the partition lock (a few vector operations) and unlinked
//! after it is released, so a cleanup pass does not hold up appends.

use crate::broker::Broker;
use crate::state::partition::Partition;
use crate::storage::fsutil::now_micros;
use crate::storage::partition_log::remove_segment_files;
use std::sync::Arc;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    pub segments: usize,
    pub messages: u64,
    pub bytes: u64,
}

impl CleanupReport {
    fn add(&mut self, other: CleanupReport) {
        self.segments += other.segments;
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

struct TopicView {
    expiry: u64,
    max_size: u64,
    partitions: Vec<Arc<Partition>>,
}

/// One cleaning pass over every topic at the local clock: a single node's maintenance loop.
/// Expired personal access tokens are dropped by the loop right after, as an operation
/// (`Broker::expire_tokens`).
pub fn run_pass(broker: &Broker) -> CleanupReport {
    run_pass_at(broker, now_micros())
}

/// One cleaning pass as of `now` (µs since the epoch). On a replicated broker this runs as the
/// `EnforceRetention` operation with the primary's timestamp, so every replica deletes the same
/// segments at the same place in the log: segment boundaries, their timestamps and sizes are
/// byte-identical on all replicas, and so is `now`.
pub fn run_pass_at(broker: &Broker, now: u64) -> CleanupReport {
    let topics: Vec<TopicView> = broker
        .catalog()
        .streams
        .values()
        .flat_map(|s| s.topics.values())
        .map(|t| TopicView {
            expiry: t.message_expiry,
            max_size: t.max_topic_size,
            partitions: t.partitions.clone(),
        })
        .collect();
    let mut report = CleanupReport::default();
    for topic in &topics {
        if topic.expiry != u64::MAX {
            for partition in &topic.partitions {
                let expired = partition
                    .log()
                    .sealed_segments()
                    .iter()
                    .take_while(|(last_timestamp, _)| {
                        last_timestamp.saturating_add(topic.expiry) <= now
                    })
                    .count();
                report.add(delete_oldest(broker, partition, expired));
            }
        }
        if topic.max_size != u64::MAX {
            report.add(trim_to_size(broker, topic));
        }
    }
    if report.segments > 0 {
        tracing::info!(
            segments = report.segments,
            messages = report.messages,
            bytes = report.bytes,
            "retention deleted segments"
        );
    }
    report
}

/// Deletes the oldest sealed segment of whichever partition holds the oldest data, until the
/// topic fits or only active segments remain.
fn trim_to_size(broker: &Broker, topic: &TopicView) -> CleanupReport {
    let mut report = CleanupReport::default();
    loop {
        let size: u64 = topic.partitions.iter().map(|p| p.log().size_bytes()).sum();
        if size <= topic.max_size {
            return report;
        }
        let oldest = topic
            .partitions
            .iter()
            .filter_map(|p| {
                p.log()
                    .sealed_segments()
                    .first()
                    .map(|(ts, _)| (*ts, p.clone()))
            })
            .min_by_key(|(ts, _)| *ts);
        let Some((_, partition)) = oldest else {
            return report;
        };
        report.add(delete_oldest(broker, &partition, 1));
    }
}

/// Segments only the object store holds go first (their objects are deleted by the tiering
/// loop once the store's manifest no longer names them), then local ones.
fn delete_oldest(broker: &Broker, partition: &Partition, count: usize) -> CleanupReport {
    if count == 0 {
        return CleanupReport::default();
    }
    let (dir, removed) = {
        let mut log = partition.log();
        let dir = log.dir().to_owned();
        match log.take_oldest_segments(count) {
            Ok(removed) => (dir, removed),
            Err(e) => {
                tracing::error!(error = %e, "retention could not update the tier manifest");
                return CleanupReport::default();
            }
        }
    };
    let report = CleanupReport {
        segments: removed.segments,
        messages: removed.messages,
        bytes: removed.bytes,
    };
    broker.drop_tiered(&dir, removed.tiered);
    if let Err(e) = remove_segment_files(&dir, &removed.local) {
        // The segments are already gone from the log; the files are orphans, harmless but
        // worth a look.
        tracing::error!(error = %e, "could not remove deleted segment files");
    }
    report
}
