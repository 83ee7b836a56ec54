//! Invariants checked after every step, TigerBeetle style: a replica whose own state
//! contradicts itself stops at once, with the broken rule in the panic message, instead of
//! acting on it. The simulator catches the panic and fails the seed, so every such bug becomes
//! a replayable seed rather than a silent divergence later.

use super::{Replica, Status};
use crate::routing::primary_of;
use crate::state_machine::StateMachine;

impl<S: StateMachine> Replica<S> {
    pub(super) fn check_invariants(&self) {
        let id = self.cfg.replica;
        assert!(
            self.commit_min <= self.commit_max,
            "replica {id}: applied op {} is past the known commit {}",
            self.commit_min,
            self.commit_max
        );
        assert!(
            self.commit_min <= self.log.tail(),
            "replica {id}: applied op {} is past the log's last op {}",
            self.commit_min,
            self.log.tail()
        );
        assert!(
            self.log.base() <= self.commit_min,
            "replica {id}: the log's anchor {} is past the applied op {} (a checkpoint covers only applied ops)",
            self.log.base(),
            self.commit_min
        );
        assert!(
            self.log_view <= self.view,
            "replica {id}: log view {} is past view {}",
            self.log_view,
            self.view
        );
        // Not "durable checkpoint <= applied op": a replica whose named checkpoint rotted
        // restarts from an older anchor, and once a StartView's log is durable again it is
        // repaired (no longer faulty) while it re-applies ops below that checkpoint (seed
        // 7000297, in the coverage window of tests/regressions.rs). What holds is that a
        // superblock only ever names a checkpoint whose state had landed.
        assert!(
            self.checkpoint_durable <= self.checkpoint_named,
            "replica {id}: the superblock names checkpoint {} but only {} was written",
            self.checkpoint_durable,
            self.checkpoint_named
        );
        assert!(
            self.op_durable <= self.log.tail(),
            "replica {id}: durable op {} is past the log's last op {}",
            self.op_durable,
            self.log.tail()
        );
        // Nothing follows a reconfiguration op in the epoch it ends.
        let pending = self.log.after(self.commit_min).iter().position(|p| {
            crate::membership::Membership::proposed_by(&p.header, &p.body)
                .is_some_and(|m| m.epoch > self.cfg.epoch)
        });
        assert!(
            pending.is_none_or(|i| i + 1 == self.log.after(self.commit_min).len()),
            "replica {id}: ops follow the reconfiguration op that ends epoch {}",
            self.cfg.epoch
        );
        // A removed member is never counted toward a quorum, nor a standby.
        assert!(
            self.acked.keys().all(|r| *r < self.cfg.replica_count),
            "replica {id}: counts acknowledgements of a replica outside epoch {}'s members",
            self.cfg.epoch
        );
        if self.status == Status::Normal
            && primary_of(self.view, self.cfg.replica_count) == self.cfg.replica
        {
            assert!(
                self.log_view == self.view,
                "replica {id}: primary of view {} with log view {}",
                self.view,
                self.log_view
            );
        }
    }
}
