//! Smoke test with the published `iggy-cli` 0.13.0 (the CLI of SDK 0.10.0): the same commands a
//! user would type. Skips with a message when `iggy` is not installed, unless
//! `IGGY_CLI_REQUIRED=1` (CI sets it after installing the CLI), in which case it fails.

mod common;

use common::{output_text, TestBroker, ROOT_PASSWORD, ROOT_USER};
use std::process::Command;

fn cli_available() -> bool {
    Command::new("iggy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `iggy <args>` against the broker and returns stdout; panics with the output on failure.
fn iggy(broker: &TestBroker, args: &[&str]) -> String {
    let tcp = broker.tcp.to_string();
    let output = Command::new("iggy")
        .args([
            "--tcp-server-address",
            &tcp,
            "-u",
            ROOT_USER,
            "-p",
            ROOT_PASSWORD,
        ])
        .args(args)
        .env("HOME", broker.data_path())
        .output()
        .expect("run iggy");
    let text = output_text(&output);
    assert!(output.status.success(), "iggy {args:?} failed: {text}");
    text
}

#[test]
fn the_published_cli_drives_the_broker() {
    if !cli_available() {
        assert!(
            std::env::var("IGGY_CLI_REQUIRED").as_deref() != Ok("1"),
            "IGGY_CLI_REQUIRED=1 but `iggy` is not on PATH"
        );
        eprintln!("SKIPPED: iggy-cli is not installed (cargo install iggy-cli@0.13.0 --locked)");
        return;
    }
    let broker = TestBroker::start();
    iggy(&broker, &["ping"]);
    iggy(&broker, &["stream", "create", "orders"]);
    iggy(
        &broker,
        &["topic", "create", "orders", "created", "2", "none"],
    );
    iggy(&broker, &["user", "create", "analyst", "analyst-pass"]);
    iggy(
        &broker,
        &[
            "message",
            "send",
            "--partition-id",
            "1",
            "orders",
            "created",
            "first",
            "second",
        ],
    );
    let polled = iggy(
        &broker,
        &[
            "message",
            "poll",
            "--first",
            "--message-count",
            "10",
            "orders",
            "created",
            "1",
        ],
    );
    assert!(
        polled.contains("first") && polled.contains("second"),
        "{polled}"
    );
    iggy(
        &broker,
        &["consumer-group", "create", "orders", "created", "billing"],
    );
    let groups = iggy(&broker, &["consumer-group", "list", "orders", "created"]);
    assert!(groups.contains("billing"), "{groups}");
    let streams = iggy(&broker, &["stream", "list"]);
    assert!(streams.contains("orders"), "{streams}");
    let users = iggy(&broker, &["user", "list"]);
    assert!(users.contains("analyst"), "{users}");
    let stats = iggy(&broker, &["stats"]);
    assert!(stats.to_lowercase().contains("messages"), "{stats}");

    // `iggy snapshot` writes the broker's archive into a directory of the caller's.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    iggy(&broker, &["snapshot", "--out-dir", out_dir]);
    let written: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let archive = zip::ZipArchive::new(std::fs::File::open(&written[0]).unwrap()).unwrap();
    let mut names: Vec<&str> = archive.file_names().collect();
    names.sort_unstable();
    // The CLI's default kinds.
    assert_eq!(
        names,
        [
            "filesystem_overview.txt",
            "process_list.txt",
            "resource_usage.txt",
            "server_logs.txt"
        ]
    );
}
