//! Start-up behaviour: configuration errors, the generated root password, clean restarts.

use std::process::{Command, Output};

fn broker(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iggy-broker"));
    command.env_clear().args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Environment, arguments, and a phrase the error must contain.
type BadStart<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: [BadStart; 8] = [
        (&[("IGGY_STORAGE_FSYNC", "sometimes")], &[], "fsync must be"),
        (&[("IGGY_TCP_ADDRESS", "not-an-address")], &[], "invalid"),
        (&[("IGGY_STORAGE_SEGMENT_SIZE", "12")], &[], "segment_size"),
        (
            &[],
            &["--config", "/nonexistent/broker.toml"],
            "/nonexistent/broker.toml",
        ),
        (&[], &["--bogus"], "unknown argument"),
        (
            &[("IGGY_TELEMETRY_TRACES_TRANSPORT", "udp")],
            &[],
            "unknown variant `udp`",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
            &[],
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not an OTLP protocol",
        ),
        (
            &[("IGGY_TELEMETRY_LOGS_ENDPIONT", "http://x")],
            &[],
            "no key 'endpiont' in section [telemetry.logs]",
        ),
    ];
    for (env, args, expected) in cases {
        let mut env = env.to_vec();
        env.push(("IGGY_SYSTEM_PATH", data));
        let output = broker(&env, args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{env:?} {args:?}: {}",
            text(&output)
        );
        assert!(
            text(&output).contains(expected),
            "{expected}: {}",
            text(&output)
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is created before the configuration is valid"
    );
}

#[test]
fn a_missing_root_password_is_generated_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let env = [
        ("IGGY_SYSTEM_PATH", data),
        ("IGGY_TCP_ADDRESS", tcp.as_str()),
        ("IGGY_HTTP_ADDRESS", http.as_str()),
    ];
    let run_briefly = || {
        let child = broker(&env, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&tcp).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let first = run_briefly();
    assert!(first.contains("Generated root password"), "{first}");
    // The log goes to stdout at the default level (an empty set of OTLP layers once silenced
    // every log line).
    for line in ["iggy-broker ready", "stopped cleanly"] {
        assert!(
            first.contains(line),
            "{line:?} missing from stdout: {first}"
        );
    }
    let metadata = std::fs::read_to_string(dir.path().join("state/metadata.json")).unwrap();
    let password = first
        .split("store it now): ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(!metadata.contains(password), "only a hash is stored");
    let second = run_briefly();
    assert!(
        !second.contains("Generated root password"),
        "printed once: {second}"
    );
}

/// Cluster mode without the replication secret, or with one too short to resist guessing,
/// stops before touching data; the message names the setting and never prints the value.
#[test]
fn cluster_mode_needs_a_replication_secret_of_at_least_16_bytes() {
    let rings = tempfile::tempdir().unwrap();
    let ring = rings.path().join("ring.json");
    std::fs::write(
        &ring,
        r#"{"cluster_id": "c", "epoch": 0, "members": [
            {"id": 1, "position": 0, "address": "127.0.0.1:1"}]}"#,
    )
    .unwrap();
    let ring = ring.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let cases: [(Option<&str>, &str); 2] = [
        (
            None,
            "cluster mode needs replication.secret (IGGY_REPLICATION_SECRET)",
        ),
        (Some("hunter2hunter2"), "replication.secret has 14 bytes"),
    ];
    for (secret, expected) in cases {
        let mut env = vec![
            ("IGGY_SYSTEM_PATH", data),
            ("IGGY_ROOT_PASSWORD", "root-password"),
            ("IGGY_CLUSTER_RING_FILE", ring),
            ("IGGY_CLUSTER_MEMBER_ID", "1"),
        ];
        env.extend(secret.map(|s| ("IGGY_REPLICATION_SECRET", s)));
        let output = broker(&env, &[]).output().unwrap();
        let text = text(&output);
        assert_eq!(output.status.code(), Some(2), "{secret:?}: {text}");
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(!text.contains("hunter2"), "the secret is printed: {text}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is created before the configuration is valid"
    );
}
