//! The broker's shared state: configuration, the catalog, the metadata store and metrics, plus
//! boot (loading and recovering every partition) and clean shutdown.

use crate::config::{Config, FsyncPolicy};
use crate::error::{BrokerError, Result};
use crate::metrics::Metrics;
use crate::net::budget::MemoryBudget;
use crate::net::clients::Clients;
use crate::ops::{Operation, Submission};
use crate::security::auth;
use crate::security::hashing::HashPool;
use crate::security::throttle::{LoginThrottle, ThrottleSettings};
use crate::state::catalog::{Catalog, Stream, Topic};
use crate::state::groups::GroupMember;
use crate::state::partition::Partition;
use crate::state::settings::StateSettings;
use crate::storage::fsutil::{self, now_micros};
use crate::storage::metadata::{self, MetadataStore, UserRecord};
use crate::storage::partition_log::PartitionLog;
use crate::storage::StorageError;
use crate::submit::{LocalSubmitter, Submit, Submitter};
use iggy_contract::AdminStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub struct Broker {
    pub config: Config,
    catalog: RwLock<Catalog>,
    store: MetadataStore,
    pub metrics: Metrics,
    pub clients: Clients,
    /// Microseconds since the epoch when this process started (GetStats).
    pub started_at: u64,
    next_client_id: AtomicU32,
    /// Drawn at each start: names this process's consumer-group members apart from an earlier
    /// one's (see `state::groups::GroupMember`).
    incarnation: u32,
    ready: AtomicBool,
    submitter: Submitter,
    /// Password hashing and verification, bounded (see `security::hashing`).
    pub hashing: HashPool,
    /// Memory for request bodies and poll responses in flight (see `net::budget`).
    pub memory: MemoryBudget,
    /// Failed-login throttling (see `security::throttle`).
    pub logins: LoginThrottle,
    /// Tiered storage, when an object store (L3) is configured (see `tiering`).
    pub tiering: Option<Arc<crate::tiering::Tiering>>,
    /// The console's last lines, for the snapshot command, once the binary hands them over.
    pub recent_logs: std::sync::OnceLock<Arc<iggy_telemetry::RecentLines>>,
    /// Wakes the task that completes this node's members' partition handovers (`handover`).
    pub handovers: crate::handover::Handovers,
    /// Wakes the task that puts the configured settings in force (`put_settings_in_force`):
    /// a primary asked to order an operation before the cluster holds any settings.
    pub settings_wanted: tokio::sync::Notify,
}

/// What boot found worth telling the operator.
#[derive(Debug, Default)]
pub struct BootReport {
    pub first_boot: bool,
    /// Set on first boot when the root password was generated; printed once, never stored.
    pub generated_root_password: Option<String>,
    pub partitions: usize,
    pub verified_bytes: u64,
    pub truncated_tails: usize,
    /// Messages found rotted in place (`storage::recovery`): the partition (by stream, topic
    /// and partition id) and the offsets `from..until`, to be repaired.
    pub damaged: Vec<((u32, u32, u32), u64, u64)>,
}

impl Broker {
    /// Opens the data directory: loads metadata, recovers every partition, creates the root
    /// user on first boot. Fails on corruption, naming the file and position.
    pub fn open(config: Config) -> Result<(Arc<Broker>, BootReport), StorageError> {
        Self::open_with(config, Submitter::Local(LocalSubmitter))
    }

    /// [`Broker::open`] with the given submitter. A replicated broker's root user is created
    /// alike on every replica: its hash uses the cluster's salt, its creation time is 0.
    pub fn open_with(
        config: Config,
        submitter: Submitter,
    ) -> Result<(Arc<Broker>, BootReport), StorageError> {
        let root_salt = match &submitter {
            Submitter::Local(_) => None,
            Submitter::Replicated(replicated) => Some(replicated.root_salt),
        };
        let store = MetadataStore::new(&config.system.path)?;
        let mut report = BootReport::default();
        let mut catalog = Catalog::default();
        let snapshot = store.load()?;
        match snapshot {
            Some(snapshot) => {
                catalog.users = snapshot.users.clone();
                catalog.deduplication = snapshot.deduplication;
                catalog.settings = snapshot.settings;
                let segment_size = StateSettings::in_force(snapshot.settings, &config).segment_size;
                for s in &snapshot.streams {
                    let mut topics = BTreeMap::new();
                    for t in &s.topics {
                        let mut partitions = Vec::with_capacity(t.partitions.len());
                        for p in &t.partitions {
                            let dir =
                                metadata::partition_dir(&config.system.path, s.id, t.id, p.id);
                            let (log, recovered) =
                                PartitionLog::open(&dir, segment_size, sync_on_roll(&config))?;
                            report.partitions += 1;
                            report.verified_bytes += recovered.verified_bytes;
                            report.truncated_tails += usize::from(recovered.truncated.is_some());
                            report.damaged.extend(
                                recovered
                                    .damaged
                                    .iter()
                                    .map(|&(from, until)| ((s.id, t.id, p.id), from, until)),
                            );
                            partitions.push(Arc::new(Partition::new(
                                p.id,
                                p.created_at,
                                log,
                                config.storage.fsync,
                            )?));
                        }
                        topics.insert(t.id, Topic::from_record(t, partitions));
                    }
                    catalog.streams.insert(
                        s.id,
                        Stream {
                            id: s.id,
                            name: s.name.clone(),
                            created_at: s.created_at,
                            topics,
                        },
                    );
                }
            }
            None => {
                // A first boot creates streams from id 0, whose directories it would empty:
                // data without metadata means the metadata was lost, not that this is new.
                let streams = metadata::stream_dirs_on_disk(&config.system.path)?;
                if streams > 0 {
                    return Err(StorageError::MetadataMissing {
                        metadata: store.path().to_owned(),
                        data: metadata::streams_dir(&config.system.path),
                        streams,
                    });
                }
                report.first_boot = true;
                let mut password = config.root.password.clone();
                if password.is_empty() {
                    password = auth::generate_password();
                    report.generated_root_password = Some(password.clone());
                }
                let hashed = match root_salt {
                    Some(salt) => auth::hash_password_with_salt(&password, salt),
                    None => auth::hash_password(&password),
                };
                let password_hash = hashed.map_err(|reason| StorageError::BadMetadata {
                    path: store.path().to_owned(),
                    reason,
                })?;
                catalog.users.push(UserRecord {
                    id: 0,
                    username: config.root.username.clone(),
                    password_hash,
                    created_at: if root_salt.is_some() { 0 } else { now_micros() },
                    active: true,
                    permissions: Some(iggy_wire::Permissions::root()),
                    tokens: Vec::new(),
                });
                store.save(&catalog.snapshot())?;
            }
        }
        let hashing = HashPool::new(
            config.auth.hash_workers as usize,
            config.auth.hash_queue as usize,
            config.auth.hash_wait.0,
        );
        let memory = MemoryBudget::new(config.tcp.memory_budget.0);
        let logins = LoginThrottle::new(ThrottleSettings {
            after: config.auth.throttle_after,
            base: config.auth.throttle_base.0,
            max: config.auth.throttle_max.0,
        });
        let tiering = crate::tiering::Tiering::from_config(&config).map(Arc::new);
        let broker = Arc::new(Broker {
            tiering,
            metrics: Metrics::new(),
            clients: Clients::default(),
            started_at: now_micros(),
            config,
            catalog: RwLock::new(catalog),
            store,
            next_client_id: AtomicU32::new(1),
            incarnation: fastrand::u32(..),
            ready: AtomicBool::new(false),
            submitter,
            hashing,
            memory,
            logins,
            recent_logs: std::sync::OnceLock::new(),
            handovers: Default::default(),
            settings_wanted: tokio::sync::Notify::new(),
        });
        Ok((broker, report))
    }

    pub fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The catalog for a metadata change. Changes persist with [`Self::persist`] before the
    /// guard is dropped, so concurrent changes are serialised and written in order.
    pub fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn persist(&self, catalog: &Catalog) -> Result<()> {
        self.store
            .save(&catalog.snapshot())
            .map_err(BrokerError::Storage)
    }

    /// `/metrics` in the Prometheus text format: the broker's counters, each topic's traffic
    /// and, on a replica, the replication series. OTLP metrics read the same text.
    pub fn render_metrics(&self) -> String {
        let catalog = self.catalog();
        let topics: Vec<_> = catalog
            .streams
            .values()
            .flat_map(|s| {
                s.topics
                    .values()
                    .map(move |t| (s.name.clone(), t.name.clone(), &*t.traffic))
            })
            .collect();
        let mut body = self.metrics.render(&topics);
        drop(topics);
        let dedup = catalog.deduplication;
        let settings = self.state_settings(&catalog);
        drop(catalog);
        // The settings in force (the primary's, on a replica), not this node's configuration.
        let _ = write!(
            body,
            "# HELP iggy_message_deduplication_max_entries Messages per partition a sent message's id is compared with; 0 while deduplication is off.\n\
             # TYPE iggy_message_deduplication_max_entries gauge\n\
             iggy_message_deduplication_max_entries {}\n\
             # HELP iggy_segment_size_bytes Bytes at which partitions roll their active segment.\n\
             # TYPE iggy_segment_size_bytes gauge\n\
             iggy_segment_size_bytes {}\n",
            dedup.map_or(0, |d| d.settings.max_entries),
            settings.segment_size,
        );
        if let Some(cluster) = self.cluster_status() {
            cluster.render_metrics(&mut body);
        }
        if let Some(tiering) = &self.tiering {
            tiering.health.render(&mut body);
        }
        body
    }

    /// The object store's segments of a partition that its manifest stopped naming: their
    /// objects are deleted by the tiering loop.
    pub fn drop_tiered(
        &self,
        partition_dir: &std::path::Path,
        segments: Vec<iggy_tiering::TieredSegment>,
    ) {
        if let Some(tiering) = &self.tiering {
            tiering.drop_segments(partition_dir, segments);
        }
    }

    /// A stream's, topic's or partition's directory is being deleted: so are its objects.
    pub fn drop_tiered_tree(&self, dir: &std::path::Path) {
        let (Some(tiering), Ok(relative)) =
            (&self.tiering, dir.strip_prefix(&self.config.system.path))
        else {
            return;
        };
        tiering.drop_tree(&relative.to_string_lossy());
    }

    /// Who orders and applies state changes (see `submit/`).
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    /// A retention pass (the maintenance loop). A single node runs it on its own clock, off
    /// the async workers (unlinking blocks); on a replicated broker the primary submits it as an
    /// operation so that every replica deletes the same segments at the same point of the log
    /// (backups leave it to the primary).
    pub async fn enforce_retention(self: &Arc<Self>) {
        let Some(status) = self.cluster_status() else {
            let cleaner = self.clone();
            let _ = tokio::task::spawn_blocking(move || crate::retention::run_pass(&cleaner)).await;
            return;
        };
        if status.primary() != Some(status.position) {
            return;
        }
        if let Err(e) = self.submit_retention_pass().await {
            tracing::warn!(error = %e, "retention pass not committed; the next one will try again");
        }
    }

    /// Commits one retention pass through the log (every replica runs it at the same op).
    async fn submit_retention_pass(self: &Arc<Self>) -> Result<()> {
        self.submit_own(Operation::EnforceRetention).await
    }

    /// On a replicated broker's primary where some member's data filesystem (its own, or a
    /// peer's as reported, `replication::space`) has less than twice
    /// `replication.min_free_space` left, and whose log committed less than a checkpoint
    /// interval since `committed_before` (the commit number a call earlier): while deleted data
    /// waits in the graveyard, moves the log on with retention passes, at most three checkpoint
    /// intervals of them per call. Returns the commit number for the next call.
    ///
    /// Why: a replica keeps what it deleted until two checkpoints later (`graveyard`), and
    /// checkpoints come every so many operations. A disk full enough for the primary to refuse
    /// sends (`replication::machine`, `admit`) may see no other operations, so the stream a
    /// user deleted to make room would hold its space for good. A retention pass is an
    /// operation like any other that changes nothing when nothing expired, and whatever it does
    /// delete frees space too. A log that moves by itself reaches the checkpoints without help.
    pub async fn release_deleted_when_short(self: &Arc<Self>, committed_before: u64) -> u64 {
        let Some(status) = self.cluster_status() else {
            return 0;
        };
        let committed = status.snapshot().commit_min;
        let interval = crate::replication::CHECKPOINT_INTERVAL;
        if committed.saturating_sub(committed_before) >= interval {
            return committed;
        }
        let data = &self.config.system.path;
        for _ in 0..3 * interval {
            let waiting = crate::storage::graveyard::holds_any(data).unwrap_or(false);
            let short = self.short_of_space() || self.a_peer_short_of_space(status);
            if status.primary() != Some(status.position) || !short || !waiting {
                break;
            }
            if let Err(e) = self.submit_retention_pass().await {
                tracing::warn!(error = %e, "could not move the log on to release deleted data; trying again");
                break;
            }
        }
        status.snapshot().commit_min
    }

    /// The settings applying operations depends on (`state::settings`), as `catalog` holds them.
    pub fn state_settings(&self, catalog: &Catalog) -> StateSettings {
        StateSettings::in_force(catalog.settings, &self.config)
    }

    /// Commits the configured settings that shape the replicated state — deduplication
    /// (`storage::dedup`) and the state settings (`state::settings`) — where the catalog holds
    /// others: a single node once at boot; on a replicated broker the primary, once every
    /// member it reaches applies such operations (backups leave it to the primary, so every
    /// replica applies the same settings).
    pub async fn put_settings_in_force(self: &Arc<Self>) -> Result<()> {
        if let Some(status) = self.cluster_status() {
            let reads = crate::replication::transport::SETTINGS_SINCE_REVISION;
            if status.primary() != Some(status.position) || !status.ring_reads(reads) {
                return Ok(());
            }
        }
        let (deduplication, settings) = {
            let catalog = self.catalog();
            (catalog.deduplication.map(|d| d.settings), catalog.settings)
        };
        let wanted = StateSettings::configured(&self.config);
        if settings != Some(wanted) {
            self.submit_own(Operation::SetStateSettings { settings: wanted })
                .await?;
        }
        let wanted = self.config.message_deduplication.settings();
        if deduplication != wanted {
            self.submit_own(Operation::SetDeduplication { settings: wanted })
                .await?;
        }
        Ok(())
    }

    /// Submits an operation the broker issues itself (no acting user).
    async fn submit_own(&self, op: Operation<'_>) -> Result<()> {
        let submission = Submission { user: None, op };
        self.submitter
            .submit(self, submission, &mut Vec::new())
            .await
    }

    /// Drops expired personal access tokens (the maintenance loop), as an operation like any
    /// other state change; on a replicated broker only the primary issues it.
    pub async fn expire_tokens(&self) -> Result<()> {
        // On a replicated broker the primary's pass serves every replica.
        if let Some(status) = self.cluster_status() {
            if status.primary() != Some(status.position) {
                return Ok(());
            }
        }
        self.submit_own(Operation::ExpireTokens).await
    }

    /// Replaces the catalog with `snapshot`'s (state sync in cluster mode): partitions it
    /// shares with the current catalog — the same incarnation: same stream, topic and
    /// partition ids *and* creation times, since ids are reused after a delete — are kept with
    /// their data; new ones are created empty (a leftover directory of an earlier incarnation
    /// removed first); the directories of dropped ones are removed. The partitions' messages
    /// are then brought to the checkpoint by the caller.
    pub fn install_metadata(&self, snapshot: &metadata::Snapshot) -> Result<()> {
        let mut catalog = self.catalog_mut();
        let existing = |s: &metadata::StreamRecord, t: &metadata::TopicRecord, p: u32, at: u64| {
            let stream = catalog.streams.get(&s.id)?;
            let topic = stream.topics.get(&t.id)?;
            let same = stream.created_at == s.created_at && topic.created_at == t.created_at;
            catalog
                .partition_by_ids(s.id, t.id, p)
                .filter(|kept| same && kept.created_at == at)
        };
        let mut fresh = Catalog {
            users: snapshot.users.clone(),
            deduplication: snapshot.deduplication,
            settings: snapshot.settings,
            ..Catalog::default()
        };
        let segment_size = self.state_settings(&fresh).segment_size;
        for s in &snapshot.streams {
            let mut topics = BTreeMap::new();
            for t in &s.topics {
                let mut partitions = Vec::with_capacity(t.partitions.len());
                for p in &t.partitions {
                    let partition = match existing(s, t, p.id, p.created_at) {
                        Some(kept) => {
                            kept.log().set_segment_size(segment_size);
                            kept
                        }
                        None => self
                            .create_partitions(
                                s.id,
                                t.id,
                                p.id..p.id + 1,
                                p.created_at,
                                segment_size,
                            )?
                            .remove(0),
                    };
                    partitions.push(partition);
                }
                let topic = Topic::from_record(t, partitions);
                keep_node_state(&catalog, s, t, &topic);
                topics.insert(t.id, topic);
            }
            let stream = Stream {
                id: s.id,
                name: s.name.clone(),
                created_at: s.created_at,
                topics,
            };
            fresh.streams.insert(s.id, stream);
        }
        let kept = |s: u32, t: u32, p: u32| fresh.partition_by_ids(s, t, p).is_some();
        for ((stream, topic, partition), _) in catalog.partitions() {
            if !kept(stream, topic, partition) {
                let dir =
                    metadata::partition_dir(&self.config.system.path, stream, topic, partition);
                metadata::remove_tree(&dir)?;
            }
        }
        self.persist(&fresh)?;
        *catalog = fresh;
        Ok(())
    }

    /// Creates the directories and first segments of new partitions, durably. Any leftover
    /// directory at such a path (from a deleted object whose id is being reused) is removed
    /// first. The directories are created first and synced together at the end, on several
    /// threads: one fsync per directory instead of three per partition in a row, which made a
    /// 1,000-partition topic take about a second.
    pub fn create_partitions(
        &self,
        stream: u32,
        topic: u32,
        ids: std::ops::Range<u32>,
        created_at: u64,
        segment_size: u64,
    ) -> Result<Vec<Arc<Partition>>> {
        let mut partitions = Vec::with_capacity(ids.len());
        let mut to_sync = Vec::new();
        for id in ids {
            let dir = metadata::partition_dir(&self.config.system.path, stream, topic, id);
            metadata::remove_tree(&dir)?;
            let log =
                PartitionLog::create_unsynced(&dir, segment_size, sync_on_roll(&self.config))?;
            crate::storage::graveyard::mark_incarnation(&dir, created_at)?;
            to_sync.extend(fsutil::dirs_to_sync_after_creating(&dir));
            partitions.push(Arc::new(Partition::new(
                id,
                created_at,
                log,
                self.config.storage.fsync,
            )?));
        }
        fsutil::sync_dirs(&to_sync)?;
        Ok(partitions)
    }

    pub fn next_client_id(&self) -> u32 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A connection closed: forget the client, and take it out of the consumer groups it
    /// joined — an operation, so every replica rebalances their partitions over the remaining
    /// members; connections that joined none cost nothing here.
    pub async fn disconnect(&self, client_id: u32) {
        let Some(entry) = self.clients.remove(client_id) else {
            return;
        };
        if entry.groups.is_empty() {
            return;
        }
        let member = self.group_member(client_id);
        if let Err(e) = self.submit_own(Operation::LeaveAllGroups { member }).await {
            // Its memberships stay until this node restarts or is forgotten by the primary.
            tracing::warn!(client = client_id, error = %e, "a closed connection could not leave its consumer groups");
        }
    }

    /// The consumer-group member a connection of this node is.
    pub fn group_member(&self, client_id: u32) -> GroupMember {
        GroupMember {
            node: self.node(),
            incarnation: self.incarnation,
            client: client_id,
        }
    }

    /// On a replica, for as long as the process runs: while this replica is the primary, a
    /// member unreachable for `after` is forgotten as a consumer-group member — its
    /// connections are gone or cut off, and the partitions they held go to the members that
    /// remain. (Consumers of a node that was only cut off find themselves no longer members
    /// when it returns, and join again.)
    pub async fn forget_lost_nodes(&self, after: std::time::Duration) {
        let Some(status) = self.cluster_status() else {
            return;
        };
        let mut last_seen: Vec<std::time::Instant> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            // A grown ring's new positions start as seen now.
            let layout = status.layout();
            last_seen.resize(layout.members.len(), now);
            for (position, seen) in last_seen.iter_mut().enumerate() {
                if position == usize::from(status.position) || status.reachable(position as u8) {
                    *seen = now;
                }
            }
            if status.primary() != Some(status.position) {
                continue;
            }
            for (position, seen) in last_seen.iter().enumerate() {
                let node = layout.members[position].id;
                if now.duration_since(*seen) < after || !self.has_group_members_of(node) {
                    continue;
                }
                match self
                    .submit_own(Operation::ForgetNode { node, keep: None })
                    .await
                {
                    Ok(()) => tracing::warn!(
                        node,
                        unreachable_s = now.duration_since(*seen).as_secs(),
                        "forgot an unreachable member's consumer-group members"
                    ),
                    Err(e) => tracing::debug!(node, error = %e, "could not forget a lost node yet"),
                }
            }
        }
    }

    fn has_group_members_of(&self, node: u32) -> bool {
        let catalog = self.catalog();
        let any = catalog
            .streams
            .values()
            .flat_map(|s| s.topics.values())
            .any(|t| {
                t.groups()
                    .values()
                    .any(|g| g.members.keys().any(|m| m.node == node))
            });
        any
    }

    /// This broker's node id: its ring member id, 0 for a single node.
    pub fn node(&self) -> u32 {
        self.cluster_status().map_or(0, |s| s.member_id)
    }

    /// Forgets this node's members from before this start (a single node's metadata file, a
    /// replica's checkpoint and log hold them). Retried until it commits, in the background.
    pub async fn forget_earlier_incarnations(&self) {
        loop {
            match self
                .submit_own(Operation::ForgetNode {
                    node: self.node(),
                    keep: Some(self.incarnation),
                })
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "forgetting earlier consumer-group members; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Boot finished and, in cluster mode, the replica is normal and caught up.
    pub fn is_ready(&self) -> bool {
        let booted = self.ready.load(Ordering::Acquire);
        match &self.submitter {
            Submitter::Local(_) => booted,
            Submitter::Replicated(replicated) => booted && replicated.status.caught_up(),
        }
    }

    /// `GET /admin/status`.
    pub fn admin_status(&self) -> AdminStatus {
        let booted = self.ready.load(Ordering::Acquire);
        match &self.submitter {
            Submitter::Local(_) => AdminStatus::single_node(booted),
            Submitter::Replicated(replicated) => AdminStatus {
                disk_pressure: self.short_of_space(),
                ..replicated.status.admin(booted)
            },
        }
    }

    /// Its data filesystem has less than twice `replication.min_free_space` of room (free
    /// bytes less what its open WAL file may still allocate, `replication::space`): the primary
    /// refuses sends below the reserve, and frees deleted data without waiting for traffic
    /// below this (`release_deleted_when_short`). False when the filesystem cannot be asked.
    pub fn short_of_space(&self) -> bool {
        self.own_room()
            .is_some_and(|room| room < self.short_of_space_below())
    }

    /// A peer reported less than twice `replication.min_free_space` of room lately.
    fn a_peer_short_of_space(&self, status: &crate::replication::status::ClusterStatus) -> bool {
        let below = self.short_of_space_below();
        status.peer_space().iter().any(|report| report.room < below)
    }

    /// Room under which a member counts as short of space: twice the reserve.
    fn short_of_space_below(&self) -> u64 {
        self.config.replication.min_free_space.0.saturating_mul(2)
    }

    /// This broker's room on its data filesystem (`replication::space::room`): free bytes less
    /// what its open WAL file may still allocate (nothing on a single node). `None` when the
    /// filesystem cannot be asked.
    pub fn own_room(&self) -> Option<u64> {
        let data = &self.config.system.path;
        match self.cluster_status() {
            Some(status) => status.own_room(data),
            None => crate::replication::space::room(data, 0),
        }
    }

    /// `POST /admin/step-down`: a primary hands its view to the next replica (a view change);
    /// anything else cannot and says why.
    pub fn step_down(&self) -> Result<iggy_contract::admin::StepDown, &'static str> {
        let Submitter::Replicated(replicated) = &self.submitter else {
            return Err("a single node has no replica to hand its view to");
        };
        let status = replicated.status.admin(self.ready.load(Ordering::Acquire));
        if status.role != iggy_contract::admin::Role::Primary {
            return Err("this broker is not the primary");
        }
        if replicated.status.voters() < 2 {
            return Err("a ring of one has no replica to hand its view to");
        }
        if !replicated.step_down() {
            return Err("the replica is stopping");
        }
        Ok(iggy_contract::admin::StepDown { view: status.view })
    }

    /// `POST /admin/ring` took `ring` as the next configuration: hands it to the replica
    /// thread. False when there is none (a single node) or it is stopping.
    pub fn propose_ring(&self, ring: iggy_contract::Ring) -> bool {
        match &self.submitter {
            Submitter::Local(_) => false,
            Submitter::Replicated(replicated) => replicated.propose_ring(ring),
        }
    }

    /// Waits until this broker may answer from its own state (always, for a single node; see
    /// `ClusterStatus::serves_reads` for a replica), at most `replication.request_timeout`.
    pub async fn caught_up_to_answer(&self) -> Result<()> {
        let Some(status) = self.cluster_status() else {
            return Ok(());
        };
        let patience = self.config.replication.request_timeout.0;
        let deadline = tokio::time::Instant::now() + patience;
        while !status.serves_reads() {
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::NotCaughtUp(patience));
            }
            // Statuses are published on the replica's 10 ms ticks.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The replica's status, in cluster mode.
    pub fn cluster_status(&self) -> Option<&crate::replication::status::ClusterStatus> {
        match &self.submitter {
            Submitter::Local(_) => None,
            Submitter::Replicated(replicated) => Some(&replicated.status),
        }
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.catalog()
            .streams
            .values()
            .flat_map(|s| s.topics.values())
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// Clean shutdown: every partition written to since its last checkpoint is synced and
    /// checkpointed (idle ones cost nothing), on several threads at once, since each is an
    /// fsync or two of its own: 9,900 partitions one after another used to take 99 s, longer
    /// than the 30 s a pod gets after SIGTERM.
    pub fn shutdown(&self) -> Result<(), StorageError> {
        self.ready.store(false, Ordering::Release);
        let partitions = self.all_partitions();
        // Every partition is tried and every failure logged; the first is returned.
        fsutil::on_threads(&partitions, |partition| {
            partition.shutdown().inspect_err(|e| {
                tracing::error!(error = %e, "a partition could not be checkpointed at shutdown");
            })
        })
    }

    /// One pass of the running checkpoint (`storage.checkpoint_interval`, blocking): every
    /// partition written since its checkpoint is fsynced and checkpointed, several at once as
    /// at shutdown. A partition with damage waiting for its repair keeps its checkpoint, so
    /// that a restart before the repair finds the damage again at boot and asks for it again.
    /// Returns how many checkpoints were written; failures are logged.
    pub fn checkpoint_written_partitions(&self) -> usize {
        let partitions: Vec<_> = self
            .all_partitions()
            .into_iter()
            .filter(|p| !crate::repair::pending(p))
            .collect();
        let written = std::sync::atomic::AtomicUsize::new(0);
        // One line per pass, not per partition: a full disk would fail them all, every pass.
        let failed = fsutil::on_threads(&partitions, |partition| {
            if partition.checkpoint_running()? {
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        if let Err(e) = failed {
            tracing::warn!(
                error = %e,
                "could not checkpoint every partition written since its checkpoint (the first \
                 failure is shown); the next boot verifies more of them"
            );
        }
        let written = written.into_inner();
        self.metrics
            .partition_checkpoints
            .fetch_add(written as u64, Ordering::Relaxed);
        self.metrics
            .checkpoint_passes
            .fetch_add(1, Ordering::Relaxed);
        written
    }

    /// fsyncs every partition with unsynced appends (the `<N>ms` fsync policy's tick).
    pub async fn sync_dirty_partitions(&self) {
        for partition in self.all_partitions() {
            if let Err(e) = partition.sync_now().await {
                tracing::error!(error = %e, "periodic fsync failed");
            }
        }
    }
}

/// State sync replaces the catalog from records, which carry nothing node-local: the groups
/// of a topic it keeps (the same incarnation: same ids and creation times) take over what this
/// node saw its members poll (`ConsumerGroup::keep_node_state`).
fn keep_node_state(
    before: &Catalog,
    stream: &metadata::StreamRecord,
    record: &metadata::TopicRecord,
    topic: &Topic,
) {
    let Some(old_stream) = before.streams.get(&stream.id) else {
        return;
    };
    let Some(old) = old_stream.topics.get(&record.id) else {
        return;
    };
    if old_stream.created_at != stream.created_at || old.created_at != record.created_at {
        return;
    }
    let old_groups = old.groups();
    for (id, group) in topic.groups().iter_mut() {
        if let Some(before) = old_groups.get(id).filter(|g| g.name == group.name) {
            group.keep_node_state(before);
        }
    }
}

fn sync_on_roll(config: &Config) -> bool {
    config.storage.fsync != FsyncPolicy::Never
}

/// A broker on `dir` with root password `secret`, for unit tests.
#[cfg(test)]
pub(crate) fn open_for_tests(dir: &std::path::Path) -> Arc<Broker> {
    let env = [
        ("IGGY_SYSTEM_PATH".to_string(), dir.display().to_string()),
        ("IGGY_ROOT_PASSWORD".to_string(), "secret".to_string()),
    ];
    let config = Config::load(None, env).expect("test configuration");
    Broker::open(config).expect("opens").0
}
