//! Consumer groups: members are connections; each partition of the topic is assigned to exactly
//! one member at a time, and reassigned whenever a member joins or leaves or the partition count
//! changes. Assignment is deterministic (partition `i` goes to the `i mod n`-th member in client
//! id order), so every member's share is stable while the membership is.

use crate::error::{BrokerError, Result};
use iggy_wire::Identifier;
use std::collections::BTreeMap;

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
    /// Keyed by client id.
    pub members: BTreeMap<u32, Member>,
}

impl ConsumerGroup {
    pub fn new(id: u32, name: String) -> Self {
        Self {
            id,
            name,
            members: BTreeMap::new(),
        }
    }

    /// Adds a member (idempotent) and rebalances.
    pub fn join(&mut self, client: u32, partitions_count: u32) {
        self.members.entry(client).or_default();
        self.rebalance(partitions_count);
    }

    /// Removes a member; `false` if it was not one.
    pub fn leave(&mut self, client: u32, partitions_count: u32) -> bool {
        let was_member = self.members.remove(&client).is_some();
        self.rebalance(partitions_count);
        was_member
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
        client: u32,
        requested: Option<u32>,
    ) -> Option<Option<u32>> {
        let member = self.members.get_mut(&client)?;
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

    fn owners(group: &ConsumerGroup, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .map(|p| {
                let owners: Vec<u32> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.partitions.contains(&p))
                    .map(|(c, _)| *c)
                    .collect();
                assert_eq!(owners.len(), 1, "partition {p} has owners {owners:?}");
                owners[0]
            })
            .collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_through_joins_and_leaves() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(10, 6);
        assert_eq!(owners(&group, 6), vec![10; 6]);
        group.join(20, 6);
        group.join(30, 6);
        assert_eq!(owners(&group, 6), vec![10, 20, 30, 10, 20, 30]);
        assert!(group.leave(20, 6));
        assert_eq!(owners(&group, 6), vec![10, 30, 10, 30, 10, 30]);
        assert!(!group.leave(20, 6));
        group.rebalance(3);
        assert_eq!(owners(&group, 3), vec![10, 30, 10]);
    }

    #[test]
    fn polls_rotate_over_owned_partitions_and_refuse_foreign_ones() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(1, 4);
        group.join(2, 4);
        let polled: Vec<_> = (0..4)
            .map(|_| group.partition_for_poll(1, None).unwrap().unwrap())
            .collect();
        assert_eq!(polled, vec![0, 2, 0, 2]);
        assert_eq!(group.partition_for_poll(1, Some(1)), Some(None));
        assert_eq!(group.partition_for_poll(2, Some(1)), Some(Some(1)));
        assert_eq!(group.partition_for_poll(3, None), None, "not a member");
    }
}
