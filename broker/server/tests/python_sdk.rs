//! The published Python SDK (PyPI `apache-iggy` 0.8.0) against real brokers: the user flow in
//! `tests/python/sdk_flow.py` (streams, topics, sends, polls, a consumer group committing as
//! it polls), then the result read back with the Rust SDK. Skips with a message when the
//! package is not installed, unless `IGGY_PYTHON_REQUIRED=1` (CI sets it after installing it),
//! in which case it fails.

mod common;

use common::cluster::TestCluster;
use common::pki::{borrowed, served_by, tls_client, tls_env, Pki};
use common::{name, output_text, read_all, unpadded, TestBroker, ROOT_PASSWORD, ROOT_USER};
use iggy::prelude::*;
use std::process::Command;
use std::time::Duration;

fn sdk_available() -> bool {
    let installed = Command::new("python3")
        .args(["-c", "import apache_iggy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var("IGGY_PYTHON_REQUIRED").as_deref() != Ok("1"),
            "IGGY_PYTHON_REQUIRED=1 but the apache_iggy package cannot be imported"
        );
        eprintln!("SKIPPED: the Python SDK is not installed (pip install apache-iggy==0.8.0)");
    }
    installed
}

/// Runs the flow against `address` (or a connection string); panics with the script's output
/// when it fails.
fn run_flow(address: impl ToString) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_flow.py");
    let output = Command::new("timeout")
        .args(["60", "python3", script, &address.to_string(), ROOT_PASSWORD])
        .output()
        .expect("run python3");
    let text = output_text(&output);
    assert!(
        output.status.success(),
        "the Python flow failed ({}):\n{text}",
        output.status
    );
    assert!(text.contains("python sdk flow: ok"), "{text}");
}

/// What the flow leaves behind, as the Rust SDK reads it from `client`'s broker.
async fn check_what_the_flow_left(client: &IggyClient) {
    let payloads: Vec<String> = read_all(client, 1)
        .await
        .iter()
        .map(|m| unpadded(&m.payload))
        .collect();
    let sent: Vec<String> = (0..10).map(|i| format!("event {i}")).collect();
    assert_eq!(payloads, sent);
    assert!(read_all(client, 0).await.is_empty());
    let stored = client
        .get_consumer_offset(
            &Consumer::group(name("readers")),
            &name("py"),
            &name("events"),
            Some(1),
        )
        .await
        .expect("the group's offset")
        .expect("stored as the group polled");
    assert_eq!(stored.stored_offset, 9);
}

#[tokio::test]
async fn the_published_python_sdk_drives_a_broker() {
    if !sdk_available() {
        return;
    }
    let broker = TestBroker::start();
    run_flow(broker.tcp);
    check_what_the_flow_left(&broker.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_through_a_backup_unaware_of_the_cluster() {
    if !sdk_available() {
        return;
    }
    let cluster = TestCluster::start(3, &[]);
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let backup = (0..3).find(|m| *m != primary).expect("a backup");
    run_flow(cluster.brokers[backup].tcp);
    // Replicated: the primary holds what a client of the backup wrote and consumed.
    check_what_the_flow_left(&cluster.brokers[primary].client().await).await;
}

/// The same flow over TLS, with the connection string that carries this SDK's TLS settings and
/// a certificate of the test's own issuer.
#[tokio::test]
async fn the_published_python_sdk_works_over_tls() {
    if !sdk_available() {
        return;
    }
    let pki = Pki::new();
    let files = served_by(&pki);
    let env = tls_env(files.path());
    let broker = TestBroker::start_with(&borrowed(&env));
    run_flow(format!(
        "iggy://{ROOT_USER}:{ROOT_PASSWORD}@{}?tls=true&tls_domain=localhost&tls_ca_file={}",
        broker.tcp,
        pki.ca_file().display()
    ));
    let client = tls_client(broker.tcp, &pki.ca_file())
        .await
        .expect("a Rust SDK client over TLS");
    check_what_the_flow_left(&client).await;
}
