//! Ticks: heartbeats, retransmissions, the primary and view-change timeouts, and the rate
//! limits on what a replica asks its peers for.

use super::{due, Replica, Status};
use crate::message::{Message, Node};
use crate::routing::primary_of;
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::{Op, ReplicaId, View};

impl<S: StateMachine> Replica<S> {
    /// Hands the view on when asked (see [`crate::Input::StepDown`]). Only a primary in normal
    /// status does: a backup has no view to give, and a view change already in progress will
    /// pick a primary by itself.
    pub(super) fn on_step_down(&mut self) {
        if !self.is_primary() || self.cfg.replica_count < 2 {
            return;
        }
        let view = self.view;
        self.event(Event::SteppedDown { view });
        self.start_view_change(view + 1);
    }

    pub(super) fn on_tick(&mut self, now: u64) {
        self.tick += 1;
        self.now = now;
        // Whatever a prepare's step left unapplied, if no `Input::Apply` came for it.
        if self.status == Status::Normal && self.has_unapplied() {
            self.apply_committed();
        }
        match self.status {
            Status::Normal if self.is_primary() => {
                let heartbeat = self.tick - self.last_commit_broadcast >= self.cfg.commit_interval;
                if heartbeat || self.commit_max > self.commit_sent {
                    self.last_commit_broadcast = self.tick;
                    self.commit_sent = self.commit_max;
                    let commit = Message::Commit {
                        view: self.view,
                        commit: self.commit_max,
                    };
                    self.send_to_standbys(&commit);
                    self.broadcast(commit);
                }
                if self.commit_max == self.log_tail() {
                    self.last_progress = self.tick;
                } else if self.tick - self.last_progress >= self.cfg.abdicate_timeout {
                    let view = self.view;
                    self.event(Event::Abdicated { view });
                    self.start_view_change(view + 1);
                    return;
                }
                if self.commit_max < self.log_tail() {
                    self.retransmit();
                }
                self.maybe_propose();
            }
            Status::Normal if self.is_standby() => {
                // A standby never starts a view change: it asks the members which view is
                // current, and the primary of that view (or a later one) answers.
                if self.tick - self.heard_from_primary >= self.cfg.primary_timeout
                    && self.tick - self.last_view_request >= self.cfg.prepare_timeout
                {
                    self.last_view_request = self.tick;
                    let (view, replica) = (self.view, self.cfg.replica);
                    let holds = self.holds();
                    self.broadcast(Message::RequestStartView {
                        view,
                        replica,
                        nonce: self.tick,
                        holds,
                    });
                } else if self.commit_max > self.log_tail() {
                    self.request_state();
                }
            }
            Status::Normal => {
                if self.tick - self.heard_from_primary >= self.cfg.primary_timeout + self.jitter {
                    self.start_view_change(self.view + 1);
                } else if self.commit_max > self.log_tail() {
                    self.request_state();
                }
            }
            Status::ViewChange => {
                if self.tick - self.status_since >= self.cfg.view_change_timeout + self.jitter {
                    self.start_view_change(self.view + 1);
                } else if self.tick - self.last_view_change_message >= self.cfg.prepare_timeout {
                    self.resend_view_change_messages();
                    // A new primary waiting for prepares of the winning log asks again.
                    if primary_of(self.view, self.cfg.replica_count) == self.cfg.replica {
                        self.try_lead();
                    }
                    // A damaged replica's repair goes on while it votes: the view may need the
                    // very ops it is fetching (a repair across an epoch's end, seed 112110).
                    if self.repair.is_some() {
                        self.request_repair();
                    }
                    if self.lacks_epoch_start() {
                        self.request_epoch_start();
                    }
                }
            }
            Status::Retired => {}
            Status::Recovering => {
                if !self.sits_out()
                    && self.tick - self.status_since >= self.cfg.recovery_timeout + self.jitter
                {
                    self.start_view_change(self.view + 1);
                } else if self.tick - self.last_view_request >= self.cfg.prepare_timeout {
                    self.last_view_request = self.tick;
                    let view = self.view;
                    let replica = self.cfg.replica;
                    let holds = self.holds();
                    self.broadcast(Message::RequestStartView {
                        view,
                        replica,
                        nonce: self.tick,
                        holds,
                    });
                    if self.faulty {
                        self.request_repair();
                    }
                    if self.lacks_epoch_start() {
                        self.request_epoch_start();
                    }
                    // A replica sitting view changes out may have made a view durable that the
                    // cluster never reached; nobody will send it a StartView for it. Announcing
                    // the view (a StartViewChange carries no log, so this is no vote) draws the
                    // others into it, and the view's StartView then repairs us.
                    if self.sits_out()
                        && !self.is_standby()
                        && self.tick - self.status_since >= self.cfg.recovery_timeout
                    {
                        self.broadcast(Message::StartViewChange { view, replica });
                    }
                }
            }
        }
    }

    /// Resends every uncommitted prepare directly to each replica that has not acked it.
    pub(super) fn retransmit(&mut self) {
        self.last_retransmit = self.tick;
        for op in self.commit_max + 1..=self.log_tail() {
            let sent = self.sent_at.get(&op).copied().unwrap_or(0);
            if self.tick - sent < self.cfg.prepare_timeout {
                continue;
            }
            self.sent_at.insert(op, self.tick);
            let Some(prepare) = self.log.get(op).cloned() else {
                continue;
            };
            let missing: Vec<ReplicaId> = (0..self.cfg.replica_count)
                .filter(|r| *r != self.cfg.replica && self.acked.get(r).copied().unwrap_or(0) < op)
                .collect();
            if missing.is_empty() {
                continue;
            }
            self.event(Event::Retransmit { op });
            self.suspects.extend(missing.iter().copied());
            for r in missing {
                self.send(
                    r,
                    Message::Prepare {
                        view: self.view,
                        prepare: prepare.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn request_state(&mut self) {
        if !due(
            &mut self.last_state_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        let primary = self.primary();
        let after = self.log_tail();
        self.send(
            primary,
            Message::GetState {
                view: self.view,
                after,
                replica: self.cfg.replica,
            },
        );
    }

    /// What a RequestStartView says we hold: our log's tail and the last op we applied, by
    /// checksum. The primary answers from the highest it holds alike (`Log::from_alike`).
    fn holds(&self) -> Vec<(Op, u128)> {
        let mut holds: Vec<(Op, u128)> = [self.log.tail(), self.commit_min]
            .into_iter()
            .filter_map(|op| Some((op, self.log.checksum_at(op)?)))
            .collect();
        holds.dedup();
        holds
    }

    pub(super) fn request_start_view(&mut self, view: View) {
        if !due(
            &mut self.last_view_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        let primary = primary_of(view, self.cfg.replica_count);
        // Asking is safe in any view: it promises nothing.
        if primary != self.cfg.replica {
            let message = Message::RequestStartView {
                view,
                replica: self.cfg.replica,
                nonce: self.tick,
                holds: self.holds(),
            };
            self.send_now(Node::Replica(primary), message);
        }
    }
}
