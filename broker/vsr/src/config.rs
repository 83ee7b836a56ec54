//! A replica's configuration and its presets. Timeouts count ticks of 10 ms; the simulation
//! preset keeps the pipeline, WAL and checkpoint interval small so that faults reach every path
//! within a few thousand ops, the production preset sizes them for a broker's traffic.

use crate::routing::Route;
use crate::{Epoch, Op, ReplicaId};

#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: u128,
    pub group: u32,
    pub epoch: Epoch,
    pub replica_count: u8,
    /// Non-voting replicas after the members: ids `replica_count..replica_count +
    /// standby_count`. They receive prepares and commits and acknowledge them, but are never
    /// counted in a quorum, never vote and never lead; a joining member catches up as one.
    pub standby_count: u8,
    pub replica: ReplicaId,
    /// A replica opened on an empty disk joins a cluster that already runs (not its first
    /// configuration): it holds none of the history, so it votes in nothing until a StartView
    /// (or a checkpoint and a StartView) gave it the log. Members of a first configuration
    /// start with it off, normal in view 0 from the common empty log.
    pub joining: bool,
    /// Positions this replica may ask for history it lost (the start of its epoch): members
    /// of earlier configurations hold it too, and a shrunken configuration may have no other
    /// member left. At least the members and standbys; drivers set the size of the largest
    /// ring they know (unknown positions are simply not reached).
    pub known_positions: u8,
    pub route: Route,
    /// Most uncommitted prepares the primary keeps in flight.
    pub pipeline_max: usize,
    /// Most client requests queued behind the pipeline.
    pub request_queue_max: usize,
    /// Most client sessions remembered; registering one more evicts the one that committed
    /// longest ago.
    pub clients_max: usize,
    /// Primary: resend uncommitted prepares to replicas that have not acked after this long.
    pub prepare_timeout: u64,
    /// Primary: commit heartbeat interval when idle.
    pub commit_interval: u64,
    /// Backup: suspect the primary after this long without a prepare or commit.
    pub primary_timeout: u64,
    /// Give up on a view change and try the next view after this long.
    pub view_change_timeout: u64,
    /// A restarted replica waits this long for a StartView before starting a view change.
    pub recovery_timeout: u64,
    /// Primary: give up the view when uncommitted work has made no progress this long (it can
    /// send but not hear its backups, who therefore never time out on it).
    pub abdicate_timeout: u64,
    /// A checkpoint is taken after applying every op that is a multiple of this.
    pub checkpoint_interval: u64,
    /// WAL capacity in prepares: op `n` is written to slot `n % wal_slots`, so it may be written
    /// only once the checkpoint at or above `n - wal_slots` is durable. At least twice the
    /// checkpoint interval, so the primary never waits for a checkpoint to prepare.
    pub wal_slots: u64,
    /// Seed of the jitter generator (the only randomness in the core).
    pub seed: u64,
}

impl Config {
    /// The simulation preset (the simulator and the unit tests): a small pipeline, WAL and
    /// checkpoint interval, so that wrap-around, checkpoints and state sync happen within a few
    /// hundred ops, and timeouts of a few hundred ms in ticks of 10 ms.
    pub fn new(cluster: u128, replica_count: u8, replica: ReplicaId, route: Route) -> Self {
        Self {
            cluster,
            group: 1,
            epoch: 0,
            replica_count,
            standby_count: 0,
            replica,
            joining: false,
            known_positions: 0,
            route,
            pipeline_max: 4,
            request_queue_max: 64,
            clients_max: 64,
            prepare_timeout: 25,
            commit_interval: 50,
            primary_timeout: 150,
            view_change_timeout: 300,
            recovery_timeout: 200,
            abdicate_timeout: 600,
            checkpoint_interval: 32,
            wal_slots: 64,
            seed: 0,
        }
    }

    /// The WAL slot of `op`.
    pub fn slot(&self, op: Op) -> u64 {
        op % self.wal_slots
    }

    /// The production preset (ticks of 10 ms): a deeper pipeline for a broker's batches, a WAL
    /// and checkpoint interval sized so a checkpoint is rare next to the ops it covers, and
    /// timeouts that ride out a GC-free but busy node (a backup waits 1 s for its primary
    /// before it starts a view change). The simulator runs the protocol with the simulation
    /// preset; these values change only how often its timers fire, never what they decide.
    pub fn production(cluster: u128, replica_count: u8, replica: ReplicaId, route: Route) -> Self {
        Self {
            pipeline_max: 32,
            request_queue_max: 1024,
            clients_max: 1024,
            prepare_timeout: 20,
            commit_interval: 10,
            primary_timeout: 100,
            view_change_timeout: 200,
            recovery_timeout: 150,
            abdicate_timeout: 400,
            checkpoint_interval: 1024,
            wal_slots: 4096,
            ..Self::new(cluster, replica_count, replica, route)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_presets_keep_the_wal_at_least_twice_the_checkpoint_interval() {
        for cfg in [
            Config::new(1, 3, 0, Route::Ring),
            Config::production(1, 3, 0, Route::Ring),
        ] {
            assert!(cfg.wal_slots >= 2 * cfg.checkpoint_interval, "{cfg:?}");
            assert!(cfg.prepare_timeout < cfg.primary_timeout, "{cfg:?}");
            assert!(cfg.primary_timeout < cfg.view_change_timeout, "{cfg:?}");
        }
    }
}
