//! The operator with real pods: the kube-harness's process kubelet runs the real `iggy-broker`
//! and `iggy-sidecar` binaries for the pods the operator's StatefulSet makes, each on its own
//! loopback address, and a real Iggy SDK client talks to the brokers through the client
//! Service's ClusterIP. Everything stops when the test ends (the harness kills what it
//! started).
//!
//! The pods run target/<profile>/iggy-broker and iggy-sidecar: `make test` (the whole
//! workspace) builds them first; a run of only this test builds them when they are missing or
//! older than their sources.

mod common;

use common::*;
use iggy::prelude::Client as _;
use iggy::prelude::*;
use iggy_operator::crd::IggyCluster;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use kube_harness::kubelet::ProcessOptions;
use kube_harness::{Harness, HarnessOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cargo put this workspace's binaries (target/debug), building the broker and the
/// sidecar first when they are missing or older than their sources (a run of only this test
/// after editing them would otherwise start stale binaries).
fn workspace_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources = newest_source(&[
        root.join("broker/server/src"),
        root.join("broker/contract"),
        root.join("broker/protocol/src"),
        root.join("broker/vsr/src"),
        root.join("operator/sidecar/src"),
        root.join("operator/runtime/src"),
    ]);
    let stale = ["iggy-broker", "iggy-sidecar"].iter().any(|name| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .map_or(true, |built| built < sources)
    });
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "broker", "-p", "iggy-sidecar", "--bins"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building iggy-broker and iggy-sidecar");
    }
    dir
}

/// The newest modification time of any file under `dirs`.
fn newest_source(dirs: &[PathBuf]) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut pending: Vec<PathBuf> = dirs.to_vec();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    newest
}

struct DevCluster {
    harness: Harness,
    client: Client,
    state: tempfile::TempDir,
    operator: Option<Operator>,
}

impl DevCluster {
    /// The dev cluster with the CRD installed and the operator running in this process.
    async fn start() -> Self {
        let mut dev = Self::bare().await;
        install_crd(&dev.client).await;
        dev.operator = Some(Operator::start(&dev.client, None));
        dev
    }

    /// The dev cluster alone: no CRD, no operator.
    async fn bare() -> Self {
        Self::bare_with(|_| {}).await
    }

    /// Like `bare`, with more images mapped.
    async fn bare_with(more: impl FnOnce(&mut ProcessOptions)) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let mut processes = ProcessOptions::new(state.path().to_path_buf())
            .with_workspace_binaries(&workspace_binaries());
        more(&mut processes);
        processes.backoff.base = Duration::from_millis(500);
        iggy_operator::install_crypto_provider();
        let harness = Harness::start(HarnessOptions {
            processes: Some(processes),
            ..HarnessOptions::default()
        })
        .await
        .expect("harness starts");
        let client = client_for(&harness).await;
        Self {
            harness,
            client,
            state,
            operator: None,
        }
    }

    async fn apply_sample(&self, file: &str) -> IggyCluster {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../manifests/samples")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("sample readable");
        let cluster: IggyCluster = serde_yaml::from_str(&text).expect("sample is an IggyCluster");
        Api::<IggyCluster>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &cluster)
            .await
            .expect("sample applies")
    }

    /// What the pods are doing, for a failure message.
    fn pods_report(&self) -> String {
        let mut report = String::new();
        for pod in self.harness.list("", "Pod", Some(NS)) {
            report.push_str(&format!(
                "\n{}: annotations {} labels {} status {}",
                pod["metadata"]["name"],
                pod["metadata"]["annotations"],
                pod["metadata"]["labels"],
                pod["status"]
            ));
        }
        for cluster in self.harness.list("iggy.rs", "IggyCluster", Some(NS)) {
            report.push_str(&format!(
                "\nIggyCluster {}: spec.replicas {} status {}",
                cluster["metadata"]["name"], cluster["spec"]["replicas"], cluster["status"]
            ));
        }
        report.push_str(&self.log_tails(12));
        report
    }

    /// The directory behind a PersistentVolumeClaim (it outlives the claim's pods).
    fn claim_dir(&self, claim: &str) -> PathBuf {
        let claims = self.state.path().join("claims").join(NS);
        std::fs::read_dir(&claims)
            .expect("claims directory")
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(claim))
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|suffix| !suffix.contains('-'))
            })
            .unwrap_or_else(|| panic!("no directory for claim {claim} in {}", claims.display()))
    }

    /// What `container` of the running pod `pod` has logged so far.
    fn container_log(&self, pod: &str, container: &str) -> String {
        let pods = self.state.path().join("pods").join(NS);
        std::fs::read_dir(&pods)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(pod))
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|suffix| !suffix.contains('-'))
            })
            .filter_map(|entry| {
                std::fs::read_to_string(entry.path().join("logs").join(format!("{container}.log")))
                    .ok()
            })
            .collect()
    }

    /// The last `lines` lines of every container log the pods wrote.
    fn log_tails(&self, lines: usize) -> String {
        let mut report = String::new();
        let Ok(pods) = std::fs::read_dir(self.state.path().join("pods").join(NS)) else {
            return report;
        };
        let mut logs: Vec<PathBuf> = pods
            .flatten()
            .filter_map(|pod| std::fs::read_dir(pod.path().join("logs")).ok())
            .flat_map(|dir| dir.flatten().map(|log| log.path()))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            report.push_str(&format!("\n--- {}\n{}", log.display(), tail.join("\n")));
        }
        report
    }

    async fn wait<T>(
        &self,
        what: &str,
        bound: Duration,
        mut check: impl FnMut(&Harness) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + bound;
        loop {
            match check(&self.harness) {
                Ok(value) => return value,
                Err(last) if Instant::now() > deadline => {
                    panic!(
                        "timed out waiting for {what}: {last}\npods:{}",
                        self.pods_report()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn wait_ready(&self, name: &str) -> Value {
        self.wait(
            &format!("{name} Ready"),
            Duration::from_secs(60),
            |harness| {
                let cluster = cluster_value(harness, name)?;
                let ready = condition(&cluster, "Ready").ok_or("no Ready condition")?;
                (ready["status"] == "True")
                    .then_some(cluster.clone())
                    .ok_or(format!("Ready = {ready}"))
            },
        )
        .await
    }

    /// Applies every object of a sample file, as `kubectl apply -f` would.
    fn apply_sample_file(&self, file: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../manifests/samples")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("sample readable");
        self.harness.apply_yaml(&text).expect("sample applies");
    }

    /// Root credentials from a Secret (`<cluster>-root` when the operator generated them),
    /// read as a user would.
    async fn root_credentials(&self, secret: &str) -> (String, String) {
        let secret = Api::<Secret>::namespaced(self.client.clone(), NS)
            .get(secret)
            .await
            .expect("root Secret");
        let data = secret.data.expect("data");
        let text = |key: &str| String::from_utf8(data[key].0.clone()).expect("utf-8");
        (text("username"), text("password"))
    }

    /// A logged-in SDK client on the client Service's ClusterIP, with the root credentials
    /// the operator generated.
    async fn sdk_client(&self, cluster: &str) -> IggyClient {
        let credentials = self.root_credentials(&format!("{cluster}-root")).await;
        self.sdk_client_with(cluster, &credentials).await
    }

    /// A logged-in SDK client on the client Service's ClusterIP.
    async fn sdk_client_with(&self, cluster: &str, credentials: &(String, String)) -> IggyClient {
        sdk_client_at(&self.service_address(cluster), credentials).await
    }

    /// `ClusterIP:8090` of Service `service`: where Iggy clients reach it.
    fn service_address(&self, service: &str) -> String {
        let service = self
            .harness
            .get("", "Service", NS, service)
            .expect("Service");
        let ip = service["spec"]["clusterIP"].as_str().expect("ClusterIP");
        format!("{ip}:8090")
    }

    fn pod_ip(&self, pod: &str) -> String {
        let pod = self.harness.get("", "Pod", NS, pod).expect("pod");
        pod["status"]["podIP"].as_str().expect("pod IP").to_string()
    }
}

/// A logged-in SDK client of the broker at `address`.
async fn sdk_client_at(address: &str, credentials: &(String, String)) -> IggyClient {
    try_client(address, credentials)
        .await
        .expect("connects and logs in as root")
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.kill();
        }
    }
}

async fn client_for(harness: &Harness) -> Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = Kubeconfig::from_yaml(&harness.kubeconfig()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

async fn install_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &IggyCluster::crd())
        .await
        .expect("CRD installs");
}

fn message(text: &str) -> IggyMessage {
    IggyMessage::builder()
        .payload(bytes::Bytes::from(text.to_owned()))
        .build()
        .expect("valid message")
}

async fn read_payloads(client: &IggyClient, stream: &str, topic: &str) -> Vec<String> {
    poll_payloads(client, stream, topic, 0)
        .await
        .expect("poll through the Service")
}

/// Up to 1,000 payloads of partition 0 of `stream/topic` from `offset`.
async fn poll_payloads(
    client: &IggyClient,
    stream: &str,
    topic: &str,
    offset: u64,
) -> Result<Vec<String>, IggyError> {
    let polled = client
        .poll_messages(
            &Identifier::named(stream)?,
            &Identifier::named(topic)?,
            Some(0),
            &Consumer::new(Identifier::numeric(1)?),
            &PollingStrategy::offset(offset),
            1000,
            false,
        )
        .await?;
    Ok(polled
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_sample_runs_a_real_broker_behind_its_service() {
    let dev = DevCluster::start().await;
    let applied = Instant::now();
    dev.apply_sample("single.yaml").await;
    dev.wait_ready("dev").await;

    let client = dev.sdk_client("dev").await;
    create_orders(&client).await;
    send(&client, 0, 10)
        .await
        .expect("send through the Service");
    println!(
        "kubectl apply of single.yaml → first message acknowledged: {:?}",
        applied.elapsed()
    );
    let expected: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    assert_eq!(read_payloads(&client, "orders", "created").await, expected);
    drop(client);

    // The broker's readiness gate is the sidecar's report of the real broker.
    let pod = dev.harness.get("", "Pod", NS, "dev-0").expect("pod");
    let gate = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["type"] == "iggy.rs/replica-ready")
                .cloned()
        })
        .expect("gate condition");
    assert_eq!(gate["status"], "True");
    assert_eq!(gate["reason"], "BrokerCaughtUp", "{gate}");

    // The pod is deleted: its successor starts on the same claim with the data in place.
    let old_uid = pod["metadata"]["uid"].clone();
    Api::<Pod>::namespaced(dev.client.clone(), NS)
        .delete("dev-0", &DeleteParams::default())
        .await
        .expect("delete pod");
    dev.wait("a new dev-0 Ready", Duration::from_secs(60), |harness| {
        let pod = harness.get("", "Pod", NS, "dev-0").ok_or("no pod")?;
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        (pod["metadata"]["uid"] != old_uid && ready)
            .then_some(())
            .ok_or("old pod or not ready".to_string())
    })
    .await;
    dev.wait_ready("dev").await;
    let client = dev.sdk_client("dev").await;
    assert_eq!(
        read_payloads(&client, "orders", "created").await,
        expected,
        "the data survived on the claim"
    );
    drop(client);

    // A config edit reaches the pod's file (its restart belongs to the membership work).
    patch_spec(
        &dev.client,
        "dev",
        json!({"config": {"tcp.max_connections": "777"}}),
    )
    .await;
    let pods_dir = dev.state.path().join("pods").join(NS);
    dev.wait(
        "the new broker.toml in the pod",
        Duration::from_secs(30),
        |_| {
            let file = std::fs::read_dir(&pods_dir)
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("dev-0-"))
                .map(|e| e.path().join("volumes/config/broker.toml"))
                .find(|path| path.is_file())
                .ok_or("no broker.toml")?;
            let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
            text.contains("max_connections = 777")
                .then_some(())
                .ok_or(text)
        },
    )
    .await;
    if let Some(operator) = dev.operator.as_ref() {
        assert!(!operator.finished());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_cannot_start_crash_loops_and_the_cluster_says_so() {
    let dev = DevCluster::start().await;
    // Valid to the operator (an integer), refused by the broker at start.
    create_cluster(
        &dev.client,
        "bad",
        json!({"replicas": 1, "config": {"tcp.max_connections": "0"}}),
    )
    .await;
    let cluster = dev
        .wait(
            "Degraded naming the crash loop",
            Duration::from_secs(60),
            |harness| {
                let cluster = cluster_value(harness, "bad")?;
                let degraded = condition(&cluster, "Degraded").ok_or("no Degraded")?;
                (degraded["status"] == "True" && degraded["reason"] == "BrokerFailing")
                    .then_some(degraded.clone())
                    .ok_or(degraded.to_string())
            },
        )
        .await;
    let message = cluster["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("pod bad-0 container broker: CrashLoopBackOff"),
        "{message}"
    );
    // Its output, as `kubectl logs bad-0 -c broker --previous` shows it.
    let url = format!(
        "{}/api/v1/namespaces/{NS}/pods/bad-0/log?container=broker&previous=true",
        dev.harness.url()
    );
    let (status, log) = kube_harness::http_get(&url).await.expect("log answers");
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("max_connections"), "{log}");
}

/// Polls `address` until it returns exactly `expected` (a backup applies commits a moment
/// after the primary acknowledges them; a member still rebuilding answers with a retryable
/// error until it caught up).
async fn wait_for_payloads(address: &str, credentials: &(String, String), expected: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = try_read_orders(address, credentials).await;
        if outcome.as_deref() == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address} answers {:?} rather than the {} messages expected",
            outcome.map(|got| got.len()),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The member whose admin API says it is the primary.
async fn primary(dev: &DevCluster, cluster: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for position in 0..3 {
            let pod = format!("{cluster}-{position}");
            let ip = dev.pod_ip(&pod);
            if let Ok((200, body)) =
                kube_harness::http_get(&format!("http://{ip}:3000/admin/status")).await
            {
                let status: Value = serde_json::from_str(&body).expect("admin status JSON");
                if status["role"] == "primary" {
                    return pod;
                }
            }
        }
        assert!(Instant::now() < deadline, "no member reports primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every order's payload through `address`, or why not (nothing listening yet, say).
async fn try_read_orders(
    address: &str,
    credentials: &(String, String),
) -> Result<Vec<String>, IggyError> {
    let client = try_client(address, credentials).await?;
    poll_payloads(&client, "orders", "created", 0).await
}

/// `Ok` once the cluster `events`'s `status.ring.primary` is `pod`.
fn ring_primary(harness: &Harness, pod: &str) -> Result<(), String> {
    let cluster = harness
        .get("iggy.rs", "IggyCluster", NS, "events")
        .ok_or("no cluster")?;
    let primary = &cluster["status"]["ring"]["primary"];
    (primary == pod)
        .then_some(())
        .ok_or(format!("status.ring.primary is {primary}"))
}

/// Stream `orders` with topic `created` of one partition.
async fn create_orders(client: &IggyClient) {
    client.create_stream("orders").await.expect("create stream");
    create_orders_topic(client, "created", 1).await;
}

/// Topic `name` of stream `orders`, with `partitions` partitions and the server's defaults.
async fn create_orders_topic(client: &IggyClient, name: &str, partitions: u32) {
    client
        .create_topic(
            &Identifier::named("orders").expect("name"),
            name,
            partitions,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::ServerDefault,
            MaxTopicSize::ServerDefault,
        )
        .await
        .expect("create topic");
}

async fn send(client: &IggyClient, from: usize, count: usize) -> Result<(), IggyError> {
    let stream = Identifier::named("orders").expect("name");
    let topic = Identifier::named("created").expect("name");
    let mut batch: Vec<IggyMessage> = (from..from + count)
        .map(|i| message(&format!("order-{i}")))
        .collect();
    client
        .send_messages(&stream, &topic, &Partitioning::partition_id(0), &mut batch)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_member_sample_replicates_and_survives_losing_its_primary() {
    let dev = DevCluster::start().await;
    dev.apply_sample_file("three-local-nvme.yaml");
    let cluster = dev.wait_ready("events").await;
    let credentials = dev.root_credentials("events-root").await;
    assert_eq!(
        credentials.0, "admin",
        "the sample's own Secret, not a generated one"
    );
    // Each member's disk is the local volume of its position (pre-bound by claimRef, not
    // taken in scheduling order), and the status names its claim and volume.
    for (position, member) in cluster["status"]["ring"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .enumerate()
    {
        assert_eq!(member["pvc"], format!("data-events-{position}"));
        assert_eq!(member["pv"], format!("iggy-{NS}-events-{position}"));
    }

    // Writes through the Service land on whichever member the proxy picks; every member
    // ends up with the same log, because the three brokers are one VSR cluster.
    let client = dev.sdk_client_with("events", &credentials).await;
    create_orders(&client).await;
    for batch in 0..5 {
        send(&client, batch * 20, 20).await.expect("send");
    }
    drop(client);
    let mut expected: Vec<String> = (0..100).map(|i| format!("order-{i}")).collect();
    for position in 0..3 {
        let ip = dev.pod_ip(&format!("events-{position}"));
        wait_for_payloads(&format!("{ip}:8090"), &credentials, &expected).await;
    }
    // The operator turns replication.tls on: every member's peers reach it over TLS.
    for position in 0..3 {
        peers_arrive_over_tls(&dev, &format!("events-{position}")).await;
    }

    a_group_hands_over_across_pods(&dev, &credentials).await;

    // The sidecars label each pod with its broker's role: `events-primary` routes to the
    // primary, and the cluster's status names it (the PRIMARY column of `kubectl get iggy`).
    let lost = primary(&dev, "events").await;
    dev.wait("status.ring.primary", Duration::from_secs(30), |h| {
        ring_primary(h, &lost)
    })
    .await;
    let through_primary = dev.sdk_client_with("events-primary", &credentials).await;
    assert_eq!(
        read_payloads(&through_primary, "orders", "created").await,
        expected
    );
    drop(through_primary);

    // The primary's node fails: its processes die at once and the pod object goes. The
    // others elect a new primary; the StatefulSet brings the member back on its claim.
    let lost_ip = dev.pod_ip(&lost);
    let failed_at = Instant::now();
    assert!(dev.harness.kill_pod(NS, &lost), "{lost} runs");
    let client = dev.sdk_client_with("events", &credentials).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = send(&client, 100, 20).await {
        assert!(
            Instant::now() < deadline,
            "no write accepted after the failure: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expected.extend((100..120).map(|i| format!("order-{i}")));
    // The new primary's sidecar labels it: the status and `events-primary` follow.
    let elected = primary(&dev, "events").await;
    assert_ne!(elected, lost);
    dev.wait(
        "the new primary in status.ring",
        Duration::from_secs(30),
        |h| ring_primary(h, &elected),
    )
    .await;
    println!(
        "failover: {elected} named primary in the status {} ms after {lost} was lost",
        failed_at.elapsed().as_millis()
    );
    // Its endpoint follows the label at the network's next pass: retry until it serves all.
    let address = dev.service_address("events-primary");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_read_orders(&address, &credentials).await {
            Ok(read) if read == expected => break,
            outcome => assert!(
                Instant::now() < deadline,
                "events-primary never served every order: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dev.wait("the lost member back", Duration::from_secs(60), |harness| {
        let pod = harness.get("", "Pod", NS, &lost).ok_or("no pod")?;
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        (ready && ip != lost_ip)
            .then_some(())
            .ok_or(format!("{lost}: {}", pod["status"]))
    })
    .await;
    for position in 0..3 {
        let ip = dev.pod_ip(&format!("events-{position}"));
        wait_for_payloads(&format!("{ip}:8090"), &credentials, &expected).await;
    }

    // A member's disk is lost (its broker frozen, its volume emptied, its node gone). The
    // operator marked the ring formed once a quorum ran it, so the broker that comes back on
    // the empty disk sits view changes out until its peers gave it the log, and is rebuilt.
    dev.wait("the ring marked formed", Duration::from_secs(30), |h| {
        let map = h.get("", "ConfigMap", NS, "events-ring").ok_or("no ring")?;
        let ring: Value = serde_json::from_str(map["data"]["ring.json"].as_str().unwrap_or("{}"))
            .map_err(|e| e.to_string())?;
        (ring["bootstrapped"] == true)
            .then_some(())
            .ok_or(format!("{ring}"))
    })
    .await;
    let wiped = (0..3)
        .map(|p| format!("events-{p}"))
        .find(|p| *p != elected)
        .expect("a backup");
    let frozen = broker_pid(&dev, &wiped).expect("its broker runs");
    signal(frozen, "STOP");
    let volume = dev.claim_dir(&format!("data-{wiped}"));
    for entry in std::fs::read_dir(&volume).expect("the member's volume") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("wipe");
        } else {
            std::fs::remove_file(&path).expect("wipe");
        }
    }
    assert!(dev.harness.kill_pod(NS, &wiped), "{wiped} runs");
    dev.wait("the wiped member rebuilt", Duration::from_secs(60), |_| {
        let log = dev.container_log(&wiped, "broker");
        log.contains("an empty disk in a cluster that has formed")
            .then_some(())
            .ok_or(format!("its broker's log so far: {log}"))
    })
    .await;
    for position in 0..3 {
        let ip = dev.pod_ip(&format!("events-{position}"));
        wait_for_payloads(&format!("{ip}:8090"), &credentials, &expected).await;
    }
}

/// Waits until `pod`'s broker has admitted both of its peers' replication connections over TLS,
/// and checks it admitted none in plain.
async fn peers_arrive_over_tls(dev: &DevCluster, pod: &str) {
    let url = format!("http://{}:3000/metrics", dev.pod_ip(pod));
    let count = |metrics: &str, tls: bool| -> u64 {
        let name = format!("iggy_replication_accepted_total{{tls=\"{tls}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = kube_harness::http_get(&url).await.expect("metrics answer");
        if count(&metrics, true) >= 2 {
            assert_eq!(count(&metrics, false), 0, "{pod} admitted a plain peer");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pod}: its peers do not arrive over TLS"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The offsets a group member's poll of `partition` of `orders/shipped` returns (Next, without
/// storing).
async fn poll_shipped(client: &IggyClient, partition: u32) -> Vec<u64> {
    let polled = client
        .poll_messages(
            &Identifier::named("orders").expect("name"),
            &Identifier::named("shipped").expect("name"),
            Some(partition),
            &Consumer::group(Identifier::named("packers").expect("name")),
            &PollingStrategy::next(),
            10,
            false,
        )
        .await
        .expect("poll as a group member");
    polled.messages.iter().map(|m| m.header.offset).collect()
}

/// The partitions each member of group `packers` holds, as `client`'s member reports them
/// (sorted: the shares, not who holds which).
async fn packers(client: &IggyClient) -> Vec<Vec<u32>> {
    let group = client
        .get_consumer_group(
            &Identifier::named("orders").expect("name"),
            &Identifier::named("shipped").expect("name"),
            &Identifier::named("packers").expect("name"),
        )
        .await
        .expect("get group")
        .expect("the group");
    let mut shares: Vec<Vec<u32>> = group.members.iter().map(|m| m.partitions.clone()).collect();
    shares.sort();
    shares
}

/// Cooperative rebalancing between consumers on two pods: a, on `events-1`, polls both
/// partitions of `orders/shipped` without storing offsets; b joins on `events-2` and gets
/// nothing until a stored what it polled of the partition that is now b's — then `events-1`
/// hands it over and b reads only what comes after.
async fn a_group_hands_over_across_pods(dev: &DevCluster, credentials: &(String, String)) {
    let at = |position: usize| format!("{}:8090", dev.pod_ip(&format!("events-{position}")));
    let a = sdk_client_at(&at(1), credentials).await;
    let b = sdk_client_at(&at(2), credentials).await;
    let stream = Identifier::named("orders").expect("name");
    let topic = Identifier::named("shipped").expect("name");
    let group = Identifier::named("packers").expect("name");
    create_orders_topic(&a, "shipped", 2).await;
    a.create_consumer_group(&stream, &topic, "packers")
        .await
        .expect("create group");
    a.join_consumer_group(&stream, &topic, &group)
        .await
        .expect("join");
    for partition in 0..2 {
        let mut batch = vec![message("box")];
        a.send_messages(
            &stream,
            &topic,
            &Partitioning::partition_id(partition),
            &mut batch,
        )
        .await
        .expect("send");
    }
    // events-1 applies the sends a moment after they commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    while poll_shipped(&a, 0).await.is_empty() || poll_shipped(&a, 1).await.is_empty() {
        assert!(Instant::now() < deadline, "events-1 never served the sends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.join_consumer_group(&stream, &topic, &group)
        .await
        .expect("join");
    // Partition 1 is b's place now, but a polled it and stored nothing: it stays with a.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(packers(&b).await, vec![vec![], vec![0, 1]]);
    assert!(poll_shipped(&b, 1).await.is_empty());
    a.store_consumer_offset(&Consumer::group(group.clone()), &stream, &topic, Some(1), 0)
        .await
        .expect("store");
    let deadline = Instant::now() + Duration::from_secs(30);
    while packers(&b).await != vec![vec![0], vec![1]] {
        assert!(Instant::now() < deadline, "partition 1 never moved to b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        poll_shipped(&b, 1).await.is_empty(),
        "a's message is not b's"
    );
    let mut batch = vec![message("crate")];
    b.send_messages(&stream, &topic, &Partitioning::partition_id(1), &mut batch)
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let polled = poll_shipped(&b, 1).await;
        if !polled.is_empty() {
            assert_eq!(polled, vec![1], "b reads on after a's offset");
            break;
        }
        assert!(Instant::now() < deadline, "b never read the new message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every payload of `orders/created` through `client`, in log order.
async fn read_every_order(client: &IggyClient) -> Vec<String> {
    let mut payloads = Vec::new();
    loop {
        let polled = poll_payloads(client, "orders", "created", payloads.len() as u64)
            .await
            .expect("poll");
        if polled.is_empty() {
            return payloads;
        }
        payloads.extend(polled);
    }
}

/// Sends batches of ten through the client Service until stopped, each attempt with fresh
/// payloads (an attempt that failed may still have been committed); returns what was
/// acknowledged. A failed send reconnects: the member it went through may be restarting.
fn produce_through_the_service(
    address: String,
    credentials: (String, String),
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut next = 0usize;
        let mut client: Option<IggyClient> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && next < 200_000 {
            let current = match client.take() {
                Some(client) => client,
                None => match try_client(&address, &credentials).await {
                    Ok(client) => client,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let from = next;
            next += 10;
            match send(&current, from, 10).await {
                Ok(()) => {
                    acked.extend((from..from + 10).map(|i| format!("order-{i}")));
                    client = Some(current);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        acked
    })
}

async fn try_client(
    address: &str,
    credentials: &(String, String),
) -> Result<IggyClient, IggyError> {
    let client = IggyClient::builder()
        .with_tcp()
        .with_server_address(address.to_string())
        .build()?;
    logged_in(client, credentials).await
}

/// `client` connected and logged in with `credentials`.
async fn logged_in(
    client: IggyClient,
    (username, password): &(String, String),
) -> Result<IggyClient, IggyError> {
    client.connect().await?;
    client.login_user(username, password).await?;
    Ok(client)
}

/// A config edit changes the pod template; the operator rolls it out with the real brokers
/// and sidecars: one pod at a time, each next one after the restarted broker caught up (its
/// sidecar's replica-ready gate), the primary last after its sidecar had it step down — while
/// a producer keeps sending through the client Service, losing no acknowledged message. The
/// edit turns message deduplication on and changes the segment size, which the new primary
/// then puts in force for all (settings that are replicated state, docs/broker.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_rolls_every_pod_primary_last_without_losing_a_message() {
    let dev = DevCluster::start().await;
    let (credentials, address) = three_members_with_orders(&dev).await;
    let uid = |harness: &Harness, pod: &str| {
        harness
            .get("", "Pod", NS, pod)
            .and_then(|p| p["metadata"]["uid"].as_str().map(String::from))
    };
    let pods: Vec<String> = (0..3).map(|i| format!("events-{i}")).collect();
    let before: Vec<Option<String>> = pods.iter().map(|p| uid(&dev.harness, p)).collect();
    // Hand the primary's view on first, so that "primary last" is not also "lowest ordinal
    // last": view 1 belongs to events-1.
    let first = primary(&dev, "events").await;
    let (code, body) = kube_harness::http_post(&format!(
        "http://{}:3000/admin/step-down",
        dev.pod_ip(&first)
    ))
    .await
    .expect("step-down answers");
    assert_eq!(code, 202, "{body}");
    dev.wait("events-1 primary", Duration::from_secs(30), |h| {
        ring_primary(h, "events-1")
    })
    .await;
    let primary_before = primary(&dev, "events").await;
    assert_eq!(primary_before, "events-1");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = produce_through_the_service(address.clone(), credentials.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    patch_spec(
        &dev.client,
        "events",
        json!({"config": {
            "storage.fsync": "always",
            "tcp.max_connections": "5000",
            "message_deduplication.enabled": "true",
            "storage.segment_size": "65536",
        }}),
    )
    .await;

    // The order pods are replaced in, seen by polling their uids.
    let started = Instant::now();
    let mut order: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while order.len() < 3 {
        for (pod, old) in pods.iter().zip(&before) {
            if !order.contains(pod) && uid(&dev.harness, pod).as_ref() != old.as_ref() {
                order.push(pod.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "rollout stalled after {order:?}; pods:{}",
            dev.pods_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = dev
        .wait(
            "the rollout to finish",
            Duration::from_secs(60),
            |harness| {
                let cluster = cluster_value(harness, "events")?;
                let progressing = condition(&cluster, "Progressing").ok_or("no Progressing")?;
                let ready = condition(&cluster, "Ready").ok_or("no Ready")?;
                (progressing["reason"] == "Stable" && ready["status"] == "True")
                    .then_some(cluster.clone())
                    .ok_or(format!("Progressing = {progressing}"))
            },
        )
        .await;
    let rolled_in = started.elapsed();
    assert_eq!(
        order.last(),
        Some(&primary_before),
        "the primary restarts last: {order:?}"
    );
    let events = dev.harness.list("events.k8s.io", "Event", Some(NS));
    assert!(
        events.iter().any(|e| e["reason"] == "PrimaryStepDown"),
        "the primary was asked to step down"
    );
    assert!(
        !events.iter().any(|e| e["reason"] == "PrimaryRestarted"),
        "it stepped down within the grace period"
    );
    assert_ne!(cluster["status"]["ring"]["primary"], json!(primary_before));

    // Sends go on through the new primary; then every member holds every acknowledged
    // message, each once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = producer.await.expect("producer");
    assert!(acked.len() >= 100, "only {} acknowledged", acked.len());
    every_member_holds(&dev, &pods, &acked, &credentials).await;
    println!(
        "rolling restart: {order:?} in {} ms, {} messages acknowledged meanwhile",
        rolled_in.as_millis(),
        acked.len()
    );
    a_resent_batch_is_stored_once(&dev, &pods, &address, &credentials).await;
}

/// Deduplication and the segment size set in `spec.config` are in force on every member (the
/// primary's settings, committed through the log) and a batch sent twice through the Service,
/// with the same message ids, is stored once on each.
async fn a_resent_batch_is_stored_once(
    dev: &DevCluster,
    pods: &[String],
    address: &str,
    credentials: &(String, String),
) {
    for pod in pods {
        let url = format!("http://{}:3000/metrics", dev.pod_ip(pod));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, metrics) = kube_harness::http_get(&url).await.expect("metrics answer");
            if metrics.contains("\niggy_message_deduplication_max_entries 10000\n")
                && metrics.contains("\niggy_segment_size_bytes 65536\n")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}: the edited settings are not in force"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let client = try_client(address, credentials).await.expect("client");
    create_orders_topic(&client, "deduplicated", 1).await;
    let stream = Identifier::named("orders").expect("name");
    let topic = Identifier::named("deduplicated").expect("name");
    for _ in 0..2 {
        let mut batch: Vec<IggyMessage> = (1..=10u128)
            .map(|id| {
                IggyMessage::builder()
                    .id(id)
                    .payload(format!("payment-{id}").into())
                    .build()
                    .expect("message")
            })
            .collect();
        client
            .send_messages(&stream, &topic, &Partitioning::partition_id(0), &mut batch)
            .await
            .expect("send");
    }
    let expected: Vec<String> = (1..=10).map(|id| format!("payment-{id}")).collect();
    for pod in pods {
        let member = format!("{}:8090", dev.pod_ip(pod));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let client = sdk_client_at(&member, credentials).await;
            let stored = read_payloads(&client, "orders", "deduplicated").await;
            if stored == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod} holds {stored:?} of the resent batch"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every pod in `pods` holds every message in `acked`, each once (waiting up to 30 s each for
/// a member still applying).
async fn every_member_holds(
    dev: &DevCluster,
    pods: &[String],
    acked: &[String],
    credentials: &(String, String),
) {
    for pod in pods {
        let member = format!("{}:8090", dev.pod_ip(pod));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stored = read_every_order(&sdk_client_at(&member, credentials).await).await;
            let set: std::collections::BTreeSet<&String> = stored.iter().collect();
            assert_eq!(set.len(), stored.len(), "{pod} holds a message twice");
            let missing = acked.iter().filter(|m| !set.contains(m)).count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod} lacks {missing} of {} acknowledged messages",
                acked.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The three-local-nvme sample Ready, its `orders` stream created; its root credentials and
/// the client Service's `ClusterIP:8090`.
async fn three_members_with_orders(dev: &DevCluster) -> ((String, String), String) {
    dev.apply_sample_file("three-local-nvme.yaml");
    dev.wait_ready("events").await;
    let credentials = dev.root_credentials("events-root").await;
    let client = dev.sdk_client_with("events", &credentials).await;
    create_orders(&client).await;
    drop(client);
    let address = dev.service_address("events");
    (credentials, address)
}

/// The user's flow of `kubectl scale` with real brokers: 3 → 5 → 3 while a producer sends
/// through the client Service. Growing publishes standbys (epoch 2), then members once they
/// caught up (epoch 3); shrinking publishes the smaller ring (epoch 4) and removes the two pods
/// only once it committed. Every acknowledged message ends on each remaining member once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_five_and_back_loses_no_acknowledged_message() {
    let dev = DevCluster::start().await;
    let (credentials, address) = three_members_with_orders(&dev).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = produce_through_the_service(address, credentials.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let volumes: Vec<Value> = (0..5)
        .map(|i| json!({"node": format!("node-{i}"), "path": "/mnt/nvme0"}))
        .collect();
    let started = Instant::now();
    patch_spec(
        &dev.client,
        "events",
        json!({"replicas": 5, "storage": {"localVolumes": volumes}}),
    )
    .await;
    let settled = |members: usize, epoch: u64| {
        move |harness: &Harness| {
            let cluster = cluster_value(harness, "events")?;
            let ring = &cluster["status"]["ring"];
            let progressing = condition(&cluster, "Progressing").ok_or("no Progressing")?;
            let ready = condition(&cluster, "Ready").ok_or("no Ready")?;
            let done = ring["epoch"].as_u64() == Some(epoch)
                && ring["members"].as_array().map(Vec::len) == Some(members)
                && progressing["reason"] == "Stable"
                && ready["status"] == "True";
            done.then_some(cluster.clone()).ok_or(format!(
                "ring {ring}; Progressing {progressing}; Ready {ready}"
            ))
        }
    };
    dev.wait(
        "5 members in epoch 3",
        Duration::from_secs(120),
        settled(5, 3),
    )
    .await;
    let grown_in = started.elapsed();

    let started = Instant::now();
    patch_spec(&dev.client, "events", json!({"replicas": 3})).await;
    dev.wait(
        "3 members in epoch 4",
        Duration::from_secs(120),
        settled(3, 4),
    )
    .await;
    dev.wait("events-3 and events-4 gone", Duration::from_secs(60), |h| {
        let left = ["events-3", "events-4"]
            .into_iter()
            .filter(|p| h.get("", "Pod", NS, p).is_some())
            .count();
        (left == 0)
            .then_some(())
            .ok_or(format!("{left} leaving pods still there"))
    })
    .await;
    let shrunk_in = started.elapsed();
    let events = dev.harness.list("events.k8s.io", "Event", Some(NS));
    for reason in ["ScalingUp", "MembersAdded", "ScalingDown", "MembersRemoved"] {
        assert!(
            events.iter().any(|e| e["reason"] == reason),
            "an event {reason}"
        );
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = producer.await.expect("producer");
    assert!(acked.len() >= 100, "only {} acknowledged", acked.len());
    let pods: Vec<String> = (0..3).map(|i| format!("events-{i}")).collect();
    every_member_holds(&dev, &pods, &acked, &credentials).await;
    println!(
        "scaling: 3 -> 5 Ready in {} ms, 5 -> 3 in {} ms, {} messages acknowledged meanwhile",
        grown_in.as_millis(),
        shrunk_in.as_millis(),
        acked.len()
    );
}

/// The pid of pod `pod`'s broker process in this dev cluster: the process kubelet runs it with
/// `POD_NAME` and with paths under this cluster's state directory (other tests run dev clusters
/// with pods of the same names beside this one).
fn broker_pid(dev: &DevCluster, pod: &str) -> Option<u32> {
    let wanted = format!("POD_NAME={pod}");
    let state = dev.state.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let broker = String::from_utf8_lossy(&cmdline).contains("iggy-broker");
            let named = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
            let ours = String::from_utf8_lossy(&environ).contains(&state)
                || String::from_utf8_lossy(&cmdline).contains(&state);
            (broker && named && ours).then_some(pid)
        })
}

/// Sends `signal` (`STOP`, `CONT`) to a process this test's dev cluster started.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A scale-down with a staying member hung (its broker frozen with SIGSTOP: the sidecar cannot
/// reach it and withdraws its report) is `ScaleDownBlocked`, naming it, and changes nothing;
/// once it answers again the smaller ring is published; the operator stopped right then is
/// replaced by one that finishes the job (removes the leaving pods once the brokers report the
/// epoch committed). A producer sends throughout; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_waits_for_a_hung_member_and_survives_an_operator_restart() {
    let mut dev = DevCluster::start().await;
    let (credentials, address) = three_members_with_orders(&dev).await;
    let volumes: Vec<Value> = (0..5)
        .map(|i| json!({"node": format!("node-{i}"), "path": "/mnt/nvme0"}))
        .collect();
    patch_spec(
        &dev.client,
        "events",
        json!({"replicas": 5, "storage": {"localVolumes": volumes}}),
    )
    .await;
    dev.wait("5 members in epoch 3", Duration::from_secs(120), |h| {
        let cluster = cluster_value(h, "events")?;
        let ready = condition(&cluster, "Ready").ok_or("no Ready")?;
        (cluster["status"]["ring"]["epoch"] == 3 && ready["status"] == "True")
            .then_some(())
            .ok_or(format!("{}", cluster["status"]))
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = produce_through_the_service(address, credentials.clone(), stop.clone());

    let hung = broker_pid(&dev, "events-1").expect("events-1's broker runs");
    signal(hung, "STOP");
    dev.wait(
        "events-1's report withdrawn",
        Duration::from_secs(30),
        |h| {
            let pod = h.get("", "Pod", NS, "events-1").ok_or("no pod")?;
            pod["metadata"]["annotations"]["iggy.rs/replica-state"]
                .is_null()
                .then_some(())
                .ok_or(format!("{}", pod["metadata"]["annotations"]))
        },
    )
    .await;
    patch_spec(&dev.client, "events", json!({"replicas": 3})).await;
    let cluster = dev
        .wait("ScaleDownBlocked", Duration::from_secs(30), |h| {
            let cluster = cluster_value(h, "events")?;
            let blocked = condition(&cluster, "ScaleDownBlocked").ok_or("no condition")?;
            (blocked["status"] == "True")
                .then_some(cluster.clone())
                .ok_or(format!("{blocked}"))
        })
        .await;
    let blocked = condition(&cluster, "ScaleDownBlocked").expect("condition");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap_or("")
            .contains("events-1"),
        "{blocked}"
    );
    assert_eq!(cluster["status"]["ring"]["epoch"], 3, "nothing published");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let set = dev
        .harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    assert_eq!(set["spec"]["replicas"], 5, "nothing removed");

    signal(hung, "CONT");
    dev.wait("the ring of 3 published", Duration::from_secs(60), |h| {
        let map = h.get("", "ConfigMap", NS, "events-ring").ok_or("no ring")?;
        let ring: Value = serde_json::from_str(map["data"]["ring.json"].as_str().unwrap_or("{}"))
            .map_err(|e| e.to_string())?;
        (ring["epoch"] == 4)
            .then_some(())
            .ok_or(format!("epoch {}", ring["epoch"]))
    })
    .await;
    if let Some(operator) = dev.operator.take() {
        operator.stop().await;
    }
    let set = dev
        .harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    assert_eq!(
        set["spec"]["replicas"], 5,
        "the leavers outlive the first operator"
    );
    dev.operator = Some(Operator::start(&dev.client, None));
    dev.wait("events-3 and events-4 gone", Duration::from_secs(60), |h| {
        let left = ["events-3", "events-4"]
            .into_iter()
            .filter(|p| h.get("", "Pod", NS, p).is_some())
            .count();
        let blocked = cluster_value(h, "events")
            .ok()
            .and_then(|c| condition(&c, "ScaleDownBlocked"))
            .map(|c| c["status"].clone());
        (left == 0 && blocked == Some(json!("False")))
            .then_some(())
            .ok_or(format!(
                "{left} leaving pods still there; blocked {blocked:?}"
            ))
    })
    .await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = producer.await.expect("producer");
    assert!(acked.len() >= 100, "only {} acknowledged", acked.len());
    let pods: Vec<String> = (0..3).map(|i| format!("events-{i}")).collect();
    every_member_holds(&dev, &pods, &acked, &credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_as_a_pod_of_its_install_yaml_and_reconciles_a_sample() {
    let dev = DevCluster::bare().await;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/install.yaml"),
    )
    .expect("install.yaml");
    dev.harness.apply_yaml(&text).expect("install.yaml applies");
    // Two operator pods (the chart's default), ready by their own /readyz.
    dev.wait(
        "the operator Deployment available",
        Duration::from_secs(60),
        |harness| {
            let deployment = harness
                .get("apps", "Deployment", "iggy-system", "iggy-operator")
                .ok_or("no Deployment")?;
            (deployment["status"]["availableReplicas"] == 2)
                .then_some(())
                .ok_or(deployment["status"].to_string())
        },
    )
    .await;
    // The pods installed the CRD themselves (--install-crds); one of them holds the lease.
    dev.wait("the CRD and a leader", Duration::from_secs(30), |harness| {
        harness
            .get(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "",
                "iggyclusters.iggy.rs",
            )
            .ok_or("no CRD")?;
        let lease = harness
            .list("coordination.k8s.io", "Lease", Some("iggy-system"))
            .into_iter()
            .next()
            .ok_or("no lease")?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        holder
            .starts_with("iggy-operator-")
            .then_some(())
            .ok_or(format!("holder {holder:?}"))
    })
    .await;
    let applied = Instant::now();
    dev.apply_sample("single.yaml").await;
    dev.wait_ready("dev").await;
    let client = dev.sdk_client("dev").await;
    create_orders(&client).await;
    send(&client, 0, 3).await.expect("send through the Service");
    println!(
        "operator pod: single.yaml → first message: {:?}",
        applied.elapsed()
    );
    let expected: Vec<String> = (0..3).map(|i| format!("order-{i}")).collect();
    assert_eq!(read_payloads(&client, "orders", "created").await, expected);
    // Without OTLP configured, the operator's and the broker's logs still reach their consoles
    // (what `kubectl logs` shows).
    let pods = dev.harness.list("", "Pod", Some("iggy-system"));
    let operator_pod = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|name| name.starts_with("iggy-operator-"))
        .expect("an operator pod");
    for (namespace, pod, container, line) in [
        (
            "iggy-system",
            operator_pod,
            "operator",
            "applied the IggyCluster CRD",
        ),
        (NS, "dev-0", "broker", "iggy-broker ready"),
    ] {
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/pods/{pod}/log?container={container}",
            dev.harness.url()
        );
        let (_, log) = kube_harness::http_get(&url).await.expect("pod log");
        assert!(
            log.contains(line),
            "{pod}/{container} log lacks {line:?}:\n{log}"
        );
    }
}

/// The environment a pod's container process runs with, read from /proc.
fn process_environment(pod: &Value, container: &str) -> Vec<(String, String)> {
    let id = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == container))
        .and_then(|c| c["containerID"].as_str())
        .expect("a running container");
    let pid = id.strip_prefix("process://").expect("process id");
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environment readable");
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiered_storage_sample_gets_its_bucket_and_its_brokers_tier_to_it() {
    let Some(s3) = S3Server::start_on("127.0.0.2") else {
        return;
    };
    let dev = DevCluster::start().await;
    // The sample as a user edits it: their endpoint and key pair.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/samples/tiered-storage.yaml");
    // Small segments and a short local window, so that a few hundred messages reach S3 and
    // leave the brokers' disks within the test.
    let text = std::fs::read_to_string(path)
        .expect("sample")
        .replace(
            "  replicas: 3\n",
            "  replicas: 3\n  config:\n    storage.segment_size: \"4096\"\n    \
             tiering.interval: 200ms\n",
        )
        .replace("localRetention: 7d", "localRetention: 1s")
        .replace("http://minio.storage.svc:9000", &s3.endpoint)
        .replace("replace-with-your-access-key-id", S3_ACCESS_KEY)
        .replace("replace-with-your-secret-access-key", S3_SECRET_KEY);
    dev.harness.apply_yaml(&text).expect("sample applies");
    let cluster = dev.wait_ready("tiered").await;
    assert_eq!(
        condition(&cluster, "BucketReady").expect("BucketReady")["reason"],
        "BucketCreated"
    );
    assert!(s3.bucket_exists("iggy-segments"));
    for position in 0..3 {
        let pod = dev
            .harness
            .get("", "Pod", NS, &format!("tiered-{position}"))
            .expect("pod");
        let env = process_environment(&pod, "broker");
        let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(
            value("IGGY_TIERING_S3_BUCKET").as_deref(),
            Some("iggy-segments")
        );
        assert_eq!(
            value("IGGY_TIERING_S3_ENDPOINT").as_deref(),
            Some(s3.endpoint.as_str())
        );
        assert_eq!(
            value("IGGY_TIERING_S3_SECRET_ACCESS_KEY").as_deref(),
            Some(S3_SECRET_KEY),
            "the key pair arrives by Secret reference"
        );
    }
    // The three brokers serve as one cluster, and tier: the primary uploads sealed segments
    // under the cluster's prefix, every member drops its local copies, and everything is read
    // back through the Service from S3.
    let credentials = dev.root_credentials("tiered-root").await;
    let client = dev.sdk_client_with("tiered", &credentials).await;
    create_orders(&client).await;
    for from in (0..400).step_by(20) {
        send(&client, from, 20).await.expect("send");
    }
    let uid = cluster["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let partition = s3.path(&format!(
        "iggy-segments/iggy/{uid}/streams/0/topics/0/partitions/0"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let uploaded = std::fs::read_dir(&partition)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .count()
            })
            .unwrap_or(0);
        if uploaded >= 3 && partition.join("manifest.json").exists() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no segments reached {} (uploaded: {uploaded})",
            partition.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected: Vec<String> = (0..400).map(|i| format!("order-{i}")).collect();
    assert_eq!(read_every_order(&client).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telemetry_sample_gets_a_collector_receiving_the_brokers_and_sidecars_telemetry() {
    let Some(rotel) = rotel_agent() else {
        return;
    };
    // The collector image runs as rotel, a local OTLP collector, printing what it receives.
    let image = "opentelemetry-collector-contrib";
    let mut dev = DevCluster::bare_with(|processes| {
        processes.images.insert(image.into(), rotel);
        processes.image_args.insert(
            image.into(),
            "start --otlp-grpc-endpoint 0.0.0.0:4317 --otlp-http-endpoint 0.0.0.0:4318 \
             --exporter blackhole --debug-log traces --debug-log logs --debug-log-verbosity detailed"
                .split_whitespace()
                .map(String::from)
                .collect(),
        );
    })
    .await;
    install_crd(&dev.client).await;
    dev.operator = Some(Operator::start(&dev.client, None));
    dev.apply_sample_file("telemetry.yaml");
    let cluster = dev.wait_ready("telemetry").await;
    assert_eq!(
        condition(&cluster, "TelemetryReady").expect("TelemetryReady")["reason"],
        "CollectorAvailable"
    );
    let collector = dev
        .harness
        .list("", "Pod", Some(NS))
        .into_iter()
        .find_map(|pod| {
            let name = pod["metadata"]["name"].as_str()?.to_string();
            name.starts_with("telemetry-otel-collector-")
                .then_some(name)
        })
        .expect("a collector pod runs");
    // Every sidecar logs its gate's state ("the broker is … and caught up") and traces each
    // change (span update_readiness_gate); over OTLP through the collector Service's name
    // (resolved as cluster DNS would) both reach the collector, with the pod in their resource
    // attributes.
    let url = format!(
        "{}/api/v1/namespaces/{NS}/pods/{collector}/log",
        dev.harness.url()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, received) = kube_harness::http_get(&url).await.expect("collector log");
        let all_pods =
            (0..3).all(|i| received.contains(&format!("k8s.pod.name: Str(telemetry-{i})")));
        let spans = received.contains("Name           : update_readiness_gate");
        if received.contains("caught up") && all_pods && spans {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecars' logs did not reach the collector:\n{received}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The brokers export too, configured only by the OTEL_* variables the operator gives them:
    // a request's span (with its replication round trip as a child), and the login's log line,
    // under the sample's service name and resource attributes.
    let credentials = dev.root_credentials("telemetry-root").await;
    let client = dev.sdk_client_with("telemetry", &credentials).await;
    create_orders(&client).await;
    send(&client, 0, 5).await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = [
        "Name           : send orders/created",
        "Name           : replicate",
        "-> service.name: Str(iggy-broker)",
        "-> deployment.environment: Str(staging)",
        "client logged in",
    ];
    loop {
        let (_, received) = kube_harness::http_get(&url).await.expect("collector log");
        let Some(missing) = wanted.iter().find(|w| !received.contains(**w)) else {
            break;
        };
        assert!(
            Instant::now() < deadline,
            "the brokers' telemetry did not reach the collector ({missing:?} missing):\n{received}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A certificate authority of the test's own (the user's, or cert-manager's issuer).
struct TestIssuer {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ca_file: tempfile::NamedTempFile,
}

impl TestIssuer {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("ca");
        let ca_file = tempfile::NamedTempFile::new().expect("ca file");
        std::fs::write(ca_file.path(), issuer.pem()).expect("write ca");
        Self { issuer, ca_file }
    }

    /// The data of a `kubernetes.io/tls` Secret for `names`, as JSON (base64 values).
    fn secret_data(&self, names: &[&str]) -> Value {
        use k8s_openapi::ByteString;
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("sign");
        let data: std::collections::BTreeMap<&str, ByteString> = [
            ("tls.crt", ByteString(cert.pem().into_bytes())),
            ("tls.key", ByteString(key.serialize_pem().into_bytes())),
        ]
        .into();
        serde_json::to_value(data).expect("serializes")
    }

    /// A logged-in SDK client of `address` over TLS, trusting only this issuer.
    async fn client(
        &self,
        address: &str,
        domain: &str,
        credentials: &(String, String),
    ) -> Result<IggyClient, IggyError> {
        let client = IggyClient::builder()
            .with_tcp()
            .with_server_address(address.to_string())
            .with_tls_enabled(true)
            .with_tls_domain(domain.to_string())
            .with_tls_ca_file(self.ca_file.path().display().to_string())
            .build()?;
        logged_in(client, credentials).await
    }
}

/// `spec.tls` with the real brokers: the cluster waits for its Secret (SecretMissing), then
/// every pod serves the certificate on the client port, reached through the Service by an
/// unchanged SDK client that trusts the issuer; a plain client gets nothing. A renewed Secret
/// (another issuer, as after a CA rotation) reaches the running brokers through the kubelet's
/// volume update, without restarting a pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_secret_and_a_renewal_without_restarting_pods() {
    let dev = DevCluster::start().await;
    dev.apply_sample_file("tls.yaml");
    dev.wait(
        "Ready=False for the missing TLS Secret",
        Duration::from_secs(30),
        |harness| {
            let cluster = cluster_value(harness, "secure")?;
            let ready = condition(&cluster, "Ready").ok_or("no Ready condition")?;
            (ready["status"] == "False" && ready["reason"] == "SecretMissing")
                .then_some(())
                .ok_or(format!("Ready = {ready}"))
        },
    )
    .await;
    assert!(
        dev.harness.list("", "Pod", Some(NS)).is_empty(),
        "no pod starts before its certificate exists"
    );

    let domain = format!("secure.{NS}.svc");
    let names = [domain.as_str(), "localhost"];
    let first = TestIssuer::new();
    let secrets = Api::<Secret>::namespaced(dev.client.clone(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "secure-tls"},
        "type": "kubernetes.io/tls",
        "data": first.secret_data(&names),
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the TLS Secret");
    dev.wait_ready("secure").await;
    // The operator read the certificate's expiry and names into the status; this one is for
    // the Service only, so the members' own names are reported missing.
    let cluster = cluster_value(&dev.harness, "secure").expect("cluster");
    assert!(
        cluster["status"]["tls"]["notAfter"].is_string(),
        "{}",
        cluster["status"]
    );
    assert_eq!(cluster["status"]["tls"]["dnsNames"], json!(names));
    let verdict = condition(&cluster, "CertificateValid").expect("CertificateValid");
    assert_eq!(verdict["reason"], "NamesMissing", "{verdict}");
    assert!(
        verdict["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("secure-2.secure-replicas.{NS}.svc"))),
        "{verdict}"
    );

    let credentials = dev.root_credentials("secure-root").await;
    let service = dev.service_address("secure");
    let client = first
        .client(&service, &domain, &credentials)
        .await
        .expect("a client trusting the issuer connects through the Service");
    create_orders(&client).await;
    send(&client, 0, 30).await.expect("send over TLS");
    let expected: Vec<String> = (0..30).map(|i| format!("order-{i}")).collect();
    for position in 0..3 {
        let member = format!("{}:8090", dev.pod_ip(&format!("secure-{position}")));
        let reader = first
            .client(&member, &domain, &credentials)
            .await
            .expect("every member serves TLS");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut read = read_payloads(&reader, "orders", "created").await;
        while read != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            read = read_payloads(&reader, "orders", "created").await;
        }
        assert_eq!(read, expected, "member {position} over TLS");
    }
    let plain = tokio::time::timeout(Duration::from_secs(30), try_client(&service, &credentials))
        .await
        .expect("a plain client is answered, not left waiting");
    assert!(plain.is_err(), "plain TCP on the TLS port gets no session");

    // Renewal by another issuer: the Secret is updated in place, as cert-manager does.
    let pod_uids: Vec<Value> = (0..3)
        .map(|p| {
            dev.harness
                .get("", "Pod", NS, &format!("secure-{p}"))
                .expect("pod")["metadata"]["uid"]
                .clone()
        })
        .collect();
    let second = TestIssuer::new();
    assert!(second
        .client(&service, &domain, &credentials)
        .await
        .is_err());
    secrets
        .patch(
            "secure-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": second.secret_data(&names)})),
        )
        .await
        .expect("renew the Secret");
    for position in 0..3 {
        let member = format!("{}:8090", dev.pod_ip(&format!("secure-{position}")));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match second.client(&member, &domain, &credentials).await {
                Ok(client) => {
                    assert_eq!(read_payloads(&client, "orders", "created").await, expected);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "member {position} never served the renewed certificate: {e}\n{}",
                        dev.pods_report()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    for (position, uid) in pod_uids.iter().enumerate() {
        let pod = dev
            .harness
            .get("", "Pod", NS, &format!("secure-{position}"))
            .expect("pod");
        assert_eq!(
            &pod["metadata"]["uid"], uid,
            "secure-{position} was not restarted"
        );
    }
    // The session opened before the renewal is still served.
    client
        .ping()
        .await
        .expect("the earlier session survives the renewal");
}
