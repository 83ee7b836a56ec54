//! Consumer groups: members are connections; each partition of the topic is held by exactly
//! one member at a time. Where partitions belong is deterministic — partition `i` goes to the
//! `i mod n`-th member in [`GroupMember`] order — and joins and leaves are operations of the
//! log, so every replica computes the same assignment.
//!
//! Rebalancing is cooperative, as in Iggy: when a member joins, a partition whose place moves
//! away from a member that is still there is not taken from it at once. It stays with that
//! member, which polls it no more, until the member has stored an offset for everything it
//! polled from it (or had polled nothing from it), or until `consumer_group.rebalancing_timeout`
//! passed; then an operation of the log ([`crate::ops::Operation::HandOverPartition`]) moves it.
//! Without that, the new owner would poll from the group's stored offset while the old one
//! still processed what it had polled past it: the same messages twice. A member that leaves
//! hands nothing over: its partitions move at once (it cannot store offsets any more).
//!
//! What a member polled is known only to the broker node its connection is on (polls are not
//! operations), so that node judges when a handover is due (`crate::groups_handover`).

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

/// A partition on its way from the member that holds it to the member it now belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    pub partition: u32,
    /// The member holding it until the handover.
    pub from: GroupMember,
    /// When the move began (µs since the Unix epoch, the time of the operation that began it).
    pub since: u64,
}

/// Why a handover is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The holder stored an offset for all it polled from the partition, or polled nothing.
    Drained,
    /// `consumer_group.rebalancing_timeout` passed first.
    TimedOut,
}

#[derive(Debug, Default, Clone)]
pub struct Member {
    /// The partitions it holds, those it is handing over included (GetConsumerGroup reports
    /// them all; polls take only the others).
    pub partitions: Vec<u32>,
    /// Round-robin position over the partitions it polls, for polls that name no partition.
    cursor: usize,
    /// The partition this member polled last: where an offset command without a partition
    /// applies.
    pub last_polled: Option<u32>,
    /// The highest offset each partition has served this member. Only the node its connection
    /// is on sees its polls, so only there is this filled in; it is not part of the replicated
    /// state and decides nothing in `apply`.
    polled: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub id: u32,
    pub name: String,
    pub members: BTreeMap<GroupMember, Member>,
    /// Partitions being handed over, by partition.
    pub moving: BTreeMap<u32, Handover>,
}

impl ConsumerGroup {
    pub fn new(id: u32, name: String) -> Self {
        Self {
            id,
            name,
            members: BTreeMap::new(),
            moving: BTreeMap::new(),
        }
    }

    /// A group as its record holds it, members given their partitions again.
    pub fn restore(record: &crate::storage::metadata::GroupRecord, partitions_count: u32) -> Self {
        let mut group = Self::new(record.id, record.name.clone());
        for member in &record.members {
            group.members.insert(*member, Member::default());
        }
        group.moving = record
            .moving
            .iter()
            .filter(|h| h.partition < partitions_count && group.members.contains_key(&h.from))
            .map(|h| (h.partition, *h))
            .collect();
        group.assign(partitions_count);
        group
    }

    /// Adds a member (idempotent) and rebalances at `now` (µs).
    pub fn join(&mut self, member: GroupMember, partitions_count: u32, now: u64) {
        self.members.entry(member).or_default();
        self.rebalance(partitions_count, now);
    }

    /// Removes a member; `false` if it was not one.
    pub fn leave(&mut self, member: GroupMember, partitions_count: u32, now: u64) -> bool {
        let was_member = self.members.remove(&member).is_some();
        self.rebalance(partitions_count, now);
        was_member
    }

    /// Removes every member `gone` names; `true` if there was any.
    pub fn drop_members(
        &mut self,
        gone: impl Fn(&GroupMember) -> bool,
        partitions_count: u32,
        now: u64,
    ) -> bool {
        let before = self.members.len();
        self.members.retain(|id, _| !gone(id));
        let changed = self.members.len() != before;
        if changed {
            self.rebalance(partitions_count, now);
        }
        changed
    }

    /// Recomputes where every partition belongs after the membership or the partition count
    /// changed. A partition whose place moved away from a member that still holds it is handed
    /// over later (its move keeps the time it began if it was already moving from that member);
    /// one held by nobody — new, or its holder left — goes to its place at once.
    pub fn rebalance(&mut self, partitions_count: u32, now: u64) {
        let holders: BTreeMap<u32, GroupMember> = self
            .members
            .iter()
            .flat_map(|(id, m)| m.partitions.iter().map(move |p| (*p, *id)))
            .collect();
        let mut moving = BTreeMap::new();
        for p in 0..partitions_count {
            let (Some(&holder), Some(place)) = (holders.get(&p), self.place_of(p)) else {
                continue;
            };
            if holder != place {
                let since = match self.moving.get(&p) {
                    Some(h) if h.from == holder => h.since,
                    _ => now,
                };
                let from = holder;
                moving.insert(
                    p,
                    Handover {
                        partition: p,
                        from,
                        since,
                    },
                );
            }
        }
        self.moving = moving;
        self.assign(partitions_count);
    }

    /// Completes the handover of `partition` by `from`; `false` if it was not moving from
    /// `from` (already handed over, cancelled by a later rebalance, or its holder left).
    pub fn hand_over(&mut self, partition: u32, from: GroupMember, partitions_count: u32) -> bool {
        if self.moving.get(&partition).is_none_or(|h| h.from != from) {
            return false;
        }
        self.moving.remove(&partition);
        self.assign(partitions_count);
        true
    }

    /// Where partition `p` belongs: the `p mod n`-th member.
    fn place_of(&self, p: u32) -> Option<GroupMember> {
        let n = self.members.len();
        (n > 0).then(|| {
            *self
                .members
                .keys()
                .nth(p as usize % n)
                .expect("p mod n < n")
        })
    }

    /// Gives every member the partitions it holds: those moving from it, and those whose
    /// place it is and that are not moving from another member.
    fn assign(&mut self, partitions_count: u32) {
        let places: Vec<GroupMember> = self.members.keys().copied().collect();
        let mut held: BTreeMap<GroupMember, Vec<u32>> = BTreeMap::new();
        if !places.is_empty() {
            for p in 0..partitions_count {
                let holder = match self.moving.get(&p) {
                    Some(h) => h.from,
                    None => places[p as usize % places.len()],
                };
                held.entry(holder).or_default().push(p);
            }
        }
        for (id, member) in self.members.iter_mut() {
            let partitions = held.remove(id).unwrap_or_default();
            if partitions != member.partitions {
                member.cursor = 0;
            }
            member.partitions = partitions;
            if member
                .last_polled
                .is_some_and(|p| !member.partitions.contains(&p))
            {
                member.last_polled = None;
            }
            let partitions = &member.partitions;
            member.polled.retain(|p, _| partitions.contains(p));
        }
    }

    /// Whether `member` polls `partition`: it holds it and is not handing it over.
    fn polls(&self, member: &GroupMember, partition: u32) -> bool {
        self.members
            .get(member)
            .is_some_and(|m| m.partitions.contains(&partition))
            && !self.moving.contains_key(&partition)
    }

    /// The partition a member's poll reads: the requested one if the member polls it (`None`
    /// otherwise: an empty poll), or the next of the partitions it polls, in turn. `None` if it
    /// is not a member.
    pub fn partition_for_poll(
        &mut self,
        member: GroupMember,
        requested: Option<u32>,
    ) -> Option<Option<u32>> {
        let pollable: Vec<u32> = self
            .members
            .get(&member)?
            .partitions
            .iter()
            .copied()
            .filter(|p| !self.moving.contains_key(p))
            .collect();
        let member = self.members.get_mut(&member)?;
        let chosen = match requested {
            Some(p) => pollable.contains(&p).then_some(p),
            None if pollable.is_empty() => None,
            None => {
                let p = pollable[member.cursor % pollable.len()];
                member.cursor = member.cursor.wrapping_add(1);
                Some(p)
            }
        };
        if chosen.is_some() {
            member.last_polled = chosen;
        }
        Some(chosen)
    }

    /// A poll of `partition` by `member` read up to `last` (its last offset): `true` if the
    /// member still polls that partition, and then it is recorded; `false` if a rebalance
    /// began moving it while the poll read, and the poll must answer nothing — the next holder
    /// reads those messages from the group's stored offset.
    pub fn finish_poll(&mut self, member: GroupMember, partition: u32, last: u64) -> bool {
        if !self.polls(&member, partition) {
            return false;
        }
        if let Some(m) = self.members.get_mut(&member) {
            let polled = m.polled.entry(partition).or_insert(last);
            *polled = (*polled).max(last);
        }
        true
    }

    /// The handovers `local` members (those of this node) owe now: each partition moving from
    /// one whose polled messages are all stored (`stored(p)`: the group's stored offset), or
    /// that polled nothing from it, or whose move began `timeout` µs before `now` or earlier.
    pub fn handovers_due(
        &self,
        local: impl Fn(&GroupMember) -> bool,
        stored: impl Fn(u32) -> Option<u64>,
        now: u64,
        timeout: u64,
    ) -> Vec<(Handover, Due)> {
        self.moving
            .values()
            .filter(|h| local(&h.from))
            .filter_map(|h| {
                let polled = self
                    .members
                    .get(&h.from)
                    .and_then(|m| m.polled.get(&h.partition).copied());
                if polled.is_none_or(|last| stored(h.partition) >= Some(last)) {
                    Some((*h, Due::Drained))
                } else if now >= h.since.saturating_add(timeout) {
                    Some((*h, Due::TimedOut))
                } else {
                    None
                }
            })
            .collect()
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

    fn holders(group: &ConsumerGroup, partitions: u32) -> Vec<u32> {
        (0..partitions)
            .map(|p| {
                let holders: Vec<u32> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.partitions.contains(&p))
                    .map(|(c, _)| c.client)
                    .collect();
                assert_eq!(holders.len(), 1, "partition {p} has holders {holders:?}");
                holders[0]
            })
            .collect()
    }

    /// Completes every handover at once, as when no member had polled anything.
    fn settle(group: &mut ConsumerGroup, partitions: u32) {
        for h in group.moving.clone().into_values() {
            assert!(group.hand_over(h.partition, h.from, partitions));
        }
        assert!(group.moving.is_empty());
    }

    #[test]
    fn every_partition_has_exactly_one_holder_through_joins_and_leaves() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(10), 6, 1);
        assert_eq!(holders(&group, 6), vec![10; 6]);
        assert!(group.moving.is_empty(), "nobody held them: no handover");
        group.join(m(20), 6, 2);
        assert_eq!(
            holders(&group, 6),
            vec![10; 6],
            "10 holds them until it hands over"
        );
        group.join(m(30), 6, 3);
        assert_eq!(group.moving.len(), 4);
        assert_eq!(group.moving[&1].since, 2, "a move keeps the time it began");
        settle(&mut group, 6);
        assert_eq!(holders(&group, 6), vec![10, 20, 30, 10, 20, 30]);
        assert!(group.leave(m(20), 6, 4));
        // 20's partitions (1, 4) move at once; 30's partition 2 and 10's partition 3 swap
        // places, each handed over by its holder.
        assert_eq!(holders(&group, 6), vec![10, 30, 30, 10, 10, 30]);
        assert_eq!(
            group
                .moving
                .values()
                .map(|h| (h.partition, h.from.client))
                .collect::<Vec<_>>(),
            vec![(2, 30), (3, 10)]
        );
        settle(&mut group, 6);
        assert_eq!(holders(&group, 6), vec![10, 30, 10, 30, 10, 30]);
        assert!(!group.leave(m(20), 6, 5));
        group.rebalance(3, 6);
        settle(&mut group, 3);
        assert_eq!(holders(&group, 3), vec![10, 30, 10]);
        // A node's stale incarnation goes, its current one stays.
        let stale = GroupMember {
            incarnation: 6,
            ..m(40)
        };
        group.join(stale, 3, 7);
        assert!(group.drop_members(|id| id.node == 0 && id.incarnation != 7, 3, 8));
        assert_eq!(holders(&group, 3), vec![10, 30, 10]);
        assert!(
            group.moving.is_empty(),
            "the moves to the stale member were cancelled"
        );
        assert!(!group.drop_members(|id| id.node == 1, 3, 9));
    }

    #[test]
    fn a_partition_moves_only_once_its_holder_stored_what_it_polled() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 2, 1);
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(Some(1)));
        assert!(group.finish_poll(m(1), 1, 9));
        group.join(m(2), 2, 100);
        // 1 holds partition 1 and polls it no more; 2 does not poll it yet.
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(None));
        assert_eq!(group.partition_for_poll(m(2), Some(1)), Some(None));
        assert_eq!(group.partition_for_poll(m(2), None), Some(None));
        assert_eq!(holders(&group, 2), vec![1, 1]);
        let local = |_: &GroupMember| true;
        let due = |stored: Option<u64>, now: u64| {
            group
                .handovers_due(local, |_| stored, now, 1_000)
                .iter()
                .map(|(h, why)| (h.partition, *why))
                .collect::<Vec<_>>()
        };
        assert_eq!(due(None, 200), vec![], "polled 9, stored nothing");
        assert_eq!(due(Some(8), 200), vec![], "stored short of what it polled");
        assert_eq!(due(Some(9), 200), vec![(1, Due::Drained)]);
        let timed_out = vec![(1, Due::TimedOut)];
        assert_eq!(
            due(None, 1_100),
            timed_out,
            "the rebalancing timeout passed"
        );
        assert_eq!(due(Some(9), 1_100), vec![(1, Due::Drained)]);
        assert!(group
            .handovers_due(|_| false, |_| Some(9), 200, 1_000)
            .is_empty());
        assert!(group.hand_over(1, m(1), 2));
        assert!(!group.hand_over(1, m(1), 2), "once");
        assert_eq!(holders(&group, 2), vec![1, 2]);
        assert_eq!(group.partition_for_poll(m(2), None), Some(Some(1)));
    }

    #[test]
    fn a_poll_that_read_while_its_partition_began_to_move_answers_nothing() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 2, 1);
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(Some(1)));
        group.join(m(2), 2, 2);
        assert!(!group.finish_poll(m(1), 1, 5));
        // Nothing recorded: it polled nothing from it, so it is due at once.
        let due = group.handovers_due(|_| true, |_| None, 3, 1_000);
        assert_eq!(due.len(), 1);
        assert!(group.finish_poll(m(1), 0, 5), "it still polls partition 0");
    }

    #[test]
    fn a_move_back_to_its_holder_is_cancelled_and_a_leaving_holder_hands_over_nothing() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 2, 1);
        group.join(m(2), 2, 2);
        assert_eq!(group.moving.len(), 1);
        assert!(group.leave(m(2), 2, 3));
        assert!(group.moving.is_empty());
        assert_eq!(holders(&group, 2), vec![1, 1]);
        group.join(m(2), 2, 4);
        assert!(group.leave(m(1), 2, 5));
        assert!(group.moving.is_empty());
        assert_eq!(holders(&group, 2), vec![2, 2]);
    }

    #[test]
    fn restoring_a_record_keeps_the_moves() {
        let mut group = ConsumerGroup::new(3, "g".into());
        group.join(m(1), 4, 1);
        group.join(m(2), 4, 2);
        let record = crate::storage::metadata::GroupRecord {
            id: group.id,
            name: group.name.clone(),
            members: group.members.keys().copied().collect(),
            moving: group.moving.values().copied().collect(),
        };
        let restored = ConsumerGroup::restore(&record, 4);
        assert_eq!(restored.moving, group.moving);
        assert_eq!(holders(&restored, 4), holders(&group, 4));
    }

    #[test]
    fn polls_rotate_over_polled_partitions_and_refuse_foreign_ones() {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 4, 1);
        group.join(m(2), 4, 2);
        settle(&mut group, 4);
        let polled: Vec<_> = (0..4)
            .map(|_| group.partition_for_poll(m(1), None).unwrap().unwrap())
            .collect();
        assert_eq!(polled, vec![0, 2, 0, 2]);
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(None));
        assert_eq!(group.partition_for_poll(m(2), Some(1)), Some(Some(1)));
        assert_eq!(group.partition_for_poll(m(3), None), None, "not a member");
    }
}
