//! View changes: who may vote and with what, StartViewChange and DoViewChange, how a new
//! primary picks and completes the winning log (fetching or nack-truncating what nobody can
//! read), and installing a StartView.

use super::repair::ends_epoch;
use super::{due, valid_chain, Replica, Status};
use crate::log::Log;
use crate::message::Message;
use crate::prepare::Prepare;
use crate::quorums;
use crate::routing::primary_of;
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::view_change::{self, Vote};
use crate::{Op, ReplicaId, View};
use std::collections::BTreeSet;

impl<S: StateMachine> Replica<S> {
    /// Takes no part in view changes: a standby, never; a faulty replica, while it no longer
    /// knows exactly what it promised (a rotten checkpoint, or a sync or a StartView replaced
    /// the log its header ring describes, and that log is not durable yet).
    pub(super) fn sits_out(&self) -> bool {
        self.is_standby() || (self.faulty && self.repair.is_none())
    }

    /// May send (and, as a new primary, count) DoViewChanges. A faulty replica that knows what
    /// it promised may: its vote marks the ops it cannot read. A sync not yet durable may not:
    /// a crash would take its state back behind the log it would vote with.
    /// Nor may a replica whose durable log does not reach back to the start of its epoch:
    /// every member of an epoch votes with the history the epoch began from.
    pub(super) fn may_vote(&self) -> bool {
        !self.sits_out()
            && self.syncing.is_none()
            && (self.op_durable.max(self.checkpoint_durable) >= self.epoch_start
                || self
                    .repair
                    .as_ref()
                    .is_some_and(|r| r.last() >= self.epoch_start))
    }

    /// Our vote: the checksums of the durable log, and of the ops after it we may have
    /// acknowledged and cannot read — a faulty replica's promised ops not yet durable again.
    /// Only the anchor goes whole: the rest is up to a WAL's worth of prepares, tens of MiB
    /// with megabyte batches, which the new primary mostly holds already and fetches where it
    /// does not (`winning_log`).
    pub(super) fn vote(&self) -> Vote {
        // Only what is durable counts: our acks promised exactly that much, and after a crash
        // this is all we would have. The log view must be the durable one too: a log installed
        // by a view change becomes ours only when its atomic write lands, so until then our
        // durable log is the previous view's, of which `op_durable` covers the common prefix.
        // The log starts at our checkpoint: everything below it is committed.
        let readable = self.op_durable.clamp(self.log.base(), self.log.tail());
        let held = (self.log.base() + 1..=readable).filter_map(|op| self.log.checksum_at(op));
        let promised = match &self.repair {
            Some(repair) => (readable + 1..=repair.last())
                .map_while(|op| {
                    repair
                        .promised
                        .get(&op)
                        .copied()
                        .or_else(|| self.log.checksum_at(op))
                })
                .collect(),
            None => Vec::new(),
        };
        Vote {
            // A log view of an older epoch says nothing about this one, which began at 0.
            log_view: self
                .durable
                .filter(|(epoch, ..)| *epoch == self.cfg.epoch)
                .map_or(0, |(_, _, log_view)| log_view),
            log: vec![self.log.entries()[0].clone()],
            vouched: held.chain(promised).collect(),
            readable,
            commit: self.commit_max,
        }
    }

    pub(super) fn start_view_change(&mut self, view: View) {
        self.view = view;
        self.status = Status::ViewChange;
        self.status_since = self.tick;
        self.svc = BTreeSet::from([self.cfg.replica]);
        self.dvc.clear();
        self.dvc_sent = false;
        self.view_change_bodies.clear();
        self.last_body_request = 0;
        self.acked.clear();
        self.standbys_acked.clear();
        self.suspects.clear();
        self.jitter = self.random() % (self.cfg.view_change_timeout / 2 + 1);
        self.event(Event::ViewChangeStarted { view });
        self.write_superblock();
        self.resend_view_change_messages();
        self.maybe_send_do_view_change();
    }

    pub(super) fn resend_view_change_messages(&mut self) {
        self.last_view_change_message = self.tick;
        let (view, replica) = (self.view, self.cfg.replica);
        self.broadcast(Message::StartViewChange { view, replica });
        // The vote goes again only after a longer pause (also the first time after an
        // abstention — faulty, or a sync not yet durable — ends). It carries our log since the
        // checkpoint, in the broker up to a WAL interval of megabyte batches: resent with every
        // StartViewChange, each copy was encoded, sent, decoded and verified again while the
        // first was still on its way (one of the costs in failovers under load of over 2 s,
        // docs/benchmarks.md). A vote is lost only with its connection or to a peer's full
        // inbound queue; a quarter of the view change timeout still resends it well before the
        // view is given up.
        if self.tick - self.dvc_sent_at >= self.cfg.view_change_timeout / 4 {
            self.dvc_sent = false;
        }
        self.maybe_send_do_view_change();
    }

    pub(super) fn on_start_view_change(&mut self, view: View, replica: ReplicaId) {
        if self.sits_out()
            || replica >= self.cfg.replica_count
            || view < self.view
            || (view == self.view && self.status == Status::Normal)
        {
            return;
        }
        if view > self.view {
            self.start_view_change(view);
        }
        self.svc.insert(replica);
        self.maybe_send_do_view_change();
    }

    pub(super) fn maybe_send_do_view_change(&mut self) {
        if self.status != Status::ViewChange
            || self.dvc_sent
            || !self.may_vote()
            || self.svc.len() < quorums::view_change(self.cfg.replica_count)
        {
            return;
        }
        self.dvc_sent = true;
        self.dvc_sent_at = self.tick;
        let (view, replica) = (self.view, self.cfg.replica);
        let vote = self.vote();
        let unreadable = vote.unreadable();
        if unreadable > 0 {
            self.event(Event::VotedDamaged { unreadable });
        }
        let primary = self.primary();
        if primary == replica {
            self.on_do_view_change(view, vote, replica);
        } else {
            self.send(
                primary,
                Message::DoViewChange {
                    view,
                    vote,
                    replica,
                },
            );
        }
    }

    pub(super) fn on_do_view_change(&mut self, view: View, vote: Vote, replica: ReplicaId) {
        if !self.may_vote()
            || replica >= self.cfg.replica_count
            || view < self.view
            || primary_of(view, self.cfg.replica_count) != self.cfg.replica
        {
            return;
        }
        if view > self.view {
            self.start_view_change(view);
        }
        if self.status != Status::ViewChange || !vote.is_well_formed(self.cfg.wal_slots) {
            return;
        }
        self.dvc.insert(replica, vote);
        self.try_lead();
    }

    /// As the new primary: once the DoViewChange quorum is complete, installs the best log
    /// and starts the view.
    pub(super) fn try_lead(&mut self) {
        if self.status != Status::ViewChange || !self.may_vote() {
            return;
        }
        let candidates: Vec<view_change::Candidate> = self
            .dvc
            .iter()
            .map(|(&replica, vote)| view_change::Candidate {
                replica,
                log_view: vote.log_view,
                op_head: vote.head(),
                commit: vote.commit,
            })
            .collect();
        if !view_change::quorum_complete(&candidates, self.cfg.replica, self.cfg.replica_count) {
            return;
        }
        let Some(winner) = view_change::best_log(&candidates) else {
            return;
        };
        let commit = view_change::merged_commit(&candidates, self.commit_max, winner.op_head);
        let Some(best) = self.winning_log(winner.replica, commit) else {
            return;
        };
        let (winner, winner_head) = (winner.replica, winner.op_head);
        // The best log holds every committed op above its sender's checkpoint. Our state must
        // reach into it: if the log starts above everything we hold, we need that checkpoint
        // first (and try again once it is installed).
        let Some(at) = self.log.join_point(&best) else {
            // From the voter holding the checkpoint the log starts at (the winner's own, or
            // the one the winning log was rebased on).
            let base = best.first().map_or(0, Prepare::op);
            let source = self
                .dvc
                .iter()
                .find(|(_, vote)| vote.base() == base)
                .map_or(winner, |(&replica, _)| replica);
            self.request_sync(source);
            return;
        };
        if at < self.commit_min {
            // The best log would drop ops we applied: it lacks committed ops, which the quorum
            // intersection rules out. Refuse rather than diverge; the view times out.
            return;
        }
        let tail = best.last().map_or(0, Prepare::op);
        if tail > self.wal_limit() {
            // Our WAL cannot take the whole log before our next checkpoint (`install_log`). A
            // voter's newer checkpoint makes room; without one the view times out and the
            // next primary, whose WAL may take it, tries.
            let newer = self
                .dvc
                .iter()
                .filter(|(_, vote)| vote.base() > self.commit_min)
                .max_by_key(|(_, vote)| vote.base())
                .map(|(&replica, _)| replica);
            if let Some(source) = newer {
                self.request_sync(source);
            }
            return;
        }
        let commit = commit.min(tail);
        let log = self.log.spliced(at, &best);
        self.install_log(log);
        if tail < winner_head {
            self.event(Event::NackTruncated {
                op: tail + 1,
                ops: winner_head - tail,
            });
        }
        self.status = Status::Normal;
        self.status_since = self.tick;
        self.log_view = self.view;
        self.requests.clear();
        self.view_change_bodies.clear();
        self.event(Event::Normal {
            epoch: self.cfg.epoch,
            view: self.view,
            primary: true,
        });
        // A voter gets only what its vote shows it lacks, from the last op it holds alike: the
        // log is the WAL's worth of prepares since the checkpoint (with megabyte batches, tens
        // of MiB), and after an ordinary failover the voters hold nearly all of it already.
        // Sending it whole kept the surviving backup out of the new view for most of a second
        // (docs/replication.md, "View changes carry what is lacked"). Everyone else — a
        // replica that did not vote, standbys — gets the whole log, after the voters: the
        // voters complete the new quorum, and in a failover the first non-voter is the dead
        // primary, whose copy the broker would read, verify and encode (tens of MiB) before the
        // surviving backup's few prepares went out.
        let view = self.view;
        let lacked: Vec<(ReplicaId, Vec<Prepare>)> = self
            .dvc
            .iter()
            .map(|(&voter, vote)| (voter, vote.lacks(&self.log).to_vec()))
            .collect();
        for (voter, log) in lacked {
            self.send(voter, Message::StartView { view, log, commit });
        }
        let others: Vec<ReplicaId> = (0..self.cfg.replica_count)
            .filter(|replica| !self.dvc.contains_key(replica))
            .collect();
        let whole = Message::StartView {
            view,
            log: self.log.entries().to_vec(),
            commit,
        };
        self.send_to_standbys(&whole);
        for replica in others {
            self.send(replica, whole.clone());
        }
        self.advance_commit(commit);
        self.last_retransmit = self.tick;
        self.last_progress = self.tick;
        // The StartView carried the uncommitted suffix: count that as its sending.
        self.sent_at = (self.commit_max + 1..=self.log_tail())
            .map(|op| (op, self.tick))
            .collect();
        self.advance_op_durable();
    }

    /// The winning vote's log with a prepare for every op it vouches for. The bodies come from
    /// our own log, the votes' anchors, or a peer's answer to our request: votes carry
    /// checksums, and the voters that can read an op supply it when asked. An op nobody has
    /// supplied yet is waited for (`None`) — unless no voter can supply it, it is above the new
    /// view's commit and a nack quorum proves it never committed: then it and every op after
    /// it (each chains to it) are dropped.
    pub(super) fn winning_log(&mut self, winner: ReplicaId, commit: Op) -> Option<Vec<Prepare>> {
        let vote = self.dvc.get(&winner)?;
        let (mut log, vouched) = (vote.log.clone(), vote.vouched.clone());
        // Ops at or below another voter's checkpoint are committed state nobody keeps as
        // prepares any more: when that checkpoint's anchor is the very prepare the winner
        // vouches for there, the winning log restarts from that anchor (equal checksums, equal
        // history below it) and needs no bodies under it.
        let rebase = self
            .dvc
            .values()
            .filter_map(|v| v.log.first())
            .filter(|a| a.op() > vote.tail() && vote.checksum_at(a.op()) == Some(a.checksum()))
            .max_by_key(|a| a.op());
        if let Some(anchor) = rebase {
            log = vec![anchor.clone()];
        }
        // What we hold goes into the log up to the first op we lack; from there on, everything
        // we lack is asked for at once.
        let mut missing = Vec::new();
        for (op, checksum) in (vote.tail() + 1..).zip(vouched) {
            if op <= log.last()?.op() {
                continue;
            }
            if !missing.is_empty() {
                if self.find_prepare(op, checksum).is_none() {
                    missing.push((op, checksum));
                }
                continue;
            }
            let parent = log.last()?.checksum();
            if let Some(prepare) = self
                .find_prepare(op, checksum)
                .filter(|p| p.header.parent == parent)
            {
                let last_of_epoch = ends_epoch(self.cfg.epoch, prepare);
                log.push(prepare.clone());
                if last_of_epoch {
                    // Whatever a vote vouches for after our epoch's reconfiguration op was
                    // prepared in the next epoch (a damaged replica's header ring names it
                    // without saying so): not this epoch's log, and acknowledged by nobody in
                    // it.
                    break;
                }
                continue;
            }
            let supplied = self.dvc.values().any(|v| v.can_supply(op, checksum));
            let nacks = self
                .dvc
                .values()
                .filter(|vote| vote.nacks(op, checksum))
                .count();
            if !supplied && op > commit && view_change::may_truncate(nacks, self.cfg.replica_count)
            {
                break;
            }
            missing.push((op, checksum));
        }
        if missing.is_empty() {
            return Some(log);
        }
        self.request_prepares(&missing);
        None
    }

    /// A copy of the prepare `checksum` at `op` among what a new primary holds: our own log
    /// (whose bodies were checked when they arrived), or, verified, a vote's anchor, a repair's
    /// spare or a peer's answer.
    pub(super) fn find_prepare(&self, op: Op, checksum: u128) -> Option<&Prepare> {
        if let Some(ours) = self.log.get(op).filter(|p| p.checksum() == checksum) {
            return Some(ours);
        }
        let spare = self.repair.as_ref().and_then(|r| r.spare.get(&op));
        self.dvc
            .values()
            .filter_map(|vote| vote.prepare(op))
            .chain(spare)
            .chain(self.view_change_bodies.get(&checksum))
            .find(|p| p.op() == op && p.checksum() == checksum && p.verify())
    }

    /// New primary: asks for the prepares of the winning log that we lack, each from the
    /// voters that can read it (every peer when none says it can), at most once per prepare
    /// timeout.
    fn request_prepares(&mut self, missing: &[(Op, u128)]) {
        if !due(
            &mut self.last_body_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        let me = self.cfg.replica;
        for &(op, checksum) in missing {
            let suppliers: Vec<ReplicaId> = self
                .dvc
                .iter()
                .filter(|(&voter, vote)| voter != me && vote.can_supply(op, checksum))
                .map(|(&voter, _)| voter)
                .collect();
            if suppliers.is_empty() {
                self.ask_peers_for_prepare(op, checksum);
                continue;
            }
            for to in suppliers {
                self.ask_for_prepare(to, op, checksum);
            }
        }
    }

    /// New primary: a peer's copy of a prepare the winning log lacks.
    pub(super) fn on_view_change_body(&mut self, prepare: &Prepare) {
        if self.status != Status::ViewChange
            || primary_of(self.view, self.cfg.replica_count) != self.cfg.replica
            || self.view_change_bodies.contains_key(&prepare.checksum())
            || !self
                .dvc
                .values()
                .any(|vote| vote.vouched.contains(&prepare.checksum()))
            || !prepare.verify()
        {
            return;
        }
        self.view_change_bodies
            .insert(prepare.checksum(), prepare.clone());
        self.event(Event::ViewChangeBodyFetched { op: prepare.op() });
        self.try_lead();
    }

    pub(super) fn on_start_view(&mut self, view: View, log: Vec<Prepare>, commit: Op) {
        if view < self.view
            || (view == self.view && self.status == Status::Normal)
            || !valid_chain(&log)
        {
            return;
        }
        let primary = primary_of(view, self.cfg.replica_count);
        if primary == self.cfg.replica {
            return;
        }
        let head = log.last().map_or(0, Prepare::op);
        // A faulty replica's log is only the readable part of what it promised in its log
        // view. A StartView of that view is a prefix of the view's log, and so are the
        // promised ops: one that stops short of them is older (a duplicate, or a late answer)
        // and installing it would drop ops we may have acknowledged.
        if view == self.log_view && self.repair.as_ref().is_some_and(|r| head < r.last()) {
            return;
        }
        let Some(at) = self.log.join_point(&log) else {
            // The primary's log starts above everything we hold: we need its checkpoint.
            self.sync_view = Some(view);
            self.request_sync(primary);
            return;
        };
        if view != self.log_view && head > self.wal_limit() {
            // Our WAL cannot take the whole log before our next checkpoint: a newer one first
            // (`install_log`).
            self.sync_view = Some(view);
            self.request_sync(primary);
            return;
        }
        if self.syncing.is_some() {
            // Installing now would write a superblock naming this view as our log view beside
            // the checkpoint that is still durable — the older one, which cannot reach this log:
            // a crash would pair the old log with the new log view (seed 26009198: the replica
            // then led view 4 without committed op 27). Ask again once the sync is durable.
            self.sync_view = Some(view);
            return;
        }
        // A StartView of the view our log already belongs to can be older than ops we hold
        // (a duplicate, or the answer to a RequestStartView sent before a second crash): both
        // are prefixes of that view's primary's log, so the longer one is newer. Installing
        // the shorter would drop ops we may have acknowledged (found by the model check,
        // broker/vsr-model: the stale StartView truncated an op whose earlier PrepareOk then
        // committed it).
        let log = if view == self.log_view && at == head {
            self.log.clone()
        } else if at < self.commit_min {
            // It would take back ops we applied: not the log of a newer view (which holds every
            // committed op), so stale or wrong. Ignore it.
            return;
        } else {
            self.log.spliced(at, &log)
        };
        self.view = view;
        self.install_log(log);
        self.status = Status::Normal;
        self.status_since = self.tick;
        self.log_view = view;
        self.heard_from_primary = self.tick;
        self.svc.clear();
        self.dvc.clear();
        self.sync_view = None;
        self.jitter = self.random() % (self.cfg.primary_timeout / 2 + 1);
        self.event(Event::Normal {
            epoch: self.cfg.epoch,
            view,
            primary: false,
        });
        self.advance_commit(commit.min(self.log_tail()));
        self.advance_op_durable();
    }

    /// Replaces the log from the first op where it differs, writing the change atomically
    /// with the superblock of the new view.
    ///
    /// A log installed for a new log view must fit in our WAL whole (its tail at
    /// most `wal_limit`). The write takes only what fits; the rest would wait in memory for our
    /// next checkpoint, while our superblock already names the new view. A crash in between
    /// leaves a vote for that view whose log lacks the last ops of the view's log, and a vote of
    /// the newest log view wins over longer logs of older ones: ops committed in an earlier view
    /// and held by the other voters were lost (seed 7713343, a new primary whose checkpoint lagged
    /// a WAL behind). So a replica that cannot take the log syncs a newer checkpoint first. Ops a
    /// view appends later may wait in memory: they are acknowledged only once written, and a
    /// shorter log of the same view loses to a longer one.
    pub(super) fn install_log(&mut self, log: Log) {
        let common = self
            .log
            .join_point(log.entries())
            .unwrap_or(self.log.base());
        let replaced = self.log_tail().saturating_sub(common);
        if replaced > 0 {
            self.event(Event::LogReplaced { replaced });
        }
        self.log = log;
        self.op_durable = self.op_durable.min(common);
        // This log replaces whatever our damaged slots held — once it is on disk. Until then
        // our durable log is the damaged one, which the header ring no longer describes once
        // this write lands, so we sit view changes out.
        if self.faulty {
            self.repair = None;
            self.repair_until = Some(self.log_tail());
        }
        // log_view is set by the caller right after; the superblock must carry it.
        let log_view = self.view;
        let previous = self.log_view;
        self.log_view = log_view;
        self.write_log(common);
        self.log_view = previous;
    }
}
