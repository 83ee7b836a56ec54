//! What a driver feeds a replica ([`Input`]) and what the replica asks it to do ([`Output`]),
//! including the [`Event`]s the simulator's checkers and coverage counters watch.

use crate::checkpoint::Checkpoint;
use crate::message::Envelope;
use crate::prepare::Prepare;
use crate::superblock::Superblock;
use crate::{ClientId, Epoch, Op, View};

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
    /// An operator asks the primary to hand its view on (before restarting it): a primary in
    /// normal status starts a view change to the next view, as abdication does; anyone else
    /// ignores it. Nothing is lost: the next view starts from a quorum's logs as after any
    /// view change.
    StepDown,
    /// The configuration the operator wants next (a new ring). Every replica keeps the newest
    /// one; the primary of a normal view proposes it, once every joining standby has caught
    /// up, as the reconfiguration op that ends the epoch. A proposal the running configuration
    /// cannot become ([`crate::Membership::may_become`]) is ignored.
    Reconfigure(crate::Membership),
    /// Apply what a backup learned is committed from a prepare: deferred out of the prepare's
    /// own step so that its write and acknowledgement go out first (see
    /// [`crate::Replica::has_unapplied`]). A tick applies it too.
    Apply,
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
        /// The primary-assigned time the op was applied with.
        timestamp: u64,
        executed: bool,
    },
    /// Registering a session evicted `client`'s.
    SessionEvicted {
        client: ClientId,
    },
    ViewChangeStarted {
        view: View,
    },
    /// Became normal in `view` of `epoch`; `primary` says whether as its primary.
    Normal {
        epoch: Epoch,
        view: View,
        primary: bool,
    },
    /// Applied the reconfiguration op at `membership.start` and entered its epoch, in view 0,
    /// as what `role` says.
    EpochStarted {
        membership: crate::Membership,
        role: crate::membership::Role,
    },
    /// A member of a newer epoch whose log lost the epoch's start named it by checksum, and this
    /// replica held that prepare: it takes the log up to `start` as committed.
    EpochStartNamed {
        start: Op,
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
    /// The primary handed its view on because it was asked to ([`Input::StepDown`]).
    SteppedDown {
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
    /// As a new primary, took the prepare of `op` of the winning log from a peer's answer:
    /// votes carry checksums, not bodies.
    ViewChangeBodyFetched {
        op: Op,
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
