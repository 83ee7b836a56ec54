//! The process kubelet: the dev cluster's node agent that runs pods as local processes.
//!
//! For every pod bound to a node it maps each container image to a local binary
//! ([`ProcessOptions::images`]), resolves the container's environment and volumes
//! ([`plan`]), gives the pod its own loopback address ([`network`]), starts the containers
//! and restarts them with back-off ([`runner`]), runs their probes ([`probe`]) and reports
//! container states, restarts, exit codes and conditions (Ready only with every container
//! ready and every readiness gate True) as a kubelet would. Deleting a pod stops its
//! processes (SIGTERM, SIGKILL after the grace period) before the pod object goes.
//! Limits are listed in docs/operator.md ("The process kubelet").

pub mod network;
pub mod plan;
pub mod probe;
pub mod runner;

use crate::controllers::text;
use crate::store::{PatchKind, Store, Subresource};
use network::{AddressPool, Network};
use plan::{PlanContext, PlanError, ProjectedVolume};
use runner::{Backoff, Container, SharedRecord, State, Stop};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Where the kubelet keeps pods' files and which binaries it runs for which images.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// Pod directories, claim directories, logs, the kubeconfig and hosts file pods get.
    pub state_dir: PathBuf,
    /// Image name (last path segment, no tag: `iggy-broker`) → the binary it stands for.
    pub images: BTreeMap<String, PathBuf>,
    /// Arguments replacing a container's own, by image name, for a stand-in that takes other
    /// arguments than the image (rotel for the OpenTelemetry Collector image).
    pub image_args: BTreeMap<String, Vec<String>>,
    pub backoff: Backoff,
}

/// The images the dev cluster runs from this workspace's builds, by binary name.
pub const WORKSPACE_IMAGES: [&str; 3] = ["iggy-broker", "iggy-sidecar", "iggy-operator"];

impl ProcessOptions {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            images: BTreeMap::new(),
            image_args: BTreeMap::new(),
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(20),
            },
        }
    }

    /// Maps every image of [`WORKSPACE_IMAGES`] to the same-named binary in `dir` (a cargo
    /// target directory such as target/debug).
    pub fn with_workspace_binaries(mut self, dir: &Path) -> Self {
        for name in WORKSPACE_IMAGES {
            self.images.insert(name.to_string(), dir.join(name));
        }
        self
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    pub fn hosts_path(&self) -> PathBuf {
        self.state_dir.join("hosts")
    }
}

/// Each running pod's log directory, by (namespace, pod name), for the API's `log`
/// subresource.
pub type LogDirectories = Arc<Mutex<HashMap<(String, String), PathBuf>>>;

struct PodRun {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    containers: Vec<(String, String, SharedRecord)>,
    projected: Vec<ProjectedVolume>,
    grace: Duration,
    stop: watch::Sender<Stop>,
    tasks: Vec<JoinHandle<()>>,
    started_at: String,
}

impl PodRun {
    fn finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// SIGKILLs every running container's process group at once.
    fn kill_processes_now(&self) {
        for (_, _, record) in &self.containers {
            if let Some(pid) = runner::lock(record).pid {
                runner::signal_group(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        // The harness is going away: nothing it started may outlive it.
        self.kill_processes_now();
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub struct Kubelet {
    options: ProcessOptions,
    base_env: Vec<(String, String)>,
    auto_ready_gates: Vec<String>,
    runs: HashMap<String, PodRun>,
    /// Pods that cannot start yet (a missing Secret, an unmapped image), by uid.
    blocked: HashMap<String, (Ipv4Addr, PlanError)>,
    pods: AddressPool,
    network: Network,
    _subnets: network::Subnets,
    wake: Arc<Notify>,
    logs: LogDirectories,
    /// Set by [`Kubelet::stop_all`]: the node is going down and starts nothing new.
    draining: bool,
}

impl Kubelet {
    pub fn new(
        options: ProcessOptions,
        auto_ready_gates: Vec<String>,
        logs: LogDirectories,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(options.state_dir.join("pods"))?;
        std::fs::create_dir_all(options.state_dir.join("claims"))?;
        let mut base_env = vec![
            (
                "KUBECONFIG".to_string(),
                options.kubeconfig_path().display().to_string(),
            ),
            (
                iggy_contract::hosts::TEST_HOSTS_FILE.to_string(),
                options.hosts_path().display().to_string(),
            ),
        ];
        for inherited in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(value) = std::env::var(inherited).ok().filter(|v| !v.is_empty()) {
                base_env.push((inherited.to_string(), value));
            }
        }
        let subnets = network::Subnets::reserve()?;
        Ok(Self {
            network: Network::new(options.hosts_path(), subnets.services),
            pods: AddressPool::new(subnets.pods),
            _subnets: subnets,
            options,
            base_env,
            auto_ready_gates,
            runs: HashMap::new(),
            blocked: HashMap::new(),
            wake: Arc::new(Notify::new()),
            logs,
            draining: false,
        })
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.options.kubeconfig_path()
    }

    /// Drops every pod run, killing its processes (the harness is going away).
    pub fn forget_pods(&mut self) {
        self.runs.clear();
    }

    /// Asks every pod to stop with `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        self.draining = true;
        for run in self.runs.values() {
            let _ = run.stop.send(Stop::Graceful(grace));
        }
    }

    pub fn all_stopped(&self) -> bool {
        self.runs.values().all(PodRun::finished)
    }

    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// A node failure for one pod: its processes are killed at once and the pod object is
    /// removed without a grace period (as after a force deletion of a pod on a dead node).
    pub fn kill(&mut self, store: &mut Store, namespace: &str, name: &str) -> bool {
        let Some(run) = self
            .runs
            .values()
            .find(|run| run.namespace == namespace && run.name == name)
        else {
            return false;
        };
        run.kill_processes_now();
        let _ = run.stop.send(Stop::Kill);
        let rt = store.type_by_kind("", "Pod").expect("built in");
        let _ = store.delete(&rt, namespace, name);
        true
    }

    /// One pass: start new pods, stop deleted ones, finish deletions, refresh volumes,
    /// report statuses, then the network.
    pub fn sync(&mut self, store: &mut Store) {
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        let pods = store.list(&pod_type, None);
        let by_uid: HashMap<&str, &Value> =
            pods.iter().map(|p| (text(p, "/metadata/uid"), p)).collect();
        // Stop pods that are being deleted or are gone.
        for (uid, run) in &self.runs {
            let wanted = match by_uid.get(uid.as_str()) {
                None => Stop::Kill,
                Some(pod) if pod["metadata"]["deletionTimestamp"].is_string() => {
                    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                        .as_u64()
                        .map(Duration::from_secs)
                        .unwrap_or(run.grace);
                    Stop::Graceful(grace)
                }
                Some(_) => Stop::Run,
            };
            if wanted != Stop::Run && *run.stop.borrow() == Stop::Run {
                tracing::info!(pod = %run.name, namespace = %run.namespace, "stopping pod");
                let _ = run.stop.send(wanted);
            }
        }
        // Finish stopped pods: remove the object, the pod's directory, its address.
        let done: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, run)| *run.stop.borrow() != Stop::Run && run.finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            if let Some(run) = self.runs.remove(&uid) {
                store.finish_pod_deletion(&run.namespace, &run.name);
                let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
                let key = (run.namespace.clone(), run.name.clone());
                if logs.get(&key) == Some(&run.dir.join("logs")) {
                    logs.remove(&key);
                }
                drop(logs);
                let _ = std::fs::remove_dir_all(&run.dir);
                self.pods.release(run.ip);
            }
        }
        // Pods marked for deletion that never ran go at once.
        for pod in &pods {
            let uid = text(pod, "/metadata/uid");
            if pod["metadata"]["deletionTimestamp"].is_string() && !self.runs.contains_key(uid) {
                if let Some((ip, _)) = self.blocked.remove(uid) {
                    self.pods.release(ip);
                }
                store.finish_pod_deletion(
                    text(pod, "/metadata/namespace"),
                    text(pod, "/metadata/name"),
                );
            }
        }
        self.blocked
            .retain(|uid, _| by_uid.contains_key(uid.as_str()));
        // Start pods bound to a node.
        for pod in &pods {
            let uid = text(pod, "/metadata/uid");
            if self.draining
                || !pod["spec"]["nodeName"].is_string()
                || pod["metadata"]["deletionTimestamp"].is_string()
                || self.runs.contains_key(uid)
            {
                continue;
            }
            self.start(store, pod);
        }
        // Keep ConfigMap and Secret volumes current.
        for run in self.runs.values() {
            if *run.stop.borrow() != Stop::Run {
                continue;
            }
            for volume in &run.projected {
                if let Err(error) = plan::refresh(store, &run.namespace, volume) {
                    tracing::warn!(pod = %run.name, %error, "could not refresh a volume");
                }
            }
        }
        self.report(store);
        self.network.sync(store);
    }

    fn start(&mut self, store: &mut Store, pod: &Value) {
        let uid = text(pod, "/metadata/uid").to_string();
        let namespace = text(pod, "/metadata/namespace").to_string();
        let name = text(pod, "/metadata/name").to_string();
        let ip = match self.blocked.get(&uid) {
            Some((ip, _)) => *ip,
            None => match text(pod, "/status/podIP")
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| self.pods.claim(*ip))
            {
                Some(ip) => ip,
                None => match self.pods.take() {
                    Some(ip) => ip,
                    None => {
                        tracing::error!("the pod address range is exhausted");
                        return;
                    }
                },
            },
        };
        let suffix = uid.rsplit('-').next().unwrap_or(&uid);
        let dir = self
            .options
            .state_dir
            .join("pods")
            .join(&namespace)
            .join(format!("{name}-{suffix}"));
        let claims = self.options.state_dir.join("claims");
        let context = PlanContext {
            store,
            pod,
            ip,
            pod_dir: &dir,
            claims_dir: &claims,
            images: &self.options.images,
            image_args: &self.options.image_args,
            base_env: &self.base_env,
        };
        let planned = match plan::plan(&context) {
            Ok(planned) => planned,
            Err(error) => {
                if self.blocked.get(&uid).map(|(_, e)| e) != Some(&error) {
                    tracing::warn!(pod = %name, %namespace, %error, "pod cannot start yet");
                }
                self.blocked.insert(uid, (ip, error));
                return;
            }
        };
        self.blocked.remove(&uid);
        let (stop, stopped) = watch::channel(Stop::Run);
        let mut containers = Vec::new();
        let mut tasks = Vec::new();
        for container_plan in planned.containers {
            let record = SharedRecord::default();
            containers.push((
                container_plan.name.clone(),
                container_plan.image.clone(),
                record.clone(),
            ));
            let container = Container {
                plan: container_plan,
                record,
                ip,
                pod: name.clone(),
                restart_policy: planned.restart_policy,
                grace: planned.grace,
                backoff: self.options.backoff,
                wake: self.wake.clone(),
            };
            tasks.push(tokio::spawn(container.run(stopped.clone())));
        }
        tracing::info!(pod = %name, %namespace, %ip, "started pod");
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.clone(), name.clone()), dir.join("logs"));
        self.runs.insert(
            uid,
            PodRun {
                namespace,
                name,
                ip,
                dir,
                containers,
                projected: planned.projected,
                grace: planned.grace,
                stop,
                tasks,
                started_at: crate::store::now(),
            },
        );
    }

    /// Writes every pod's status when it changed.
    fn report(&self, store: &mut Store) {
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        for pod in store.list(&pod_type, None) {
            if !pod["spec"]["nodeName"].is_string() {
                continue;
            }
            let uid = text(&pod, "/metadata/uid");
            let status = if let Some(run) = self.runs.get(uid) {
                let containers: Vec<Value> = run
                    .containers
                    .iter()
                    .map(|(name, image, record)| {
                        container_status(name, image, &runner::lock(record))
                    })
                    .collect();
                pod_status(
                    &pod,
                    Some(run.ip),
                    &run.started_at,
                    containers,
                    &self.auto_ready_gates,
                )
            } else if let Some((_, error)) = self.blocked.get(uid) {
                let containers: Vec<Value> = pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let name = text(c, "/name");
                        let (reason, message) = if error.container == name || error.container.is_empty() {
                            (error.reason, error.message.as_str())
                        } else {
                            ("ContainerCreating", "")
                        };
                        json!({"name": name, "image": c["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}, "lastState": {}})
                    })
                    .collect();
                let started = pod["status"]["startTime"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(crate::store::now);
                pod_status(&pod, None, &started, containers, &self.auto_ready_gates)
            } else {
                continue;
            };
            if pod["status"] != status {
                let namespace = text(&pod, "/metadata/namespace");
                let name = text(&pod, "/metadata/name");
                if let Err(error) = store.patch(
                    &pod_type,
                    namespace,
                    name,
                    PatchKind::Merge,
                    &json!({"status": status}),
                    Subresource::Status,
                    "kubelet",
                    false,
                ) {
                    tracing::debug!(pod = %name, %error, "status write failed; next pass retries");
                }
            }
        }
    }
}

fn terminated_json(t: &runner::Terminated) -> Value {
    let mut value = json!({"exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started_at, "finishedAt": t.finished_at});
    if let Some(signal) = t.signal {
        value["signal"] = json!(signal);
    }
    value
}

fn container_status(name: &str, image: &str, record: &runner::Record) -> Value {
    let state = match &record.state {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    };
    let last = match (&record.state, &record.last) {
        // While terminated, the current state is the last run; lastState is the one before.
        (State::Terminated(_), _) | (_, None) => json!({}),
        (_, Some(t)) => json!({"terminated": terminated_json(t)}),
    };
    let mut status = json!({
        "name": name, "image": image, "imageID": "",
        "ready": record.ready, "started": record.started, "restartCount": record.restarts,
        "state": state, "lastState": last,
    });
    if let Some(pid) = record.pid {
        status["containerID"] = json!(format!("process://{pid}"));
    }
    status
}

/// The pod's status: phase, addresses, conditions (Ready = containers ready and every
/// readiness gate True; gate conditions are kept as their writers set them) and containers.
fn pod_status(
    pod: &Value,
    ip: Option<Ipv4Addr>,
    started_at: &str,
    containers: Vec<Value>,
    auto_gates: &[String],
) -> Value {
    let containers_ready = !containers.is_empty() && containers.iter().all(|c| c["ready"] == true);
    let conditions = crate::controllers::pod_conditions(pod, containers_ready, auto_gates);
    let all_terminated = containers
        .iter()
        .all(|c| c["state"]["terminated"].is_object());
    let phase = if ip.is_none() {
        "Pending"
    } else if all_terminated && !containers.is_empty() {
        if containers
            .iter()
            .all(|c| c["state"]["terminated"]["exitCode"] == 0)
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let mut status = json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": started_at,
        "conditions": conditions,
        "containerStatuses": containers,
        "qosClass": "BestEffort",
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

/// Runs the kubelet: a pass after every store change, every container state change, and
/// every second (probes flip readiness between changes).
pub async fn run(shared: Arc<crate::server::Shared>, kubelet: Arc<Mutex<Kubelet>>) {
    let wake = kubelet.lock().unwrap_or_else(|p| p.into_inner()).wake();
    let mut changes = shared.store().subscribe();
    loop {
        {
            let mut kubelet = kubelet.lock().unwrap_or_else(|p| p.into_inner());
            let mut store = shared.store();
            kubelet.sync(&mut store);
        }
        tokio::select! {
            _ = changes.recv() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
