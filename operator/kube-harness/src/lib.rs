//! An in-process Kubernetes API server for tests and local development.
//!
//! Real HTTP on 127.0.0.1 with a kubeconfig, so the real operator binary, kube-rs clients and
//! kubectl run against it unchanged: discovery, get/list/watch with resourceVersions, bookmarks
//! and 410 Gone, label and field selectors, create/update/patch (merge, JSON, strategic as
//! merge, server-side apply with field ownership), status and scale subresources, optimistic
//! concurrency, finalizers, ownerReference garbage collection, CRDs, injected errors and
//! latency, and simulated StatefulSet, scheduler, volume and kubelet controllers.
//! What it leaves out is listed in docs/operator.md.

pub mod controllers;
pub mod kubelet;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod server;
pub mod ssa;
pub mod store;
pub mod table;

use controllers::ControllerOptions;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kubelet::Kubelet;
use serde_json::{json, Value};
use server::{FaultRule, Faults, RequestCounts, Shared};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{PatchKind, Store, Subresource};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct HarnessOptions {
    /// Nodes created at start, `node-0` … with the hostname label.
    pub nodes: usize,
    pub controllers: ControllerOptions,
    /// 127.0.0.1:0 picks a free port.
    pub address: SocketAddr,
    /// Run pods as local processes ([`kubelet`]) instead of simulating them.
    pub processes: Option<kubelet::ProcessOptions>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            nodes: 6,
            controllers: ControllerOptions::default(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            processes: None,
        }
    }
}

/// A running API server and its simulated controllers; both stop when this is dropped.
pub struct Harness {
    address: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    kubelet: Option<Arc<Mutex<Kubelet>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(kubelet) = &self.kubelet {
            // Kills every process the kubelet started (PodRun's drop).
            kubelet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_pods();
        }
    }
}

impl Harness {
    pub async fn start(mut options: HarnessOptions) -> std::io::Result<Self> {
        let mut store = Store::new();
        store.set_graceful_pod_deletion(options.processes.is_some());
        options.controllers.process_pods = options.processes.is_some();
        if let Some(processes) = &options.processes {
            options.controllers.process_images = processes.images.keys().cloned().collect();
        }
        let pod_logs = options.processes.as_ref().map(|_| Default::default());
        let node_type = store.type_by_kind("", "Node").expect("built in");
        for i in 0..options.nodes {
            let name = format!("node-{i}");
            let node = json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}], "capacity": {"cpu": "8", "memory": "32Gi"}},
            });
            store
                .create(&node_type, "", node, "harness")
                .map_err(std::io::Error::other)?;
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            counts: Mutex::new(RequestCounts::new()),
            faults: Mutex::new(Faults::default()),
            pod_logs: pod_logs.clone(),
            watch_resets: tokio::sync::watch::channel(0).0,
        });
        let listener = TcpListener::bind(options.address).await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(serve(listener, shared.clone()));
        let mut tasks = vec![server];
        let mut kubelet = None;
        if let (Some(processes), Some(logs)) = (options.processes, pod_logs) {
            let node = Kubelet::new(
                processes.clone(),
                options.controllers.auto_ready_gates.clone(),
                logs,
            )?;
            let node = Arc::new(Mutex::new(node));
            tasks.push(tokio::spawn(kubelet::run(shared.clone(), node.clone())));
            kubelet = Some(node);
        }
        tasks.push(tokio::spawn(run_controllers(
            shared.clone(),
            options.controllers,
        )));
        let harness = Self {
            address,
            shared,
            tasks,
            kubelet,
        };
        if let Some(kubelet) = &harness.kubelet {
            // Pods reach the API through this file, as through a service-account token.
            let path = kubelet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .kubeconfig_path();
            harness.write_kubeconfig(&path)?;
        }
        Ok(harness)
    }

    /// A node failure for one pod (process kubelet only): its processes are SIGKILLed at once
    /// and the pod object removed; its controller makes a new one. False if no such pod runs.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> bool {
        let Some(kubelet) = &self.kubelet else {
            return false;
        };
        let mut kubelet = kubelet.lock().unwrap_or_else(|p| p.into_inner());
        kubelet.kill(&mut self.shared.store(), namespace, name)
    }

    /// Stops every pod as a node drain would (SIGTERM, SIGKILL after `grace`), waiting at most
    /// `grace` plus a second; for a clean exit of `make dev-cluster`.
    pub async fn stop_pods(&self, grace: Duration) {
        let Some(kubelet) = &self.kubelet else {
            return;
        };
        kubelet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop_all(grace);
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            if kubelet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .all_stopped()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster:\n    server: {}\n\
             users:\n- name: harness\n  user: {{}}\ncontexts:\n- name: harness\n  context:\n    cluster: harness\n    user: harness\n    namespace: default\n\
             current-context: harness\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, self.kubeconfig())
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store()
    }

    /// What an API server restart or an etcd compaction does to clients: every open watch ends,
    /// and the history is forgotten, so a watch resumed from its last resourceVersion gets 410
    /// Gone and must list again.
    pub fn reset_watches(&self) {
        self.shared.store().compact();
        self.shared.watch_resets.send_modify(|resets| *resets += 1);
    }

    /// API requests served so far, by (verb, plural resource).
    pub fn request_counts(&self) -> RequestCounts {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Create, update, patch and delete requests served so far.
    pub fn write_requests(&self) -> u64 {
        self.request_counts()
            .iter()
            .filter(|((verb, _), _)| {
                matches!(verb.as_str(), "create" | "update" | "patch" | "delete")
            })
            .map(|(_, count)| count)
            .sum()
    }

    /// The next `count` requests matching `verb` and `resource` (None = any) fail with `code`.
    pub fn inject_errors(&self, verb: Option<&str>, resource: Option<&str>, count: u32, code: u16) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rules
            .push(FaultRule {
                verb: verb.map(String::from),
                resource: resource.map(String::from),
                remaining: count,
                code,
            });
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latency = latency;
    }

    /// An object by group, kind, namespace and name (tests' read path).
    pub fn get(&self, group: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.store();
        let rt = store.type_by_kind(group, kind)?;
        store.get(&rt, namespace, name).ok()
    }

    pub fn list(&self, group: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.store();
        match store.type_by_kind(group, kind) {
            Some(rt) => store.list(&rt, namespace),
            None => Vec::new(),
        }
    }

    /// Server-side applies every object of a multi-document YAML text (as manager
    /// `harness`), e.g. CRDs to serve before any client connects; returns how many.
    pub fn apply_yaml(&self, text: &str) -> Result<usize, store::ApiError> {
        use serde::Deserialize;
        let mut applied = 0;
        for document in serde_yaml::Deserializer::from_str(text) {
            let object = Value::deserialize(document)
                .map_err(|e| store::ApiError::bad_request(format!("malformed YAML: {e}")))?;
            if object.is_null() {
                continue;
            }
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let (group, _) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let kind = object["kind"].as_str().unwrap_or_default();
            let mut store = self.store();
            let rt = store.type_by_kind(group, kind).ok_or_else(|| {
                store::ApiError::new(
                    404,
                    "NotFound",
                    format!("kind {kind} of {api_version} is not served"),
                )
            })?;
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            store.patch(
                &rt,
                &namespace,
                &name,
                PatchKind::Apply,
                &object,
                Subresource::Main,
                "harness",
                true,
            )?;
            applied += 1;
        }
        Ok(applied)
    }

    /// Sets a pod condition, as a sidecar reporting a readiness gate would.
    pub fn set_pod_condition(
        &self,
        namespace: &str,
        pod: &str,
        condition: &str,
        status: bool,
    ) -> Result<(), store::ApiError> {
        let mut store = self.store();
        let rt = store.type_by_kind("", "Pod").expect("built in");
        let current = store.get(&rt, namespace, pod)?;
        let mut conditions: Vec<Value> = current["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c["type"] != condition);
        conditions.insert(0, json!({"type": condition, "status": if status { "True" } else { "False" }, "lastTransitionTime": store::now()}));
        store.patch(
            &rt,
            namespace,
            pod,
            PatchKind::Merge,
            &json!({"status": {"conditions": conditions}}),
            Subresource::Status,
            "test",
            false,
        )?;
        Ok(())
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| server::handle(shared.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs the simulated controllers after every change (and every 200 ms, for safety).
async fn run_controllers(shared: Arc<Shared>, options: ControllerOptions) {
    let mut changes = shared.store().subscribe();
    loop {
        // Passes until nothing changes, yielding between them: a controller that kept writing
        // would otherwise hold a worker thread (and the store) forever, and no task on it could
        // be aborted when the harness goes away.
        for pass in 1.. {
            let wrote = controllers::reconcile_all(&mut shared.store(), &options);
            if !wrote {
                break;
            }
            if pass % 100 == 0 {
                tracing::warn!(passes = pass, "the simulated controllers keep writing");
            }
            tokio::task::yield_now().await;
        }
        tokio::select! {
            _ = changes.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// A plain HTTP/1.1 GET of `http://host:port/path` for tests and tools reading the harness's
/// API (e.g. `pods/<name>/log`) or a pod's port: (status, body).
pub async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", url).await
}

/// Like [`http_get`], a POST without a body.
pub async fn http_post(url: &str) -> std::io::Result<(u16, String)> {
    http_request("POST", url).await
}

async fn http_request(method: &str, url: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an http:// URL");
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
