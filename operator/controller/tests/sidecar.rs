//! The sidecar's reporter against the harness and a stand-in broker admin endpoint: the pod's
//! readiness gate follows the broker's `caught_up` in `GET /admin/status`, the pod's Ready
//! follows the gate, and the pod's `iggy.rs/role` label — hence `status.ring.primary` — follows
//! the broker's role.

mod common;

use common::*;
use iggy_contract::AdminStatus;
use iggy_contract::Role;
use iggy_sidecar::admin::AdminClient;
use iggy_sidecar::{observe, run, SidecarSettings};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request with an admin status whose `caught_up` is what `ready` says, in the
/// role `role` holds (0 primary, 1 backup).
async fn stand_in_broker(ready: Arc<AtomicBool>, role: Arc<AtomicU8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let mut status = AdminStatus::single_node(ready.load(Ordering::SeqCst));
            if role.load(Ordering::SeqCst) == 1 {
                status.role = Role::Backup;
                status.view = 1;
            }
            let body = serde_json::to_string(&status).expect("serializes");
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    address
}

fn gate(harness: &kube_harness::Harness, pod: &str) -> Result<(String, String), String> {
    let pod = harness.get("", "Pod", NS, pod).ok_or("no pod")?;
    let conditions = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let find = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str().map(String::from))
            .unwrap_or_default()
    };
    Ok((find("iggy.rs/replica-ready"), find("Ready")))
}

/// The pod's role label and the cluster's `status.ring.primary`.
fn role(harness: &kube_harness::Harness, pod: &str) -> Result<(Value, Value, Value), String> {
    let found = harness.get("", "Pod", NS, pod).ok_or("no pod")?;
    let cluster = cluster_value(harness, "events")?;
    Ok((
        found["metadata"]["labels"]["iggy.rs/role"].clone(),
        found["metadata"]["annotations"]["iggy.rs/replica-state"].clone(),
        cluster["status"]["ring"]["primary"].clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_gate_and_the_role_follow_the_broker() {
    let nobody = AdminClient::new("http://127.0.0.1:9").expect("url");
    let (readiness, membership) = observe(&nobody).await;
    assert!(!readiness.ready, "nothing listening is not ready");
    assert_eq!(membership.role, None, "nor has it a role");
    let (harness, client) = harness_with(false, true).await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 1})).await;
    eventually("pod scheduled and running", || {
        let pod = harness.get("", "Pod", NS, "events-0").ok_or("no pod")?;
        if pod["status"]["phase"] == "Running" {
            Ok(())
        } else {
            Err(pod["status"].to_string())
        }
    })
    .await;
    assert_eq!(
        gate(&harness, "events-0").expect("pod").1,
        "False",
        "no sidecar report yet: not Ready"
    );

    let ready = Arc::new(AtomicBool::new(true));
    let broker_role = Arc::new(AtomicU8::new(0));
    let broker_http = stand_in_broker(ready.clone(), broker_role.clone()).await;
    let settings = SidecarSettings {
        pod: "events-0".into(),
        namespace: NS.into(),
        admin: AdminClient::new(&format!("http://{broker_http}")).expect("url"),
        interval: Duration::from_millis(100),
        ring_config_map: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(run(client.clone(), settings, async {
        let _ = stopped.await;
    }));
    eventually("gate True and pod Ready", || {
        let (gate, ready) = gate(&harness, "events-0")?;
        if gate == "True" && ready == "True" {
            Ok(())
        } else {
            Err(format!("gate {gate}, Ready {ready}"))
        }
    })
    .await;
    wait_ready(&harness, "events").await;
    eventually("labelled primary, and the cluster's primary", || {
        let (label, state, primary) = role(&harness, "events-0")?;
        let state: Value =
            serde_json::from_str(state.as_str().unwrap_or("null")).unwrap_or_default();
        if label == "primary"
            && primary == "events-0"
            && state["view"] == 0
            && state["caughtUp"] == true
        {
            Ok(())
        } else {
            Err(format!("label {label}, state {state}, primary {primary}"))
        }
    })
    .await;
    broker_role.store(1, Ordering::SeqCst);
    eventually("labelled backup, no primary", || {
        let (label, state, primary) = role(&harness, "events-0")?;
        if label == "backup"
            && primary.is_null()
            && state.as_str().is_some_and(|s| s.contains("\"view\":1"))
        {
            Ok(())
        } else {
            Err(format!("label {label}, state {state}, primary {primary}"))
        }
    })
    .await;

    ready.store(false, Ordering::SeqCst);
    eventually("gate False and pod not Ready", || {
        let (gate, ready) = gate(&harness, "events-0")?;
        if gate == "False" && ready == "False" {
            Ok(())
        } else {
            Err(format!("gate {gate}, Ready {ready}"))
        }
    })
    .await;
    eventually("cluster not Ready", || {
        let cluster = cluster_value(&harness, "events")?;
        let ready = condition(&cluster, "Ready").ok_or("no Ready")?;
        if ready["status"] == "False"
            && cluster["status"]["ring"]["members"][0]["caughtUp"] == false
        {
            Ok(())
        } else {
            Err(ready.to_string())
        }
    })
    .await;
    let _ = stop.send(());
    sidecar.await.expect("sidecar stops");
    operator.stop().await;
}
