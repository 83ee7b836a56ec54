//! Consumer groups: members are connections; each partition of the topic is assigned to exactly
//! one member at a time, and reassigned whenever a member joins or leaves or the partition count
//! changes. Assignment is deterministic (partition `i` goes to the `i mod n`-th member in
//! [`GroupMember`] order), so every member's share is stable while the membership is — and, as
//! joins and leaves are operations of the log, every replica computes the same assignment.

use crate::error::{BrokerError, Result};
use iggy_wire::Identifier;
use std::collections::BTreeMap;

/// A member: a connection, named by the broker node it is connected to, that node's
/// incarnation (drawn at each start, so a restarted node's stale members are told apart from
/// its new ones) and the connection's client id there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GroupMember {
    pub node: u32,
    pub incarnation: u32,
    pub client: u32,
}

impl GroupMember {
    /// The member's id as Iggy's protocol reports it (a u32): the client id on node 0 (a
    /// single node reports its client ids unchanged), the node in the top four bits otherwise,
    /// so members of different nodes with equal client ids stay apart.
    pub fn display_id(&self) -> u32 {
        ((self.node & 0xf) << 28) | (self.client & 0x0fff_ffff)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Member {
    pub partitions: Vec<u32>,
    /// Round-robin position over `partitions` for polls that name no partition.
    cursor: usize,
    /// The partition this member polled last: where an offset command without a partition
    /// applies.
    pub last_polled: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub id: u32,
    pub name: String,
    pub members: BTreeMap<GroupMember, Member>,
}

impl ConsumerGroup {
    pub fn new(id: u32, name: String) -> Self {
        Self {
            id,
            name,
            members: BTreeMap::new(),
        }
    }

    /// A group as its record holds it, members assigned their partitions again.
    pub fn restore(record: &crate::storage::metadata::GroupRecord, partitions_count: u32) -> Self {
        let mut group = Self::new(record.id, record.name.clone());
        for member in &record.members {
            group.members.insert(*member, Member::default());
        }
        group.rebalance(partitions_count);
        group
    }

    /// Adds a member (idempotent) and rebalances.
    pub fn join(&mut self, member: GroupMember, partitions_count: u32) {
        self.members.entry(member).or_default();
        self.rebalance(partitions_count);
    }

    /// Removes a member; `false` if it was not one.
    pub fn leave(&mut self, member: GroupMember, partitions_count: u32) -> bool {
        let was_member = self.members.remove(&member).is_some();
        self.rebalance(partitions_count);
        was_member
    }

    /// Removes every member `gone` names; `true` if there was any.
    pub fn drop_members(
        &mut self,
        gone: impl Fn(&GroupMember) -> bool,
        partitions_count: u32,
    ) -> bool {
        let before = self.members.len();
        self.members.retain(|id, _| !gone(id));
        let changed = self.members.len() != before;
        if changed {
            self.rebalance(partitions_count);
        }
        changed
    }

    pub fn rebalance(&mut self, partitions_count: u32) {
        let n = self.members.len();
        for (i, member) in self.members.values_mut().enumerate() {
            member.partitions = (0..partitions_count)
                .filter(|p| *p as usize % n == i)
                .collect();
            member.cursor = 0;
            if member
                .last_polled
                .is_some_and(|p| !member.partitions.contains(&p))
            {
                member.last_polled = None;
            }
        }
    }

    /// The partition a member's poll reads: the requested one if the member owns it (`None`
    /// otherwise: an empty poll), or the next of its partitions in turn.
    pub fn partition_for_poll(
        &mut self,
        member: GroupMember,
        requested: Option<u32>,
    ) -> Option<Option<u32>> {
        let member = self.members.get_mut(&member)?;
        let chosen = match requested {
            Some(p) => member.partitions.contains(&p).then_some(p),
            None if member.partitions.is_empty() => None,
            None => {
                let p = member.partitions[member.cursor % member.partitions.len()];
                member.cursor = member.cursor.wrapping_add(1);
                Some(p)
            }
        };
        if chosen.is_some() {
            member.last_polled = chosen;
        }
        Some(chosen)
    }
}

/// A topic's group by numeric id or name.
pub fn find_group<'g>(
    groups: &'g mut BTreeMap<u32, ConsumerGroup>,
    id: &Identifier,
) -> Result<&'g mut ConsumerGroup> {
    let found = match id {
        Identifier::Numeric(n) => groups.get_mut(n),
        Identifier::Named(name) => groups.values_mut().find(|g| &g.name == name),
    };
    found.ok_or_else(|| BrokerError::ConsumerGroupNotFound(id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(client: u32) -> GroupMember {
        GroupMember {
            node: 0,
            incarnation: 7,
            client,
        }
    }

    fn owners(group: &ConsumerGroup, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .map(|p| {
                let owners: Vec<u32> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.partitions.contains(&p))
                    .map(|(c, _)| c.client)
                    .collect();
                assert_eq!(owners.len(), 1, "partition {p} has owners {owners:?}");
                owners[0]
            })
            .collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_through_joins_and_leaves() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(10), 6);
        assert_eq!(owners(&group, 6), vec![10; 6]);
        group.join(m(20), 6);
        group.join(m(30), 6);
        assert_eq!(owners(&group, 6), vec![10, 20, 30, 10, 20, 30]);
        assert!(group.leave(m(20), 6));
        assert_eq!(owners(&group, 6), vec![10, 30, 10, 30, 10, 30]);
        assert!(!group.leave(m(20), 6));
        group.rebalance(3);
        assert_eq!(owners(&group, 3), vec![10, 30, 10]);
        // A node's stale incarnation goes, its current one stays.
        let stale = GroupMember {
            incarnation: 6,
            ..m(40)
        };
        group.join(stale, 3);
        assert!(group.drop_members(|id| id.node == 0 && id.incarnation != 7, 3));
        assert_eq!(owners(&group, 3), vec![10, 30, 10]);
        assert!(!group.drop_members(|id| id.node == 1, 3));
    }

    #[test]
    fn polls_rotate_over_owned_partitions_and_refuse_foreign_ones() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 4);
        group.join(m(2), 4);
        let polled: Vec<_> = (0..4)
            .map(|_| group.partition_for_poll(m(1), None).unwrap().unwrap())
            .collect();
        assert_eq!(polled, vec![0, 2, 0, 2]);
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(None));
        assert_eq!(group.partition_for_poll(m(2), Some(1)), Some(Some(1)));
        assert_eq!(group.partition_for_poll(m(3), None), None, "not a member");
    }
}
