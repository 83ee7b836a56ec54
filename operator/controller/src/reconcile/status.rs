//! Status: what the cluster looks like now, computed by a pure function from the spec's
//! outcome and the observed StatefulSet and pods, and written only when it changed.

use super::validate::{ValidatedCluster, ValidationError};
use crate::certificate;
use crate::crd::{Condition, IggyCluster, IggyClusterStatus, RingMemberStatus, RingStatus};
use crate::names::{ClusterNames, READINESS_GATE, ROLE_LABEL};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// What the API shows of the cluster's brokers.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub statefulset: Option<StatefulSet>,
    pub pods: Vec<Pod>,
    /// The brokers' PersistentVolumeClaims (for `status.ring.members[].pv`).
    pub claims: Vec<PersistentVolumeClaim>,
    /// The operator-deployed OpenTelemetry Collector, when there is one.
    pub collector: Option<Deployment>,
}

#[tracing::instrument(name = "observe", skip_all)]
pub async fn observe(client: &Client, names: &ClusterNames) -> Result<Observed, kube::Error> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &names.namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let brokers = ListParams::default().labels(&names.selector_string());
    Ok(Observed {
        statefulset: sets.get_opt(&names.statefulset()).await?,
        pods: pods.list(&brokers).await?.items,
        claims: claims.list(&brokers).await?.items,
        collector: deployments.get_opt(&names.collector()).await?,
    })
}

/// How the reconcile went before status: the spec was invalid, applying failed, or all was
/// applied.
pub enum Outcome<'a> {
    Invalid(&'a ValidationError),
    ApplyFailed(&'a ValidatedCluster, String),
    Applied(&'a ValidatedCluster),
}

pub(super) fn pod_condition(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
        })
}

/// Waiting reasons that mean a container will not come up by itself.
const FAILING_REASONS: [&str; 7] = [
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
];

/// The first pod container stuck failing, described for the Degraded condition: pod,
/// container, reason, and the last exit code when it ran.
fn failing_container(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|container| {
            let waiting = container.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            if !FAILING_REASONS.contains(&reason) {
                return None;
            }
            let exit = container
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| format!(", last exit code {}", t.exit_code))
                .unwrap_or_default();
            let detail = waiting
                .message
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Some(format!(
                "pod {} container {}: {reason} ({} restarts{exit}){detail}; see kubectl logs {} -c {}{}",
                pod.name_any(),
                container.name,
                container.restart_count,
                pod.name_any(),
                container.name,
                if reason == "CrashLoopBackOff" { " --previous" } else { "" },
            ))
        })
    })
}

/// Keeps the previous transition time when a condition's status did not change.
fn condition(
    previous: &[Condition],
    kind: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: kind.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

pub fn compute(
    cluster: &IggyCluster,
    outcome: &Outcome<'_>,
    observed: &Observed,
    now: &str,
) -> IggyClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    // The stamp as a time, for what depends on the clock (a rollout's grace, a certificate's
    // expiry).
    let at: k8s_openapi::jiff::Timestamp = now
        .parse()
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
    let names = ClusterNames::new(
        &cluster.name_any(),
        &cluster.namespace().unwrap_or_default(),
    );
    let pod = |name: &str| observed.pods.iter().find(|p| p.name_any() == name);
    let ready_pods = observed
        .pods
        .iter()
        .filter(|p| pod_condition(p, "Ready"))
        .count() as i32;
    let mut status = IggyClusterStatus {
        observed_generation: generation,
        conditions: Vec::new(),
        replicas: observed.pods.len() as i32,
        ready_replicas: ready_pods,
        selector: Some(names.selector_string()),
        ring: previous.ring.clone(),
        bucket: previous.bucket.clone(),
        tls: None,
    };
    let validated = match outcome {
        Outcome::Invalid(_) => None,
        Outcome::ApplyFailed(v, _) | Outcome::Applied(v) => Some(*v),
    };
    let reports = super::scaling::reports(observed, &names);
    if let Some(valid) = validated {
        let members: Vec<RingMemberStatus> = valid
            .ring
            .members
            .iter()
            .chain(&valid.ring.standbys)
            .map(|member| {
                let pod_name = names.pod(member.position);
                let found = pod(&pod_name);
                let pvc = names.claim(member.position);
                let pv = observed
                    .claims
                    .iter()
                    .find(|claim| claim.name_any() == pvc)
                    .and_then(|claim| claim.spec.as_ref()?.volume_name.clone());
                RingMemberStatus {
                    position: member.position,
                    id: member.id,
                    pvc,
                    pv,
                    address: member.address.clone(),
                    node: found.and_then(|p| p.spec.as_ref()?.node_name.clone()),
                    role: found.and_then(|p| p.labels().get(ROLE_LABEL).cloned()),
                    caught_up: found.is_some_and(|p| pod_condition(p, READINESS_GATE)),
                    disk_pressure: reports
                        .get(&member.position)
                        .is_some_and(|r| r.disk_pressure),
                    pod: pod_name,
                }
            })
            .collect();
        let primary = members
            .iter()
            .find(|m| m.role.as_deref() == Some("primary"))
            .map(|m| m.pod.clone());
        status.ring = Some(RingStatus {
            epoch: valid.ring.epoch,
            primary,
            members,
        });
    }
    // The members the cluster is meant to run now: the validated count (a held scale change
    // keeps the ring's), or the spec's when it did not validate.
    let wanted = validated
        .map(|v| i32::from(v.replicas))
        .unwrap_or(cluster.spec.replicas)
        .max(0);
    let set_status = observed.statefulset.as_ref().and_then(|s| s.status.clone());
    let set_current = observed.statefulset.as_ref().is_some_and(|set| {
        set.status.as_ref().and_then(|s| s.observed_generation) >= set.metadata.generation
    });
    let outdated = set_status
        .as_ref()
        .map(|s| s.replicas - s.updated_replicas.unwrap_or(0))
        .unwrap_or(0);
    let all_ready =
        validated.is_some() && set_current && status.replicas == wanted && ready_pods == wanted;
    let conditions = &previous.conditions;
    let (ready, degraded, progressing) = match outcome {
        Outcome::Invalid(error) => (
            condition(
                conditions,
                "Ready",
                false,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
            condition(
                conditions,
                "Degraded",
                true,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
            condition(
                conditions,
                "Progressing",
                false,
                error.reason(),
                "waiting for a valid spec".into(),
                generation,
                now,
            ),
        ),
        Outcome::ApplyFailed(_, message) => (
            condition(
                conditions,
                "Ready",
                all_ready,
                if all_ready {
                    "AllReplicasReady"
                } else {
                    "ApplyFailed"
                },
                message.clone(),
                generation,
                now,
            ),
            condition(
                conditions,
                "Degraded",
                true,
                "ApplyFailed",
                message.clone(),
                generation,
                now,
            ),
            condition(
                conditions,
                "Progressing",
                true,
                "Retrying",
                "retrying after a failed apply".into(),
                generation,
                now,
            ),
        ),
        Outcome::Applied(valid) => {
            let ready_message = format!("{ready_pods}/{wanted} brokers ready");
            let failing = failing_container(&observed.pods);
            let (progressing, reason, message) = if let Some(failing) = &failing {
                let reason = if all_ready {
                    "Stable"
                } else {
                    "WaitingForReplicas"
                };
                (!all_ready, reason, failing.clone())
            } else if let super::scaling::Phase::Progress { reason, message } = &valid.scaling {
                (true, *reason, message.clone())
            } else if !all_ready {
                let reason = if status.replicas != wanted {
                    "Scaling"
                } else {
                    "WaitingForReplicas"
                };
                (true, reason, ready_message.clone())
            } else if outdated > 0 {
                let step = super::rollout::plan(observed, wanted as usize, at);
                let message = step.describe().unwrap_or_else(|| {
                    format!("rolling restart: {outdated} broker(s) run an older pod template")
                });
                (true, "RollingRestart", message)
            } else {
                (
                    false,
                    "Stable",
                    "every broker runs the current spec".to_string(),
                )
            };
            let (degraded, degraded_reason, degraded_message) = match failing {
                Some(failing) => (true, "BrokerFailing", failing),
                None => (false, "AsExpected", String::new()),
            };
            (
                condition(
                    conditions,
                    "Ready",
                    all_ready,
                    if all_ready {
                        "AllReplicasReady"
                    } else {
                        "ReplicasNotReady"
                    },
                    ready_message,
                    generation,
                    now,
                ),
                condition(
                    conditions,
                    "Degraded",
                    degraded,
                    degraded_reason,
                    degraded_message,
                    generation,
                    now,
                ),
                condition(
                    conditions,
                    "Progressing",
                    progressing,
                    reason,
                    message,
                    generation,
                    now,
                ),
            )
        }
    };
    status.conditions = vec![ready, progressing, degraded];
    if let Some(valid) = validated {
        let (blocked, reason, message) = match &valid.scaling {
            super::scaling::Phase::Blocked(why) => (true, "MemberNotCaughtUp", why.clone()),
            _ => (false, "NotBlocked", String::new()),
        };
        status.conditions.push(condition(
            conditions,
            "ScaleDownBlocked",
            blocked,
            reason,
            message,
            generation,
            now,
        ));
    }
    let pressed: Vec<String> = reports
        .iter()
        .filter(|(_, report)| report.disk_pressure)
        .map(|(position, _)| names.pod(*position))
        .collect();
    let (reason, message) = if pressed.is_empty() {
        ("EnoughSpace", String::new())
    } else {
        (
            "LowDiskSpace",
            format!(
                "{} have less than twice replication.min_free_space free; the primary refuses \
                 sends below it: delete or purge data, shorten retention, or enlarge the volumes",
                pressed.join(", ")
            ),
        )
    };
    status.conditions.push(condition(
        conditions,
        "DiskPressure",
        !pressed.is_empty(),
        reason,
        message,
        generation,
        now,
    ));
    if let Some(telemetry) = validated.and_then(|v| v.telemetry.as_ref()) {
        let (ok, reason, message) = if telemetry.collector.is_some() {
            let available = observed
                .collector
                .as_ref()
                .and_then(|d| d.status.as_ref()?.available_replicas)
                .unwrap_or(0);
            if available > 0 {
                (
                    true,
                    "CollectorAvailable",
                    format!("collector {} receives OTLP", telemetry.endpoint),
                )
            } else {
                (
                    false,
                    "CollectorNotReady",
                    format!("waiting for the collector Deployment {}", names.collector()),
                )
            }
        } else {
            (
                true,
                "EndpointConfigured",
                format!("brokers export to {}", telemetry.endpoint),
            )
        };
        status.conditions.push(condition(
            conditions,
            "TelemetryReady",
            ok,
            reason,
            message,
            generation,
            now,
        ));
    }
    if let Some((valid, tls, served)) =
        validated.and_then(|v| Some((v, v.tls.as_ref()?, v.served_certificate.as_ref()?)))
    {
        let verdict = certificate::judge(served, &names, valid.replicas, at.as_second());
        status.conditions.push(condition(
            conditions,
            CERTIFICATE_CONDITION,
            verdict.valid,
            verdict.reason,
            verdict.message,
            generation,
            now,
        ));
        status.tls = Some(certificate::status(&tls.secret_name, served));
    }
    status
}

/// The condition that says whether clients will accept the client port's certificate.
pub const CERTIFICATE_CONDITION: &str = "CertificateValid";

/// Writes the status subresource when it differs from what is there; returns whether it wrote.
///
/// The write carries the resourceVersion the status was computed from. The controller's cache
/// can lag behind our own last write; a status computed from a stale copy would otherwise
/// overwrite newer facts (such as `bucket.createdByOperator`, which decides what deletion may
/// remove). A stale write gets 409 Conflict instead and is dropped: the newer version that
/// caused the conflict reaches the controller's watch and triggers a reconcile on fresh data.
#[tracing::instrument(name = "write_status", skip_all)]
pub async fn write(
    client: &Client,
    cluster: &IggyCluster,
    resource_version: Option<String>,
    status: &IggyClusterStatus,
) -> Result<bool, kube::Error> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api: Api<IggyCluster> =
        Api::namespaced(client.clone(), &cluster.namespace().unwrap_or_default());
    let written = api
        .patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": resource_version},
                "status": status,
            })),
        )
        .await;
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let name = cluster.name_any();
            tracing::debug!(cluster = %name, "stale status dropped; a fresher reconcile follows");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::super::build::tests::validated;
    use super::super::validate::tests::cluster;
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ready: bool, gate: bool, role: Option<&str>) -> Pod {
        let mut labels = json!({});
        if let Some(role) = role {
            labels[ROLE_LABEL] = json!(role);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": labels},
            "spec": {"containers": [], "nodeName": format!("node-{name}")},
            "status": {"conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
                {"type": READINESS_GATE, "status": if gate { "True" } else { "False" }},
            ]},
        }))
        .expect("pod")
    }

    fn sts(generation: i64, observed: i64, replicas: i32, updated: i32) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "events", "generation": generation},
            "spec": {"selector": {}, "template": {}, "serviceName": "x"},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated},
        }))
        .expect("sts")
    }

    fn find<'a>(status: &'a IggyClusterStatus, kind: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition present")
    }

    #[test]
    fn ready_when_every_member_is_ready_with_ring_details() {
        let iggy = cluster(json!({"replicas": 2}));
        let valid = validated(json!({"replicas": 2}));
        let observed = Observed {
            statefulset: Some(sts(1, 1, 2, 2)),
            pods: vec![
                pod("events-0", true, true, Some("primary")),
                pod("events-1", true, true, Some("backup")),
            ],
            collector: None,
            claims: vec![serde_json::from_value(json!({
                "metadata": {"name": "data-events-1"},
                "spec": {"volumeName": "iggy-prod-events-1"},
            }))
            .expect("claim")],
        };
        let status = compute(&iggy, &Outcome::Applied(&valid), &observed, "t0");
        assert_eq!(find(&status, "Ready").status, "True");
        assert_eq!(find(&status, "Progressing").reason, "Stable");
        assert_eq!(find(&status, "Degraded").status, "False");
        let ring = status.ring.expect("ring");
        assert_eq!(ring.primary.as_deref(), Some("events-0"));
        assert_eq!(ring.members[1].node.as_deref(), Some("node-events-1"));
        assert!(ring.members.iter().all(|m| m.caught_up));
        assert_eq!(ring.members[0].pvc, "data-events-0");
        assert_eq!(ring.members[0].pv, None, "not bound yet");
        assert_eq!(ring.members[1].pv.as_deref(), Some("iggy-prod-events-1"));
        assert_eq!(status.ready_replicas, 2);
    }

    /// A pod whose sidecar reported `state` (the replica-state annotation's JSON).
    fn reporting(mut pod: Pod, state: serde_json::Value) -> Pod {
        pod.metadata.annotations = Some(
            [(
                iggy_contract::labels::REPLICA_STATE_ANNOTATION.to_string(),
                state.to_string(),
            )]
            .into(),
        );
        pod
    }

    #[test]
    fn a_member_short_of_disk_space_shows_as_disk_pressure() {
        let iggy = cluster(json!({"replicas": 2}));
        let valid = validated(json!({"replicas": 2}));
        let state = |pressure: bool| {
            json!({"epoch": 1, "view": 0, "role": "backup", "caughtUp": true,
                "diskPressure": pressure})
        };
        let observed = |pressure: bool| Observed {
            statefulset: Some(sts(1, 1, 2, 2)),
            pods: vec![
                // A sidecar from before the field: no pressure.
                reporting(
                    pod("events-0", true, true, Some("primary")),
                    json!({"epoch": 1, "view": 0, "role": "primary", "caughtUp": true}),
                ),
                reporting(pod("events-1", true, true, Some("backup")), state(pressure)),
            ],
            collector: None,
            claims: Vec::new(),
        };
        let status = compute(&iggy, &Outcome::Applied(&valid), &observed(true), "t0");
        let pressure = find(&status, "DiskPressure");
        assert_eq!(
            (pressure.status.as_str(), pressure.reason.as_str()),
            ("True", "LowDiskSpace")
        );
        assert!(
            pressure.message.starts_with("events-1 have"),
            "{}",
            pressure.message
        );
        let ring = status.ring.clone().expect("ring");
        assert_eq!(
            ring.members
                .iter()
                .map(|m| m.disk_pressure)
                .collect::<Vec<_>>(),
            vec![false, true]
        );
        assert_eq!(
            find(&status, "Ready").status,
            "True",
            "pressure is not unreadiness"
        );

        let mut later = iggy.clone();
        later.status = Some(status);
        let relieved = compute(&later, &Outcome::Applied(&valid), &observed(false), "t1");
        let pressure = find(&relieved, "DiskPressure");
        assert_eq!(
            (pressure.status.as_str(), pressure.reason.as_str()),
            ("False", "EnoughSpace")
        );
        assert_eq!(pressure.last_transition_time, "t1");
    }

    #[test]
    fn not_ready_while_scaling_and_transition_time_kept() {
        let mut iggy = cluster(json!({"replicas": 3}));
        let valid = validated(json!({"replicas": 3}));
        let observed = Observed {
            statefulset: Some(sts(2, 2, 2, 2)),
            pods: vec![
                pod("events-0", true, true, None),
                pod("events-1", true, true, None),
            ],
            collector: None,
            claims: Vec::new(),
        };
        let first = compute(&iggy, &Outcome::Applied(&valid), &observed, "t0");
        assert_eq!(find(&first, "Ready").status, "False");
        assert_eq!(find(&first, "Progressing").reason, "Scaling");
        iggy.status = Some(first.clone());
        let second = compute(&iggy, &Outcome::Applied(&valid), &observed, "t1");
        assert_eq!(
            first, second,
            "an unchanged cluster computes an identical status"
        );
    }

    #[test]
    fn the_client_certificate_is_judged_in_status_with_its_expiry_and_names() {
        let iggy = cluster(json!({"replicas": 2, "tls": {"secretName": "events-tls"}}));
        let valid = validated(json!({"replicas": 2, "tls": {"secretName": "events-tls"}}));
        let status = compute(
            &iggy,
            &Outcome::Applied(&valid),
            &Observed::default(),
            "2029-06-01T00:00:00Z",
        );
        let tls = status.tls.clone().expect("status.tls");
        assert_eq!(tls.secret_name, "events-tls");
        assert_eq!(tls.not_after, "2030-01-01T00:00:00Z");
        assert_eq!(tls.dns_names, vec!["events.prod.svc".to_string()]);
        // The test certificate names the client Service only.
        let verdict = find(&status, CERTIFICATE_CONDITION);
        assert_eq!(
            (verdict.status.as_str(), verdict.reason.as_str()),
            ("False", "NamesMissing")
        );
        assert!(
            verdict.message.contains("events-primary.prod.svc, events-0.events-replicas.prod.svc, events-1.events-replicas.prod.svc;"),
            "{}",
            verdict.message
        );
        let expired = compute(
            &iggy,
            &Outcome::Applied(&valid),
            &Observed::default(),
            "2030-01-02T00:00:00Z",
        );
        assert_eq!(find(&expired, CERTIFICATE_CONDITION).reason, "Expired");
        // Without spec.tls there is neither, and `tls: null` clears an earlier one.
        let plain = validated(json!({"replicas": 2}));
        let status = compute(&iggy, &Outcome::Applied(&plain), &Observed::default(), "t0");
        assert_eq!(status.tls, None);
        assert!(status
            .conditions
            .iter()
            .all(|c| c.type_ != CERTIFICATE_CONDITION));
        assert_eq!(
            serde_json::to_value(&status).expect("json")["tls"],
            json!(null)
        );
    }

    #[test]
    fn invalid_spec_is_degraded_and_keeps_the_last_ring() {
        let mut iggy = cluster(json!({"replicas": 3}));
        let valid = validated(json!({"replicas": 3}));
        iggy.status = Some(compute(
            &iggy,
            &Outcome::Applied(&valid),
            &Observed::default(),
            "t0",
        ));
        let error = ValidationError::Replicas(0);
        let status = compute(&iggy, &Outcome::Invalid(&error), &Observed::default(), "t1");
        assert_eq!(find(&status, "Degraded").reason, "InvalidSpec");
        assert!(find(&status, "Degraded").message.contains("at least 1"));
        assert_eq!(status.ring.expect("kept").members.len(), 3);
    }

    #[test]
    fn outdated_pods_show_a_rolling_restart() {
        let iggy = cluster(json!({"replicas": 1}));
        let valid = validated(json!({"replicas": 1}));
        let observed = Observed {
            statefulset: Some(sts(2, 2, 1, 0)),
            pods: vec![pod("events-0", true, true, None)],
            collector: None,
            claims: Vec::new(),
        };
        let status = compute(&iggy, &Outcome::Applied(&valid), &observed, "t0");
        assert_eq!(find(&status, "Ready").status, "True");
        assert_eq!(find(&status, "Progressing").reason, "RollingRestart");
    }
}
