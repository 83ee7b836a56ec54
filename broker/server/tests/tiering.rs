//! Tiered storage against a real S3-compatible server (s3s-fs, SigV4 checked) and real Iggy SDK
//! clients: sealed segments are uploaded, local copies evicted, and consumers read everything
//! back byte for byte; outages, bad credentials, damaged objects and crashes lose nothing.

mod common;

use common::{http_get, id, message, metric, TestBroker};
use iggy::prelude::*;
use iggy_tiering::testing::{S3Server, SECRET_KEY};
use iggy_tiering::Manifest;
use std::time::{Duration, Instant};

const BUCKET: &str = "tier";
const PREFIX: &str = "iggy/cluster-a";
const PARTITION_KEYS: &str = "iggy/cluster-a/streams/0/topics/0/partitions/0";

/// Small segments so that a few hundred kilobytes seal dozens of them; local copies go 200 ms
/// after their upload.
fn tiered_env(server: &S3Server) -> Vec<(String, String)> {
    let mut env = common::store_env(server, BUCKET, PREFIX);
    for (key, value) in [
        ("IGGY_STORAGE_SEGMENT_SIZE", "65536"),
        ("IGGY_TIERING_L3_READ_AHEAD", "128 KiB"),
    ] {
        env.push((key.to_string(), value.to_string()));
    }
    env
}

fn start_tiered(server: &S3Server, extra: &[(&str, &str)]) -> TestBroker {
    let mut env = tiered_env(server);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestBroker::start_with(&env)
}

/// One stream, one topic, one partition; `batches` batches of 100 messages of ~1 KB.
async fn produce(client: &IggyClient, from_batch: usize, batches: usize) {
    produce_batches(client, from_batch, batches, 100).await
}

async fn produce_batches(client: &IggyClient, from_batch: usize, batches: usize, per_batch: usize) {
    for b in from_batch..from_batch + batches {
        let mut batch: Vec<IggyMessage> = (0..per_batch)
            .map(|i| message(&format!("{b:05}-{i:03}-{}", "p".repeat(1000))))
            .collect();
        client
            .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut batch)
            .await
            .expect("send");
    }
}

async fn setup(client: &IggyClient) {
    client.create_stream("s").await.expect("stream");
    common::create_topic(client, &id(0), "t", 1).await;
}

/// What a consumer sees of a message: everything the broker stamped and the payload.
type Seen = (u64, u128, u64, u64, Vec<u8>);

async fn read_everything(client: &IggyClient) -> Vec<Seen> {
    common::read_all(client, 0)
        .await
        .into_iter()
        .map(|m| {
            (
                m.header.offset,
                m.header.id,
                m.header.timestamp,
                m.header.checksum,
                m.payload.to_vec(),
            )
        })
        .collect()
}

fn local_logs(broker: &TestBroker) -> usize {
    std::fs::read_dir(broker.partition_dir(0, 0, 0))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        })
        .unwrap_or(0)
}

fn stored_manifest(server: &S3Server) -> Option<Manifest> {
    let bytes =
        std::fs::read(server.object_path(BUCKET, &format!("{PARTITION_KEYS}/manifest.json")))
            .ok()?;
    Some(Manifest::decode(&bytes).expect("the store's manifest is valid"))
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until everything sealed is in the store and only the active segment is local.
fn wait_tiered(broker: &TestBroker, server: &S3Server) {
    wait_for(
        "segments uploaded and evicted",
        Duration::from_secs(30),
        || {
            let metrics = http_get(broker.http, "/metrics")
                .map(|(_, m)| m)
                .unwrap_or_default();
            local_logs(broker) == 1
                && metric(&metrics, "iggy_tiering_upload_lag_segments") == Some(0.0)
                && stored_manifest(server).is_some_and(|m| !m.segments.is_empty())
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_read_everything_back_from_s3_byte_for_byte_across_a_restart() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let mut broker = start_tiered(&server, &[]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 40).await;
    let reference = read_everything(&client).await;
    assert_eq!(reference.len(), 4000);

    wait_tiered(&broker, &server);
    let manifest = stored_manifest(&server).expect("manifest");
    assert!(
        manifest.segments.len() > 30,
        "{} segments",
        manifest.segments.len()
    );
    let keys = server.keys(BUCKET);
    for segment in &manifest.segments {
        let stem = format!("{:020}", segment.start_offset);
        assert!(
            keys.contains(&format!("{PARTITION_KEYS}/{stem}.log")),
            "{stem}.log"
        );
        assert!(
            keys.contains(&format!("{PARTITION_KEYS}/{stem}.index")),
            "{stem}.index"
        );
    }

    // Below the local window now: everything comes from S3, exactly as before.
    assert_eq!(read_everything(&client).await, reference);
    let topic = client.get_topic(&id(0), &id(0)).await.unwrap().unwrap();
    assert_eq!(topic.messages_count, 4000, "counts include tiered data");
    // A poll by timestamp lands in a tiered segment at the exact message.
    let middle = &reference[1234];
    let polled = client
        .poll_messages(
            &id(0),
            &id(0),
            Some(0),
            &Consumer::new(id(7)),
            &PollingStrategy::timestamp(middle.2.into()),
            1,
            false,
        )
        .await
        .unwrap();
    let first_at_time = reference.iter().find(|m| m.2 >= middle.2).unwrap().0;
    assert_eq!(polled.messages[0].header.offset, first_at_time);
    let metrics = http_get(broker.http, "/metrics").unwrap().1;
    assert!(metric(&metrics, "iggy_tiering_remote_reads_total").unwrap() > 0.0);
    assert!(metric(&metrics, "iggy_tiering_evicted_segments_total").unwrap() > 30.0);
    let (code, ready) = http_get(broker.http, "/ready").unwrap();
    assert_eq!((code, ready.as_str()), (200, "ready\ntiering: ok\n"));

    // A restart rebuilds the partition from its manifest and the local tail; more data tiers on.
    drop(client);
    broker.restart();
    let client = broker.client().await;
    assert_eq!(read_everything(&client).await, reference);
    produce(&client, 40, 10).await;
    wait_tiered(&broker, &server);
    let everything = read_everything(&client).await;
    assert_eq!(everything.len(), 5000);
    assert_eq!(&everything[..4000], &reference[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_outage_keeps_writes_and_local_copies_until_uploads_resume() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    server.stop();
    let broker = start_tiered(&server, &[]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 20).await;
    let reference = read_everything(&client).await;
    wait_for("degraded tiering", Duration::from_secs(20), || {
        http_get(broker.http, "/ready").is_ok_and(|(code, body)| {
            code == 200 && body.contains("tiering: degraded (unreachable")
        })
    });
    let metrics = http_get(broker.http, "/metrics").unwrap().1;
    assert!(metric(&metrics, "iggy_tiering_upload_failures_total").unwrap() > 0.0);
    assert!(metric(&metrics, "iggy_tiering_upload_lag_segments").unwrap() > 10.0);
    assert_eq!(metric(&metrics, "iggy_tiering_healthy"), Some(0.0));
    assert!(local_logs(&broker) > 10, "nothing unconfirmed is evicted");
    produce(&client, 20, 5).await;

    server.resume();
    wait_tiered(&broker, &server);
    let everything = read_everything(&client).await;
    assert_eq!(everything.len(), 2500);
    assert_eq!(&everything[..2000], &reference[..]);
    let (_, ready) = http_get(broker.http, "/ready").unwrap();
    assert!(ready.contains("tiering: ok"), "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_reported_and_fixed_by_a_restart_with_the_right_ones() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let mut broker = start_tiered(&server, &[("IGGY_TIERING_S3_SECRET_ACCESS_KEY", "wrong")]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_for("denied", Duration::from_secs(20), || {
        http_get(broker.http, "/ready").is_ok_and(|(_, body)| body.contains("(denied"))
    });
    assert!(server.keys(BUCKET).is_empty());
    drop(client);
    broker.set_env("IGGY_TIERING_S3_SECRET_ACCESS_KEY", SECRET_KEY);
    broker.restart();
    wait_tiered(&broker, &server);
    let client = broker.client().await;
    assert_eq!(read_everything(&client).await, reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_object_answers_an_error_never_wrong_data() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let broker = start_tiered(&server, &[]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_tiered(&broker, &server);
    let manifest = stored_manifest(&server).unwrap();
    let damaged = manifest.segments[1];
    let path = server.object_path(
        BUCKET,
        &format!("{PARTITION_KEYS}/{:020}.log", damaged.start_offset),
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let error = poll_at(&client, damaged.start_offset).await.unwrap_err();
    assert_eq!(error.as_code(), 4027, "{error}");
    // Other segments still read, exactly.
    let fine = poll_at(&client, 0).await.unwrap();
    assert_eq!(fine.messages[0].payload.to_vec(), reference[0].4);
    let after = poll_at(&client, damaged.next_offset).await.unwrap();
    assert_eq!(after.messages[0].header.offset, damaged.next_offset);
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_a_lost_deletion_queue_left_behind_are_swept_after_a_restart() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let mut broker = start_tiered(&server, &[]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_tiered(&broker, &server);
    drop(client);
    assert_eq!(broker.stop(), 0);

    // Segments retention removed while their objects' deletion was only queued in memory
    // (the broker died first): objects no manifest names, below the local segments. And one
    // above them, which may be an upload still to be recorded: it stays.
    let manifest = stored_manifest(&server).unwrap();
    let model = server.object_path(
        BUCKET,
        &format!(
            "{PARTITION_KEYS}/{:020}.log",
            manifest.segments[0].start_offset
        ),
    );
    let orphan = |start: u64, kind: &str| {
        server.object_path(BUCKET, &format!("{PARTITION_KEYS}/{start:020}.{kind}"))
    };
    let below = manifest.segments[0].start_offset + 1;
    let above = 10_000_000_000_000_000_000;
    for path in [
        orphan(below, "log"),
        orphan(below, "index"),
        orphan(above, "log"),
    ] {
        std::fs::copy(&model, path).unwrap();
    }

    broker.spawn_and_wait();
    wait_for("orphans deleted", Duration::from_secs(20), || {
        !orphan(below, "log").exists() && !orphan(below, "index").exists()
    });
    assert!(
        orphan(above, "log").exists(),
        "a possible upload is left alone"
    );
    for segment in &stored_manifest(&server).unwrap().segments {
        assert!(
            server
                .object_path(
                    BUCKET,
                    &format!("{PARTITION_KEYS}/{:020}.log", segment.start_offset)
                )
                .exists(),
            "named objects stay"
        );
    }
    let client = broker.client().await;
    assert_eq!(read_everything(&client).await, reference);
}

async fn poll_at(client: &IggyClient, offset: u64) -> Result<PolledMessages, IggyError> {
    client
        .poll_messages(
            &id(0),
            &id(0),
            Some(0),
            &Consumer::new(id(9)),
            &PollingStrategy::offset(offset),
            10,
            false,
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_and_deletion_remove_tiered_objects() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let broker = start_tiered(&server, &[("IGGY_RETENTION_CLEANER_INTERVAL", "100ms")]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    wait_tiered(&broker, &server);
    let before = stored_manifest(&server).unwrap();
    // DeleteSegments takes the oldest tiered segments: the manifest and the store follow.
    client
        .delete_segments(&id(0), &id(0), 0, 3)
        .await
        .expect("delete segments");
    let gone = before.segments[2];
    wait_for("deleted objects", Duration::from_secs(20), || {
        let keys = server.keys(BUCKET);
        stored_manifest(&server).is_some_and(|m| m.segments[0] == before.segments[3])
            && !keys.contains(&format!("{PARTITION_KEYS}/{:020}.log", gone.start_offset))
            && keys.contains(&format!(
                "{PARTITION_KEYS}/{:020}.log",
                before.segments[3].start_offset
            ))
    });
    let first = common::read_all(&client, 0).await[0].header.offset;
    assert_eq!(first, before.segments[3].start_offset);
    // Deleting the stream deletes every object of it.
    client.delete_stream(&id(0)).await.expect("delete stream");
    wait_for("an empty bucket", Duration::from_secs(20), || {
        server.keys(BUCKET).is_empty()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_uploading_loses_nothing_and_duplicates_nothing() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let mut broker = start_tiered(&server, &[("IGGY_TIERING_INTERVAL", "20ms")]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 30).await;
    let reference = read_everything(&client).await;
    drop(client);
    // Crash at different points of the upload / manifest / eviction sequence.
    for pause_ms in [30, 70, 120, 200] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        broker.restart();
    }
    wait_tiered(&broker, &server);
    let client = broker.client().await;
    assert_eq!(read_everything(&client).await, reference);
    let manifest = stored_manifest(&server).unwrap();
    let local = std::fs::read(broker.partition_dir(0, 0, 0).join("tiered.json")).unwrap();
    assert_eq!(Manifest::decode(&local).unwrap(), manifest);
    let starts: Vec<u64> = manifest.segments.iter().map(|s| s.start_offset).collect();
    let mut unique = starts.clone();
    unique.dedup();
    assert_eq!(starts, unique, "no segment twice");
    assert_eq!(manifest.segments[0].start_offset, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_can_be_the_object_store() {
    let archive = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(&[
        ("IGGY_STORAGE_SEGMENT_SIZE", "65536"),
        ("IGGY_TIERING_INTERVAL", "100ms"),
        ("IGGY_TIERING_LOCAL_RETENTION", "200ms"),
        (
            "IGGY_TIERING_L3_DIRECTORY",
            archive.path().to_str().unwrap(),
        ),
    ]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_for("eviction", Duration::from_secs(20), || {
        local_logs(&broker) == 1
    });
    assert!(archive
        .path()
        .join("streams/0/topics/0/partitions/0/manifest.json")
        .exists());
    assert_eq!(read_everything(&client).await, reference);
}

/// Message deduplication reads a partition's last `max_entries` messages back from local disk
/// after a restart: eviction keeps the segments holding them, whatever the local retention,
/// while older ones go to the store; a resend after a kill -9 is still dropped.
#[tokio::test(flavor = "multi_thread")]
async fn deduplication_keeps_its_window_local_while_older_segments_go_to_the_store() {
    let archive = tempfile::tempdir().unwrap();
    let env = [
        ("IGGY_STORAGE_SEGMENT_SIZE", "65536"),
        ("IGGY_TIERING_INTERVAL", "100ms"),
        ("IGGY_TIERING_LOCAL_RETENTION", "200ms"),
        (
            "IGGY_TIERING_L3_DIRECTORY",
            archive.path().to_str().unwrap(),
        ),
        ("IGGY_MESSAGE_DEDUPLICATION_ENABLED", "true"),
        ("IGGY_MESSAGE_DEDUPLICATION_MAX_ENTRIES", "300"),
        ("IGGY_MESSAGE_DEDUPLICATION_EXPIRY", "none"),
    ];
    let mut broker = TestBroker::start_with(&env);
    common::wait_deduplication_in_force(&broker, 300);
    let client = broker.client().await;
    setup(&client).await;
    // Ten batches of 100 messages of about 1 KB: a batch is larger than a segment's 64 KiB, so
    // each one fills a segment of its own.
    let with_ids = |ids: std::ops::RangeInclusive<u128>| -> Vec<IggyMessage> {
        ids.map(|i| common::message_with_id(i, &format!("{i:05}-{}", "p".repeat(1000))))
            .collect()
    };
    for b in 0..10u128 {
        let mut batch = with_ids(b * 100 + 1..=b * 100 + 100);
        common::send_to(&client, 0, &mut batch).await.expect("send");
    }
    let evicted = || {
        let (_, metrics) = http_get(broker.http, "/metrics").unwrap_or_default();
        metric(&metrics, "iggy_tiering_evicted_segments_total").unwrap_or(0.0)
    };
    wait_for("older segments evicted", Duration::from_secs(20), || {
        evicted() >= 7.0
    });
    // Give eviction a few more passes: it must stop short of the last 300 messages, which the
    // last three segments hold (the active one included).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!((evicted(), local_logs(&broker)), (7.0, 3));
    drop(client);

    broker.kill9();
    broker.spawn_and_wait();
    let client = broker.client().await;
    let mut resent = with_ids(701..=1000);
    common::send_to(&client, 0, &mut resent)
        .await
        .expect("resend");
    let (_, metrics) = http_get(broker.http, "/metrics").expect("metrics");
    assert_eq!(
        metric(&metrics, "iggy_messages_deduplicated_total"),
        Some(300.0)
    );
    assert_eq!(common::messages_count(&client).await, 1000);
}

#[test]
fn tier_settings_that_cannot_hold_data_stop_the_broker_with_exit_2() {
    let mut broker = TestBroker::start();
    broker.stop();
    broker.set_env("IGGY_TIERING_L2_ENABLED", "false");
    let (code, output) = broker.run_expecting_failure();
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("no tier that can hold data"), "{output}");

    let archive = tempfile::tempdir().unwrap();
    broker.set_env(
        "IGGY_TIERING_L3_DIRECTORY",
        archive.path().to_str().unwrap(),
    );
    broker.set_env("IGGY_TIERING_LOCAL_RETENTION", "1h");
    let (code, output) = broker.run_expecting_failure();
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("keeps none"), "{output}");
}

/// [`tiered_env`] for objects only: L2 off (so no local window), segments sealed a second after
/// their first message.
fn objects_only_env(server: &S3Server) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = tiered_env(server)
        .into_iter()
        .filter(|(k, _)| k != "IGGY_TIERING_LOCAL_RETENTION" && k != "IGGY_STORAGE_SEGMENT_SIZE")
        .collect();
    env.push(("IGGY_TIERING_L2_ENABLED".into(), "false".into()));
    env.push(("IGGY_TIERING_L3_SEAL_AFTER".into(), "1s".into()));
    env
}

/// The partition directory holds one segment, and it is empty: everything written is in the
/// store, named by both manifests.
fn holds_nothing_but_an_empty_active_segment(broker: &TestBroker, server: &S3Server) -> bool {
    let dir = broker.partition_dir(0, 0, 0);
    let logs: Vec<u64> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .collect()
        })
        .unwrap_or_default();
    logs == [0]
        && stored_manifest(server).is_some_and(|m| !m.segments.is_empty())
        && common::local_tier_manifest(broker) == stored_manifest(server)
}

/// L2 off: a segment far below the size limit is sealed by time, uploaded and dropped from
/// local disk; consumers read it all back from S3; a kill -9 with unsealed data and a restart
/// rebuild the partition from its manifest and the open segment, and what was acknowledged
/// before the crash reaches the store too.
#[tokio::test(flavor = "multi_thread")]
async fn objects_only_keeps_nothing_local_but_the_open_segment_and_survives_kill_9() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let env = objects_only_env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut broker = TestBroker::start_with(&env);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 20).await;
    let reference = read_everything(&client).await;
    assert_eq!(reference.len(), 2000);
    wait_for(
        "sealed by time, uploaded, dropped",
        Duration::from_secs(30),
        || holds_nothing_but_an_empty_active_segment(&broker, &server),
    );
    let manifest = stored_manifest(&server).unwrap();
    assert_eq!(manifest.segments[0].start_offset, 0);
    assert_eq!(
        manifest.end(),
        Some(2000),
        "all of it, in 2 MB: sealed by time"
    );
    assert_eq!(
        read_everything(&client).await,
        reference,
        "read back from S3"
    );
    let metrics = http_get(broker.http, "/metrics").unwrap().1;
    assert!(metric(&metrics, "iggy_tiering_remote_reads_total").unwrap() > 0.0);
    let delays = metric(&metrics, "iggy_tiering_store_delay_seconds_count").unwrap();
    let waited = metric(&metrics, "iggy_tiering_store_delay_seconds_sum").unwrap();
    assert!(delays >= 1.0, "{metrics}");
    eprintln!(
        "objects only: {delays} segments reached S3 on average {:.2} s after their first message",
        waited / delays
    );

    // Acknowledged, still in the open segment, then a crash.
    produce(&client, 20, 10).await;
    drop(client);
    broker.kill9();
    broker.spawn_and_wait();
    let client = broker.client().await;
    let everything = read_everything(&client).await;
    assert_eq!(everything.len(), 3000);
    assert_eq!(&everything[..2000], &reference[..]);
    wait_for(
        "the rest reaches the store",
        Duration::from_secs(30),
        || {
            holds_nothing_but_an_empty_active_segment(&broker, &server)
                && stored_manifest(&server).and_then(|m| m.end()) == Some(3000)
        },
    );
    assert_eq!(read_everything(&client).await, everything);
    produce(&client, 30, 1).await;
    assert_eq!(
        read_everything(&client).await.len(),
        3100,
        "offsets continue"
    );
}

/// Objects only on three replicas: the primary's seals go through the log, so every member
/// cuts its segments at the same offsets; the store receives all of it although no segment
/// came near the size limit; every member's manifest names the same segments, the oldest ones
/// have left every member's disk, and every member reads everything back.
#[tokio::test(flavor = "multi_thread")]
async fn objects_only_replicas_seal_through_the_log_and_read_everything_from_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let env = objects_only_env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = common::cluster::TestCluster::start(3, &env);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let client = cluster.brokers[primary].client().await;
    setup(&client).await;
    for round in 0..3 {
        produce_batches(&client, round * 100, 100, 10).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let reference = read_everything(&client).await;
    assert_eq!(reference.len(), 3000);
    wait_for(
        "all of it in the store, named alike everywhere",
        Duration::from_secs(60),
        || {
            let stored = stored_manifest(&server);
            stored.as_ref().and_then(|m| m.end()) == Some(3000)
                && cluster
                    .brokers
                    .iter()
                    .all(|b| common::local_tier_manifest(b) == stored)
        },
    );
    let segments = stored_manifest(&server).unwrap().segments;
    assert!(segments.len() >= 3, "sealed by time: {segments:?}");
    wait_for(
        "the oldest segment off every disk",
        Duration::from_secs(30),
        || {
            cluster.brokers.iter().all(|b| {
                !b.partition_dir(0, 0, 0)
                    .join(format!("{:020}.log", segments[0].start_offset))
                    .exists()
            })
        },
    );
    every_member_reads_it_all_and_only_the_primary_uploads(&cluster, primary, &reference).await;
}

/// Every member of `cluster` reads back exactly `reference`, and only `primary` uploaded
/// segments. Returns each member's `/metrics`.
async fn every_member_reads_it_all_and_only_the_primary_uploads(
    cluster: &common::cluster::TestCluster,
    primary: usize,
    reference: &[Seen],
) -> Vec<String> {
    let mut all = Vec::new();
    for (member, broker) in cluster.brokers.iter().enumerate() {
        let reader = broker.client().await;
        assert_eq!(read_everything(&reader).await, reference, "member {member}");
        let metrics = http_get(broker.http, "/metrics").unwrap().1;
        let uploaded = metric(&metrics, "iggy_tiering_uploaded_segments_total").unwrap();
        assert_eq!(
            uploaded > 0.0,
            member == primary,
            "only the primary uploads"
        );
        all.push(metrics);
    }
    all
}

/// Three replicas tiering to `server`, holding 3,000 messages sent through the primary in
/// batches of ten: enough operations for several checkpoints, which a replica's eviction waits
/// for (it keeps what restoring its durable checkpoint needs). Returns the cluster, its primary
/// and a client of it.
async fn tiering_cluster_with_3000_messages(
    server: &S3Server,
) -> (common::cluster::TestCluster, usize, IggyClient) {
    server.create_bucket(BUCKET);
    let env = tiered_env(server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = common::cluster::TestCluster::start(3, &env);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let client = cluster.brokers[primary].client().await;
    setup(&client).await;
    produce_batches(&client, 0, 300, 10).await;
    (cluster, primary, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicated_cluster_tiers_through_its_primary_and_every_member_reads_from_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let (mut cluster, primary, client) = tiering_cluster_with_3000_messages(&server).await;
    let reference = read_everything(&client).await;
    assert_eq!(reference.len(), 3000);
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));

    // Every member names the same tiered segments (the operation put them in every manifest at
    // one point of the log) and has dropped most local copies.
    wait_for("every member tiered", Duration::from_secs(60), || {
        let stored = stored_manifest(&server);
        let segments = stored.as_ref().map_or(0, |m| m.segments.len());
        segments > 30
            && cluster.brokers.iter().all(|b| {
                local_logs(b) < segments / 2
                    && common::local_tier_manifest(b).is_some_and(|m| m.segments.len() == segments)
            })
    });
    let metrics =
        every_member_reads_it_all_and_only_the_primary_uploads(&cluster, primary, &reference).await;
    for member_metrics in &metrics {
        assert!(metric(member_metrics, "iggy_tiering_remote_reads_total").unwrap() > 0.0);
    }

    // A backup that crashes after evicting restores its checkpoint from what it kept locally.
    let backup = (primary + 1) % 3;
    cluster.brokers[backup].restart();
    let reader = cluster.brokers[backup].client().await;
    assert_eq!(
        read_everything(&reader).await,
        reference,
        "restarted member"
    );
    drop(reader);

    // The primary dies; the new one tiers what comes next.
    cluster.brokers[primary].kill9();
    let alive: Vec<usize> = (0..3).filter(|m| *m != primary).collect();
    let next = cluster.primary(&alive, Duration::from_secs(15));
    let client = cluster.brokers[next].client().await;
    let before = stored_manifest(&server).unwrap().segments.len();
    produce_batches(&client, 300, 100, 10).await;
    wait_for("the new primary tiers", Duration::from_secs(60), || {
        let stored = stored_manifest(&server);
        stored
            .as_ref()
            .is_some_and(|m| m.segments.len() > before + 5)
            && alive.iter().all(|&b| {
                common::local_tier_manifest(&cluster.brokers[b]).map(|m| m.segments.len())
                    == stored.as_ref().map(|m| m.segments.len())
            })
    });
    let everything = read_everything(&client).await;
    assert_eq!(everything.len(), 4000);
    assert_eq!(&everything[..3000], &reference[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_member_is_rebuilt_from_its_peers_and_reads_their_tiered_segments_from_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let (mut cluster, primary, client) = tiering_cluster_with_3000_messages(&server).await;
    cluster.wait_caught_up(&[0, 1, 2], primary, Duration::from_secs(10));
    wait_for("every member tiered", Duration::from_secs(60), || {
        let segments = stored_manifest(&server).map_or(0, |m| m.segments.len());
        segments > 30 && cluster.brokers.iter().all(|b| local_logs(b) < segments / 2)
    });

    // A backup loses its disk: it comes back empty, behind every peer's log, and its peers no
    // longer hold most of the partition locally — the object store does.
    let lost = (primary + 1) % 3;
    cluster.brokers[lost].kill9();
    let data = cluster.brokers[lost].data_path().to_owned();
    std::fs::remove_dir_all(&data).expect("wipe");
    std::fs::create_dir_all(&data).expect("recreate");
    produce_batches(&client, 300, 50, 10).await;
    let reference = read_everything(&client).await;
    assert_eq!(reference.len(), 3500);
    cluster.brokers[lost].spawn_and_wait_alive();
    cluster.wait_caught_up(&[lost], primary, Duration::from_secs(60));

    // It fetched only what its peers hold locally and took the rest's manifest entries.
    let stored = stored_manifest(&server).expect("the store's manifest");
    let rebuilt = common::local_tier_manifest(&cluster.brokers[lost]).expect("a local manifest");
    assert!(
        !rebuilt.segments.is_empty() && rebuilt.segments[0] == stored.segments[0],
        "the rebuilt member names the store's segments from the first"
    );
    assert!(
        local_logs(&cluster.brokers[lost]) < stored.segments.len() / 2,
        "the tiered part was not fetched again"
    );
    let reader = cluster.brokers[lost].client().await;
    assert_eq!(
        read_everything(&reader).await,
        reference,
        "the rebuilt member"
    );
}

/// What the fault proxy in front of the S3 server does with a new connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Pass,
    /// Answers every request `503 Slow Down`, as S3 does when throttling.
    SlowDown,
    /// Accepts and reads, never answers: a store that hangs.
    Stall,
}

/// A TCP proxy in front of the S3 server whose behaviour a test switches; switching drops the
/// open connections so the SDK's pooled ones feel it at once. Stops with the test's runtime.
struct FaultProxy {
    address: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<Fault>,
}

impl FaultProxy {
    async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, watch) = tokio::sync::watch::channel(Fault::Pass);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                let fault = *watch.borrow_and_update();
                let target = target.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    match fault {
                        Fault::Pass => {
                            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = watch.changed() => {}
                            }
                        }
                        Fault::SlowDown => {
                            let mut buffer = vec![0u8; 64 << 10];
                            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                            // One request read (or at least begun), one answer, closed.
                            if matches!(client.read(&mut buffer).await, Ok(0) | Err(_)) {
                                return;
                            }
                            let answer = format!(
                                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = client.write_all(answer.as_bytes()).await;
                        }
                        Fault::Stall => {
                            let mut buffer = vec![0u8; 64 << 10];
                            loop {
                                tokio::select! {
                                    read = client.read(&mut buffer) => if matches!(read, Ok(0) | Err(_)) { return },
                                    _ = watch.changed() => return,
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { address, mode }
    }

    fn set(&self, fault: Fault) {
        let _ = self.mode.send(fault);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_and_a_hanging_store_cost_errors_and_retries_never_data() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let proxy = FaultProxy::start(&server.endpoint).await;
    let endpoint = format!("http://{}", proxy.address);
    let broker = start_tiered(&server, &[("IGGY_TIERING_S3_ENDPOINT", &endpoint)]);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_tiered(&broker, &server);

    // Throttled: reads of tiered data fail with an error, uploads wait, sends go on.
    proxy.set(Fault::SlowDown);
    assert!(poll_at(&client, 0).await.is_err());
    produce(&client, 10, 10).await;
    wait_for("degraded by 503s", Duration::from_secs(30), || {
        http_get(broker.http, "/ready").is_ok_and(|(_, body)| body.contains("(failed"))
    });
    assert!(local_logs(&broker) > 5, "nothing unconfirmed is evicted");

    // Hanging: a poll of tiered data answers within the read timeout, not the SDK's retries.
    proxy.set(Fault::Stall);
    let began = Instant::now();
    assert!(poll_at(&client, 0).await.is_err());
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "{:?}",
        began.elapsed()
    );

    proxy.set(Fault::Pass);
    wait_tiered(&broker, &server);
    let everything = read_everything(&client).await;
    assert_eq!(everything.len(), 2000);
    assert_eq!(&everything[..1000], &reference[..]);
}

/// A single node has no peer, but a local segment the store holds has another copy: rot in it
/// (a flipped byte) fails the first poll with InvalidMessageChecksum, the range is fetched back
/// from S3 (verified) and rewritten, and the retry reads everything as before — the local file
/// equal to its object again.
#[tokio::test(flavor = "multi_thread")]
async fn rot_in_a_local_copy_the_store_holds_is_repaired_from_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket(BUCKET);
    let mut env: Vec<(String, String)> = tiered_env(&server)
        .into_iter()
        .filter(|(k, _)| k != "IGGY_TIERING_LOCAL_RETENTION")
        .collect();
    env.push(("IGGY_STORAGE_SCRUB_RATE".into(), "0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = TestBroker::start_with(&env);
    let client = broker.client().await;
    setup(&client).await;
    produce(&client, 0, 10).await;
    let reference = read_everything(&client).await;
    wait_for("the first segments in S3", Duration::from_secs(30), || {
        stored_manifest(&server).is_some_and(|m| m.segments.len() >= 3)
    });
    let first = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let object = std::fs::read(server.object_path(
        BUCKET,
        &format!("{PARTITION_KEYS}/00000000000000000000.log"),
    ))
    .unwrap();
    let mut rotten = std::fs::read(&first).unwrap();
    assert_eq!(rotten, object, "the object is the file as uploaded");
    rotten[object.len() / 2] ^= 0x04;
    std::fs::write(&first, &rotten).unwrap();

    let polled = common::poll_offset(&client, 0, 0, 1000).await;
    assert_eq!(common::code(polled.expect_err("rot is refused")), 4027);
    wait_for("the repair", Duration::from_secs(15), || {
        let metrics = http_get(broker.http, "/metrics").unwrap_or_default().1;
        metric(&metrics, "iggy_repairs_total") == Some(1.0)
    });
    assert_eq!(std::fs::read(&first).unwrap(), object);
    assert_eq!(read_everything(&client).await, reference);
    let metrics = http_get(broker.http, "/metrics").unwrap().1;
    assert_eq!(
        metric(&metrics, "iggy_repair_failures_total"),
        Some(0.0),
        "only the damaged segment is repaired: {metrics}"
    );
}
