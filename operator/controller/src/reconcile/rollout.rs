//! Rolling restarts. The StatefulSet uses `updateStrategy: OnDelete`, so a new pod template (an
//! image or config edit) reaches a broker only when its pod is deleted. This module decides,
//! from what the API shows, which pod goes next — one at a time, backups before the primary,
//! the primary only after it handed its view on — and [`execute`] carries that one step out.
//!
//! The plan is recomputed from the pods on every reconcile (which pods run an older revision,
//! which are ready, which is primary, whether the primary was asked to step down), so there is
//! no progress record to lose: an operator restarted in the middle of a rollout finds the same
//! next step. What the rollout is doing is reported in the `Progressing` condition.

use super::status::{pod_condition, Observed};
use crate::names::{READINESS_GATE, ROLE_LABEL};
use iggy_contract::labels::STEP_DOWN_ANNOTATION;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// How long a primary asked to step down may take before its pod is restarted anyway (a
/// restart of the primary is a failover the ring survives; waiting forever would stall every
/// later rollout behind one unresponsive broker).
pub const STEP_DOWN_GRACE: Duration = Duration::from_secs(30);

/// The StatefulSet controller's label naming the revision a pod was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// The value of the step-down annotation: which revision the restart moves to and when the
/// operator asked, so the grace period survives an operator restart.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepDownRequest {
    pub revision: String,
    pub requested_at: String,
}

/// The one thing the rollout does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every pod runs the current template (or there is no StatefulSet yet).
    Idle,
    /// Pods run an older template but none may restart now; says why.
    Waiting {
        outdated: usize,
        total: usize,
        why: String,
    },
    /// Ask the primary's sidecar to have its broker step down (annotate the pod).
    StepDown {
        pod: String,
        revision: String,
        outdated: usize,
        total: usize,
    },
    /// Delete the pod (by uid), so the StatefulSet recreates it from the current template.
    Restart {
        pod: String,
        uid: String,
        role: String,
        outdated: usize,
        total: usize,
        /// The primary did not hand over within [`STEP_DOWN_GRACE`].
        forced: bool,
    },
}

impl Step {
    /// The `Progressing` message while a rollout runs; `None` when idle.
    pub fn describe(&self) -> Option<String> {
        let progress = |outdated: usize, total: usize| {
            format!(
                "{} of {total} brokers run the current template",
                total - outdated
            )
        };
        match self {
            Step::Idle => None,
            Step::Waiting {
                outdated,
                total,
                why,
            } => Some(format!(
                "rolling restart: {}; {why}",
                progress(*outdated, *total)
            )),
            Step::StepDown {
                pod,
                outdated,
                total,
                ..
            } => Some(format!(
                "rolling restart: {}; the primary {pod} is asked to step down before its restart",
                progress(*outdated, *total)
            )),
            Step::Restart {
                pod,
                role,
                outdated,
                total,
                ..
            } => Some(format!(
                "rolling restart: {}; restarting {pod} ({role})",
                progress(*outdated, *total)
            )),
        }
    }
}

fn revision(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

fn ordinal(pod: &Pod) -> u32 {
    pod.name_any()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u32::MAX)
}

fn step_down_request(pod: &Pod) -> Option<StepDownRequest> {
    serde_json::from_str(pod.annotations().get(STEP_DOWN_ANNOTATION)?).ok()
}

/// The next step of the rollout of a ring of `members`.
pub fn plan(observed: &Observed, members: usize, now: Timestamp) -> Step {
    let Some(set) = &observed.statefulset else {
        return Step::Idle;
    };
    let Some(set_status) = &set.status else {
        return Step::Idle;
    };
    let Some(target) = set_status.update_revision.as_deref() else {
        return Step::Idle;
    };
    let total = observed.pods.len().max(members);
    let mut outdated: Vec<&Pod> = observed
        .pods
        .iter()
        .filter(|pod| revision(pod) != Some(target))
        .collect();
    if outdated.is_empty() {
        return Step::Idle;
    }
    outdated.sort_by_key(|pod| std::cmp::Reverse(ordinal(pod)));
    let waiting = |why: String| Step::Waiting {
        outdated: outdated.len(),
        total,
        why,
    };
    // The StatefulSet controller must have seen the template the revision names.
    if set_status.observed_generation < set.metadata.generation {
        return waiting("the StatefulSet controller has not seen the new template yet".into());
    }
    if observed.pods.len() != members {
        return waiting(format!(
            "{} of {members} pods exist; the ring restarts members only when all are there",
            observed.pods.len()
        ));
    }
    if let Some(going) = observed
        .pods
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_some())
    {
        return waiting(format!("{} is terminating", going.name_any()));
    }
    let ready = |pod: &Pod| pod_condition(pod, READINESS_GATE);
    let unready: Vec<&Pod> = observed.pods.iter().filter(|p| !ready(p)).collect();
    let restart = |pod: &Pod, forced: bool| Step::Restart {
        pod: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        role: pod
            .labels()
            .get(ROLE_LABEL)
            .cloned()
            .unwrap_or_else(|| "no role".into()),
        outdated: outdated.len(),
        total,
        forced,
    };
    match unready.as_slice() {
        [] => {}
        // A member that is down on the old template counts against the quorum already:
        // restarting it costs nothing and may be what brings it back.
        [down] if revision(down) != Some(target) => return restart(down, false),
        [down] => {
            return waiting(format!(
                "waiting for {} to catch up ({READINESS_GATE})",
                down.name_any()
            ))
        }
        several => {
            let names: Vec<String> = several.iter().map(|p| p.name_any()).collect();
            return waiting(format!(
                "waiting for {} to catch up ({READINESS_GATE})",
                names.join(", ")
            ));
        }
    }
    let is_primary =
        |pod: &Pod| pod.labels().get(ROLE_LABEL).map(String::as_str) == Some("primary");
    if let Some(backup) = outdated.iter().find(|pod| !is_primary(pod)) {
        return restart(backup, false);
    }
    let Some(primary) = outdated.first() else {
        return Step::Idle;
    };
    if members < 2 {
        return restart(primary, false);
    }
    match step_down_request(primary) {
        Some(request) if request.revision == target => {
            let asked = request.requested_at.parse::<Timestamp>().ok();
            let overdue = asked.is_none_or(|asked| {
                now.duration_since(asked).as_secs() >= STEP_DOWN_GRACE.as_secs() as i64
            });
            if overdue {
                restart(primary, true)
            } else {
                waiting(format!(
                    "the primary {} is handing its view on before its restart",
                    primary.name_any()
                ))
            }
        }
        _ => Step::StepDown {
            pod: primary.name_any(),
            revision: target.to_string(),
            outdated: outdated.len(),
            total,
        },
    }
}

/// Pods still asked to step down for a revision that is no longer the target (the edit was
/// reverted, or replaced by another, before the primary's turn came). Left in place, the
/// request would make the pod's sidecar hand the view on whenever its broker became primary
/// again; the operator removes it.
pub fn stale_step_down_requests(observed: &Observed) -> Vec<String> {
    let target = observed
        .statefulset
        .as_ref()
        .and_then(|set| set.status.as_ref()?.update_revision.clone());
    let Some(target) = target else {
        return Vec::new();
    };
    observed
        .pods
        .iter()
        .filter(|pod| {
            pod.annotations().contains_key(STEP_DOWN_ANNOTATION)
                && (revision(pod) == Some(target.as_str())
                    || step_down_request(pod).is_none_or(|r| r.revision != target))
        })
        .map(|pod| pod.name_any())
        .collect()
}

/// Removes the step-down request from each of `pods`.
pub async fn withdraw_step_downs(
    client: &Client,
    namespace: &str,
    pods: &[String],
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {STEP_DOWN_ANNOTATION: null}}});
    for pod in pods {
        match api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Carries out `step`: annotates the primary or deletes one pod. A pod deleted or replaced
/// since it was observed is left alone (the uid precondition).
pub async fn execute(
    client: &Client,
    namespace: &str,
    step: &Step,
    now: &str,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match step {
        Step::Idle | Step::Waiting { .. } => Ok(()),
        Step::StepDown { pod, revision, .. } => {
            let request = StepDownRequest {
                revision: revision.clone(),
                requested_at: now.to_string(),
            };
            let value = serde_json::to_string(&request).unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {STEP_DOWN_ANNOTATION: value}}});
            pods.patch(pod, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
        Step::Restart { pod, uid, .. } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(pod, &params).await {
                Ok(_) => Ok(()),
                // Gone or replaced already: the next reconcile sees the new pod.
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
                Err(error) => Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use std::collections::BTreeMap;

    const NEW: &str = "events-new";
    const OLD: &str = "events-old";

    fn set() -> StatefulSet {
        let mut set = StatefulSet::default();
        set.metadata.generation = Some(2);
        set.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            update_revision: Some(NEW.into()),
            ..StatefulSetStatus::default()
        });
        set
    }

    fn pod(ordinal: u32, revision: &str, role: &str, ready: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(format!("events-{ordinal}"));
        pod.metadata.uid = Some(format!("uid-{ordinal}-{revision}"));
        pod.metadata.labels = Some(BTreeMap::from([
            (REVISION_LABEL.to_string(), revision.to_string()),
            (ROLE_LABEL.to_string(), role.to_string()),
        ]));
        pod.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: READINESS_GATE.into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    fn observed(pods: Vec<Pod>) -> Observed {
        Observed {
            statefulset: Some(set()),
            pods,
            collector: None,
            claims: Vec::new(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    const NOW: &str = "2026-12-03T12:00:00Z";

    #[test]
    fn a_current_ring_has_nothing_to_do() {
        let pods = (0..3)
            .map(|i| pod(i, NEW, if i == 0 { "primary" } else { "backup" }, true))
            .collect();
        assert_eq!(plan(&observed(pods), 3, at(NOW)), Step::Idle);
    }

    #[test]
    fn backups_restart_first_one_at_a_time_and_the_primary_steps_down_last() {
        let roles = ["backup", "primary", "backup"];
        let mut pods: Vec<Pod> = (0..3)
            .map(|i| pod(i, OLD, roles[i as usize], true))
            .collect();
        // The highest ordinal backup first.
        let step = plan(&observed(pods.clone()), 3, at(NOW));
        assert!(
            matches!(&step, Step::Restart { pod, forced: false, .. } if pod == "events-2"),
            "{step:?}"
        );
        // While it comes back on the new template, nothing else moves.
        pods[2] = pod(2, NEW, "backup", false);
        let step = plan(&observed(pods.clone()), 3, at(NOW));
        assert!(
            matches!(&step, Step::Waiting { why, .. } if why.contains("events-2")),
            "{step:?}"
        );
        pods[2] = pod(2, NEW, "backup", true);
        let step = plan(&observed(pods.clone()), 3, at(NOW));
        assert!(
            matches!(&step, Step::Restart { pod, .. } if pod == "events-0"),
            "{step:?}"
        );
        pods[0] = pod(0, NEW, "backup", true);
        // Only the primary is left: it is asked to step down, not deleted.
        let step = plan(&observed(pods.clone()), 3, at(NOW));
        assert_eq!(
            step,
            Step::StepDown {
                pod: "events-1".into(),
                revision: NEW.into(),
                outdated: 1,
                total: 3
            }
        );
        let request = StepDownRequest {
            revision: NEW.into(),
            requested_at: NOW.into(),
        };
        pods[1].metadata.annotations = Some(BTreeMap::from([(
            STEP_DOWN_ANNOTATION.to_string(),
            serde_json::to_string(&request).expect("json"),
        )]));
        let step = plan(&observed(pods.clone()), 3, at("2026-12-03T12:00:10Z"));
        assert!(
            matches!(&step, Step::Waiting { why, .. } if why.contains("handing")),
            "{step:?}"
        );
        // Past the grace period it restarts anyway.
        let step = plan(&observed(pods.clone()), 3, at("2026-12-03T12:00:31Z"));
        assert!(
            matches!(&step, Step::Restart { forced: true, .. }),
            "{step:?}"
        );
        // Once another member is primary, the old one is an ordinary backup.
        pods[1]
            .labels_mut()
            .insert(ROLE_LABEL.into(), "backup".into());
        pods[0]
            .labels_mut()
            .insert(ROLE_LABEL.into(), "primary".into());
        let step = plan(&observed(pods), 3, at("2026-12-03T12:00:10Z"));
        assert!(
            matches!(&step, Step::Restart { pod, forced: false, .. } if pod == "events-1"),
            "{step:?}"
        );
    }

    #[test]
    fn a_member_down_on_the_old_template_goes_first_and_two_down_stop_the_rollout() {
        let mut pods: Vec<Pod> = (0..3).map(|i| pod(i, OLD, "backup", true)).collect();
        pods[0] = pod(0, OLD, "primary", true);
        pods[1] = pod(1, OLD, "recovering", false);
        let step = plan(&observed(pods.clone()), 3, at(NOW));
        assert!(
            matches!(&step, Step::Restart { pod, .. } if pod == "events-1"),
            "{step:?}"
        );
        pods[2] = pod(2, OLD, "recovering", false);
        let step = plan(&observed(pods), 3, at(NOW));
        assert!(matches!(&step, Step::Waiting { .. }), "{step:?}");
    }

    #[test]
    fn a_step_down_request_for_a_revision_no_longer_wanted_is_stale() {
        let request = |revision: &str| {
            serde_json::to_string(&StepDownRequest {
                revision: revision.into(),
                requested_at: NOW.into(),
            })
            .expect("json")
        };
        let mut pods: Vec<Pod> = (0..3).map(|i| pod(i, OLD, "backup", true)).collect();
        // Asked for the current target: not stale.
        pods[0].metadata.annotations = Some(BTreeMap::from([(
            STEP_DOWN_ANNOTATION.to_string(),
            request(NEW),
        )]));
        // Asked for a revision the edit moved past: stale.
        pods[1].metadata.annotations = Some(BTreeMap::from([(
            STEP_DOWN_ANNOTATION.to_string(),
            request("events-older"),
        )]));
        // Already on the target (the edit was reverted to what it runs): stale.
        pods[2] = pod(2, NEW, "primary", true);
        pods[2].metadata.annotations = Some(BTreeMap::from([(
            STEP_DOWN_ANNOTATION.to_string(),
            request(NEW),
        )]));
        assert_eq!(
            stale_step_down_requests(&observed(pods)),
            vec!["events-1".to_string(), "events-2".to_string()]
        );
    }

    #[test]
    fn a_single_member_restarts_without_a_hand_over() {
        let step = plan(&observed(vec![pod(0, OLD, "primary", true)]), 1, at(NOW));
        assert!(
            matches!(&step, Step::Restart { pod, .. } if pod == "events-0"),
            "{step:?}"
        );
    }

    #[test]
    fn a_missing_or_terminating_pod_or_an_unseen_template_waits() {
        let pods: Vec<Pod> = (0..2).map(|i| pod(i, OLD, "backup", true)).collect();
        assert!(matches!(
            plan(&observed(pods.clone()), 3, at(NOW)),
            Step::Waiting { .. }
        ));
        let mut all: Vec<Pod> = (0..3).map(|i| pod(i, OLD, "backup", true)).collect();
        all[0].metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(NOW)),
        );
        assert!(matches!(
            plan(&observed(all), 3, at(NOW)),
            Step::Waiting { .. }
        ));
        let mut unseen = observed((0..3).map(|i| pod(i, OLD, "backup", true)).collect());
        if let Some(set) = unseen.statefulset.as_mut() {
            set.metadata.generation = Some(3);
        }
        assert!(matches!(plan(&unseen, 3, at(NOW)), Step::Waiting { .. }));
    }
}
