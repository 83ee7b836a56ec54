//! One replica: the whole protocol, driven by [`Replica::step`]. The protocol is split by
//! concern: [`recovery`] (opening on what storage holds), [`normal`] (requests, prepares,
//! acks, commits), [`durability`] (WAL, superblock and checkpoint writes), [`timeouts`],
//! [`view_change`], [`repair`] (damaged WAL slots from peers) and [`state_sync`]
//! (checkpoints), with [`invariants`] checked after every step.
//!
//!
//! Durability rules the code keeps (each is checked by the simulator):
//! * nothing is sent in a view before that view and its log view are durable in the superblock
//!   (sends wait in `deferred` until the write completes);
//! * a PrepareOk for op `n` means every op up to `n` is durable in the WAL (acks are
//!   cumulative, so recovery may cut the log at its first gap without losing an acked op);
//! * a log installed by a view change is written atomically with the superblock naming its view;
//! * the client table changes only when an op commits, so a dropped prepare never locks a client
//!   out, and an op whose (client, request) already executed is skipped at apply on every replica.

mod durability;
mod epochs;
mod invariants;
mod normal;
mod recovery;
mod repair;
mod state_sync;
#[cfg(test)]
mod tests;
mod timeouts;
mod view_change;

use crate::checkpoint::{Checkpoint, ClientSession};
use crate::config::Config;
use crate::log::Log;
use crate::message::{Envelope, Message, Node};
use crate::prepare::Prepare;
use crate::routing::primary_of;
use crate::state_machine::StateMachine;
use crate::step::{Event, Input, Output};
use crate::view_change::Vote;
use crate::{ClientId, Epoch, Op, ReplicaId, View};
use durability::PendingWrite;
use repair::Repair;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bodies a driver wrote to storage, by op: (the prepare's checksum, the driver's copy of its
/// body), waiting for their op to be applied ([`Replica::adopt_written`]).
pub type WrittenBodies = BTreeMap<Op, (u128, bytes::Bytes)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Normal,
    ViewChange,
    /// Restarted: waits to learn the current view before taking part.
    Recovering,
    /// Outside the configuration it runs (a removed member, or a slot not added yet): it
    /// votes, acknowledges and leads nothing, and only tells replicas of older epochs how the
    /// current one began.
    Retired,
}

pub struct Replica<S> {
    cfg: Config,
    sm: S,
    status: Status,
    view: View,
    log_view: View,
    /// The prepares after the newest durable checkpoint, anchored on its op.
    log: Log,
    commit_min: Op,
    commit_max: Op,
    /// (epoch, view, log view) of the newest durable superblock; `None` before the first one
    /// lands.
    durable: Option<(Epoch, View, View)>,
    superblock_sequence: u64,
    /// A superblock write waits for a log install in flight (see `write_superblock`).
    superblock_queued: bool,
    /// Every op up to here is durable in the WAL with the checksum the log holds.
    op_durable: Op,
    /// Durable WAL entries (op → checksum, and the io that wrote them), as far as this replica
    /// knows. Storage applies writes to one place in issue order, and ios increase with issue
    /// order, so a truncation only erases entries written before it.
    durable_ops: BTreeMap<Op, (u128, u64)>,
    writes: BTreeMap<u64, PendingWrite>,
    next_io: u64,
    client_table: BTreeMap<ClientId, ClientSession>,
    /// Newest checkpoint named by a durable superblock: the WAL may hold ops up to it plus
    /// `wal_slots`, and the log is anchored on it.
    checkpoint_durable: Op,
    /// Newest checkpoint whose state is durable: what the next superblock names.
    checkpoint_named: Op,
    /// Checkpoints taken or received and not yet superseded by a durable newer one (the one
    /// the log is anchored on is what peers behind it are sent).
    checkpoints: BTreeMap<Op, Checkpoint>,
    /// Every op of the log up to here has had its WAL write issued.
    wal_issued: Op,
    /// State sync replaced the log with a checkpoint not yet durable: until it is, a crash
    /// would recover the older checkpoint, which cannot reach the ops after the new one, so
    /// this replica neither acknowledges nor votes.
    syncing: Option<Op>,
    /// A StartView that could not be joined for lack of state: asked again after syncing.
    sync_view: Option<View>,
    last_sync_request: u64,
    /// Primary: highest op each replica has acknowledged in this view.
    acked: BTreeMap<ReplicaId, Op>,
    /// Primary: the same for standbys, kept apart so that no quorum can count them.
    standbys_acked: BTreeMap<ReplicaId, Op>,
    /// Primary: replicas it had to retransmit to and that have not acknowledged since; the
    /// ring route sends around them (`routing::forward_targets_avoiding`).
    suspects: BTreeSet<ReplicaId>,
    /// (client, session, request, body) waiting for room in the pipeline.
    requests: VecDeque<(ClientId, u64, u64, bytes::Bytes)>,
    svc: BTreeSet<ReplicaId>,
    dvc: BTreeMap<ReplicaId, Vote>,
    dvc_sent: bool,
    /// When our vote last went out (ticks): it is resent less often than the StartViewChange.
    dvc_sent_at: u64,
    /// New primary: prepares peers sent for the winning log's unreadable suffix, by checksum.
    view_change_bodies: BTreeMap<u128, Prepare>,
    last_body_request: u64,
    /// Recovery found a slot whose header vouches for a prepare it no longer has: this replica
    /// may have acknowledged ops it cannot produce. While it knows exactly what it promised
    /// (`repair`) it votes with those ops marked unreadable; otherwise it sits view changes out.
    faulty: bool,
    /// A faulty replica that installed a StartView is repaired once every op of that log is
    /// durable (contiguously, with matching checksums): only then does its durable log hold
    /// what it may have acknowledged before the damage.
    repair_until: Option<Op>,
    /// A faulty replica's own repair: the ops its header ring says it wrote from the damaged
    /// slot on, fetched from peers one by one (see `Repair`).
    repair: Option<Repair>,
    tick: u64,
    heard_from_primary: u64,
    status_since: u64,
    last_commit_broadcast: u64,
    /// As primary: the highest commit number a prepare or a commit message has carried to the
    /// backups. A commit nothing carried yet goes out at the next tick, not the next heartbeat:
    /// a member reads only what it has applied, and an idle cluster's heartbeat left a write
    /// invisible on the members that did not take it for up to `commit_interval`.
    commit_sent: Op,
    last_retransmit: u64,
    last_state_request: u64,
    last_view_request: u64,
    last_view_change_message: u64,
    /// Primary: last tick its commit advanced or it had nothing uncommitted.
    last_progress: u64,
    /// Primary: when each uncommitted op was last sent; only ops unacknowledged for a whole
    /// prepare timeout are retransmitted, so a busy but healthy pipeline never retransmits.
    sent_at: BTreeMap<Op, u64>,
    /// Sends that wait for the superblock to make the current view durable.
    deferred: Vec<Envelope>,
    /// The op of the reconfiguration that started the running epoch (0: the first one).
    epoch_start: Op,
    /// That reconfiguration op's checksum, from the superblock once recorded (0: not known). A
    /// member whose log lost the start names it by this to a member of the old epoch that
    /// still holds it ([`Message::EpochStartedAt`]).
    epoch_start_checksum: u128,
    /// Recovery found the superblock's epoch but not its start, and nothing else wrong: the
    /// replica is whole again once a peer's copy of the start is durable.
    start_lost: bool,
    /// A checkpoint synced from a newer epoch, not durable yet: the epoch entered when it is.
    synced_epoch: Option<(Op, crate::membership::Membership)>,
    /// The newest configuration the operator asked for ([`Input::Reconfigure`]).
    proposal: Option<crate::membership::Membership>,
    last_epoch_request: u64,
    /// When each replica of an older epoch was last told how ours began.
    epoch_answers: BTreeMap<ReplicaId, u64>,
    jitter: u64,
    rng: u64,
    last_timestamp: u64,
    /// The op and checksum last offered to [`StateMachine::stage`].
    staged: (Op, u128),
    now: u64,
    out: Vec<Output>,
}

impl<S: StateMachine> Replica<S> {
    /// Feeds one input; returns the effects to carry out, in order.
    /// Effects produced while opening (the first superblock write of a fresh member).
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn step(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Tick { now } => self.on_tick(now),
            Input::WriteDone { io } => self.on_write_done(io),
            Input::StepDown => self.on_step_down(),
            Input::Reconfigure(next) => self.on_reconfigure(next),
            Input::Message(envelope) => self.on_envelope(envelope),
            Input::Apply => self.apply_committed(),
        }
        self.check_invariants();
        std::mem::take(&mut self.out)
    }

    pub fn status(&self) -> Status {
        self.status
    }
    pub fn view(&self) -> View {
        self.view
    }
    pub fn log_view(&self) -> View {
        self.log_view
    }
    pub fn commit_min(&self) -> Op {
        self.commit_min
    }
    /// Ops known committed and held but not applied yet: a backup defers what a prepare tells
    /// it is committed to an [`Input::Apply`] (or the next tick), so that applying the previous
    /// batch does not hold up the write and acknowledgement of the new one.
    pub fn has_unapplied(&self) -> bool {
        self.commit_min < self.commit_max.min(self.log_tail())
    }

    pub fn commit_max(&self) -> Op {
        self.commit_max
    }
    pub fn log_tail(&self) -> Op {
        self.log.tail()
    }
    /// The op the log is anchored on: the checkpoint its state starts from.
    pub fn log_base(&self) -> Op {
        self.log.base()
    }
    pub fn checkpoint_durable(&self) -> Op {
        self.checkpoint_durable
    }
    /// Recovery found a faulty WAL slot that no StartView has repaired yet.
    pub fn is_faulty(&self) -> bool {
        self.faulty
    }
    /// A synced checkpoint is not durable yet: the replica neither acknowledges nor votes.
    pub fn is_syncing(&self) -> bool {
        self.syncing.is_some()
    }
    /// Primary: the highest op each replica acknowledged in this view.
    pub fn acked(&self) -> &BTreeMap<ReplicaId, Op> {
        &self.acked
    }
    pub fn op_durable(&self) -> Op {
        self.op_durable
    }
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }
    pub fn replica(&self) -> ReplicaId {
        self.cfg.replica
    }
    /// The epoch this replica runs (see [`Replica::membership`]); envelopes it builds carry it.
    pub fn epoch(&self) -> Epoch {
        self.cfg.epoch
    }
    pub fn state_machine(&self) -> &S {
        &self.sm
    }
    /// A non-voting replica (see [`Config::standby_count`]).
    pub fn is_standby(&self) -> bool {
        self.cfg.replica >= self.cfg.replica_count
    }
    /// Primary: the highest op each standby has acknowledged in this view (never counted).
    pub fn standbys_acked(&self) -> &BTreeMap<ReplicaId, Op> {
        &self.standbys_acked
    }
    pub fn is_primary(&self) -> bool {
        self.status == Status::Normal
            && primary_of(self.view, self.cfg.replica_count) == self.cfg.replica
    }
    /// Checksum of the prepare at `op`, if held.
    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        self.log.checksum_at(op)
    }

    /// Lets the log hold the driver's copy of an applied op's body instead of its own: the same
    /// bytes, kept where the driver likes (the broker maps them from the WAL file they were
    /// written to, so an idle replica does not keep its checkpoint interval's prepares in
    /// memory). Nothing the protocol does changes: the log holds the same bytes. Only ops
    /// already applied (the state machine has read them) and above the anchor, and only when
    /// `checksum` names the prepare held; returns whether the log took the body.
    pub fn adopt_body(&mut self, op: Op, checksum: u128, body: bytes::Bytes) -> bool {
        op <= self.commit_min && self.log.replace_body(op, checksum, body)
    }

    /// Offers the log ([`Replica::adopt_body`]) each body in `written` whose op is applied,
    /// removing it from `written` whether taken or not (a body the log does not take is of a
    /// prepare it no longer holds: trimmed by a checkpoint, replaced by a view change or a state
    /// sync); bodies of ops not applied yet stay. Returns how many the log took.
    pub fn adopt_written(&mut self, written: &mut WrittenBodies) -> u64 {
        let mut taken = 0;
        while let Some(entry) = written.first_entry() {
            if *entry.key() > self.commit_min {
                break;
            }
            let (op, (checksum, body)) = entry.remove_entry();
            taken += u64::from(self.adopt_body(op, checksum, body));
        }
        taken
    }

    /// Offers the state machine the op it applies next, to work on ahead
    /// ([`StateMachine::stage`]): on the primary, once per prepare, when it holds that op. Call
    /// it with a step's outputs carried out, never before: work done ahead of the prepare's
    /// sends and write would delay the round trip it is meant to overlap. Changes nothing the
    /// protocol sees; whether it is called or not, the replicas' states are the same.
    pub fn stage_next(&mut self) {
        if !self.is_primary() {
            return;
        }
        let Some(prepare) = self.log.get(self.commit_min + 1) else {
            return;
        };
        let next = (prepare.op(), prepare.checksum());
        if self.staged == next {
            return;
        }
        self.staged = next;
        self.sm.stage(&prepare.header, &prepare.body);
    }

    pub(super) fn primary(&self) -> ReplicaId {
        primary_of(self.view, self.cfg.replica_count)
    }

    pub(super) fn random(&mut self) -> u64 {
        // splitmix64: small, fast, and ours, so seeds replay across dependency upgrades.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    pub(super) fn envelope(&self, to: Node, message: Message) -> Envelope {
        Envelope {
            cluster: self.cfg.cluster,
            group: self.cfg.group,
            epoch: self.cfg.epoch,
            from: Node::Replica(self.cfg.replica),
            to,
            message,
        }
    }

    /// Sends to a replica once the current view is durable; until then the message waits.
    pub(super) fn send(&mut self, to: ReplicaId, message: Message) {
        if to == self.cfg.replica {
            return;
        }
        let envelope = self.envelope(Node::Replica(to), message);
        if self.view_durable() {
            self.out.push(Output::Send(envelope));
        } else {
            self.deferred.push(envelope);
        }
    }

    /// Sends at once, in any view: for what promises nothing about views — requests for state,
    /// committed state, prepares named by checksum, client traffic.
    pub(super) fn send_now(&mut self, to: Node, message: Message) {
        let envelope = self.envelope(to, message);
        self.out.push(Output::Send(envelope));
    }

    /// To every other member (not the standbys: what is broadcast this way is either a vote
    /// or a question only members answer).
    pub(super) fn broadcast(&mut self, message: Message) {
        for r in 0..self.cfg.replica_count {
            if r != self.cfg.replica {
                self.send(r, message.clone());
            }
        }
    }

    /// Primary: to every standby — prepares, commits and StartViews, what they follow.
    pub(super) fn send_to_standbys(&mut self, message: &Message) {
        let first = self.cfg.replica_count;
        for r in first..first + self.cfg.standby_count {
            self.send(r, message.clone());
        }
    }

    pub(super) fn view_durable(&self) -> bool {
        self.durable == Some((self.cfg.epoch, self.view, self.log_view))
    }

    pub(super) fn flush_deferred(&mut self) {
        if !self.view_durable() {
            return;
        }
        let view = self.view;
        for envelope in std::mem::take(&mut self.deferred) {
            // Anything prepared for an earlier view is stale now.
            if message_view(&envelope.message).is_none_or(|v| v == view) {
                self.out.push(Output::Send(envelope));
            }
        }
    }
}

/// Whether a request last sent at `last` (0: never) may go out again at `tick`, at most once a
/// `period`; if so, records `tick` as its time.
fn due(last: &mut u64, tick: u64, period: u64) -> bool {
    if *last != 0 && tick.saturating_sub(*last) < period {
        return false;
    }
    *last = tick.max(1);
    true
}

fn message_view(message: &Message) -> Option<View> {
    match message {
        Message::Prepare { view, .. }
        | Message::PrepareOk { view, .. }
        | Message::Commit { view, .. }
        | Message::StartViewChange { view, .. }
        | Message::DoViewChange { view, .. }
        | Message::StartView { view, .. }
        | Message::GetState { view, .. }
        | Message::NewState { view, .. } => Some(*view),
        _ => None,
    }
}

/// A log is a chain: consecutive ops from its anchor, each verifying and chaining to the
/// previous one.
pub(crate) fn valid_chain(log: &[Prepare]) -> bool {
    log.first().is_some_and(Prepare::verify)
        && log.windows(2).all(|w| {
            w[1].op() == w[0].op() + 1 && w[1].verify() && w[1].header.parent == w[0].checksum()
        })
}
