//! TLS on the client port (`[tcp.tls]`, `net::tls`) with the unchanged Iggy Rust SDK: clients
//! that trust the issuer work as over plain TCP, on a single node and through every member of a
//! replicated broker; clients that do not, or that speak plain TCP, are refused without harm to
//! anyone else; a renewed certificate is served without a restart; a certificate that cannot
//! be served stops the broker with exit code 2 before it touches its data.

mod common;

use common::cluster::TestCluster;
use common::pki::{borrowed, served_by, tls_client, tls_env, Pki};
use common::{create_topic, http_get, id, message, metric, name, TestBroker};
use iggy::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Messages of 1 to 300 KiB: requests larger than a TLS record and than the SDK's write
/// buffer, so a payload arrives after its header in pieces.
fn payloads() -> Vec<String> {
    (0..12)
        .map(|i| format!("{i}:{}", "x".repeat(1 << (i + 8))))
        .collect()
}

async fn send_and_read_back(writer: &IggyClient, reader: &IggyClient, stream: &str) {
    writer.create_stream(stream).await.expect("create stream");
    create_topic(writer, &name(stream), "t", 1).await;
    let payloads = payloads();
    for chunk in payloads.chunks(4) {
        let mut batch: Vec<IggyMessage> = chunk.iter().map(|p| message(p)).collect();
        writer
            .send_messages(
                &name(stream),
                &name("t"),
                &Partitioning::partition_id(0),
                &mut batch,
            )
            .await
            .expect("send over TLS");
    }
    // A member other than the one written through may show the last commit a tick later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut read = read_all_of(reader, stream).await;
    while read != payloads && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        read = read_all_of(reader, stream).await;
    }
    assert_eq!(read, payloads, "what was sent over TLS reads back whole");
}

async fn read_all_of(client: &IggyClient, stream: &str) -> Vec<String> {
    let polled = client
        .poll_messages(
            &name(stream),
            &name("t"),
            Some(0),
            &Consumer::new(id(1)),
            &PollingStrategy::offset(0),
            1000,
            false,
        )
        .await
        .expect("poll over TLS");
    polled
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_that_trust_the_issuer_work_and_others_are_refused_harmlessly() {
    let pki = Pki::new();
    let files = served_by(&pki);
    let env = tls_env(files.path());
    let broker = TestBroker::start_with(&borrowed(&env));

    let client = tls_client(broker.tcp, &pki.ca_file())
        .await
        .expect("a client trusting the issuer connects and logs in");
    send_and_read_back(&client, &client, "secure").await;

    // A client that speaks plain TCP to the TLS port gets no session.
    let plain = IggyClient::builder()
        .with_tcp()
        .with_server_address(broker.tcp.to_string())
        .build()
        .expect("build");
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        plain.connect().await?;
        plain
            .login_user(common::ROOT_USER, common::ROOT_PASSWORD)
            .await
    })
    .await
    .expect("a plain client is answered (closed), not left waiting");
    assert!(refused.is_err(), "a plain TCP login on the TLS port failed");

    // A client that trusts another issuer refuses the broker's certificate.
    let stranger = Pki::new();
    assert!(
        tls_client(broker.tcp, &stranger.ca_file()).await.is_err(),
        "a client that does not trust the issuer does not connect"
    );

    // Both refusals counted (the plain client's SDK may have tried more than once).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(broker.http, "/metrics").expect("metrics");
        let failures = metric(&metrics, "iggy_tls_handshake_failures_total").unwrap_or(0.0);
        if failures >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "refusals counted: {failures}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The session that was open is untouched, and a new one works too.
    assert_eq!(read_all_of(&client, "secure").await, payloads());
    let again = tls_client(broker.tcp, &pki.ca_file())
        .await
        .expect("reconnect");
    assert_eq!(read_all_of(&again, "secure").await, payloads());
}

/// A peer that opens the TLS port and never finishes a handshake holds its socket no longer
/// than `tcp.login_timeout`, like a plain client that never logs in.
#[test]
fn a_stalled_handshake_is_closed_after_the_login_timeout() {
    use std::io::Read;
    let pki = Pki::new();
    let files = served_by(&pki);
    let mut env = tls_env(files.path());
    env.push(("IGGY_TCP_LOGIN_TIMEOUT", "1s".to_string()));
    let broker = TestBroker::start_with(&borrowed(&env));
    let mut stalled = std::net::TcpStream::connect(broker.tcp).expect("connect");
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let opened = Instant::now();
    let mut buffer = [0u8; 16];
    let read = stalled.read(&mut buffer);
    let held = opened.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the broker closed the socket: {read:?}"
    );
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(10),
        "closed after {held:?}, not at the 1 s login timeout"
    );
    // Counted just after the socket closes: waited for, not read at once.
    common::wait_metric(&broker, "iggy_tls_handshake_failures_total", 1.0);
    common::wait_metric(&broker, "iggy_connections_open", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let first = Pki::new();
    let files = served_by(&first);
    let env = tls_env(files.path());
    let broker = TestBroker::start_with(&borrowed(&env));
    let before = tls_client(broker.tcp, &first.ca_file())
        .await
        .expect("connect");
    before.create_stream("renewal").await.expect("create");

    // Renewed by another issuer, put in place the way a Secret volume swaps its files.
    let second = Pki::new();
    assert!(tls_client(broker.tcp, &second.ca_file()).await.is_err());
    // The served certificate's expiry is exported; the first runs to 2040 (`issue_into`).
    common::wait_metric(
        &broker,
        "iggy_tls_certificate_expiry_timestamp_seconds",
        2_208_988_800.0,
    );
    let staged = tempfile::tempdir_in(files.path()).expect("dir");
    second.issue_until(staged.path(), 2041);
    for file in ["tls.key", "tls.crt"] {
        std::fs::rename(staged.path().join(file), files.path().join(file)).expect("swap");
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match tls_client(broker.tcp, &second.ca_file()).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the renewed certificate was never served: {e}"),
        }
    };
    common::wait_metric(
        &broker,
        "iggy_tls_certificate_expiry_timestamp_seconds",
        2_240_611_200.0,
    );
    let streams = after.get_streams().await.expect("list");
    assert!(streams.iter().any(|s| s.name == "renewal"));
    // The connection from before the renewal keeps working.
    before
        .ping()
        .await
        .expect("the earlier session is still served");
    // The old certificate is no longer presented to new connections.
    assert!(tls_client(broker.tcp, &first.ca_file()).await.is_err());
}

#[test]
fn a_certificate_that_cannot_be_served_stops_the_broker_before_it_touches_data() {
    let pki = Pki::new();
    let files = served_by(&pki);
    let mut broker = TestBroker::start();
    broker.stop();
    let before = listing(broker.data_path());

    broker.set_env("IGGY_TCP_TLS_ENABLED", "true");
    let (code, output) = broker.run_expecting_failure();
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("tcp.tls.cert_file is empty"), "{output}");

    // A key that belongs to another certificate.
    let other = served_by(&pki);
    for (key, value) in tls_env(files.path()) {
        broker.set_env(key, &value);
    }
    broker.set_env(
        "IGGY_TCP_TLS_KEY_FILE",
        &other.path().join("tls.key").display().to_string(),
    );
    let (code, output) = broker.run_expecting_failure();
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("does not belong to the certificate"),
        "{output}"
    );
    assert_eq!(
        listing(broker.data_path()),
        before,
        "the data directory was not touched"
    );
}

/// What the broker serves is in its log from the start: the file, the names the certificate
/// is for and the time it has left. The broker is stopped right after, by an occupied HTTP
/// port, to read its output whole.
#[test]
fn the_served_certificate_is_logged_with_its_names_and_time_left() {
    let pki = Pki::new();
    let files = served_by(&pki);
    let mut broker = TestBroker::start();
    broker.stop();
    for (key, value) in tls_env(files.path()) {
        broker.set_env(key, &value);
    }
    broker.set_env("IGGY_LOGGING_LEVEL", "info");
    let _occupied = std::net::TcpListener::bind(broker.http).expect("hold the HTTP port");
    let (code, output) = broker.run_expecting_failure();
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("http.address"), "{output}");
    assert!(
        output.contains("tcp.tls: serving the certificate in cert_file"),
        "{output}"
    );
    assert!(
        output.contains(r#"names=["localhost", "127.0.0.1"]"#),
        "{output}"
    );
    assert!(output.contains("tcp.tls: certificate valid"), "{output}");
}

/// Every file under `dir` with its length and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let entry = entry.expect("entry");
            let metadata = entry.metadata().expect("metadata");
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                found.push((
                    entry.path(),
                    metadata.len(),
                    metadata.modified().expect("mtime"),
                ));
            }
        }
    }
    found.sort();
    found
}

/// Every member of a replicated broker serves TLS: a write through one member reads back
/// through another (the backups forward over the replication port, which TLS does not touch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_replicated_broker_serves_tls() {
    let pki = Pki::new();
    let files = served_by(&pki);
    let env = tls_env(files.path());
    let cluster = TestCluster::start(3, &borrowed(&env));
    let writer = tls_client(cluster.brokers[1].tcp, &pki.ca_file())
        .await
        .expect("connect to a member");
    let reader = tls_client(cluster.brokers[2].tcp, &pki.ca_file())
        .await
        .expect("connect to another member");
    send_and_read_back(&writer, &reader, "replicated").await;
    let through_first = tls_client(cluster.brokers[0].tcp, &pki.ca_file())
        .await
        .expect("connect to the third member");
    assert_eq!(read_all_of(&through_first, "replicated").await, payloads());
}
