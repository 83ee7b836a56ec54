//! The real `iggy-sidecar` binary next to the real `iggy-broker` binary, against the in-process
//! API server: the sidecar reads the broker's `GET /admin/status` and sets its pod's
//! `iggy.rs/replica-ready` condition True and labels the pod with the broker's role (a single
//! node is its own primary); when the broker stops, False with the reason, and no role. And the
//! ring: the sidecar watches its ring ConfigMap and hands each new ring.json to the broker, which
//! takes the ring it runs and refuses another with the reason — also across a reset of the API
//! server's watches. Loopback only; both processes
//! are started here, bounded in time, and killed at the end.

use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POD: &str = "events-0";
const NS: &str = "default";

/// A child process killed when dropped, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// The broker binary the workspace's test build made next to this test's own directory.
fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("iggy-broker"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: build it with the workspace (cargo nextest run --workspace)",
        path.display()
    );
    path
}

/// The broker of pod `POD`: a single node with its data under `work`, admin API on `http`.
fn broker_command(work: &std::path::Path, http: SocketAddr) -> Command {
    let mut command = Command::new(broker_binary());
    command
        .env_clear()
        .env("IGGY_SYSTEM_PATH", work.join("data"))
        .env("IGGY_TCP_ADDRESS", free_port().to_string())
        .env("IGGY_HTTP_ADDRESS", http.to_string())
        .env("IGGY_ROOT_PASSWORD", "test-secret")
        .env("IGGY_LOGGING_LEVEL", "warn")
        .stdout(Stdio::null());
    command
}

/// The sidecar of pod `POD`, reaching the API through `kubeconfig` and its broker at `http`.
fn sidecar_command(kubeconfig: &std::path::Path, http: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iggy-sidecar"));
    command
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", POD)
        .env("POD_NAMESPACE", NS)
        .env("IGGY_BROKER_ADMIN_URL", format!("http://{http}"))
        .stdout(Stdio::null());
    command
}

fn gate(harness: &kube_harness::Harness) -> (String, String) {
    let pod = harness.get("", "Pod", NS, POD).unwrap_or(Value::Null);
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions
        .iter()
        .find(|c| c["type"] == "iggy.rs/replica-ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

fn role(harness: &kube_harness::Harness) -> Value {
    let pod = harness.get("", "Pod", NS, POD).unwrap_or(Value::Null);
    pod["metadata"]["labels"]["iggy.rs/role"].clone()
}

async fn wait_for(harness: &kube_harness::Harness, status: &str, reason: &str, label: Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (seen, labelled) = (gate(harness), role(harness));
        if seen.0 == status && seen.1 == reason && labelled == label {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gate is {seen:?} and role {labelled}, waited for {status} {reason} and {label}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_reports_its_real_broker_into_the_pod() {
    let harness = kube_harness::Harness::start(kube_harness::HarnessOptions::default())
        .await
        .expect("harness starts");
    harness
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {POD}\n  namespace: {NS}\nspec:\n  \
             readinessGates:\n  - conditionType: iggy.rs/replica-ready\n  containers:\n  - name: \
             broker\n    image: ghcr.io/iggy-rs/iggy-broker:0.1.0\n"
        ))
        .expect("pod created");
    let work = tempfile::tempdir().expect("temp dir");
    let kubeconfig = work.path().join("kubeconfig");
    harness.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let http = free_port();
    let mut broker = Running(
        broker_command(work.path(), http)
            .spawn()
            .expect("broker starts"),
    );
    let _sidecar = Running(
        sidecar_command(&kubeconfig, http)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("sidecar starts"),
    );
    wait_for(&harness, "True", "BrokerCaughtUp", "primary".into()).await;

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(broker.0.id().to_string())
        .status();
    let _ = broker.0.wait();
    wait_for(&harness, "False", "BrokerUnreachable", Value::Null).await;
}

/// Lines a child writes to stderr (where the sidecar logs), collected by a thread as they come.
fn collect_lines(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stderr.take().expect("piped stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

async fn wait_for_line(lines: &std::sync::Mutex<Vec<String>>, all_of: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if lines
            .lock()
            .expect("lines")
            .iter()
            .any(|line| all_of.iter().all(|part| line.contains(part)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no sidecar log line with {all_of:?}; it wrote: {:#?}",
            lines.lock().expect("lines")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ring_config_map(ring: &Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "events-ring", "namespace": NS},
        "data": {"ring.json": ring.to_string()},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_hands_its_ring_configmap_to_the_broker() {
    let harness = kube_harness::Harness::start(kube_harness::HarnessOptions::default())
        .await
        .expect("harness starts");
    let work = tempfile::tempdir().expect("temp dir");
    let kubeconfig = work.path().join("kubeconfig");
    harness.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let replication = free_port();
    let ring = serde_json::json!({
        "cluster_id": "uid-events",
        "epoch": 1,
        "members": [{"id": 0, "position": 0, "address": replication.to_string()}],
        "next_member_id": 1,
    });
    let ring_file = work.path().join("ring.json");
    std::fs::write(&ring_file, ring.to_string()).expect("ring file");
    harness
        .apply_yaml(&ring_config_map(&ring))
        .expect("ring ConfigMap");
    let http = free_port();
    let _broker = Running(
        broker_command(work.path(), http)
            .env("IGGY_CLUSTER_RING_FILE", &ring_file)
            .env("IGGY_CLUSTER_MEMBER_ID", "0")
            .env("IGGY_REPLICATION_ADDRESS", replication.to_string())
            .env("IGGY_REPLICATION_SECRET", "the sidecar test's secret")
            .spawn()
            .expect("broker starts"),
    );
    let mut sidecar = Running(
        sidecar_command(&kubeconfig, http)
            .env("IGGY_RING_CONFIGMAP", "events-ring")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("sidecar starts"),
    );
    let lines = collect_lines(&mut sidecar.0);
    // The broker may still be starting: the sidecar keeps posting until it answers.
    wait_for_line(&lines, &["handed the ring to the broker", "applied=true"]).await;

    // The API server drops every watch and forgets its history; then a ring with two more
    // members is published, members that never followed as standbys. The sidecar lists again,
    // finds it, and the broker refuses it with the reason.
    harness.reset_watches();
    let mut grown = ring.clone();
    grown["epoch"] = serde_json::json!(2);
    grown["next_member_id"] = serde_json::json!(3);
    for id in [1, 2] {
        grown["members"]
            .as_array_mut()
            .expect("members")
            .push(serde_json::json!({"id": id, "position": id, "address": format!("127.0.0.1:{}", 9 + id)}));
    }
    harness
        .apply_yaml(&ring_config_map(&grown))
        .expect("ring ConfigMap updated");
    wait_for_line(
        &lines,
        &[
            "the broker refused the ring",
            "first follow the log as a standby",
        ],
    )
    .await;
}
