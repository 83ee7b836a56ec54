//! The sidecar's readiness reporter: it asks its broker (`GET /ready` on the pod's loopback)
//! whether it is ready and caught up, and mirrors the answer into its own pod's
//! `iggy.rs/replica-ready` condition — the readiness gate the StatefulSet's pods carry. That
//! gate, not the broker's readiness probe alone, is what rolling restarts and `status.ring`
//! wait for, because it is the sidecar that will also know about ring membership.
//!
//! Ring hand-over (`POST /admin/ring`) and the `iggy.rs/role` label come with the replicated
//! broker; this part is what a single-node broker needs today.

use crate::names::READINESS_GATE;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct SidecarSettings {
    pub pod: String,
    pub namespace: String,
    /// `host:port` of the broker's HTTP listener, normally 127.0.0.1:3000.
    pub broker_http: String,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("reading pod {pod}: {source}")]
    ReadPod { pod: String, source: kube::Error },
    #[error("updating the {READINESS_GATE} condition of pod {pod}: {source}")]
    WriteCondition { pod: String, source: kube::Error },
}

/// True when the broker answers `GET /ready` with 200 within two seconds.
pub async fn broker_ready(address: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET /ready HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 16];
        let read = stream.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..read]).ok()?;
        Some(line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Writes the gate condition when it differs from `ready`; returns whether it wrote. The
/// resourceVersion makes the write a compare-and-swap, so the kubelet's own conditions, which
/// share the list, are never overwritten with a stale copy.
pub async fn report(pods: &Api<Pod>, pod_name: &str, ready: bool) -> Result<bool, SidecarError> {
    let pod = pods
        .get(pod_name)
        .await
        .map_err(|source| SidecarError::ReadPod {
            pod: pod_name.to_string(),
            source,
        })?;
    let wanted = if ready { "True" } else { "False" };
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
        "reason": if ready { "BrokerReady" } else { "BrokerNotReady" },
        "message": if ready { "the broker answers /ready" } else { "the broker does not answer /ready with 200" },
        "lastTransitionTime": crate::reconcile::now(),
    }));
    let patch = json!({
        "metadata": {"resourceVersion": pod.resource_version()},
        "status": {"conditions": conditions},
    });
    pods.patch_status(pod_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| SidecarError::WriteCondition {
            pod: pod_name.to_string(),
            source,
        })?;
    Ok(true)
}

/// Probes and reports every `interval` until `shutdown`; API errors are logged and retried.
pub async fn run(
    client: Client,
    settings: SidecarSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &settings.namespace);
    tokio::pin!(shutdown);
    loop {
        let ready = broker_ready(&settings.broker_http).await;
        match report(&pods, &settings.pod, ready).await {
            Ok(true) => tracing::info!(pod = %settings.pod, ready, "reported {READINESS_GATE}"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not report readiness; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = &mut shutdown => return,
        }
    }
}
