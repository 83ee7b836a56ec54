//! Simulated clients: sessions, retries and a random workload, and what they accept as answers.

use super::{Simulation, CLIENT_RETRY, CLUSTER};
use crate::checker::Violation;
use crate::rng::Rng;
use vsr::{Envelope, Message, Node};

pub(super) struct Client {
    pub(super) id: u128,
    /// Request numbers increase across sessions; registrations take one too.
    pub(super) next_request: u64,
    /// Data requests to get answered.
    pub(super) total: u64,
    /// Data requests issued so far (each body is sent until answered).
    pub(super) issued: u64,
    /// The live session, once a registration was answered.
    pub(super) session: Option<u64>,
    /// (request, session it was sent in (0 = registration), body, last sent tick).
    pub(super) in_flight: Option<(u64, u64, Vec<u8>, u64)>,
    /// A body whose session was evicted before it was answered: sent again after registering.
    pub(super) orphan: Option<Vec<u8>>,
    pub(super) answered: u64,
    pub(super) think_until: u64,
    pub(super) view_guess: u32,
}

impl<S: crate::machine::SimMachine> Simulation<S> {
    pub(super) fn tick_clients(&mut self) {
        // Under reconfiguration any replica may be a member by now: retries go to all.
        let n = if self.params.membership_plan.is_empty() {
            self.params.replicas
        } else {
            self.params.nodes()
        };
        for i in 0..self.clients.len() {
            let tick = self.tick;
            let client = &mut self.clients[i];
            let mut to_send: Vec<u8> = Vec::new();
            let mut message = None;
            match &mut client.in_flight {
                None if tick >= client.think_until
                    && (client.orphan.is_some() || client.issued < client.total) =>
                {
                    let request = client.next_request;
                    client.next_request += 1;
                    let (session, body) = match client.session {
                        // No session: register first.
                        None => (0, Vec::new()),
                        Some(session) => {
                            let body = match client.orphan.take() {
                                Some(body) => body,
                                None => {
                                    client.issued += 1;
                                    workload(&mut self.rng, request)
                                }
                            };
                            (session, body)
                        }
                    };
                    self.checker.client_sent(client.id, request, body.clone());
                    client.in_flight = Some((request, session, body.clone(), tick));
                    to_send.push((client.view_guess % n as u32) as u8);
                    message = Some(Message::Request {
                        client: client.id,
                        session,
                        request,
                        body: body.into(),
                    });
                }
                Some((request, session, body, sent_at)) if tick - *sent_at >= CLIENT_RETRY => {
                    *sent_at = tick;
                    to_send.extend(0..n);
                    message = Some(Message::Request {
                        client: client.id,
                        session: *session,
                        request: *request,
                        body: body.clone().into(),
                    });
                    self.coverage.add("client_retries", 1);
                }
                _ => {}
            }
            let id = client.id;
            if let Some(message) = message {
                for r in to_send {
                    self.send(Envelope {
                        cluster: CLUSTER,
                        group: 1,
                        epoch: 0,
                        from: Node::Client(id),
                        to: Node::Replica(r),
                        message: message.clone(),
                    });
                }
            }
        }
    }

    pub(super) fn client_receive(&mut self, id: u128, message: Message) -> Result<(), Violation> {
        match message {
            Message::Reply {
                request,
                view,
                op,
                body,
                ..
            } => {
                self.checker.reply(id, request, op, &body)?;
                let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
                    return Ok(());
                };
                let Some((in_flight, session, _, _)) = &client.in_flight else {
                    return Ok(());
                };
                if *in_flight != request {
                    return Ok(());
                }
                if *session == 0 {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&body[..8]);
                    client.session = Some(u64::from_le_bytes(raw));
                } else {
                    client.answered += 1;
                }
                client.in_flight = None;
                client.view_guess = view;
                client.think_until = self.tick + self.rng.below(20);
            }
            Message::Evicted { session, .. } => {
                let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else {
                    return Ok(());
                };
                if client.session == Some(session) {
                    self.coverage.add("evictions_seen_by_clients", 1);
                    client.session = None;
                    if let Some((_, sent_in, body, _)) = client.in_flight.take() {
                        if sent_in != 0 {
                            client.orphan = Some(body);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ticks until every request is answered (or `limit` ticks pass); for scenario tests.
    pub fn run_until_answered(&mut self, limit: u64) -> Result<u64, Violation> {
        let start = self.tick;
        while self.tick - start < limit {
            self.step()?;
            if self.clients.iter().all(|c| c.answered == c.total) {
                return Ok(self.tick - start);
            }
        }
        Err(format!(
            "only {} of {} requests answered in {limit} ticks",
            self.answered(),
            self.clients.iter().map(|c| c.total).sum::<u64>()
        ))
    }

    /// Runs until every request is answered and every replica is whole and in the last
    /// configuration of the plan (what the liveness phase waits for), with faults as
    /// configured; the ticks it took.
    pub fn run_until_converged(&mut self, limit: u64) -> Result<u64, Violation> {
        let start = self.tick;
        while self.tick - start < limit {
            self.step()?;
            if self.converged() {
                return Ok(self.tick - start);
            }
        }
        Err(self.liveness_report())
    }

    pub fn answered(&self) -> u64 {
        self.clients.iter().map(|c| c.answered).sum()
    }
}

/// A random model-broker operation: mostly appends, some offset stores.
fn workload(rng: &mut Rng, request: u64) -> Vec<u8> {
    let partition = rng.below(4) as u8;
    if rng.chance(250_000) {
        let mut body = vec![1, rng.below(3) as u8, partition];
        body.extend_from_slice(&rng.below(request + 2).to_le_bytes());
        body
    } else {
        let mut body = vec![0, partition];
        let len = rng.between(1, 24);
        body.extend((0..len).map(|_| rng.below(256) as u8));
        body
    }
}
