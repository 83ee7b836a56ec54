//! Every command of the broker-core milestone, driven through the real Rust SDK `iggy =0.10.0`.

mod common;

use common::{
    code, create_topic, http_get, id, message, name, TestBroker, ROOT_PASSWORD, ROOT_USER,
};
use iggy::prelude::*;
use std::str::FromStr;

async fn topic_with_partitions(client: &IggyClient, partitions: u32) {
    client.create_stream("orders").await.unwrap();
    create_topic(client, &name("orders"), "created", partitions).await;
}

#[tokio::test]
async fn login_logout_and_get_me() {
    let broker = TestBroker::start();
    let client = broker.anonymous_client().await;
    client.ping().await.expect("ping needs no login");
    assert_eq!(
        code(client.get_streams().await.unwrap_err()),
        40,
        "unauthenticated"
    );
    assert_eq!(
        code(client.login_user(ROOT_USER, "wrong").await.unwrap_err()),
        42
    );
    assert_eq!(
        code(
            client
                .login_user("nobody", ROOT_PASSWORD)
                .await
                .unwrap_err()
        ),
        42
    );
    let identity = client.login_user(ROOT_USER, ROOT_PASSWORD).await.unwrap();
    assert_eq!(identity.user_id, 0);
    let me = client.get_me().await.unwrap();
    assert_eq!(me.user_id, Some(0));
    assert!(me.address.starts_with("127.0.0.1:"), "{}", me.address);
    assert_eq!(me.consumer_groups_count, 0);
    assert!(client.get_streams().await.unwrap().is_empty());
    client.logout_user().await.unwrap();
    assert_eq!(code(client.get_streams().await.unwrap_err()), 40);
}

#[tokio::test]
async fn stream_lifecycle_and_errors() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    let created = client.create_stream("alpha").await.unwrap();
    assert_eq!(
        (created.id, created.name.as_str(), created.topics_count),
        (0, "alpha", 0)
    );
    assert_eq!(client.create_stream("beta").await.unwrap().id, 1);
    assert_eq!(code(client.create_stream("alpha").await.unwrap_err()), 1012);

    assert_eq!(
        client.get_stream(&name("beta")).await.unwrap().unwrap().id,
        1
    );
    assert_eq!(
        client.get_stream(&id(0)).await.unwrap().unwrap().name,
        "alpha"
    );
    assert!(
        client.get_stream(&id(99)).await.unwrap().is_none(),
        "missing = empty OK"
    );
    assert!(client.get_stream(&name("nope")).await.unwrap().is_none());
    assert_eq!(client.get_streams().await.unwrap().len(), 2);

    client.update_stream(&id(0), "gamma").await.unwrap();
    assert_eq!(
        client.get_stream(&id(0)).await.unwrap().unwrap().name,
        "gamma"
    );
    assert_eq!(
        code(client.update_stream(&id(0), "beta").await.unwrap_err()),
        1012
    );
    assert_eq!(
        code(client.update_stream(&id(7), "x").await.unwrap_err()),
        1009
    );

    client.purge_stream(&name("gamma")).await.unwrap();
    client.delete_stream(&name("gamma")).await.unwrap();
    assert_eq!(
        code(client.delete_stream(&name("gamma")).await.unwrap_err()),
        1010
    );
    assert_eq!(code(client.delete_stream(&id(0)).await.unwrap_err()), 1009);
    // Freed ids are reused, lowest first, as Iggy's slab does.
    assert_eq!(client.create_stream("delta").await.unwrap().id, 0);
}

#[tokio::test]
async fn topic_and_partition_lifecycle() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    client.create_stream("s").await.unwrap();
    let topic = create_topic(&client, &name("s"), "t", 3).await;
    assert_eq!(
        (topic.id, topic.partitions_count, topic.partitions.len()),
        (0, 3, 3)
    );
    assert_eq!(topic.partitions[2].id, 2);
    assert_eq!(topic.replication_factor, 1);
    assert_eq!(topic.message_expiry, IggyExpiry::NeverExpire);
    assert_eq!(topic.max_topic_size, MaxTopicSize::Unlimited);

    let dup = client
        .create_topic(
            &name("s"),
            "t",
            1,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::ServerDefault,
            MaxTopicSize::ServerDefault,
        )
        .await;
    assert_eq!(code(dup.unwrap_err()), 2013);
    let missing_stream = client
        .create_topic(
            &id(9),
            "t",
            1,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::ServerDefault,
            MaxTopicSize::ServerDefault,
        )
        .await;
    assert_eq!(code(missing_stream.unwrap_err()), 1009);
    let too_many = client
        .create_topic(
            &name("s"),
            "big",
            1001,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::ServerDefault,
            MaxTopicSize::ServerDefault,
        )
        .await;
    assert_eq!(code(too_many.unwrap_err()), 2015);

    assert_eq!(
        client
            .get_topic(&name("s"), &name("t"))
            .await
            .unwrap()
            .unwrap()
            .id,
        0
    );
    assert!(client
        .get_topic(&name("s"), &name("none"))
        .await
        .unwrap()
        .is_none());
    assert!(client.get_topic(&id(5), &id(0)).await.unwrap().is_none());
    assert_eq!(client.get_topics(&name("s")).await.unwrap().len(), 1);
    assert_eq!(code(client.get_topics(&id(5)).await.unwrap_err()), 1009);

    client
        .update_topic(
            &name("s"),
            &id(0),
            "renamed",
            CompressionAlgorithm::Gzip,
            Some(1),
            IggyExpiry::ExpireDuration(IggyDuration::from_str("1h").unwrap()),
            MaxTopicSize::ServerDefault,
        )
        .await
        .unwrap();
    let updated = client
        .get_topic(&name("s"), &name("renamed"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.compression_algorithm, CompressionAlgorithm::Gzip);
    assert_eq!(
        updated.message_expiry,
        IggyExpiry::ExpireDuration(IggyDuration::from_str("1h").unwrap())
    );

    client
        .create_partitions(&name("s"), &id(0), 2)
        .await
        .unwrap();
    assert_eq!(
        client
            .get_topic(&name("s"), &id(0))
            .await
            .unwrap()
            .unwrap()
            .partitions_count,
        5
    );
    client
        .delete_partitions(&name("s"), &id(0), 1)
        .await
        .unwrap();
    assert_eq!(
        client
            .get_topic(&name("s"), &id(0))
            .await
            .unwrap()
            .unwrap()
            .partitions_count,
        4
    );
    assert_eq!(
        code(
            client
                .delete_partitions(&name("s"), &id(0), 9)
                .await
                .unwrap_err()
        ),
        2019
    );
    assert_eq!(
        code(
            client
                .create_partitions(&name("s"), &id(3), 1)
                .await
                .unwrap_err()
        ),
        2010
    );

    client.purge_topic(&name("s"), &id(0)).await.unwrap();
    client
        .delete_topic(&name("s"), &name("renamed"))
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .delete_topic(&name("s"), &name("renamed"))
                .await
                .unwrap_err()
        ),
        2011
    );
    assert_eq!(
        client
            .get_stream(&name("s"))
            .await
            .unwrap()
            .unwrap()
            .topics_count,
        0
    );
}

#[tokio::test]
async fn send_and_poll_with_every_partitioning_and_strategy() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    topic_with_partitions(&client, 3).await;
    let (s, t) = (name("orders"), name("created"));

    let mut batch: Vec<IggyMessage> = (0..10).map(|i| message(&format!("m{i}"))).collect();
    client
        .send_messages(&s, &t, &Partitioning::partition_id(1), &mut batch)
        .await
        .unwrap();
    let consumer = Consumer::new(id(1));
    let polled = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::offset(0),
            100,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (polled.partition_id, polled.current_offset, polled.count),
        (1, 9, 10)
    );
    for (i, m) in polled.messages.iter().enumerate() {
        assert_eq!(m.header.offset, i as u64);
        assert_eq!(m.payload_as_string().unwrap(), format!("m{i}"));
        assert_ne!(
            m.header.id, 0,
            "the server assigns ids to messages sent with 0"
        );
        assert!(m.header.timestamp > 0);
    }

    let offset3 = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::offset(3),
            2,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        offset3
            .messages
            .iter()
            .map(|m| m.header.offset)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    let first = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::first(),
            1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(first.messages[0].header.offset, 0);
    let last = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::last(),
            3,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        last.messages
            .iter()
            .map(|m| m.header.offset)
            .collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    let ts = polled.messages[0].header.timestamp;
    let by_time = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::timestamp(IggyTimestamp::from(ts)),
            100,
            false,
        )
        .await
        .unwrap();
    assert_eq!(by_time.count, 10);
    let future = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::timestamp(IggyTimestamp::from(ts + 60_000_000)),
            100,
            false,
        )
        .await
        .unwrap();
    assert_eq!(future.count, 0);
    let beyond = client
        .poll_messages(
            &s,
            &t,
            Some(1),
            &consumer,
            &PollingStrategy::offset(10),
            5,
            false,
        )
        .await
        .unwrap();
    assert_eq!((beyond.count, beyond.current_offset), (0, 9));

    // Next with auto-commit walks the partition and remembers where it stopped.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let next = client
            .poll_messages(
                &s,
                &t,
                Some(1),
                &consumer,
                &PollingStrategy::next(),
                3,
                true,
            )
            .await
            .unwrap();
        seen.extend(next.messages.iter().map(|m| m.header.offset));
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    let stored = client
        .get_consumer_offset(&consumer, &s, &t, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            stored.partition_id,
            stored.current_offset,
            stored.stored_offset
        ),
        (1, 9, 9)
    );

    // Balanced spreads batches round-robin; a key always lands on the same partition.
    for i in 0..3 {
        let mut one = vec![message(&format!("b{i}"))];
        client
            .send_messages(&s, &t, &Partitioning::balanced(), &mut one)
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let mut one = vec![message("keyed")];
        client
            .send_messages(
                &s,
                &t,
                &Partitioning::messages_key_str("customer-7").unwrap(),
                &mut one,
            )
            .await
            .unwrap();
    }
    let topic = client.get_topic(&s, &t).await.unwrap().unwrap();
    let counts: Vec<u64> = topic.partitions.iter().map(|p| p.messages_count).collect();
    assert_eq!(counts.iter().sum::<u64>(), 10 + 3 + 4);
    assert!(
        counts.iter().any(|c| *c >= 4),
        "all keyed messages share a partition: {counts:?}"
    );
    assert_eq!(topic.messages_count, 17);

    let bad_partition = client
        .send_messages(&s, &t, &Partitioning::partition_id(7), &mut [message("x")])
        .await;
    assert_eq!(code(bad_partition.unwrap_err()), 3007);
    let bad_topic = client
        .send_messages(
            &s,
            &name("nope"),
            &Partitioning::balanced(),
            &mut [message("x")],
        )
        .await;
    assert_eq!(code(bad_topic.unwrap_err()), 2011);
    let bad_poll = client
        .poll_messages(
            &s,
            &t,
            Some(9),
            &consumer,
            &PollingStrategy::first(),
            1,
            false,
        )
        .await;
    assert_eq!(code(bad_poll.unwrap_err()), 3007);
}

#[tokio::test]
async fn client_ids_and_user_headers_survive_the_round_trip() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    topic_with_partitions(&client, 1).await;
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        HeaderKey::from_str("trace").unwrap(),
        HeaderValue::from_str("abc").unwrap(),
    );
    headers.insert(HeaderKey::from_str("n").unwrap(), HeaderValue::from(42u64));
    let mut batch = vec![IggyMessage::builder()
        .id(1234)
        .payload(bytes::Bytes::from_static(b"with headers"))
        .user_headers(headers.clone())
        .build()
        .unwrap()];
    client
        .send_messages(
            &name("orders"),
            &id(0),
            &Partitioning::partition_id(0),
            &mut batch,
        )
        .await
        .unwrap();
    let polled = client
        .poll_messages(
            &name("orders"),
            &id(0),
            Some(0),
            &Consumer::new(name("reader")),
            &PollingStrategy::first(),
            1,
            false,
        )
        .await
        .unwrap();
    let m = &polled.messages[0];
    assert_eq!(m.header.id, 1234);
    assert_eq!(m.user_headers_map().unwrap().unwrap(), headers);
}

#[tokio::test]
async fn consumer_offsets_store_get_delete() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    topic_with_partitions(&client, 2).await;
    let (s, t) = (name("orders"), name("created"));
    let consumer = Consumer::new(name("billing"));
    assert!(client
        .get_consumer_offset(&consumer, &s, &t, Some(0))
        .await
        .unwrap()
        .is_none());
    let empty = client
        .store_consumer_offset(&consumer, &s, &t, Some(0), 0)
        .await;
    assert_eq!(code(empty.unwrap_err()), 4100, "nothing to point at yet");

    let mut batch: Vec<IggyMessage> = (0..5).map(|i| message(&i.to_string())).collect();
    client
        .send_messages(&s, &t, &Partitioning::partition_id(0), &mut batch)
        .await
        .unwrap();
    client
        .store_consumer_offset(&consumer, &s, &t, Some(0), 2)
        .await
        .unwrap();
    let info = client
        .get_consumer_offset(&consumer, &s, &t, Some(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.current_offset, info.stored_offset), (4, 2));
    assert_eq!(
        code(
            client
                .store_consumer_offset(&consumer, &s, &t, Some(0), 5)
                .await
                .unwrap_err()
        ),
        4100
    );
    let next = client
        .poll_messages(
            &s,
            &t,
            Some(0),
            &consumer,
            &PollingStrategy::next(),
            10,
            false,
        )
        .await
        .unwrap();
    assert_eq!(next.messages[0].header.offset, 3);

    client
        .delete_consumer_offset(&consumer, &s, &t, Some(0))
        .await
        .unwrap();
    assert!(client
        .get_consumer_offset(&consumer, &s, &t, Some(0))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        code(
            client
                .delete_consumer_offset(&consumer, &s, &t, Some(0))
                .await
                .unwrap_err()
        ),
        3021
    );
    let group = Consumer::group(id(1));
    assert_eq!(
        code(
            client
                .get_consumer_offset(&group, &s, &t, Some(0))
                .await
                .unwrap_err()
        ),
        5000
    );
}

#[tokio::test]
async fn flush_unsaved_buffer_and_persistence_across_restarts() {
    let mut broker = TestBroker::start();
    let client = broker.client().await;
    topic_with_partitions(&client, 1).await;
    let (s, t) = (name("orders"), name("created"));
    let mut batch: Vec<IggyMessage> = (0..100).map(|i| message(&i.to_string())).collect();
    client
        .send_messages(&s, &t, &Partitioning::partition_id(0), &mut batch)
        .await
        .unwrap();
    client.flush_unsaved_buffer(&s, &t, 0, true).await.unwrap();
    assert_eq!(
        code(
            client
                .flush_unsaved_buffer(&s, &t, 4, false)
                .await
                .unwrap_err()
        ),
        3007
    );
    client
        .store_consumer_offset(&Consumer::new(id(3)), &s, &t, Some(0), 41)
        .await
        .unwrap();
    drop(client);

    assert_eq!(broker.stop(), 0, "SIGTERM stops cleanly");
    broker.spawn_and_wait();
    broker.kill9();
    broker.spawn_and_wait();
    let client = broker.client().await;
    let topic = client.get_topic(&s, &t).await.unwrap().unwrap();
    assert_eq!(topic.messages_count, 100);
    let stored = client
        .get_consumer_offset(&Consumer::new(id(3)), &s, &t, Some(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.stored_offset, 41);
    let mut more = vec![message("after restart")];
    client
        .send_messages(&s, &t, &Partitioning::partition_id(0), &mut more)
        .await
        .unwrap();
    let last = client
        .poll_messages(
            &s,
            &t,
            Some(0),
            &Consumer::new(id(3)),
            &PollingStrategy::last(),
            1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(last.messages[0].header.offset, 100);
    assert_eq!(
        last.messages[0].payload_as_string().unwrap(),
        "after restart"
    );
}

#[tokio::test]
async fn http_health_ready_and_metrics() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    topic_with_partitions(&client, 1).await;
    let mut batch: Vec<IggyMessage> = (0..7).map(|i| message(&i.to_string())).collect();
    client
        .send_messages(
            &name("orders"),
            &name("created"),
            &Partitioning::partition_id(0),
            &mut batch,
        )
        .await
        .unwrap();
    client
        .poll_messages(
            &name("orders"),
            &name("created"),
            Some(0),
            &Consumer::new(id(1)),
            &PollingStrategy::first(),
            3,
            false,
        )
        .await
        .unwrap();
    assert_eq!(http_get(broker.http, "/health").unwrap().0, 200);
    assert_eq!(http_get(broker.http, "/ready").unwrap().0, 200);
    assert_eq!(http_get(broker.http, "/nope").unwrap().0, 404);
    let (status, metrics) = http_get(broker.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    for expected in [
        "iggy_messages_in_total{stream=\"orders\",topic=\"created\"} 7",
        "iggy_messages_out_total{stream=\"orders\",topic=\"created\"} 3",
        "iggy_requests_total{command=\"send_messages\",result=\"ok\"} 1",
        "iggy_request_duration_seconds_count{command=\"poll_messages\"} 1",
        "iggy_connections_open 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected}");
    }
    assert!(metrics.contains("iggy_bytes_in_total{stream=\"orders\",topic=\"created\"} "));
}

/// Reads every entry of a snapshot archive with the `zip` crate (which checks each CRC).
fn unzip(archive: Vec<u8>) -> Vec<(String, String)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).expect("a ZIP archive");
    (0..zip.len())
        .map(|index| {
            let mut entry = zip.by_index(index).unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            (entry.name().to_owned(), text)
        })
        .collect()
}

#[tokio::test]
async fn a_snapshot_is_a_zip_of_this_brokers_diagnostics() {
    // The log keeps what the console shows, and the tests' brokers show only warnings.
    let broker = TestBroker::start_with(&[("IGGY_LOGGING_LEVEL", "info")]);
    let client = broker.client().await;
    topic_with_partitions(&client, 1).await;
    client
        .send_messages(
            &name("orders"),
            &name("created"),
            &Partitioning::partition_id(0),
            &mut [message("kept")],
        )
        .await
        .unwrap();
    let snapshot = client
        .snapshot(SnapshotCompression::Deflated, vec![SystemSnapshotType::All])
        .await
        .unwrap();
    let entries = unzip(snapshot.0);
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "filesystem_overview.txt",
            "process_list.txt",
            "resource_usage.txt",
            "server_logs.txt",
            "server_config.txt"
        ]
    );
    let entry = |name: &str| &entries.iter().find(|(n, _)| n == name).unwrap().1;

    // The partition's log file, by its path below the data directory.
    let log = std::fs::read_dir(broker.partition_dir(0, 0, 0))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let relative = log.strip_prefix(broker.data_path()).unwrap();
    let overview = entry("filesystem_overview.txt");
    assert!(
        overview
            .lines()
            .any(|l| l.starts_with("file") && l.ends_with(&*relative.to_string_lossy())),
        "{relative:?} not in:\n{overview}"
    );
    let pid = broker.pid().to_string();
    let processes = entry("process_list.txt");
    assert!(
        processes
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&pid) && l.contains("iggy-broker")),
        "{processes}"
    );
    let usage = entry("resource_usage.txt");
    assert!(
        usage.starts_with(&format!("Broker process {pid} ")),
        "{usage}"
    );
    assert!(usage.contains("VmRSS:") && usage.contains("Threads (/proc/self/task)"));
    assert!(usage.contains("\"role\": \"primary\""), "{usage}");
    let logs = entry("server_logs.txt");
    assert!(logs.contains("iggy-broker ready"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in the log");

    let config: toml::Table = entry("server_config.txt").parse().unwrap();
    assert_eq!(
        config["tcp"]["address"].as_str(),
        Some(broker.tcp.to_string().as_str())
    );
    assert_eq!(config["root"]["password"].as_str(), Some("<redacted>"));
    assert!(entries
        .iter()
        .all(|(_, text)| !text.contains(ROOT_PASSWORD)));

    // Stored, one kind: the test entry alone.
    let stored = client
        .snapshot(SnapshotCompression::Stored, vec![SystemSnapshotType::Test])
        .await
        .unwrap();
    assert_eq!(
        unzip(stored.0),
        [("test.txt".to_owned(), "test\n".to_owned())]
    );

    // What is not made here, and what is not a valid request.
    let refused = |compression, kinds| {
        let client = &client;
        async move { code(client.snapshot(compression, kinds).await.unwrap_err()) }
    };
    assert_eq!(
        refused(SnapshotCompression::Zstd, vec![SystemSnapshotType::Test]).await,
        5,
        "FeatureUnavailable"
    );
    assert_eq!(
        refused(
            SnapshotCompression::Deflated,
            vec![SystemSnapshotType::All, SystemSnapshotType::Test]
        )
        .await,
        3,
        "InvalidCommand"
    );
    // The connection still serves after the refusals.
    client.ping().await.unwrap();

    // Asked for from several connections at once, they are made one after another, each whole.
    let (a, b, c) = (
        broker.client().await,
        broker.client().await,
        broker.client().await,
    );
    let kinds = || {
        vec![
            SystemSnapshotType::FilesystemOverview,
            SystemSnapshotType::Test,
        ]
    };
    let (a, b, c) = tokio::join!(
        a.snapshot(SnapshotCompression::Deflated, kinds()),
        b.snapshot(SnapshotCompression::Deflated, kinds()),
        c.snapshot(SnapshotCompression::Deflated, kinds()),
    );
    for archive in [a, b, c] {
        assert_eq!(unzip(archive.unwrap().0).len(), 2);
    }
}
