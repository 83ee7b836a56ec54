//! Ring membership: which member sits at which position, with which stable id, in which epoch.
//! The ring ConfigMap is the durable record; planning the next ring from it is a pure function.

use crate::names::ClusterNames;
use iggy_contract::{Position, Ring, RingMember};

/// The ring for `replicas` members, given the one last published (if any).
///
/// Positions are 0..replicas and map to pods by ordinal. Ids are never reused: a member that
/// leaves takes its id with it, and a new member gets one above every id seen. Any change of
/// membership is a new epoch; an unchanged ring keeps its epoch, so reconciling again is a no-op.
/// `replicas` is at most [`iggy_contract::ring::MAX_MEMBERS`]; validation refuses larger specs.
pub fn plan(
    names: &ClusterNames,
    cluster_id: &str,
    replicas: Position,
    current: Option<&Ring>,
) -> Ring {
    plan_with_standbys(names, cluster_id, replicas, 0, current)
}

/// Like [`plan`], with `standbys` non-voting positions after the members (how joining brokers
/// catch up before an epoch makes them members). A position keeps its id whether it is a
/// standby or a member.
pub fn plan_with_standbys(
    names: &ClusterNames,
    cluster_id: &str,
    replicas: Position,
    standbys: Position,
    current: Option<&Ring>,
) -> Ring {
    let mut next_id = current
        .map(|ring| {
            let above = ring
                .members
                .iter()
                .chain(&ring.standbys)
                .map(|m| m.id)
                .max()
                .unwrap_or(0)
                + 1;
            ring.next_member_id.max(above)
        })
        .unwrap_or(1);
    let mut placed: Vec<RingMember> = (0..replicas.saturating_add(standbys))
        .map(|position| {
            let kept = current.and_then(|ring| {
                ring.members
                    .iter()
                    .chain(&ring.standbys)
                    .find(|m| m.position == position)
            });
            let id = match kept {
                Some(member) => member.id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            RingMember {
                id,
                position,
                address: names.member_address(position),
                client_address: Some(names.member_client_address(position)),
            }
        })
        .collect();
    let standbys = placed.split_off(usize::from(replicas));
    let members = placed;
    let epoch = match current {
        Some(ring)
            if ring.members == members
                && ring.standbys == standbys
                && ring.cluster_id == cluster_id =>
        {
            ring.epoch
        }
        Some(ring) => ring.epoch + 1,
        None => 1,
    };
    Ring {
        cluster_id: cluster_id.to_string(),
        epoch,
        members,
        standbys,
        next_member_id: next_id,
        // Formation is a fact about the cluster, not about one ring: later rings keep it.
        bootstrapped: current.is_some_and(|ring| ring.bootstrapped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames::new("events", "prod")
    }

    #[test]
    fn first_ring_is_epoch_one_with_ids_from_one() {
        let ring = plan(&names(), "c1", 3, None);
        assert_eq!(ring.epoch, 1);
        assert_eq!(
            ring.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            ring.members[2].address,
            "events-2.events-replicas.prod.svc:8091"
        );
    }

    #[test]
    fn unchanged_ring_keeps_its_epoch() {
        let ring = plan(&names(), "c1", 3, None);
        assert_eq!(plan(&names(), "c1", 3, Some(&ring)), ring);
    }

    #[test]
    fn growing_and_shrinking_bump_the_epoch_and_never_reuse_ids() {
        let three = plan(&names(), "c1", 3, None);
        let five = plan(&names(), "c1", 5, Some(&three));
        assert_eq!(five.epoch, 2);
        assert_eq!(
            five.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let back = plan(&names(), "c1", 3, Some(&five));
        assert_eq!(back.epoch, 3);
        let again = plan(&names(), "c1", 4, Some(&back));
        assert_eq!(
            again.members[3].id, 6,
            "ids 4 and 5 left with their members"
        );
        assert_eq!(again.epoch, 4);
    }

    #[test]
    fn standbys_keep_their_ids_when_they_become_members() {
        let three = plan(&names(), "c1", 3, None);
        let joining = plan_with_standbys(&names(), "c1", 3, 2, Some(&three));
        assert_eq!(joining.epoch, 2);
        assert_eq!(
            joining
                .standbys
                .iter()
                .map(|m| (m.position, m.id))
                .collect::<Vec<_>>(),
            [(3, 4), (4, 5)]
        );
        let five = plan(&names(), "c1", 5, Some(&joining));
        assert_eq!(five.epoch, 3);
        assert_eq!(
            five.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(five.standbys.is_empty());
        assert_eq!(plan(&names(), "c1", 5, Some(&five)), five, "unchanged");
    }
}
