//! Checkpoints and state sync: taking and writing a checkpoint every `checkpoint_interval`
//! ops, and replacing the state with a peer's checkpoint when this replica is too far behind
//! to catch up from anyone's log.

use super::{due, PendingWrite, Replica, Status};
use crate::checkpoint::Checkpoint;
use crate::log::Log;
use crate::membership::Membership;
use crate::message::{Message, Node};
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::step::Output;
use crate::{Op, ReplicaId};

impl<S: StateMachine> Replica<S> {
    /// Snapshots the state just after applying `anchor`'s op and writes it. Every replica
    /// checkpoints at the same ops, so their digests there must agree (the simulator checks).
    pub(super) fn take_checkpoint(&mut self, anchor: Prepare) {
        let op = anchor.op();
        let digest = self.sm.digest();
        let clients = self
            .client_table
            .iter()
            .map(|(c, s)| (*c, s.clone()))
            .collect();
        // The configuration in force after `op`: ours, unless `op` is before our epoch's start
        // (recovery replaying the WAL of a replica whose superblock is already in the next
        // epoch), where the one in force is the previous configuration, which we do not keep:
        // such a checkpoint records none, and whoever syncs it applies the reconfiguration op
        // itself (seed 418379).
        let membership = if op >= self.epoch_start {
            self.membership()
        } else {
            Membership::UNSET
        };
        let checkpoint = Checkpoint::new(anchor, self.sm.snapshot(), digest, clients)
            .with_membership(membership);
        self.write_checkpoint(checkpoint);
        self.event(Event::Checkpointed { op, digest });
    }

    pub(super) fn write_checkpoint(&mut self, checkpoint: Checkpoint) {
        let op = checkpoint.op();
        let io = self.io();
        self.writes.insert(io, PendingWrite::Checkpoint { op });
        self.checkpoints.insert(op, checkpoint.clone());
        self.out.push(Output::WriteCheckpoint {
            io,
            checkpoint: Box::new(checkpoint),
        });
    }

    /// Sends the checkpoint our log is anchored on, if it is newer than what `to` has.
    pub(super) fn send_checkpoint(&mut self, to: ReplicaId, have: Op) {
        let base = self.log.base();
        if base <= have || to == self.cfg.replica {
            return;
        }
        if let Some(checkpoint) = self.checkpoints.get(&base).cloned() {
            // Committed state promises nothing about views: it goes out at once.
            self.send_now(
                Node::Replica(to),
                Message::Sync {
                    checkpoint: Box::new(checkpoint),
                },
            );
        }
    }

    /// Our state is behind every log we were offered: ask `from` for its checkpoint.
    pub(super) fn request_sync(&mut self, from: ReplicaId) {
        if !due(
            &mut self.last_sync_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        if from != self.cfg.replica {
            self.send_now(
                Node::Replica(from),
                Message::RequestSync {
                    have: self.commit_min,
                    replica: self.cfg.replica,
                },
            );
        }
    }

    /// Installs a peer's checkpoint newer than our state. If our log already holds its op we
    /// keep the log (our WAL still recovers through it); otherwise the log restarts at the
    /// checkpoint and we neither acknowledge nor vote until that checkpoint is durable.
    /// Whether a peer's checkpoint would be installed if the state machine restores it: newer
    /// than our state, intact, of our cluster and group (of any epoch: committed state is
    /// committed state, and one of a newer epoch takes us into it). A driver that must prepare the
    /// state machine first (the broker fetches the data a manifest names) asks this before it
    /// does the work.
    pub fn takes_checkpoint(&self, checkpoint: &Checkpoint) -> bool {
        let op = checkpoint.op();
        let header = &checkpoint.anchor.header;
        // Older than the checkpoint our superblock names (possible only when that one rotted,
        // and our state is empty): no superblock may name it, so the sync could never become
        // durable. We wait for a peer's checkpoint at least as new as ours.
        op > self.commit_min
            && op >= self.checkpoint_durable
            && checkpoint.verify()
            && header.cluster == self.cfg.cluster
            && header.group == self.cfg.group
    }

    pub(super) fn on_sync(&mut self, checkpoint: Checkpoint) {
        let op = checkpoint.op();
        if !self.takes_checkpoint(&checkpoint) || self.sm.restore(&checkpoint.state).is_err() {
            return;
        }
        self.client_table = checkpoint.clients.iter().cloned().collect();
        self.commit_min = op;
        self.commit_max = self.commit_max.max(op);
        let anchor = checkpoint.anchor.checksum();
        if self.log.checksum_at(op) != Some(anchor) {
            // A faulty replica's promises after `op` still stand if they run through this very
            // checkpoint (same checksum, same history below it); promises that end at or below
            // it are covered by committed state, so nothing is left to vouch for. Promises of
            // another history leave it sitting view changes out until a StartView repairs it.
            if let Some(repair) = self.repair.take() {
                if repair.last() <= op {
                    self.repair_until = Some(op);
                } else if repair.promised.get(&op) == Some(&anchor) {
                    self.repair = Some(repair.after(op));
                }
            }
            self.log = Log::new(checkpoint.anchor.clone());
            self.op_durable = op;
            // Writes issued for the old log's ops after `op` are not this log's.
            self.wal_issued = op;
            self.durable_ops.clear();
            self.syncing = Some(op);
            if self.is_primary() {
                // Our log no longer is our view's log, so we may not lead the view: commit
                // numbers we announce in it would commit our backups' copies of ops the
                // checkpoint replaced (seed 9625114). A primary's log holds every committed op,
                // so only a primary of a stale view gets here; it waits to learn the new one.
                self.status = Status::Recovering;
                self.status_since = self.tick;
            }
            // The WAL after `op` is left alone. It may hold ops we acknowledged that our log
            // lost to a damaged slot below `op` (seed 9503018: truncating them lost a committed
            // op); once the checkpoint is durable, recovery reads them back through it. Ops of
            // a history that diverged at or below `op` read back as faulty slots instead: a
            // vote marking them unreadable is true of the old log view they belong to, and a
            // newer log view (which the checkpoint's commit implies in any quorum) outweighs
            // it; the cost is a repair, not safety.
        }
        let digest = self.sm.digest();
        let membership = checkpoint.membership;
        self.write_checkpoint(checkpoint);
        self.event(Event::StateSynced { op, digest });
        if membership != Membership::UNSET && membership.epoch > self.cfg.epoch {
            // The checkpoint is past a reconfiguration we never applied: we enter its epoch
            // once the checkpoint is durable (`checkpoint_became_durable`). Entering now would
            // write a superblock of that epoch beside the old checkpoint, and a crash would
            // recover the epoch without its start (seed 314091).
            self.synced_epoch = Some((op, membership));
            return;
        }
        self.apply_committed();
        // Back to what the missing state interrupted (a StartView only once the checkpoint is
        // durable: see `on_start_view`).
        if self.sync_view.is_some() {
            self.resume_start_view();
        } else if self.status == Status::Normal && !self.is_primary() {
            self.last_state_request = 0;
            self.request_state();
        } else if self.status == Status::ViewChange && self.primary() == self.cfg.replica {
            self.try_lead();
        }
    }
}
