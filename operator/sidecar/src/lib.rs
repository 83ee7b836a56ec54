//! `iggy-sidecar`: runs next to each broker, asks it how it is through the admin API
//! ([`admin::AdminClient`], `GET /admin/status`) and reflects the answer into its own pod
//! ([`report`]).
//!
//! It reports the `iggy.rs/replica-ready` gate from the broker's `caught_up`, and the broker's
//! role (`iggy.rs/role`, so `<cluster>-primary` routes to the primary) with its epoch, view and
//! whether it is short of disk space (`iggy.rs/replica-state`). Watching the ring ConfigMap and
//! posting rings to the broker belong to the membership work (docs/operator.md, "The sidecar").

pub mod admin;
pub mod report;
pub mod ring;

use admin::AdminClient;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use report::{Membership, Readiness};
use serde_json::json;
use std::time::Duration;
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct SidecarSettings {
    pub pod: String,
    pub namespace: String,
    /// The broker's admin API, normally http://127.0.0.1:3000.
    pub admin: AdminClient,
    pub interval: Duration,
    /// The ring ConfigMap to follow ([`ring::follow`]); `None` follows none.
    pub ring_config_map: Option<String>,
}

/// What the broker's status means for the gate and the pod's membership; an unreachable
/// broker is not ready and has no role.
pub async fn observe(admin: &AdminClient) -> (Readiness, Membership) {
    let status = match admin.status().await {
        Ok(status) => status,
        Err(error) => {
            let readiness = Readiness {
                ready: false,
                reason: "BrokerUnreachable",
                message: error.to_string(),
            };
            return (readiness, Membership::default());
        }
    };
    let membership = Membership {
        role: Some(status.role.label()),
        state: Some(
            json!({
                "epoch": status.epoch,
                "view": status.view,
                "role": status.role.label(),
                "caughtUp": status.caught_up,
                "diskPressure": status.disk_pressure,
            })
            .to_string(),
        ),
    };
    let readiness = if status.caught_up {
        Readiness {
            ready: true,
            reason: "BrokerCaughtUp",
            message: format!(
                "the broker is {} in epoch {} and caught up",
                status.role.label(),
                status.epoch
            ),
        }
    } else {
        Readiness {
            ready: false,
            reason: "BrokerNotCaughtUp",
            message: format!(
                "the broker is {} at commit {} of op {} and not caught up",
                status.role.label(),
                status.commit,
                status.op
            ),
        }
    };
    (readiness, membership)
}

/// How long a primary that was asked to step down and still is may go before it is asked
/// again (a view change lost to a crash or a partition).
const STEP_DOWN_RETRY: Duration = Duration::from_secs(5);

/// The operator's step-down requests (the pod's `iggy.rs/step-down` annotation) passed on to
/// the broker: once per request while the broker is primary, again after
/// [`STEP_DOWN_RETRY`] if it still is.
#[derive(Default)]
struct StepDownRequests {
    last: Option<(String, std::time::Instant)>,
}

impl StepDownRequests {
    async fn serve(
        &mut self,
        settings: &SidecarSettings,
        requested: Option<&str>,
        role: Option<&'static str>,
    ) {
        let Some(request) = requested else {
            self.last = None;
            return;
        };
        if role != Some(iggy_contract::Role::Primary.label()) {
            return;
        }
        let asked_recently = self
            .last
            .as_ref()
            .is_some_and(|(last, at)| last == request && at.elapsed() < STEP_DOWN_RETRY);
        if asked_recently {
            return;
        }
        self.last = Some((request.to_string(), std::time::Instant::now()));
        match settings.admin.step_down().await {
            Ok(answer) => tracing::info!(
                pod = %settings.pod,
                view = answer.view,
                request,
                "asked the broker to step down for a restart"
            ),
            Err(error) => {
                tracing::warn!(pod = %settings.pod, %error, "the broker did not step down")
            }
        }
    }
}

/// Asks and reports every `interval` until `shutdown`; API errors are logged and retried.
pub async fn run(
    client: Client,
    settings: SidecarSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let follow_ring = async {
        match &settings.ring_config_map {
            Some(name) => {
                ring::follow(
                    client.clone(),
                    &settings.namespace,
                    name,
                    settings.admin.clone(),
                    settings.interval,
                    std::future::pending(),
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = reflect_broker(client.clone(), &settings, shutdown) => {}
        _ = follow_ring => {}
    }
}

/// The broker's state into the pod, every `interval` until `shutdown`.
async fn reflect_broker(
    client: Client,
    settings: &SidecarSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let pods: Api<Pod> = Api::namespaced(client, &settings.namespace);
    tokio::pin!(shutdown);
    // The state last reported (ready, reason); the message may change every check.
    let mut last: Option<(bool, &'static str, Option<&'static str>)> = None;
    let mut step_down = StepDownRequests::default();
    loop {
        let (readiness, membership) = observe(&settings.admin).await;
        // A transition of the broker's state is a span of its own (exported as a trace when
        // OTLP is on); the steady-state checks every `interval` are not, to keep traces quiet.
        let state = (readiness.ready, readiness.reason, membership.role);
        let written = if last != Some(state) {
            let span = tracing::info_span!(
                "update_readiness_gate",
                pod = %settings.pod,
                ready = readiness.ready,
                reason = readiness.reason,
                role = membership.role.unwrap_or("none"),
            );
            report::report(&pods, &settings.pod, &readiness, &membership)
                .instrument(span)
                .await
        } else {
            report::report(&pods, &settings.pod, &readiness, &membership).await
        };
        match &written {
            Ok(written) => {
                if written.gate {
                    tracing::info!(
                        pod = %settings.pod,
                        ready = readiness.ready,
                        reason = readiness.reason,
                        message = %readiness.message,
                        "reported {}",
                        iggy_contract::labels::READINESS_GATE
                    );
                }
                if written.membership {
                    tracing::info!(
                        pod = %settings.pod,
                        role = membership.role.unwrap_or("none"),
                        state = membership.state.as_deref().unwrap_or("none"),
                        "reported {}",
                        iggy_contract::labels::ROLE_LABEL
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "could not report the broker's state; retrying"),
        }
        if let Ok(written) = &written {
            step_down
                .serve(
                    settings,
                    written.step_down_requested.as_deref(),
                    membership.role,
                )
                .await;
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
