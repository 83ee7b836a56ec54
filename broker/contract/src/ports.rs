//! Ports every broker pod listens on (ARCHITECTURE.md, "Broker contract").

/// The Iggy binary protocol, for clients.
pub const CLIENT_PORT: u16 = 8090;
/// VSR traffic between replicas.
pub const REPLICATION_PORT: u16 = 8091;
/// `/health`, `/ready`, `/metrics` and `/admin/*`.
pub const HTTP_PORT: u16 = 3000;

/// Where a broker started with no configuration listens: loopback only, so a developer's
/// `make run` exposes nothing. The operator binds all interfaces instead.
pub const DEFAULT_CLIENT_ADDRESS: &str = "127.0.0.1:8090";
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:3000";
pub const DEFAULT_REPLICATION_ADDRESS: &str = "127.0.0.1:8091";

/// `0.0.0.0:<port>`: how the operator binds a listener inside a pod.
pub fn all_interfaces(port: u16) -> String {
    format!("0.0.0.0:{port}")
}

/// The URL the sidecar reaches its own broker's admin API at: the pod's loopback.
pub fn local_admin_url() -> String {
    format!("http://127.0.0.1:{HTTP_PORT}")
}
