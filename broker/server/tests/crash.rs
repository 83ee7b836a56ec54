//! Durability under kill -9: every acknowledged message survives, intact and in order; torn
//! tails are cut; rot the index can step over is kept for repair while the rest is served;
//! corruption it cannot place, with intact data after it, stops the broker from starting.

mod common;

use common::{
    code, create_topic, http_get, id, message, poll_offset as poll, read_all, TestBroker,
};
use iggy::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PRODUCERS: usize = 4;
const BATCH: usize = 10;

/// Payload that says who sent it and when, padded so corruption would show.
fn payload(producer: usize, seq: usize) -> String {
    format!("p{producer}-s{seq:08}-{}", "x".repeat(100 + seq % 50))
}

/// Where message `n` of producer 0's log starts: the frames before it, each a 64-byte header
/// and its payload.
fn message_start(n: usize) -> usize {
    (0..n).map(|i| 64 + payload(0, i).len()).sum()
}

async fn setup(client: &IggyClient, partitions: u32) {
    client.create_stream("crash").await.unwrap();
    create_topic(client, &id(0), "log", partitions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_sends_loses_no_acknowledged_message() {
    let mut broker = TestBroker::start_with(&[("IGGY_STORAGE_FSYNC", "always")]);
    setup(&broker.client().await, 2).await;

    // acked[p] = how many of producer p's messages were acknowledged, in order.
    let acked = Arc::new(Mutex::new(vec![0usize; PRODUCERS]));
    let mut clients = Vec::new();
    for _ in 0..PRODUCERS {
        clients.push(broker.client().await);
    }
    let mut tasks = Vec::new();
    for (producer, client) in clients.into_iter().enumerate() {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            // Producers 0 and 1 share partition 0, so their fsyncs are grouped.
            let partition = (producer / 2) as u32;
            for round in 0..100_000 {
                let mut batch: Vec<IggyMessage> = (0..BATCH)
                    .map(|i| message(&payload(producer, round * BATCH + i)))
                    .collect();
                let sent = client
                    .send_messages(
                        &id(0),
                        &id(0),
                        &Partitioning::partition_id(partition),
                        &mut batch,
                    )
                    .await;
                if sent.is_err() {
                    return;
                }
                acked.lock().unwrap()[producer] += BATCH;
            }
        }));
    }
    // Let acknowledgements accumulate, then crash in the middle of the traffic.
    while acked.lock().unwrap().iter().any(|n| *n < 300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill9();
    let acked_at_crash = acked.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for task in &tasks {
        task.abort();
    }
    assert!(
        acked_at_crash.iter().all(|n| *n > 0),
        "every producer got acks: {acked_at_crash:?}"
    );

    broker.spawn_and_wait();
    let client = broker.client().await;
    for partition in 0..2u32 {
        let messages = read_all(&client, partition).await;
        let mut next_seq = [0usize; PRODUCERS];
        for (offset, m) in messages.iter().enumerate() {
            assert_eq!(m.header.offset, offset as u64, "offsets are dense");
            let text = m.payload_as_string().unwrap();
            let producer: usize = text[1..2].parse().unwrap();
            assert_eq!(
                producer / 2,
                partition as usize,
                "message in the wrong partition"
            );
            assert_eq!(
                text,
                payload(producer, next_seq[producer]),
                "intact and in order"
            );
            next_seq[producer] += 1;
        }
        for producer in (0..PRODUCERS).filter(|p| p / 2 == partition as usize) {
            assert!(
                next_seq[producer] >= acked_at_crash[producer],
                "producer {producer}: {} acknowledged, {} survived",
                acked_at_crash[producer],
                next_seq[producer]
            );
        }
    }
}

/// A broker that acknowledged 20 messages on partition 0 (still running), with the path of its
/// only segment.
async fn twenty_messages() -> (TestBroker, std::path::PathBuf) {
    twenty_messages_with(&[], false).await
}

/// [`twenty_messages`] with more settings, and optionally a consumer already polling at the
/// partition's end when they are sent.
async fn twenty_messages_with(
    env: &[(&str, &str)],
    tailing: bool,
) -> (TestBroker, std::path::PathBuf) {
    let mut settings = vec![("IGGY_STORAGE_FSYNC", "always")];
    settings.extend_from_slice(env);
    let broker = TestBroker::start_with(&settings);
    let client = broker.client().await;
    setup(&client, 1).await;
    if tailing {
        assert!(poll(&client, 0, 0, 100).await.unwrap().is_empty());
    }
    let mut batch: Vec<IggyMessage> = (0..20).map(|i| message(&payload(0, i))).collect();
    client
        .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut batch)
        .await
        .unwrap();
    let log = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    (broker, log)
}

/// [`twenty_messages`], then killed; returns the broker down.
async fn twenty_messages_then_kill9() -> (TestBroker, std::path::PathBuf) {
    let (mut broker, log) = twenty_messages().await;
    broker.kill9();
    (broker, log)
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_broker_carries_on() {
    let (mut broker, log) = twenty_messages_then_kill9().await;

    // Cut the last message in half and append garbage, as an interrupted write could.
    let mut bytes = std::fs::read(&log).unwrap();
    let last_len = 64 + payload(0, 19).len();
    bytes.truncate(bytes.len() - last_len / 2);
    bytes.extend_from_slice(&[0x5A; 77]);
    std::fs::write(&log, &bytes).unwrap();

    broker.spawn_and_wait();
    let client = broker.client().await;
    let messages = read_all(&client, 0).await;
    assert_eq!(messages.len(), 19, "only the torn message is gone");
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.payload_as_string().unwrap(), payload(0, i));
    }
    let mut more = vec![message("next")];
    client
        .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut more)
        .await
        .unwrap();
    let last = client
        .poll_messages(
            &id(0),
            &id(0),
            Some(0),
            &Consumer::new(id(1)),
            &PollingStrategy::last(),
            1,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        last.messages[0].header.offset, 19,
        "offsets continue where the intact log ends"
    );
}

/// Rot inside a message boot verifies (written since the last clean stop), with intact
/// messages after it, is not a torn tail: the broker starts, never serves the damaged message,
/// serves everything around it, and leaves its bytes as they are for a repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_before_intact_data_is_kept_for_repair_and_the_rest_is_served() {
    let (mut broker, log) = twenty_messages_then_kill9().await;
    let mut bytes = std::fs::read(&log).unwrap();
    let fifth_message_start = message_start(5);
    bytes[fifth_message_start + 70] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();

    broker.spawn_and_wait();
    let client = broker.client().await;
    assert_eq!(
        poll_range(&client, 0, 5).await.unwrap(),
        5,
        "before the damage"
    );
    assert_eq!(code(poll_range(&client, 5, 1).await.unwrap_err()), 4027);
    assert_eq!(
        poll_range(&client, 6, 100).await.unwrap(),
        14,
        "after the damage"
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "left for a repair");
}

/// Without an index to step over the damage by (after a power loss it can be empty), intact
/// data after a bad message cannot be told apart from the message's own remains: the broker
/// refuses to start, naming the spot, and touches nothing.
#[tokio::test]
async fn corruption_the_index_cannot_place_refuses_to_start_and_names_the_spot() {
    let (broker, log) = twenty_messages_then_kill9().await;

    let mut bytes = std::fs::read(&log).unwrap();
    let fifth_message_start = message_start(5);
    bytes[fifth_message_start + 70] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();
    std::fs::write(log.with_extension("index"), b"").unwrap();

    let (exit_code, output) = broker.run_expecting_failure();
    assert_eq!(exit_code, 1, "{output}");
    assert!(output.contains("00000000000000000000.log"), "{output}");
    assert!(
        output.contains(&format!("at byte {fifth_message_start}")),
        "{output}"
    );
    assert!(output.contains("expected offset 5"), "{output}");
    assert!(output.contains("checksum mismatch"), "{output}");
    // The damaged file is left untouched for the operator.
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
}

/// Lost metadata is never silent: with partition data on disk and no metadata file the broker
/// refuses to start as a first boot (which would recreate stream 0 over the old data) and says
/// what to do; the data is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_metadata_refuses_to_start_and_keeps_the_data() {
    let mut broker = TestBroker::start();
    let client = broker.client().await;
    setup(&client, 1).await;
    let mut messages = vec![message("kept")];
    common::send_to(&client, 0, &mut messages).await.unwrap();
    drop(client);
    assert_eq!(broker.stop(), 0);
    let log = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let before = std::fs::read(&log).unwrap();
    std::fs::remove_file(broker.data_path().join("state").join("metadata.json")).unwrap();

    let (exit_code, output) = broker.run_expecting_failure();
    assert_eq!(exit_code, 1, "{output}");
    assert!(output.contains("no metadata file at"), "{output}");
    assert!(output.contains("1 stream directory"), "{output}");
    assert!(output.contains("Restore"), "{output}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "the data is untouched"
    );
}

async fn poll_range(client: &IggyClient, offset: u64, count: u32) -> Result<usize, IggyError> {
    poll(client, 0, offset, count).await.map(|m| m.len())
}

/// Rot after a clean stop: boot trusts the checkpoint and does not rehash, so the read path must
/// catch it. A flipped payload byte and a flipped length field are each refused with
/// InvalidMessageChecksum (4027) for the range holding them, counted and logged; the messages
/// before and after stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_after_a_clean_stop_is_refused_on_read_not_served() {
    let (mut broker, log) = twenty_messages().await;
    assert_eq!(broker.stop(), 0, "clean stop, checkpoint written");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[message_start(5) + 70] ^= 0x01; // message 5's payload
    bytes[message_start(12) + 52] ^= 0x01; // message 12's payload length field
    std::fs::write(&log, &bytes).unwrap();

    broker.spawn_and_wait();
    let client = broker.client().await;
    assert_eq!(
        poll_range(&client, 0, 5).await.unwrap(),
        5,
        "before the damage"
    );
    assert_eq!(code(poll_range(&client, 0, 10).await.unwrap_err()), 4027);
    assert_eq!(
        poll_range(&client, 6, 6).await.unwrap(),
        6,
        "between the two"
    );
    assert_eq!(code(poll_range(&client, 10, 5).await.unwrap_err()), 4027);
    assert_eq!(
        poll_range(&client, 13, 100).await.unwrap(),
        7,
        "after the damage"
    );
    let (_, metrics) = http_get(broker.http, "/metrics").unwrap();
    assert!(metrics.contains("iggy_corrupt_reads_total 2"), "{metrics}");
}

/// L1 holds the newest batches as they were written while a consumer reads at the partition's
/// end, so its polls never read the disk: with a byte of message 5 flipped on disk under a
/// running broker, the poll returns all 20 messages intact and counts an L1 hit. The same
/// damage is refused as the disk read it is with L1 off (`IGGY_TIERING_L1_SIZE=0`) and when no
/// consumer was at the end as the batch arrived (nothing was cached for nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_batches_are_served_from_l1_without_reading_the_disk() {
    for (l1, tailing, served) in [
        ("64 MiB", true, true),
        ("0", true, false),
        ("64 MiB", false, false),
    ] {
        let (broker, log) = twenty_messages_with(&[("IGGY_TIERING_L1_SIZE", l1)], tailing).await;
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[message_start(5) + 70] ^= 0x01;
        std::fs::write(&log, &bytes).unwrap();

        let client = broker.client().await;
        let polled = poll(&client, 0, 0, 100).await;
        let (_, metrics) = http_get(broker.http, "/metrics").unwrap();
        if served {
            let payloads: Vec<String> = polled
                .unwrap()
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            let sent: Vec<String> = (0..20).map(|i| payload(0, i)).collect();
            assert_eq!(payloads, sent, "L1 {l1}: the batch as it was sent");
            assert!(
                metrics.contains("iggy_tiering_l1_hits_total 1\n"),
                "{metrics}"
            );
            assert!(metrics.contains("iggy_corrupt_reads_total 0"), "{metrics}");
        } else {
            assert_eq!(
                code(polled.unwrap_err()),
                4027,
                "L1 {l1}, tailing {tailing}: the disk is read"
            );
            assert!(
                metrics.contains("iggy_tiering_l1_hits_total 0\n"),
                "{metrics}"
            );
            assert!(metrics.contains("iggy_tiering_l1_bytes 0\n"), "{metrics}");
        }
    }
}

/// The inode of a partition's checkpoint file (a rewrite replaces the file), if it has one.
fn checkpoint_inode(broker: &TestBroker, partition: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(broker.partition_dir(0, 0, partition).join("checkpoint"))
        .ok()
        .map(|m| m.ino())
}

/// A clean shutdown syncs and checkpoints only partitions written to since their checkpoint:
/// idle and empty ones cost nothing, which is what keeps SIGTERM fast with thousands of them.
/// What was written survives either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_checkpoints_only_what_was_written() {
    const PARTITIONS: u32 = 40;
    let mut broker = TestBroker::start();
    let client = broker.client().await;
    setup(&client, PARTITIONS).await;
    send_one(&client, 3, "first").await;
    send_one(&client, 7, "first").await;
    drop(client);
    assert_eq!(broker.stop(), 0);
    let written: Vec<u32> = (0..PARTITIONS)
        .filter(|p| checkpoint_inode(&broker, *p).is_some())
        .collect();
    assert_eq!(written, [3, 7], "empty partitions get no checkpoint");
    let before = [3, 7].map(|p| checkpoint_inode(&broker, p));

    broker.spawn_and_wait();
    let client = broker.client().await;
    send_one(&client, 7, "second").await;
    drop(client);
    assert_eq!(broker.stop(), 0);
    assert_eq!(
        checkpoint_inode(&broker, 3),
        before[0],
        "idle since boot: untouched"
    );
    assert_ne!(
        checkpoint_inode(&broker, 7),
        before[1],
        "written to: checkpointed again"
    );

    broker.spawn_and_wait();
    let client = broker.client().await;
    assert_eq!(poll_range_of(&client, 3).await, ["first"]);
    assert_eq!(poll_range_of(&client, 7).await, ["first", "second"]);
}

/// Sends producer 0's messages `seqs` to partition 0 in one batch.
async fn send_seqs(client: &IggyClient, seqs: std::ops::Range<usize>) {
    let mut batch: Vec<IggyMessage> = seqs.map(|i| message(&payload(0, i))).collect();
    client
        .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut batch)
        .await
        .unwrap();
}

/// A metric's value once it reaches `at_least`, within 10 s.
async fn metric_at_least(broker: &TestBroker, name: &str, at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(broker.http, "/metrics").unwrap();
        let value = common::metric(&metrics, name).unwrap_or(0.0);
        if value >= at_least {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {value}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checkpoints are also taken while running, not only at a clean stop, so a boot after
/// kill -9 re-verifies only what followed the last one: the pass right after a boot records
/// what that boot verified, and later passes every `storage.checkpoint_interval` what was
/// written since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_after_a_crash_verifies_only_what_followed_the_last_running_checkpoint() {
    const VERIFIED: &str = "iggy_boot_verified_bytes";
    const PASSES: &str = "iggy_checkpoint_passes_total";
    const CHECKPOINTS: &str = "iggy_partition_checkpoints_total";
    // Each boot's first pass runs at once; an interval of an hour keeps the next ones out.
    let mut broker = TestBroker::start_with(&[("IGGY_STORAGE_CHECKPOINT_INTERVAL", "1h")]);
    metric_at_least(&broker, PASSES, 1.0).await;
    let client = broker.client().await;
    setup(&client, 1).await;
    send_seqs(&client, 0..20).await;
    drop(client);
    broker.kill9();

    broker.spawn_and_wait();
    assert_eq!(
        metric_at_least(&broker, VERIFIED, 0.0).await,
        message_start(20) as f64,
        "no checkpoint yet: the boot verifies all 20 messages"
    );
    metric_at_least(&broker, PASSES, 1.0).await;
    assert_eq!(metric_at_least(&broker, CHECKPOINTS, 0.0).await, 1.0);
    let client = broker.client().await;
    send_seqs(&client, 20..25).await;
    drop(client);
    broker.kill9();

    broker.set_env("IGGY_STORAGE_CHECKPOINT_INTERVAL", "100ms");
    broker.spawn_and_wait();
    assert_eq!(
        metric_at_least(&broker, VERIFIED, 0.0).await,
        (message_start(25) - message_start(20)) as f64,
        "the last boot's first pass recorded the 20 it verified: only the 5 after them"
    );
    metric_at_least(&broker, CHECKPOINTS, 1.0).await;
    let client = broker.client().await;
    send_seqs(&client, 25..40).await;
    metric_at_least(&broker, CHECKPOINTS, 2.0).await;
    drop(client);
    broker.kill9();

    broker.spawn_and_wait();
    assert_eq!(
        metric_at_least(&broker, VERIFIED, 0.0).await,
        0.0,
        "a pass while running recorded the last 15"
    );
    let client = broker.client().await;
    let stored: Vec<String> = read_all(&client, 0)
        .await
        .iter()
        .map(|m| m.payload_as_string().unwrap())
        .collect();
    let sent: Vec<String> = (0..40).map(|i| payload(0, i)).collect();
    assert_eq!(stored, sent);
}

async fn send_one(client: &IggyClient, partition: u32, text: &str) {
    let mut messages = vec![message(text)];
    client
        .send_messages(
            &id(0),
            &id(0),
            &Partitioning::partition_id(partition),
            &mut messages,
        )
        .await
        .unwrap();
}

async fn poll_range_of(client: &IggyClient, partition: u32) -> Vec<String> {
    poll(client, partition, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.payload_as_string().unwrap())
        .collect()
}

/// SIGTERM while a send is half-way over the wire: the broker finishes reading it, applies and
/// acknowledges it, then exits cleanly — the client is not left to retry (and duplicate) a send
/// that was in fact written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_progress_at_sigterm_is_finished_and_acknowledged() {
    use iggy_wire::message::SendMessagesHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut broker = TestBroker::start_with(&[("IGGY_STORAGE_FSYNC", "always")]);
    let client = broker.client().await;
    setup(&client, 1).await;
    drop(client);

    let mut raw = tokio::net::TcpStream::connect(broker.tcp).await.unwrap();
    let login = iggy_wire::request::encode::login_user(common::ROOT_USER, common::ROOT_PASSWORD);
    let mut frame = Vec::new();
    iggy_wire::frame::RequestHeader::encode(
        iggy_wire::Command::LoginUser.code(),
        login.len(),
        &mut frame,
    );
    frame.extend_from_slice(&login);
    raw.write_all(&frame).await.unwrap();
    let mut header = [0u8; 8];
    raw.read_exact(&mut header).await.unwrap();
    let mut identity = vec![0u8; u32::from_le_bytes(header[4..].try_into().unwrap()) as usize];
    raw.read_exact(&mut identity).await.unwrap();

    let mut payload = Vec::new();
    SendMessagesHeader::encode_request(
        &iggy_wire::Identifier::Numeric(0),
        &iggy_wire::Identifier::Numeric(0),
        &iggy_wire::Partitioning::PartitionId(0),
        &[(0, b"in flight".as_slice(), b"".as_slice())],
        &mut payload,
    );
    let mut request = Vec::new();
    iggy_wire::frame::RequestHeader::encode(
        iggy_wire::Command::SendMessages.code(),
        payload.len(),
        &mut request,
    );
    request.extend_from_slice(&payload);
    let half = request.len() / 2;
    raw.write_all(&request[..half]).await.unwrap();
    // Time for the broker to read the header and start on the body, even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    common::sigterm(broker.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.write_all(&request[half..]).await.unwrap();
    let mut answer = [0u8; 8];
    raw.read_exact(&mut answer)
        .await
        .expect("an answer, not a cut connection");
    assert_eq!(&answer[..4], &[0, 0, 0, 0], "acknowledged");
    assert_eq!(broker.stop(), 0, "then a clean exit");

    broker.spawn_and_wait();
    let client = broker.client().await;
    assert_eq!(poll_range_of(&client, 0).await, ["in flight"]);
}

/// Sends batches of 10 messages to partition 0, one per round: messages `10 * round ..`.
async fn send_rounds(client: &IggyClient, rounds: std::ops::Range<usize>) {
    for round in rounds {
        let mut chunk: Vec<IggyMessage> = (0..10)
            .map(|i| message(&payload(0, round * 10 + i)))
            .collect();
        client
            .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut chunk)
            .await
            .unwrap();
    }
}

/// The active segment is scrubbed as far as its checkpoint covers it, since a boot no longer
/// verifies that part: a flipped byte there after a clean stop passes the boot unseen
/// (nothing verified) and is found by the scrubber without any poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_rot_the_checkpoint_covers_in_the_active_segment() {
    let mut broker = TestBroker::start_with(&[("IGGY_STORAGE_SCRUB_RATE", "1 MiB")]);
    let client = broker.client().await;
    setup(&client, 1).await;
    send_seqs(&client, 0..20).await;
    drop(client);
    assert_eq!(broker.stop(), 0);
    let log = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[message_start(7) + 64 + 3] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();

    broker.spawn_and_wait();
    assert_eq!(
        metric_at_least(&broker, "iggy_boot_verified_bytes", 0.0).await,
        0.0
    );
    metric_at_least(&broker, "iggy_scrub_corruptions_total", 1.0).await;
    let client = broker.client().await;
    let error = poll(&client, 0, 7, 1).await.unwrap_err();
    assert_eq!(code(error), 4027);
}

/// Rot in sealed data nobody reads is found by the scrubber: a flipped byte in the first
/// sealed segment shows up in `iggy_scrub_corruptions_total` without any poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_rot_in_sealed_segments() {
    let mut broker = TestBroker::start_with(&[
        ("IGGY_STORAGE_SEGMENT_SIZE", "4 KiB"),
        ("IGGY_STORAGE_SCRUB_RATE", "1 MiB"),
    ]);
    let client = broker.client().await;
    setup(&client, 1).await;
    send_rounds(&client, 0..6).await;
    drop(client);
    assert_eq!(broker.stop(), 0);
    let first = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let segments = std::fs::read_dir(broker.partition_dir(0, 0, 0))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(
        segments >= 2,
        "the first segment is sealed ({segments} segments)"
    );
    bytes[64 + 10] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();

    broker.spawn_and_wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(broker.http, "/metrics").unwrap();
        if metrics.contains("iggy_scrub_corruptions_total 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber did not report the damage: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sealed segment's index entries are read from its `.index` file, so rot there must neither
/// place a read nor wait for a restart: a damaged entry under a running single node (no other
/// copy) is refused with 4027, the file is rebuilt from the log, and a retry within a few
/// seconds reads every message; the file is byte for byte what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_index_entry_is_refused_then_rebuilt_from_the_log_while_running() {
    let broker = TestBroker::start_with(&[("IGGY_STORAGE_SEGMENT_SIZE", "4 KiB")]);
    let client = broker.client().await;
    setup(&client, 1).await;
    send_rounds(&client, 0..6).await;
    // The second segment's index: a poll from offset 0 reaches it through the first, so the
    // segment to rebuild is the damaged file's, not the one the poll started in.
    let mut indexes: Vec<_> = std::fs::read_dir(broker.partition_dir(0, 0, 0))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    assert!(indexes.len() >= 3, "sealed segments: {indexes:?}");
    let index = indexes[1].clone();
    let intact = std::fs::read(&index).unwrap();
    assert!(intact.len() >= 10 * 16, "the segment holds a batch");
    // Entry 3's end now points past the segment's log.
    let mut damaged = intact.clone();
    damaged[3 * 16 + 4..3 * 16 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&index, &damaged).unwrap();

    assert_eq!(code(poll_range(&client, 0, 100).await.unwrap_err()), 4027);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match poll_range(&client, 0, 100).await {
            Ok(read) => {
                assert_eq!(read, 60, "every message, after the rebuild");
                break;
            }
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "the index was not rebuilt: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&index).unwrap(), intact);
    let messages = poll(&client, 0, 0, 100).await.unwrap();
    for (n, message) in messages.iter().enumerate() {
        assert_eq!(message.payload, payload(0, n).as_bytes(), "message {n}");
    }
}

/// The scrubber meets a damaged index entry the same way, with no poll: counted, and the file
/// rebuilt from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_rebuilds_a_damaged_index_entry_from_the_log() {
    let broker = TestBroker::start_with(&[
        ("IGGY_STORAGE_SEGMENT_SIZE", "4 KiB"),
        ("IGGY_STORAGE_SCRUB_RATE", "1 MiB"),
    ]);
    let client = broker.client().await;
    setup(&client, 1).await;
    let index = broker
        .partition_dir(0, 0, 0)
        .join("00000000000000000000.index");
    // The scrubber starts on sealed data: damage the first segment before there is any.
    send_rounds(&client, 0..1).await;
    let intact = std::fs::read(&index).unwrap();
    let mut damaged = intact.clone();
    damaged[2 * 16..2 * 16 + 4].copy_from_slice(&7u32.to_le_bytes()); // entry 2 claims offset 7
    std::fs::write(&index, &damaged).unwrap();
    send_rounds(&client, 1..6).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(broker.http, "/metrics").unwrap();
        // The entries written after the damage (the segment may have taken another batch
        // before it was sealed) follow the rebuilt ones.
        let now = std::fs::read(&index).unwrap();
        if metrics.contains("iggy_scrub_corruptions_total 1") && now.starts_with(&intact) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber did not rebuild the index: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = poll(&client, 0, 0, 100).await.unwrap();
    assert_eq!(messages.len(), 60);
    for (n, message) in messages.iter().enumerate() {
        assert_eq!(message.payload, payload(0, n).as_bytes(), "message {n}");
    }
}
