//! `iggy-sidecar`: runs next to each broker, reports its state into the pod and passes the
//! ring on to it. Configured by the environment the operator sets: POD_NAME, POD_NAMESPACE,
//! IGGY_BROKER_ADMIN_URL (default http://127.0.0.1:3000), IGGY_RING_CONFIGMAP (the ring to
//! follow; unset follows none).

use anyhow::Context;
use iggy_contract::env;
use iggy_sidecar::admin::AdminClient;
use iggy_sidecar::{run, SidecarSettings};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = iggy_operator_runtime::telemetry::init("iggy-sidecar")
        .context("setting up logging and OTLP export")?;
    let pod = std::env::var(env::POD_NAME)
        .context("POD_NAME is not set (the pod's name, from the downward API)")?;
    let namespace = std::env::var(env::POD_NAMESPACE).context("POD_NAMESPACE is not set")?;
    let url = std::env::var(env::SIDECAR_BROKER_ADMIN_URL)
        .unwrap_or_else(|_| iggy_contract::ports::local_admin_url());
    let admin = AdminClient::new(&url).context("IGGY_BROKER_ADMIN_URL")?;
    iggy_operator_runtime::install_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let settings = SidecarSettings {
        pod,
        namespace,
        admin,
        interval: Duration::from_secs(2),
        ring_config_map: std::env::var(env::SIDECAR_RING_CONFIGMAP).ok(),
    };
    tracing::info!(pod = %settings.pod, broker = %settings.admin.address(), "iggy-sidecar reporting broker state");
    run(client, settings, iggy_operator_runtime::shutdown_signal()).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}
