//! The replica's threads in this process: a ring of one booted for what the replica thread
//! does with its inputs, and the journal thread handing checkpoints to the checkpointer.

use super::driver::{ClientReply, DriverInput};
use super::{boot, ClientIds, Running, Setup};
use crate::broker::Broker;
use crate::config::Config;
use crate::ops::{codec, Operation, Submission};
use crate::state::catalog::ROOT_USER_ID;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Boots a replicated broker whose ring is itself alone, on `dir`.
async fn ring_of_one(dir: &std::path::Path) -> (Arc<Broker>, Running) {
    let replication = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    let ring = dir.join("ring.json");
    let json = format!(
        r#"{{"cluster_id": "unit", "epoch": 0, "members": [
            {{"id": 1, "position": 0, "address": "{replication}"}}]}}"#
    );
    std::fs::write(&ring, json).expect("ring file");
    let data = dir.join("data");
    let env = [
        ("IGGY_SYSTEM_PATH", data.display().to_string()),
        ("IGGY_ROOT_PASSWORD", "secret".to_string()),
        ("IGGY_CLUSTER_RING_FILE", ring.display().to_string()),
        ("IGGY_CLUSTER_MEMBER_ID", "1".to_string()),
        ("IGGY_REPLICATION_ADDRESS", replication.to_string()),
        (
            "IGGY_REPLICATION_SECRET",
            "a unit test's secret".to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let config = Config::load(None, env).expect("test configuration");
    let setup = Setup::load(&config).expect("a ring of one");
    let (broker, _, running) = boot(config, setup).await.expect("boots");
    // Until the ring holds settings its primary admits nothing else (`BrokerMachine::admit`);
    // the tests below hand requests to the replica thread directly, with no submitter to ask
    // again. A restarted ring holds them already.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while broker.catalog().settings.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no settings in force after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (broker, running)
}

/// Hands the replica thread a request and, unless `abandoned`, waits for its answer.
async fn request(
    running: &Running,
    client: vsr::ClientId,
    (session, request): (u64, u64),
    body: bytes::Bytes,
    abandoned: bool,
) -> Option<ClientReply> {
    let (reply, answer) = oneshot::channel();
    let answer = (!abandoned).then_some(answer);
    let input = DriverInput::Request {
        client,
        session,
        request,
        body,
        reply,
    };
    assert!(
        running.inputs.send(input).is_ok(),
        "the replica thread runs"
    );
    let answer = tokio::time::timeout(Duration::from_secs(20), answer?).await;
    Some(answer.expect("answered in time").expect("answered"))
}

/// Registers `client`'s session (request 1); returns the session number.
async fn register(running: &Running, client: vsr::ClientId) -> u64 {
    let Some(ClientReply::Done(registered)) =
        request(running, client, (0, 1), bytes::Bytes::new(), false).await
    else {
        panic!("the session registers");
    };
    u64::from_le_bytes(registered[..8].try_into().expect("a session number"))
}

fn stream_names(broker: &Broker) -> Vec<String> {
    broker
        .catalog()
        .streams
        .values()
        .map(|s| s.name.clone())
        .collect()
}

fn create_stream(name: &str) -> bytes::Bytes {
    let submission = Submission {
        user: Some(ROOT_USER_ID),
        op: Operation::CreateStream { name: name.into() },
    };
    let mut body = Vec::new();
    codec::encode(&submission, &mut body).expect("encodes");
    body.into()
}

/// A topic `t` of `partitions` partitions in stream 0, with the server's defaults.
fn create_topic(partitions: u32) -> bytes::Bytes {
    let submission = Submission {
        user: Some(ROOT_USER_ID),
        op: Operation::CreateTopic {
            stream: iggy_wire::Identifier::Numeric(0),
            partitions,
            settings: iggy_wire::request::TopicSettings {
                compression: 1,
                message_expiry: 0,
                max_topic_size: 0,
                replication_factor: 1,
                name: "t".into(),
            },
        },
    };
    let mut body = Vec::new();
    codec::encode(&submission, &mut body).expect("encodes");
    body.into()
}

/// A balanced send to topic 0 of stream 0, as a member that did not decide its partition
/// (`apply::decide_partition`) hands it to the log.
fn undecided_balanced_send(payload: &[u8]) -> bytes::Bytes {
    let mut request = Vec::new();
    iggy_wire::message::SendMessagesHeader::encode_request(
        &iggy_wire::Identifier::Numeric(0),
        &iggy_wire::Identifier::Numeric(0),
        &iggy_wire::Partitioning::Balanced,
        &[(0u128, payload, &[][..])],
        &mut request,
    );
    let submission = Submission {
        user: Some(ROOT_USER_ID),
        op: Operation::append(&mut request).expect("a valid send"),
    };
    let mut body = Vec::new();
    codec::encode(&submission, &mut body).expect("encodes");
    body.into()
}

/// A balanced send that reaches the log undecided goes where the op's entropy says, never by
/// the replica's own round-robin cursor, which no checkpoint holds (a replica restored from one
/// would start it again at 0 and store later batches elsewhere than its peers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_balanced_send_does_not_move_the_replicas_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, running) = ring_of_one(dir.path()).await;
    let client = ClientIds::new(0, 7).id(1000);
    let session = register(&running, client).await;
    let stream = request(&running, client, (session, 2), create_stream("s"), false).await;
    let topic = request(&running, client, (session, 3), create_topic(3), false).await;
    for reply in [stream, topic] {
        assert!(
            matches!(&reply, Some(ClientReply::Done(r)) if r[..4] == [0; 4]),
            "{reply:?}"
        );
    }
    for n in 0..12u64 {
        let payload = format!("undecided-{n}");
        let sent = request(
            &running,
            client,
            (session, 4 + n),
            undecided_balanced_send(payload.as_bytes()),
            false,
        )
        .await;
        assert!(
            matches!(&sent, Some(ClientReply::Done(r)) if r[..4] == [0; 4]),
            "{sent:?}"
        );
    }
    let catalog = broker.catalog();
    let (_, topic) = catalog
        .topic(
            &iggy_wire::Identifier::Numeric(0),
            &iggy_wire::Identifier::Numeric(0),
        )
        .expect("the topic exists");
    assert_eq!(topic.next_partition.load(Ordering::Relaxed), 0);
    let stored: Vec<u64> = topic
        .partitions
        .iter()
        .map(|p| p.log().next_offset())
        .collect();
    assert_eq!(stored.iter().sum::<u64>(), 12, "{stored:?}");
    assert!(
        stored.iter().filter(|n| **n > 0).count() > 1,
        "the sends spread over the partitions: {stored:?}"
    );
    drop(catalog);
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_waits_for_any_more_is_never_proposed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, running) = ring_of_one(dir.path()).await;
    let client = ClientIds::new(0, 7).id(1000);

    let session = register(&running, client).await;

    // A connection whose deadline passed while the thread was busy: its client was told to
    // retry, so the write must not happen behind its back. Its next request still runs.
    request(
        &running,
        client,
        (session, 2),
        create_stream("abandoned"),
        true,
    )
    .await;
    let kept = request(&running, client, (session, 3), create_stream("kept"), false).await;
    assert!(matches!(kept, Some(ClientReply::Done(_))), "{kept:?}");

    assert_eq!(
        stream_names(&broker),
        ["kept"],
        "only the awaited request was committed"
    );
    assert_eq!(
        broker.metrics.replication_abandoned.load(Ordering::Relaxed),
        1
    );
    running.stop();
}

/// A request that reaches the replica while it is not normal (here: recovering after a
/// restart, which a ring of one does for the recovery timeout) is dropped by the core, and
/// the driver hands it over again once the replica is normal: the request is answered with no
/// resend from its connection (this test never resends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_arrives_before_the_view_is_normal_is_answered_once_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = ClientIds::new(0, 7).id(1000);
    let (_, running) = ring_of_one(dir.path()).await;
    let session = register(&running, client).await;
    running.stop();

    let (broker, running) = ring_of_one(dir.path()).await;
    let status = broker.cluster_status().expect("cluster mode").snapshot();
    assert_ne!(
        status.status,
        Some(vsr::Status::Normal),
        "a restarted replica recovers first"
    );
    let created = request(&running, client, (session, 2), create_stream("late"), false).await;
    assert!(matches!(created, Some(ClientReply::Done(_))), "{created:?}");
    assert_eq!(stream_names(&broker), ["late"]);
    running.stop();
}

/// A session the cluster does not know executes nothing: the replica thread answers with the
/// eviction, and says whether it handed the request to the core more than once (here: again
/// once the restarted replica was normal), which tells the submitter that a copy of it may
/// have executed before the session went (`submitter.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_session_is_evicted_and_the_answer_says_whether_the_request_went_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = ClientIds::new(0, 7).id(1000);
    let (_, running) = ring_of_one(dir.path()).await;
    register(&running, client).await;
    let unknown = 999;
    let once = request(&running, client, (unknown, 2), create_stream("a"), false).await;
    assert!(
        matches!(once, Some(ClientReply::Evicted { resubmitted: false })),
        "{once:?}"
    );
    running.stop();

    let (broker, running) = ring_of_one(dir.path()).await;
    let status = broker.cluster_status().expect("cluster mode").snapshot();
    assert_ne!(status.status, Some(vsr::Status::Normal));
    let twice = request(&running, client, (unknown, 3), create_stream("b"), false).await;
    assert!(
        matches!(twice, Some(ClientReply::Evicted { resubmitted: true })),
        "{twice:?}"
    );
    assert!(stream_names(&broker).is_empty());
    running.stop();
}

/// A checkpoint write never holds up the journal's queue: the appends issued after it are
/// carried out and reported while it is still with the checkpointer (held here by never
/// taking it), and the checkpointer reports it on its own once its file is durable.
#[test]
fn the_prepares_behind_a_checkpoint_do_not_wait_for_it() {
    use super::journal::tests::prepare;
    use super::journal::{Journal, Write};
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Mutex};

    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path(), true).expect("journal").0;
    let (done, reported) = mpsc::channel();
    let (checkpoints, held) = mpsc::channel();
    let written = Arc::new(super::written::WrittenPartitions::default());
    let thread = super::JournalThread {
        journal: Arc::new(Mutex::new(journal)),
        done: done.clone(),
        written: written.clone(),
        garbage: crate::reclaim::Reclaimer::start("test-gc", 1),
        writeback_queued: Arc::new(AtomicBool::new(false)),
        checkpoints,
    };
    let checkpoint = vsr::Checkpoint::new(prepare(2, 0), b"manifest".to_vec(), 7, Vec::new());
    let wal = |op| Write::Wal {
        slot: op,
        prepare: prepare(op, 0),
    };
    assert!(thread.write(vec![
        (1, wal(1)),
        (2, Write::Checkpoint(Box::new(checkpoint.clone()))),
        (3, wal(3)),
    ]));
    let Ok(DriverInput::WriteDone(ios, _)) = reported.try_recv() else {
        panic!("the appends are reported at once");
    };
    assert_eq!(ios, [1, 3], "the checkpoint is not among them");
    let (io, taken) = held
        .try_recv()
        .expect("the checkpoint went to the checkpointer");
    assert_eq!((io, &*taken), (2, &checkpoint));

    let checkpointer = super::checkpointer::Checkpointer {
        dir: dir.path().to_path_buf(),
        done,
        written,
    }
    .start()
    .expect("starts");
    checkpointer.send((io, taken)).expect("running");
    let reported = reported
        .recv_timeout(Duration::from_secs(20))
        .expect("the checkpointer reports");
    assert!(matches!(reported, DriverInput::WriteDone(ios, _) if ios == [2]));
    assert!(super::journal::checkpoint_path(dir.path(), 2).exists());
}
