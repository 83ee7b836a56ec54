//! Normal operation: dispatching messages, client requests and the pipeline, prepares and
//! their acknowledgements, commits, state transfer from a peer's log, and applying committed
//! ops exactly once per (client, request).

use super::{Replica, Status};
use crate::checkpoint::ClientSession;
use crate::membership::Membership;
use crate::message::{Envelope, Message, Node};
use crate::prepare::{Prepare, PrepareHeader};
use crate::quorums;
use crate::routing::{forward_targets, forward_targets_avoiding};
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::{ClientId, Op, ReplicaId, View};
use bytes::Bytes;

impl<S: StateMachine> Replica<S> {
    pub(super) fn on_envelope(&mut self, envelope: Envelope) {
        if envelope.cluster != self.cfg.cluster || envelope.group != self.cfg.group {
            return;
        }
        // Clients know nothing of epochs; replicas of another epoch are handled apart.
        let from_replica = matches!(envelope.from, Node::Replica(_));
        if from_replica && envelope.epoch != self.cfg.epoch {
            self.on_other_epoch(envelope);
            return;
        }
        // A retired replica takes no part in the epoch it left, but answers requests for history
        // it may hold that a member lost (the epoch's start, a checkpoint, a prepare by checksum).
        if self.status == Status::Retired
            && !matches!(
                envelope.message,
                Message::RequestStartEpoch { .. }
                    | Message::RequestSync { .. }
                    | Message::RequestPrepare { .. }
            )
        {
            return;
        }
        match envelope.message {
            Message::Request {
                client,
                session,
                request,
                body,
            } => self.on_request(client, session, request, body),
            Message::Prepare { view, prepare } => self.on_prepare(view, prepare),
            Message::PrepareOk {
                view,
                op,
                checksum,
                replica,
            } => {
                if view == self.view && self.is_primary() && self.checksum_at(op) == Some(checksum)
                {
                    self.on_ack(replica, op);
                }
            }
            Message::Commit { view, commit } => self.on_commit(view, commit),
            Message::StartViewChange { view, replica } => self.on_start_view_change(view, replica),
            Message::DoViewChange {
                view,
                vote,
                replica,
            } => self.on_do_view_change(view, vote, replica),
            Message::StartView { view, log, commit } => self.on_start_view(view, log, commit),
            Message::RequestStartView {
                view,
                replica,
                holds,
                ..
            } => {
                if self.is_primary() && self.view >= view {
                    // From the highest op the requester holds alike: after a restart it holds
                    // nearly all of the log, which with megabyte batches is tens of MiB.
                    let log = self.log.from_alike(&holds).to_vec();
                    let commit = self.commit_max;
                    self.send(
                        replica,
                        Message::StartView {
                            view: self.view,
                            log,
                            commit,
                        },
                    );
                }
            }
            Message::GetState {
                view,
                after,
                replica,
            } => {
                if view == self.view && self.status == Status::Normal && after < self.log_tail() {
                    if after < self.log.base() {
                        // Its log ends before ours begins: only our checkpoint can help.
                        self.send_checkpoint(replica, after);
                        return;
                    }
                    let entries = self.log.after(after).to_vec();
                    let commit = self.commit_max;
                    self.send(
                        replica,
                        Message::NewState {
                            view,
                            entries,
                            commit,
                        },
                    );
                }
            }
            Message::NewState {
                view,
                entries,
                commit,
            } => self.on_new_state(view, entries, commit),
            Message::RequestSync { have, replica } => self.send_checkpoint(replica, have),
            Message::Sync { checkpoint } => self.on_sync(*checkpoint),
            Message::RequestPrepare {
                op,
                checksum,
                replica,
            } => self.answer_prepare_request(op, checksum, replica),
            Message::RepairPrepare { prepare } => {
                self.on_view_change_body(&prepare);
                self.on_repair_prepare(prepare);
            }
            // A replica of our epoch whose log lost the epoch's start (see `lacks_epoch_start`).
            Message::RequestStartEpoch { replica } => self.send_start_epoch(replica),
            Message::StartEpoch { log } => {
                if let Envelope {
                    from: Node::Replica(from),
                    ..
                } = envelope
                {
                    self.on_start_epoch(from, log);
                }
            }
            // Only a newer epoch's start means anything to us (`on_other_epoch`).
            Message::Reply { .. } | Message::Evicted { .. } | Message::EpochStartedAt { .. } => {}
        }
    }

    /// Sends the prepare `checksum` at `op` if we hold it: in our log, or among the intact
    /// promised prepares a repair of ours holds back. In any view and any epoch: the checksum
    /// names it.
    pub(super) fn answer_prepare_request(&mut self, op: Op, checksum: u128, replica: ReplicaId) {
        let spare = self.repair.as_ref().and_then(|r| r.spare.get(&op));
        let held = [self.log.get(op), spare]
            .into_iter()
            .flatten()
            .find(|p| p.checksum() == checksum);
        if let Some(prepare) = held.filter(|_| replica != self.cfg.replica).cloned() {
            self.send_now(Node::Replica(replica), Message::RepairPrepare { prepare });
        }
    }

    pub(super) fn on_request(&mut self, client: ClientId, session: u64, request: u64, body: Bytes) {
        if self.status != Status::Normal {
            return;
        }
        if !self.is_primary() {
            // Any replica accepts clients: backups pass requests to the primary.
            let primary = self.primary();
            self.send_now(
                Node::Replica(primary),
                Message::Request {
                    client,
                    session,
                    request,
                    body,
                },
            );
            return;
        }
        let entry = self.client_table.get(&client);
        if session != 0 && entry.is_none_or(|e| e.session != session) {
            // A session is the op that registered it. One registered by an op we hold but have
            // not applied yet (a new primary committing its predecessor's last ops again) is
            // not unknown: the log may hold this very request after it, and telling the client
            // it will never run would make it register again and send it twice. It waits for
            // the apply; the client sends again.
            let registering = self.log.get(session).filter(|p| p.header.client == client);
            if session > self.commit_min && registering.is_some() {
                return;
            }
            // An unknown or superseded session never executes again: tell the client.
            self.send_now(Node::Client(client), Message::Evicted { client, session });
            return;
        }
        if let Some(entry) = entry {
            if request < entry.request {
                return;
            }
            if request == entry.request {
                // At most once: a retry of the last executed request gets the cached reply.
                let reply = Message::Reply {
                    client,
                    request,
                    view: entry.view,
                    op: entry.op,
                    body: entry.reply.clone(),
                };
                self.event(Event::DuplicateRequest);
                self.send_now(Node::Client(client), reply);
                return;
            }
        }
        let uncommitted = self.log.after(self.commit_max);
        let in_flight = uncommitted
            .iter()
            .any(|p| p.header.client == client && p.header.request == request)
            || self
                .requests
                .iter()
                .any(|(c, _, r, _)| *c == client && *r == request);
        if in_flight || self.requests.len() >= self.cfg.request_queue_max {
            return;
        }
        let pending = self
            .log
            .after(self.commit_min)
            .iter()
            .map(|p| p.body.len() as u64)
            .chain(self.requests.iter().map(|(.., body)| body.len() as u64))
            .sum();
        if let Some(refusal) = self.sm.admit(&body, pending) {
            // Not executed, so not in the client table: the op is 0, which every replica has
            // applied (a backup relaying it waits for nothing).
            let reply = Message::Reply {
                client,
                request,
                view: self.view,
                op: 0,
                body: refusal,
            };
            self.send_now(Node::Client(client), reply);
            return;
        }
        self.requests.push_back((client, session, request, body));
        self.prepare_queued();
    }

    pub(super) fn prepare_queued(&mut self) {
        while self.is_primary()
            && (self.log_tail() - self.commit_max) < self.cfg.pipeline_max as u64
            && self.log_tail() < self.wal_limit()
            && !self.reconfiguration_pending()
        {
            let Some((client, session, request, body)) = self.requests.pop_front() else {
                return;
            };
            let parent = self.log.head().checksum();
            self.last_timestamp = self.now.max(self.last_timestamp + 1);
            let prepare = Prepare::new(
                PrepareHeader {
                    checksum: 0,
                    parent,
                    body_checksum: 0,
                    cluster: self.cfg.cluster,
                    group: self.cfg.group,
                    epoch: self.cfg.epoch,
                    view: self.view,
                    op: self.log_tail() + 1,
                    commit: self.commit_max,
                    client,
                    session,
                    request,
                    timestamp: self.last_timestamp,
                },
                body,
            );
            let op = prepare.op();
            self.commit_sent = self.commit_sent.max(prepare.header.commit);
            self.sent_at.insert(op, self.tick);
            self.log.push(prepare.clone());
            self.send_to_standbys(&Message::Prepare {
                view: self.view,
                prepare: prepare.clone(),
            });
            for target in forward_targets_avoiding(
                self.cfg.route,
                self.cfg.replica_count,
                self.view,
                self.cfg.replica,
                &self.suspects,
            ) {
                self.send(
                    target,
                    Message::Prepare {
                        view: self.view,
                        prepare: prepare.clone(),
                    },
                );
            }
            self.write_pending();
        }
    }

    pub(super) fn on_prepare(&mut self, view: View, prepare: Prepare) {
        if view < self.view || !prepare.verify() {
            return;
        }
        if view > self.view || self.status != Status::Normal {
            self.request_start_view(view);
            return;
        }
        if self.is_primary() {
            return;
        }
        self.heard_from_primary = self.tick;
        let op = prepare.op();
        let tail = self.log_tail();
        if op <= tail {
            // Already held; the primary is retransmitting because our ack was lost.
            if self.checksum_at(op) == Some(prepare.checksum()) {
                self.acknowledge();
            }
        } else if op == tail + 1 && prepare.header.parent == self.log.head().checksum() {
            // Cut-through: forward before our own write. Standbys get theirs from the primary
            // and forward nothing.
            let targets = if self.is_standby() {
                Vec::new()
            } else {
                forward_targets(
                    self.cfg.route,
                    self.cfg.replica_count,
                    self.view,
                    self.cfg.replica,
                )
            };
            for target in targets {
                self.send(
                    target,
                    Message::Prepare {
                        view,
                        prepare: prepare.clone(),
                    },
                );
            }
            // What the prepare says is committed is applied in a step of its own
            // (`Input::Apply`, or the next tick), after this one's write and acknowledgement
            // are out: on a backup, applying the previous batch sat on every round trip.
            let commit = prepare.header.commit;
            self.log.push(prepare);
            self.write_pending();
            self.commit_max = self.commit_max.max(commit);
        } else {
            self.request_state();
        }
    }

    pub(super) fn on_ack(&mut self, replica: ReplicaId, op: Op) {
        if replica >= self.cfg.replica_count {
            // A standby: how far it has caught up, never a vote toward a commit.
            let entry = self.standbys_acked.entry(replica).or_insert(0);
            *entry = (*entry).max(op);
            return;
        }
        self.suspects.remove(&replica);
        let entry = self.acked.entry(replica).or_insert(0);
        *entry = (*entry).max(op);
        let quorum = quorums::replication(self.cfg.replica_count);
        let mut commit = self.commit_max;
        while commit < self.log_tail()
            && self.acked.values().filter(|a| **a > commit).count() >= quorum
        {
            commit += 1;
        }
        if commit > self.commit_max {
            self.last_progress = self.tick;
            self.sent_at = self.sent_at.split_off(&(commit + 1));
            self.advance_commit(commit);
            self.prepare_queued();
        }
    }

    pub(super) fn on_commit(&mut self, view: View, commit: Op) {
        if view < self.view {
            return;
        }
        if view > self.view || self.status != Status::Normal {
            self.request_start_view(view);
            return;
        }
        if self.is_primary() {
            return;
        }
        self.heard_from_primary = self.tick;
        self.advance_commit(commit);
        if self.commit_max > self.log_tail() {
            self.request_state();
        } else if self.is_standby() {
            // The primary proposes a configuration only once its joining standbys acknowledged
            // near the commit; an idle standby has nothing new to acknowledge, and an ack lost
            // on the way would otherwise never be repeated.
            self.acknowledge();
        }
    }

    pub(super) fn on_new_state(&mut self, view: View, entries: Vec<Prepare>, commit: Op) {
        if view != self.view || self.status != Status::Normal || self.is_primary() {
            return;
        }
        let mut appended = 0;
        for prepare in entries {
            let tail = self.log_tail();
            if prepare.op() <= tail {
                continue;
            }
            if prepare.op() != tail + 1
                || !prepare.verify()
                || prepare.header.parent != self.log.head().checksum()
            {
                break;
            }
            self.log.push(prepare);
            appended += 1;
        }
        self.write_pending();
        if appended > 0 {
            self.event(Event::StateTransfer { entries: appended });
        }
        self.heard_from_primary = self.tick;
        self.advance_commit(commit);
    }

    pub(super) fn advance_commit(&mut self, commit: Op) {
        self.commit_max = self.commit_max.max(commit);
        self.apply_committed();
    }

    /// Applies every committed op held, in order; the primary replies to clients. Registrations
    /// open sessions (evicting the one that committed longest ago when the table is full); a
    /// request executes only in its live session and only once.
    pub(super) fn apply_committed(&mut self) {
        while self.commit_min < self.commit_max.min(self.log_tail()) {
            let op = self.commit_min + 1;
            let Some(prepare) = self.log.get(op).cloned() else {
                return;
            };
            let (client, session, request) = (
                prepare.header.client,
                prepare.header.session,
                prepare.header.request,
            );
            if let Some(next) = Membership::proposed_by(&prepare.header, &prepare.body) {
                self.apply_reconfiguration(&prepare, next);
                continue;
            }
            let entry = self.client_table.get(&client);
            let register = session == 0;
            let executed = if register {
                entry.is_none_or(|e| e.request < request)
            } else {
                entry.is_some_and(|e| e.session == session && e.request < request)
            };
            if executed {
                let reply = if register {
                    if !self.client_table.contains_key(&client)
                        && self.client_table.len() >= self.cfg.clients_max
                    {
                        let oldest = self
                            .client_table
                            .iter()
                            .min_by_key(|(_, e)| e.op)
                            .map(|(c, _)| *c);
                        if let Some(evicted) = oldest {
                            self.client_table.remove(&evicted);
                            self.event(Event::SessionEvicted { client: evicted });
                        }
                    }
                    op.to_le_bytes().to_vec()
                } else {
                    self.sm.apply(&prepare.header, &prepare.body)
                };
                let session = if register { op } else { session };
                self.client_table.insert(
                    client,
                    ClientSession {
                        session,
                        request,
                        reply,
                        op,
                        view: self.view,
                    },
                );
            }
            self.commit_min = op;
            let event = Event::Committed {
                op,
                checksum: prepare.checksum(),
                parent: prepare.header.parent,
                body_checksum: prepare.header.body_checksum,
                digest: self.sm.digest(),
                client,
                session,
                request,
                timestamp: prepare.header.timestamp,
                executed,
            };
            self.event(event);
            if executed && self.is_primary() {
                if let Some(entry) = self.client_table.get(&client) {
                    let reply = Message::Reply {
                        client,
                        request,
                        view: self.view,
                        op,
                        body: entry.reply.clone(),
                    };
                    self.send_now(Node::Client(client), reply);
                }
            }
            if op.is_multiple_of(self.cfg.checkpoint_interval) {
                self.take_checkpoint(prepare);
            }
        }
    }

    /// A reconfiguration op touches neither the state machine nor the client table: applying
    /// it enters its epoch, unless this replica is there already (it recovered into it, or a
    /// checkpoint took it there).
    fn apply_reconfiguration(&mut self, prepare: &Prepare, next: Membership) {
        let op = prepare.op();
        self.commit_min = op;
        self.event(Event::Committed {
            op,
            checksum: prepare.checksum(),
            parent: prepare.header.parent,
            body_checksum: prepare.header.body_checksum,
            digest: self.sm.digest(),
            client: prepare.header.client,
            session: prepare.header.session,
            request: prepare.header.request,
            timestamp: prepare.header.timestamp,
            executed: true,
        });
        if next.epoch > self.cfg.epoch {
            self.enter_epoch(next);
        }
        if op.is_multiple_of(self.cfg.checkpoint_interval) {
            self.take_checkpoint(prepare.clone());
        }
    }
}
