//! Shared setup: a kube-harness API server, a kube client on its kubeconfig, the CRD
//! installed, and the real operator running in-process.

#![allow(dead_code)]

use iggy_operator::crd::{IggyCluster, IggyClusterSpec};
use iggy_operator::leader::LeaseSettings;
use iggy_operator::metrics::Metrics;
use iggy_operator::names::READINESS_GATE;
use iggy_operator::Settings;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt};
use kube_harness::controllers::ControllerOptions;
use kube_harness::{Harness, HarnessOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const NS: &str = "default";

/// A harness and a client; with `crd` the IggyCluster CRD is installed up front.
pub async fn harness_with(auto_ready: bool, crd: bool) -> (Harness, Client) {
    let controllers = ControllerOptions {
        auto_ready_gates: if auto_ready {
            vec![READINESS_GATE.to_string()]
        } else {
            Vec::new()
        },
        ..ControllerOptions::default()
    };
    iggy_operator::install_crypto_provider();
    let harness = Harness::start(HarnessOptions {
        controllers,
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts");
    let kubeconfig = Kubeconfig::from_yaml(&harness.kubeconfig()).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    let client = Client::try_from(config).expect("client");
    if crd {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &IggyCluster::crd())
            .await
            .expect("CRD installs");
    }
    (harness, client)
}

/// A harness whose kubelet sets the replica-ready gate itself (its pods run no sidecar).
pub async fn harness() -> (Harness, Client) {
    harness_with(true, true).await
}

/// The operator, running in this process until stopped or dropped.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), iggy_operator::RunError>>,
}

impl Operator {
    pub fn start(client: &Client, lease: Option<LeaseSettings>) -> Self {
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let settings = Settings {
            namespace: None,
            instance: lease.as_ref().map(|l| l.identity.clone()),
            lease,
        };
        let task = tokio::spawn(iggy_operator::run(
            client.clone(),
            settings,
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Kills the operator wherever it is, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

pub fn spec(value: Value) -> IggyClusterSpec {
    serde_json::from_value(value).expect("valid spec")
}

pub async fn create_cluster(client: &Client, name: &str, spec_value: Value) -> IggyCluster {
    let api: Api<IggyCluster> = Api::namespaced(client.clone(), NS);
    let cluster = IggyCluster::new(name, spec(spec_value));
    api.create(&PostParams::default(), &cluster)
        .await
        .expect("cluster created")
}

pub async fn patch_spec(client: &Client, name: &str, patch: Value) {
    let api: Api<IggyCluster> = Api::namespaced(client.clone(), NS);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": patch})),
    )
    .await
    .expect("spec patched");
}

/// Polls until `check` passes; panics with the last observation after 30 s. A bound for a
/// hung test, not a performance assertion.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub fn condition(cluster: &Value, kind: &str) -> Option<Value> {
    cluster["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

pub fn cluster_value(harness: &Harness, name: &str) -> Result<Value, String> {
    harness
        .get("iggy.rs", "IggyCluster", NS, name)
        .ok_or_else(|| format!("IggyCluster {name} not found"))
}

/// Waits until condition `kind` of cluster `name` has `reason`; returns the cluster.
pub async fn wait_condition(harness: &Harness, name: &str, kind: &str, reason: &str) -> Value {
    eventually(&format!("{name}: {kind} with reason {reason}"), || {
        let cluster = cluster_value(harness, name)?;
        let found = condition(&cluster, kind).ok_or(format!("no {kind} condition"))?;
        if found["reason"] == reason {
            Ok(cluster)
        } else {
            Err(found.to_string())
        }
    })
    .await
}

/// Waits until the cluster's Ready condition is True for its current generation.
pub async fn wait_ready(harness: &Harness, name: &str) -> Value {
    eventually(&format!("{name} Ready"), || {
        let cluster = cluster_value(harness, name)?;
        let ready = condition(&cluster, "Ready").ok_or("no Ready condition")?;
        let current = cluster["status"]["observedGeneration"] == cluster["metadata"]["generation"];
        if ready["status"] == "True" && current {
            Ok(cluster)
        } else {
            Err(format!("Ready = {ready}"))
        }
    })
    .await
}

pub fn uids(objects: &[Value]) -> Vec<String> {
    let mut uids: Vec<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["uid"].as_str().map(String::from))
        .collect();
    uids.sort();
    uids
}

pub const S3_ACCESS_KEY: &str = "AKIAIGGYTEST";
pub const S3_SECRET_KEY: &str = "iggy-test-secret-key";

/// An s3s-fs process serving a temporary directory; killed on drop.
pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    pub fn start() -> Option<Self> {
        Self::start_on("127.0.0.1")
    }

    /// On another loopback address: the dev cluster's pods take `127.0.0.1` to mean
    /// themselves, so a server outside the cluster that they reach sits elsewhere.
    pub fn start_on(host: &str) -> Option<Self> {
        if !command_runs("s3s-fs", "--help") {
            return missing_tool(
                "S3S_REQUIRED",
                "s3s-fs not found on PATH (cargo install s3s-fs@0.14.1 --features binary)",
            );
        }
        let root = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new("s3s-fs")
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        wait_listening_on("s3s-fs", host, &[port]);
        Some(Self {
            child,
            root,
            endpoint: format!("http://{host}:{port}"),
        })
    }

    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.root.path().join(bucket).is_dir()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }
}

pub async fn credentials_secret(client: &kube::Client, name: &str, secret_key: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"accessKeyId": S3_ACCESS_KEY, "secretAccessKey": secret_key},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("secret created");
}

/// A test tool is missing: fail when CI said it must be there (`required_var` set), otherwise
/// say why the test skips.
fn missing_tool<T>(required_var: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var(required_var).is_err(),
        "{required_var} is set but {why}"
    );
    eprintln!("SKIP: {why}");
    None
}

/// Whether `program` is installed: it starts (its exit status does not matter).
fn command_runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Waits (10 s at most) until a test server accepts connections on every one of `ports`.
fn wait_listening(server: &str, ports: &[u16]) {
    wait_listening_on(server, "127.0.0.1", ports)
}

fn wait_listening_on(server: &str, host: &str, ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &port in ports {
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{server} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// The collector the operator's telemetry tests export to (shared with the broker's).
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use iggy_telemetry::testing::{rotel_agent, OtlpReceiver};
