//! What a simulation replicates. The model broker (`model.rs`) is the default; the broker crate
//! plugs in its real apply code (`broker/server/tests/simulation.rs`) for a share of seeds.
//!
//! Every machine is fed the same workload (`sim/clients.rs`: model-broker operation bodies), so
//! a machine other than the model translates them into its own operations. The checker keeps
//! its own machine as the sequential reference: every replica's digest after every op must
//! equal the reference's, and every reply the reference's.

use vsr::{DiskImage, PrepareHeader, StateMachine};

pub trait SimMachine: StateMachine + Sized {
    /// What the machines of one run share (a directory for their files, say).
    type World;

    /// The run's world, from its seed.
    fn world(seed: u64) -> Self::World;

    /// Replica `replica`'s machine as it opens — at the start or after a crash — on `disk`, the
    /// replica's durable state (the core restores its checkpoint into the machine afterwards).
    fn open(world: &Self::World, replica: u8, disk: &DiskImage) -> Self;

    /// The checker's sequential reference.
    fn reference(world: &Self::World) -> Self;

    /// A checkpoint sent by replica `from` is about to reach `to`'s core, which restores it only
    /// if `to`'s data matches it: the hook fetches what `to` lacks, as a replica's driver does
    /// before handing a checkpoint on.
    fn before_checkpoint(
        _world: &Self::World,
        _to: &vsr::Replica<Self>,
        _from: u8,
        _checkpoint: &vsr::Checkpoint,
    ) {
    }

    /// Whether the machine stopped itself: it met a local failure (a full disk, say) applying
    /// a committed operation and cannot go on without diverging. The simulator crashes the
    /// replica at once, throwing away what the step produced — as a process that exits.
    fn halted(&self) -> bool {
        false
    }

    /// Once a tick, for each replica that is up: the machine may look after its own storage
    /// (scrub and repair it) and, when `may_damage` (faults are on, and the simulator lets
    /// this replica's disk be damaged, which it allows only for a minority), damage it —
    /// drawing from its world's own randomness, so the simulator's draws stay as they were.
    fn storage_tick(_world: &Self::World, _replica: u8, _machine: &Self, _may_damage: bool) {}

    /// Faults stop (the liveness phase): whatever `storage_faults` did that would keep a
    /// replica from working (a full disk) ends.
    fn heal(_world: &Self::World) {}
}

/// A header with the fields a state machine may use (op, client, session, request, timestamp,
/// checksums) — how the checker applies an op to its reference.
pub fn header_for_reference(
    op: vsr::Op,
    checksum: u128,
    body_checksum: u128,
    (client, session, request): (vsr::ClientId, u64, u64),
    timestamp: u64,
) -> PrepareHeader {
    PrepareHeader {
        checksum,
        parent: 0,
        body_checksum,
        cluster: 0,
        group: 0,
        epoch: 0,
        view: 0,
        op,
        commit: 0,
        client,
        session,
        request,
        timestamp,
    }
}

impl SimMachine for crate::model::ModelBroker {
    type World = ();

    fn world(_seed: u64) {}

    fn open(_world: &(), _replica: u8, _disk: &DiskImage) -> Self {
        Self::default()
    }

    fn reference(_world: &()) -> Self {
        Self::default()
    }
}
