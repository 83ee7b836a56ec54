//! Checkpoints: the replicated state at a committed op, written to storage so the WAL can be
//! reused, and sent whole to a replica too far behind to catch up from anyone's log.
//!
//! A checkpoint holds the state machine's snapshot, the client table (at-most-once must survive
//! state sync: a retry of a request executed before the checkpoint still gets its cached reply
//! and never runs again) and the prepare of the checkpointed op, which the next op chains to.

use crate::checksum::checksum;
use crate::membership::Membership;
use crate::prepare::Prepare;
use crate::{ClientId, Op, View};

/// One client's session, as the at-most-once table keeps it.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSession {
    /// The op that registered the session.
    pub session: u64,
    /// The last request executed in it and its reply.
    pub request: u64,
    #[cfg_attr(feature = "serde", serde(with = "serde_bytes"))]
    pub reply: Vec<u8>,
    /// The op and view that executed it.
    pub op: Op,
    pub view: View,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The prepare of the checkpointed op.
    pub anchor: Prepare,
    /// `StateMachine::snapshot` after applying the anchor's op.
    #[cfg_attr(feature = "serde", serde(with = "serde_bytes"))]
    pub state: Vec<u8>,
    /// `StateMachine::digest` at the same point.
    pub digest: u128,
    pub clients: Vec<(ClientId, ClientSession)>,
    /// The configuration in force after applying the anchor: a replica that syncs to this
    /// checkpoint from an older epoch enters this one. [`Membership::UNSET`] in checkpoints
    /// written before reconfiguration existed.
    pub membership: Membership,
    /// Over everything above: a checkpoint that rotted, or arrived damaged, is refused.
    pub checksum: u128,
}

impl Checkpoint {
    pub fn new(
        anchor: Prepare,
        state: Vec<u8>,
        digest: u128,
        clients: Vec<(ClientId, ClientSession)>,
    ) -> Self {
        let mut checkpoint = Self {
            anchor,
            state,
            digest,
            clients,
            membership: Membership::UNSET,
            checksum: 0,
        };
        checkpoint.checksum = checkpoint.compute_checksum();
        checkpoint
    }

    /// The same checkpoint, recording the configuration in force at it.
    pub fn with_membership(mut self, membership: Membership) -> Self {
        self.membership = membership;
        self.checksum = self.compute_checksum();
        self
    }

    pub fn op(&self) -> Op {
        self.anchor.op()
    }

    pub fn verify(&self) -> bool {
        self.anchor.verify() && self.checksum == self.compute_checksum()
    }

    fn compute_checksum(&self) -> u128 {
        let mut sessions = Vec::new();
        for (client, s) in &self.clients {
            sessions.extend_from_slice(&client.to_le_bytes());
            sessions.extend_from_slice(&s.session.to_le_bytes());
            sessions.extend_from_slice(&s.request.to_le_bytes());
            sessions.extend_from_slice(&s.op.to_le_bytes());
            sessions.extend_from_slice(&s.view.to_le_bytes());
            sessions.extend_from_slice(&(s.reply.len() as u64).to_le_bytes());
            sessions.extend_from_slice(&s.reply);
        }
        let mut membership = Vec::new();
        // Only when set, so checkpoints written before it existed still verify.
        if self.membership != Membership::UNSET {
            let m = &self.membership;
            membership.extend_from_slice(&m.epoch.to_le_bytes());
            membership.extend_from_slice(&[m.replica_count, m.standby_count]);
            membership.extend_from_slice(&m.start.to_le_bytes());
        }
        let anchor = self.anchor.checksum().to_le_bytes();
        let digest = self.digest.to_le_bytes();
        let mut parts: Vec<&[u8]> = vec![&anchor, &self.state, &digest, &sessions];
        if !membership.is_empty() {
            parts.push(&membership);
        }
        checksum(&parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_breaks_the_checksum() {
        let session = ClientSession {
            session: 3,
            request: 7,
            reply: vec![1, 2],
            op: 9,
            view: 1,
        };
        let checkpoint =
            Checkpoint::new(Prepare::root(1, 1, 0), vec![4, 5], 77, vec![(42, session)]);
        assert!(checkpoint.verify());
        let mut state = checkpoint.clone();
        state.state[0] ^= 1;
        assert!(!state.verify());
        let mut reply = checkpoint.clone();
        reply.clients[0].1.reply.push(0);
        assert!(!reply.verify());
        let mut digest = checkpoint.clone();
        digest.digest += 1;
        assert!(!digest.verify());
        let epoch = checkpoint.with_membership(Membership {
            epoch: 3,
            replica_count: 5,
            standby_count: 0,
            start: 12,
        });
        assert!(epoch.verify());
        let mut shrunk = epoch;
        shrunk.membership.replica_count = 3;
        assert!(!shrunk.verify());
    }
}
