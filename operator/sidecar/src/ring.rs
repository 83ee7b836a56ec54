//! Passes the ring the operator publishes on to the broker. The sidecar watches its cluster's
//! ring ConfigMap through the API (kube's watcher: a broken or expired watch is listed again,
//! so a reset API server loses no change) and posts `ring.json` to the broker's
//! `POST /admin/ring` whenever it differs from the last ring the broker answered. A post that
//! fails — the broker restarting, say — is tried again every interval until one answers.
//!
//! What the broker does with a ring is its own decision (docs/replication.md,
//! "Reconfiguration by epochs"): the ring it runs is in force (`applied`), a newer one it may
//! reach is taken as the next configuration (202, not applied until the epoch commits), and
//! anything else is refused with the reason. The sidecar posts the ring again every interval
//! until it is in force, so a broker that restarted, or a primary that lost a proposal in a
//! view change, or a refusal that a committing epoch turns into a yes (the standbys of this
//! ring joined first), all get there; each different answer is logged once. Only a ring the
//! broker calls malformed (400) is given up on.

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
    /// Not in force yet: post again. With the broker's last answer, so each is logged once.
    Pending(Ring, Option<String>),
    /// In force, or malformed: nothing more to do for it.
    Answered(Ring),
}

/// What one post of a ring came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Posted {
    /// In force, or refused as malformed: done with this ring.
    Done,
    /// Taken as a proposal, or refused for now: the answer, to post again later.
    NotYet(String),
    /// No answer (the broker is down or starting).
    NoAnswer,
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
                        let known = matches!(&delivery, Some(Delivery::Answered(r) | Delivery::Pending(r, _)) if *r == ring);
                        if !known {
                            delivery = Some(Delivery::Pending(ring, None));
                        }
                    }
                    Err(problem) => tracing::warn!(configmap = name, %problem, "the ring ConfigMap holds no usable ring.json"),
                },
                Some(Err(error)) => tracing::warn!(configmap = name, %error, "watching the ring ConfigMap; retrying"),
                None => return,
            },
            _ = ticker.tick() => {}
        }
        if let Some(Delivery::Pending(ring, last)) = &delivery {
            match deliver(&admin, ring, last.as_deref()).await {
                Posted::Done => delivery = Some(Delivery::Answered(ring.clone())),
                Posted::NotYet(answer) => {
                    delivery = Some(Delivery::Pending(ring.clone(), Some(answer)))
                }
                Posted::NoAnswer => {}
            }
        }
    }
}

/// Posts `ring` and logs the answer when it differs from `last`.
async fn deliver(admin: &AdminClient, ring: &Ring, last: Option<&str>) -> Posted {
    match admin.post_ring(ring).await {
        Ok(update) if update.applied => {
            tracing::info!(
                epoch = update.epoch,
                applied = true,
                "handed the ring to the broker"
            );
            Posted::Done
        }
        Ok(update) => {
            let answer = format!("pending in epoch {}", update.epoch);
            if last != Some(answer.as_str()) {
                tracing::info!(
                    epoch = ring.epoch,
                    running = update.epoch,
                    applied = false,
                    "handed the ring to the broker; its epoch is not committed yet"
                );
            }
            Posted::NotYet(answer)
        }
        Err(AdminClientError::Status {
            status, message, ..
        }) if status.is_client_error() => {
            if last != Some(message.as_str()) {
                tracing::warn!(epoch = ring.epoch, %status, %message, "the broker refused the ring");
            }
            if status == hyper::StatusCode::BAD_REQUEST {
                Posted::Done
            } else {
                Posted::NotYet(message)
            }
        }
        Err(error) => {
            tracing::debug!(%error, "the broker did not take the ring yet; trying again");
            Posted::NoAnswer
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
