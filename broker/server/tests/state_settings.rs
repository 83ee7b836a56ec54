//! The configured settings that shape the replicated state (`state::settings`): segment size,
//! the default message expiry of new topics, tokens per user. Members whose configurations
//! differ — every member while a rolling config edit is under way — apply the settings of the
//! primary that committed them, so their segments stay byte-identical and their topics alike;
//! a single node puts a changed configuration in force at its restart.

mod common;

use common::cluster::TestCluster;
use common::{create_topic, id, message, segment_files, send_to, TestBroker};
use iggy::prelude::*;
use std::time::Duration;

/// Member `i`'s own configuration: each differs from the others in every setting.
const SEGMENT_SIZES: [&str; 3] = ["16384", "32768", "65536"];
const EXPIRIES: [&str; 3] = ["1h", "2h", "3h"];
const TOKEN_LIMITS: [&str; 3] = ["2", "3", "4"];

fn config_of(member: usize) -> Vec<(&'static str, &'static str)> {
    vec![
        ("IGGY_STORAGE_SEGMENT_SIZE", SEGMENT_SIZES[member]),
        ("IGGY_RETENTION_MESSAGE_EXPIRY", EXPIRIES[member]),
        (
            "IGGY_PERSONAL_ACCESS_TOKEN_MAX_TOKENS_PER_USER",
            TOKEN_LIMITS[member],
        ),
    ]
}

fn segment_size_of(member: usize) -> u64 {
    SEGMENT_SIZES[member].parse().expect("a number")
}

fn expiry_of(member: usize) -> IggyExpiry {
    IggyExpiry::ExpireDuration(EXPIRIES[member].parse().expect("a duration"))
}

/// Waits until `broker` reports `size` as the segment size in force.
fn wait_segment_size(broker: &TestBroker, size: u64) {
    common::wait_metric(broker, "iggy_segment_size_bytes", size as f64);
}

/// Sends `batches` batches of ten 1,000-byte messages to stream 0, topic 0, partition 0.
async fn send_batches(client: &IggyClient, batches: usize) {
    let payload = "x".repeat(1000);
    for _ in 0..batches {
        let mut batch: Vec<IggyMessage> = (0..10).map(|_| message(&payload)).collect();
        send_to(client, 0, &mut batch).await.expect("send");
    }
}

/// Stream 0 and its topic 0 ("first", the server's default limits), holding `batches`
/// batches.
async fn first_topic_with(client: &IggyClient, batches: usize) {
    client
        .create_stream("settings")
        .await
        .expect("create stream");
    create_topic(client, &id(0), "first", 1).await;
    send_batches(client, batches).await;
}

async fn topic_expiry(broker: &TestBroker, topic: u32) -> IggyExpiry {
    let client = broker.client().await;
    let topic = client
        .get_topic(&id(0), &id(topic))
        .await
        .expect("get topic")
        .expect("the topic exists");
    topic.message_expiry
}

/// Every member's segments are the same files, none larger than `size` allows (a segment
/// rolls before a batch would take it past `size`).
fn assert_same_segments(cluster: &TestCluster, members: &[usize], size: u64) -> usize {
    let reference = segment_files(&cluster.brokers[members[0]]);
    for &member in members {
        assert_eq!(
            segment_files(&cluster.brokers[member]),
            reference,
            "member {member}'s segments differ from member {}'s",
            members[0]
        );
    }
    assert!(
        reference.iter().all(|(_, len, _)| *len <= size),
        "a segment larger than {size}: {reference:?}"
    );
    reference.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_whose_configurations_differ_apply_the_settings_of_the_primary() {
    let mut cluster = TestCluster::start_configured(3, config_of);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let backup = (primary + 1) % 3;
    for member in 0..3 {
        wait_segment_size(&cluster.brokers[member], segment_size_of(primary));
    }

    // A topic created through a backup gets the primary's default expiry on every member.
    let client = cluster.brokers[backup].client().await;
    first_topic_with(&client, 30).await;
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    for member in 0..3 {
        assert_eq!(
            topic_expiry(&cluster.brokers[member], 0).await,
            expiry_of(primary),
            "member {member}"
        );
    }
    // 300 KB in segments of the primary's size, the same files on every member.
    let before = assert_same_segments(&cluster, &[0, 1, 2], segment_size_of(primary));
    assert!(
        before as u64 >= 300_000 / segment_size_of(primary),
        "{before} segments for 300 KB"
    );

    // Tokens per user: the primary's limit, on every member.
    let limit: usize = TOKEN_LIMITS[primary].parse().expect("a number");
    for n in 0..limit {
        client
            .create_personal_access_token(&format!("token-{n}"), IggyExpiry::NeverExpire)
            .await
            .expect("a token within the limit");
    }
    let over = client
        .create_personal_access_token("token-over", IggyExpiry::NeverExpire)
        .await
        .expect_err("a token over the primary's limit");
    assert_eq!(common::code(over), 52, "too many tokens");
    drop(client);
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    for member in 0..3 {
        let listed = cluster.brokers[member]
            .client()
            .await
            .get_personal_access_tokens()
            .await
            .expect("list tokens");
        assert_eq!(listed.len(), limit, "member {member}");
    }

    // The primary goes (as the last pod of a rolling edit does): the next one's settings are
    // put in force, and segments roll at its size on every member from then on.
    cluster.brokers[primary].kill9();
    let survivors: Vec<usize> = (0..3).filter(|m| *m != primary).collect();
    let next = cluster.primary(&survivors, Duration::from_secs(10));
    for &member in &survivors {
        wait_segment_size(&cluster.brokers[member], segment_size_of(next));
    }
    let other = survivors
        .iter()
        .copied()
        .find(|m| *m != next)
        .expect("a backup");
    let client = cluster.brokers[other].client().await;
    send_batches(&client, 30).await;
    create_topic(&client, &id(0), "second", 1).await;
    drop(client);
    cluster.wait_caught_up(&survivors, next, Duration::from_secs(10));
    let largest = segment_size_of(primary).max(segment_size_of(next));
    let after = assert_same_segments(&cluster, &survivors, largest);
    assert!(after > before, "the second 300 KB rolled new segments");
    for &member in &survivors {
        assert_eq!(
            topic_expiry(&cluster.brokers[member], 1).await,
            expiry_of(next),
            "member {member}"
        );
    }

    // The old primary returns with its own configuration still: it applies the log's.
    cluster.brokers[primary].spawn_and_wait_alive();
    cluster.wait_caught_up(&[0, 1, 2], next, Duration::from_secs(20));
    wait_segment_size(&cluster.brokers[primary], segment_size_of(next));
    assert_same_segments(&cluster, &[0, 1, 2], largest);
    assert_eq!(
        topic_expiry(&cluster.brokers[primary], 1).await,
        expiry_of(next)
    );
    assert_eq!(
        topic_expiry(&cluster.brokers[primary], 0).await,
        expiry_of(primary),
        "a topic keeps the expiry it was created with"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_orders_nothing_before_its_primary_has_put_settings_in_force() {
    // The first requests, sent the moment a primary is known and before any settings commit,
    // through every member at once: each waits for the primary's settings, so no member
    // applies one with its own configuration.
    let cluster = TestCluster::start_configured(3, config_of);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let first = cluster.brokers[(primary + 1) % 3].client().await;
    first
        .create_stream("settings")
        .await
        .expect("create stream");
    let create_through = |member: usize| {
        let broker = &cluster.brokers[member];
        async move {
            let client = broker.client().await;
            create_topic(&client, &id(0), &format!("from-{member}"), 1).await;
        }
    };
    tokio::join!(create_through(0), create_through(1), create_through(2));
    send_batches(&first, 30).await;
    drop(first);
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    for member in 0..3 {
        for topic in 0..3 {
            assert_eq!(
                topic_expiry(&cluster.brokers[member], topic).await,
                expiry_of(primary),
                "topic {topic} on member {member}"
            );
        }
    }
    assert_same_segments(&cluster, &[0, 1, 2], segment_size_of(primary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_puts_a_changed_configuration_in_force_at_its_restart() {
    let mut broker = TestBroker::start_with(&config_of(0));
    wait_segment_size(&broker, segment_size_of(0));
    let client = broker.client().await;
    first_topic_with(&client, 10).await;
    drop(client);
    let small = segment_files(&broker);
    assert!(small.len() >= 100_000 / segment_size_of(0) as usize);

    for (key, value) in config_of(2) {
        broker.set_env(key, value);
    }
    broker.restart();
    wait_segment_size(&broker, segment_size_of(2));
    let client = broker.client().await;
    create_topic(&client, &id(0), "second", 1).await;
    send_batches(&client, 10).await;
    drop(client);
    assert_eq!(topic_expiry(&broker, 0).await, expiry_of(0));
    assert_eq!(topic_expiry(&broker, 1).await, expiry_of(2));
    let grown = segment_files(&broker);
    assert_eq!(grown[..small.len() - 1], small[..small.len() - 1]);
    assert!(
        grown.iter().any(|(_, len, _)| *len > segment_size_of(0)),
        "segments roll at the new size: {grown:?}"
    );
}
