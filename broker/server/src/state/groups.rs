//! Consumer groups: members are connections; each partition of the topic is held by exactly
//! one member at a time. Where partitions belong (their places) is deterministic — an even,
//! sticky spread computed from the previous places and the membership ([`sticky_places`]) —
//! and joins and leaves are operations of the log, so every replica computes the same places.
//!
//! Rebalancing is cooperative, as in Iggy: when a member joins, a partition whose place moves
//! away from a member that is still there is not taken from it at once. It stays with that
//! member, which polls it no more, until the member has stored an offset for everything it
//! polled from it (or had polled nothing from it), or until `consumer_group.rebalancing_timeout`
//! passed; then an operation of the log ([`crate::ops::Operation::HandOverPartition`]) moves it.
//! Without that, the new holder would poll from the group's stored offset while the old one
//! still processed what it had polled past it: the same messages twice. A member that leaves
//! hands nothing over: its partitions move at once (it cannot store offsets any more).
//!
//! What a member polled is known only to the broker node its connection is on (polls are not
//! operations), so that node judges when a handover is due (`crate::handover`).

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

/// Where a partition belongs, as a group's record keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Place {
    pub partition: u32,
    pub member: GroupMember,
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
    /// Where each partition belongs (its place), by partition.
    pub places: BTreeMap<u32, GroupMember>,
    /// Partitions being handed over to their place, by partition.
    pub moving: BTreeMap<u32, Handover>,
    /// The places were derived when a record from before places existed was restored: until
    /// the next rebalance the group's record leaves them out, as the restored one did, so that
    /// a replica's metadata still equals its checkpoint's (`BrokerMachine::check`).
    places_derived: bool,
}

impl ConsumerGroup {
    pub fn new(id: u32, name: String) -> Self {
        Self {
            id,
            name,
            members: BTreeMap::new(),
            places: BTreeMap::new(),
            moving: BTreeMap::new(),
            places_derived: false,
        }
    }

    /// Takes over what this node saw of its members' polls from `before`, the same group as
    /// the node held it until its metadata was replaced (state sync installs records, which
    /// carry no node-local state): a member still in the group keeps what it polled from the
    /// partitions it still holds, so a handover under way still waits for it to store that.
    pub fn keep_node_state(&mut self, before: &ConsumerGroup) {
        for (id, member) in &mut self.members {
            let Some(old) = before.members.get(id) else {
                continue;
            };
            let held = &member.partitions;
            member.polled = old
                .polled
                .iter()
                .filter(|(p, _)| held.contains(p))
                .map(|(p, offset)| (*p, *offset))
                .collect();
            member.last_polled = old.last_polled.filter(|p| held.contains(p));
            member.cursor = old.cursor;
        }
    }

    /// A group as its record holds it, members given their partitions again.
    pub fn restore(record: &crate::storage::metadata::GroupRecord, partitions_count: u32) -> Self {
        let mut group = Self::new(record.id, record.name.clone());
        for member in &record.members {
            group.members.insert(*member, Member::default());
        }
        if record.places.is_empty() {
            // Written before places were recorded: placed afresh (alike on every replica).
            group.rebalance(partitions_count, 0);
            group.places_derived = true;
            return group;
        }
        let member = |m: &GroupMember| group.members.contains_key(m);
        group.places = record
            .places
            .iter()
            .filter(|place| place.partition < partitions_count && member(&place.member))
            .map(|place| (place.partition, place.member))
            .collect();
        group.moving = record
            .moving
            .iter()
            .filter(|h| h.partition < partitions_count && member(&h.from))
            .map(|h| (h.partition, *h))
            .collect();
        group.assign(partitions_count);
        if (0..partitions_count).any(|p| !group.places.contains_key(&p)) {
            // A record saved before its topic grew (a single node persists the metadata before
            // it places new partitions): the new ones get places, the others keep theirs.
            group.rebalance(partitions_count, 0);
        }
        group
    }

    /// The places as the group's record keeps them.
    pub fn recorded_places(&self) -> Vec<Place> {
        if self.places_derived {
            return Vec::new();
        }
        self.places
            .iter()
            .map(|(&partition, &member)| Place { partition, member })
            .collect()
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
    /// changed ([`sticky_places`]). A partition whose place moved away from a member that still
    /// holds it is handed over later (its move keeps the time it began if it was already moving
    /// from that member); one held by nobody — new, or its holder left — goes to its place at
    /// once.
    pub fn rebalance(&mut self, partitions_count: u32, now: u64) {
        let holders: BTreeMap<u32, GroupMember> = self
            .members
            .iter()
            .flat_map(|(id, m)| m.partitions.iter().map(move |p| (*p, *id)))
            .collect();
        let members: Vec<GroupMember> = self.members.keys().copied().collect();
        self.places = sticky_places(&self.places, &members, partitions_count);
        self.places_derived = false;
        let mut moving = BTreeMap::new();
        for p in 0..partitions_count {
            let (Some(&holder), Some(&place)) = (holders.get(&p), self.places.get(&p)) else {
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

    /// Completes `handover`; `false` if that move is no longer under way (already handed over,
    /// cancelled by a later rebalance, or its holder left). A move is named by its start too:
    /// a handover judged for an earlier move of the same partition from the same member —
    /// cancelled, then begun again after the member polled more — must not complete the later
    /// one.
    pub fn hand_over(&mut self, handover: Handover, partitions_count: u32) -> bool {
        if self.moving.get(&handover.partition) != Some(&handover) {
            return false;
        }
        self.moving.remove(&handover.partition);
        self.assign(partitions_count);
        true
    }

    /// Gives every member the partitions it holds: those moving from it, and those whose
    /// place it is and that are not moving from another member.
    fn assign(&mut self, partitions_count: u32) {
        let mut held: BTreeMap<GroupMember, Vec<u32>> = BTreeMap::new();
        for p in 0..partitions_count {
            let holder = match self.moving.get(&p) {
                Some(h) => Some(h.from),
                None => self.places.get(&p).copied(),
            };
            if let Some(holder) = holder {
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

/// Where each of `partitions_count` partitions belongs among `members` (in member order),
/// given where they belonged before: sticky, so that a rebalance moves as few partitions as an
/// even spread allows. Every member gets `count / n` partitions, and `count mod n` of them one
/// more — those that had the most places before (then in member order). Each member keeps its
/// earlier places, lowest partitions first, up to its share; what is left (partitions new or
/// without a member, and shares' excess) goes, lowest first, to the members short of their
/// share, in member order. A function of its inputs only, so every replica places alike.
pub fn sticky_places(
    before: &BTreeMap<u32, GroupMember>,
    members: &[GroupMember],
    partitions_count: u32,
) -> BTreeMap<u32, GroupMember> {
    let mut places = BTreeMap::new();
    if members.is_empty() {
        return places;
    }
    let mut kept: BTreeMap<GroupMember, Vec<u32>> =
        members.iter().map(|m| (*m, Vec::new())).collect();
    for (&p, member) in before.range(..partitions_count) {
        if let Some(kept) = kept.get_mut(member) {
            kept.push(p);
        }
    }
    let count = partitions_count as usize;
    let (base, extra) = (count / members.len(), count % members.len());
    let mut by_earlier_share: Vec<GroupMember> = members.to_vec();
    by_earlier_share.sort_by_key(|m| (std::cmp::Reverse(kept[m].len()), *m));
    let share: BTreeMap<GroupMember, usize> = by_earlier_share
        .iter()
        .enumerate()
        .map(|(rank, m)| (*m, base + usize::from(rank < extra)))
        .collect();
    for (member, partitions) in kept.iter_mut() {
        partitions.truncate(share[member]);
        for &p in partitions.iter() {
            places.insert(p, *member);
        }
    }
    let unplaced: Vec<u32> = (0..partitions_count)
        .filter(|p| !places.contains_key(p))
        .collect();
    let mut left = unplaced.into_iter();
    for member in members {
        for _ in kept[member].len()..share[member] {
            if let Some(p) = left.next() {
                places.insert(p, *member);
            }
        }
    }
    places
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
            assert!(group.hand_over(h, partitions));
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
        assert_eq!(group.moving[&3].since, 2, "a move keeps the time it began");
        assert_eq!(group.moving[&2].since, 3);
        settle(&mut group, 6);
        assert_eq!(holders(&group, 6), vec![10, 10, 30, 20, 20, 30]);
        assert!(group.leave(m(20), 6, 4));
        // 20's partitions go at once to the members short of their share; nobody else moves.
        assert!(group.moving.is_empty());
        assert_eq!(holders(&group, 6), vec![10, 10, 30, 10, 30, 30]);
        assert!(!group.leave(m(20), 6, 5));
        group.rebalance(3, 6);
        assert!(group.moving.is_empty());
        assert_eq!(holders(&group, 3), vec![10, 10, 30]);
        // A node's stale incarnation goes, its current one stays.
        let stale = GroupMember {
            incarnation: 6,
            ..m(40)
        };
        group.join(stale, 3, 7);
        assert_eq!(group.moving.len(), 1);
        assert!(group.drop_members(|id| id.node == 0 && id.incarnation != 7, 3, 8));
        assert_eq!(holders(&group, 3), vec![10, 10, 30]);
        assert!(
            group.moving.is_empty(),
            "the move to the stale member was cancelled"
        );
        assert!(!group.drop_members(|id| id.node == 1, 3, 9));
    }

    #[test]
    fn places_are_sticky_even_and_a_function_of_their_inputs() {
        let (a, b, c) = (m(1), m(2), m(3));
        let none = BTreeMap::new();
        let two = sticky_places(&none, &[a, b], 6);
        let of = |places: &BTreeMap<u32, GroupMember>| -> Vec<u32> {
            places.values().map(|m| m.client).collect()
        };
        assert_eq!(of(&two), vec![1, 1, 1, 2, 2, 2]);
        // A third member takes one partition from each; the others stay.
        let three = sticky_places(&two, &[a, b, c], 6);
        assert_eq!(of(&three), vec![1, 1, 3, 2, 2, 3]);
        let moved = (0..6).filter(|p| two[p] != three[p]).count();
        assert_eq!(moved, 2, "round-robin would move 4");
        // Uneven counts: the extra partition stays with who had the most.
        let seven = sticky_places(&three, &[a, b, c], 7);
        assert_eq!(of(&seven), vec![1, 1, 3, 2, 2, 3, 1]);
        let back = sticky_places(&seven, &[a, c], 7);
        assert_eq!(of(&back), vec![1, 1, 3, 1, 3, 3, 1]);
        assert_eq!(sticky_places(&seven, &[], 7), BTreeMap::new());
        assert_eq!(
            sticky_places(&seven, &[a, b, c], 7),
            seven,
            "stable when nothing changed"
        );
    }

    /// Two partitions; member 1 polled partition 1 up to offset 9, then member 2 joined at
    /// time 100, so partition 1 is to move to it.
    fn polled_then_joined() -> ConsumerGroup {
        let mut group = ConsumerGroup::new(0, "g".into());
        group.join(m(1), 2, 1);
        assert_eq!(group.partition_for_poll(m(1), Some(1)), Some(Some(1)));
        assert!(group.finish_poll(m(1), 1, 9));
        group.join(m(2), 2, 100);
        group
    }

    #[test]
    fn a_partition_moves_only_once_its_holder_stored_what_it_polled() {
        let mut group = polled_then_joined();
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
        let handover = group.moving[&1];
        let earlier = Handover {
            since: handover.since - 1,
            ..handover
        };
        assert!(!group.hand_over(earlier, 2), "judged for an earlier move");
        assert!(group.hand_over(handover, 2));
        assert!(!group.hand_over(handover, 2), "once");
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

    /// State sync installs a group from its record; what this node saw its members poll is
    /// taken over, so a holder that has not stored what it polled still keeps its partition.
    #[test]
    fn a_group_installed_from_its_record_keeps_what_its_members_polled() {
        let group = polled_then_joined();
        let record = crate::storage::metadata::GroupRecord {
            id: group.id,
            name: group.name.clone(),
            members: group.members.keys().copied().collect(),
            places: group.recorded_places(),
            moving: group.moving.values().copied().collect(),
        };
        let due = |group: &ConsumerGroup| group.handovers_due(|_| true, |_| None, 200, 1_000);
        let installed = ConsumerGroup::restore(&record, 2);
        assert_eq!(due(&installed).len(), 1, "without the polls: due at once");
        let mut kept = ConsumerGroup::restore(&record, 2);
        kept.keep_node_state(&group);
        assert!(due(&kept).is_empty(), "polled 9, stored nothing: it waits");
        assert_eq!(kept.members[&m(1)].last_polled, Some(1));
    }

    #[test]
    fn restoring_a_record_keeps_the_moves() {
        let mut group = ConsumerGroup::new(3, "g".into());
        group.join(m(1), 4, 1);
        group.join(m(2), 4, 2);
        let mut record = crate::storage::metadata::GroupRecord {
            id: group.id,
            name: group.name.clone(),
            members: group.members.keys().copied().collect(),
            places: group.recorded_places(),
            moving: group.moving.values().copied().collect(),
        };
        let restored = ConsumerGroup::restore(&record, 4);
        assert_eq!(restored.moving, group.moving);
        assert_eq!(restored.places, group.places);
        assert_eq!(holders(&restored, 4), holders(&group, 4));
        // A record saved before its topic grew: the new partitions are placed too.
        let grown = ConsumerGroup::restore(&record, 6);
        assert_eq!(grown.moving, group.moving);
        assert_eq!(grown.places.len(), 6);
        assert_eq!(&holders(&grown, 6)[..4], &holders(&group, 4)[..]);
        // A record from before places: placed afresh, nothing moving, and recorded as it was
        // until the next rebalance (a replica's metadata must equal its checkpoint's).
        record.places.clear();
        let mut afresh = ConsumerGroup::restore(&record, 4);
        assert_eq!(holders(&afresh, 4), vec![1, 1, 2, 2]);
        assert!(afresh.moving.is_empty());
        assert!(afresh.recorded_places().is_empty());
        afresh.join(m(3), 4, 9);
        assert_eq!(afresh.recorded_places().len(), 4);
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
        assert_eq!(polled, vec![0, 1, 0, 1]);
        assert_eq!(group.partition_for_poll(m(1), Some(2)), Some(None));
        assert_eq!(group.partition_for_poll(m(2), Some(2)), Some(Some(2)));
        assert_eq!(group.partition_for_poll(m(3), None), None, "not a member");
    }
}
