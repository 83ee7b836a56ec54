//! Message deduplication (`[message_deduplication]`) with real Iggy SDK clients: a message sent
//! again with the id it was first sent with is stored once — after a restart of a single
//! node, and through another member of a cluster after its primary was killed.

mod common;

use common::cluster::TestCluster;
use common::{create_topic, id, message_with_id, metric, read_all, send_to, TestBroker};
use iggy::prelude::*;
use std::time::Duration;

const ON: (&str, &str) = ("IGGY_MESSAGE_DEDUPLICATION_ENABLED", "true");

/// Messages `ids` with payloads `m<id>` (`m0` for id 0).
fn batch(ids: impl IntoIterator<Item = u128>) -> Vec<IggyMessage> {
    ids.into_iter()
        .map(|i| message_with_id(i, &format!("m{i}")))
        .collect()
}

async fn send(client: &IggyClient, mut messages: Vec<IggyMessage>) {
    send_to(client, 0, &mut messages).await.expect("send");
}

/// The payloads of partition 0 of stream 0, topic 0, in offset order, with offsets checked
/// gap-free from 0.
async fn stored(client: &IggyClient) -> Vec<String> {
    let all = read_all(client, 0).await;
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.header.offset, i as u64, "offsets gap-free");
    }
    all.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

fn names(ids: impl IntoIterator<Item = u128>) -> Vec<String> {
    ids.into_iter().map(|i| format!("m{i}")).collect()
}

fn deduplicated(broker: &TestBroker) -> f64 {
    let (_, body) = common::http_get(broker.http, "/metrics").expect("metrics");
    metric(&body, "iggy_messages_deduplicated_total").expect("the counter is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_again_is_stored_once_even_after_a_restart() {
    let mut broker = TestBroker::start_with(&[ON]);
    common::wait_deduplication_in_force(&broker, 10_000);
    let client = broker.client().await;
    client.create_stream("dedup").await.expect("create stream");
    create_topic(&client, &id(0), "orders", 1).await;

    send(&client, batch(1..=5)).await;
    // A producer retrying a batch whose acknowledgement it lost, with two new messages.
    send(&client, batch(3..=7)).await;
    // Two messages of one batch with one id; messages with id 0 are never duplicates.
    send(&client, batch([8, 8, 0, 0])).await;
    // A batch of duplicates only: accepted, nothing stored.
    send(&client, batch([1, 2])).await;
    let mut expected = names(1..=8);
    expected.extend(names([0, 0]));
    assert_eq!(stored(&client).await, expected);
    assert_eq!(deduplicated(&broker), 6.0);
    drop(client);

    // The window is read back from the log: a crash and restart forget nothing.
    broker.kill9();
    broker.spawn_and_wait();
    let client = broker.client().await;
    send(&client, batch(1..=9)).await;
    expected.push("m9".into());
    assert_eq!(stored(&client).await, expected);
    assert_eq!(deduplicated(&broker), 8.0);
    drop(client);

    // Turned off, a resent message is stored again.
    broker.set_env("IGGY_MESSAGE_DEDUPLICATION_ENABLED", "false");
    broker.restart();
    common::wait_deduplication_in_force(&broker, 0);
    let client = broker.client().await;
    send(&client, batch([1])).await;
    expected.push("m1".into());
    assert_eq!(stored(&client).await, expected);
}

/// Only the newest `max_entries` messages of a partition, no older than `expiry`, count; and
/// turning deduplication on (or changing its settings) starts every window afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_recent_messages_count_and_new_settings_start_afresh() {
    let mut broker = TestBroker::start_with(&[
        ON,
        ("IGGY_MESSAGE_DEDUPLICATION_MAX_ENTRIES", "3"),
        ("IGGY_MESSAGE_DEDUPLICATION_EXPIRY", "none"),
    ]);
    let client = broker.client().await;
    client.create_stream("dedup").await.expect("create stream");
    create_topic(&client, &id(0), "orders", 1).await;
    send(&client, batch(1..=4)).await;
    // 1 is the fourth message back: out of reach. 3 is within the last three.
    send(&client, batch([1, 3])).await;
    let mut expected = names([1, 2, 3, 4, 1]);
    assert_eq!(stored(&client).await, expected);
    drop(client);

    broker.set_env("IGGY_MESSAGE_DEDUPLICATION_MAX_ENTRIES", "100");
    broker.set_env("IGGY_MESSAGE_DEDUPLICATION_EXPIRY", "1s");
    broker.restart();
    let client = broker.client().await;
    // Stored before the new settings took effect: they do not count.
    send(&client, batch([4])).await;
    expected.push("m4".into());
    send(&client, batch([4, 10])).await;
    expected.push("m10".into());
    assert_eq!(stored(&client).await, expected);
    // A second past its storing, 10 no longer counts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&client, batch([10])).await;
    expected.push("m10".into());
    assert_eq!(stored(&client).await, expected);
}

/// The case deduplication is for, in a cluster: a producer whose member lost its primary sends
/// its batch again through another member. Every replica applies the same deduplication to the
/// same log, so each holds the messages once, and a member that restarts reads the same window
/// back from its own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resent_through_another_member_after_the_primary_died_is_stored_once() {
    let mut cluster = TestCluster::start(3, &[ON]);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let (first, second) = ((primary + 1) % 3, (primary + 2) % 3);
    for member in 0..3 {
        common::wait_deduplication_in_force(&cluster.brokers[member], 10_000);
    }
    let setup = cluster.brokers[primary].client().await;
    setup.create_stream("dedup").await.expect("create stream");
    create_topic(&setup, &id(0), "orders", 1).await;
    drop(setup);

    let client = cluster.brokers[first].client().await;
    send(&client, batch(1..=50)).await;
    drop(client);
    cluster.brokers[primary].kill9();
    let new_primary = cluster.primary(&[first, second], Duration::from_secs(10));
    assert_ne!(new_primary, primary);

    // The producer did not see its acknowledgement: it sends again, and more.
    let client = cluster.brokers[second].client().await;
    send(&client, batch(1..=60)).await;
    drop(client);
    cluster.wait_caught_up(&[first, second], new_primary, Duration::from_secs(10));
    for member in [first, second] {
        let client = cluster.brokers[member].client().await;
        assert_eq!(stored(&client).await, names(1..=60), "member {member}");
        assert_eq!(
            deduplicated(&cluster.brokers[member]),
            50.0,
            "member {member}"
        );
    }

    // The killed member comes back, catches up, and drops what the others drop.
    cluster.brokers[primary].spawn_and_wait_alive();
    cluster.wait_caught_up(&[primary], new_primary, Duration::from_secs(20));
    let client = cluster.brokers[primary].client().await;
    send(&client, batch(55..=65)).await;
    drop(client);
    cluster.wait_caught_up(&[0, 1, 2], new_primary, Duration::from_secs(10));
    for member in 0..3 {
        let client = cluster.brokers[member].client().await;
        assert_eq!(stored(&client).await, names(1..=65), "member {member}");
    }
}

/// A replica that must read its window back (after a restart) and meets a rotted byte there
/// mends it from a peer on the spot instead of stopping, and drops what the others drop. The
/// storage checkpoints every 100 ms cover the data before the kill, so the restart does not
/// re-verify it; 70 sends take the replicas past their first replication checkpoint (op 64),
/// so the restart replays nothing over the rot either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_window_rotted_mends_it_from_a_peer_and_drops_alike() {
    let mut cluster = TestCluster::start(
        3,
        &[
            ON,
            ("IGGY_STORAGE_SCRUB_RATE", "0"),
            ("IGGY_STORAGE_CHECKPOINT_INTERVAL", "100ms"),
        ],
    );
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    for member in 0..3 {
        common::wait_deduplication_in_force(&cluster.brokers[member], 10_000);
    }
    let client = cluster.brokers[primary].client().await;
    client.create_stream("dedup").await.expect("create stream");
    create_topic(&client, &id(0), "orders", 1).await;
    for b in 0..70u128 {
        send(&client, batch(b * 10 + 1..=b * 10 + 10)).await;
    }
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let backup = (primary + 1) % 3;
    cluster.brokers[backup].kill9();
    let file = cluster.brokers[backup]
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let intact = std::fs::read(&file).expect("segment");
    let mut rotten = intact.clone();
    rotten[intact.len() / 2] ^= 0x10;
    std::fs::write(&file, &rotten).expect("rot");
    cluster.brokers[backup].spawn_and_wait_alive();
    cluster.wait_caught_up(&[backup], primary, Duration::from_secs(20));

    // 695..=700 were sent before: every member drops them, the rotted one included.
    send(&client, batch(695..=705)).await;
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(20));
    assert_eq!(
        std::fs::read(&file).expect("segment")[..intact.len()],
        intact[..]
    );
    for member in 0..3 {
        let client = cluster.brokers[member].client().await;
        assert_eq!(stored(&client).await, names(1..=705), "member {member}");
    }
    let (_, body) = common::http_get(cluster.brokers[backup].http, "/metrics").expect("metrics");
    assert!(metric(&body, "iggy_repairs_total").is_some_and(|n| n >= 1.0));
}

/// A single node has no replicas to agree with: a rotted message in the window it reads back
/// is left out of it, and sends go on (with no other copy to repair from, polls of that message
/// keep answering InvalidMessageChecksum, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_reads_its_window_around_a_rotted_message() {
    let mut broker = TestBroker::start_with(&[
        ON,
        ("IGGY_STORAGE_SCRUB_RATE", "0"),
        ("IGGY_STORAGE_CHECKPOINT_INTERVAL", "100ms"),
    ]);
    common::wait_deduplication_in_force(&broker, 10_000);
    let client = broker.client().await;
    client.create_stream("dedup").await.expect("create stream");
    create_topic(&client, &id(0), "orders", 1).await;
    send(&client, batch(1..=100)).await;
    drop(client);
    // Past a storage checkpoint: the restart does not verify these bytes again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill9();
    let file = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let mut rotten = std::fs::read(&file).expect("segment");
    let middle = rotten.len() / 2;
    rotten[middle] ^= 0x10;
    std::fs::write(&file, &rotten).expect("rot");
    broker.spawn_and_wait();

    let client = broker.client().await;
    send(&client, batch(1..=101)).await;
    // Every message but the rotted one (its id is not in the window) is dropped.
    let dropped = deduplicated(&broker);
    assert!((99.0..=100.0).contains(&dropped), "dropped {dropped}");
    let stored = common::messages_count(&client).await;
    assert_eq!(stored as f64, 100.0 + 101.0 - dropped);
}
