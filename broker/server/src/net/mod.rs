//! The network edge: the Iggy TCP listener and its connection loop, the HTTP endpoint (probes,
//! metrics, the sidecar's admin API), each connection's session, and the table of connected
//! clients, and TLS on the client port. Replication's listener (`replication/`, with the replicated broker) sits beside it.

pub mod budget;
pub mod clients;
pub mod http;
pub mod quickack;
pub mod session;
pub mod tcp;
pub mod tls;
