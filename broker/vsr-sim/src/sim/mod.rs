//! One simulated cluster run: replicas, clients, a packet network and per-replica disks, all
//! driven tick by tick from one seed. A run has a safety phase with faults (any number of
//! replicas may be down at once) and a liveness phase in which faults stop, everyone restarts
//! and the cluster must answer every request and converge.

mod clients;
mod disk;
mod faults;
mod network;

use crate::coverage::Coverage;
use clients::Client;
use disk::{Disk, Pending, Write};
use network::Network;

use crate::checker::{Checker, Violation};
use crate::machine::SimMachine;
use crate::model::ModelBroker;
use crate::params::Params;
use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
use vsr::{Config, DiskImage, Event, Input, MessageKind, Op, Output, Prepare, Replica};

/// Ticks (10 ms each) between a machine halting in the liveness phase and its restart: a
/// process supervisor's back-off (`restartPolicy` in a pod, about a second).
const SUPERVISOR_RESTART_TICKS: u64 = 100;

pub(super) const CLUSTER: u128 = 0x1667_0000_0000_0001;
/// Client retry timeout, ticks.
pub(super) const CLIENT_RETRY: u64 = 80;

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

pub struct Simulation<S: SimMachine = ModelBroker> {
    seed: u64,
    params: Params,
    rng: Rng,
    /// Only for deafness (see `inject_deafness`).
    deaf_rng: Rng,
    /// Only for clogs (see `inject_clogs`); like deafness, its own generator keeps seeds that
    /// draw no clogs replaying exactly as before.
    clog_rng: Rng,
    /// Only for operator step-downs (see `inject_step_downs`), for the same reason.
    step_down_rng: Rng,
    /// Only for standbys' crashes and restarts, for the same reason.
    standby_rng: Rng,
    /// World 9: only for when the next configuration is asked for.
    membership_rng: Rng,
    /// World 9: the configurations the cluster goes through after its first, in order.
    configurations: Vec<vsr::Membership>,
    /// The first of `configurations` no replica has entered yet.
    next_configuration: usize,
    last_proposal: u64,
    tick: u64,
    replicas: Vec<Option<Replica<S>>>,
    world: S::World,
    disks: Vec<Disk>,
    network: Network,
    clients: Vec<Client>,
    checker: Checker<S>,
    coverage: Coverage,
    trace: xxhash_rust::xxh3::Xxh3,
    verbose: bool,
    liveness: bool,
    /// Replicas whose machine halted in the liveness phase, and the tick their supervisor
    /// restarts them at (see [`SUPERVISOR_RESTART_TICKS`]).
    supervisor_restarts: BTreeMap<u8, u64>,
    /// Replicas kept down for the whole run (scenario tests).
    pub permanently_down: BTreeSet<u8>,
    /// Per-command link filter for scenario tests: (from, to, command) dropped.
    pub drop_filter: BTreeSet<(u8, u8, MessageKind)>,
    /// The fault atlas: replicas whose storage may rot or misdirect (at most Qr - 1).
    pub corruptible: BTreeSet<u8>,
}

impl Simulation<ModelBroker> {
    /// A run of the model broker.
    pub fn new(seed: u64, params: Params, verbose: bool) -> Self {
        Self::with_machine(seed, params, verbose)
    }
}

impl<S: SimMachine> Simulation<S> {
    /// A run replicating `S`.
    pub fn with_machine(seed: u64, params: Params, verbose: bool) -> Self {
        let mut rng = Rng::new(seed);
        let world = S::world(seed);
        let mut opened: Vec<Replica<S>> = (0..params.nodes())
            .map(|r| Self::open_replica(&world, seed, &params, r, DiskImage::default()))
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
            checker: Checker::new(params.nodes(), root, S::reference(&world)),
            world,
            disks: (0..params.nodes())
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
            step_down_rng: Rng::new(seed ^ 0x57E9_0000_0000_D0E1),
            standby_rng: Rng::new(seed ^ 0x57A9_DB70_0000_0001),
            membership_rng: Rng::new(seed ^ 0x3E3B_E500_0000_0009),
            configurations: Vec::new(),
            next_configuration: 0,
            last_proposal: 0,
            tick: 0,
            coverage: Coverage::default(),
            trace: xxhash_rust::xxh3::Xxh3::new(),
            verbose,
            liveness: false,
            supervisor_restarts: BTreeMap::new(),
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
        sim.configurations = configurations(sim.params.replicas, &sim.params.membership_plan);
        for next in &sim.configurations {
            let request = u64::from(next.epoch);
            sim.checker
                .client_sent(vsr::RECONFIGURE_CLIENT, request, next.encode());
        }
        // Under reconfiguration the atlas must suit the smallest configuration it passes.
        let n = sim
            .configurations
            .iter()
            .map(|m| m.replica_count)
            .chain([sim.params.replicas])
            .min()
            .unwrap_or(sim.params.replicas);
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

    pub(super) fn open_replica(
        world: &S::World,
        seed: u64,
        params: &Params,
        r: u8,
        disk: DiskImage,
    ) -> Replica<S> {
        let mut cfg = Config::new(CLUSTER, params.replicas, r, params.route);
        cfg.standby_count = params.standbys;
        cfg.known_positions = params.nodes();
        cfg.seed = seed;
        // Few sessions, so clients beyond four evict each other.
        cfg.clients_max = crate::checker::CLIENTS_MAX;
        cfg.checkpoint_interval = params.checkpoint_interval;
        cfg.wal_slots = params.wal_slots();
        let machine = S::open(world, r, &disk);
        Replica::open(cfg, disk, machine)
    }

    pub(super) fn log(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            println!("{:>7} {}", self.tick, line());
        }
    }

    pub(super) fn trace(&mut self, values: &[u64]) {
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

    pub(super) fn run_phases(&mut self) -> Result<(), Violation> {
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
                if self.params.standbys > 0 {
                    self.coverage.add("converged_with_standbys", 1);
                }
                if !self.configurations.is_empty() {
                    self.coverage.add("converged_with_reconfiguration", 1);
                }
                return Ok(());
            }
        }
        Err(self.liveness_report())
    }

    pub(super) fn enter_liveness(&mut self) -> Result<(), Violation> {
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
        S::heal(&self.world);
        for r in 0..self.params.nodes() {
            if self.replicas[r as usize].is_none() && !self.permanently_down.contains(&r) {
                self.restart(r)?;
            }
        }
        Ok(())
    }

    /// A machine halts on a local failure it cannot get past without diverging (`iggy-broker`
    /// exits), and what runs it restarts it. Faults stop in the liveness phase, random
    /// restarts with them, so the supervisor's restart is modelled there: a replica halted by
    /// a state sync whose source had unrepaired rot in the range it needed would otherwise stay
    /// down for good, though its next attempt, after the source's scrub, succeeds.
    fn restart_halted(&mut self) -> Result<(), Violation> {
        let due: Vec<u8> = self
            .supervisor_restarts
            .iter()
            .filter(|(_, at)| **at <= self.tick)
            .map(|(r, _)| *r)
            .collect();
        for r in due {
            self.supervisor_restarts.remove(&r);
            if self.replicas[r as usize].is_none() {
                self.coverage.add("supervisor_restarts", 1);
                self.restart(r)?;
            }
        }
        Ok(())
    }

    pub(super) fn converged(&self) -> bool {
        let committed = self.checker.committed_ops();
        // Under reconfiguration: in the last configuration, which every replica runs; the
        // replicas outside it retired.
        let last = self.configurations.last();
        self.clients.iter().all(|c| c.answered == c.total)
            && self.next_configuration == self.configurations.len()
            && self
                .replicas
                .iter()
                .enumerate()
                .all(|(r, replica)| match replica {
                    None => self.permanently_down.contains(&(r as u8)),
                    Some(replica)
                        if last.is_some_and(|m| m.role_of(r as u8) == vsr::Role::Outside) =>
                    {
                        replica.status() == vsr::Status::Retired
                    }
                    // Converged means whole again, not merely caught up: normal, every committed
                    // op applied and durable, no damage left, no sync pending.
                    Some(replica) => {
                        last.is_none_or(|m| replica.epoch() == m.epoch)
                            && replica.status() == vsr::Status::Normal
                            && replica.commit_min() == committed
                            && replica.op_durable() >= committed
                            && !replica.is_faulty()
                            && !replica.is_syncing()
                    }
                })
    }

    pub(super) fn liveness_report(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| match r {
                None => "down".into(),
                Some(r) => format!(
                    "{:?} e{} v{} commit {}/{} log {}..{} durable {} writes pending {}{}{}{}",
                    r.status(),
                    r.epoch(),
                    r.view(),
                    r.commit_min(),
                    r.commit_max(),
                    r.log_base(),
                    r.log_tail(),
                    r.op_durable(),
                    r.pending_writes(),
                    if r.is_faulty() { " faulty" } else { "" },
                    if r.is_syncing() { " syncing" } else { "" },
                    if r.is_primary() && !r.standbys_acked().is_empty() {
                        format!(" standbys acked {:?}", r.standbys_acked())
                    } else {
                        String::new()
                    },
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

    pub(super) fn step(&mut self) -> Result<(), Violation> {
        self.tick += 1;
        if !self.liveness {
            self.inject_faults()?;
        } else {
            self.restart_halted()?;
        }
        for (r, replica) in self.replicas.iter().enumerate() {
            if let Some(replica) = replica {
                let r = r as u8;
                let may_damage = !self.liveness && self.corruptible.contains(&r);
                S::storage_tick(&self.world, r, replica.state_machine(), may_damage);
            }
        }
        self.deliver_messages()?;
        self.complete_writes()?;
        self.ask_for_next_configuration()?;
        for r in 0..self.params.nodes() {
            let now = self.tick * 10_000;
            self.feed(r, Input::Tick { now })?;
        }
        self.tick_clients();
        self.adopt_written_bodies();
        Ok(())
    }

    /// As the broker's driver does: each replica's log takes the copies of written bodies of
    /// the ops it has applied, in place of its own.
    fn adopt_written_bodies(&mut self) {
        for (replica, disk) in self.replicas.iter_mut().zip(&mut self.disks) {
            if let Some(replica) = replica {
                let taken = replica.adopt_written(&mut disk.written);
                if taken > 0 {
                    self.coverage.add("bodies_adopted", taken);
                }
            }
        }
    }

    pub(super) fn complete_writes(&mut self) -> Result<(), Violation> {
        for r in 0..self.params.nodes() {
            let tick = self.tick;
            let disk = &mut self.disks[r as usize];
            let (done, waiting): (Vec<Pending>, Vec<Pending>) =
                disk.pending.drain(..).partition(|p| p.complete_at <= tick);
            disk.pending = waiting;
            for write in done {
                let io = write.io;
                let bodies: Vec<&Prepare> = match &write.write {
                    Write::Wal { prepare, .. } => vec![prepare],
                    Write::Log { entries, .. } => entries.iter().map(|(_, p)| p).collect(),
                    Write::Superblock(_) | Write::Checkpoint(_) => Vec::new(),
                };
                for prepare in bodies {
                    let copy = (prepare.checksum(), prepare.body.to_vec().into());
                    self.disks[r as usize].written.insert(prepare.op(), copy);
                }
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

    pub(super) fn feed(&mut self, r: u8, input: Input) -> Result<(), Violation> {
        let Some(replica) = self.replicas[r as usize].as_mut() else {
            return Ok(());
        };
        let from_peer = matches!(input, Input::Message(_));
        let outputs = replica.step(input);
        if replica.state_machine().halted() {
            // Fail-stop: the process would have exited before sending or writing any of it.
            self.log(|| format!("replica {r}: its machine halted"));
            self.coverage.add("machine_halts", 1);
            if self.liveness {
                self.supervisor_restarts
                    .insert(r, self.tick + SUPERVISOR_RESTART_TICKS);
            }
            return self.crash(r);
        }
        for output in outputs {
            self.handle_output(r, output)?;
        }
        // As the broker's driver does with the effects out: the primary's machine may work on
        // the op it applies next (the broker stages a send's batch in its segment).
        if let Some(replica) = self.replicas[r as usize].as_mut() {
            replica.stage_next();
        }
        // As the broker's driver does once a message's effects are out: apply what a prepare
        // said is committed. Now and then left to the next tick instead, the core's fallback.
        let unapplied = self.replicas[r as usize]
            .as_ref()
            .is_some_and(|replica| replica.has_unapplied());
        if from_peer && unapplied && self.rng.chance(900_000) {
            return self.feed(r, Input::Apply);
        }
        Ok(())
    }

    pub(super) fn handle_output(&mut self, r: u8, output: Output) -> Result<(), Violation> {
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

    pub(super) fn on_event(&mut self, r: u8, event: Event) -> Result<(), Violation> {
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
                timestamp,
                executed,
            } => {
                self.trace(&[4, r as u64, op]);
                let view = self.replicas[r as usize]
                    .as_ref()
                    .map_or((0, 0), |x| (x.epoch(), x.view()));
                self.log(|| format!("replica {r} applies op {op} in (epoch, view) {view:?}"));
                self.checker.committed(
                    r,
                    op,
                    checksum,
                    parent,
                    body_checksum,
                    digest,
                    (client, session, request),
                    timestamp,
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
            Event::Normal {
                epoch,
                view,
                primary,
            } => {
                self.trace(&[6, r as u64, view as u64, primary as u64]);
                if primary {
                    self.coverage.add("views_installed", 1);
                    self.log(|| format!("replica {r} is primary of view {view} of epoch {epoch}"));
                    if let Some(replica) = self.replicas[r as usize].as_ref() {
                        self.checker
                            .new_primary(r, (epoch, view), replica.log_base(), |op| {
                                replica.checksum_at(op)
                            })?;
                    }
                }
                self.checker.normal(r, (epoch, view), primary)?;
            }
            Event::EpochStarted { membership, role } => {
                self.trace(&[14, r as u64, membership.epoch as u64, membership.start]);
                self.coverage.add("epochs_entered", 1);
                if role == vsr::Role::Outside {
                    self.coverage.add("members_retired", 1);
                }
                self.log(|| {
                    format!(
                        "replica {r} enters epoch {} at op {} ({} members, {} standbys) as {role:?}",
                        membership.epoch,
                        membership.start,
                        membership.replica_count,
                        membership.standby_count
                    )
                });
                while self
                    .configurations
                    .get(self.next_configuration)
                    .is_some_and(|next| next.epoch <= membership.epoch)
                {
                    self.next_configuration += 1;
                    self.coverage.add("epochs_committed", 1);
                }
            }
            Event::EpochStartNamed { start } => {
                self.coverage.add("epoch_starts_named", 1);
                self.log(|| format!("replica {r} commits up to op {start}, a newer epoch's start named by a member lacking it"));
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
            Event::SteppedDown { view } => {
                self.trace(&[13, r as u64, view as u64]);
                self.coverage.add("step_downs", 1);
                self.log(|| format!("replica {r} steps down from view {view}"));
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
            Event::ViewChangeBodyFetched { op } => {
                self.trace(&[15, r as u64, op]);
                self.coverage.add("view_change_bodies", 1);
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

    /// World 9: asks every running replica for the next configuration of the plan, as the
    /// sidecars post a new ring to their brokers — now and then while faults go on, and every
    /// half second once they stopped, until some replica entered it.
    fn ask_for_next_configuration(&mut self) -> Result<(), Violation> {
        let Some(next) = self.configurations.get(self.next_configuration).copied() else {
            return Ok(());
        };
        let due = if self.liveness {
            self.tick - self.last_proposal >= 50
        } else {
            self.membership_rng.chance(3_000)
        };
        if !due {
            return Ok(());
        }
        self.last_proposal = self.tick;
        self.log(|| {
            format!(
                "asking for epoch {}: {} members, {} standbys",
                next.epoch, next.replica_count, next.standby_count
            )
        });
        for r in 0..self.params.nodes() {
            self.feed(r, Input::Reconfigure(next))?;
        }
        Ok(())
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    pub fn replica(&self, r: u8) -> Option<&Replica<S>> {
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
}

/// The configurations a membership plan goes through after the first (`replicas` members,
/// epoch 0): a growth first adds the joining replicas as standbys (one epoch), then makes them
/// members (the next); a shrink is one epoch.
pub fn configurations(replicas: u8, plan: &[u8]) -> Vec<vsr::Membership> {
    let mut out = Vec::new();
    let mut current = replicas;
    let mut epoch = 0;
    let mut push = |replica_count: u8, standby_count: u8| {
        epoch += 1;
        out.push(vsr::Membership {
            epoch,
            replica_count,
            standby_count,
            start: 0,
        });
    };
    for &target in plan {
        if target > current {
            push(current, target - current);
        }
        push(target, 0);
        current = target;
    }
    out
}
