//! `ring.json`: who replicates with whom, in which order, in which membership epoch.
//!
//! The operator writes it into the ring ConfigMap; the broker reads it at start
//! (`IGGY_CLUSTER_RING_FILE`) and later from its sidecar (`POST /admin/ring`). A member's
//! position is its index in the VSR group (the primary of view `v` is position `v mod N`); its
//! id is stable for the life of its disk and never reused.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Membership version. Every change of members is a new epoch. 32 bits because the VSR core
/// carries it in every message header and hashes it into every prepare.
pub type Epoch = u32;
/// A member's stable id.
pub type MemberId = u32;
/// A member's index in the VSR group: `vsr::ReplicaId`.
pub type Position = u8;

/// The most members a ring may have: the VSR core counts replicas in one byte.
pub const MAX_MEMBERS: usize = Position::MAX as usize;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// The cluster's identity (the operator uses the IggyCluster's uid). Replicas of another
    /// cluster never exchange messages with this one.
    pub cluster_id: String,
    pub epoch: Epoch,
    pub members: Vec<RingMember>,
    /// Non-voting replicas (VSR standbys) at the positions after the members: they receive
    /// and apply everything the members commit, serve clients like backups, and are never
    /// counted in a quorum — how a joining member catches up before an epoch makes it one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<RingMember>,
    /// Lowest id never handed out, so ids of departed members are not reused.
    #[serde(default)]
    pub next_member_id: MemberId,
    /// The cluster has formed: its members hold a history. Set (and then kept) by whoever
    /// manages the ring once a quorum ran it — the operator, on its sidecars' reports. A member
    /// that then opens an empty disk lost its data rather than being new, so it votes in
    /// nothing until its peers gave it the log; otherwise its empty log could outvote an
    /// acknowledged write in the next view change. Rings past the first epoch imply it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrapped: bool,
}

impl Ring {
    /// Whether a member opening an empty disk under this ring joins an existing history.
    pub fn has_history(&self) -> bool {
        self.bootstrapped || self.epoch > 1
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RingMember {
    pub id: MemberId,
    pub position: Position,
    /// Replication endpoint, `host:port` (a stable DNS name in a cluster, never a pod IP).
    pub address: String,
    /// Where Iggy clients reach this member, `host:port`, for `GetClusterMetadata`. Absent:
    /// the replication address's host with the reporting broker's own client port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
}

/// A ring that cannot be replicated with, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring.json names no members")]
    Empty,
    #[error("ring.json names {0} members; at most {MAX_MEMBERS} fit")]
    TooMany(usize),
    #[error("ring.json has no cluster_id")]
    NoClusterId,
    #[error("ring.json names member id {0} twice")]
    DuplicateId(MemberId),
    #[error("ring.json positions must be 0..{count} with each used once; position {position} is out of place")]
    BadPosition { position: Position, count: usize },
    #[error(
        "ring.json member {id} has address {address:?}; expected host:port with a numeric port"
    )]
    BadAddress { id: MemberId, address: String },
    #[error("member id {0} is not in ring.json")]
    NotAMember(MemberId),
    #[error("no member of ring.json sits at position {0}")]
    NoMemberAt(i64),
}

impl Ring {
    /// Checks what replication relies on: at least one member, unique ids, positions exactly
    /// `0..N` for the members and `N..N + S` for the standbys, and addresses a socket can be
    /// opened to.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.members.is_empty() {
            return Err(RingError::Empty);
        }
        let total = self.members.len() + self.standbys.len();
        if total > MAX_MEMBERS {
            return Err(RingError::TooMany(total));
        }
        if self.cluster_id.trim().is_empty() {
            return Err(RingError::NoClusterId);
        }
        let mut ids = BTreeSet::new();
        let mut positions = BTreeSet::new();
        let voters = self.members.len();
        let places = self
            .members
            .iter()
            .map(|m| (m, 0..voters))
            .chain(self.standbys.iter().map(|m| (m, voters..total)));
        for (member, range) in places {
            if !ids.insert(member.id) {
                return Err(RingError::DuplicateId(member.id));
            }
            if !range.contains(&usize::from(member.position)) || !positions.insert(member.position)
            {
                return Err(RingError::BadPosition {
                    position: member.position,
                    count: total,
                });
            }
            let bad = std::iter::once(&member.address)
                .chain(member.client_address.as_ref())
                .find(|address| !valid_address(address));
            if let Some(address) = bad {
                return Err(RingError::BadAddress {
                    id: member.id,
                    address: address.clone(),
                });
            }
        }
        Ok(())
    }

    /// A member or standby by id.
    pub fn member(&self, id: MemberId) -> Result<&RingMember, RingError> {
        self.everyone()
            .find(|m| m.id == id)
            .ok_or(RingError::NotAMember(id))
    }

    /// The member or standby at `position` (a pod knows its ordinal before its member id).
    pub fn member_at(&self, position: i64) -> Result<&RingMember, RingError> {
        self.everyone()
            .find(|m| i64::from(m.position) == position)
            .ok_or(RingError::NoMemberAt(position))
    }

    /// Members, then standbys, in position order: index `i` of the result sits at position `i`
    /// of a valid ring.
    pub fn by_position(&self) -> Vec<&RingMember> {
        let mut everyone: Vec<&RingMember> = self.everyone().collect();
        everyone.sort_by_key(|m| m.position);
        everyone
    }

    fn everyone(&self) -> impl Iterator<Item = &RingMember> {
        self.members.iter().chain(&self.standbys)
    }

    /// The 128-bit cluster id every VSR message carries, derived from `cluster_id` so that all
    /// replicas compute the same one without another field to keep in step.
    pub fn vsr_cluster(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.cluster_id.as_bytes())
    }
}

/// `host:port`, `[v6]:port` or `v4:port`, with a non-empty host and a port that parses.
fn valid_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(members: &[(MemberId, Position, &str)]) -> Ring {
        Ring {
            cluster_id: "c1".into(),
            epoch: 1,
            members: members
                .iter()
                .map(|(id, position, address)| RingMember {
                    id: *id,
                    position: *position,
                    address: address.to_string(),
                    client_address: None,
                })
                .collect(),
            standbys: Vec::new(),
            next_member_id: 10,
            bootstrapped: false,
        }
    }

    #[test]
    fn standbys_sit_after_the_members_and_are_found_like_them() {
        let ring: Ring = serde_json::from_str(
            r#"{"cluster_id": "c", "epoch": 1, "members": [
                {"id": 1, "position": 0, "address": "a:8091"},
                {"id": 2, "position": 1, "address": "b:8091"}],
               "standbys": [{"id": 5, "position": 2, "address": "c:8091"}]}"#,
        )
        .expect("ring");
        assert_eq!(ring.validate(), Ok(()));
        assert_eq!(ring.member(5).map(|m| m.position), Ok(2));
        assert_eq!(ring.member_at(2).map(|m| m.id), Ok(5));
        let addresses: Vec<&str> = ring
            .by_position()
            .iter()
            .map(|m| m.address.as_str())
            .collect();
        assert_eq!(addresses, ["a:8091", "b:8091", "c:8091"]);
        // A standby among the members' positions, or an id used twice, is refused.
        let mut misplaced = ring.clone();
        misplaced.standbys[0].position = 1;
        assert!(matches!(
            misplaced.validate(),
            Err(RingError::BadPosition { position: 1, .. })
        ));
        let mut twice = ring.clone();
        twice.standbys[0].id = 2;
        assert_eq!(twice.validate(), Err(RingError::DuplicateId(2)));
        // Without standbys the JSON is what it always was.
        let mut plain = ring;
        plain.standbys.clear();
        assert!(!serde_json::to_string(&plain)
            .expect("json")
            .contains("standbys"));
    }

    #[test]
    fn members_are_found_by_id_or_by_position() {
        let ring: Ring = serde_json::from_str(
            r#"{"cluster_id": "c", "epoch": 1, "members": [
                {"id": 7, "position": 1, "address": "b:8091"},
                {"id": 4, "position": 0, "address": "a:8091"}]}"#,
        )
        .expect("ring");
        assert_eq!(ring.member_at(1).map(|m| m.id), Ok(7));
        assert_eq!(ring.member(4).map(|m| m.position), Ok(0));
        assert_eq!(ring.member_at(2), Err(RingError::NoMemberAt(2)));
        assert_eq!(ring.member_at(-1), Err(RingError::NoMemberAt(-1)));
    }

    #[test]
    fn a_well_formed_ring_validates_and_reads_as_json() {
        let ring = ring(&[
            (1, 0, "a-0.a-replicas.ns.svc:8091"),
            (2, 1, "127.0.0.2:8091"),
            (3, 2, "[::1]:8091"),
        ]);
        assert_eq!(ring.validate(), Ok(()));
        let json = r#"{"cluster_id":"c1","epoch":1,"members":[
            {"id":1,"position":0,"address":"a-0.a-replicas.ns.svc:8091"},
            {"id":2,"position":1,"address":"127.0.0.2:8091"},
            {"id":3,"position":2,"address":"[::1]:8091"}],"next_member_id":10}"#;
        assert_eq!(serde_json::from_str::<Ring>(json).expect("parses"), ring);
        assert_eq!(ring.member(2).expect("member").position, 1);
        assert_eq!(ring.member(9), Err(RingError::NotAMember(9)));
    }

    #[test]
    fn a_formed_cluster_says_so_and_later_epochs_imply_it() {
        let mut first = ring(&[(1, 0, "a:8091")]);
        assert!(!first.has_history(), "a first ring of a new cluster");
        assert!(!serde_json::to_string(&first)
            .expect("json")
            .contains("bootstrapped"));
        first.bootstrapped = true;
        let json = serde_json::to_string(&first).expect("json");
        assert!(json.contains(r#""bootstrapped":true"#), "{json}");
        let back: Ring = serde_json::from_str(&json).expect("parses");
        assert!(back.has_history());
        let mut later = ring(&[(1, 0, "a:8091")]);
        later.epoch = 2;
        assert!(later.has_history());
    }

    #[test]
    fn broken_rings_are_refused_with_the_reason() {
        assert_eq!(ring(&[]).validate(), Err(RingError::Empty));
        assert_eq!(
            ring(&[(1, 0, "a:1"), (1, 1, "b:1")]).validate(),
            Err(RingError::DuplicateId(1))
        );
        assert!(matches!(
            ring(&[(1, 0, "a:1"), (2, 0, "b:1")]).validate(),
            Err(RingError::BadPosition { position: 0, .. })
        ));
        assert!(matches!(
            ring(&[(1, 0, "a:1"), (2, 2, "b:1")]).validate(),
            Err(RingError::BadPosition { position: 2, .. })
        ));
        for address in ["a", "a:", ":8091", "a:http", "a:0", "a b:1"] {
            assert!(
                matches!(
                    ring(&[(1, 0, address)]).validate(),
                    Err(RingError::BadAddress { .. })
                ),
                "{address}"
            );
        }
    }

    #[test]
    fn the_vsr_cluster_id_follows_the_cluster_id_only() {
        let a = ring(&[(1, 0, "a:1")]);
        let mut b = ring(&[(5, 0, "b:2")]);
        b.epoch = 9;
        assert_eq!(a.vsr_cluster(), b.vsr_cluster());
        b.cluster_id = "c2".into();
        assert_ne!(a.vsr_cluster(), b.vsr_cluster());
    }

    #[test]
    fn members_come_out_in_position_order() {
        let ring = ring(&[(7, 1, "b:1"), (3, 0, "a:1")]);
        let ids: Vec<MemberId> = ring.by_position().iter().map(|m| m.id).collect();
        assert_eq!(ids, [3, 7]);
    }
}
