//! One replica: the whole protocol, driven by [`Replica::step`].
//!
//! Durability rules the code keeps (each is checked by the simulator):
//! * nothing is sent in a view before that view and its log view are durable in the superblock
//!   (sends wait in `deferred` until the write completes);
//! * a PrepareOk for op `n` means every op up to `n` is durable in the WAL (acks are
//!   cumulative, so recovery may cut the log at its first gap without losing an acked op);
//! * a log installed by a view change is written atomically with the superblock naming its view;
//! * the client table changes only when an op commits, so a dropped prepare never locks a client
//!   out, and an op whose (client, request) already executed is skipped at apply on every replica.

use crate::checkpoint::{Checkpoint, ClientSession};
use crate::log::Log;
use crate::message::{Envelope, Message, Node, Prepare, PrepareHeader};
use crate::quorums;
use crate::routing::{forward_targets, primary_of, Route};
use crate::state_machine::StateMachine;
pub use crate::superblock::Superblock;
use crate::view_change::{self, Vote};
use crate::{ClientId, Epoch, Op, ReplicaId, View};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: u128,
    pub group: u32,
    pub epoch: Epoch,
    pub replica_count: u8,
    pub replica: ReplicaId,
    pub route: Route,
    /// Most uncommitted prepares the primary keeps in flight.
    pub pipeline_max: usize,
    /// Most client requests queued behind the pipeline.
    pub request_queue_max: usize,
    /// Most client sessions remembered; registering one more evicts the one that committed
    /// longest ago.
    pub clients_max: usize,
    /// Primary: resend uncommitted prepares to replicas that have not acked after this long.
    pub prepare_timeout: u64,
    /// Primary: commit heartbeat interval when idle.
    pub commit_interval: u64,
    /// Backup: suspect the primary after this long without a prepare or commit.
    pub primary_timeout: u64,
    /// Give up on a view change and try the next view after this long.
    pub view_change_timeout: u64,
    /// A restarted replica waits this long for a StartView before starting a view change.
    pub recovery_timeout: u64,
    /// Primary: give up the view when uncommitted work has made no progress this long (it can
    /// send but not hear its backups, who therefore never time out on it).
    pub abdicate_timeout: u64,
    /// A checkpoint is taken after applying every op that is a multiple of this.
    pub checkpoint_interval: u64,
    /// WAL capacity in prepares: op `n` is written to slot `n % wal_slots`, so it may be written
    /// only once the checkpoint at or above `n - wal_slots` is durable. At least twice the
    /// checkpoint interval, so the primary never waits for a checkpoint to prepare.
    pub wal_slots: u64,
    /// Seed of the jitter generator (the only randomness in the core).
    pub seed: u64,
}

impl Config {
    /// Timeouts in ticks of 10 ms, pipeline and queue sizes as used in simulation.
    pub fn new(cluster: u128, replica_count: u8, replica: ReplicaId, route: Route) -> Self {
        Self {
            cluster,
            group: 1,
            epoch: 0,
            replica_count,
            replica,
            route,
            pipeline_max: 4,
            request_queue_max: 64,
            clients_max: 64,
            prepare_timeout: 25,
            commit_interval: 50,
            primary_timeout: 150,
            view_change_timeout: 300,
            recovery_timeout: 200,
            abdicate_timeout: 600,
            checkpoint_interval: 32,
            wal_slots: 64,
            seed: 0,
        }
    }

    /// The WAL slot of `op`.
    pub fn slot(&self, op: Op) -> u64 {
        op % self.wal_slots
    }
}

/// The checksum the header ring records for `op`, if its slot's header is `op`'s (an older
/// op's header there says nothing about `op`).
fn header_of(headers: &BTreeMap<u64, (Op, u128)>, cfg: &Config, op: Op) -> Option<u128> {
    headers
        .get(&cfg.slot(op))
        .filter(|(written, _)| *written == op)
        .map(|(_, checksum)| *checksum)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Normal,
    ViewChange,
    /// Restarted: waits to learn the current view before taking part.
    Recovering,
}

/// What storage held when the replica (re)started: the superblock copies as read (any of
/// them possibly stale, torn or rotten; recovery takes the newest that verifies), the checkpoint it
/// names, the WAL prepares by slot as read (possibly corrupt, possibly misplaced, possibly an
/// older op's), and the redundant header ring (slot → op and checksum of the prepare written
/// there). A WAL write lands its prepare first and its header second, and is acknowledged only
/// after both: a header therefore proves the prepare was completely written, which is how
/// recovery tells a torn write from corruption.
#[derive(Debug, Clone, Default)]
pub struct DiskImage {
    pub superblocks: Vec<Superblock>,
    pub checkpoint: Option<Checkpoint>,
    pub wal: BTreeMap<u64, Prepare>,
    pub headers: BTreeMap<u64, (Op, u128)>,
}

/// How recovery read one WAL slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCase {
    /// Prepare valid, chains, header agrees (or the header write was lost: still intact).
    Intact,
    /// No header and no valid prepare: never written, or a torn write never acknowledged.
    Torn,
    /// A header vouches for a prepare that is missing, corrupt or another op's: a write that
    /// completed (and may have been acknowledged) and then rotted or was misdirected.
    Faulty,
}

/// Classifies slot `op` given the previous prepare's checksum.
pub fn classify_slot(
    op: Op,
    parent: u128,
    prepare: Option<&Prepare>,
    header: Option<u128>,
) -> SlotCase {
    let intact = prepare.filter(|p| p.op() == op && p.verify() && p.header.parent == parent);
    match (intact, header) {
        (Some(p), Some(h)) if h != p.checksum() => SlotCase::Faulty,
        (Some(_), _) => SlotCase::Intact,
        (None, Some(_)) => SlotCase::Faulty,
        (None, None) => SlotCase::Torn,
    }
}

#[derive(Debug, Clone)]
// Inputs are built once and moved straight into `step`; boxing the message would only add an
// allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    Message(Envelope),
    /// One tick (10 ms) of logical time; `now` is the driver's clock in µs, used only to stamp
    /// prepares (clamped to be monotonic).
    Tick {
        now: u64,
    },
    /// A write issued as `io` is durable.
    WriteDone {
        io: u64,
    },
}

#[derive(Debug, Clone)]
pub enum Output {
    Send(Envelope),
    /// Persist one WAL entry in `slot` (its op modulo the WAL's size).
    WriteWal {
        io: u64,
        slot: u64,
        prepare: Prepare,
    },
    /// Persist a checkpoint's state (no superblock names it yet; a later superblock write
    /// will, once this one is done).
    WriteCheckpoint {
        io: u64,
        checkpoint: Box<Checkpoint>,
    },
    /// Persist the superblock alone.
    WriteSuperblock {
        io: u64,
        superblock: Superblock,
    },
    /// Atomically: the superblock, removal of every WAL entry above `truncate_after`, and the
    /// given entries with their slots (a log installed by a view change).
    WriteLog {
        io: u64,
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(u64, Prepare)>,
    },
    Event(Event),
}

/// Things the simulator's checkers and coverage counters watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An op was applied. `executed` is false when its (client, request) had already run.
    Committed {
        op: Op,
        checksum: u128,
        parent: u128,
        body_checksum: u128,
        digest: u128,
        client: ClientId,
        session: u64,
        request: u64,
        executed: bool,
    },
    /// Registering a session evicted `client`'s.
    SessionEvicted {
        client: ClientId,
    },
    ViewChangeStarted {
        view: View,
    },
    /// Became normal in `view`; `primary` says whether as its primary.
    Normal {
        view: View,
        primary: bool,
    },
    /// Installed a log that replaced `replaced` uncommitted ops of its own.
    LogReplaced {
        replaced: u64,
    },
    Retransmit {
        op: Op,
    },
    StateTransfer {
        entries: u64,
    },
    DuplicateRequest,
    /// The primary gave up its view for lack of acknowledgements.
    Abdicated {
        view: View,
    },
    /// Took a checkpoint after applying `op`; `digest` is the state machine's there.
    Checkpointed {
        op: Op,
        digest: u128,
    },
    /// Sent a DoViewChange vouching for `unreadable` ops it can no longer read.
    VotedDamaged {
        unreadable: u64,
    },
    /// As a new primary, dropped the uncommitted ops from `op` on (`ops` of them): nobody could
    /// supply `op`'s prepare and a nack quorum proved it never committed.
    NackTruncated {
        op: Op,
        ops: u64,
    },
    /// Restored the prepare of a damaged WAL slot from a peer.
    Repaired {
        op: Op,
    },
    /// Replaced its state with a peer's checkpoint at `op`.
    StateSynced {
        op: Op,
        digest: u128,
    },
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
    /// (view, log view) of the newest durable superblock; `None` before the first one lands.
    durable: Option<(View, View)>,
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
    /// (client, session, request, body) waiting for room in the pipeline.
    requests: VecDeque<(ClientId, u64, u64, Vec<u8>)>,
    svc: BTreeSet<ReplicaId>,
    dvc: BTreeMap<ReplicaId, Vote>,
    dvc_sent: bool,
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
    jitter: u64,
    rng: u64,
    last_timestamp: u64,
    now: u64,
    out: Vec<Output>,
}

/// What a replica that found a damaged WAL slot at recovery promised and still holds. Its
/// header ring names every prepare it wrote completely — everything it may have acknowledged —
/// so once those ops are back, byte for byte, its durable log is what it was and it may vote
/// again, without waiting for a StartView.
#[derive(Debug, Clone)]
struct Repair {
    /// op → checksum, contiguous from the damaged slot (acks are cumulative: nothing after a
    /// slot that was never completely written can have been acknowledged).
    promised: BTreeMap<Op, u128>,
    /// Promised ops whose own slot is intact, waiting for the ones before them.
    spare: BTreeMap<Op, Prepare>,
}

impl Repair {
    fn from_disk(
        damaged: Op,
        wal: &BTreeMap<u64, Prepare>,
        headers: &BTreeMap<u64, (Op, u128)>,
        cfg: &Config,
        base: Op,
    ) -> Self {
        let mut promised = BTreeMap::new();
        let mut spare = BTreeMap::new();
        let mut op = damaged;
        while op <= base + cfg.wal_slots {
            let Some(checksum) = header_of(headers, cfg, op) else {
                break;
            };
            promised.insert(op, checksum);
            if let Some(prepare) = wal
                .get(&cfg.slot(op))
                .filter(|p| p.op() == op && p.checksum() == checksum && p.verify())
            {
                spare.insert(op, prepare.clone());
            }
            op += 1;
        }
        Self { promised, spare }
    }

    fn last(&self) -> Op {
        self.promised.keys().next_back().copied().unwrap_or(0)
    }

    /// What is left to repair once a checkpoint at `op` covers everything up to it.
    fn after(mut self, op: Op) -> Self {
        Self {
            promised: self.promised.split_off(&(op + 1)),
            spare: self.spare.split_off(&(op + 1)),
        }
    }
}

#[derive(Debug, Clone)]
enum PendingWrite {
    Wal {
        op: Op,
        checksum: u128,
    },
    Superblock(Superblock),
    Log {
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(Op, u128)>,
    },
    Checkpoint {
        op: Op,
    },
}

impl<S: StateMachine> Replica<S> {
    /// Starts a replica on what its storage holds. An empty disk is a fresh cluster member
    /// (normal in view 0); anything else is a restart, which waits to learn the current view.
    pub fn open(cfg: Config, disk: DiskImage, mut sm: S) -> Self {
        let root = Prepare::root(cfg.cluster, cfg.group, cfg.epoch);
        // Without a durable superblock this replica never sent anything (sends wait for it), so
        // nothing in its WAL was ever acknowledged: it starts as a fresh member.
        // No copy that verifies is no superblock: nothing was ever sent (the copies keep one of
        // the newest completed write readable; see `superblock.rs`).
        let durable_superblock = Superblock::newest(&disk.superblocks);
        let (wal, headers) = if durable_superblock.is_some() {
            (disk.wal, disk.headers)
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };
        let superblock = durable_superblock.unwrap_or(Superblock {
            sequence: 0,
            view: 0,
            log_view: 0,
            commit: 0,
            checkpoint: 0,
            checksum: 0,
        });
        let mut faulty = false;
        let mut repair = None;
        let mut anchor = root;
        let mut client_table = BTreeMap::new();
        let mut checkpoints = BTreeMap::new();
        if superblock.checkpoint > 0 {
            let named = disk
                .checkpoint
                .filter(|c| c.op() == superblock.checkpoint && c.verify());
            match named {
                Some(checkpoint) if sm.restore(&checkpoint.state).is_ok() => {
                    anchor = checkpoint.anchor.clone();
                    client_table = checkpoint.clients.iter().cloned().collect();
                    checkpoints.insert(checkpoint.op(), checkpoint);
                }
                // The checkpoint rotted: no state to start from and no log that chains. The
                // replica sits view changes out (`sits_out`) until a peer's checkpoint (state
                // sync) and a StartView repair it.
                _ => faulty = true,
            }
        }
        let mut log = Log::new(anchor);
        while !faulty && log.tail() < log.base() + cfg.wal_slots {
            let op = log.tail() + 1;
            let header = header_of(&headers, &cfg, op);
            let prepare = wal.get(&cfg.slot(op));
            match classify_slot(op, log.head().checksum(), prepare, header) {
                SlotCase::Intact => match prepare {
                    Some(prepare) => log.push(prepare.clone()),
                    None => break,
                },
                SlotCase::Torn => break,
                SlotCase::Faulty => {
                    faulty = true;
                    repair = Some(Repair::from_disk(op, &wal, &headers, &cfg, log.base()));
                }
            }
        }
        // A prepare without its header is intact but not vouched for: if it rotted later,
        // recovery could no longer tell it from a torn write. It counts as durable (and may be
        // acknowledged) only once its header is rewritten, below.
        let vouched = |p: &&Prepare| header_of(&headers, &cfg, p.op()) == Some(p.checksum());
        let durable_ops: BTreeMap<Op, (u128, u64)> = log
            .after(log.base())
            .iter()
            .take_while(vouched)
            .map(|p| (p.op(), (p.checksum(), 0)))
            .collect();
        let op_durable = log.base() + durable_ops.len() as Op;
        let base = log.base();
        let status = if durable_superblock.is_some() {
            Status::Recovering
        } else {
            Status::Normal
        };
        let rng = cfg.seed ^ (cfg.replica as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A;
        let mut replica = Self {
            sm,
            status,
            view: superblock.view,
            log_view: superblock.log_view,
            log,
            commit_min: base,
            commit_max: base,
            durable: Some((superblock.view, superblock.log_view)),
            superblock_sequence: superblock.sequence,
            superblock_queued: false,
            op_durable,
            durable_ops,
            writes: BTreeMap::new(),
            next_io: 0,
            client_table,
            checkpoint_durable: superblock.checkpoint,
            checkpoint_named: superblock.checkpoint,
            checkpoints,
            wal_issued: op_durable,
            syncing: None,
            sync_view: None,
            last_sync_request: 0,
            acked: BTreeMap::new(),
            requests: VecDeque::new(),
            svc: BTreeSet::new(),
            dvc: BTreeMap::new(),
            dvc_sent: false,
            view_change_bodies: BTreeMap::new(),
            last_body_request: 0,
            faulty,
            repair_until: None,
            repair,
            tick: 0,
            heard_from_primary: 0,
            status_since: 0,
            last_commit_broadcast: 0,
            last_retransmit: 0,
            last_state_request: 0,
            last_view_request: 0,
            last_view_change_message: 0,
            last_progress: 0,
            sent_at: BTreeMap::new(),
            deferred: Vec::new(),
            jitter: 0,
            rng,
            last_timestamp: 0,
            now: 0,
            out: Vec::new(),
            cfg,
        };
        replica.jitter = replica.random() % (replica.cfg.primary_timeout / 2 + 1);
        if durable_superblock.is_none() {
            // A fresh member makes view 0 durable before it says anything.
            replica.durable = None;
            replica.write_superblock();
        }
        // Rewrite (prepare and header) every recovered op past the vouched prefix.
        replica.write_pending();
        // Ops committed before the crash are applied again to rebuild the state machine.
        let recovered_commit = superblock.commit.min(replica.log_tail()).max(base);
        replica.commit_max = recovered_commit;
        replica.apply_committed();
        // Recovery's own applies are not news; the writes issued at open are.
        replica.out.retain(|o| !matches!(o, Output::Event(_)));
        replica
    }

    /// Feeds one input; returns the effects to carry out, in order.
    /// Effects produced while opening (the first superblock write of a fresh member).
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    pub fn step(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Tick { now } => self.on_tick(now),
            Input::WriteDone { io } => self.on_write_done(io),
            Input::Message(envelope) => self.on_envelope(envelope),
        }
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
    pub fn op_durable(&self) -> Op {
        self.op_durable
    }
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }
    pub fn replica(&self) -> ReplicaId {
        self.cfg.replica
    }
    pub fn state_machine(&self) -> &S {
        &self.sm
    }
    pub fn is_primary(&self) -> bool {
        self.status == Status::Normal
            && primary_of(self.view, self.cfg.replica_count) == self.cfg.replica
    }
    /// Checksum of the prepare at `op`, if held.
    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        self.log.checksum_at(op)
    }

    fn primary(&self) -> ReplicaId {
        primary_of(self.view, self.cfg.replica_count)
    }

    fn random(&mut self) -> u64 {
        // splitmix64: small, fast, and ours, so seeds replay across dependency upgrades.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    // ---- sending -------------------------------------------------------------------------

    fn envelope(&self, to: Node, message: Message) -> Envelope {
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
    fn send(&mut self, to: ReplicaId, message: Message) {
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
    fn send_now(&mut self, to: Node, message: Message) {
        let envelope = self.envelope(to, message);
        self.out.push(Output::Send(envelope));
    }

    fn broadcast(&mut self, message: Message) {
        for r in 0..self.cfg.replica_count {
            if r != self.cfg.replica {
                self.send(r, message.clone());
            }
        }
    }

    fn view_durable(&self) -> bool {
        self.durable == Some((self.view, self.log_view))
    }

    fn flush_deferred(&mut self) {
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

    // ---- storage ---------------------------------------------------------------------------

    fn io(&mut self) -> u64 {
        self.next_io += 1;
        // Unique across restarts of this replica object family: the sequence of superblocks.
        (self.superblock_sequence << 32) | self.next_io
    }

    fn superblock(&mut self) -> Superblock {
        self.superblock_sequence += 1;
        Superblock {
            sequence: self.superblock_sequence,
            view: self.view,
            log_view: self.log_view,
            // Recovery re-applies the WAL up to this commit, so it may not pass what the WAL
            // holds of our log — nor, while a sync's checkpoint is not yet durable, the
            // checkpoint recovery would start from (the WAL then holds another history).
            commit: match self.syncing {
                Some(_) => self.checkpoint_durable,
                None => self.commit_max.min(self.op_durable),
            },
            checkpoint: self.checkpoint_named,
            checksum: 0,
        }
        .sealed()
    }

    fn write_superblock(&mut self) {
        // One superblock may not overtake a log install still in flight: it would name the
        // installed log view while the WAL still holds the previous log, and a crash (or a
        // DoViewChange taken from the durable state) would pair that log view with the wrong
        // log (seed 9011539). The write waits and is issued, with the then-current view, when
        // the install lands.
        if self
            .writes
            .values()
            .any(|w| matches!(w, PendingWrite::Log { .. }))
        {
            self.superblock_queued = true;
            return;
        }
        let superblock = self.superblock();
        let io = self.io();
        self.writes.insert(io, PendingWrite::Superblock(superblock));
        self.out.push(Output::WriteSuperblock { io, superblock });
    }

    /// The highest op the WAL may hold: one more would overwrite a slot whose op is not yet
    /// covered by a durable checkpoint.
    fn wal_limit(&self) -> Op {
        self.checkpoint_durable + self.cfg.wal_slots
    }

    /// Issues the WAL writes of every op of the log not yet written that fits in the WAL.
    /// Ops beyond it wait in memory (unacknowledged) for the next durable checkpoint.
    fn write_pending(&mut self) {
        self.wal_issued = self.wal_issued.max(self.log.base());
        let end = self.log.tail().min(self.wal_limit());
        while self.wal_issued < end {
            let op = self.wal_issued + 1;
            let Some(prepare) = self.log.get(op).cloned() else {
                return;
            };
            let io = self.io();
            self.writes.insert(
                io,
                PendingWrite::Wal {
                    op,
                    checksum: prepare.checksum(),
                },
            );
            let slot = self.cfg.slot(op);
            self.out.push(Output::WriteWal { io, slot, prepare });
            self.wal_issued = op;
        }
    }

    fn write_log(&mut self, truncate_after: Op) {
        let superblock = self.superblock();
        let io = self.io();
        let limit = self.wal_limit();
        let entries: Vec<(u64, Prepare)> = self
            .log
            .after(truncate_after)
            .iter()
            .take_while(|p| p.op() <= limit)
            .map(|p| (self.cfg.slot(p.op()), p.clone()))
            .collect();
        self.wal_issued = entries.last().map_or(truncate_after, |(_, p)| p.op());
        self.writes.insert(
            io,
            PendingWrite::Log {
                superblock,
                truncate_after,
                entries: entries
                    .iter()
                    .map(|(_, p)| (p.op(), p.checksum()))
                    .collect(),
            },
        );
        self.out.push(Output::WriteLog {
            io,
            superblock,
            truncate_after,
            entries,
        });
    }

    fn on_write_done(&mut self, io: u64) {
        let Some(write) = self.writes.remove(&io) else {
            return;
        };
        match write {
            PendingWrite::Wal { op, checksum } => {
                if self
                    .durable_ops
                    .get(&op)
                    .is_none_or(|(_, written_by)| *written_by < io)
                {
                    self.durable_ops.insert(op, (checksum, io));
                }
            }
            PendingWrite::Superblock(sb) => self.superblock_durable(sb),
            PendingWrite::Checkpoint { op } => {
                // Its state is on disk: superblocks may name it from now on.
                if op > self.checkpoint_named {
                    self.checkpoint_named = op;
                    self.write_superblock();
                } else if op == self.checkpoint_durable {
                    // The superblock already names it: a sync rewrote a checkpoint that had
                    // rotted on our disk, and it is durable again now.
                    self.checkpoint_became_durable();
                }
            }
            PendingWrite::Log {
                superblock,
                truncate_after,
                entries,
            } => {
                self.durable_ops
                    .retain(|op, (_, written_by)| *op <= truncate_after || *written_by > io);
                for (op, checksum) in entries {
                    if self
                        .durable_ops
                        .get(&op)
                        .is_none_or(|(_, written_by)| *written_by < io)
                    {
                        self.durable_ops.insert(op, (checksum, io));
                    }
                }
                self.superblock_durable(superblock);
                if self.superblock_queued {
                    self.superblock_queued = false;
                    self.write_superblock();
                }
            }
        }
        self.advance_op_durable();
        self.flush_deferred();
    }

    fn superblock_durable(&mut self, sb: Superblock) {
        if self.durable.is_none_or(|d| (sb.view, sb.log_view) > d) {
            self.durable = Some((sb.view, sb.log_view));
        }
        if sb.checkpoint > self.checkpoint_durable {
            self.checkpoint_durable = sb.checkpoint;
            self.checkpoint_became_durable();
        }
    }

    /// A superblock naming a newer checkpoint landed: recovery starts there now, so the log
    /// below it is dropped, its WAL slots may be reused, and a sync that installed it is done.
    fn checkpoint_became_durable(&mut self) {
        let op = self.checkpoint_durable;
        if self.checkpoints.get(&op).map(|c| c.anchor.checksum()) == self.log.checksum_at(op) {
            self.log.trim_below(op);
        }
        let base = self.log.base();
        self.checkpoints = self.checkpoints.split_off(&base);
        self.durable_ops = self.durable_ops.split_off(&(base + 1));
        if self.syncing.is_some_and(|synced| synced <= op) {
            self.syncing = None;
        }
        self.resume_start_view();
        self.write_pending();
        self.prepare_queued();
    }

    /// Asks again for the StartView a missing checkpoint interrupted, once that checkpoint is
    /// durable.
    fn resume_start_view(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        if let Some(view) = self.sync_view.take() {
            self.last_view_request = 0;
            self.request_start_view(view);
        }
    }

    fn advance_op_durable(&mut self) {
        let before = self.op_durable;
        // Ops up to the durable checkpoint are in its state; the anchor counts as durable (see
        // `syncing` for the one case where it is not yet, and acks wait).
        let mut op = self
            .op_durable
            .max(self.checkpoint_durable)
            .max(self.log.base())
            .min(self.log.tail());
        while let Some(prepare) = self.log.get(op + 1) {
            if self
                .durable_ops
                .get(&(op + 1))
                .map(|(checksum, _)| *checksum)
                != Some(prepare.checksum())
            {
                break;
            }
            op += 1;
        }
        self.op_durable = op;
        if self.repair_until.is_some_and(|until| op >= until) {
            self.faulty = false;
            self.repair_until = None;
            self.repair = None;
        }
        if op > before || self.status == Status::Normal {
            self.acknowledge();
        }
    }

    /// Reports `op_durable` to the primary (or counts it, as the primary).
    fn acknowledge(&mut self) {
        // An ack, the primary's own included, promises the view too: not before it is durable.
        if self.status != Status::Normal
            || self.op_durable == 0
            || !self.view_durable()
            || self.syncing.is_some()
        {
            return;
        }
        let op = self.op_durable;
        if self.is_primary() {
            self.on_ack(self.cfg.replica, op);
        } else {
            let Some(checksum) = self.log.checksum_at(op) else {
                return;
            };
            let primary = self.primary();
            self.send(
                primary,
                Message::PrepareOk {
                    view: self.view,
                    op,
                    checksum,
                    replica: self.cfg.replica,
                },
            );
        }
    }

    // ---- ticks -----------------------------------------------------------------------------

    fn on_tick(&mut self, now: u64) {
        self.tick += 1;
        self.now = now;
        match self.status {
            Status::Normal if self.is_primary() => {
                if self.tick - self.last_commit_broadcast >= self.cfg.commit_interval {
                    self.last_commit_broadcast = self.tick;
                    let commit = self.commit_max;
                    self.broadcast(Message::Commit {
                        view: self.view,
                        commit,
                    });
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
                }
            }
            Status::Recovering => {
                if !self.sits_out()
                    && self.tick - self.status_since >= self.cfg.recovery_timeout + self.jitter
                {
                    self.start_view_change(self.view + 1);
                } else if self.tick - self.last_view_request >= self.cfg.prepare_timeout {
                    self.last_view_request = self.tick;
                    let view = self.view;
                    let replica = self.cfg.replica;
                    self.broadcast(Message::RequestStartView {
                        view,
                        replica,
                        nonce: self.tick,
                    });
                    if self.faulty {
                        self.request_repair();
                    }
                    // A replica sitting view changes out may have made a view durable that the
                    // cluster never reached; nobody will send it a StartView for it. Announcing
                    // the view (a StartViewChange carries no log, so this is no vote) draws the
                    // others into it, and the view's StartView then repairs us.
                    if self.sits_out() && self.tick - self.status_since >= self.cfg.recovery_timeout
                    {
                        self.broadcast(Message::StartViewChange { view, replica });
                    }
                }
            }
        }
    }

    /// Resends every uncommitted prepare directly to each replica that has not acked it.
    fn retransmit(&mut self) {
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

    fn request_state(&mut self) {
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

    fn request_start_view(&mut self, view: View) {
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
            };
            self.send_now(Node::Replica(primary), message);
        }
    }

    // ---- messages --------------------------------------------------------------------------

    fn on_envelope(&mut self, envelope: Envelope) {
        if envelope.cluster != self.cfg.cluster
            || envelope.group != self.cfg.group
            || envelope.epoch != self.cfg.epoch
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
            Message::RequestStartView { view, replica, .. } => {
                if self.is_primary() && self.view >= view {
                    let log = self.log.entries().to_vec();
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
            } => {
                // Our log, or the intact promised prepares a repair of ours holds back.
                let spare = self.repair.as_ref().and_then(|r| r.spare.get(&op));
                let held = [self.log.get(op), spare]
                    .into_iter()
                    .flatten()
                    .find(|p| p.checksum() == checksum);
                if let Some(prepare) = held.filter(|_| replica != self.cfg.replica).cloned() {
                    self.send_now(Node::Replica(replica), Message::RepairPrepare { prepare });
                }
            }
            Message::RepairPrepare { prepare } => {
                self.on_view_change_body(&prepare);
                self.on_repair_prepare(prepare);
            }
            Message::Reply { .. } | Message::Evicted { .. } => {}
        }
    }

    fn on_request(&mut self, client: ClientId, session: u64, request: u64, body: Vec<u8>) {
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
        self.requests.push_back((client, session, request, body));
        self.prepare_queued();
    }

    fn prepare_queued(&mut self) {
        while self.is_primary()
            && (self.log_tail() - self.commit_max) < self.cfg.pipeline_max as u64
            && self.log_tail() < self.wal_limit()
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
            self.sent_at.insert(op, self.tick);
            self.log.push(prepare.clone());
            for target in forward_targets(
                self.cfg.route,
                self.cfg.replica_count,
                self.view,
                self.cfg.replica,
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

    fn on_prepare(&mut self, view: View, prepare: Prepare) {
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
            // Cut-through: forward before our own write.
            for target in forward_targets(
                self.cfg.route,
                self.cfg.replica_count,
                self.view,
                self.cfg.replica,
            ) {
                self.send(
                    target,
                    Message::Prepare {
                        view,
                        prepare: prepare.clone(),
                    },
                );
            }
            let commit = prepare.header.commit;
            self.log.push(prepare);
            self.write_pending();
            self.advance_commit(commit);
        } else {
            self.request_state();
        }
    }

    fn on_ack(&mut self, replica: ReplicaId, op: Op) {
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

    fn on_commit(&mut self, view: View, commit: Op) {
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
        }
    }

    fn on_new_state(&mut self, view: View, entries: Vec<Prepare>, commit: Op) {
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

    fn advance_commit(&mut self, commit: Op) {
        self.commit_max = self.commit_max.max(commit);
        self.apply_committed();
    }

    /// Applies every committed op held, in order; the primary replies to clients. Registrations
    /// open sessions (evicting the one that committed longest ago when the table is full); a
    /// request executes only in its live session and only once.
    fn apply_committed(&mut self) {
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
                    self.sm.apply(op, client, &prepare.body)
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

    // ---- checkpoints and state sync --------------------------------------------------------

    /// Snapshots the state just after applying `anchor`'s op and writes it. Every replica
    /// checkpoints at the same ops, so their digests there must agree (the simulator checks).
    fn take_checkpoint(&mut self, anchor: Prepare) {
        let op = anchor.op();
        let digest = self.sm.digest();
        let clients = self
            .client_table
            .iter()
            .map(|(c, s)| (*c, s.clone()))
            .collect();
        let checkpoint = Checkpoint::new(anchor, self.sm.snapshot(), digest, clients);
        self.write_checkpoint(checkpoint);
        self.event(Event::Checkpointed { op, digest });
    }

    fn write_checkpoint(&mut self, checkpoint: Checkpoint) {
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
    fn send_checkpoint(&mut self, to: ReplicaId, have: Op) {
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
    fn request_sync(&mut self, from: ReplicaId) {
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
    fn on_sync(&mut self, checkpoint: Checkpoint) {
        let op = checkpoint.op();
        let header = &checkpoint.anchor.header;
        // Older than the checkpoint our superblock names (possible only when that one rotted,
        // and our state is empty): no superblock may name it, so the sync could never become
        // durable. We wait for a peer's checkpoint at least as new as ours.
        if op <= self.commit_min
            || op < self.checkpoint_durable
            || !checkpoint.verify()
            || header.cluster != self.cfg.cluster
            || header.group != self.cfg.group
            || header.epoch != self.cfg.epoch
            || self.sm.restore(&checkpoint.state).is_err()
        {
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
        self.write_checkpoint(checkpoint);
        self.event(Event::StateSynced { op, digest });
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

    /// Asks every peer for the first promised op our log lacks.
    fn request_repair(&mut self) {
        let next = self.log.tail() + 1;
        if let Some(&checksum) = self.repair.as_ref().and_then(|r| r.promised.get(&next)) {
            self.ask_peers_for_prepare(next, checksum);
        }
    }

    /// Asks every peer for the prepare `checksum` at `op`; whoever holds it answers
    /// (`RepairPrepare`), in any view: the checksum names the prepare.
    fn ask_peers_for_prepare(&mut self, op: Op, checksum: u128) {
        let replica = self.cfg.replica;
        for to in (0..self.cfg.replica_count).filter(|&to| to != replica) {
            self.send_now(
                Node::Replica(to),
                Message::RequestPrepare {
                    op,
                    checksum,
                    replica,
                },
            );
        }
    }

    /// A peer's copy of a promised prepare: appended (with any intact ones after it) and
    /// written. When every promised op is back and durable the replica is whole again.
    fn on_repair_prepare(&mut self, prepare: Prepare) {
        let Some(repair) = self.repair.as_mut() else {
            return;
        };
        let op = prepare.op();
        if op != self.log.tail() + 1
            || repair.promised.get(&op) != Some(&prepare.checksum())
            || !prepare.verify()
            || prepare.header.parent != self.log.head().checksum()
        {
            return;
        }
        self.log.push(prepare);
        while let Some(next) = repair.spare.remove(&(self.log.tail() + 1)) {
            if next.header.parent != self.log.head().checksum() {
                break;
            }
            self.log.push(next);
        }
        let last = repair.last();
        self.event(Event::Repaired { op });
        self.write_pending();
        if self.log.tail() >= last {
            // Whole once these writes land (`advance_op_durable` clears `faulty` and the
            // repair; until then our votes still mark the ops not yet durable unreadable).
            self.repair_until = Some(last);
            self.advance_op_durable();
        } else {
            self.request_repair();
        }
    }

    /// Faulty, and no longer knows exactly what it promised (a rotten checkpoint, or a sync or
    /// a StartView replaced the log its header ring describes, and that log is not durable
    /// yet): it takes no part in view changes.
    fn sits_out(&self) -> bool {
        self.faulty && self.repair.is_none()
    }

    /// May send (and, as a new primary, count) DoViewChanges. A faulty replica that knows what
    /// it promised may: its vote marks the ops it cannot read. A sync not yet durable may not:
    /// a crash would take its state back behind the log it would vote with.
    fn may_vote(&self) -> bool {
        !self.sits_out() && self.syncing.is_none()
    }

    /// Our vote: the durable log, and the ops after it we may have acknowledged and cannot
    /// read — a faulty replica's promised ops not yet durable again.
    fn vote(&self) -> Vote {
        // Only what is durable counts: our acks promised exactly that much, and after a crash
        // this is all we would have. The log view must be the durable one too: a log installed
        // by a view change becomes ours only when its atomic write lands, so until then our
        // durable log is the previous view's, of which `op_durable` covers the common prefix.
        // The log starts at our checkpoint: everything below it is committed.
        let log = self.log.up_to(self.op_durable);
        let unreadable = match &self.repair {
            Some(repair) => (self.op_durable + 1..=repair.last())
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
            log_view: self.durable.map_or(0, |(_, log_view)| log_view),
            log,
            unreadable,
            commit: self.commit_max,
        }
    }

    // ---- view change -----------------------------------------------------------------------

    fn start_view_change(&mut self, view: View) {
        self.view = view;
        self.status = Status::ViewChange;
        self.status_since = self.tick;
        self.svc = BTreeSet::from([self.cfg.replica]);
        self.dvc.clear();
        self.dvc_sent = false;
        self.view_change_bodies.clear();
        self.last_body_request = 0;
        self.acked.clear();
        self.jitter = self.random() % (self.cfg.view_change_timeout / 2 + 1);
        self.event(Event::ViewChangeStarted { view });
        self.write_superblock();
        self.resend_view_change_messages();
        self.maybe_send_do_view_change();
    }

    fn resend_view_change_messages(&mut self) {
        self.last_view_change_message = self.tick;
        let (view, replica) = (self.view, self.cfg.replica);
        self.broadcast(Message::StartViewChange { view, replica });
        // Also the first time after an abstention (faulty, or a sync not yet durable) ends.
        self.dvc_sent = false;
        self.maybe_send_do_view_change();
    }

    fn on_start_view_change(&mut self, view: View, replica: ReplicaId) {
        if self.sits_out()
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

    fn maybe_send_do_view_change(&mut self) {
        if self.status != Status::ViewChange
            || self.dvc_sent
            || !self.may_vote()
            || self.svc.len() < quorums::view_change(self.cfg.replica_count)
        {
            return;
        }
        self.dvc_sent = true;
        let (view, replica) = (self.view, self.cfg.replica);
        let vote = self.vote();
        if !vote.unreadable.is_empty() {
            let unreadable = vote.unreadable.len() as u64;
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

    fn on_do_view_change(&mut self, view: View, vote: Vote, replica: ReplicaId) {
        if !self.may_vote()
            || view < self.view
            || primary_of(view, self.cfg.replica_count) != self.cfg.replica
        {
            return;
        }
        if view > self.view {
            self.start_view_change(view);
        }
        if self.status != Status::ViewChange
            || !valid_chain(&vote.log)
            || vote.unreadable.len() as u64 > self.cfg.wal_slots
        {
            return;
        }
        self.dvc.insert(replica, vote);
        self.try_lead();
    }

    /// As the new primary: once the DoViewChange quorum is complete, installs the best log
    /// and starts the view.
    fn try_lead(&mut self) {
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
            view: self.view,
            primary: true,
        });
        let log = self.log.entries().to_vec();
        self.broadcast(Message::StartView {
            view: self.view,
            log,
            commit,
        });
        self.advance_commit(commit);
        self.last_retransmit = self.tick;
        self.last_progress = self.tick;
        // The StartView carried the uncommitted suffix: count that as its sending.
        self.sent_at = (self.commit_max + 1..=self.log_tail())
            .map(|op| (op, self.tick))
            .collect();
        self.advance_op_durable();
    }

    /// The winning vote's log with a prepare for every op it vouches for. Its unreadable ops are
    /// taken from any vote that holds them, our own log, or a peer's answer to our request. An
    /// op nobody has supplied yet is waited for (`None`) — unless it is above the new view's
    /// commit and a nack quorum proves it never committed: then it and every op after it (each
    /// chains to it) are dropped.
    fn winning_log(&mut self, winner: ReplicaId, commit: Op) -> Option<Vec<Prepare>> {
        let vote = self.dvc.get(&winner)?;
        let (mut log, unreadable) = (vote.log.clone(), vote.unreadable.clone());
        // Unreadable ops at or below another voter's checkpoint are committed state nobody
        // keeps as prepares any more: when that checkpoint's anchor is the very prepare the
        // winner vouches for there, the winning log restarts from that anchor (equal
        // checksums, equal history below it) and needs no bodies under it.
        let rebase = self
            .dvc
            .values()
            .filter_map(|v| v.log.first())
            .filter(|a| a.op() > vote.tail() && vote.checksum_at(a.op()) == Some(a.checksum()))
            .max_by_key(|a| a.op());
        if let Some(anchor) = rebase {
            log = vec![anchor.clone()];
        }
        for (op, checksum) in (vote.tail() + 1..).zip(unreadable) {
            if op <= log.last()?.op() {
                continue;
            }
            let parent = log.last()?.checksum();
            if let Some(prepare) = self
                .find_prepare(op, checksum)
                .filter(|p| p.header.parent == parent)
            {
                log.push(prepare.clone());
                continue;
            }
            let nacks = self
                .dvc
                .values()
                .filter(|vote| vote.nacks(op, checksum))
                .count();
            if op > commit && view_change::may_truncate(nacks, self.cfg.replica_count) {
                break;
            }
            self.request_prepare(op, checksum);
            return None;
        }
        Some(log)
    }

    /// A readable copy of the prepare `checksum` at `op` among what a new primary holds.
    fn find_prepare(&self, op: Op, checksum: u128) -> Option<&Prepare> {
        let spare = self.repair.as_ref().and_then(|r| r.spare.get(&op));
        self.dvc
            .values()
            .filter_map(|vote| vote.prepare(op))
            .chain(self.log.get(op))
            .chain(spare)
            .chain(self.view_change_bodies.get(&checksum))
            .find(|p| p.op() == op && p.checksum() == checksum && p.verify())
    }

    /// New primary: asks every peer for a prepare of the winning log that no vote could supply.
    fn request_prepare(&mut self, op: Op, checksum: u128) {
        if !due(
            &mut self.last_body_request,
            self.tick,
            self.cfg.prepare_timeout,
        ) {
            return;
        }
        self.ask_peers_for_prepare(op, checksum);
    }

    /// New primary: a peer's copy of a prepare the winning log lacks.
    fn on_view_change_body(&mut self, prepare: &Prepare) {
        if self.status != Status::ViewChange
            || primary_of(self.view, self.cfg.replica_count) != self.cfg.replica
            || !prepare.verify()
            || !self
                .dvc
                .values()
                .any(|vote| vote.unreadable.contains(&prepare.checksum()))
        {
            return;
        }
        self.view_change_bodies
            .insert(prepare.checksum(), prepare.clone());
        self.try_lead();
    }

    fn on_start_view(&mut self, view: View, log: Vec<Prepare>, commit: Op) {
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
            view,
            primary: false,
        });
        self.advance_commit(commit.min(self.log_tail()));
        self.advance_op_durable();
    }

    /// Replaces the log from the first op where it differs, writing the change atomically
    /// with the superblock of the new view.
    fn install_log(&mut self, log: Log) {
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
fn valid_chain(log: &[Prepare]) -> bool {
    log.first().is_some_and(Prepare::verify)
        && log.windows(2).all(|w| {
            w[1].op() == w[0].op() + 1 && w[1].verify() && w[1].header.parent == w[0].checksum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(op: Op, parent: u128) -> Prepare {
        let mut header = Prepare::root(1, 1, 0).header;
        header.op = op;
        header.parent = parent;
        Prepare::new(header, vec![op as u8; 4])
    }

    struct Nothing;
    impl StateMachine for Nothing {
        fn apply(&mut self, _: Op, _: ClientId, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn digest(&self) -> u128 {
            0
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), crate::RestoreError> {
            Ok(())
        }
    }

    /// The model check's counterexample, on the real replica: restarted with op 1 durable and
    /// acknowledged in view 0, it receives a StartView of view 0 sent before op 1 existed.
    #[test]
    fn a_stale_start_view_of_the_same_view_keeps_the_longer_log() {
        let root = Prepare::root(1, 1, 0);
        let p1 = prepare(1, root.checksum());
        let mut replica = restarted_in_view_0(
            BTreeMap::from([(1, p1.clone())]),
            BTreeMap::from([(1, (1, p1.checksum()))]),
        );
        assert_eq!(
            (replica.status(), replica.log_tail()),
            (Status::Recovering, 1)
        );
        let stale = Envelope {
            cluster: 1,
            group: 1,
            epoch: 0,
            from: Node::Replica(0),
            to: Node::Replica(2),
            message: Message::StartView {
                view: 0,
                log: vec![root],
                commit: 0,
            },
        };
        let outputs = replica.step(Input::Message(stale));
        assert_eq!(replica.status(), Status::Normal);
        assert_eq!(replica.log_tail(), 1, "op 1 must survive");
        assert_eq!(replica.checksum_at(1), Some(p1.checksum()));
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, Output::WriteLog { truncate_after, .. } if *truncate_after < 1)));
    }

    /// Completes every write at once except checkpoint writes when `hold` is set; returns the
    /// highest op written to the WAL and the held checkpoint ios.
    fn settle(
        replica: &mut Replica<Nothing>,
        mut outputs: Vec<Output>,
        hold: bool,
    ) -> (Op, Vec<u64>) {
        let (mut highest, mut held) = (0, Vec::new());
        while let Some(output) = outputs.pop() {
            let io = match output {
                Output::WriteWal { io, prepare, slot } => {
                    assert_eq!(slot, prepare.op() % replica.cfg.wal_slots);
                    highest = highest.max(prepare.op());
                    io
                }
                Output::WriteSuperblock { io, .. } | Output::WriteLog { io, .. } => io,
                Output::WriteCheckpoint { io, .. } if hold => {
                    held.push(io);
                    continue;
                }
                Output::WriteCheckpoint { io, .. } => io,
                Output::Send(_) | Output::Event(_) => continue,
            };
            outputs.extend(replica.step(Input::WriteDone { io }));
        }
        (highest, held)
    }

    fn request(session: u64, request: u64) -> Input {
        Input::Message(Envelope {
            cluster: 1,
            group: 1,
            epoch: 0,
            from: Node::Client(9),
            to: Node::Replica(0),
            message: Message::Request {
                client: 9,
                session,
                request,
                body: vec![1],
            },
        })
    }

    #[test]
    fn the_primary_never_prepares_past_the_durable_checkpoint_plus_the_wal() {
        let mut cfg = Config::new(1, 1, 0, Route::Star);
        cfg.checkpoint_interval = 4;
        cfg.wal_slots = 8;
        let mut replica = Replica::open(cfg, DiskImage::default(), Nothing);
        let opened = replica.take_outputs();
        settle(&mut replica, opened, false);
        // Register (op 1, so the session is 1), then queue twenty requests at once.
        let outputs = replica.step(request(0, 1));
        settle(&mut replica, outputs, false);
        let mut outputs = Vec::new();
        for n in 2..=21 {
            outputs.extend(replica.step(request(1, n)));
        }
        // With checkpoint writes held back no checkpoint becomes durable: ops 1..=8 fill the
        // eight slots and the primary stops there, though it committed all of them.
        let (highest, held) = settle(&mut replica, outputs, true);
        assert_eq!(highest, 8);
        assert_eq!((replica.log_tail(), replica.commit_min()), (8, 8));
        assert_eq!(replica.checkpoint_durable(), 0);
        assert_eq!(held.len(), 2, "checkpoints at ops 4 and 8");
        // Releasing them makes the checkpoint at 8 durable: the log is trimmed to it and the
        // primary goes on, eight slots further at a time.
        let mut outputs = Vec::new();
        for io in held {
            outputs.extend(replica.step(Input::WriteDone { io }));
        }
        settle(&mut replica, outputs, false);
        assert_eq!(replica.commit_min(), 21);
        assert_eq!(replica.checkpoint_durable(), 20);
        assert_eq!(replica.log_base(), 20);
    }

    /// Replica 2 of 3, restarted from a superblock of view 0 (log view 0, nothing committed,
    /// no checkpoint) with this WAL and header ring.
    fn restarted_in_view_0(
        wal: BTreeMap<u64, Prepare>,
        headers: BTreeMap<u64, (Op, u128)>,
    ) -> Replica<Nothing> {
        let superblock = Superblock {
            sequence: 3,
            view: 0,
            log_view: 0,
            commit: 0,
            checkpoint: 0,
            checksum: 0,
        };
        let disk = DiskImage {
            superblocks: vec![superblock.sealed()],
            checkpoint: None,
            wal,
            headers,
        };
        let mut replica = Replica::open(Config::new(1, 3, 2, Route::Star), disk, Nothing);
        replica.take_outputs();
        replica
    }

    /// Replica 2 of 3 restarted with op 1 intact and op 2 rotten under a header that vouches
    /// for it, in log view 0.
    fn faulty_at_op_2() -> (Replica<Nothing>, Prepare, Prepare, Prepare) {
        let root = Prepare::root(1, 1, 0);
        let p1 = prepare(1, root.checksum());
        let p2 = prepare(2, p1.checksum());
        let mut rotten = p2.clone();
        rotten.body.push(1);
        let replica = restarted_in_view_0(
            BTreeMap::from([(1, p1.clone()), (2, rotten)]),
            BTreeMap::from([(1, (1, p1.checksum())), (2, (2, p2.checksum()))]),
        );
        assert!(replica.is_faulty());
        assert_eq!(replica.log_tail(), 1);
        (replica, root, p1, p2)
    }

    fn from_replica_0(message: Message) -> Input {
        Input::Message(Envelope {
            cluster: 1,
            group: 1,
            epoch: 0,
            from: Node::Replica(0),
            to: Node::Replica(2),
            message,
        })
    }

    #[test]
    fn a_faulty_replica_votes_with_the_op_it_cannot_read_marked() {
        let (mut replica, root, p1, p2) = faulty_at_op_2();
        let mut outputs = replica.step(from_replica_0(Message::StartViewChange {
            view: 1,
            replica: 0,
        }));
        assert_eq!(replica.status(), Status::ViewChange, "it takes part");
        // Nothing is said in view 1 before view 1 is durable.
        let superblock = outputs.iter().find_map(|o| match o {
            Output::WriteSuperblock { io, .. } => Some(*io),
            _ => None,
        });
        outputs.extend(replica.step(Input::WriteDone {
            io: superblock.expect("view 1 is written"),
        }));
        let vote = outputs.iter().find_map(|o| match o {
            Output::Send(Envelope {
                message: Message::DoViewChange { vote, .. },
                ..
            }) => Some(vote.clone()),
            _ => None,
        });
        let vote = vote.expect("a DoViewChange to replica 1");
        assert_eq!(vote.log, vec![root, p1]);
        assert_eq!(
            vote.unreadable,
            vec![p2.checksum()],
            "op 2: vouched, not readable"
        );
        assert_eq!(vote.head(), 2);
    }

    #[test]
    fn a_faulty_replica_ignores_a_start_view_of_its_log_view_short_of_its_promise() {
        let (mut replica, root, p1, p2) = faulty_at_op_2();
        // Op 2 may have been acknowledged: a StartView of view 0 without it is older than it.
        let stale = Message::StartView {
            view: 0,
            log: vec![root.clone(), p1.clone()],
            commit: 0,
        };
        let outputs = replica.step(from_replica_0(stale));
        assert_eq!(replica.status(), Status::Recovering);
        assert!(!outputs.iter().any(|o| matches!(o, Output::WriteLog { .. })));
        let current = Message::StartView {
            view: 0,
            log: vec![root, p1, p2.clone()],
            commit: 0,
        };
        replica.step(from_replica_0(current));
        assert_eq!(replica.status(), Status::Normal);
        assert_eq!(replica.checksum_at(2), Some(p2.checksum()));
    }

    #[test]
    fn recovery_tells_torn_writes_from_corruption() {
        let root = Prepare::root(1, 1, 0);
        let p1 = prepare(1, root.checksum());
        let header = Some(p1.checksum());
        assert_eq!(
            classify_slot(1, root.checksum(), Some(&p1), header),
            SlotCase::Intact
        );
        // The header write was lost after the prepare landed: still intact, never acked.
        assert_eq!(
            classify_slot(1, root.checksum(), Some(&p1), None),
            SlotCase::Intact
        );
        // Nothing, or a half-written prepare without its header: a torn write, cut.
        assert_eq!(
            classify_slot(1, root.checksum(), None, None),
            SlotCase::Torn
        );
        let mut rotten = p1.clone();
        rotten.body.push(1);
        assert_eq!(
            classify_slot(1, root.checksum(), Some(&rotten), None),
            SlotCase::Torn
        );
        // A header vouches for it but the prepare rotted, is missing, or is another op's.
        assert_eq!(
            classify_slot(1, root.checksum(), Some(&rotten), header),
            SlotCase::Faulty
        );
        assert_eq!(
            classify_slot(1, root.checksum(), None, header),
            SlotCase::Faulty
        );
        let p2 = prepare(2, p1.checksum());
        assert_eq!(
            classify_slot(1, root.checksum(), Some(&p2), header),
            SlotCase::Faulty
        );
        // A valid prepare that does not chain is not ours either.
        assert_eq!(
            classify_slot(2, root.checksum(), Some(&p2), Some(p2.checksum())),
            SlotCase::Faulty
        );
    }
}
