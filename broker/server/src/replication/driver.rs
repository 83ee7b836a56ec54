//! The replica thread: the one place the VSR core runs. It owns the `vsr::Replica` (and through
//! it the broker's state machine, so committed operations are applied here, in op order), and
//! turns the core's outputs into effects:
//!
//! * sends to replicas → the transport's per-peer queues;
//! * replies to clients → the waiting connection if the client lives on this replica, else the
//!   replica it lives on (a client id carries its home position);
//! * WAL, superblock and checkpoint writes → the journal thread (checkpoints on to the
//!   checkpointer thread), whose completions come back as `WriteDone`;
//! * events → metrics, logs and the status `/admin/status` reports.
//!
//! Time enters only here: a tick every 10 ms, as the core expects.
//!
//! A connection on a backup gets its reply only once this replica has applied the op too, so
//! a client that sends and then polls through the same replica reads its own write. The
//! primary's reply tells the backup the op is committed (the primary replies only after
//! commit), which the driver passes to the core as a commit message from that primary rather
//! than waiting for the next heartbeat.

use crate::broker::Broker;
use crate::replication::journal::{Write, WrittenBody};
use crate::replication::machine::{BrokerMachine, Manifest};
use crate::replication::mapped;
use crate::replication::sending::Peers;
use crate::replication::space;
use crate::replication::status::ClusterStatus;
use crate::replication::sync;
use crate::replication::transport;
use crate::replication::writer::JournalWriter;
use crate::replication::ClientIds;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vsr::{ClientId, Envelope, Event, Input, Message, Node, Op, Output, Replica, ReplicaId};

const TICK: Duration = Duration::from_millis(10);

/// What the driver is fed. Moved once into a channel; boxing the envelope would add an
/// allocation per message received.
#[allow(clippy::large_enum_variant)]
pub enum DriverInput {
    /// From a peer replica.
    Envelope(Envelope),
    /// The journal made these writes durable; the large prepare bodies among them come back
    /// mapped from the WAL, for the core's log to hold instead of heap copies (`mapped.rs`).
    WriteDone(Vec<u64>, Vec<WrittenBody>),
    /// A local connection's operation (see `submitter`).
    Request {
        client: ClientId,
        session: u64,
        request: u64,
        body: bytes::Bytes,
        reply: oneshot::Sender<ClientReply>,
    },
    /// The admin API asks this replica to hand its view on (see `vsr::Input::StepDown`).
    StepDown,
    /// `POST /admin/ring` took a ring as the next configuration (see `ring_update`).
    Ring(iggy_contract::Ring),
    Stop,
}

/// The outcome of a local client's request.
#[derive(Debug)]
pub enum ClientReply {
    /// Committed and applied on this replica; the state machine's reply.
    Done(Vec<u8>),
    /// The session is gone from the client table: it executes nothing more.
    Evicted {
        /// This thread handed the request to the core more than once (again in a new view):
        /// one of those copies may have executed before the session was evicted.
        resubmitted: bool,
    },
}

pub struct Driver {
    pub replica: Replica<BrokerMachine>,
    pub me: ReplicaId,
    pub cluster: u128,
    pub peers: Peers,
    /// Writes to the journal: to its thread, or inline (`writer.rs`).
    pub journal: JournalWriter,
    pub status: Arc<ClusterStatus>,
    pub broker: Arc<Broker>,
    pub clients: ClientIds,
    /// Replication addresses by position (state sync fetches from the sender of a checkpoint).
    pub addresses: Vec<String>,
    /// Where this broker's clients connect (for the members `GetClusterMetadata` lists).
    pub client_port: u16,
    /// Where the newest ring handed over is kept, so a restart knows every position's address
    /// even when its ring file is older (`Setup::load`).
    pub ring_copy: std::path::PathBuf,
    /// When the last state sync attempt failed: the next waits a while.
    pub sync_failed: Option<Instant>,
    /// The op of a checkpoint whose data state sync just installed: the core must take it.
    pub synced: Option<Op>,
    /// A sync's data landed after the core had retired, so it did not take it: the data is
    /// ahead of the core. Harmless while retired; should a later ring bring this replica
    /// back, it stops first (a restart recovers from its own checkpoint).
    pub data_ahead_of_core: bool,
    /// Primary: when each prepare in flight was first sent, for the round-trip histogram.
    pub prepared_at: std::collections::BTreeMap<Op, Instant>,
    /// The frame of the last prepare sent (checksum, view), reused for its other peers.
    pub last_prepare: Option<(u128, vsr::View, transport::Frame)>,
    /// Written bodies mapped from the WAL, by op, until the op is applied and the core's log
    /// takes them in place of its heap copies (`Replica::adopt_written`): the state machine has
    /// read those; what is left is repairs, retransmissions and view changes, which read the
    /// mapping.
    pub mapped: vsr::WrittenBodies,
    /// The log's tail when the replica opened: recovery mapped the bodies it replayed up to
    /// here, applied or not (`check_read_back`).
    pub replayed_through: Op,
    /// Counts what peers' connections queued for this thread (`inbound.rs`).
    pub inbound: Arc<super::inbound::Inbound>,
    /// The view this replica was last seen normal in (`None` while it is not).
    pub normal_view: Option<vsr::View>,
    /// Once the core has applied up to this op, the waiting requests go to it again
    /// (`resubmit_in_new_view`).
    pub resubmit_at: Option<Op>,
    /// When this replica last told its peers how much room it has (`space.rs`).
    pub space_reported: Option<Instant>,
}

/// After a failed state sync, checkpoints offered within this long are passed over.
const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Longest a state sync may go without writing data before it is abandoned (and resumed later:
/// after a restart when it had changed local data). A sync that keeps writing runs until done.
const SYNC_STALL: Duration = Duration::from_secs(30);

struct Waiting {
    session: u64,
    request: u64,
    body: bytes::Bytes,
    reply: oneshot::Sender<ClientReply>,
    /// Handed to the core again in a new view (`resubmit_in_new_view`).
    resubmitted: bool,
}

impl Driver {
    /// Runs until `Stop` or until every sender is gone.
    pub fn run(mut self, inputs: Receiver<DriverInput>) {
        let mut waiting: HashMap<ClientId, Waiting> = HashMap::new();
        // Replies for local clients whose op this replica has not applied yet.
        let mut unapplied: Vec<(ClientId, u64, Op, Vec<u8>)> = Vec::new();
        let mut queue: VecDeque<Input> = VecDeque::new();
        let opening = self.replica.take_outputs();
        self.carry_out(opening, &mut waiting, &mut unapplied, &mut queue);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match inputs.recv_timeout(wait) {
                Ok(DriverInput::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(input) => {
                    self.accept(input, &mut waiting, &mut unapplied, &mut queue);
                    // Take whatever else is queued before ticking: a burst is one batch.
                    for _ in 0..256 {
                        match inputs.try_recv() {
                            Ok(DriverInput::Stop) => return,
                            Ok(input) => {
                                self.accept(input, &mut waiting, &mut unapplied, &mut queue)
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                let micros = crate::storage::fsutil::now_micros();
                queue.push_back(Input::Tick { now: micros });
                self.report_space(now);
                next_tick = if now > next_tick + TICK * 10 {
                    now + TICK
                } else {
                    next_tick + TICK
                };
            }
            loop {
                while let Some(input) = queue.pop_front() {
                    let outputs = self.replica.step(input);
                    self.carry_out(outputs, &mut waiting, &mut unapplied, &mut queue);
                }
                if self.resubmit_in_new_view(&mut waiting, &mut queue) {
                    continue;
                }
                // A backup applies what the prepares said is committed only now, with their
                // writes and acknowledgements out: applying a megabyte batch no longer holds up
                // the round trip of the next one.
                let applied = self.replica.commit_min();
                if !self.replica.has_unapplied() {
                    break;
                }
                let outputs = self.replica.step(Input::Apply);
                self.carry_out(outputs, &mut waiting, &mut unapplied, &mut queue);
                if self.replica.commit_min() == applied && queue.is_empty() {
                    break; // nothing it could apply yet; the tick tries again
                }
            }
            self.replica.adopt_written(&mut self.mapped);
            if let Some(op) = self.synced.take() {
                if self.replica.commit_min() >= op {
                    // Taken.
                } else if self.replica.status() == vsr::Status::Retired {
                    tracing::warn!(
                        op,
                        "a state sync finished after this replica retired; it stays retired"
                    );
                    self.data_ahead_of_core = true;
                } else {
                    // The data now is the checkpoint's but the core did not take it: applying
                    // further ops would diverge. Stop; a restart recovers from this replica's
                    // own checkpoint and WAL.
                    tracing::error!(op, "the core refused a synced checkpoint; stopping");
                    std::process::exit(70);
                }
            }
            if self.data_ahead_of_core && self.replica.status() != vsr::Status::Retired {
                tracing::error!(
                    "a ring brought this replica back while its data is ahead of its core; \
                     stopping so a restart recovers from its own checkpoint"
                );
                std::process::exit(70);
            }
            self.deliver_applied(&mut waiting, &mut unapplied);
            self.status.publish(&self.replica);
            // With the prepares out and the replies delivered: the primary's apply of the next
            // op, if it is a send, does its segment write now while the backups acknowledge it
            // (`staging.rs`), instead of after, where every send waited for it.
            self.replica.stage_next();
        }
    }

    fn accept(
        &mut self,
        input: DriverInput,
        waiting: &mut HashMap<ClientId, Waiting>,
        unapplied: &mut Vec<(ClientId, u64, Op, Vec<u8>)>,
        queue: &mut VecDeque<Input>,
    ) {
        if let DriverInput::Envelope(envelope) = &input {
            self.inbound.taken(envelope);
        }
        match input {
            DriverInput::Envelope(envelope) => match envelope.to {
                // Another cluster's traffic is nobody's business here. Another epoch's is the
                // core's: it shows who is behind.
                _ if envelope.cluster != self.cluster => {}
                Node::Replica(_) => {
                    if let Node::Replica(from) = envelope.from {
                        self.status.heard_from(from);
                    }
                    if let Message::PrepareOk { op, .. } = envelope.message {
                        if let Some(sent) = self.prepared_at.get(&op) {
                            self.status.record_round_trip(sent.elapsed());
                        }
                        // Acks are cumulative: nothing at or below `op` is waited for by it.
                        self.prepared_at = self.prepared_at.split_off(&(op + 1));
                    }
                    if matches!(envelope.message, Message::Sync { .. }) {
                        // Whatever is queued runs first: nothing may apply an op onto data
                        // that state sync is about to replace.
                        while let Some(input) = queue.pop_front() {
                            let outputs = self.replica.step(input);
                            self.carry_out(outputs, waiting, unapplied, queue);
                        }
                    }
                    if self.ready_for(&envelope) {
                        queue.push_back(Input::Message(envelope));
                    }
                }
                Node::Client(_) => self.for_local_client(envelope, waiting, unapplied, queue),
            },
            DriverInput::WriteDone(ios, bodies) => {
                self.journal.finished(ios.len());
                self.writes_done(ios, bodies, queue);
            }
            DriverInput::Request {
                client,
                session,
                request,
                body,
                reply,
            } => {
                // The connection stopped waiting while this thread was busy (a state sync, a
                // long checkpoint): its deadline passed and it told its client to retry, or it
                // sent the request again with a new waiter. Proposing it now would commit a
                // write whose client was told it failed, and a retry would then store it
                // twice. What nobody waits for is never proposed; the copy still awaited is.
                if reply.is_closed() {
                    self.broker
                        .metrics
                        .replication_abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                queue.push_back(self.request_input(client, session, request, body.clone()));
                waiting.insert(
                    client,
                    Waiting {
                        session,
                        request,
                        body,
                        reply,
                        resubmitted: false,
                    },
                );
            }
            DriverInput::StepDown => queue.push_back(Input::StepDown),
            DriverInput::Ring(ring) => {
                let next = self.adopt_ring(&ring);
                queue.push_back(Input::Reconfigure(next));
            }
            DriverInput::Stop => {}
        }
    }

    /// A local client's request, as the core takes it.
    fn request_input(
        &self,
        client: ClientId,
        session: u64,
        request: u64,
        body: bytes::Bytes,
    ) -> Input {
        Input::Message(Envelope {
            cluster: self.cluster,
            group: 1,
            epoch: self.replica.epoch(),
            from: Node::Client(client),
            to: Node::Replica(self.me),
            message: Message::Request {
                client,
                session,
                request,
                body,
            },
        })
    }

    /// Once this replica is normal in a view it was not normal in before, and has applied the
    /// log it held when it became normal, hands the core again every request a local
    /// connection still waits for. The core drops requests while it is in a view change (and a
    /// backup's forward to a dead primary is lost), so without this each waited for its
    /// connection's resend, up to 250 ms after the view had started (the tail of every
    /// failover). Waiting for the inherited log to be applied first means a session registered
    /// by one of its ops is known by then (the core drops a request of a session it has not
    /// applied yet rather than call it evicted). A request already in the log or the client
    /// table is not executed twice: the core answers it from the table or ignores the copy.
    /// Returns whether it queued any.
    fn resubmit_in_new_view(
        &mut self,
        waiting: &mut HashMap<ClientId, Waiting>,
        queue: &mut VecDeque<Input>,
    ) -> bool {
        let normal = (self.replica.status() == vsr::Status::Normal).then(|| self.replica.view());
        if normal != self.normal_view {
            self.normal_view = normal;
            self.resubmit_at = normal.map(|_| self.replica.log_tail());
        }
        match self.resubmit_at {
            Some(at) if self.replica.commit_min() >= at => self.resubmit_at = None,
            _ => return false,
        }
        waiting.retain(|_, w| !w.reply.is_closed());
        for (&client, w) in waiting.iter_mut() {
            w.resubmitted = true;
            queue.push_back(self.request_input(client, w.session, w.request, w.body.clone()));
        }
        !waiting.is_empty()
    }

    /// Whether `envelope` may go to the core now. A checkpoint (`Sync`) the broker's data does
    /// not reach is held back until state sync has fetched what is missing from its sender:
    /// the core restores a checkpoint only when the data matches it.
    fn ready_for(&mut self, envelope: &Envelope) -> bool {
        let (Message::Sync { checkpoint }, Node::Replica(from)) =
            (&envelope.message, envelope.from)
        else {
            return true;
        };
        // What the core would refuse anyway goes through untouched.
        if !self.replica.takes_checkpoint(checkpoint) {
            return true;
        }
        let Ok(manifest) = Manifest::decode(&checkpoint.state) else {
            return true;
        };
        if self.replica.state_machine().check(&manifest).is_ok() {
            return true;
        }
        if self.sync_failed.is_some_and(|at| at.elapsed() < SYNC_RETRY) {
            return false;
        }
        let Some(sender) = self.addresses.get(usize::from(from)).cloned() else {
            return false;
        };
        // The sender first; the other members serve what it cannot (damage in its copy).
        let peers: Vec<String> = std::iter::once(sender.clone())
            .chain(
                self.addresses
                    .iter()
                    .enumerate()
                    .filter_map(|(index, address)| {
                        let other = index != usize::from(from) && index != usize::from(self.me);
                        (other && !address.is_empty()).then(|| address.clone())
                    }),
            )
            .collect();
        let started = Instant::now();
        tracing::info!(
            op = checkpoint.op(),
            peer = %sender,
            "state sync: fetching the checkpoint's data"
        );
        // Until the core makes this checkpoint durable the old one is what a restart restores,
        // so what installing the new one deletes is buried, not deleted.
        let data = self.broker.config.system.path.clone();
        let installed = crate::storage::graveyard::during(&data, checkpoint.op(), || {
            sync::install(
                &self.broker,
                &manifest,
                &peers,
                self.peers.secret(),
                SYNC_STALL,
            )
        });
        match installed {
            Ok(messages) => {
                self.sync_failed = None;
                self.synced = Some(checkpoint.op());
                tracing::info!(
                    op = checkpoint.op(),
                    messages,
                    ms = started.elapsed().as_millis() as u64,
                    "state sync: data fetched"
                );
                true
            }
            Err(e) if e.touched => {
                // The data is now part old, part new: applying the core's next ops onto it
                // would diverge. Restart from the durable checkpoint, as a failed apply does.
                tracing::error!(
                    op = checkpoint.op(),
                    error = %e,
                    "state sync failed after changing local data; stopping this replica"
                );
                eprintln!(
                    "iggy-broker: state sync to op {} failed: {e}",
                    checkpoint.op()
                );
                std::process::exit(70);
            }
            Err(e) => {
                self.sync_failed = Some(Instant::now());
                tracing::warn!(op = checkpoint.op(), error = %e, "state sync failed; will retry");
                false
            }
        }
    }

    fn carry_out(
        &mut self,
        outputs: Vec<Output>,
        waiting: &mut HashMap<ClientId, Waiting>,
        unapplied: &mut Vec<(ClientId, u64, Op, Vec<u8>)>,
        queue: &mut VecDeque<Input>,
    ) {
        for output in outputs {
            match output {
                Output::Send(envelope) => match envelope.to {
                    Node::Replica(to) if transport::worth_deferring(&envelope.message) => {
                        // Tens of MiB (a view's log, a catch-up): read, verified and encoded
                        // by the peer's connection task, not here, where it held up every
                        // request behind it (a failover's first send waited for the dead
                        // primary's copy of the new view).
                        let through = self.read_back_through();
                        let sent = self.peers.send_deferred(to, envelope, through);
                        self.count_if_dropped(sent);
                    }
                    Node::Replica(to) => {
                        self.check_read_back(envelope.message.prepares());
                        if let Message::Prepare { prepare, .. } = &envelope.message {
                            if self.replica.is_primary() && self.prepared_at.len() < 4096 {
                                self.prepared_at
                                    .entry(prepare.op())
                                    .or_insert_with(Instant::now);
                            }
                        }
                        if matches!(envelope.message, Message::Request { .. }) {
                            self.broker
                                .metrics
                                .replication_forwarded
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        self.send(to, &envelope);
                    }
                    Node::Client(client) => {
                        let home = self.clients.home(client);
                        if home == self.me {
                            self.for_local_client(envelope, waiting, unapplied, queue);
                        } else {
                            self.send(home, &envelope);
                        }
                    }
                },
                Output::WriteWal { io, slot, prepare } => {
                    self.write(io, Write::Wal { slot, prepare });
                }
                Output::WriteCheckpoint { io, checkpoint } => {
                    self.check_read_back([&checkpoint.anchor]);
                    self.write(io, Write::Checkpoint(checkpoint));
                }
                Output::WriteSuperblock { io, superblock } => {
                    self.write(io, Write::Superblock(superblock));
                }
                Output::WriteLog {
                    io,
                    superblock,
                    truncate_after,
                    entries,
                } => {
                    self.check_read_back(entries.iter().map(|(_, prepare)| prepare));
                    self.write(
                        io,
                        Write::Log {
                            superblock,
                            truncate_after,
                            entries,
                        },
                    )
                }
                Output::Event(event) => self.observe(event),
            }
        }
        // Appends made here wait until the batch's sends are out (`writer.rs`).
        self.journal.flush();
        if let Some((ios, bodies)) = self.journal.take_done() {
            self.writes_done(ios, bodies, queue);
        }
    }

    /// Stops this replica if a prepare it is about to send or write again was read back from
    /// the WAL and no longer verifies. Applied bodies are mapped from the WAL (`mapped.rs`), so
    /// a send reads them from the page cache, where rot on the disk under a page the kernel had
    /// dropped shows up. Sending it would only be refused by every peer (they verify all they
    /// receive), and writing it again — a checkpoint's anchor, a log installed by a view
    /// change — would spread the rot into a record whose checksum is fresh. A restart finds the
    /// damaged WAL record and repairs it from the peers (`replica::repair`), the path the
    /// simulator tests with every kind of disk fault. Only bodies that may be mapped are
    /// hashed: large ones of applied or replayed ops; new prepares, in the heap, cost nothing.
    fn check_read_back<'a>(&self, prepares: impl IntoIterator<Item = &'a vsr::Prepare>) {
        if let Some(prepare) = mapped::rotten(prepares, self.read_back_through()) {
            mapped::stop_over_rot(prepare);
        }
    }

    /// The ops whose bodies may have been read back from the WAL: applied or replayed.
    fn read_back_through(&self) -> Op {
        self.replica.commit_min().max(self.replayed_through)
    }

    fn send(&mut self, to: ReplicaId, envelope: &Envelope) {
        // A prepare goes to several peers in a row (star, retransmits): encode it once. The
        // frame names the first peer as its destination, which receivers do not look at.
        let cached = match &envelope.message {
            Message::Prepare { prepare, view } => self
                .last_prepare
                .as_ref()
                .filter(|(checksum, v, _)| *checksum == prepare.checksum() && v == view)
                .map(|(_, _, frame)| frame.clone()),
            _ => None,
        };
        let frame = match cached {
            Some(frame) => Ok(frame),
            None => transport::encode(envelope),
        };
        match frame {
            Ok(frame) => {
                if let Message::Prepare { prepare, view } = &envelope.message {
                    self.last_prepare = Some((prepare.checksum(), *view, frame.clone()));
                }
                let sent = self.peers.send(to, frame);
                self.count_if_dropped(sent);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a replication message"),
        }
    }

    /// Tells the peers how much room this replica has, every [`space::REPORT_INTERVAL`]: the
    /// primary refuses sends for the member with the least (`machine.rs`, `admit`).
    fn report_space(&mut self, now: Instant) {
        if self
            .space_reported
            .is_some_and(|at| now.duration_since(at) < space::REPORT_INTERVAL)
        {
            return;
        }
        self.space_reported = Some(now);
        let Some(room) = self.status.own_room(&self.broker.config.system.path) else {
            return;
        };
        let report = transport::SpaceReport {
            position: self.me,
            applied: self.replica.commit_min(),
            room,
        };
        match transport::OutFrame::small(transport::SPACE, &report) {
            Ok(frame) => self.peers.send_space(&frame),
            Err(e) => tracing::error!(error = %e, "cannot encode a space report"),
        }
    }

    /// Counts a message for a peer that its queue dropped (`sent` false).
    fn count_if_dropped(&self, sent: bool) {
        if !sent {
            self.broker
                .metrics
                .replication_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write(&mut self, io: u64, write: Write) {
        self.journal.write(io, write);
    }

    /// Writes the journal carried out, for the core; the large bodies among them come back
    /// mapped from the WAL, held until their ops are applied (`adopt_written`).
    fn writes_done(
        &mut self,
        ios: Vec<u64>,
        bodies: Vec<WrittenBody>,
        queue: &mut VecDeque<Input>,
    ) {
        queue.extend(ios.into_iter().map(|io| Input::WriteDone { io }));
        for written in bodies {
            // A later write of the same op (a view change's log) replaces an earlier.
            self.mapped
                .insert(written.op, (written.checksum, written.body));
        }
    }

    /// A reply (or eviction notice) for a client of this replica.
    fn for_local_client(
        &mut self,
        envelope: Envelope,
        waiting: &mut HashMap<ClientId, Waiting>,
        unapplied: &mut Vec<(ClientId, u64, Op, Vec<u8>)>,
        queue: &mut VecDeque<Input>,
    ) {
        match envelope.message {
            Message::Reply {
                client,
                request,
                view,
                op,
                body,
            } => {
                if op > self.replica.commit_min() {
                    if let Node::Replica(primary) = envelope.from {
                        // The primary replies only to committed ops: tell the core now.
                        queue.push_back(Input::Message(Envelope {
                            cluster: self.cluster,
                            group: 1,
                            // The primary's epoch: a commit of another one is the core's to
                            // judge (it shows who is behind).
                            epoch: envelope.epoch,
                            from: Node::Replica(primary),
                            to: Node::Replica(self.me),
                            message: Message::Commit { view, commit: op },
                        }));
                    }
                    unapplied.push((client, request, op, body));
                } else {
                    deliver(waiting, client, request, ClientReply::Done(body));
                }
            }
            // Only for the session it names: a late answer to a copy sent under a session
            // since replaced must not end the request of the new one, which would then be sent
            // again although it may have executed.
            Message::Evicted { client, session }
                if waiting.get(&client).is_some_and(|w| w.session == session) =>
            {
                if let Some(entry) = waiting.remove(&client) {
                    let _ = entry.reply.send(ClientReply::Evicted {
                        resubmitted: entry.resubmitted,
                    });
                }
            }
            _ => {}
        }
    }

    fn deliver_applied(
        &mut self,
        waiting: &mut HashMap<ClientId, Waiting>,
        unapplied: &mut Vec<(ClientId, u64, Op, Vec<u8>)>,
    ) {
        let applied = self.replica.commit_min();
        let mut i = 0;
        while i < unapplied.len() {
            if unapplied[i].2 <= applied {
                let (client, request, _, body) = unapplied.swap_remove(i);
                deliver(waiting, client, request, ClientReply::Done(body));
            } else {
                i += 1;
            }
        }
        // A reply for an op this replica will never apply in time is dropped with its
        // waiter (the connection times out and retries); keep the list bounded.
        if unapplied.len() > 4096 {
            unapplied.drain(..unapplied.len() - 4096);
        }
    }

    /// A ring handed over (or started with) as the next configuration: connects to the
    /// positions it adds, lists them, and keeps a copy; the configuration for the core.
    pub fn adopt_ring(&mut self, ring: &iggy_contract::Ring) -> vsr::Membership {
        for member in ring.by_position() {
            let index = usize::from(member.position);
            if self.addresses.len() <= index {
                self.addresses.resize(index + 1, String::new());
            }
            if self.addresses[index].is_empty() {
                self.addresses[index] = member.address.clone();
            }
            self.peers.add(member.position, &member.address);
        }
        self.status.set_layout(super::status::Layout {
            members: super::members_of(ring, self.client_port),
            ring: Some(ring.clone()),
        });
        if let Err(error) = super::keep_ring_copy(&self.ring_copy, ring) {
            tracing::warn!(%error, path = %self.ring_copy.display(), "cannot keep a copy of the ring");
        }
        super::ring_update::membership_of(ring)
    }

    fn observe(&self, event: Event) {
        let metrics = &self.broker.metrics;
        match event {
            Event::ViewChangeStarted { view } => {
                metrics.view_changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(view, "view change started");
            }
            Event::Normal { view, primary, .. } => {
                tracing::info!(view, primary, "replica is normal");
            }
            Event::Abdicated { view } => tracing::warn!(view, "primary abdicated"),
            Event::SteppedDown { view } => {
                tracing::info!(
                    view,
                    "primary stepping down as asked; a view change follows"
                )
            }
            Event::StateSynced { op, .. } => tracing::info!(op, "state synced from a peer"),
            Event::EpochStarted { membership, role } => tracing::info!(
                epoch = membership.epoch,
                at_op = membership.start,
                members = membership.replica_count,
                standbys = membership.standby_count,
                role = ?role,
                "entered a new epoch"
            ),
            Event::Repaired { op } => {
                metrics.wal_repairs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(op, "repaired a damaged WAL slot");
            }
            Event::EpochStartNamed { start } => tracing::info!(
                at_op = start,
                "a member of a newer epoch that lost its start named it; taking it as committed"
            ),
            Event::LogReplaced { replaced } if replaced > 0 => {
                tracing::info!(replaced, "view change replaced uncommitted ops")
            }
            Event::Checkpointed { op, .. } => tracing::debug!(op, "checkpoint taken"),
            Event::ViewChangeBodyFetched { op } => {
                tracing::debug!(op, "fetched a prepare of the winning log from a voter")
            }
            _ => {}
        }
    }
}

fn deliver(
    waiting: &mut HashMap<ClientId, Waiting>,
    client: ClientId,
    request: u64,
    reply: ClientReply,
) {
    if waiting.get(&client).is_some_and(|w| w.request == request) {
        if let Some(entry) = waiting.remove(&client) {
            let _ = entry.reply.send(reply);
        }
    }
}
