//! `iggy-sidecar`: runs next to each broker and reports its readiness into the pod's
//! `iggy.rs/replica-ready` condition. Configured by the environment the operator sets:
//! POD_NAME, POD_NAMESPACE, IGGY_BROKER_ADMIN_URL (default http://127.0.0.1:3000).

use anyhow::Context;
use iggy_operator::sidecar::{run, SidecarSettings};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = iggy_operator::telemetry::init("iggy-sidecar")
        .context("setting up logging and OTLP export")?;
    let pod = std::env::var("POD_NAME")
        .context("POD_NAME is not set (the pod's name, from the downward API)")?;
    let namespace = std::env::var("POD_NAMESPACE").context("POD_NAMESPACE is not set")?;
    let admin =
        std::env::var("IGGY_BROKER_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into());
    let broker_http = admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    iggy_operator::install_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let settings = SidecarSettings {
        pod,
        namespace,
        broker_http,
        interval: Duration::from_secs(2),
    };
    tracing::info!(pod = %settings.pod, broker = %settings.broker_http, "iggy-sidecar reporting broker readiness");
    run(client, settings, iggy_operator::shutdown_signal()).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}
