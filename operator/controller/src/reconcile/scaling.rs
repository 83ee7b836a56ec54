//! Scaling by epochs. `spec.replicas` is what the user wants; the ring ConfigMap is the
//! proposal the brokers act on; the epoch their sidecars report (the `iggy.rs/replica-state`
//! annotation) is what the log committed. This module decides, from those three alone, which
//! ring to publish and how many pods to run — so, like the rolling restart, it keeps no
//! progress record of its own, and an operator restarted halfway takes the same next step.
//!
//! * **Up** (`m` members to `w`): publish a ring with positions `m..w` as standbys and start
//!   their pods; once that epoch committed and every standby reports caught up, publish the
//!   ring with all `w` as members.
//! * **Down** (`m` to `w`): only when every remaining member is caught up in the running epoch
//!   (else `ScaleDownBlocked`, and the ring stays); then publish the ring of `w` members. The
//!   leaving pods keep running until that epoch committed and every remaining member holds its
//!   start (their `caughtUp`), since until then a leaver may hold the only durable copy of the
//!   history the new epoch starts from; then the StatefulSet shrinks.
//!
//! Brokers refuse a ring whose new members were not standbys first, so publishing the steps in
//! this order is also what makes each one acceptable to them (docs/operator.md, "Scaling").

use super::status::Observed;
use crate::names::ClusterNames;
use crate::ring;
use iggy_contract::labels::REPLICA_STATE_ANNOTATION;
use iggy_contract::{Epoch, Position, Ring};
use kube::ResourceExt;
use serde::Deserialize;
use std::collections::BTreeMap;

/// What a broker's sidecar reports about it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub epoch: Epoch,
    pub role: String,
    pub caught_up: bool,
    /// Its broker is short of disk space (`AdminStatus::disk_pressure`); absent from sidecars
    /// older than it.
    #[serde(default)]
    pub disk_pressure: bool,
}

/// The reports of the cluster's running pods, by position.
pub fn reports(observed: &Observed, names: &ClusterNames) -> BTreeMap<Position, Report> {
    let prefix = format!("{}-", names.statefulset());
    observed
        .pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let name = pod.name_any();
            let position = name.strip_prefix(&prefix)?.parse().ok()?;
            let state = pod.annotations().get(REPLICA_STATE_ANNOTATION)?;
            Some((position, serde_json::from_str(state).ok()?))
        })
        .collect()
}

/// Whether the cluster has formed: the ring says so already, or a quorum of its members
/// reports running its epoch (from then on the log may hold acknowledged writes, and a member
/// that comes back on an empty disk must not vote with it — `Ring::bootstrapped`).
pub fn formed(current: &Ring, reports: &BTreeMap<Position, Report>) -> bool {
    let members = current.members.len();
    let running = current
        .members
        .iter()
        .filter(|m| {
            reports
                .get(&m.position)
                .is_some_and(|r| r.epoch >= current.epoch)
        })
        .count();
    current.bootstrapped || (members > 0 && running > members / 2)
}

/// Where a scale change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Steady,
    /// Under way; the `Progressing` reason and message.
    Progress {
        reason: &'static str,
        message: String,
    },
    /// A scale-down that would be unsafe now, and why (`ScaleDownBlocked`).
    Blocked(String),
}

/// The ring to publish, the pods to run, and what to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub ring: Ring,
    pub pods: Position,
    pub phase: Phase,
    /// An Event for a step taken now: (reason, note).
    pub event: Option<(&'static str, String)>,
}

impl Decision {
    /// A step taken now: `ring` published, `pods` run, `Progressing` with `reason`, and the
    /// Event (`reason`, note) that also serves as the `Progressing` message.
    fn published(
        ring: Ring,
        pods: Position,
        progress: &'static str,
        (event, note): (&'static str, String),
    ) -> Self {
        Decision {
            ring,
            pods,
            phase: Phase::Progress {
                reason: progress,
                message: note.clone(),
            },
            event: Some((event, note)),
        }
    }
}

/// The next step from `current` (the published ring) towards `wanted` members, given the
/// brokers' reports and the pods the StatefulSet runs now.
pub fn plan(
    names: &ClusterNames,
    current: &Ring,
    wanted: Position,
    reports: &BTreeMap<Position, Report>,
    running_pods: Option<Position>,
) -> Decision {
    let members = current.members.len() as Position;
    let standbys = current.standbys.len() as Position;
    let epoch = current.epoch;
    let committed = reports.values().any(|r| r.epoch >= epoch);
    let caught_up = |position: Position| {
        reports
            .get(&position)
            .is_some_and(|r| r.epoch >= epoch && r.caught_up)
    };
    let pod_names = |positions: &mut dyn Iterator<Item = Position>| {
        positions
            .map(|p| names.pod(p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let publish = |members: Position, standbys: Position| {
        ring::plan_with_standbys(names, &current.cluster_id, members, standbys, Some(current))
    };
    let stay = |pods: Position, phase: Phase| Decision {
        ring: current.clone(),
        pods,
        phase,
        event: None,
    };
    let waiting_for_commit = || Phase::Progress {
        reason: if wanted >= members {
            "ScalingUp"
        } else {
            "ScalingDown"
        },
        message: format!("waiting for the brokers to commit ring epoch {epoch}"),
    };

    if standbys > 0 {
        // Growing: the standbys follow the log.
        if !committed {
            return stay(members + standbys, waiting_for_commit());
        }
        if wanted != members + standbys {
            // The user changed course: the standbys this ring adds are not the ones wanted.
            let next_standbys = wanted.saturating_sub(members);
            let ring = publish(members, next_standbys);
            let note = format!(
                "ring epoch {}: {members} members, {next_standbys} standbys (spec.replicas is now {wanted})",
                ring.epoch
            );
            return Decision::published(
                ring,
                members + standbys.max(next_standbys),
                "ScalingUp",
                ("ScalingChanged", note),
            );
        }
        let behind: Vec<Position> = (members..members + standbys)
            .filter(|p| !caught_up(*p))
            .collect();
        if !behind.is_empty() {
            let pods = pod_names(&mut behind.iter().copied());
            return stay(
                members + standbys,
                Phase::Progress {
                    reason: "ScalingUp",
                    message: format!(
                        "ring epoch {epoch}: waiting for the standbys {pods} to catch up"
                    ),
                },
            );
        }
        let ring = publish(wanted, 0);
        let note = format!(
            "ring epoch {}: {} joins as members ({wanted} in all)",
            ring.epoch,
            pod_names(&mut (members..wanted))
        );
        return Decision::published(ring, wanted, "ScalingUp", ("MembersAdded", note));
    }

    let running = running_pods.unwrap_or(members).max(members);
    if wanted == members {
        if running > members {
            // A smaller ring was published: its leavers go once it committed and every
            // member holds its start.
            let holding: Vec<Position> = (0..members).filter(|p| !caught_up(*p)).collect();
            if committed && holding.is_empty() {
                let note = format!(
                    "ring epoch {epoch} committed: removing {}",
                    pod_names(&mut (members..running))
                );
                return Decision {
                    ring: current.clone(),
                    pods: members,
                    phase: Phase::Steady,
                    event: Some(("MembersRemoved", note)),
                };
            }
            return stay(
                running,
                Phase::Progress {
                    reason: "ScalingDown",
                    message: format!(
                        "ring epoch {epoch}: {} leave once every member holds the epoch's start",
                        pod_names(&mut (members..running))
                    ),
                },
            );
        }
        return stay(members, Phase::Steady);
    }
    if !committed {
        return stay(running, waiting_for_commit());
    }
    if wanted > members {
        let ring = publish(members, wanted - members);
        let note = format!(
            "ring epoch {}: {} start as standbys and catch up before they become members",
            ring.epoch,
            pod_names(&mut (members..wanted))
        );
        return Decision::published(ring, wanted.max(running), "ScalingUp", ("ScalingUp", note));
    }
    // Shrinking: only with every remaining member caught up in the running epoch, so the
    // smaller ring starts with a full quorum of up-to-date members.
    let behind: Vec<Position> = (0..wanted).filter(|p| !caught_up(*p)).collect();
    if !behind.is_empty() {
        let pods = pod_names(&mut behind.iter().copied());
        return stay(
            running,
            Phase::Blocked(format!(
                "removing {} waits: {pods} {} down or not caught up in ring epoch {epoch}, and every member that stays must be",
                pod_names(&mut (wanted..members)),
                if behind.len() == 1 { "is" } else { "are" }
            )),
        );
    }
    let ring = publish(wanted, 0);
    let note = format!(
        "ring epoch {}: {wanted} members; {} leave once it commits",
        ring.epoch,
        pod_names(&mut (wanted..members))
    );
    Decision::published(ring, running, "ScalingDown", ("ScalingDown", note))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames::new("events", "prod")
    }

    fn report(epoch: Epoch, role: &str, caught_up: bool) -> Report {
        Report {
            epoch,
            role: role.into(),
            caught_up,
            disk_pressure: false,
        }
    }

    /// Every position in `positions` reports `epoch`, caught up.
    fn all(epoch: Epoch, positions: std::ops::Range<Position>) -> BTreeMap<Position, Report> {
        positions
            .map(|p| (p, report(epoch, "backup", true)))
            .collect()
    }

    #[test]
    fn three_grow_to_five_through_standbys_one_step_per_committed_epoch() {
        let three = ring::plan(&names(), "uid", 3, None);
        // Nothing reported yet: nothing moves.
        let waiting = plan(&names(), &three, 5, &BTreeMap::new(), Some(3));
        assert_eq!((waiting.ring.epoch, waiting.pods), (1, 3));
        assert!(matches!(
            waiting.phase,
            Phase::Progress {
                reason: "ScalingUp",
                ..
            }
        ));
        // Epoch 1 in force: standbys first.
        let step = plan(&names(), &three, 5, &all(1, 0..3), Some(3));
        assert_eq!(
            (
                step.ring.epoch,
                step.ring.members.len(),
                step.ring.standbys.len(),
                step.pods
            ),
            (2, 3, 2, 5)
        );
        assert_eq!(step.event.as_ref().map(|e| e.0), Some("ScalingUp"));
        let joining = step.ring;
        // Committed, but a standby is behind: wait.
        let mut reports = all(2, 0..5);
        reports.insert(4, report(2, "standby", false));
        let step = plan(&names(), &joining, 5, &reports, Some(5));
        assert_eq!(step.ring, joining);
        assert!(
            matches!(&step.phase, Phase::Progress { message, .. } if message.contains("events-4")),
            "{:?}",
            step.phase
        );
        // Caught up: members.
        let step = plan(&names(), &joining, 5, &all(2, 0..5), Some(5));
        assert_eq!((step.ring.epoch, step.ring.members.len()), (3, 5));
        assert_eq!(step.event.as_ref().map(|e| e.0), Some("MembersAdded"));
        // In force: steady.
        let five = step.ring;
        let steady = plan(&names(), &five, 5, &all(3, 0..5), Some(5));
        assert_eq!(
            (steady.ring.clone(), steady.pods, steady.phase),
            (five, 5, Phase::Steady)
        );
    }

    #[test]
    fn five_shrink_to_three_only_with_every_remaining_member_caught_up() {
        let three = ring::plan(&names(), "uid", 3, None);
        let five = ring::plan(&names(), "uid", 5, Some(&three));
        let mut reports = all(five.epoch, 0..5);
        reports.insert(1, report(five.epoch, "backup", false));
        let blocked = plan(&names(), &five, 3, &reports, Some(5));
        assert_eq!(blocked.ring, five);
        assert!(
            matches!(&blocked.phase, Phase::Blocked(why) if why.contains("events-1")),
            "{:?}",
            blocked.phase
        );
        // A leaving member down does not block.
        let mut reports = all(five.epoch, 0..3);
        reports.insert(4, report(five.epoch, "backup", false));
        let step = plan(&names(), &five, 3, &reports, Some(5));
        assert_eq!((step.ring.members.len(), step.pods), (3, 5), "pods stay");
        assert_eq!(step.event.as_ref().map(|e| e.0), Some("ScalingDown"));
        let smaller = step.ring;
        // Not committed yet, or a member not holding the new start: the leavers stay.
        let step = plan(&names(), &smaller, 3, &all(five.epoch, 0..5), Some(5));
        assert_eq!(step.pods, 5);
        let mut reports = all(smaller.epoch, 0..3);
        reports.insert(2, report(smaller.epoch, "backup", false));
        assert_eq!(plan(&names(), &smaller, 3, &reports, Some(5)).pods, 5);
        // Committed and held by every member: the StatefulSet shrinks.
        let done = plan(&names(), &smaller, 3, &all(smaller.epoch, 0..3), Some(5));
        assert_eq!(done.pods, 3);
        assert_eq!(done.event.as_ref().map(|e| e.0), Some("MembersRemoved"));
        assert_eq!(
            plan(&names(), &smaller, 3, &all(smaller.epoch, 0..3), Some(3)),
            Decision {
                ring: smaller,
                pods: 3,
                phase: Phase::Steady,
                event: None
            }
        );
    }

    #[test]
    fn a_changed_course_while_standbys_join_adjusts_them_first() {
        let three = ring::plan(&names(), "uid", 3, None);
        let joining = ring::plan_with_standbys(&names(), "uid", 3, 2, Some(&three));
        let step = plan(&names(), &joining, 3, &all(joining.epoch, 0..5), Some(5));
        assert_eq!(
            (
                step.ring.members.len(),
                step.ring.standbys.len(),
                step.ring.epoch
            ),
            (3, 0, joining.epoch + 1)
        );
        assert_eq!(
            step.pods, 5,
            "the standby pods go once the ring without them is in force"
        );
        let back = plan(
            &names(),
            &step.ring,
            3,
            &all(step.ring.epoch, 0..3),
            Some(5),
        );
        assert_eq!(back.pods, 3);
    }

    #[test]
    fn a_cluster_formed_once_a_quorum_of_its_members_runs_the_ring() {
        let three = ring::plan(&names(), "uid", 3, None);
        assert!(!formed(&three, &BTreeMap::new()));
        assert!(!formed(&three, &all(1, 0..1)), "one of three");
        assert!(formed(&three, &all(1, 1..3)), "two of three");
        // Standbys do not count: a standby ran nothing the members committed.
        let joining = ring::plan_with_standbys(&names(), "uid", 1, 2, Some(&three));
        assert!(!formed(&joining, &all(joining.epoch, 1..3)));
        let mut marked = three;
        marked.bootstrapped = true;
        assert!(formed(&marked, &BTreeMap::new()), "once formed, always");
        assert!(
            ring::plan(&names(), "uid", 5, Some(&marked)).bootstrapped,
            "later rings keep the mark"
        );
    }

    #[test]
    fn reports_come_from_the_sidecars_annotation_by_pod_ordinal() {
        use k8s_openapi::api::core::v1::Pod;
        let pod = |name: &str, state: Option<&str>| {
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.into());
            if let Some(state) = state {
                pod.metadata.annotations = Some(
                    [(REPLICA_STATE_ANNOTATION.to_string(), state.to_string())]
                        .into_iter()
                        .collect(),
                );
            }
            pod
        };
        let observed = Observed {
            statefulset: None,
            pods: vec![
                pod(
                    "events-0",
                    Some(r#"{"epoch":2,"view":1,"role":"primary","caughtUp":true}"#),
                ),
                pod("events-1", None),
                pod("events-2", Some("not json")),
            ],
            claims: Vec::new(),
            collector: None,
        };
        let reports = reports(&observed, &names());
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[&0], report(2, "primary", true));
    }
}
