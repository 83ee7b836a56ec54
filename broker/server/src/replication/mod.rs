//! Cluster mode: the broker as one replica of a VSR group (see docs/replication.md, "How the
//! broker runs the core").
//!
//! * [`Setup`] reads and checks `ring.json` before anything touches the data directory;
//! * [`journal`] is the core's storage on disk, written by its own thread;
//! * [`machine`] applies committed operations to the broker;
//! * [`driver`] runs the core on its own thread and carries out what it asks;
//! * [`transport`] is TCP between replicas;
//! * [`submitter`] is how a connection's operation enters the log;
//! * [`sync`] fetches the data of a peer's checkpoint this replica lacks;
//! * [`space`] is how the primary knows every member's room for sends;
//! * [`status`] is what `/admin/status`, `/ready` and `GetClusterMetadata` report.

pub mod capture;
pub mod checkpointer;
pub mod driver;
pub mod inbound;
pub mod journal;
pub mod machine;
pub mod mapped;
pub mod peer_auth;
pub mod peer_tls;
pub mod ring_update;
pub mod sending;
pub mod space;
pub mod staging;
pub mod status;
pub mod submitter;
pub mod sync;
pub mod transport;
pub mod writer;
pub mod written;

use crate::broker::{BootReport, Broker};
use crate::config::{Config, FsyncPolicy, RouteSetting};
use crate::reclaim::Reclaimer;
use crate::storage::StorageError;
use crate::submit::Submitter;
use driver::{Driver, DriverInput};
use iggy_contract::ring::{MemberId, Ring, RingError};
use journal::{Journal, JournalError, Write};
use machine::BrokerMachine;
use status::ClusterStatus;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use submitter::ReplicatedSubmitter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vsr::{ClientId, DiskImage, Replica, ReplicaId, Route, Superblock};
use writer::{JournalJob, JournalWriter};

/// Ops between checkpoints in cluster mode; see [`Setup::load`].
pub(crate) const CHECKPOINT_INTERVAL: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the ring file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ring file {path} is not valid ring.json: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the ring file {path}: {source}")]
    Ring { path: PathBuf, source: RingError },
    #[error(
        "cluster mode needs root.password (IGGY_ROOT_PASSWORD): every replica must create the \
         same root user, so none may generate its own password"
    )]
    NoRootPassword,
    #[error(
        "cluster mode needs replication.secret (IGGY_REPLICATION_SECRET): replicas prove it to \
         each other before they talk, so the replication port serves no one else"
    )]
    NoReplicationSecret,
    #[error(
        "replication.secret has {0} bytes; it must have at least {min} (a generated random \
         string, such as the operator's)",
        min = peer_auth::MIN_SECRET_LEN
    )]
    ShortReplicationSecret(usize),
    #[error(
        "{0} holds a single-node broker's data (no replication journal); cluster mode starts \
         from an empty data directory"
    )]
    SingleNodeData(PathBuf),
    #[error("cannot prepare the data directory: {0}")]
    Data(#[from] std::io::Error),
    #[error(transparent)]
    PeerTls(#[from] peer_tls::PeerTlsError),
    #[error("replication journal: {0}")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot take the checkpoint's metadata: {0}")]
    Metadata(#[from] crate::error::BrokerError),
    #[error("cannot listen for replicas on {address} (replication.address): {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl ClusterError {
    /// Configuration mistakes (exit code 2) as opposed to runtime failures.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ClusterError::Read { .. }
                | ClusterError::Parse { .. }
                | ClusterError::Ring { .. }
                | ClusterError::NoRootPassword
                | ClusterError::NoReplicationSecret
                | ClusterError::ShortReplicationSecret(_)
                | ClusterError::SingleNodeData(_)
        )
    }
}

/// Client ids of this replica's sessions: its position in the top byte (where replies are
/// routed), a per-boot nonce (a restarted replica never reuses a session of its previous
/// life, whose request numbers ran ahead), and the session's slot.
#[derive(Debug, Clone, Copy)]
pub struct ClientIds {
    position: ReplicaId,
    nonce: u64,
}

impl ClientIds {
    pub fn new(position: ReplicaId, nonce: u64) -> Self {
        Self { position, nonce }
    }

    pub fn id(&self, slot: u32) -> ClientId {
        (ClientId::from(self.position) << 120)
            | (ClientId::from(self.nonce & 0x00FF_FFFF_FFFF_FFFF) << 32)
            | ClientId::from(slot)
    }

    /// The replica a client lives on.
    pub fn home(&self, client: ClientId) -> ReplicaId {
        (client >> 120) as ReplicaId
    }
}

/// A checked ring and this broker's place in it.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ring: Ring,
    /// This node's member id (given, or found by its position).
    pub member_id: MemberId,
    pub position: ReplicaId,
    /// Replication addresses by position.
    pub addresses: Vec<String>,
    pub vsr: vsr::Config,
    /// What this replica and its peers prove to each other.
    pub secret: peer_auth::ClusterSecret,
}

impl Setup {
    /// Reads `cluster.ring_file` and finds this node in it: `cluster.member_id`, or when that
    /// is 0, the member at `cluster.position`.
    pub fn load(config: &Config) -> Result<Setup, ClusterError> {
        let path = &config.cluster.ring_file;
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.clone(),
            source,
        })?;
        let ring: Ring = serde_json::from_str(&text).map_err(|source| ClusterError::Parse {
            path: path.clone(),
            source,
        })?;
        let ring_error = |source| ClusterError::Ring {
            path: path.clone(),
            source,
        };
        ring.validate().map_err(ring_error)?;
        let find = |ring: &Ring| {
            if config.cluster.member_id == 0 && config.cluster.position >= 0 {
                ring.member_at(config.cluster.position).cloned()
            } else {
                ring.member(config.cluster.member_id).cloned()
            }
        };
        let mut me = find(&ring).map_err(ring_error)?;
        // A newer ring handed over while running (kept by `keep_ring_copy`) knows positions
        // the mounted file may not show yet; it wins while it still names this node.
        let copy = ring_copy_path(&config.system.path);
        let ring = match read_ring_copy(&copy) {
            Some(newer)
                if newer.cluster_id == ring.cluster_id
                    && newer.epoch > ring.epoch
                    && newer.validate().is_ok() =>
            {
                match find(&newer) {
                    Ok(found) => {
                        me = found;
                        newer
                    }
                    Err(_) => ring,
                }
            }
            _ => ring,
        };
        if config.root.password.is_empty() {
            return Err(ClusterError::NoRootPassword);
        }
        let secret = &config.replication.secret.0;
        if secret.is_empty() {
            return Err(ClusterError::NoReplicationSecret);
        }
        if secret.len() < peer_auth::MIN_SECRET_LEN {
            return Err(ClusterError::ShortReplicationSecret(secret.len()));
        }
        let tls = peer_tls::PeerTls::generate(config.replication.tls)?;
        let secret = peer_auth::ClusterSecret::new(secret, &ring.cluster_id).with_tls(tls);
        let position = me.position;
        let addresses = ring
            .by_position()
            .iter()
            .map(|m| m.address.clone())
            .collect::<Vec<_>>();
        let route = match config.replication.route {
            RouteSetting::Ring => Route::Ring,
            RouteSetting::Star => Route::Star,
        };
        // Members vote; standbys (after them, by position) follow without voting.
        let mut vsr = vsr::Config::production(
            ring.vsr_cluster(),
            ring.members.len() as u8,
            position,
            route,
        );
        vsr.standby_count = ring.standbys.len() as u8;
        vsr.epoch = ring.epoch;
        // An empty disk under a ring of a cluster that has formed (the ring says so, or it is
        // past the operator's first epoch) lost its data or joins late: either way the cluster
        // has a history it lacks, so it votes in nothing before its peers gave it that
        // history. (The configuration a disk recorded outranks the ring: see
        // `vsr::Replica::open`.)
        vsr.joining = ring.has_history();
        vsr.known_positions = (ring.members.len() + ring.standbys.len()) as u8;
        vsr.seed = u64::from(me.id);
        // The core keeps every prepare since the last checkpoint in memory, and a prepare is
        // a whole batch (up to megabytes): a short interval bounds that memory; a checkpoint
        // costs one sync of the partitions written since the last.
        vsr.checkpoint_interval = CHECKPOINT_INTERVAL;
        vsr.wal_slots = 4 * CHECKPOINT_INTERVAL;
        Ok(Setup {
            member_id: me.id,
            position,
            addresses,
            vsr,
            ring,
            secret,
        })
    }

    /// Every member as clients reach it, by position (see [`members_of`]).
    pub fn members(&self, own_client_port: u16) -> Vec<status::MemberInfo> {
        members_of(&self.ring, own_client_port)
    }

    /// The root user's password salt: the same on every replica of the cluster, so each
    /// creates the same root user (its hash is part of the replicated state).
    pub fn root_salt(&self) -> [u8; 16] {
        xxhash_rust::xxh3::xxh3_128(format!("iggy-root:{}", self.ring.cluster_id).as_bytes())
            .to_le_bytes()
    }
}

/// Every member and standby of `ring` as clients reach it, by position: its `client_address`,
/// or else the host of its replication address with `own_client_port`.
pub fn members_of(ring: &Ring, own_client_port: u16) -> Vec<status::MemberInfo> {
    ring.by_position()
        .iter()
        .map(|m| {
            let (host, port) = split_host_port(m.client_address.as_deref().unwrap_or(""))
                .or_else(|| split_host_port(&m.address).map(|(host, _)| (host, own_client_port)))
                .unwrap_or_default();
            status::MemberInfo {
                id: m.id,
                host,
                client_port: port,
                replication: m.address.clone(),
            }
        })
        .collect()
}

/// Where a replica keeps the newest ring it was handed.
fn ring_copy_path(data: &Path) -> PathBuf {
    Journal::dir(data).join("ring.json")
}

fn read_ring_copy(path: &Path) -> Option<Ring> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `ring` to `path` whole (a temporary file renamed over it), so a crash leaves the old
/// copy or the new one.
pub fn keep_ring_copy(path: &Path, ring: &Ring) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(ring).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, json)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// `host:port` or `[v6]:port` split; `None` when it is neither.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_owned(), port.parse().ok()?))
}

/// A running replica's handles, for shutdown.
pub struct Running {
    inputs: mpsc::Sender<DriverInput>,
    stop: watch::Sender<bool>,
    driver: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the replica thread and the transport; the journal thread ends with the driver.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = self.inputs.send(DriverInput::Stop);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// Opens the journal and the broker's data for cluster mode and starts the replica.
pub async fn boot(
    config: Config,
    setup: Setup,
) -> Result<(Arc<Broker>, BootReport, Running), ClusterError> {
    let data = config.system.path.clone();
    let journal_dir = Journal::dir(&data);
    let had_journal = journal_dir.join("superblock").exists();
    let fsync = config.storage.fsync == FsyncPolicy::Always;
    let (journal, image) = Journal::open(&journal_dir, fsync)?;
    prepare_data(&data, had_journal, &image)?;

    let (inputs, receiver) = mpsc::channel();
    let position = setup.position;
    let config_client_port = config.tcp.address.port();
    let status = Arc::new(
        ClusterStatus::new(
            setup.member_id,
            position,
            setup.ring.epoch,
            setup.ring.cluster_id.clone(),
            setup.members(config.tcp.address.port()),
        )
        .with_ring(setup.ring.clone())
        .with_secret(setup.secret.clone())
        .with_wal_unallocated(journal.unallocated()),
    );
    let clients = ClientIds::new(position, fastrand::u64(..));
    let submitter = ReplicatedSubmitter::new(
        inputs.clone(),
        &clients,
        status.clone(),
        config.replication.request_timeout.0,
        setup.root_salt(),
    );
    let listen = config.replication.address;
    let max_frame = config.tcp.max_send_bytes.0 as usize + (1 << 20);
    let inbound_budget = config.replication.inbound_budget.0 as usize;
    let (broker, report) = tokio::task::block_in_place(|| {
        Broker::open_with(config, Submitter::Replicated(Box::new(submitter)))
    })?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ClusterError::Listen {
            address: listen,
            source,
        })?;
    let inbound = Arc::new(inbound::Inbound::with_budget(inbound_budget));
    let (stop, stop_rx) = watch::channel(false);
    let peers = sending::Peers::start(
        &setup.addresses,
        position,
        status.clone(),
        setup.secret.clone(),
        stop_rx.clone(),
    );
    tokio::spawn(transport::serve(
        listener,
        transport::Receiving {
            inputs: inputs.clone(),
            inbound: inbound.clone(),
            broker: broker.clone(),
            max_frame,
            secret: setup.secret.clone(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(transport::HANDSHAKES_MAX)),
        },
        stop_rx,
    ));

    let (jobs, journal_rx) = mpsc::channel();
    let written = Arc::new(written::WrittenPartitions::default());
    let journal_written = written.clone();
    let done = inputs.clone();
    // Each durable superblock makes at most a few WAL files obsolete; four such lots may wait.
    let garbage = Reclaimer::start("vsr-journal-gc", 4);
    let journal = Arc::new(Mutex::new(journal));
    let writeback_queued = Arc::new(AtomicBool::new(false));
    // Appends are made on the replica thread when no fsync follows them (`writer.rs`).
    let inline = (!fsync).then(|| journal.clone());
    let writer = JournalWriter::new(jobs, inline, writeback_queued.clone());
    let checkpoints = checkpointer::Checkpointer {
        dir: journal_dir.clone(),
        done: done.clone(),
        written: journal_written.clone(),
    }
    .start()?;
    let thread = JournalThread {
        journal,
        done,
        written: journal_written,
        garbage,
        writeback_queued,
        checkpoints,
    };
    std::thread::Builder::new()
        .name("vsr-journal".into())
        .spawn(move || thread.run(journal_rx))?;

    let machine = BrokerMachine::new(broker.clone(), written);
    let replica = Replica::open(setup.vsr.clone(), image, machine);
    if replica.is_faulty() && !had_journal {
        tracing::info!(
            "an empty disk in a cluster that has formed (a lost disk or a late start): this \
             replica takes part in view changes once a peer has given it the cluster's log"
        );
    } else if replica.is_faulty() {
        broker
            .metrics
            .wal_damaged_at_start
            .store(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            "the journal holds a damaged prepare that was acknowledged; this replica repairs \
             its log from its peers before it takes part in view changes again"
        );
    }
    status.publish(&replica);
    // A ring newer than the configuration the disk recorded is a proposal not yet committed
    // (or never seen by this replica): handed over like a posted one.
    let proposal = (setup.ring.epoch > replica.epoch()).then(|| setup.ring.clone());
    let replayed_through = replica.log_tail();
    let driver = Driver {
        replica,
        me: position,
        cluster: setup.vsr.cluster,
        peers,
        journal: writer,
        status,
        broker: broker.clone(),
        clients,
        addresses: setup.addresses.clone(),
        client_port: config_client_port,
        ring_copy: ring_copy_path(&data),
        sync_failed: None,
        synced: None,
        data_ahead_of_core: false,
        prepared_at: Default::default(),
        last_prepare: None,
        mapped: Default::default(),
        replayed_through,
        inbound,
        normal_view: None,
        resubmit_at: None,
        space_reported: None,
    };
    let driver = std::thread::Builder::new()
        .name("vsr-replica".into())
        .spawn(move || driver.run(receiver))?;
    tokio::spawn(keep_settings_in_force(broker.clone(), stop.subscribe()));
    if let Some(ring) = proposal {
        let _ = inputs.send(DriverInput::Ring(ring));
    }
    tracing::info!(
        member = setup.member_id,
        position,
        members = setup.addresses.len(),
        ring_epoch = setup.ring.epoch,
        replication = %listen,
        replication_tls = setup.secret.opening_tls().is_some(),
        "replica started"
    );
    Ok((
        broker,
        report,
        Running {
            inputs,
            stop,
            driver: Some(driver),
        },
    ))
}

/// How often a replica checks whether, as primary, it must put its configured deduplication
/// and state settings in force (`state::settings`).
const SETTINGS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Whoever is primary puts its configured settings in force: a new primary within a second,
/// and at once when it is asked to order an operation before the cluster holds any
/// (`BrokerMachine::admit`). Ends when the replica stops.
async fn keep_settings_in_force(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SETTINGS_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = broker.settings_wanted.notified() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = broker.put_settings_in_force().await {
            tracing::warn!(error = %e, "configured settings not committed; trying again");
        }
    }
}

/// The broker's data in cluster mode is derived from the log, and boot brings it to the state
/// the core will replay the WAL onto. Before the first durable checkpoint the WAL holds every
/// op since the cluster began, so the data is rebuilt from it: what a previous run applied is
/// removed here, or replaying would apply it twice. After one, what ops after it deleted is
/// moved back from the graveyard and the checkpoint's metadata is written for the broker to
/// open with (a checkpoint that does not verify or decode leaves the metadata alone: the core
/// finds it damaged too and keeps this replica out of quorums until it is repaired); the
/// partitions are cut back to the checkpoint when the core restores it
/// (`BrokerMachine::restore`).
///
/// Data without a journal is a single node's, which cluster mode refuses to adopt.
fn prepare_data(data: &Path, had_journal: bool, image: &DiskImage) -> Result<(), ClusterError> {
    let checkpoint = Superblock::newest(&image.superblocks).map_or(0, |sb| sb.checkpoint);
    // What ops after the checkpoint deleted comes back: the checkpoint names it, and the
    // WAL's replay deletes it again (`storage::graveyard`).
    let exhumed = crate::storage::graveyard::exhume(data, checkpoint)?;
    if exhumed > 0 {
        tracing::info!(
            exhumed,
            checkpoint,
            "restored data deleted after the checkpoint"
        );
    }
    if checkpoint > 0 {
        // The broker opens with the checkpoint's metadata, so each partition it opens is the
        // incarnation the checkpoint names — not one that ops after it created with the same
        // ids, whose records the metadata file may hold (the WAL's replay creates them again).
        if let Some(snapshot) = checkpoint_metadata(image) {
            crate::storage::metadata::MetadataStore::new(data)?.save(&snapshot)?;
        }
        return Ok(());
    }
    let metadata = data.join(crate::storage::metadata::FILE_NAME);
    let streams = crate::storage::metadata::streams_dir(data);
    if !had_journal && (metadata.exists() || streams.exists()) {
        return Err(ClusterError::SingleNodeData(data.to_owned()));
    }
    if metadata.exists() {
        std::fs::remove_file(&metadata)?;
    }
    if streams.exists() {
        std::fs::remove_dir_all(&streams)?;
    }
    Ok(())
}

/// The metadata of the checkpoint the superblock names, if it verifies and decodes.
fn checkpoint_metadata(image: &DiskImage) -> Option<crate::storage::metadata::Snapshot> {
    let named = Superblock::newest(&image.superblocks).map_or(0, |sb| sb.checkpoint);
    image
        .checkpoint
        .as_ref()
        .filter(|c| named > 0 && c.op() == named && c.verify())
        .and_then(|c| machine::Manifest::decode(&c.state).ok())
        .and_then(|m| serde_json::from_slice(&m.metadata).ok())
}

/// The journal thread: carries out the core's writes in issue order, many at a time (one
/// fsync for a burst of prepares), and reports them done. Checkpoints go to the checkpointer
/// thread instead (`checkpointer.rs`), which syncs the partitions first, so the segment data
/// a manifest names is on disk before any superblock names it. What a durable superblock made
/// obsolete goes to `garbage`, deleted on a thread of its own at idle priority (see
/// `Journal::take_garbage` and `crate::reclaim`). With `fsync = never` the replica thread
/// makes most appends itself (`writer.rs`) and asks this thread only for the writeback hints
/// that follow them.
struct JournalThread {
    journal: Arc<Mutex<Journal>>,
    done: mpsc::Sender<DriverInput>,
    written: Arc<written::WrittenPartitions>,
    garbage: Reclaimer,
    writeback_queued: Arc<AtomicBool>,
    checkpoints: mpsc::Sender<checkpointer::Job>,
}

impl JournalThread {
    fn run(self, jobs: mpsc::Receiver<JournalJob>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    JournalJob::Write(io, write) => batch.push((io, write)),
                    JournalJob::Writeback => self.writeback_queued.store(false, Ordering::Release),
                }
                if batch.len() < 1024 {
                    next = jobs.try_recv().ok();
                }
            }
            if !batch.is_empty() && !self.write(batch) {
                return;
            }
            // After reporting the writes done, not before: start writing back what the applies
            // wrote meanwhile, so the next checkpoint's fsync has little left to wait for (see
            // `Partition::start_writeback`).
            for partition in self.written.take_for_writeback() {
                partition.start_writeback();
            }
        }
    }

    /// Carries out `batch` and reports it done; false once the driver is gone.
    fn write(&self, batch: Vec<(u64, Write)>) -> bool {
        let mut rest = Vec::with_capacity(batch.len());
        for (io, write) in batch {
            match write {
                Write::Checkpoint(checkpoint) => {
                    if self.checkpoints.send((io, checkpoint)).is_err() {
                        return false;
                    }
                }
                other => rest.push((io, other)),
            }
        }
        if rest.is_empty() {
            return true;
        }
        let (ios, batch): (Vec<u64>, Vec<Write>) = rest.into_iter().unzip();
        let (mapped, garbage) = {
            let mut journal = writer::lock(&self.journal);
            let mapped = writer::write_or_stop(&mut journal, &batch);
            (mapped, journal.take_garbage())
        };
        if self.done.send(DriverInput::WriteDone(ios, mapped)).is_err() {
            return false;
        }
        if let Some(obsolete) = garbage {
            self.garbage.submit(move || obsolete.remove());
        }
        true
    }
}

/// A replica whose storage failed stops: it cannot promise what it acknowledges. The others
/// carry on; a restart recovers what this one's disk still holds.
pub(super) fn fail_stop(message: &str) -> ! {
    tracing::error!("{message}; stopping this replica");
    eprintln!("iggy-broker: {message}");
    std::process::exit(70);
}

#[cfg(test)]
mod tests;
