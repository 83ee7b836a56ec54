//! Reflects the broker's state into its own pod: the `iggy.rs/replica-ready` condition — the
//! readiness gate the StatefulSet's pods carry. That gate, not the broker's readiness probe
//! alone, is what rolling restarts and `status.ring` wait for, because it is the sidecar that
//! knows about ring membership. And the broker's part in the ring: the `iggy.rs/role` label
//! (which `<cluster>-primary` selects on and the operator copies into `status.ring`) and the
//! `iggy.rs/replica-state` annotation (epoch, view, role, caught up).

use iggy_contract::labels::{
    READINESS_GATE, REPLICA_STATE_ANNOTATION, ROLE_LABEL, STEP_DOWN_ANNOTATION,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading pod {pod}: {source}")]
    ReadPod { pod: String, source: kube::Error },
    #[error("updating the {READINESS_GATE} condition of pod {pod}: {source}")]
    WriteCondition { pod: String, source: kube::Error },
    #[error("updating the {ROLE_LABEL} label of pod {pod}: {source}")]
    WriteRole { pod: String, source: kube::Error },
}

/// The broker's part in its ring as the pod shows it; `None`s remove the label and the
/// annotation (the broker did not answer, so nothing may route to it as the primary).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    pub role: Option<&'static str>,
    /// JSON, for the annotation: only what changes rarely (epoch, view, role, caught up), so a
    /// busy broker does not cost a pod write — and an operator reconcile — every check.
    pub state: Option<String>,
}

/// What was written by one [`report`], and what the pod asks of its broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Written {
    pub gate: bool,
    pub membership: bool,
    /// The pod's `iggy.rs/step-down` annotation: the operator wants this broker to hand its
    /// view on before it restarts the pod.
    pub step_down_requested: Option<String>,
}

/// Why the gate is what it is, for the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Writes the gate condition and the membership when they differ from the pod's, after one
/// read of the pod; says what it wrote.
pub async fn report(
    pods: &Api<Pod>,
    pod_name: &str,
    readiness: &Readiness,
    membership: &Membership,
) -> Result<Written, ReportError> {
    let pod = pods
        .get(pod_name)
        .await
        .map_err(|source| ReportError::ReadPod {
            pod: pod_name.to_string(),
            source,
        })?;
    Ok(Written {
        gate: write_gate(pods, &pod, readiness).await?,
        membership: write_membership(pods, &pod, membership).await?,
        step_down_requested: pod.annotations().get(STEP_DOWN_ANNOTATION).cloned(),
    })
}

/// The gate condition, when it differs from `readiness`. The resourceVersion makes the write a
/// compare-and-swap, so the kubelet's own conditions, which share the list, are never
/// overwritten with a stale copy.
async fn write_gate(
    pods: &Api<Pod>,
    pod: &Pod,
    readiness: &Readiness,
) -> Result<bool, ReportError> {
    let wanted = if readiness.ready { "True" } else { "False" };
    let mut conditions: Vec<serde_json::Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|list| {
            list.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c["type"] == READINESS_GATE && c["status"] == wanted)
    {
        return Ok(false);
    }
    conditions.retain(|c| c["type"] != READINESS_GATE);
    conditions.push(json!({
        "type": READINESS_GATE,
        "status": wanted,
        "reason": readiness.reason,
        "message": readiness.message,
        "lastTransitionTime": now(),
    }));
    let patch = json!({
        "metadata": {"resourceVersion": pod.resource_version()},
        "status": {"conditions": conditions},
    });
    let name = pod.name_any();
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| ReportError::WriteCondition { pod: name, source })?;
    Ok(true)
}

/// The role label and state annotation, when they differ from `membership`: a merge patch of
/// just those two keys (`null` removes one), which touches nothing else on the pod.
async fn write_membership(
    pods: &Api<Pod>,
    pod: &Pod,
    membership: &Membership,
) -> Result<bool, ReportError> {
    let role = pod.labels().get(ROLE_LABEL).map(String::as_str);
    let state = pod
        .annotations()
        .get(REPLICA_STATE_ANNOTATION)
        .map(String::as_str);
    if role == membership.role && state == membership.state.as_deref() {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {
            "labels": {ROLE_LABEL: membership.role},
            "annotations": {REPLICA_STATE_ANNOTATION: membership.state},
        }
    });
    let name = pod.name_any();
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| ReportError::WriteRole { pod: name, source })?;
    Ok(true)
}

/// RFC 3339 to the second, as Kubernetes writes condition times.
fn now() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::now().to_string())
}
