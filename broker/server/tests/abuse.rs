//! Hostile load that must not take the broker down: a burst of wrong logins, sockets that never
//! log in, requests that stop half-way, more connections than allowed. Bounded in count and
//! time, loopback only.

mod common;

use common::{http_get, TestBroker};
use iggy::prelude::*;
use iggy_wire::request::encode;
use iggy_wire::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WRONG_LOGINS: usize = 300;

/// A memory figure of a process from /proc/<pid>/status (`VmHWM` peak, `VmRSS` now), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or_else(|| panic!("{field} missing"))
}

/// One connection, one wrong login; returns the status it got.
async fn wrong_login(address: std::net::SocketAddr, n: usize) -> u32 {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let payload = encode::login_user(common::ROOT_USER, &format!("wrong-{n}"));
    let mut frame = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::LoginUser.code(), payload.len(), &mut frame);
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.expect("send");
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.expect("answer");
    u32::from_le_bytes(header[..4].try_into().expect("4 bytes"))
}

/// 300 simultaneous wrong logins: each is answered (wrong credentials, or busy once the hashing
/// queue is full), a logged-in client's pings stay fast, and memory stays bounded — hashing runs
/// on a bounded pool instead of one argon2 run (19 MiB) per login at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_logins_neither_starves_clients_nor_eats_memory() {
    // Throttling off, so every login reaches the hashing pool: that is what is measured here.
    let broker = TestBroker::start_with(&[("IGGY_AUTH_THROTTLE_AFTER", "1000000")]);
    let client = broker.client().await;
    client.ping().await.expect("ping");
    let address = broker.tcp;
    let burst = tokio::spawn(async move {
        let tasks: Vec<_> = (0..WRONG_LOGINS)
            .map(|n| tokio::spawn(wrong_login(address, n)))
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.expect("login task"));
        }
        statuses
    });
    let mut slowest = Duration::ZERO;
    while !burst.is_finished() {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), client.ping())
            .await
            .expect("ping answered within 30 s")
            .expect("ping");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = tokio::time::timeout(Duration::from_secs(120), burst)
        .await
        .expect("every login answered within two minutes")
        .expect("burst");
    let wrong = statuses.iter().filter(|s| **s == 42).count();
    let busy = statuses.iter().filter(|s| **s == 1).count();
    assert_eq!(wrong + busy, WRONG_LOGINS, "{statuses:?}");
    assert!(wrong > 0, "some logins are checked, not all refused");
    let peak = status_mib(broker.pid(), "VmHWM");
    assert!(peak < 512.0, "peak RSS {peak:.0} MiB");
    assert!(slowest < Duration::from_secs(1), "slowest ping {slowest:?}");
    eprintln!(
        "{wrong} wrong, {busy} refused as busy; slowest ping {slowest:?}; peak RSS {peak:.0} MiB"
    );
    // The right password still works afterwards.
    broker
        .client()
        .await
        .ping()
        .await
        .expect("login after the burst");
}

/// Reads until the peer closes; true if it closed (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 64];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn metric(broker: &TestBroker, name: &str) -> u64 {
    let (_, text) = http_get(broker.http, "/metrics").expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Slowloris: a socket that never logs in is closed after `tcp.login_timeout`, and one that
/// stops half-way through a request after `tcp.request_timeout`; logged-in clients may idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed() {
    let broker = TestBroker::start_with(&[
        ("IGGY_TCP_LOGIN_TIMEOUT", "500ms"),
        ("IGGY_TCP_REQUEST_TIMEOUT", "500ms"),
    ]);
    let client = broker.client().await;
    let mut silent = TcpStream::connect(broker.tcp).await.expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a silent stranger is closed"
    );
    // Logged in, then half a request: the header promises 100 bytes, 10 arrive.
    let mut stalled = TcpStream::connect(broker.tcp).await.expect("connect");
    let payload = encode::login_user(common::ROOT_USER, common::ROOT_PASSWORD);
    let mut frame = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::LoginUser.code(), payload.len(), &mut frame);
    frame.extend_from_slice(&payload);
    stalled.write_all(&frame).await.expect("login");
    let mut answer = [0u8; 8];
    stalled.read_exact(&mut answer).await.expect("login answer");
    assert_eq!(&answer[..4], &[0, 0, 0, 0], "logged in");
    let length = u32::from_le_bytes(answer[4..].try_into().expect("4 bytes")) as usize;
    let mut identity = vec![0u8; length];
    stalled.read_exact(&mut identity).await.expect("identity");
    let mut half = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::CreateStream.code(), 100, &mut half);
    half.extend_from_slice(&[7u8; 10]);
    stalled.write_all(&half).await.expect("half a request");
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)).await,
        "a stalled request is abandoned"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    client
        .ping()
        .await
        .expect("an idle logged-in client stays connected");
    assert!(metric(&broker, "iggy_connections_timed_out_total") >= 2);
}

/// A raw connection that has answered a ping, so the broker has surely counted it; `None` if
/// the broker closed it instead.
async fn pinged_connection(broker: &TestBroker) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(broker.tcp).await.ok()?;
    let mut ping = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::Ping.code(), 0, &mut ping);
    stream.write_all(&ping).await.ok()?;
    let mut answer = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .ok()?
        .ok()?;
    (answer == [0u8; 8]).then_some(stream)
}

/// More connections than `tcp.max_connections`: the extra ones are closed at once and counted;
/// once one closes, a new one is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_cleanly() {
    let broker = TestBroker::start_with(&[("IGGY_TCP_MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pinged_connection(&broker).await.expect("within the cap"));
    }
    let mut extra = TcpStream::connect(broker.tcp)
        .await
        .expect("the kernel accepts");
    assert!(
        closed_within(&mut extra, Duration::from_secs(10)).await,
        "the fourth connection is closed"
    );
    assert!(pinged_connection(&broker).await.is_none(), "still full");
    assert_eq!(metric(&broker, "iggy_connections_refused_total"), 2);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinged_connection(&broker).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "a slot frees when a client leaves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection that logged in as root over the raw protocol.
async fn logged_in_raw(broker: &TestBroker) -> TcpStream {
    let mut stream = TcpStream::connect(broker.tcp).await.expect("connect");
    let payload = encode::login_user(common::ROOT_USER, common::ROOT_PASSWORD);
    let mut frame = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::LoginUser.code(), payload.len(), &mut frame);
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.expect("login");
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.expect("login answer");
    let length = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
    let mut identity = vec![0u8; length];
    stream.read_exact(&mut identity).await.expect("identity");
    stream
}

/// The first ten messages of stream 0, topic 0, partition 0.
async fn first_ten(client: &IggyClient) -> Result<PolledMessages, IggyError> {
    client
        .poll_messages(
            &common::id(0),
            &common::id(0),
            Some(0),
            &Consumer::new(common::id(1)),
            &PollingStrategy::offset(0),
            10,
            false,
        )
        .await
}

/// Readers that poll everything and never read: each holds only the share of the memory budget
/// it got, the broker's memory stays bounded by the budget, other clients keep being answered
/// (with fewer or no messages while the budget is taken), and the budget comes back when the
/// stuck readers go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_hold_a_bounded_share_of_memory() {
    const STUCK: usize = 20;
    let broker = TestBroker::start_with(&[("IGGY_TCP_MEMORY_BUDGET", "48 MiB")]);
    let client = broker.client().await;
    client.create_stream("big").await.expect("stream");
    common::create_topic(&client, &common::id(0), "t", 1).await;
    let payload = "x".repeat(1000);
    for _ in 0..40 {
        let mut batch: Vec<IggyMessage> = (0..1000).map(|_| common::message(&payload)).collect();
        client
            .send_messages(
                &common::id(0),
                &common::id(0),
                &Partitioning::partition_id(0),
                &mut batch,
            )
            .await
            .expect("send");
    }
    let poll = |count: u32| {
        let target = iggy_wire::request::PartitionRef {
            consumer: iggy_wire::Consumer {
                kind: iggy_wire::ConsumerKind::Consumer,
                id: iggy_wire::Identifier::Numeric(1),
            },
            stream: iggy_wire::Identifier::Numeric(0),
            topic: iggy_wire::Identifier::Numeric(0),
            partition: Some(0),
        };
        let payload =
            encode::poll_messages(&target, iggy_wire::PollingStrategy::Offset(0), count, false);
        let mut frame = Vec::new();
        iggy_wire::frame::RequestHeader::encode(
            Command::PollMessages.code(),
            payload.len(),
            &mut frame,
        );
        frame.extend_from_slice(&payload);
        frame
    };
    let before = status_mib(broker.pid(), "VmRSS");
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let mut stream = logged_in_raw(&broker).await;
        stream.write_all(&poll(1_000_000)).await.expect("poll");
        stuck.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = status_mib(broker.pid(), "VmRSS");
    // Without the budget every stuck reader would hold ~40 MB: 800 MB in all.
    assert!(
        during - before < 150.0,
        "RSS grew from {before:.0} to {during:.0} MiB"
    );
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), first_ten(&client))
        .await
        .expect("another client is answered")
        .expect("poll");
    assert!(answered.messages.len() <= 10);
    eprintln!(
        "RSS {before:.0} -> {during:.0} MiB with {STUCK} stuck readers; other poll answered in {:?} with {} messages",
        started.elapsed(),
        answered.messages.len()
    );
    drop(stuck);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let polled = first_ten(&client).await.expect("poll");
        if polled.messages.len() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget comes back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Repeated failures are throttled per address and per user: inside the window even the right
/// password is refused without a check (the same answer as a wrong one), and it works again
/// once the window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_logins_are_throttled() {
    let broker = TestBroker::start_with(&[
        ("IGGY_AUTH_THROTTLE_AFTER", "3"),
        ("IGGY_AUTH_THROTTLE_BASE", "400ms"),
        ("IGGY_AUTH_THROTTLE_MAX", "400ms"),
    ]);
    let client = broker.anonymous_client().await;
    for _ in 0..3 {
        let error = client
            .login_user(common::ROOT_USER, "wrong")
            .await
            .unwrap_err();
        assert_eq!(common::code(error), 42);
    }
    let error = client
        .login_user(common::ROOT_USER, common::ROOT_PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(common::code(error), 42, "throttled: refused unchecked");
    assert_eq!(metric(&broker, "iggy_logins_throttled_total"), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .login_user(common::ROOT_USER, common::ROOT_PASSWORD)
        .await
        .expect("the window has passed");
}

/// The soft and hard "Max open files" of a process, from /proc.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

/// Started under a soft open-files limit of 64, the broker raises it to the hard limit, so a
/// topic of 200 partitions (two files each) can be created and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_descriptor_limit_is_raised_at_start() {
    let broker = TestBroker::start_with(&[(common::SOFT_NOFILE, "64")]);
    let (soft, hard) = open_files_limits(broker.pid());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    let client = broker.client().await;
    client.create_stream("wide").await.expect("stream");
    common::create_topic(&client, &common::id(0), "t", 200).await;
    for partition in [0, 199] {
        let mut messages = vec![common::message("x")];
        client
            .send_messages(
                &common::id(0),
                &common::id(0),
                &Partitioning::partition_id(partition),
                &mut messages,
            )
            .await
            .expect("send");
    }
}

/// Partition `p` of topic `t` holds the one message `t/p`.
async fn read_back(client: &IggyClient, t: u32, p: u32) {
    let polled = client
        .poll_messages(
            &common::id(0),
            &common::id(t),
            Some(p),
            &Consumer::new(common::id(1)),
            &PollingStrategy::offset(0),
            10,
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("poll {t}/{p}: {e}"));
    assert_eq!(polled.messages.len(), 1, "{t}/{p}");
    assert_eq!(
        &polled.messages[0].payload[..],
        format!("{t}/{p}").as_bytes()
    );
}

/// 10,000 partitions under a hard limit of 1,024 open files: segment files are opened on demand
/// within a budget (480 here), so every partition can be created, written and read, the broker
/// shuts down cleanly in bounded time, and starts again on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_partitions_work_under_a_limit_of_1024_descriptors() {
    const TOPICS: u32 = 100;
    const PER_TOPIC: u32 = 100;
    let mut broker = TestBroker::start_with(&[(common::NOFILE, "1024")]);
    let (soft, hard) = open_files_limits(broker.pid());
    assert_eq!((soft.as_str(), hard.as_str()), ("1024", "1024"));
    let client = broker.client().await;
    client.create_stream("wide").await.expect("stream");
    for t in 0..TOPICS {
        common::create_topic(&client, &common::id(0), &format!("t{t}"), PER_TOPIC).await;
    }
    for t in 0..TOPICS {
        for p in 0..PER_TOPIC {
            let mut messages = vec![common::message(&format!("{t}/{p}"))];
            client
                .send_messages(
                    &common::id(0),
                    &common::id(t),
                    &Partitioning::partition_id(p),
                    &mut messages,
                )
                .await
                .unwrap_or_else(|e| panic!("send to {t}/{p}: {e}"));
        }
    }
    let open = metric(&broker, "iggy_segment_files_open");
    assert!(open <= 480, "{open} segment files open, budget 480");
    // Every partition reads back what it was sent (files closed meanwhile are reopened).
    for t in 0..TOPICS {
        for p in 0..PER_TOPIC {
            read_back(&client, t, p).await;
        }
    }
    drop(client);

    let stopping = Instant::now();
    assert_eq!(broker.stop(), 0, "clean stop");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    broker.spawn_and_wait();
    let client = broker.client().await;
    for (t, p) in [(0, 0), (37, 61), (99, 99)] {
        read_back(&client, t, p).await;
    }
}
