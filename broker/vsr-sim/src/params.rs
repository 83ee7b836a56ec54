//! Swarm parameters: each seed draws its own cluster size, route and fault rates, so a run of
//! many seeds explores many different worlds rather than one world many times.

use crate::rng::Rng;
use vsr::Route;

#[derive(Debug, Clone)]
pub struct Params {
    pub replicas: u8,
    pub clients: usize,
    pub requests_per_client: u64,
    pub route: Route,
    /// Per-message loss and duplication, parts per million.
    pub loss_ppm: u64,
    pub duplicate_ppm: u64,
    /// One-way delay in ticks: a minimum plus an exponential with this mean (reorders).
    pub delay_min: u64,
    pub delay_mean: u64,
    /// Most messages in flight on one path; more are dropped.
    pub path_capacity: usize,
    /// Per tick: chance a partition starts / heals (ppm); partitions may be asymmetric.
    pub partition_onset_ppm: u64,
    pub partition_heal_ppm: u64,
    pub asymmetric_partitions: bool,
    /// Per tick and replica: crash and restart chances (ppm).
    pub crash_ppm: u64,
    pub restart_ppm: u64,
    /// Chance a write still pending at a crash is lost (ppm).
    pub torn_write_ppm: u64,
    pub write_latency_max: u64,
    /// Storage faults, only on the replicas the fault atlas allows (at most Qr - 1 of them, so
    /// every replication quorum keeps an intact copy and enough replicas can vote): a WAL
    /// prepare that rots between write and read (ppm per prepare read at a restart), and a WAL
    /// write that lands in the neighbouring slot (ppm per write).
    pub read_fault_ppm: u64,
    pub misdirect_ppm: u64,
    /// Per tick: chance one replica goes deaf — it hears no replica but is still heard — and
    /// chance it recovers (ppm). Deafness lasts long enough (hundreds of ticks) to outlast the
    /// abdication timeout: a deaf primary keeps its backups content with heartbeats while it
    /// commits nothing, and only abdication gets the cluster going again.
    pub deaf_onset_ppm: u64,
    pub deaf_heal_ppm: u64,
    /// Ops between checkpoints; the WAL holds twice as many (see `wal_slots`). Small
    /// intervals make lagging replicas fall behind every peer's log and need state sync.
    pub checkpoint_interval: u64,
    /// Chance (ppm per restart of a replica in the fault atlas) that the checkpoint its
    /// superblock names has rotted: the replica has no state to start from and must sync.
    pub checkpoint_fault_ppm: u64,
    /// World 4: superblock writes interrupted by a crash may reach only some of the copies,
    /// and copies may rot (at the WAL's read-fault rate, never the last readable copy of the
    /// newest complete write).
    pub superblock_faults: bool,
    /// World 5: per tick, chance (ppm) that one directed path between two replicas clogs —
    /// it holds every message, delivering them late, all at once, when it unclogs — and the
    /// mean number of ticks a clog lasts (exponential).
    pub clog_onset_ppm: u64,
    pub clog_ticks_mean: u64,
    /// World 6: a two-replica cluster may have one replica with damaged storage (WAL and
    /// superblock faults, not checkpoint rot). Damaged replicas vote, and one nack is proof at
    /// N = 2, so both can still elect a primary; a replica whose checkpoint rotted would sit
    /// view changes out, and a two-replica view change needs both.
    pub damage_at_two: bool,
    /// Per tick: chance (ppm) that the primary is asked to step down (a rolling restart's
    /// hand-over), drawn from its own generator.
    pub step_down_ppm: u64,
    /// World 8: non-voting standbys after the members (0–2), which crash and restart like
    /// members (from their own generator) and must end caught up like them.
    pub standbys: u8,
    /// World 9: the member counts the cluster is reconfigured to, in order, during the faulty
    /// phase (empty: never). Each growth goes through an epoch that adds the joining replicas
    /// as standbys first; see `Simulation::configurations`.
    pub membership_plan: Vec<u8>,
    /// World 8's standbys as drawn, before a membership plan turned them off.
    pub drawn_standbys: u8,
    /// Ticks of the faulty phase before faults heal for the liveness check.
    pub safety_ticks: u64,
    pub liveness_ticks: u64,
}

impl Params {
    /// Members and standbys: every replica the simulation runs.
    pub fn nodes(&self) -> u8 {
        let planned = self.membership_plan.iter().copied().max().unwrap_or(0);
        (self.replicas + self.standbys).max(planned)
    }

    pub fn wal_slots(&self) -> u64 {
        2 * self.checkpoint_interval
    }

    /// Draws a swarm configuration from the seed.
    pub fn swarm(rng: &mut Rng) -> Self {
        let replicas = match rng.below(10) {
            0 => 1,
            1 => 2,
            2..=5 => 3,
            6 => 4,
            7 | 8 => 5,
            _ => 6,
        };
        Self {
            replicas,
            clients: rng.between(1, 8) as usize,
            requests_per_client: rng.between(4, 24),
            route: if rng.chance(500_000) {
                Route::Star
            } else {
                Route::Ring
            },
            loss_ppm: rng.below(200_000),
            duplicate_ppm: rng.below(300_000),
            delay_min: rng.below(3),
            delay_mean: rng.between(1, 10),
            path_capacity: rng.between(2, 32) as usize,
            partition_onset_ppm: rng.below(5_000),
            partition_heal_ppm: rng.between(10_000, 100_000),
            asymmetric_partitions: rng.chance(500_000),
            crash_ppm: rng.below(2_000),
            restart_ppm: rng.between(5_000, 50_000),
            torn_write_ppm: rng.between(800_000, 1_000_000),
            write_latency_max: rng.between(1, 20),
            read_fault_ppm: rng.below(100_000),
            misdirect_ppm: rng.below(20_000),
            safety_ticks: rng.between(2_000, 8_000),
            liveness_ticks: 30_000,
            // Drawn last, so the draws above (and every earlier seed's world) are unchanged.
            deaf_onset_ppm: if rng.chance(300_000) {
                rng.between(200, 2_000)
            } else {
                0
            },
            deaf_heal_ppm: rng.between(500, 3_000),
            checkpoint_interval: [4, 8, 16, 32, 64, 1024][rng.below(6) as usize],
            checkpoint_fault_ppm: rng.below(200_000),
            superblock_faults: rng.chance(500_000),
            clog_onset_ppm: if rng.chance(500_000) {
                rng.between(1_000, 20_000)
            } else {
                0
            },
            clog_ticks_mean: rng.between(10, 400),
            damage_at_two: true,
            step_down_ppm: if rng.chance(300_000) {
                rng.between(100, 1_000)
            } else {
                0
            },
            standbys: if rng.chance(500_000) {
                rng.between(1, 3) as u8
            } else {
                0
            },
            membership_plan: Vec::new(),
            drawn_standbys: 0,
        }
        .with_membership_plan(rng)
    }

    /// World 9, drawn last: in 40 % of the seeds, one to three reconfigurations to member
    /// counts of 1 to 6, each different from the one before (a repeat becomes one more, or 3
    /// after 5), such as 3 → 5 → 3 or 1 → 3 → 1.
    /// Standbys of world 8 stay off in those seeds (growth adds its own).
    fn with_membership_plan(mut self, rng: &mut Rng) -> Self {
        self.drawn_standbys = self.standbys;
        if !rng.chance(400_000) {
            return self;
        }
        self.standbys = 0;
        let mut current = self.replicas;
        for _ in 0..rng.between(1, 4) {
            let mut next = rng.between(1, 6) as u8;
            if next == current {
                next = if current == 5 { 3 } else { current + 1 };
            }
            self.membership_plan.push(next);
            current = next;
        }
        self
    }

    /// The same world without world 9 (for the worlds before it), standbys as world 8 drew
    /// them.
    pub fn without_reconfiguration(mut self) -> Self {
        self.membership_plan.clear();
        self.standbys = self.drawn_standbys;
        self
    }

    /// No faults at all: the baseline for performance guards and scenario tests.
    pub fn calm(replicas: u8, route: Route) -> Self {
        Self {
            replicas,
            clients: 4,
            requests_per_client: 20,
            route,
            loss_ppm: 0,
            duplicate_ppm: 0,
            // A fixed 2-tick hop: "no faults" includes no latency tail long enough to look like
            // a lost message.
            delay_min: 1,
            delay_mean: 0,
            path_capacity: 64,
            partition_onset_ppm: 0,
            partition_heal_ppm: 0,
            asymmetric_partitions: false,
            crash_ppm: 0,
            restart_ppm: 0,
            torn_write_ppm: 1_000_000,
            write_latency_max: 3,
            read_fault_ppm: 0,
            misdirect_ppm: 0,
            deaf_onset_ppm: 0,
            deaf_heal_ppm: 0,
            checkpoint_interval: 16,
            checkpoint_fault_ppm: 0,
            superblock_faults: false,
            clog_onset_ppm: 0,
            clog_ticks_mean: 0,
            damage_at_two: false,
            step_down_ppm: 0,
            standbys: 0,
            membership_plan: Vec::new(),
            drawn_standbys: 0,
            safety_ticks: 3_000,
            liveness_ticks: 30_000,
        }
    }
}
