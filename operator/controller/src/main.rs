//! `iggy-operator`: `run` (default) reconciles IggyClusters; `crd` prints the CRD YAML.

use anyhow::Context;
use iggy_operator::crd::IggyCluster;
use iggy_operator::leader::LeaseSettings;
use iggy_operator::metrics::Metrics;
use iggy_operator::{http, run, Settings};
use kube::CustomResourceExt;
use std::net::SocketAddr;
use std::sync::Arc;

const USAGE: &str =
    "iggy-operator [run] [--namespace NS] [--metrics-address ADDR] [--no-leader-election] [--install-crds]
iggy-operator crd      print the IggyCluster CustomResourceDefinition as YAML

Environment: KUBECONFIG or in-cluster config; POD_NAME and POD_NAMESPACE name this replica and
where its leader Lease lives; RUST_LOG sets the log filter (default info);
OTEL_EXPORTER_OTLP_ENDPOINT (+ _PROTOCOL grpc|http/protobuf, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES) exports traces and logs over OTLP.
--install-crds applies the IggyCluster CRD this binary was built with before starting.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("crd") {
        print!(
            "{}",
            serde_yaml::to_string(&IggyCluster::crd()).context("rendering the CRD")?
        );
        return Ok(());
    }
    if args.peek().map(String::as_str) == Some("run") {
        args.next();
    }
    let mut namespace = None;
    let mut metrics_address: SocketAddr = "0.0.0.0:8080".parse().context("default address")?;
    let mut leader_election = true;
    let mut install_crds = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--namespace" => namespace = Some(args.next().context("--namespace needs a value")?),
            "--metrics-address" => {
                metrics_address = args
                    .next()
                    .context("--metrics-address needs host:port")?
                    .parse()
                    .context("--metrics-address")?
            }
            "--no-leader-election" => leader_election = false,
            "--install-crds" => install_crds = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let telemetry = iggy_operator::telemetry::init("iggy-operator")
        .context("setting up logging and OTLP export")?;
    iggy_operator::install_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    if install_crds {
        iggy_operator::install_crd(&client)
            .await
            .context("applying the IggyCluster CRD (--install-crds)")?;
        tracing::info!("applied the IggyCluster CRD");
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("iggy-operator-{}", std::process::id()));
    let lease_namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| namespace.clone())
        .unwrap_or_else(|| "default".into());
    let settings = Settings {
        namespace,
        lease: leader_election.then(|| LeaseSettings::new(&lease_namespace, &identity)),
        instance: Some(identity),
    };
    let metrics = Arc::new(Metrics::default());
    let listener = http::bind(metrics_address)
        .await
        .with_context(|| format!("binding {metrics_address}"))?;
    tokio::spawn(http::serve(listener, metrics.clone()));
    let outcome = run(client, settings, metrics, iggy_operator::shutdown_signal()).await;
    // Flush the last spans and logs (also when leadership was lost) before exiting.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome?;
    Ok(())
}
