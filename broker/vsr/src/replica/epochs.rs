//! Reconfiguration by epochs: proposing the next configuration, entering it when its
//! reconfiguration op is applied, and bringing replicas of older epochs up to date.
//!
//! The rules (docs/replication.md, "Reconfiguration by epochs"):
//! * the change is one op, the last of its epoch: once a reconfiguration op is in the log,
//!   nothing is prepared after it in that epoch, and it commits by the old configuration's
//!   quorum;
//! * every replica that applies it enters the next epoch in view 0 with the log up to it, its
//!   first superblock of the epoch written together with that log; members of the new epoch
//!   start normal, as a fresh cluster does from a common log;
//! * views are ordered by `(epoch, view)`; envelopes of another epoch are never acted on, they
//!   only show who is behind: a replica hearing from an older epoch answers with how its own
//!   began ([`Message::StartEpoch`], or its checkpoint when its log no longer reaches back),
//!   and one hearing from a newer epoch asks for that ([`Message::RequestStartEpoch`]);
//! * a replica that leaves keeps its process until the operator retires it; it answers the
//!   replicas still in the old epoch so they can finish it, and votes for nothing new.

use super::{due, valid_chain, Replica, Status};
use crate::membership::{Membership, Role, RECONFIGURE_CLIENT};
use crate::message::{Envelope, Message, Node};
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::{Op, ReplicaId};
use std::collections::BTreeSet;

impl<S: StateMachine> Replica<S> {
    /// The configuration this replica runs.
    pub fn membership(&self) -> Membership {
        Membership {
            epoch: self.cfg.epoch,
            replica_count: self.cfg.replica_count,
            standby_count: self.cfg.standby_count,
            start: self.epoch_start,
        }
    }

    /// Keeps the newest proposal; the primary acts on it at its next tick.
    pub(super) fn on_reconfigure(&mut self, next: Membership) {
        if next.epoch > self.cfg.epoch && self.proposal.is_none_or(|p| p.epoch < next.epoch) {
            self.proposal = Some(next);
        }
    }

    /// A reconfiguration op in the log that this replica has not applied yet: nothing may be
    /// prepared after it.
    pub(super) fn reconfiguration_pending(&self) -> bool {
        let head = self.log.head();
        head.header.client == RECONFIGURE_CLIENT
            && Membership::proposed_by(&head.header, &head.body)
                .is_some_and(|next| next.epoch > self.cfg.epoch)
    }

    /// Primary: proposes the kept configuration once it may (see [`Membership::may_become`])
    /// and every joining standby has acknowledged within a pipeline of the commit — so the next
    /// epoch does not open with a member that first needs a long catch-up.
    pub(super) fn maybe_propose(&mut self) {
        let Some(next) = self.proposal else {
            return;
        };
        if next.epoch <= self.cfg.epoch {
            self.proposal = None;
            return;
        }
        if self.membership().may_become(&next).is_err()
            || self.reconfiguration_pending()
            || self
                .requests
                .iter()
                .any(|(client, ..)| *client == RECONFIGURE_CLIENT)
        {
            return;
        }
        let behind = self.commit_max.saturating_sub(self.cfg.pipeline_max as Op);
        let caught_up = (self.cfg.replica_count..next.replica_count).all(|id| {
            self.standbys_acked
                .get(&id)
                .is_some_and(|acked| *acked >= behind)
        });
        if !caught_up {
            return;
        }
        self.requests.push_front((
            RECONFIGURE_CLIENT,
            0,
            u64::from(next.epoch),
            next.encode().into(),
        ));
        self.prepare_queued();
    }

    /// Applied the reconfiguration op that starts `next` (or synced a checkpoint past it):
    /// enters its epoch in view 0. A replica that was recovering stays so, waiting to learn
    /// the epoch's current view.
    pub(super) fn enter_epoch(&mut self, next: Membership) {
        let role = next.role_of(self.cfg.replica);
        self.cfg.epoch = next.epoch;
        self.cfg.replica_count = next.replica_count;
        self.cfg.standby_count = next.standby_count;
        self.epoch_start = next.start;
        // Applying the reconfiguration op (or installing a checkpoint anchored on it) holds the
        // prepare; a checkpoint past the start does not, and then the log never lacks it.
        self.epoch_start_checksum = self.log.checksum_at(next.start).unwrap_or(0);
        if self.proposal.is_some_and(|p| p.epoch <= next.epoch) {
            self.proposal = None;
        }
        self.view = 0;
        self.log_view = 0;
        self.status = match role {
            Role::Outside => Status::Retired,
            _ if self.status == Status::Recovering => Status::Recovering,
            _ => Status::Normal,
        };
        self.svc = BTreeSet::new();
        self.dvc.clear();
        self.dvc_sent = false;
        self.view_change_bodies.clear();
        self.acked.clear();
        self.standbys_acked.clear();
        self.suspects.clear();
        // Requests of the old epoch are dropped; their clients retry in the new one.
        self.requests.clear();
        self.sent_at.clear();
        // Sends of the old epoch would be dropped by everyone who moved on.
        self.deferred.clear();
        self.sync_view = None;
        self.heard_from_primary = self.tick;
        self.status_since = self.tick;
        self.last_progress = self.tick;
        self.jitter = self.random() % (self.cfg.primary_timeout / 2 + 1);
        // A repair of the old epoch's promises is moot: what this replica holds from here on is
        // the committed history, written below; once that is durable it is whole.
        if self.faulty {
            self.repair = None;
            self.repair_until = Some(self.log_tail());
        }
        // The epoch's first superblock goes out with the log up to the reconfiguration op (what
        // fits the WAL): recovery refuses to vote in an epoch whose start it does not hold.
        self.write_log(self.op_durable);
        self.event(Event::EpochStarted {
            membership: next,
            role,
        });
        if self.status == Status::Normal {
            self.event(Event::Normal {
                epoch: self.cfg.epoch,
                view: 0,
                primary: self.is_primary(),
            });
        }
    }

    /// An envelope of another epoch (same cluster and group).
    pub(super) fn on_other_epoch(&mut self, envelope: Envelope) {
        let Node::Replica(from) = envelope.from else {
            return;
        };
        // Prepares named by checksum are the same bytes in every epoch: a repair across an
        // epoch's end (a replica that entered the next one with a damaged slot before it, and
        // the one peer still holding the op in the old) goes on.
        let message = match envelope.message {
            Message::RequestPrepare {
                op,
                checksum,
                replica,
            } => return self.answer_prepare_request(op, checksum, replica),
            Message::RepairPrepare { prepare } => return self.on_repair_prepare(prepare),
            message => message,
        };
        let envelope = Envelope {
            message,
            ..envelope
        };
        if envelope.epoch < self.cfg.epoch {
            // The sender is behind.
            match envelope.message {
                Message::RequestSync { have, replica } => self.send_checkpoint(replica, have),
                _ => self.send_start_epoch(from),
            }
            return;
        }
        match envelope.message {
            Message::StartEpoch { log } => self.on_start_epoch(from, log),
            Message::EpochStartedAt { start, checksum } => {
                self.on_epoch_started_at(start, checksum)
            }
            Message::Sync { checkpoint } => self.on_sync(*checkpoint),
            _ => {
                if due(
                    &mut self.last_epoch_request,
                    self.tick,
                    self.cfg.prepare_timeout,
                ) {
                    let replica = self.cfg.replica;
                    self.send_now(Node::Replica(from), Message::RequestStartEpoch { replica });
                }
            }
        }
    }

    /// Tells a replica of an older epoch how ours began: our log up to our epoch's start, or
    /// our checkpoint when the log begins after it.
    pub(super) fn send_start_epoch(&mut self, to: ReplicaId) {
        let last = self.epoch_answers.entry(to).or_insert(0);
        if to == self.cfg.replica || !due(last, self.tick, self.cfg.prepare_timeout) {
            return;
        }
        let start = self.epoch_start;
        if start == 0 {
            // Our configuration is the first one: nobody is in an older epoch of this cluster.
            return;
        }
        if self.log.base() <= start && start <= self.log_tail() {
            let log = self.log.up_to(start);
            self.send_now(Node::Replica(to), Message::StartEpoch { log });
        } else if self.log.base() > start {
            self.send_checkpoint(to, 0);
        } else if self.epoch_start_checksum != 0 {
            // Our own log lost the start (`lacks_epoch_start`), but the superblock names it: a
            // replica of the old epoch may hold it uncommitted, and be the only copy left
            // (seeds 9253556, 9292911: each of the two waited for the other for good).
            let checksum = self.epoch_start_checksum;
            self.send_now(
                Node::Replica(to),
                Message::EpochStartedAt { start, checksum },
            );
        }
    }

    /// A replica of a newer epoch named that epoch's start. Holding that very prepare is holding
    /// the committed log up to it (equal checksums at one op mean equal logs up to it):
    /// committing it applies the reconfiguration op, which enters the epoch.
    pub(super) fn on_epoch_started_at(&mut self, start: Op, checksum: u128) {
        if start <= self.commit_min
            || self.syncing.is_some()
            || self.log.checksum_at(start) != Some(checksum)
        {
            return;
        }
        let starts_newer_epoch = self
            .log
            .get(start)
            .and_then(|p| Membership::proposed_by(&p.header, &p.body))
            .is_some_and(|next| next.epoch > self.cfg.epoch);
        if starts_newer_epoch {
            self.event(Event::EpochStartNamed { start });
            self.commit_max = self.commit_max.max(start);
            self.apply_committed();
        }
    }

    /// The log of a newer epoch up to its start: every op of it is committed. Installing it is
    /// applying that epoch's reconfiguration op late (and every one before it).
    pub(super) fn on_start_epoch(&mut self, from: ReplicaId, log: Vec<Prepare>) {
        if !valid_chain(&log) || self.syncing.is_some() {
            return;
        }
        let Some(last) = log.last() else {
            return;
        };
        let Some(next) = Membership::proposed_by(&last.header, &last.body) else {
            return;
        };
        // Our own epoch's start, which our log lost (`lacks_epoch_start`), or a newer epoch.
        let our_start = next.epoch == self.cfg.epoch
            && next.start == self.epoch_start
            && self.lacks_epoch_start();
        if next.epoch < self.cfg.epoch || (next.epoch == self.cfg.epoch && !our_start) {
            return;
        }
        let end = last.op();
        let Some(at) = self.log.join_point(&log) else {
            // It begins above everything we hold: we need the sender's checkpoint.
            self.request_sync(from);
            return;
        };
        if at < self.commit_min {
            // It would take back ops we applied: not committed history. Ignore it.
            return;
        }
        if at < end || self.log_tail() > end {
            // Ours diverges after `at` (uncommitted ops of an old view): the committed history
            // replaces it, and is written with the epoch's first superblock.
            if at < self.log_tail() {
                self.event(Event::LogReplaced {
                    replaced: self.log_tail() - at,
                });
            }
            self.log = self.log.spliced(at, &log);
            self.op_durable = self.op_durable.min(at);
            self.wal_issued = self.wal_issued.min(at);
        }
        if our_start {
            // Written now; the replica votes again once it is durable (as after a repair).
            // Promises of a damaged slot up to the start are this very history; any after it
            // are still to be fetched.
            self.faulty = true;
            match self.repair.take().map(|r| r.after(end)) {
                Some(rest) if rest.last() > end => self.repair = Some(rest),
                Some(_) => self.repair_until = Some(end),
                // The start was all it lacked: it acknowledged nothing after it (acks are
                // cumulative over a durable log), so it is whole once the start is durable.
                None if self.start_lost => self.repair_until = Some(end),
                // Faulty for another reason too (a rotten checkpoint: its promises are gone):
                // it sits out until a StartView repairs it (seed 322688).
                None => {}
            }
            self.start_lost = false;
            // Plain WAL writes, not a log install: an install truncates the WAL above what it
            // keeps, and the slots after the start may hold promised prepares the repair still
            // reads back (seed 218822).
            self.write_pending();
        }
        self.commit_max = self.commit_max.max(end);
        self.apply_committed();
    }

    /// A restarted replica whose superblock is of an epoch whose start its log does not hold
    /// (the epoch's first superblock landed before the WAL could take the log up to the start,
    /// or a synced checkpoint of a newer epoch was not durable yet). It sits view changes out
    /// (see `recovery`) and asks its epoch's members for the start, which any of them holds.
    pub(super) fn lacks_epoch_start(&self) -> bool {
        if self.epoch_start == 0 {
            return false;
        }
        self.epoch_start > self.log_tail().max(self.checkpoint_durable)
            || self
                .log
                .get(self.epoch_start)
                .is_some_and(|p| Membership::proposed_by(&p.header, &p.body).is_none())
    }

    /// Its durable log (or durable checkpoint) reaches back to the start of its epoch: what a
    /// member must hold before the members of the previous epoch may go.
    pub fn holds_epoch_start(&self) -> bool {
        self.op_durable.max(self.checkpoint_durable) >= self.epoch_start
            && !self.lacks_epoch_start()
    }

    pub(super) fn request_epoch_start(&mut self) {
        if !due(
            &mut self.last_epoch_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        let replica = self.cfg.replica;
        let positions = (self
            .cfg
            .replica_count
            .saturating_add(self.cfg.standby_count))
        .max(self.cfg.known_positions);
        for to in (0..positions).filter(|&to| to != replica) {
            self.send_now(Node::Replica(to), Message::RequestStartEpoch { replica });
        }
    }
}
