//! Messages between replicas and clients. Every envelope carries the cluster id, the VSR group
//! id and the epoch; a replica drops anything addressed to another cluster, group or epoch.

use crate::checkpoint::Checkpoint;
use crate::checksum::checksum;
use crate::view_change::Vote;
use crate::{ClientId, Epoch, Op, ReplicaId, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Replica(ReplicaId),
    Client(ClientId),
}

/// The header of a prepare: what the hash chain and the checkers look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrepareHeader {
    /// Checksum of every other header field (the body checksum included).
    pub checksum: u128,
    /// Checksum of the previous op's prepare: the hash chain.
    pub parent: u128,
    pub body_checksum: u128,
    pub cluster: u128,
    pub group: u32,
    pub epoch: Epoch,
    /// The view in which the primary prepared this op.
    pub view: View,
    pub op: Op,
    /// The primary's commit number when it prepared this op.
    pub commit: Op,
    pub client: ClientId,
    /// The client's session (the op that registered it); 0 for a registration itself.
    pub session: u64,
    pub request: u64,
    /// Primary-assigned time, monotonic along the chain.
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prepare {
    pub header: PrepareHeader,
    pub body: Vec<u8>,
}

impl PrepareHeader {
    fn compute_checksum(&self) -> u128 {
        checksum(&[
            &self.parent.to_le_bytes(),
            &self.body_checksum.to_le_bytes(),
            &self.cluster.to_le_bytes(),
            &self.group.to_le_bytes(),
            &self.epoch.to_le_bytes(),
            &self.view.to_le_bytes(),
            &self.op.to_le_bytes(),
            &self.commit.to_le_bytes(),
            &self.client.to_le_bytes(),
            &self.session.to_le_bytes(),
            &self.request.to_le_bytes(),
            &self.timestamp.to_le_bytes(),
        ])
    }
}

impl Prepare {
    /// The chain's root, op 0: the same on every replica of a cluster and group.
    pub fn root(cluster: u128, group: u32, epoch: Epoch) -> Self {
        Self::new(
            PrepareHeader {
                checksum: 0,
                parent: 0,
                body_checksum: 0,
                cluster,
                group,
                epoch,
                view: 0,
                op: 0,
                commit: 0,
                client: 0,
                session: 0,
                request: 0,
                timestamp: 0,
            },
            Vec::new(),
        )
    }

    /// Seals a prepare: fills in the body checksum and the header checksum.
    pub fn new(mut header: PrepareHeader, body: Vec<u8>) -> Self {
        header.body_checksum = checksum(&[&body]);
        header.checksum = header.compute_checksum();
        Self { header, body }
    }

    /// Both checksums verify.
    pub fn verify(&self) -> bool {
        self.header.body_checksum == checksum(&[&self.body])
            && self.header.checksum == self.header.compute_checksum()
    }

    pub fn op(&self) -> Op {
        self.header.op
    }

    pub fn checksum(&self) -> u128 {
        self.header.checksum
    }
}

/// What is being said. Logs in view-change messages travel from the sender's checkpoint (at
/// most the WAL's size): simple and obviously correct at the simulator's scale (see
/// docs/replication.md for the suffix-only plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `session` 0 registers a new session; its reply's body is the session number (the op
    /// that registered it, u64 LE), which every later request of that client carries.
    Request {
        client: ClientId,
        session: u64,
        request: u64,
        body: Vec<u8>,
    },
    /// The client's session was evicted (the table holds `clients_max` sessions): its requests
    /// will never execute; it must register again.
    Evicted {
        client: ClientId,
        session: u64,
    },
    Reply {
        client: ClientId,
        request: u64,
        view: View,
        op: Op,
        body: Vec<u8>,
    },
    Prepare {
        view: View,
        prepare: Prepare,
    },
    /// "I hold every op up to `op` durably, and `op` has this checksum."
    PrepareOk {
        view: View,
        op: Op,
        checksum: u128,
        replica: ReplicaId,
    },
    Commit {
        view: View,
        commit: Op,
    },
    StartViewChange {
        view: View,
        replica: ReplicaId,
    },
    /// The sender's vote for `view`: its durable log, what it cannot read of it, its commit.
    DoViewChange {
        view: View,
        vote: Vote,
        replica: ReplicaId,
    },
    StartView {
        view: View,
        log: Vec<Prepare>,
        commit: Op,
    },
    /// A restarted replica asks the primary of `view` (or later) for the current view.
    RequestStartView {
        view: View,
        replica: ReplicaId,
        nonce: u64,
    },
    /// A backup missing ops asks for everything after `after`.
    GetState {
        view: View,
        after: Op,
        replica: ReplicaId,
    },
    NewState {
        view: View,
        entries: Vec<Prepare>,
        commit: Op,
    },
    /// A replica whose state is behind every log it can reach asks for a checkpoint newer
    /// than `have`. Any replica may answer, in any view: a checkpoint is committed state.
    RequestSync {
        have: Op,
        replica: ReplicaId,
    },
    Sync {
        checkpoint: Box<Checkpoint>,
    },
    /// A replica whose WAL slot for `op` is damaged asks its peers for the prepare its header
    /// ring says it wrote there. Anyone holding it answers, in any view: the checksum names it.
    RequestPrepare {
        op: Op,
        checksum: u128,
        replica: ReplicaId,
    },
    RepairPrepare {
        prepare: Prepare,
    },
}

/// A message with its routing and identity fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub cluster: u128,
    pub group: u32,
    pub epoch: Epoch,
    pub from: Node,
    pub to: Node,
    pub message: Message,
}

/// The kind of a message, for counters, link filters and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    Request,
    Evicted,
    Reply,
    Prepare,
    PrepareOk,
    Commit,
    StartViewChange,
    DoViewChange,
    StartView,
    RequestStartView,
    GetState,
    NewState,
    RequestSync,
    Sync,
    RequestPrepare,
    RepairPrepare,
}

impl Message {
    pub fn command(&self) -> Command {
        match self {
            Message::Request { .. } => Command::Request,
            Message::Evicted { .. } => Command::Evicted,
            Message::Reply { .. } => Command::Reply,
            Message::Prepare { .. } => Command::Prepare,
            Message::PrepareOk { .. } => Command::PrepareOk,
            Message::Commit { .. } => Command::Commit,
            Message::StartViewChange { .. } => Command::StartViewChange,
            Message::DoViewChange { .. } => Command::DoViewChange,
            Message::StartView { .. } => Command::StartView,
            Message::RequestStartView { .. } => Command::RequestStartView,
            Message::GetState { .. } => Command::GetState,
            Message::NewState { .. } => Command::NewState,
            Message::RequestSync { .. } => Command::RequestSync,
            Message::Sync { .. } => Command::Sync,
            Message::RequestPrepare { .. } => Command::RequestPrepare,
            Message::RepairPrepare { .. } => Command::RepairPrepare,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_prepares_verify_and_detect_any_change() {
        let root = Prepare::root(7, 1, 0);
        let mut header = root.header.clone();
        header.parent = root.checksum();
        header.op = 1;
        header.client = 9;
        let prepare = Prepare::new(header, b"batch".to_vec());
        assert!(prepare.verify());
        let mut body_rot = prepare.clone();
        body_rot.body[0] ^= 1;
        assert!(!body_rot.verify());
        let mut header_rot = prepare.clone();
        header_rot.header.op = 2;
        assert!(!header_rot.verify());
        assert_ne!(
            Prepare::root(7, 1, 0).checksum(),
            Prepare::root(8, 1, 0).checksum()
        );
    }
}
