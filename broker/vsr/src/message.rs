//! Messages between replicas and clients. Every envelope carries the cluster id, the VSR group
//! id and the epoch; a replica drops anything addressed to another cluster or group, and what
//! comes from another epoch only tells it who is behind (see `replica::epochs`).

use crate::checkpoint::Checkpoint;
use crate::prepare::Prepare;
use crate::view_change::Vote;
use crate::{ClientId, Epoch, Op, ReplicaId, View};
use bytes::Bytes;

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Replica(ReplicaId),
    Client(ClientId),
}

/// What is being said. A DoViewChange carries its sender's log as checksums (only the anchor
/// whole). A StartView carries the new log from the last op its receiver holds alike: as its
/// vote says, or as its RequestStartView names; to anyone else, at the view's start, whole from
/// the primary's checkpoint (at most the WAL's size) (docs/replication.md, "View changes carry
/// what is lacked").
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `session` 0 registers a new session; its reply's body is the session number (the op
    /// that registered it, u64 LE), which every later request of that client carries.
    Request {
        client: ClientId,
        session: u64,
        request: u64,
        body: Bytes,
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
        #[cfg_attr(feature = "serde", serde(with = "serde_bytes"))]
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
    /// The sender's vote for `view`: its durable log by checksum, how much of it it can read,
    /// its commit.
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
    /// A restarted replica asks the primary of `view` (or later) for the current view. `holds`
    /// names ops of its log by checksum (its tail and the last op it applied): the answer
    /// starts at the highest of them the primary holds alike instead of at its checkpoint.
    RequestStartView {
        view: View,
        replica: ReplicaId,
        nonce: u64,
        holds: Vec<(Op, u128)>,
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
    /// A replica that heard from a newer epoch asks the sender how that epoch began.
    RequestStartEpoch {
        replica: ReplicaId,
    },
    /// How the sender's epoch began: its log from its checkpoint up to the reconfiguration op
    /// that started the epoch (every op of it committed). A replica of an older epoch installs
    /// it as a commit of that op seen late and enters the epoch when it applies it.
    StartEpoch {
        log: Vec<Prepare>,
    },
    /// How the sender's epoch began, when its log no longer holds the start (it restarted with
    /// the epoch's superblock and lost what followed its checkpoint): the reconfiguration op
    /// by number and checksum. That op is committed (the sender entered its epoch), so a
    /// replica of an older epoch holding that very prepare holds the committed log up to it,
    /// and takes it as committed: it enters the epoch and can then answer the sender's
    /// request for the start.
    EpochStartedAt {
        start: Op,
        checksum: u128,
    },
}

/// A message with its routing and identity fields.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
pub enum MessageKind {
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
    RequestStartEpoch,
    StartEpoch,
    EpochStartedAt,
}

impl Message {
    /// The prepares this message carries whole, bodies included: what a sender reads from its
    /// log (and the broker, from the WAL) to send it.
    pub fn prepares(&self) -> &[Prepare] {
        match self {
            Message::Prepare { prepare, .. } | Message::RepairPrepare { prepare } => {
                std::slice::from_ref(prepare)
            }
            Message::DoViewChange { vote, .. } => &vote.log,
            Message::StartView { log, .. } | Message::StartEpoch { log } => log,
            Message::NewState { entries, .. } => entries,
            Message::Sync { checkpoint } => std::slice::from_ref(&checkpoint.anchor),
            Message::Request { .. }
            | Message::Evicted { .. }
            | Message::Reply { .. }
            | Message::PrepareOk { .. }
            | Message::Commit { .. }
            | Message::StartViewChange { .. }
            | Message::RequestStartView { .. }
            | Message::GetState { .. }
            | Message::RequestSync { .. }
            | Message::RequestPrepare { .. }
            | Message::RequestStartEpoch { .. }
            | Message::EpochStartedAt { .. } => &[],
        }
    }

    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Request { .. } => MessageKind::Request,
            Message::Evicted { .. } => MessageKind::Evicted,
            Message::Reply { .. } => MessageKind::Reply,
            Message::Prepare { .. } => MessageKind::Prepare,
            Message::PrepareOk { .. } => MessageKind::PrepareOk,
            Message::Commit { .. } => MessageKind::Commit,
            Message::StartViewChange { .. } => MessageKind::StartViewChange,
            Message::DoViewChange { .. } => MessageKind::DoViewChange,
            Message::StartView { .. } => MessageKind::StartView,
            Message::RequestStartView { .. } => MessageKind::RequestStartView,
            Message::GetState { .. } => MessageKind::GetState,
            Message::NewState { .. } => MessageKind::NewState,
            Message::RequestSync { .. } => MessageKind::RequestSync,
            Message::Sync { .. } => MessageKind::Sync,
            Message::RequestPrepare { .. } => MessageKind::RequestPrepare,
            Message::RepairPrepare { .. } => MessageKind::RepairPrepare,
            Message::RequestStartEpoch { .. } => MessageKind::RequestStartEpoch,
            Message::StartEpoch { .. } => MessageKind::StartEpoch,
            Message::EpochStartedAt { .. } => MessageKind::EpochStartedAt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_prepare_a_message_carries() {
        let root = Prepare::root(1, 1, 0);
        let mut header = root.header.clone();
        header.op = 1;
        header.parent = root.checksum();
        let one = Prepare::new(header, b"body".to_vec());
        let log = vec![root.clone(), one.clone()];
        let checksums = |m: &Message| {
            m.prepares()
                .iter()
                .map(Prepare::checksum)
                .collect::<Vec<_>>()
        };
        let both = vec![root.checksum(), one.checksum()];
        // A vote carries its anchor whole and vouches for the rest by checksum.
        let vote = Vote {
            log_view: 0,
            log: vec![root.clone()],
            vouched: vec![one.checksum()],
            readable: 1,
            commit: 0,
        };
        let cases = [
            (
                Message::Prepare {
                    view: 0,
                    prepare: one.clone(),
                },
                vec![one.checksum()],
            ),
            (
                Message::RepairPrepare {
                    prepare: one.clone(),
                },
                vec![one.checksum()],
            ),
            (
                Message::DoViewChange {
                    view: 1,
                    vote,
                    replica: 0,
                },
                vec![root.checksum()],
            ),
            (
                Message::StartView {
                    view: 1,
                    log: log.clone(),
                    commit: 0,
                },
                both.clone(),
            ),
            (Message::StartEpoch { log: log.clone() }, both.clone()),
            (
                Message::NewState {
                    view: 1,
                    entries: log.clone(),
                    commit: 0,
                },
                both,
            ),
            (
                Message::Sync {
                    checkpoint: Box::new(Checkpoint::new(one.clone(), vec![], 0, vec![])),
                },
                vec![one.checksum()],
            ),
            (Message::Commit { view: 1, commit: 1 }, vec![]),
        ];
        for (message, expected) in cases {
            assert_eq!(checksums(&message), expected, "{:?}", message.kind());
        }
    }
}
