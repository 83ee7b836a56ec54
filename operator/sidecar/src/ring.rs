//! Passes the ring the operator publishes on to the broker. The sidecar watches its cluster's
//! ring ConfigMap through the API (kube's watcher: a broken or expired watch is listed again,
//! so a reset API server loses no change) and posts `ring.json` to the broker's
//! `POST /admin/ring` whenever it differs from the last ring the broker answered. A post that
//! fails — the broker restarting, say — is tried again every interval until one answers.
//!
//! What the broker does with a ring is its own decision: today it acknowledges the ring it
//! runs and refuses any other with the reason (membership changes wait for reconfiguration by
//! epochs, docs/replication.md); the refusal is logged once per ring, not retried.

use crate::admin::{AdminClient, AdminClientError};
use futures::StreamExt;
use iggy_contract::labels::RING_CONFIGMAP_KEY;
use iggy_contract::Ring;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use std::time::Duration;

/// What became of the last ring seen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivery {
    /// Not answered yet (the broker did not respond): post again.
    Pending(Ring),
    /// The broker answered, with a ring in force or a refusal; nothing more to do for it.
    Answered(Ring),
}

/// Follows ConfigMap `name` until `shutdown`.
pub async fn follow(
    client: Client,
    namespace: &str,
    name: &str,
    admin: AdminClient,
    retry: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(maps, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    tokio::pin!(shutdown);
    let mut delivery: Option<Delivery> = None;
    let mut ticker = tokio::time::interval(retry);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            change = changes.next() => match change {
                Some(Ok(map)) => match ring_of(&map) {
                    Ok(ring) => {
                        let known = matches!(&delivery, Some(Delivery::Answered(r) | Delivery::Pending(r)) if *r == ring);
                        if !known {
                            delivery = Some(Delivery::Pending(ring));
                        }
                    }
                    Err(problem) => tracing::warn!(configmap = name, %problem, "the ring ConfigMap holds no usable ring.json"),
                },
                Some(Err(error)) => tracing::warn!(configmap = name, %error, "watching the ring ConfigMap; retrying"),
                None => return,
            },
            _ = ticker.tick() => {}
        }
        if let Some(Delivery::Pending(ring)) = &delivery {
            if let Some(answered) = deliver(&admin, ring).await {
                delivery = Some(Delivery::Answered(answered));
            }
        }
    }
}

/// Posts `ring`; the ring back when the broker answered (yes or no), `None` to try again.
async fn deliver(admin: &AdminClient, ring: &Ring) -> Option<Ring> {
    match admin.post_ring(ring).await {
        Ok(update) => {
            tracing::info!(
                epoch = update.epoch,
                applied = update.applied,
                "handed the ring to the broker"
            );
            Some(ring.clone())
        }
        Err(AdminClientError::Status {
            status, message, ..
        }) if status.is_client_error() => {
            tracing::warn!(epoch = ring.epoch, %status, %message, "the broker refused the ring");
            Some(ring.clone())
        }
        Err(error) => {
            tracing::debug!(%error, "the broker did not take the ring yet; trying again");
            None
        }
    }
}

fn ring_of(map: &ConfigMap) -> Result<Ring, String> {
    let json = map
        .data
        .as_ref()
        .and_then(|data| data.get(RING_CONFIGMAP_KEY))
        .ok_or_else(|| format!("no {RING_CONFIGMAP_KEY} key"))?;
    serde_json::from_str(json).map_err(|e| format!("{RING_CONFIGMAP_KEY}: {e}"))
}
