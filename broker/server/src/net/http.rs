//! The HTTP endpoint: `/health` (the process answers), `/ready` (boot finished and the client
//! listener is up), `/metrics` (Prometheus text) and the sidecar's admin API
//! (`iggy_contract::admin`: status, step-down for rolling restarts, and the ring its sidecar
//! passes on), which answers loopback peers only: in a pod the sidecar shares the
//! broker's network namespace, and nothing outside it may read or steer the broker through it.

use crate::broker::Broker;
use crate::replication::ring_update::Decision;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iggy_contract::admin;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let broker = broker.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    // The one request with a body: read only from loopback peers, and bounded.
                    if parts.uri.path() == admin::RING_PATH
                        && parts.method == Method::POST
                        && peer.ip().is_loopback()
                    {
                        let limited = http_body_util::Limited::new(body, MAX_RING_BYTES);
                        let answer = match http_body_util::BodyExt::collect(limited).await {
                            Ok(bytes) => post_ring(&broker, &bytes.to_bytes()),
                            Err(_) => admin_error(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "a ring.json larger than 1 MiB (or a broken body)",
                            ),
                        };
                        return Ok::<_, Infallible>(answer);
                    }
                    Ok::<_, Infallible>(route(&broker, peer, &parts.method, parts.uri.path()))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The largest `ring.json` taken: 255 members with long DNS names fit many times over.
const MAX_RING_BYTES: usize = 1 << 20;

/// `POST /admin/ring`: the posted ring against the running one (`replication::ring_update`):
/// 200 when it is in force, 202 when it was taken as the next configuration.
fn post_ring(broker: &Broker, body: &[u8]) -> Response<Full<Bytes>> {
    let posted: iggy_contract::Ring = match serde_json::from_slice(body) {
        Ok(ring) => ring,
        Err(error) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a ring.json: {error}"),
            )
        }
    };
    let Some(status) = broker.cluster_status() else {
        return admin_error(
            StatusCode::CONFLICT,
            &crate::replication::ring_update::RingRefusal::SingleNode.to_string(),
        );
    };
    let layout = status.layout();
    let decision = crate::replication::ring_update::consider(
        layout.ring.as_ref(),
        status.membership(),
        &posted,
    );
    match decision {
        Ok(Decision::InForce(update)) => json(StatusCode::OK, &update),
        Ok(Decision::Propose(next)) => {
            if !broker.propose_ring(posted) {
                return admin_error(StatusCode::SERVICE_UNAVAILABLE, "the replica is stopping");
            }
            tracing::info!(
                epoch = next.epoch,
                members = next.replica_count,
                standbys = next.standby_count,
                "took a ring as the next configuration"
            );
            let update = iggy_contract::RingUpdate {
                epoch: status.epoch(),
                applied: false,
            };
            json(StatusCode::ACCEPTED, &update)
        }
        Err(refusal) => {
            tracing::warn!(epoch = posted.epoch, %refusal, "refused a posted ring");
            let status = if refusal.is_bad_request() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            admin_error(status, &refusal.to_string())
        }
    }
}

fn route(broker: &Broker, peer: SocketAddr, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path.starts_with("/admin/") && !peer.ip().is_loopback() {
        return admin_error(
            StatusCode::FORBIDDEN,
            "the admin API answers on loopback only",
        );
    }
    if path == admin::RING_PATH {
        // A loopback POST was answered before routing.
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is served\n".into(),
        );
    }
    if path == admin::STEP_DOWN_PATH {
        return match *method {
            Method::POST => match broker.step_down() {
                Ok(answer) => {
                    tracing::info!(view = answer.view, "asked to step down");
                    json(StatusCode::ACCEPTED, &answer)
                }
                Err(reason) => admin_error(StatusCode::CONFLICT, reason),
            },
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only POST is served\n".into(),
            ),
        };
    }
    if method != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    match path {
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if broker.is_ready() => text(StatusCode::OK, ready_details(broker, "ready")),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            ready_details(broker, "not ready"),
        ),
        "/metrics" => {
            let body = broker.render_metrics();
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        admin::STATUS_PATH => json(StatusCode::OK, &broker.admin_status()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The `/ready` body: the verdict, then details that do not decide it (a broker whose object
/// store is down still serves from local disk, so tiering health is reported, not gated on).
fn ready_details(broker: &Broker, verdict: &str) -> String {
    match &broker.tiering {
        Some(tiering) => format!("{verdict}\ntiering: {}\n", tiering.health.summary()),
        None => format!("{verdict}\n"),
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn admin_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &admin::AdminError {
            error: message.to_string(),
        },
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn admin_status_answers_loopback_peers_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = crate::broker::open_for_tests(dir.path());
        let local: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let remote: SocketAddr = "10.1.2.3:50000".parse().expect("addr");

        let (status, text) = body(route(&broker, local, &Method::GET, admin::STATUS_PATH)).await;
        assert_eq!(status, StatusCode::OK);
        let answer: iggy_contract::AdminStatus = serde_json::from_str(&text).expect("contract");
        assert!(!answer.caught_up, "not ready before boot finished");
        broker.set_ready();
        let (_, text) = body(route(&broker, local, &Method::GET, admin::STATUS_PATH)).await;
        let answer: iggy_contract::AdminStatus = serde_json::from_str(&text).expect("contract");
        assert!(answer.caught_up);
        assert_eq!(answer.role, iggy_contract::Role::Primary);

        let (status, text) = body(route(&broker, remote, &Method::GET, admin::STATUS_PATH)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        let (status, _) = body(route(&broker, remote, &Method::GET, "/health")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "probes come from the kubelet, off loopback"
        );
    }

    #[tokio::test]
    async fn a_posted_ring_is_checked_and_a_single_node_refuses_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = crate::broker::open_for_tests(dir.path());
        let (status, text) = body(post_ring(&broker, b"{not json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let ring =
            br#"{"cluster_id":"c","epoch":1,"members":[{"id":0,"position":0,"address":"a:8091"}]}"#;
        let (status, text) = body(post_ring(&broker, ring)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(text.contains("without a ring"), "{text}");
        let local: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let (status, _) = body(route(&broker, local, &Method::GET, admin::RING_PATH)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn step_down_is_a_loopback_post_and_a_single_node_refuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = crate::broker::open_for_tests(dir.path());
        broker.set_ready();
        let local: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let remote: SocketAddr = "10.1.2.3:50000".parse().expect("addr");
        let (status, _) = body(route(&broker, remote, &Method::POST, admin::STEP_DOWN_PATH)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = body(route(&broker, local, &Method::GET, admin::STEP_DOWN_PATH)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, text) =
            body(route(&broker, local, &Method::POST, admin::STEP_DOWN_PATH)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let error: admin::AdminError = serde_json::from_str(&text).expect("contract");
        assert!(error.error.contains("single node"), "{}", error.error);
    }
}
