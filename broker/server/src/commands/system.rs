//! Ping, LoginUser, LogoutUser, GetMe, GetStats, GetClient, GetClients, GetClusterMetadata
//! and GetSnapshotFile.

use crate::broker::Broker;
use crate::diagnostics;
use crate::error::{BrokerError, Result};
use crate::net::clients::ClientEntry;
use crate::net::session::Session;
use crate::security::access::Access;
use crate::security::auth;
use crate::state::stats;
use crate::storage::fsutil::now_micros;
use iggy_wire::response::{self, Stats};
use std::time::Instant;

/// `user_id` reported for a client that has not logged in.
const NO_USER: u32 = u32::MAX;

pub async fn login(
    broker: &Broker,
    session: &mut Session,
    username: String,
    password: String,
    body: &mut Vec<u8>,
) -> Result<()> {
    let address = session
        .address
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip());
    if !broker
        .logins
        .wait(address, &username, Instant::now())
        .is_zero()
    {
        // The same answer as a wrong password, without spending a hash on it.
        broker
            .metrics
            .logins_throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(BrokerError::InvalidCredentials);
    }
    let user = broker
        .catalog()
        .users
        .iter()
        .find(|u| u.username == username)
        .cloned();
    // Verify against a throwaway hash when the user is unknown, so timing does not reveal
    // which usernames exist.
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let matches = broker
        .hashing
        .run(move || {
            let hash = stored.unwrap_or_else(dummy_hash);
            auth::verify_password(&password, &hash)
        })
        .await?;
    // An inactive user's right password answers exactly as a wrong one (and counts as a
    // failure for throttling): a different answer would confirm the password to whoever
    // guessed it. The log says why.
    let user = match user {
        Some(user) if matches && user.active => user,
        found => {
            if found.is_some_and(|u| !u.active) && matches {
                tracing::info!(%username, "login refused: the user is inactive");
            }
            broker.logins.failed(address, &username, Instant::now());
            return Err(BrokerError::InvalidCredentials);
        }
    };
    broker.logins.succeeded(address, &username);
    session.user_id = Some(user.id);
    broker.clients.set_user(session.client_id, session.user_id);
    body.extend_from_slice(&response::identity(user.id));
    Ok(())
}

pub fn logout(broker: &Broker, session: &mut Session) -> Result<()> {
    session.user_id = None;
    broker.clients.set_user(session.client_id, None);
    Ok(())
}

fn dummy_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("no-such-user").unwrap_or_default())
        .clone()
}

fn encode_client_details(client_id: u32, entry: &ClientEntry, body: &mut Vec<u8>) {
    let groups: Vec<_> = entry.groups.iter().copied().collect();
    response::encode_client(
        client_id,
        entry.user_id.unwrap_or(NO_USER),
        &entry.address,
        &groups,
        body,
    );
}

pub fn get_me(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    broker.catalog().session_user(session.user_id)?;
    let entry = broker
        .clients
        .get(session.client_id)
        .ok_or(BrokerError::Unauthenticated)?;
    encode_client_details(session.client_id, &entry, body);
    Ok(())
}

/// A client that is gone is an empty OK reply.
pub fn get_client(
    broker: &Broker,
    session: &Session,
    client_id: u32,
    body: &mut Vec<u8>,
) -> Result<()> {
    broker
        .catalog()
        .authorize(session.user_id, Access::ReadServers)?;
    if let Some(entry) = broker.clients.get(client_id) {
        encode_client_details(client_id, &entry, body);
    }
    Ok(())
}

pub fn get_clients(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    broker
        .catalog()
        .authorize(session.user_id, Access::ReadServers)?;
    for (id, entry) in broker.clients.all() {
        response::encode_client_info(
            id,
            entry.user_id.unwrap_or(NO_USER),
            &entry.address,
            entry.groups.len() as u32,
            body,
        );
    }
    Ok(())
}

pub fn get_stats(broker: &Broker, session: &Session, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    catalog.authorize(session.user_id, Access::ReadServers)?;
    let now = now_micros();
    let run_time = now.saturating_sub(broker.started_at);
    let process = stats::process(run_time as f64 / 1e6);
    let (free_disk_space, total_disk_space) = stats::disk_space(&broker.config.system.path);
    let mut figures = Stats {
        process_id: std::process::id(),
        cpu_usage: process.cpu_percent,
        total_cpu_usage: process.total_cpu_percent,
        memory_usage: process.rss_bytes,
        total_memory: process.total_memory,
        available_memory: process.available_memory,
        run_time,
        start_time: broker.started_at,
        read_bytes: process.read_bytes,
        written_bytes: process.written_bytes,
        clients_count: broker.clients.count() as u32,
        hostname: stats::hostname(),
        os_name: std::env::consts::OS.to_owned(),
        os_version: stats::os_version(),
        kernel_version: stats::kernel_version(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        server_semver: semver(env!("CARGO_PKG_VERSION")),
        threads_count: process.threads,
        free_disk_space,
        total_disk_space,
        ..Stats::default()
    };
    figures.streams_count = catalog.streams.len() as u32;
    for stream in catalog.streams.values() {
        figures.topics_count += stream.topics.len() as u32;
        for topic in stream.topics.values() {
            figures.consumer_groups_count += topic.groups().len() as u32;
            figures.partitions_count += topic.partitions.len() as u32;
            for partition in &topic.partitions {
                let log = partition.log();
                figures.segments_count += log.segments_count();
                figures.messages_count += log.messages_count();
                figures.messages_size_bytes += log.size_bytes();
            }
        }
    }
    figures.encode(body);
    Ok(())
}

/// GetSnapshotFile: a ZIP of diagnostics (`diagnostics`). It shows the configuration and the
/// processes the broker can see, so it takes the permission GetStats takes, where Iggy asks
/// only for a login.
pub async fn get_snapshot(
    broker: &Broker,
    session: &Session,
    compression: u8,
    kinds: &[u8],
    body: &mut Vec<u8>,
) -> Result<()> {
    broker
        .catalog()
        .authorize(session.user_id, Access::ReadServers)?;
    let request = diagnostics::Request::parse(compression, kinds)?;
    // One archive at a time: each walks the data directory and reads /proc on a blocking
    // thread, and many clients asking at once would hold as many threads and cores.
    static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _turn = ONE_AT_A_TIME
        .acquire()
        .await
        .map_err(|e| BrokerError::SnapshotFailed(e.to_string()))?;
    let started = Instant::now();
    let facts = diagnostics::Facts::of(broker);
    let archive = tokio::task::spawn_blocking(move || diagnostics::archive(&facts, &request))
        .await
        .map_err(|e| BrokerError::SnapshotFailed(e.to_string()))??;
    tracing::info!(
        client = session.client_id,
        bytes = archive.len(),
        ms = started.elapsed().as_millis() as u64,
        "snapshot made"
    );
    body.extend_from_slice(&archive);
    Ok(())
}

/// `major << 20 | minor << 10 | patch`, Iggy's packed version.
fn semver(version: &str) -> u32 {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (major << 20) | (minor << 10) | patch
}

/// `GetClusterMetadata`: the ring's members as clients reach them, and — with
/// `replication.advertise_leader` — the primary as leader (see defaults.toml for why that is
/// off by default). A single node answers `FeatureUnavailable`, as Iggy does with clustering
/// off.
pub fn get_cluster_metadata(broker: &Broker, body: &mut Vec<u8>) -> Result<()> {
    let Some(status) = broker.cluster_status() else {
        return Err(BrokerError::NotServed(
            iggy_wire::Command::GetClusterMetadata,
        ));
    };
    let primary = status
        .primary()
        .filter(|_| broker.config.replication.advertise_leader);
    let layout = status.layout();
    let names: Vec<String> = layout
        .members
        .iter()
        .map(|m| format!("member-{}", m.id))
        .collect();
    let nodes: Vec<response::ClusterNodeInfo<'_>> = layout
        .members
        .iter()
        .enumerate()
        .map(|(position, member)| {
            let position = position as u8;
            let me = position == status.position;
            let health = if me {
                if broker.is_ready() {
                    response::CLUSTER_STATUS_HEALTHY
                } else {
                    response::CLUSTER_STATUS_STARTING
                }
            } else if status.reachable(position) {
                response::CLUSTER_STATUS_HEALTHY
            } else {
                response::CLUSTER_STATUS_UNREACHABLE
            };
            response::ClusterNodeInfo {
                name: &names[usize::from(position)],
                host: &member.host,
                tcp_port: member.client_port,
                // Only this broker's own HTTP port is known here.
                http_port: if me {
                    broker.config.http.address.port()
                } else {
                    0
                },
                role: if primary == Some(position) {
                    response::CLUSTER_ROLE_LEADER
                } else {
                    response::CLUSTER_ROLE_FOLLOWER
                },
                status: health,
            }
        })
        .collect();
    response::encode_cluster_metadata(&status.cluster_name, &nodes, body);
    Ok(())
}
