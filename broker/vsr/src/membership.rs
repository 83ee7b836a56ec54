//! Membership: who votes in which epoch, and the reconfiguration op that ends an epoch.
//!
//! A configuration is an epoch number, its member count and its standby count: members are the
//! replicas `0..replica_count`, standbys the ones right after them. Ids are ring positions, so
//! growing the ring promotes the standbys at its end and shrinking it retires its last members;
//! a member's id never moves. The configuration is replicated state: the primary of epoch `e`
//! prepares one reconfiguration op naming the next configuration, prepares nothing after it in
//! `e`, and every replica that applies it enters the next epoch (see docs/replication.md,
//! "Reconfiguration by epochs").

use crate::prepare::PrepareHeader;
use crate::{Epoch, Op, ReplicaId};

/// The client id reconfiguration ops carry: the cluster itself, never a real client (the
/// broker's client ids are hashes of session addresses, and 2^128 - 1 is reserved here).
pub const RECONFIGURE_CLIENT: u128 = u128::MAX;

/// First bytes of a reconfiguration op's body, so a damaged or foreign body is never taken
/// for a configuration.
const MAGIC: &[u8; 4] = b"VSRM";

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Membership {
    pub epoch: Epoch,
    pub replica_count: u8,
    pub standby_count: u8,
    /// The op of the reconfiguration that started this epoch (0: the first configuration).
    /// Every member of the epoch holds the log up to it: that is where the epoch begins.
    pub start: Op,
}

/// What a replica is in a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    Standby,
    /// Not in the configuration: a member that was removed, or a slot not yet added.
    Outside,
}

impl Membership {
    /// "Not recorded": what superblocks and checkpoints written before reconfiguration existed
    /// read back as. The replica then runs the configuration it was opened with.
    pub const UNSET: Membership = Membership {
        epoch: 0,
        replica_count: 0,
        standby_count: 0,
        start: 0,
    };

    pub fn role_of(&self, replica: ReplicaId) -> Role {
        if replica < self.replica_count {
            Role::Member
        } else if u16::from(replica) < u16::from(self.replica_count) + u16::from(self.standby_count)
        {
            Role::Standby
        } else {
            Role::Outside
        }
    }

    /// The body of the reconfiguration op that proposes `self` as the next configuration
    /// (`start` is not carried: it is the op's own number).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&self.epoch.to_le_bytes());
        body.push(self.replica_count);
        body.push(self.standby_count);
        body
    }

    /// The configuration a reconfiguration op proposes, started by that op; `None` for any
    /// other op.
    pub fn proposed_by(header: &PrepareHeader, body: &[u8]) -> Option<Membership> {
        if header.client != RECONFIGURE_CLIENT || body.len() != 10 || &body[..4] != MAGIC {
            return None;
        }
        let epoch = Epoch::from_le_bytes(body[4..8].try_into().ok()?);
        let (replica_count, standby_count) = (body[8], body[9]);
        (replica_count > 0).then_some(Membership {
            epoch,
            replica_count,
            standby_count,
            start: header.op,
        })
    }

    /// Whether a primary of `self` may propose `next`: a later epoch, at least one member, and
    /// every joining member already a standby here (it caught up without voting; a member that
    /// joined with an empty log could outvote the ones holding the history).
    pub fn may_become(&self, next: &Membership) -> Result<(), &'static str> {
        if next.epoch <= self.epoch {
            return Err("the proposed epoch is not newer than the running one");
        }
        if next.replica_count == 0 {
            return Err("a configuration needs at least one member");
        }
        if next.replica_count > self.replica_count
            && u16::from(next.replica_count)
                > u16::from(self.replica_count) + u16::from(self.standby_count)
        {
            return Err("a joining member must first follow the log as a standby");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare::Prepare;

    fn membership(epoch: Epoch, replica_count: u8, standby_count: u8) -> Membership {
        Membership {
            epoch,
            replica_count,
            standby_count,
            start: 0,
        }
    }

    #[test]
    fn a_reconfiguration_body_round_trips_and_nothing_else_decodes() {
        let next = membership(4, 5, 1);
        let mut header = Prepare::root(1, 1, 3).header;
        header.op = 77;
        header.client = RECONFIGURE_CLIENT;
        let decoded = Membership::proposed_by(&header, &next.encode());
        assert_eq!(decoded, Some(Membership { start: 77, ..next }));
        let mut wrong = next.encode();
        wrong[0] ^= 1;
        assert_eq!(Membership::proposed_by(&header, &wrong), None);
        header.client = 9;
        assert_eq!(Membership::proposed_by(&header, &next.encode()), None);
    }

    #[test]
    fn joining_members_must_have_been_standbys() {
        let three = membership(1, 3, 0);
        assert!(three.may_become(&membership(2, 3, 2)).is_ok());
        assert!(three.may_become(&membership(2, 5, 0)).is_err());
        assert!(membership(2, 3, 2).may_become(&membership(3, 5, 0)).is_ok());
        assert!(membership(3, 5, 0).may_become(&membership(4, 3, 0)).is_ok());
        assert!(
            three.may_become(&membership(1, 1, 0)).is_err(),
            "same epoch"
        );
        assert!(three.may_become(&membership(2, 0, 0)).is_err());
        assert_eq!(three.role_of(2), Role::Member);
        assert_eq!(membership(2, 3, 2).role_of(4), Role::Standby);
        assert_eq!(three.role_of(3), Role::Outside);
    }
}
