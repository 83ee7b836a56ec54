//! One simulated cluster run: replicas, clients, a packet network and per-replica disks, all
//! driven tick by tick from one seed. A run has a safety phase with faults (any number of
//! replicas may be down at once) and a liveness phase in which faults stop, everyone restarts
//! and the cluster must answer every request and converge.

use crate::checker::{Checker, Violation};
use crate::model::ModelBroker;
use crate::params::Params;
use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use vsr::{
    Checkpoint, Command, Config, DiskImage, Envelope, Event, Input, Message, Node, Op, Output,
    Prepare, Replica, Superblock,
};

const CLUSTER: u128 = 0x1667_0000_0000_0001;
/// Client retry timeout, ticks.
const CLIENT_RETRY: u64 = 80;

/// What happened, for coverage: a green run must show that faults actually occurred.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub counters: BTreeMap<&'static str, u64>,
}

impl Coverage {
    /// Every counter a campaign of 1,000 swarm seeds is expected to make non-zero.
    pub const EXPECTED: [&'static str; 35] = [
        "abdications",
        "cached_replies",
        "checkpoint_read_faults",
        "checkpoints",
        "client_retries",
        "converged_runs",
        "crashes",
        "damaged_votes",
        "deaf_replicas",
        "duplicate_ops_skipped",
        "evictions_seen_by_clients",
        "faulty_recoveries",
        "messages_dropped",
        "messages_duplicated",
        "misdirected_writes",
        "nack_truncations",
        "ops_transferred",
        "ops_truncated",
        "partitions",
        "partitions_asymmetric",
        "paths_clogged",
        "prepares_repaired",
        "read_faults",
        "restarts",
        "retransmits",
        "session_evictions",
        "state_syncs",
        "state_transfers",
        "superblock_copies_rotted",
        "superblock_writes_torn",
        "torn_writes",
        "truncations",
        "view_changes_started",
        "views_installed",
        "writes_lost_at_crash",
    ];

    /// Expected counters still at zero.
    pub fn gaps(&self) -> Vec<&'static str> {
        Self::EXPECTED
            .into_iter()
            .filter(|name| self.get(name) == 0)
            .collect()
    }

    fn add(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
    pub fn merge(&mut self, other: &Coverage) {
        for (k, v) in &other.counters {
            *self.counters.entry(k).or_default() += v;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub ticks: u64,
    pub committed: Op,
    pub coverage: Coverage,
    pub params: Params,
}

enum Write {
    /// `slot` is where the prepare lands: its op's slot, unless the write is misdirected.
    Wal {
        prepare: Prepare,
        slot: u64,
    },
    Superblock(Superblock),
    Checkpoint(Box<Checkpoint>),
    Log {
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(u64, Prepare)>,
    },
}

struct Pending {
    complete_at: u64,
    io: u64,
    /// Issue order: storage applies writes to the same place in the order they were issued.
    seq: u64,
    write: Write,
}

/// Copies of the superblock on each disk (TigerBeetle keeps four or more).
const SUPERBLOCK_COPIES: usize = 4;

/// A replica's storage: superblock copies, checkpoint states, and a WAL of `slots` slots,
/// with writes landing after a delay and, at a crash, each pending write either landing or
/// lost (or, in world 4, a superblock write landing on only some of its copies).
struct Disk {
    slots: u64,
    /// The newest superblock every copy received (or that recovery adopted): what the disk's
    /// own rules (slot reuse, checkpoint garbage) go by.
    superblock: Option<(u64, Superblock)>,
    /// Each copy keeps the newest write that reached it.
    copies: [Option<(u64, Superblock)>; SUPERBLOCK_COPIES],
    /// Checkpoint states by op; a superblock naming one makes the older ones garbage.
    checkpoints: BTreeMap<Op, Checkpoint>,
    /// slot → (write seq, prepare written there).
    wal: BTreeMap<u64, (u64, Prepare)>,
    /// The redundant header ring: slot → (write seq, op, checksum of the prepare written).
    headers: BTreeMap<u64, (u64, Op, u128)>,
    truncations: Vec<(u64, Op)>,
    pending: Vec<Pending>,
    next_seq: u64,
}

impl Disk {
    fn new(slots: u64) -> Self {
        Self {
            slots,
            superblock: None,
            copies: [None; SUPERBLOCK_COPIES],
            checkpoints: BTreeMap::new(),
            wal: BTreeMap::new(),
            headers: BTreeMap::new(),
            truncations: Vec::new(),
            pending: Vec::new(),
            next_seq: 0,
        }
    }

    fn image(&self) -> DiskImage {
        let superblocks: Vec<Superblock> =
            self.copies.iter().flatten().map(|(_, sb)| *sb).collect();
        let newest = Superblock::newest(&superblocks);
        DiskImage {
            superblocks,
            checkpoint: newest.and_then(|sb| self.checkpoints.get(&sb.checkpoint).cloned()),
            wal: self
                .wal
                .iter()
                .map(|(slot, (_, p))| (*slot, p.clone()))
                .collect(),
            headers: self
                .headers
                .iter()
                .map(|(slot, (_, op, c))| (*slot, (*op, *c)))
                .collect(),
        }
    }

    /// Lands a WAL write: the prepare (in `slot`, which a misdirected write gets wrong), then,
    /// unless the write was torn, the header in its real op's slot. The two are separate
    /// places on disk, each keeping whichever write was issued last.
    ///
    /// Overwriting, in its own slot, an op above the checkpoint the superblock names is a
    /// violation: recovery needs every op after that checkpoint, so the replica reused a slot
    /// too early.
    fn land_wal(
        &mut self,
        seq: u64,
        prepare: Prepare,
        slot: u64,
        with_header: bool,
    ) -> Result<(), Violation> {
        let op = prepare.op();
        let checksum = prepare.checksum();
        // A later view change truncated this op: the write must not bring it back.
        let superseded = self
            .truncations
            .iter()
            .any(|(s, after)| *s > seq && op > *after);
        if superseded {
            return Ok(());
        }
        if self.wal.get(&slot).is_none_or(|(s, _)| *s <= seq) {
            let checkpoint = self.superblock.map_or(0, |(_, sb)| sb.checkpoint);
            if let Some((_, old)) = self.wal.get(&slot) {
                // (A misdirected prepare in someone else's slot is no loss when overwritten.)
                let own_slot = |op: Op| op % self.slots == slot;
                if own_slot(op) && own_slot(old.op()) && old.op() < op && old.op() > checkpoint {
                    return Err(format!(
                        "wal: op {op} overwrote op {} in slot {slot}, above the durable checkpoint {checkpoint}",
                        old.op()
                    ));
                }
            }
            self.wal.insert(slot, (seq, prepare));
        }
        let header_slot = op % self.slots;
        if with_header
            && self
                .headers
                .get(&header_slot)
                .is_none_or(|(s, _, _)| *s <= seq)
        {
            self.headers.insert(header_slot, (seq, op, checksum));
        }
        Ok(())
    }

    /// A latent sector error: the stored prepare in `slot` no longer verifies.
    fn rot(&mut self, slot: u64) {
        if let Some((_, prepare)) = self.wal.get_mut(&slot) {
            prepare.body.push(0x5A);
        }
    }

    /// The checkpoint the superblock names no longer verifies. False when it names none.
    fn rot_checkpoint(&mut self) -> bool {
        let named = self.superblock.map_or(0, |(_, sb)| sb.checkpoint);
        match self.checkpoints.get_mut(&named) {
            Some(checkpoint) if named > 0 => {
                checkpoint.state.push(0x5A);
                true
            }
            _ => false,
        }
    }

    /// Applies a write; returns the superblock it made durable, if any.
    fn land(&mut self, seq: u64, write: Write) -> Result<Option<Superblock>, Violation> {
        match write {
            Write::Wal { prepare, slot } => {
                self.land_wal(seq, prepare, slot, true)?;
                Ok(None)
            }
            Write::Checkpoint(checkpoint) => {
                self.checkpoints.insert(checkpoint.op(), *checkpoint);
                Ok(None)
            }
            Write::Superblock(sb) | Write::Log { superblock: sb, .. } => {
                self.land_superblock_write(seq, write, SUPERBLOCK_COPIES);
                Ok(self.adopt(seq, sb))
            }
        }
    }

    /// A superblock or log-install write, its superblock reaching the first `copies` copies
    /// (fewer than all when a crash interrupts it; a log install's WAL part lands first, as
    /// storage orders it).
    fn land_superblock_write(&mut self, seq: u64, write: Write, copies: usize) {
        match write {
            Write::Superblock(sb) => self.land_copies(seq, sb, copies),
            Write::Log {
                superblock,
                truncate_after,
                entries,
            } => {
                self.land_log_entries(seq, truncate_after, entries);
                self.land_copies(seq, superblock, copies);
            }
            Write::Wal { .. } | Write::Checkpoint(_) => {}
        }
    }

    fn land_log_entries(&mut self, seq: u64, truncate_after: Op, entries: Vec<(u64, Prepare)>) {
        self.wal
            .retain(|_, (s, p)| p.op() <= truncate_after || *s > seq);
        self.headers
            .retain(|_, (s, op, _)| *op <= truncate_after || *s > seq);
        self.truncations.push((seq, truncate_after));
        for (slot, prepare) in entries {
            self.headers
                .insert(slot, (seq, prepare.op(), prepare.checksum()));
            self.wal.insert(slot, (seq, prepare));
        }
    }

    fn land_copies(&mut self, seq: u64, sb: Superblock, copies: usize) {
        for copy in self.copies.iter_mut().take(copies) {
            if copy.is_none_or(|(s, _)| s < seq) {
                *copy = Some((seq, sb));
            }
        }
    }

    fn adopt(&mut self, seq: u64, sb: Superblock) -> Option<Superblock> {
        if self.superblock.is_none_or(|(s, _)| s < seq) {
            self.superblock = Some((seq, sb));
            self.checkpoints = self.checkpoints.split_off(&sb.checkpoint);
            Some(sb)
        } else {
            None
        }
    }

    /// Whether copy `i` may rot: one copy at least as new as the newest complete write must
    /// stay readable (the bound superblock copies exist for).
    fn copy_may_rot(&self, i: usize) -> bool {
        let complete = self.superblock.map_or(0, |(s, _)| s);
        let intact_newest =
            |j: usize| j != i && self.copies[j].is_some_and(|(s, sb)| s >= complete && sb.verify());
        self.copies[i].is_some_and(|(_, sb)| sb.verify())
            && (0..SUPERBLOCK_COPIES).any(intact_newest)
    }

    fn rot_copy(&mut self, i: usize) {
        // Bits flip in what the copy says, not only in its checksum: a recovery that took
        // it anyway would come back in a view and with a commit nobody ever had.
        if let Some((_, sb)) = self.copies[i].as_mut() {
            sb.view ^= 0x40;
            sb.commit ^= 0x40;
        }
    }

    /// At a restart: the newest readable copy is what recovery takes, so from now on it is
    /// the disk's superblock even if its write was torn.
    fn adopt_newest_copy(&mut self) {
        let newest = self
            .copies
            .iter()
            .flatten()
            .filter(|(_, sb)| sb.verify())
            .max_by_key(|(s, _)| *s)
            .copied();
        if let Some((seq, sb)) = newest {
            self.adopt(seq, sb);
        }
    }
}

struct Client {
    id: u128,
    /// Request numbers increase across sessions; registrations take one too.
    next_request: u64,
    /// Data requests to get answered.
    total: u64,
    /// Data requests issued so far (each body is sent until answered).
    issued: u64,
    /// The live session, once a registration was answered.
    session: Option<u64>,
    /// (request, session it was sent in (0 = registration), body, last sent tick).
    in_flight: Option<(u64, u64, Vec<u8>, u64)>,
    /// A body whose session was evicted before it was answered: sent again after registering.
    orphan: Option<Vec<u8>>,
    answered: u64,
    think_until: u64,
    view_guess: u32,
}

struct Network {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    in_flight: BTreeMap<(Node, Node), usize>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u8, u8)>,
    /// A replica that hears no other replica (its own sends still arrive).
    deaf: Option<u8>,
    /// Clogged directed paths and the tick each unclogs: their messages wait until then.
    clogged: BTreeMap<(Node, Node), u64>,
}

pub struct Simulation {
    seed: u64,
    params: Params,
    rng: Rng,
    /// Only for deafness (see `inject_deafness`).
    deaf_rng: Rng,
    /// Only for clogs (see `inject_clogs`); like deafness, its own generator keeps seeds that
    /// draw no clogs replaying exactly as before.
    clog_rng: Rng,
    tick: u64,
    replicas: Vec<Option<Replica<ModelBroker>>>,
    disks: Vec<Disk>,
    network: Network,
    clients: Vec<Client>,
    checker: Checker,
    coverage: Coverage,
    trace: xxhash_rust::xxh3::Xxh3,
    verbose: bool,
    liveness: bool,
    /// Replicas kept down for the whole run (scenario tests).
    pub permanently_down: BTreeSet<u8>,
    /// Per-command link filter for scenario tests: (from, to, command) dropped.
    pub drop_filter: BTreeSet<(u8, u8, Command)>,
    /// The fault atlas: replicas whose storage may rot or misdirect (at most Qr - 1).
    pub corruptible: BTreeSet<u8>,
}

impl Simulation {
    pub fn new(seed: u64, params: Params, verbose: bool) -> Self {
        let mut rng = Rng::new(seed);
        let mut opened: Vec<Replica<ModelBroker>> = (0..params.replicas)
            .map(|r| Self::open_replica(seed, &params, r, DiskImage::default()))
            .collect();
        let initial_outputs: Vec<(u8, Vec<Output>)> = opened
            .iter_mut()
            .map(|r| (r.replica(), r.take_outputs()))
            .collect();
        let replicas = opened.into_iter().map(Some).collect();
        let clients = (0..params.clients)
            .map(|i| Client {
                id: 0xC000 + i as u128,
                next_request: 1,
                total: params.requests_per_client,
                issued: 0,
                session: None,
                in_flight: None,
                orphan: None,
                answered: 0,
                think_until: rng.below(50),
                view_guess: 0,
            })
            .collect();
        let root = Prepare::root(CLUSTER, 1, 0).checksum();
        let mut sim = Self {
            seed,
            checker: Checker::new(params.replicas, root),
            disks: (0..params.replicas)
                .map(|_| Disk::new(params.wal_slots()))
                .collect(),
            network: Network {
                queue: BTreeMap::new(),
                seq: 0,
                in_flight: BTreeMap::new(),
                cut: BTreeSet::new(),
                deaf: None,
                clogged: BTreeMap::new(),
            },
            replicas,
            clients,
            rng,
            deaf_rng: Rng::new(seed ^ 0xDEAF_0000_0000_DEAF),
            clog_rng: Rng::new(seed ^ 0xC10C_0000_0000_C10C),
            tick: 0,
            coverage: Coverage::default(),
            trace: xxhash_rust::xxh3::Xxh3::new(),
            verbose,
            liveness: false,
            permanently_down: BTreeSet::new(),
            drop_filter: BTreeSet::new(),
            corruptible: BTreeSet::new(),
            params,
        };
        // At most Qr - 1 replicas, so every replication quorum keeps an intact copy of each op,
        // and at most N - Qv, so the replicas that may vote can still form a view-change quorum
        // (a replica whose checkpoint rotted sits view changes out until repaired; one with
        // damaged WAL slots votes). Both are Qr - 1 except at N = 2, where no replica may be
        // corrupted before world 6 (see below).
        let n = sim.params.replicas;
        let allowed = if n == 2 && sim.params.damage_at_two {
            // World 6: damaged replicas vote, and one nack is proof at N = 2; only a rotten
            // checkpoint would still sit out, so that fault stays off here.
            sim.params.checkpoint_fault_ppm = 0;
            1
        } else {
            (vsr::quorums::replication(n).saturating_sub(1))
                .min(n as usize - vsr::quorums::view_change(n))
        };
        while sim.corruptible.len() < allowed {
            let r = sim.rng.below(sim.params.replicas as u64) as u8;
            sim.corruptible.insert(r);
        }
        for (r, outputs) in initial_outputs {
            for output in outputs {
                // Opening emits only writes, which cannot violate anything.
                let _ = sim.handle_output(r, output);
            }
        }
        sim
    }

    fn open_replica(seed: u64, params: &Params, r: u8, disk: DiskImage) -> Replica<ModelBroker> {
        let mut cfg = Config::new(CLUSTER, params.replicas, r, params.route);
        cfg.seed = seed;
        // Few sessions, so clients beyond four evict each other.
        cfg.clients_max = crate::checker::CLIENTS_MAX;
        cfg.checkpoint_interval = params.checkpoint_interval;
        cfg.wal_slots = params.wal_slots();
        Replica::open(cfg, disk, ModelBroker::default())
    }

    fn log(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            println!("{:>7} {}", self.tick, line());
        }
    }

    fn trace(&mut self, values: &[u64]) {
        for v in values {
            self.trace.update(&v.to_le_bytes());
        }
    }

    /// Runs to completion: `Ok` when both phases pass.
    pub fn run(mut self) -> Outcome {
        let failure = self.run_phases().err();
        Outcome {
            seed: self.seed,
            failure,
            trace_hash: self.trace.digest(),
            ticks: self.tick,
            committed: self.checker.committed_ops(),
            coverage: self.coverage,
            params: self.params,
        }
    }

    fn run_phases(&mut self) -> Result<(), Violation> {
        let safety_end = self.params.safety_ticks;
        while self.tick < safety_end {
            self.step()?;
        }
        self.enter_liveness()?;
        let deadline = self.tick + self.params.liveness_ticks;
        while self.tick < deadline {
            self.step()?;
            if self.converged() {
                self.coverage.add("converged_runs", 1);
                return Ok(());
            }
        }
        Err(self.liveness_report())
    }

    fn enter_liveness(&mut self) -> Result<(), Violation> {
        self.log(|| "liveness phase: faults off, every replica up, network healed".into());
        self.liveness = true;
        self.params.loss_ppm = 0;
        self.params.duplicate_ppm = 0;
        self.params.crash_ppm = 0;
        self.params.partition_onset_ppm = 0;
        self.params.deaf_onset_ppm = 0;
        self.params.read_fault_ppm = 0;
        self.params.misdirect_ppm = 0;
        self.network.cut.clear();
        self.network.deaf = None;
        self.params.clog_onset_ppm = 0;
        self.network.clogged.clear();
        for r in 0..self.params.replicas {
            if self.replicas[r as usize].is_none() && !self.permanently_down.contains(&r) {
                self.restart(r)?;
            }
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let committed = self.checker.committed_ops();
        self.clients.iter().all(|c| c.answered == c.total)
            && self
                .replicas
                .iter()
                .enumerate()
                .all(|(r, replica)| match replica {
                    None => self.permanently_down.contains(&(r as u8)),
                    // Converged means whole again, not merely caught up: normal, every committed
                    // op applied and durable, no damage left, no sync pending.
                    Some(replica) => {
                        replica.status() == vsr::Status::Normal
                            && replica.commit_min() == committed
                            && replica.op_durable() >= committed
                            && !replica.is_faulty()
                            && !replica.is_syncing()
                    }
                })
    }

    fn liveness_report(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| match r {
                None => "down".into(),
                Some(r) => format!(
                    "{:?} v{} commit {}/{} log {}..{} durable {} writes pending {}{}{}",
                    r.status(),
                    r.view(),
                    r.commit_min(),
                    r.commit_max(),
                    r.log_base(),
                    r.log_tail(),
                    r.op_durable(),
                    r.pending_writes(),
                    if r.is_faulty() { " faulty" } else { "" },
                    if r.is_syncing() { " syncing" } else { "" },
                ),
            })
            .collect();
        let answered: u64 = self.clients.iter().map(|c| c.answered).sum();
        let total: u64 = self.clients.iter().map(|c| c.total).sum();
        format!(
            "liveness: no convergence within {} ticks after faults healed; {answered}/{total} requests answered, {} committed; replicas: {}",
            self.params.liveness_ticks,
            self.checker.committed_ops(),
            replicas.join("; ")
        )
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.tick += 1;
        if !self.liveness {
            self.inject_faults()?;
        }
        self.deliver_messages()?;
        self.complete_writes()?;
        for r in 0..self.params.replicas {
            let now = self.tick * 10_000;
            self.feed(r, Input::Tick { now })?;
        }
        self.tick_clients();
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let n = self.params.replicas;
        self.inject_deafness();
        self.inject_clogs();
        if self.network.cut.is_empty() {
            if n > 1 && self.rng.chance(self.params.partition_onset_ppm) {
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                let asymmetric = self.params.asymmetric_partitions && self.rng.chance(500_000);
                for a in 0..n {
                    for b in 0..n {
                        if side[a as usize] && !side[b as usize] {
                            self.network.cut.insert((a, b));
                            if !asymmetric {
                                self.network.cut.insert((b, a));
                            }
                        }
                    }
                }
                if !self.network.cut.is_empty() {
                    self.coverage.add(
                        if asymmetric {
                            "partitions_asymmetric"
                        } else {
                            "partitions"
                        },
                        1,
                    );
                    self.log(|| "partition".into());
                }
            }
        } else if self.rng.chance(self.params.partition_heal_ppm) {
            self.network.cut.clear();
            self.log(|| "partition healed".into());
        }
        for r in 0..n {
            if self.permanently_down.contains(&r) {
                continue;
            }
            if self.replicas[r as usize].is_some() {
                if self.rng.chance(self.params.crash_ppm) {
                    self.crash(r)?;
                }
            } else if self.rng.chance(self.params.restart_ppm) {
                self.restart(r)?;
            }
        }
        Ok(())
    }

    pub fn crash(&mut self, r: u8) -> Result<(), Violation> {
        self.replicas[r as usize] = None;
        let pending = std::mem::take(&mut self.disks[r as usize].pending);
        for write in pending {
            if !self.rng.chance(self.params.torn_write_ppm) {
                self.disks[r as usize]
                    .land(write.seq, write.write)
                    .map_err(|e| format!("replica {r}: {e}"))?;
                continue;
            }
            self.coverage.add("writes_lost_at_crash", 1);
            // World 4: half of the interrupted superblock writes reach some of their copies.
            let superblock_write = matches!(write.write, Write::Superblock(_) | Write::Log { .. });
            if self.params.superblock_faults && superblock_write && self.rng.chance(500_000) {
                let copies = 1 + self.rng.below(SUPERBLOCK_COPIES as u64 - 1) as usize;
                self.disks[r as usize].land_superblock_write(write.seq, write.write, copies);
                self.coverage.add("superblock_writes_torn", 1);
                continue;
            }
            // Half of the interrupted WAL writes leave their prepare without its header: a torn
            // write recovery must recognise and cut, not mistake for corruption.
            if let Write::Wal { prepare, slot } = write.write {
                if self.rng.chance(500_000) {
                    self.disks[r as usize]
                        .land_wal(write.seq, prepare, slot, false)
                        .map_err(|e| format!("replica {r}: {e}"))?;
                    self.coverage.add("torn_writes", 1);
                }
            }
        }
        self.coverage.add("crashes", 1);
        self.trace(&[1, r as u64]);
        self.log(|| format!("replica {r} crashed"));
        Ok(())
    }

    fn restart(&mut self, r: u8) -> Result<(), Violation> {
        if self.corruptible.contains(&r) {
            let slots: Vec<u64> = self.disks[r as usize].wal.keys().copied().collect();
            for slot in slots {
                if self.rng.chance(self.params.read_fault_ppm) {
                    self.disks[r as usize].rot(slot);
                    self.coverage.add("read_faults", 1);
                }
            }
        }
        if self.corruptible.contains(&r) && self.params.superblock_faults {
            for copy in 0..SUPERBLOCK_COPIES {
                if self.rng.chance(self.params.read_fault_ppm)
                    && self.disks[r as usize].copy_may_rot(copy)
                {
                    self.disks[r as usize].rot_copy(copy);
                    self.coverage.add("superblock_copies_rotted", 1);
                }
            }
        }
        self.disks[r as usize].adopt_newest_copy();
        if self.corruptible.contains(&r)
            && self.params.checkpoint_fault_ppm > 0
            && self.rng.chance(self.params.checkpoint_fault_ppm)
            && self.disks[r as usize].rot_checkpoint()
        {
            self.coverage.add("checkpoint_read_faults", 1);
        }
        let image = self.disks[r as usize].image();
        let mut replica = Self::open_replica(self.seed, &self.params, r, image);
        let outputs = replica.take_outputs();
        // What recovery re-applied must be the committed chain.
        self.checker
            .recovered(r, replica.log_base(), replica.commit_min(), |op| {
                replica.checksum_at(op)
            })?;
        if replica.is_faulty() {
            self.coverage.add("faulty_recoveries", 1);
        }
        self.replicas[r as usize] = Some(replica);
        for output in outputs {
            self.handle_output(r, output)?;
        }
        self.coverage.add("restarts", 1);
        self.trace(&[2, r as u64]);
        self.log(|| format!("replica {r} restarted"));
        Ok(())
    }

    /// Deafness draws from its own generator, so seeds without it (most) replay the worlds
    /// they had before it existed.
    fn inject_deafness(&mut self) {
        let n = self.params.replicas;
        if n < 2 || self.params.deaf_onset_ppm == 0 {
            return;
        }
        match self.network.deaf {
            None if self.deaf_rng.chance(self.params.deaf_onset_ppm) => {
                // Half the time the primary of the newest view: the case only abdication cures.
                let primary = self
                    .replicas
                    .iter()
                    .flatten()
                    .filter(|r| r.is_primary())
                    .max_by_key(|r| r.view())
                    .map(|r| r.replica());
                let target = match primary {
                    Some(p) if self.deaf_rng.chance(500_000) => p,
                    _ => self.deaf_rng.below(n as u64) as u8,
                };
                self.network.deaf = Some(target);
                self.coverage.add("deaf_replicas", 1);
                self.log(|| format!("replica {target} deaf"));
            }
            Some(r) if self.deaf_rng.chance(self.params.deaf_heal_ppm) => {
                self.network.deaf = None;
                self.log(|| format!("replica {r} hears again"));
            }
            _ => {}
        }
    }

    /// World 5: now and then one directed path between two replicas clogs for a while. Unlike
    /// a partition it loses nothing: what it held arrives late and in a burst, which is what a
    /// stalled TCP connection or a paused process looks like from the other side.
    fn inject_clogs(&mut self) {
        let n = self.params.replicas;
        let tick = self.tick;
        self.network.clogged.retain(|_, until| *until > tick);
        if n < 2 || self.params.clog_onset_ppm == 0 {
            return;
        }
        if self.clog_rng.chance(self.params.clog_onset_ppm) {
            let from = self.clog_rng.below(n as u64) as u8;
            let to = (from + 1 + self.clog_rng.below(n as u64 - 1) as u8) % n;
            let ticks = 1 + self.clog_rng.exponential(self.params.clog_ticks_mean);
            self.network
                .clogged
                .insert((Node::Replica(from), Node::Replica(to)), tick + ticks);
            self.coverage.add("paths_clogged", 1);
            self.log(|| format!("path {from} -> {to} clogged for {ticks} ticks"));
        }
    }

    fn send(&mut self, envelope: Envelope) {
        let (from, to) = (envelope.from, envelope.to);
        if let (Node::Replica(a), Node::Replica(b)) = (from, to) {
            if self.network.cut.contains(&(a, b))
                || self.network.deaf == Some(b)
                || self
                    .drop_filter
                    .contains(&(a, b, envelope.message.command()))
            {
                self.coverage.add("messages_dropped", 1);
                return;
            }
        }
        if self.rng.chance(self.params.loss_ppm) {
            self.coverage.add("messages_dropped", 1);
            return;
        }
        let copies = if self.rng.chance(self.params.duplicate_ppm) {
            2
        } else {
            1
        };
        if copies == 2 {
            self.coverage.add("messages_duplicated", 1);
        }
        for _ in 0..copies {
            let in_flight = self.network.in_flight.entry((from, to)).or_default();
            if *in_flight >= self.params.path_capacity {
                self.coverage.add("messages_dropped", 1);
                continue;
            }
            *in_flight += 1;
            let delay = self.params.delay_min + self.rng.exponential(self.params.delay_mean) + 1;
            self.network.seq += 1;
            self.network
                .queue
                .insert((self.tick + delay, self.network.seq), envelope.clone());
        }
    }

    fn deliver_messages(&mut self) -> Result<(), Violation> {
        while let Some(entry) = self.network.queue.first_entry() {
            if entry.key().0 > self.tick {
                break;
            }
            let envelope = entry.remove();
            if let Some(&until) = self.network.clogged.get(&(envelope.from, envelope.to)) {
                // Held until the path unclogs (still in flight, so it still fills the path).
                self.network.seq += 1;
                self.network
                    .queue
                    .insert((until, self.network.seq), envelope);
                continue;
            }
            if let Some(count) = self
                .network
                .in_flight
                .get_mut(&(envelope.from, envelope.to))
            {
                *count = count.saturating_sub(1);
            }
            let command = envelope.message.command() as u64;
            self.trace(&[
                3,
                self.tick,
                node_id(envelope.from),
                node_id(envelope.to),
                command,
            ]);
            match envelope.to {
                Node::Replica(r) => self.feed(r, Input::Message(envelope))?,
                Node::Client(id) => self.client_receive(id, envelope.message)?,
            }
        }
        Ok(())
    }

    fn complete_writes(&mut self) -> Result<(), Violation> {
        for r in 0..self.params.replicas {
            let tick = self.tick;
            let disk = &mut self.disks[r as usize];
            let (done, waiting): (Vec<Pending>, Vec<Pending>) =
                disk.pending.drain(..).partition(|p| p.complete_at <= tick);
            disk.pending = waiting;
            for write in done {
                let io = write.io;
                let landed = self.disks[r as usize]
                    .land(write.seq, write.write)
                    .map_err(|e| format!("replica {r}: {e}"))?;
                if let Some(sb) = landed {
                    self.checker.superblock_durable(r, &sb)?;
                }
                self.feed(r, Input::WriteDone { io })?;
            }
        }
        Ok(())
    }

    fn feed(&mut self, r: u8, input: Input) -> Result<(), Violation> {
        let Some(replica) = self.replicas[r as usize].as_mut() else {
            return Ok(());
        };
        let outputs = replica.step(input);
        for output in outputs {
            self.handle_output(r, output)?;
        }
        Ok(())
    }

    fn handle_output(&mut self, r: u8, output: Output) -> Result<(), Violation> {
        let (io, write) = match output {
            Output::Send(envelope) => {
                self.send(envelope);
                return Ok(());
            }
            Output::Event(event) => return self.on_event(r, event),
            Output::WriteWal {
                io,
                mut slot,
                prepare,
            } => {
                if self.corruptible.contains(&r) && self.rng.chance(self.params.misdirect_ppm) {
                    let slots = self.params.wal_slots();
                    slot = if self.rng.chance(500_000) {
                        (slot + slots - 1) % slots
                    } else {
                        (slot + 1) % slots
                    };
                    self.coverage.add("misdirected_writes", 1);
                }
                (io, Write::Wal { prepare, slot })
            }
            Output::WriteCheckpoint { io, checkpoint } => (io, Write::Checkpoint(checkpoint)),
            Output::WriteSuperblock { io, superblock } => (io, Write::Superblock(superblock)),
            Output::WriteLog {
                io,
                superblock,
                truncate_after,
                entries,
            } => (
                io,
                Write::Log {
                    superblock,
                    truncate_after,
                    entries,
                },
            ),
        };
        let latency = 1 + self.rng.below(self.params.write_latency_max);
        let disk = &mut self.disks[r as usize];
        disk.next_seq += 1;
        let seq = disk.next_seq;
        disk.pending.push(Pending {
            complete_at: self.tick + latency,
            io,
            seq,
            write,
        });
        Ok(())
    }

    fn on_event(&mut self, r: u8, event: Event) -> Result<(), Violation> {
        match event {
            Event::Committed {
                op,
                checksum,
                parent,
                body_checksum,
                digest,
                client,
                session,
                request,
                executed,
            } => {
                self.trace(&[4, r as u64, op]);
                let view = self.replicas[r as usize].as_ref().map_or(0, |x| x.view());
                self.checker.committed(
                    r,
                    op,
                    checksum,
                    parent,
                    body_checksum,
                    digest,
                    (client, session, request),
                    executed,
                    view,
                )?;
                if !executed {
                    self.coverage.add("duplicate_ops_skipped", 1);
                }
            }
            Event::ViewChangeStarted { view } => {
                self.trace(&[5, r as u64, view as u64]);
                self.coverage.add("view_changes_started", 1);
                self.log(|| format!("replica {r} starts view change to {view}"));
            }
            Event::Normal { view, primary } => {
                self.trace(&[6, r as u64, view as u64, primary as u64]);
                if primary {
                    self.coverage.add("views_installed", 1);
                    self.log(|| format!("replica {r} is primary of view {view}"));
                    if let Some(replica) = self.replicas[r as usize].as_ref() {
                        self.checker
                            .new_primary(r, view, replica.log_base(), |op| {
                                replica.checksum_at(op)
                            })?;
                    }
                }
                self.checker.normal(r, view, primary)?;
            }
            Event::LogReplaced { replaced } => {
                self.coverage.add("truncations", 1);
                self.coverage.add("ops_truncated", replaced);
            }
            Event::Retransmit { .. } => self.coverage.add("retransmits", 1),
            Event::StateTransfer { entries } => {
                self.coverage.add("state_transfers", 1);
                self.coverage.add("ops_transferred", entries);
            }
            Event::DuplicateRequest => self.coverage.add("cached_replies", 1),
            Event::SessionEvicted { .. } => self.coverage.add("session_evictions", 1),
            Event::Abdicated { view } => {
                self.coverage.add("abdications", 1);
                self.log(|| format!("replica {r} abdicates view {view}"));
            }
            Event::Checkpointed { op, digest } => {
                self.trace(&[7, r as u64, op]);
                self.checker.checkpointed(r, op, digest)?;
                self.coverage.add("checkpoints", 1);
            }
            Event::Repaired { op } => {
                self.trace(&[9, r as u64, op]);
                self.coverage.add("prepares_repaired", 1);
            }
            Event::VotedDamaged { unreadable } => {
                self.trace(&[11, r as u64, unreadable]);
                self.coverage.add("damaged_votes", 1);
            }
            Event::NackTruncated { op, ops } => {
                self.trace(&[12, r as u64, op, ops]);
                self.coverage.add("nack_truncations", 1);
            }
            Event::StateSynced { op, digest } => {
                self.trace(&[8, r as u64, op]);
                self.checker.synced(r, op, digest)?;
                self.coverage.add("state_syncs", 1);
                self.log(|| format!("replica {r} synced to the checkpoint at op {op}"));
            }
        }
        Ok(())
    }

    fn tick_clients(&mut self) {
        let n = self.params.replicas;
        for i in 0..self.clients.len() {
            let tick = self.tick;
            let client = &mut self.clients[i];
            let mut to_send: Vec<u8> = Vec::new();
            let mut message = None;
            match &mut client.in_flight {
                None if tick >= client.think_until
                    && (client.orphan.is_some() || client.issued < client.total) =>
                {
                    let request = client.next_request;
                    client.next_request += 1;
                    let (session, body) = match client.session {
                        // No session: register first.
                        None => (0, Vec::new()),
                        Some(session) => {
                            let body = match client.orphan.take() {
                                Some(body) => body,
                                None => {
                                    client.issued += 1;
                                    workload(&mut self.rng, request)
                                }
                            };
                            (session, body)
                        }
                    };
                    self.checker.client_sent(client.id, request, body.clone());
                    client.in_flight = Some((request, session, body.clone(), tick));
                    to_send.push((client.view_guess % n as u32) as u8);
                    message = Some(Message::Request {
                        client: client.id,
                        session,
                        request,
                        body,
                    });
                }
                Some((request, session, body, sent_at)) if tick - *sent_at >= CLIENT_RETRY => {
                    *sent_at = tick;
                    to_send.extend(0..n);
                    message = Some(Message::Request {
                        client: client.id,
                        session: *session,
                        request: *request,
                        body: body.clone(),
                    });
                    self.coverage.add("client_retries", 1);
                }
                _ => {}
            }
            let id = client.id;
            if let Some(message) = message {
                for r in to_send {
                    self.send(Envelope {
                        cluster: CLUSTER,
                        group: 1,
                        epoch: 0,
                        from: Node::Client(id),
                        to: Node::Replica(r),
                        message: message.clone(),
                    });
                }
            }
        }
    }

    fn client_receive(&mut self, id: u128, message: Message) -> Result<(), Violation> {
        match message {
            Message::Reply {
                request,
                view,
                op,
                body,
                ..
            } => {
                self.checker.reply(id, request, op, &body)?;
                let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
                    return Ok(());
                };
                let Some((in_flight, session, _, _)) = &client.in_flight else {
                    return Ok(());
                };
                if *in_flight != request {
                    return Ok(());
                }
                if *session == 0 {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&body[..8]);
                    client.session = Some(u64::from_le_bytes(raw));
                } else {
                    client.answered += 1;
                }
                client.in_flight = None;
                client.view_guess = view;
                client.think_until = self.tick + self.rng.below(20);
            }
            Message::Evicted { session, .. } => {
                let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
                    return Ok(());
                };
                if client.session == Some(session) {
                    self.coverage.add("evictions_seen_by_clients", 1);
                    client.session = None;
                    if let Some((_, sent_in, body, _)) = client.in_flight.take() {
                        if sent_in != 0 {
                            client.orphan = Some(body);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ticks until every request is answered (or `limit` ticks pass); for scenario tests.
    pub fn run_until_answered(&mut self, limit: u64) -> Result<u64, Violation> {
        let start = self.tick;
        while self.tick - start < limit {
            self.step()?;
            if self.clients.iter().all(|c| c.answered == c.total) {
                return Ok(self.tick - start);
            }
        }
        Err(format!(
            "only {} of {} requests answered in {limit} ticks",
            self.answered(),
            self.clients.iter().map(|c| c.total).sum::<u64>()
        ))
    }

    pub fn answered(&self) -> u64 {
        self.clients.iter().map(|c| c.answered).sum()
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    pub fn replica(&self, r: u8) -> Option<&Replica<ModelBroker>> {
        self.replicas[r as usize].as_ref()
    }

    pub fn committed(&self) -> Op {
        self.checker.committed_ops()
    }

    /// Runs `ticks` more ticks with faults as configured.
    pub fn run_for(&mut self, ticks: u64) -> Result<(), Violation> {
        for _ in 0..ticks {
            self.step()?;
        }
        Ok(())
    }

    /// Cuts every link into (and, unless `receive_only`, out of) replica `r` (scenario tests).
    pub fn isolate(&mut self, r: u8, receive_only: bool) {
        for other in 0..self.params.replicas {
            if other != r {
                self.network.cut.insert((other, r));
                if !receive_only {
                    self.network.cut.insert((r, other));
                }
            }
        }
    }

    /// Rots the stored prepare of `op` on a (crashed) replica's disk (scenario tests).
    pub fn rot(&mut self, r: u8, op: Op) {
        let slot = op % self.params.wal_slots();
        self.disks[r as usize].rot(slot);
    }

    pub fn heal(&mut self) {
        self.network.cut.clear();
    }

    /// Restarts every crashed replica (scenario tests).
    pub fn restart_all(&mut self) -> Result<(), Violation> {
        for r in 0..self.params.replicas {
            if self.replicas[r as usize].is_none() {
                self.restart(r)?;
            }
        }
        Ok(())
    }
}

fn node_id(node: Node) -> u64 {
    match node {
        Node::Replica(r) => r as u64,
        Node::Client(c) => 1000 + (c as u64 & 0xFFFF),
    }
}

/// A random model-broker operation: mostly appends, some offset stores.
fn workload(rng: &mut Rng, request: u64) -> Vec<u8> {
    let partition = rng.below(4) as u8;
    if rng.chance(250_000) {
        let mut body = vec![1, rng.below(3) as u8, partition];
        body.extend_from_slice(&rng.below(request + 2).to_le_bytes());
        body
    } else {
        let mut body = vec![0, partition];
        let len = rng.between(1, 24);
        body.extend((0..len).map(|_| rng.below(256) as u8));
        body
    }
}
