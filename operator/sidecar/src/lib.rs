//! `iggy-sidecar`: runs next to each broker, asks it how it is through the admin API
//! ([`admin::AdminClient`], `GET /admin/status`) and reflects the answer into its own pod
//! ([`report`]).
//!
//! Today it reports the `iggy.rs/replica-ready` gate from the broker's `caught_up`. Watching
//! the ring ConfigMap, posting rings to the broker and the `iggy.rs/role` label belong to the
//! membership work (docs/operator.md, "The sidecar").

pub mod admin;
pub mod report;

use admin::AdminClient;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use report::{report, Readiness};
use std::time::Duration;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct SidecarSettings {
    pub pod: String,
    pub namespace: String,
    /// The broker's admin API, normally http://127.0.0.1:3000.
    pub admin: AdminClient,
    pub interval: Duration,
}

/// What the broker's status means for the gate; an unreachable broker is not ready.
pub async fn readiness(admin: &AdminClient) -> Readiness {
    match admin.status().await {
        Ok(status) if status.caught_up => Readiness {
            ready: true,
            reason: "BrokerCaughtUp",
            message: format!(
                "the broker is {} in epoch {} and caught up",
                status.role.label(),
                status.epoch
            ),
        },
        Ok(status) => Readiness {
            ready: false,
            reason: "BrokerNotCaughtUp",
            message: format!(
                "the broker is {} at commit {} of op {} and not caught up",
                status.role.label(),
                status.commit,
                status.op
            ),
        },
        Err(error) => Readiness {
            ready: false,
            reason: "BrokerUnreachable",
            message: error.to_string(),
        },
    }
}

/// Asks and reports every `interval` until `shutdown`; API errors are logged and retried.
pub async fn run(
    client: Client,
    settings: SidecarSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &settings.namespace);
    tokio::pin!(shutdown);
    // The state last reported (ready, reason); the message may change every check.
    let mut last: Option<(bool, &'static str)> = None;
    loop {
        let readiness = readiness(&settings.admin).await;
        // A transition of the broker's state is a span of its own (exported as a trace when
        // OTLP is on); the steady-state checks every `interval` are not, to keep traces quiet.
        let state = (readiness.ready, readiness.reason);
        let written = if last != Some(state) {
            let span = tracing::info_span!(
                "update_readiness_gate",
                pod = %settings.pod,
                ready = readiness.ready,
                reason = readiness.reason,
            );
            report(&pods, &settings.pod, &readiness)
                .instrument(span)
                .await
        } else {
            report(&pods, &settings.pod, &readiness).await
        };
        match &written {
            Ok(true) => tracing::info!(
                pod = %settings.pod,
                ready = readiness.ready,
                reason = readiness.reason,
                message = %readiness.message,
                "reported {}",
                iggy_contract::labels::READINESS_GATE
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not report readiness; retrying"),
        }
        if written.is_ok() {
            last = Some(state);
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = &mut shutdown => return,
        }
    }
}
