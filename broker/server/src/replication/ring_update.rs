//! `POST /admin/ring`: what a running replica makes of a ring its sidecar hands it.
//!
//! The ring a broker replicates with is the one it started with. A posted ring that is that
//! ring (the sidecar passing on the ConfigMap the broker also mounted) is acknowledged as in
//! force. Any other is refused with the reason: a ring of another cluster or an older epoch is
//! a mistake, and a ring with other members needs reconfiguration by epochs, which the core
//! does not run yet (docs/replication.md, "Reconfiguration by epochs") — taking it anyway,
//! or restarting into it, would split the cluster (docs/operator.md, "Scaling is held back").

use iggy_contract::{Ring, RingError, RingUpdate};

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
        "the posted ring (epoch {posted}) differs from the running one (epoch {running}); \
         changing members needs reconfiguration by epochs, which this broker does not run yet"
    )]
    Reconfiguration { posted: u32, running: u32 },
}

impl RingRefusal {
    /// 400 for a ring that is wrong in itself, 409 for one that conflicts with this broker.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, RingRefusal::Invalid(_))
    }
}

/// The answer to a posted ring, given the running one (`None`: a single node).
pub fn consider(running: Option<&Ring>, posted: &Ring) -> Result<RingUpdate, RingRefusal> {
    posted.validate()?;
    let running = running.ok_or(RingRefusal::SingleNode)?;
    if posted.cluster_id != running.cluster_id {
        return Err(RingRefusal::OtherCluster {
            posted: posted.cluster_id.clone(),
            running: running.cluster_id.clone(),
        });
    }
    if posted.epoch < running.epoch {
        return Err(RingRefusal::Stale {
            posted: posted.epoch,
            running: running.epoch,
        });
    }
    if posted.epoch != running.epoch
        || posted.members != running.members
        || posted.standbys != running.standbys
    {
        return Err(RingRefusal::Reconfiguration {
            posted: posted.epoch,
            running: running.epoch,
        });
    }
    Ok(RingUpdate {
        epoch: running.epoch,
        applied: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iggy_contract::RingMember;

    fn ring(epoch: u32, members: u8) -> Ring {
        Ring {
            cluster_id: "uid-1".into(),
            epoch,
            members: (0..members)
                .map(|i| RingMember {
                    id: u32::from(i),
                    position: i,
                    address: format!("events-{i}.events-replicas.prod.svc:8091"),
                    client_address: None,
                })
                .collect(),
            standbys: Vec::new(),
            next_member_id: u32::from(members),
        }
    }

    #[test]
    fn the_running_ring_is_in_force_and_every_other_is_refused_with_its_reason() {
        let running = ring(1, 3);
        assert_eq!(
            consider(Some(&running), &running),
            Ok(RingUpdate {
                epoch: 1,
                applied: true
            })
        );
        assert_eq!(consider(None, &running), Err(RingRefusal::SingleNode));
        let mut other = running.clone();
        other.cluster_id = "uid-2".into();
        assert!(matches!(
            consider(Some(&running), &other),
            Err(RingRefusal::OtherCluster { .. })
        ));
        assert_eq!(
            consider(Some(&ring(2, 3)), &running),
            Err(RingRefusal::Stale {
                posted: 1,
                running: 2
            })
        );
        let grown = consider(Some(&running), &ring(2, 5)).expect_err("refused");
        assert_eq!(
            grown,
            RingRefusal::Reconfiguration {
                posted: 2,
                running: 1
            }
        );
        assert!(grown.to_string().contains("reconfiguration by epochs"));
        let mut broken = running.clone();
        broken.members[1].id = 0;
        let invalid = consider(Some(&running), &broken).expect_err("refused");
        assert!(invalid.is_bad_request(), "{invalid}");
    }
}
