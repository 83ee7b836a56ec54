//! Retention through the real SDK: expiry and max size delete whole sealed segments in the
//! background, DeleteSegments on demand, and every count stays exact afterwards.

mod common;

use common::{message, name, TestBroker};
use iggy::prelude::*;
use std::time::Duration;

fn small_segments() -> TestBroker {
    TestBroker::start_with(&[
        ("IGGY_STORAGE_SEGMENT_SIZE", "4096"),
        ("IGGY_RETENTION_CLEANER_INTERVAL", "100ms"),
    ])
}

async fn topic(client: &IggyClient, expiry: IggyExpiry, max_size: MaxTopicSize) {
    client.create_stream("s").await.unwrap();
    client
        .create_topic(
            &name("s"),
            "t",
            1,
            CompressionAlgorithm::None,
            None,
            expiry,
            max_size,
        )
        .await
        .unwrap();
}

/// Sends `batches` batches of ten 100-byte messages (1,640 bytes a batch on disk).
async fn fill(client: &IggyClient, batches: usize) {
    for b in 0..batches {
        let mut batch: Vec<IggyMessage> = (0..10)
            .map(|i| message(&format!("{b:04}-{i:02}-{}", "x".repeat(92))))
            .collect();
        client
            .send_messages(
                &name("s"),
                &name("t"),
                &Partitioning::partition_id(0),
                &mut batch,
            )
            .await
            .unwrap();
    }
}

/// Everything still stored, read back with polls.
async fn stored_offsets(client: &IggyClient) -> Vec<u64> {
    let polled = client
        .poll_messages(
            &name("s"),
            &name("t"),
            Some(0),
            &Consumer::new(name("audit")),
            &PollingStrategy::first(),
            100_000,
            false,
        )
        .await
        .unwrap();
    polled.messages.iter().map(|m| m.header.offset).collect()
}

async fn topic_details(client: &IggyClient) -> TopicDetails {
    client
        .get_topic(&name("s"), &name("t"))
        .await
        .unwrap()
        .unwrap()
}

/// Waits until `done` holds for the topic (the cleaner runs every 100 ms).
async fn wait_for(client: &IggyClient, done: impl Fn(&TopicDetails) -> bool) -> TopicDetails {
    for _ in 0..100 {
        let details = topic_details(client).await;
        if done(&details) {
            return details;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "retention did not act: {:?}",
        topic_details(client).await.partitions
    );
}

#[tokio::test]
async fn expired_segments_are_deleted_and_counts_stay_exact() {
    let broker = small_segments();
    let client = broker.client().await;
    topic(
        &client,
        IggyExpiry::ExpireDuration(IggyDuration::from(Duration::from_millis(600))),
        MaxTopicSize::ServerDefault,
    )
    .await;
    fill(&client, 10).await;
    let consumer = Consumer::new(name("slow"));
    client
        .store_consumer_offset(&consumer, &name("s"), &name("t"), Some(0), 5)
        .await
        .unwrap();
    let before = topic_details(&client).await;
    assert!(
        before.partitions[0].segments_count >= 4,
        "{:?}",
        before.partitions
    );
    assert_eq!(before.messages_count, 100);

    let after = wait_for(&client, |t| t.partitions[0].segments_count == 1).await;
    let stored = stored_offsets(&client).await;
    assert!(!stored.is_empty() && stored[0] > 0, "old messages are gone");
    assert_eq!(*stored.last().unwrap(), 99, "the newest messages stay");
    assert_eq!(after.messages_count, stored.len() as u64);
    assert_eq!(after.partitions[0].messages_count, stored.len() as u64);
    assert_eq!(after.partitions[0].current_offset, 99);
    assert_eq!(
        client
            .get_stream(&name("s"))
            .await
            .unwrap()
            .unwrap()
            .messages_count,
        stored.len() as u64
    );
    assert_eq!(
        client.get_stats().await.unwrap().messages_count,
        stored.len() as u64
    );

    // A consumer whose stored offset fell behind resumes at the oldest remaining message.
    let next = client
        .poll_messages(
            &name("s"),
            &name("t"),
            Some(0),
            &consumer,
            &PollingStrategy::next(),
            1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(next.messages[0].header.offset, stored[0]);
    // New messages keep their offsets.
    fill(&client, 1).await;
    assert_eq!(
        topic_details(&client).await.partitions[0].current_offset,
        109
    );
}

#[tokio::test]
async fn a_topic_over_its_max_size_loses_its_oldest_segments() {
    let broker = small_segments();
    let client = broker.client().await;
    topic(
        &client,
        IggyExpiry::NeverExpire,
        MaxTopicSize::Custom(IggyByteSize::from(8192)),
    )
    .await;
    fill(&client, 20).await;
    // A pass may run while the batches arrive and the next one after: read the topic and its
    // messages together once a pass left them under the limit and none ran in between.
    let mut settled = None;
    for _ in 0..100 {
        let details = wait_for(&client, |t| t.size.as_bytes_u64() <= 8192 + 4096).await;
        let stored = stored_offsets(&client).await;
        if details.messages_count == stored.len() as u64 {
            settled = Some((details, stored));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (details, stored) = settled.expect("the topic's size and its messages agree");
    assert_eq!(*stored.last().unwrap(), 199);
    assert_eq!(details.messages_count, stored.len() as u64);
    assert_eq!(details.size.as_bytes_u64(), stored.len() as u64 * 164);
    // Sends are never refused for size.
    fill(&client, 3).await;
    assert_eq!(
        topic_details(&client).await.partitions[0].current_offset,
        229
    );
}

#[tokio::test]
async fn delete_segments_removes_the_oldest_and_keeps_the_active_one() {
    let broker = small_segments();
    let client = broker.client().await;
    topic(
        &client,
        IggyExpiry::NeverExpire,
        MaxTopicSize::ServerDefault,
    )
    .await;
    fill(&client, 10).await;
    let before = topic_details(&client).await.partitions[0].segments_count;
    client
        .delete_segments(&name("s"), &name("t"), 0, 2)
        .await
        .unwrap();
    let after = topic_details(&client).await;
    assert_eq!(after.partitions[0].segments_count, before - 2);
    let stored = stored_offsets(&client).await;
    assert_eq!(after.messages_count, stored.len() as u64);
    assert_eq!(*stored.last().unwrap(), 99);
    client
        .delete_segments(&name("s"), &name("t"), 0, 1000)
        .await
        .unwrap();
    let last = topic_details(&client).await;
    assert_eq!(
        last.partitions[0].segments_count, 1,
        "the active segment stays"
    );
    assert_eq!(
        last.messages_count,
        stored_offsets(&client).await.len() as u64
    );
    let invalid = client.delete_segments(&name("s"), &name("t"), 0, 0).await;
    assert_eq!(common::code(invalid.unwrap_err()), 4030);
}

/// On a replicated broker retention is an operation of the log, issued by the primary with its
/// timestamp: every member deletes the same segments, so every member serves the same
/// messages from the same first offset — backups included, which run no pass of their own.
/// Three replicas with small segments where only member 0 — the primary of view 0 — runs its
/// maintenance loop often; the backups would not run theirs within a test, so what they delete
/// comes through the log. Returns the cluster and a client of member 0.
async fn cleaned_by_member_0() -> (common::cluster::TestCluster, IggyClient) {
    let cluster = common::cluster::TestCluster::start_configured(3, |member| {
        let interval = if member == 0 { "100ms" } else { "1h" };
        vec![
            ("IGGY_STORAGE_SEGMENT_SIZE", "4096"),
            ("IGGY_RETENTION_CLEANER_INTERVAL", interval),
        ]
    });
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    assert_eq!(primary, 0, "view 0's primary");
    let client = cluster.brokers[primary].client().await;
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_delete_the_same_segments_through_the_log() {
    let (cluster, client) = cleaned_by_member_0().await;
    let primary = 0;
    topic(
        &client,
        IggyExpiry::ExpireDuration(IggyDuration::from(Duration::from_millis(600))),
        MaxTopicSize::ServerDefault,
    )
    .await;
    fill(&client, 10).await;
    wait_for(&client, |t| t.partitions[0].segments_count == 1).await;
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    let on_primary = stored_offsets(&client).await;
    assert!(on_primary[0] > 0, "old messages are gone");
    assert_eq!(*on_primary.last().unwrap(), 99);
    for member in 0..3 {
        let reader = cluster.brokers[member].client().await;
        assert_eq!(
            stored_offsets(&reader).await,
            on_primary,
            "member {member} holds what the primary holds"
        );
        assert_eq!(
            topic_details(&reader).await.partitions[0].segments_count,
            1,
            "member {member} deleted the same segments"
        );
    }
}

/// Every segment file of the member's partitions, by path below its data directory.
fn segment_files(cluster: &common::cluster::TestCluster, member: usize) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "log")
                && path.to_string_lossy().contains("partitions")
            {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let root = cluster.brokers[member].data_path();
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_peers_retention_is_rebuilt_from_what_they_kept() {
    // Member 2 is away while the primary writes on and deletes the oldest segments,
    // long enough that the peers' WAL no longer reaches back to it: it catches up by state
    // sync, whose peers no longer hold its end.
    let (mut cluster, client) = cleaned_by_member_0().await;
    let primary = 0;
    topic(
        &client,
        IggyExpiry::ExpireDuration(IggyDuration::from(Duration::from_secs(3))),
        MaxTopicSize::ServerDefault,
    )
    .await;
    fill(&client, 10).await;
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    cluster.brokers[2].kill9();

    // Write on until the primary's retention deleted everything member 2 holds and enough
    // ops went by for the WAL to lap (bounded: a few seconds of small batches).
    let mut batches = 0;
    loop {
        fill(&client, 20).await;
        batches += 20;
        let first = stored_offsets(&client).await.first().copied().unwrap_or(0);
        if first > 100 && batches >= 600 {
            break;
        }
        assert!(batches < 20_000, "retention never passed offset 100");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.brokers[2].spawn_and_wait_alive();
    cluster.wait_caught_up(&[2], primary, Duration::from_secs(30));

    // Same messages, same segments (file names are first offsets) on every member; retention
    // keeps going through the log meanwhile, so compare once all have applied the same ops.
    let readers = [
        client,
        cluster.brokers[1].client().await,
        cluster.brokers[2].client().await,
    ];
    let mut disagreement = String::new();
    for _ in 0..100 {
        let mut views = Vec::new();
        for (member, reader) in readers.iter().enumerate() {
            let offsets = stored_offsets(reader).await;
            let summary = (
                offsets.first().copied(),
                offsets.last().copied(),
                offsets.len(),
            );
            views.push((segment_files(&cluster, member), summary));
        }
        if views.iter().all(|v| *v == views[0]) {
            let (first, last, count) = views[0].1;
            assert!(
                first > Some(100),
                "the head member 2 had is gone: {first:?}"
            );
            assert_eq!(last, Some(count as u64 + first.unwrap() - 1), "gap-free");
            return;
        }
        disagreement = format!("{views:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("members disagree on segments or messages: {disagreement}");
}
