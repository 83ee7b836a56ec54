//! Pod and Service networking on loopback: pod IPs from one /16 of 127.0.0.0/8 and ClusterIPs
//! from the next ([`Subnets::reserve`]), a userspace L4 proxy per Service port forwarding to ready endpoints round
//! robin (kube-proxy's old userspace mode), EndpointSlices kept current, and a hosts file
//! naming pods and Services for the processes the kubelet starts.

use crate::controllers::{is_ready, text};
use crate::store::{PatchKind, Store, Subresource};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The two /16s of 127.0.0.0/8 one harness uses: pods in `127.<pods>.0.0/16`, Services in
/// `127.<pods + 1>.0.0/16`. Harnesses running side by side (parallel tests) each hold an
/// exclusive lock on a file named after their pair, so their pods never share an address.
pub struct Subnets {
    pub pods: u8,
    pub services: u8,
    _lock: std::fs::File,
}

impl Subnets {
    pub fn reserve() -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let pairs: Vec<u8> = (16..=252).step_by(2).collect();
        // Start at a pid-derived pair so parallel harnesses rarely contend for the same lock.
        let start = std::process::id() as usize % pairs.len();
        for offset in 0..pairs.len() {
            let pods = pairs[(start + offset) % pairs.len()];
            let path = std::env::temp_dir().join(format!("kube-harness-net-127.{pods}.lock"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            // SAFETY: flock(2) on a descriptor this function owns; released when it closes.
            let locked =
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if locked {
                return Ok(Self {
                    pods,
                    services: pods + 1,
                    _lock: file,
                });
            }
        }
        Err(std::io::Error::other(
            "every loopback /16 pair is held by another kube-harness",
        ))
    }
}

/// Hands out addresses of one /16 under 127.0.0.0/8, reusing released ones last.
pub struct AddressPool {
    second_octet: u8,
    next: u32,
    free: Vec<Ipv4Addr>,
    used: BTreeSet<Ipv4Addr>,
}

impl AddressPool {
    pub fn new(second_octet: u8) -> Self {
        Self {
            second_octet,
            next: 2,
            free: Vec::new(),
            used: BTreeSet::new(),
        }
    }

    pub fn take(&mut self) -> Option<Ipv4Addr> {
        // Fresh addresses first: a pod's successor should not inherit connections or
        // TIME_WAIT sockets aimed at its predecessor.
        let ip = if self.next < 65_534 {
            let n = self.next;
            self.next += 1;
            Ipv4Addr::new(127, self.second_octet, (n >> 8) as u8, (n & 0xff) as u8)
        } else {
            self.free.pop()?
        };
        self.used.insert(ip);
        Some(ip)
    }

    /// Marks an address some object already carries as taken (after a restart of the pool).
    pub fn claim(&mut self, ip: Ipv4Addr) -> bool {
        let ours = ip.octets()[0] == 127 && ip.octets()[1] == self.second_octet;
        if ours {
            self.used.insert(ip);
            let n = u32::from(ip.octets()[2]) << 8 | u32::from(ip.octets()[3]);
            self.next = self.next.max(n + 1);
        }
        ours
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.used.remove(&ip) {
            self.free.insert(0, ip);
        }
    }
}

/// A Service port's current backends.
#[derive(Default)]
struct Route {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

type Routes = Arc<RwLock<HashMap<SocketAddr, Arc<Route>>>>;

pub struct Network {
    services: AddressPool,
    routes: Routes,
    listeners: HashMap<SocketAddr, JoinHandle<()>>,
    pub hosts_file: PathBuf,
    hosts_text: String,
}

fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| pod["metadata"]["labels"][k] == *v)
}

/// The port a Service's targetPort names on this pod.
fn target_port(port: &Value, pod: &Value) -> Option<u16> {
    let target = if port["targetPort"].is_null() {
        &port["port"]
    } else {
        &port["targetPort"]
    };
    if let Some(number) = target.as_u64() {
        return u16::try_from(number).ok();
    }
    let name = target.as_str()?;
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find_map(|c| super::plan::container_ports(c).get(name).copied())
}

impl Network {
    pub fn new(hosts_file: PathBuf, services_octet: u8) -> Self {
        Self {
            services: AddressPool::new(services_octet),
            routes: Arc::new(RwLock::new(HashMap::new())),
            listeners: HashMap::new(),
            hosts_file,
            hosts_text: String::new(),
        }
    }

    /// One pass: ClusterIPs, routes and listeners, EndpointSlices, the hosts file.
    pub fn sync(&mut self, store: &mut Store) {
        let service_type = store.type_by_kind("", "Service").expect("built in");
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        let pods = store.list(&pod_type, None);
        let mut routes: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        let mut hosts: Vec<(String, Vec<String>)> = Vec::new();
        for service in store.list(&service_type, None) {
            let namespace = text(&service, "/metadata/namespace").to_string();
            let name = text(&service, "/metadata/name").to_string();
            let headless = text(&service, "/spec/clusterIP") == "None";
            let mut cluster_ip: Option<Ipv4Addr> = text(&service, "/spec/clusterIP").parse().ok();
            if let Some(ip) = cluster_ip {
                self.services.claim(ip);
            }
            if !headless && cluster_ip.is_none() {
                cluster_ip = self.services.take();
                if let Some(ip) = cluster_ip {
                    // The API server allocates this at create; here the network does, once.
                    let patch = json!({"spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()]}});
                    if let Err(error) = store.patch(
                        &service_type,
                        &namespace,
                        &name,
                        PatchKind::Merge,
                        &patch,
                        Subresource::Main,
                        "kube-apiserver",
                        false,
                    ) {
                        tracing::warn!(%error, service = %name, "could not record the ClusterIP");
                    }
                }
            }
            let selector = service["spec"]["selector"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let publish_not_ready =
                service["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
            let members: Vec<&Value> = pods
                .iter()
                .filter(|pod| text(pod, "/metadata/namespace") == namespace)
                .filter(|pod| selects(&selector, pod))
                .filter(|pod| pod["status"]["podIP"].is_string())
                .collect();
            let ports: Vec<Value> = service["spec"]["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut endpoints = Vec::new();
            for pod in &members {
                let Ok(ip) = text(pod, "/status/podIP").parse::<Ipv4Addr>() else {
                    continue;
                };
                let terminating = pod["metadata"]["deletionTimestamp"].is_string();
                let ready = is_ready(pod) && !terminating;
                let serving = ready || publish_not_ready;
                endpoints.push(json!({
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": ready || (publish_not_ready && !terminating), "serving": serving, "terminating": terminating},
                    "hostname": pod["spec"]["hostname"],
                    "nodeName": pod["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
                }));
                if let (Some(cluster_ip), true) =
                    (cluster_ip, (ready || publish_not_ready) && !terminating)
                {
                    for port in &ports {
                        let (Some(front), Some(back)) = (
                            port["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                            target_port(port, pod),
                        ) else {
                            continue;
                        };
                        routes
                            .entry(SocketAddr::from((cluster_ip, front)))
                            .or_default()
                            .push(SocketAddr::from((ip, back)));
                    }
                }
                // <hostname>.<subdomain>.<ns>.svc: StatefulSet pods under their governing
                // Service, published as cluster DNS does — ready ones, or all with
                // publishNotReadyAddresses (which the brokers' headless Service sets).
                if text(pod, "/spec/subdomain") == name && (ready || publish_not_ready) {
                    let fqdn = format!("{}.{name}.{namespace}.svc", text(pod, "/spec/hostname"));
                    hosts.push((ip.to_string(), vec![format!("{fqdn}.cluster.local"), fqdn]));
                }
            }
            if let Some(ip) = cluster_ip {
                for port in &ports {
                    if let Some(front) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) {
                        routes.entry(SocketAddr::from((ip, front))).or_default();
                    }
                }
                let fqdn = format!("{name}.{namespace}.svc");
                hosts.push((ip.to_string(), vec![format!("{fqdn}.cluster.local"), fqdn]));
            }
            if !selector.is_empty() {
                // Slice ports are the pods' ports, a named targetPort resolved on a member.
                let slice_ports: Vec<Value> = ports
                    .iter()
                    .map(|p| {
                        let number = members.first().and_then(|pod| target_port(p, pod)).map(u64::from).or(p["targetPort"].as_u64()).or(p["port"].as_u64());
                        json!({"name": p["name"].as_str().unwrap_or(""), "port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")})
                    })
                    .collect();
                write_slice(store, &service, slice_ports, endpoints);
            }
        }
        self.apply_routes(routes);
        self.write_hosts(&hosts);
    }

    fn apply_routes(&mut self, wanted: HashMap<SocketAddr, Vec<SocketAddr>>) {
        {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            routes.retain(|front, _| wanted.contains_key(front));
            for (front, backends) in &wanted {
                let same = routes.get(front).is_some_and(|r| r.backends == *backends);
                if !same {
                    routes.insert(
                        *front,
                        Arc::new(Route {
                            backends: backends.clone(),
                            next: AtomicUsize::new(0),
                        }),
                    );
                }
            }
        }
        self.listeners.retain(|front, task| {
            let keep = wanted.contains_key(front);
            if !keep {
                task.abort();
            }
            keep
        });
        for front in wanted.keys() {
            if self.listeners.contains_key(front) {
                continue;
            }
            match std::net::TcpListener::bind(front).and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }) {
                Ok(listener) => {
                    let task = tokio::spawn(proxy(listener, *front, self.routes.clone()));
                    self.listeners.insert(*front, task);
                }
                Err(error) => {
                    tracing::warn!(%front, %error, "cannot listen for a Service port; retrying")
                }
            }
        }
    }

    fn write_hosts(&mut self, entries: &[(String, Vec<String>)]) {
        let mut text =
            String::from("# Written by the dev cluster's kubelet: pods and Services by name.\n");
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {}\n", names.join(" ")));
        }
        if text == self.hosts_text {
            return;
        }
        let temp = self.hosts_file.with_extension("tmp");
        match std::fs::write(&temp, &text).and_then(|()| std::fs::rename(&temp, &self.hosts_file)) {
            Ok(()) => self.hosts_text = text,
            Err(error) => tracing::warn!(%error, "cannot write the hosts file"),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// The Service's EndpointSlice, named after it, written when it changed.
fn write_slice(store: &mut Store, service: &Value, slice_ports: Vec<Value>, endpoints: Vec<Value>) {
    let Some(rt) = store.type_by_kind("discovery.k8s.io", "EndpointSlice") else {
        return;
    };
    let namespace = text(service, "/metadata/namespace");
    let name = text(service, "/metadata/name");
    let wanted = json!({
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": service["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": slice_ports,
    });
    match store.get(&rt, namespace, name) {
        Ok(current)
            if current["endpoints"] == wanted["endpoints"]
                && current["ports"] == wanted["ports"] => {}
        Ok(_) => {
            let _ = store.patch(
                &rt,
                namespace,
                name,
                PatchKind::Merge,
                &json!({"endpoints": wanted["endpoints"], "ports": wanted["ports"]}),
                Subresource::Main,
                "endpointslice-controller",
                false,
            );
        }
        Err(_) => {
            let _ = store.create(&rt, namespace, wanted, "endpointslice-controller");
        }
    }
}

/// Accepts on a Service port and splices each connection to the next backend; with no
/// backend the connection is closed at once, as a Service without endpoints rejects.
async fn proxy(listener: TcpListener, front: SocketAddr, routes: Routes) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let route = routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&front)
            .cloned();
        let Some(route) = route.filter(|r| !r.backends.is_empty()) else {
            drop(client);
            continue;
        };
        let backend =
            route.backends[route.next.fetch_add(1, Ordering::Relaxed) % route.backends.len()];
        tokio::spawn(async move {
            let Ok(Ok(mut upstream)) =
                tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(backend)).await
            else {
                return;
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_hand_out_fresh_addresses_and_respect_claims() {
        let mut pool = AddressPool::new(1);
        let first = pool.take().expect("address");
        assert_eq!(first, Ipv4Addr::new(127, 1, 0, 2));
        assert!(pool.claim(Ipv4Addr::new(127, 1, 1, 7)));
        assert_eq!(pool.take(), Some(Ipv4Addr::new(127, 1, 1, 8)));
        assert!(!pool.claim(Ipv4Addr::new(10, 0, 0, 1)));
        pool.release(first);
        assert_ne!(
            pool.take(),
            Some(first),
            "released addresses come back last"
        );
    }
}
