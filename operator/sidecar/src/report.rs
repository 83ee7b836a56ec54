//! Reflects the broker's state into its own pod: the `iggy.rs/replica-ready` condition — the
//! readiness gate the StatefulSet's pods carry. That gate, not the broker's readiness probe
//! alone, is what rolling restarts and `status.ring` wait for, because it is the sidecar that
//! knows about ring membership.

use iggy_contract::labels::READINESS_GATE;
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
}

/// Why the gate is what it is, for the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Writes the gate condition when it differs from `readiness`; returns whether it wrote. The
/// resourceVersion makes the write a compare-and-swap, so the kubelet's own conditions, which
/// share the list, are never overwritten with a stale copy.
pub async fn report(
    pods: &Api<Pod>,
    pod_name: &str,
    readiness: &Readiness,
) -> Result<bool, ReportError> {
    let pod = pods
        .get(pod_name)
        .await
        .map_err(|source| ReportError::ReadPod {
            pod: pod_name.to_string(),
            source,
        })?;
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
    pods.patch_status(pod_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| ReportError::WriteCondition {
            pod: pod_name.to_string(),
            source,
        })?;
    Ok(true)
}

/// RFC 3339 to the second, as Kubernetes writes condition times.
fn now() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::now().to_string())
}
