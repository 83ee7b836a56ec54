//! The operator binary exports its own traces and logs over OTLP, over gRPC and over
//! HTTP/protobuf, to a real collector (rotel) — configured only by the standard OTEL_*
//! environment, as the Helm chart sets it.

mod common;

use common::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

async fn exports_over(
    protocol: &str,
    endpoint: impl Fn(&OtlpReceiver) -> String,
    stop_signal: &str,
) {
    let Some(receiver) = OtlpReceiver::start() else {
        return;
    };
    let (harness, client) = harness().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    harness.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_iggy-operator"))
        .args([
            "run",
            "--no-leader-election",
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint(&receiver))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=iggy-operator-0")
        .env_remove("OTEL_SERVICE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("operator binary starts");
    create_cluster(&client, "traced", json!({"replicas": 1})).await;
    wait_ready(&harness, "traced").await;

    // SIGTERM (what the kubelet sends) or SIGINT: the operator stops and flushes its batches
    // before exiting.
    let pid = operator.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args([stop_signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exited = tokio::time::timeout(Duration::from_secs(20), operator.wait())
        .await
        .expect("operator exits after the signal")
        .expect("exit status");
    assert!(exited.success(), "operator exited with {exited}");

    let received = eventually("spans and logs at the receiver", || {
        let received = receiver.received();
        let wanted = [
            // A reconcile span with its attributes, and a child step span.
            "Name           : reconcile",
            "-> cluster: Str(traced)",
            "-> outcome: Str(ok)",
            "Name           : apply",
            // The process's resource: default service name, attributes from the environment.
            "-> service.name: Str(iggy-operator)",
            "-> k8s.pod.name: Str(iggy-operator-0)",
            // A log record from the reconcile.
            "reconciled",
        ];
        match wanted.iter().find(|w| !received.contains(**w)) {
            None => Ok(received),
            Some(missing) => Err(format!("missing {missing:?} in:\n{received}")),
        }
    })
    .await;
    // The exporters' own HTTP/gRPC stack is not exported back (no feedback loop).
    for target in ["h2::", "hyper", "tonic::"] {
        assert!(
            !received.contains(target),
            "export-path event {target} was exported"
        );
    }
}

#[tokio::test]
async fn operator_traces_and_logs_reach_a_collector_over_grpc() {
    exports_over("grpc", |r| r.grpc_endpoint.clone(), "-TERM").await;
}

#[tokio::test]
async fn operator_traces_and_logs_reach_a_collector_over_http_protobuf() {
    exports_over("http/protobuf", |r| r.http_endpoint.clone(), "-INT").await;
}
