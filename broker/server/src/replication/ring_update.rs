//! `POST /admin/ring`: what a running replica makes of a ring its sidecar hands it.
//!
//! A ring is the operator's proposal; the configuration in force is the one the log committed
//! (docs/replication.md, "Reconfiguration by epochs"). A posted ring that is the running one is
//! acknowledged as in force. A ring of a newer epoch that the running configuration may become
//! is taken as a proposal: the replica thread connects to the positions it adds and hands it to
//! the core, whose primary commits it once the joining standbys caught up (202, `applied:
//! false` until `/admin/status` shows the epoch). Anything else is refused with the reason.

use iggy_contract::{Ring, RingError, RingUpdate};
use vsr::Membership;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingRefusal {
    #[error("the posted ring is not valid: {0}")]
    Invalid(#[from] RingError),
    #[error(
        "this broker runs without a ring (no cluster.ring_file): it cannot join one while running"
    )]
    SingleNode,
    #[error("the posted ring is cluster {posted:?}'s; this broker replicates in {running:?}")]
    OtherCluster { posted: String, running: String },
    #[error("the posted ring's epoch {posted} is older than the running epoch {running}")]
    Stale { posted: u32, running: u32 },
    #[error(
        "the posted ring differs from the running one but keeps its epoch {epoch}: every change \
         of members is a new epoch"
    )]
    SameEpoch { epoch: u32 },
    #[error(
        "the posted ring puts member id {posted} at position {position}, where the running ring \
         has id {running}: a position keeps its member (and disk) across epochs"
    )]
    Moved {
        position: u8,
        posted: u32,
        running: u32,
    },
    #[error("epoch {posted} cannot follow the running epoch {running}: {reason}")]
    Unreachable {
        posted: u32,
        running: u32,
        reason: &'static str,
    },
}

impl RingRefusal {
    /// 400 for a ring that is wrong in itself, 409 for one that conflicts with this broker.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, RingRefusal::Invalid(_))
    }
}

/// What to do with a posted ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is the ring in force.
    InForce(RingUpdate),
    /// A proposal for the core: the configuration it asks for.
    Propose(Membership),
}

/// The configuration a ring describes (its start is the op that will commit it).
pub fn membership_of(ring: &Ring) -> Membership {
    Membership {
        epoch: ring.epoch,
        replica_count: ring.members.len() as u8,
        standby_count: ring.standbys.len() as u8,
        start: 0,
    }
}

/// The answer to `posted`, given the newest ring this broker knows (`None`: a single node) and
/// the configuration its core runs.
pub fn consider(
    known: Option<&Ring>,
    running: Membership,
    posted: &Ring,
) -> Result<Decision, RingRefusal> {
    posted.validate()?;
    let known = known.ok_or(RingRefusal::SingleNode)?;
    if posted.cluster_id != known.cluster_id {
        return Err(RingRefusal::OtherCluster {
            posted: posted.cluster_id.clone(),
            running: known.cluster_id.clone(),
        });
    }
    if posted.epoch < running.epoch {
        return Err(RingRefusal::Stale {
            posted: posted.epoch,
            running: running.epoch,
        });
    }
    let next = membership_of(posted);
    if posted.epoch == running.epoch {
        let same = next.replica_count == running.replica_count
            && next.standby_count == running.standby_count
            && (posted.epoch != known.epoch
                || (posted.members == known.members && posted.standbys == known.standbys));
        return if same {
            Ok(Decision::InForce(RingUpdate {
                epoch: running.epoch,
                applied: true,
            }))
        } else {
            Err(RingRefusal::SameEpoch {
                epoch: posted.epoch,
            })
        };
    }
    let placed = |ring: &Ring| {
        ring.members
            .iter()
            .chain(&ring.standbys)
            .map(|m| (m.position, m.id))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let was = placed(known);
    for (position, id) in placed(posted) {
        match was.get(&position) {
            Some(&running) if running != id => {
                return Err(RingRefusal::Moved {
                    position,
                    posted: id,
                    running,
                })
            }
            _ => {}
        }
    }
    running
        .may_become(&next)
        .map_err(|reason| RingRefusal::Unreachable {
            posted: posted.epoch,
            running: running.epoch,
            reason,
        })?;
    Ok(Decision::Propose(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iggy_contract::RingMember;

    fn member(i: u8) -> RingMember {
        RingMember {
            id: u32::from(i) + 1,
            position: i,
            address: format!("events-{i}.events-replicas.prod.svc:8091"),
            client_address: None,
        }
    }

    fn ring(epoch: u32, members: u8, standbys: u8) -> Ring {
        Ring {
            cluster_id: "uid-1".into(),
            epoch,
            members: (0..members).map(member).collect(),
            standbys: (members..members + standbys).map(member).collect(),
            next_member_id: u32::from(members + standbys) + 1,
            bootstrapped: false,
        }
    }

    #[test]
    fn the_running_ring_is_in_force_and_a_reachable_newer_one_is_proposed() {
        let running = ring(1, 3, 0);
        let m = membership_of(&running);
        assert_eq!(
            consider(Some(&running), m, &running),
            Ok(Decision::InForce(RingUpdate {
                epoch: 1,
                applied: true
            }))
        );
        // Standbys first, then members.
        let with_standbys = ring(2, 3, 2);
        assert_eq!(
            consider(Some(&running), m, &with_standbys),
            Ok(Decision::Propose(membership_of(&with_standbys)))
        );
        let five = ring(3, 5, 0);
        assert_eq!(
            consider(Some(&with_standbys), membership_of(&with_standbys), &five),
            Ok(Decision::Propose(membership_of(&five)))
        );
        // Shrinking needs no standbys.
        assert!(matches!(
            consider(Some(&five), membership_of(&five), &ring(4, 3, 0)),
            Ok(Decision::Propose(_))
        ));
    }

    #[test]
    fn every_other_ring_is_refused_with_its_reason() {
        let running = ring(1, 3, 0);
        let m = membership_of(&running);
        assert_eq!(consider(None, m, &running), Err(RingRefusal::SingleNode));
        let mut other = running.clone();
        other.cluster_id = "uid-2".into();
        assert!(matches!(
            consider(Some(&running), m, &other),
            Err(RingRefusal::OtherCluster { .. })
        ));
        assert_eq!(
            consider(
                Some(&ring(2, 3, 0)),
                membership_of(&ring(2, 3, 0)),
                &running
            ),
            Err(RingRefusal::Stale {
                posted: 1,
                running: 2
            })
        );
        let skipped = consider(Some(&running), m, &ring(2, 5, 0)).expect_err("refused");
        assert!(
            skipped.to_string().contains("standby"),
            "members join as standbys first: {skipped}"
        );
        assert!(matches!(
            consider(Some(&running), m, &ring(1, 2, 0)),
            Err(RingRefusal::SameEpoch { epoch: 1 })
        ));
        let mut moved = ring(2, 3, 0);
        moved.members[2].id = 9;
        assert!(matches!(
            consider(Some(&running), m, &moved),
            Err(RingRefusal::Moved { position: 2, .. })
        ));
        let mut broken = running.clone();
        broken.members[1].id = 1;
        let invalid = consider(Some(&running), m, &broken).expect_err("refused");
        assert!(invalid.is_bad_request(), "{invalid}");
    }
}
