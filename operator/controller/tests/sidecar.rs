//! The sidecar's readiness reporter against the harness and a stand-in broker admin endpoint:
//! the pod's readiness gate follows the broker's `caught_up` in `GET /admin/status`, and the
//! pod's Ready follows the gate.

mod common;

use common::*;
use iggy_contract::AdminStatus;
use iggy_sidecar::admin::AdminClient;
use iggy_sidecar::{readiness, run, SidecarSettings};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request with an admin status whose `caught_up` is what `ready` says.
async fn stand_in_broker(ready: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            let status = AdminStatus::single_node(ready.load(Ordering::SeqCst));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_gate_follows_the_broker() {
    let nobody = AdminClient::new("http://127.0.0.1:9").expect("url");
    assert!(
        !readiness(&nobody).await.ready,
        "nothing listening is not ready"
    );
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
    let broker_http = stand_in_broker(ready.clone()).await;
    let settings = SidecarSettings {
        pod: "events-0".into(),
        namespace: NS.into(),
        admin: AdminClient::new(&format!("http://{broker_http}")).expect("url"),
        interval: Duration::from_millis(100),
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
