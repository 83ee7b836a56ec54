//! The simulated network: a delay queue with loss, duplicates, cut links, a deaf replica and
//! clogged paths.

use super::Simulation;
use crate::checker::Violation;
use std::collections::{BTreeMap, BTreeSet};
use vsr::{Envelope, Input, Message, Node};

pub(super) struct Network {
    pub(super) queue: BTreeMap<(u64, u64), Envelope>,
    pub(super) seq: u64,
    pub(super) in_flight: BTreeMap<(Node, Node), usize>,
    /// Directed links that drop everything.
    pub(super) cut: BTreeSet<(u8, u8)>,
    /// A replica that hears no other replica (its own sends still arrive).
    pub(super) deaf: Option<u8>,
    /// Clogged directed paths and the tick each unclogs: their messages wait until then.
    pub(super) clogged: BTreeMap<(Node, Node), u64>,
}

impl<S: crate::machine::SimMachine> Simulation<S> {
    pub(super) fn send(&mut self, envelope: Envelope) {
        let (from, to) = (envelope.from, envelope.to);
        if let (Node::Replica(a), Node::Replica(b)) = (from, to) {
            if self.network.cut.contains(&(a, b))
                || self.network.deaf == Some(b)
                || self.drop_filter.contains(&(a, b, envelope.message.kind()))
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

    pub(super) fn deliver_messages(&mut self) -> Result<(), Violation> {
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
            let kind = envelope.message.kind() as u64;
            self.trace(&[
                3,
                self.tick,
                node_id(envelope.from),
                node_id(envelope.to),
                kind,
            ]);
            match envelope.to {
                Node::Replica(r) => {
                    if self.replicas[r as usize].is_some() {
                        match &envelope.message {
                            Message::StartView { log, .. } => {
                                self.coverage.add("start_view_prepares", log.len() as u64);
                            }
                            Message::DoViewChange { vote, .. } => {
                                self.coverage.add("votes", 1);
                                self.coverage.add("vote_prepares", vote.log.len() as u64);
                            }
                            _ => {}
                        }
                    }
                    if let (Message::Sync { checkpoint }, Node::Replica(from)) =
                        (&envelope.message, envelope.from)
                    {
                        if let Some(to) = self.replicas[r as usize].as_ref() {
                            S::before_checkpoint(&self.world, to, from, checkpoint);
                        }
                    }
                    self.feed(r, Input::Message(envelope))?
                }
                Node::Client(id) => self.client_receive(id, envelope.message)?,
            }
        }
        Ok(())
    }
}

pub(super) fn node_id(node: Node) -> u64 {
    match node {
        Node::Replica(r) => r as u64,
        Node::Client(c) => 1000 + (c as u64 & 0xFFFF),
    }
}
