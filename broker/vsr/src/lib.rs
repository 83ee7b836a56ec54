//! Viewstamped Replication Revisited as a pure state machine.
//!
//! The core never touches a socket, a file or a clock. A driver — the broker's network shell in
//! production, the `vsr-sim` simulator in tests — feeds it [`Input`]s (messages, ticks, write
//! completions) and carries out the [`Output`]s it emits (sends, durable writes, events), in
//! order. Everything the core decides is a function of its inputs, so a seeded simulator can
//! replay any execution exactly.
//!
//! See `docs/replication.md` for the protocol as implemented and what is not done yet.

pub mod checkpoint;
pub mod checksum;
pub mod config;
pub mod disk;
pub mod log;
pub mod membership;
pub mod message;
pub mod prepare;
pub mod quorums;
pub mod replica;
pub mod routing;
pub mod state_machine;
pub mod step;
pub mod superblock;
pub mod view_change;

pub use checkpoint::{Checkpoint, ClientSession};
pub use config::Config;
pub use disk::{classify_slot, superseded, DiskImage, SlotCase};
pub use membership::{Membership, Role, RECONFIGURE_CLIENT};
pub use message::{Envelope, Message, MessageKind, Node};
pub use prepare::{Prepare, PrepareHeader};
pub use replica::{Replica, Status, WrittenBodies};
pub use routing::Route;
pub use state_machine::{RestoreError, StateMachine};
pub use step::{Event, Input, Output};
pub use superblock::Superblock;

/// A replica's index in its group: its ring position (`ring.json`, contract crate).
pub type ReplicaId = iggy_contract::Position;
/// The membership epoch, as `ring.json` numbers it.
pub use iggy_contract::Epoch;
pub type Op = u64;
pub type View = u32;
pub type ClientId = u128;
