//! `kube-harness`: the in-process API server as a standalone process for `make dev-cluster`
//! and kubectl. Writes a kubeconfig and serves until interrupted.

use anyhow::Context;
use kube_harness::{controllers::ControllerOptions, Harness, HarnessOptions};
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut kubeconfig = PathBuf::from(".dev-cluster/kubeconfig");
    let mut options = HarnessOptions::default();
    let mut manifests: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => kubeconfig = args.next().context("--kubeconfig needs a path")?.into(),
            "--nodes" => {
                options.nodes = args
                    .next()
                    .context("--nodes needs a number")?
                    .parse()
                    .context("--nodes")?
            }
            "--address" => {
                options.address = args
                    .next()
                    .context("--address needs host:port")?
                    .parse()
                    .context("--address")?
            }
            "--apply" => manifests.push(PathBuf::from(
                args.next().context("--apply needs a YAML file")?,
            )),
            "--auto-ready-gate" => {
                options.controllers = ControllerOptions {
                    auto_ready_gates: vec![args
                        .next()
                        .context("--auto-ready-gate needs a condition type")?],
                }
            }
            "--help" | "-h" => {
                println!("kube-harness [--kubeconfig PATH] [--nodes N] [--address 127.0.0.1:PORT] [--auto-ready-gate TYPE] [--apply FILE.yaml]...");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    let harness = Harness::start(options)
        .await
        .context("starting the API harness")?;
    for manifest in &manifests {
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let created = harness
            .apply_yaml(&text)
            .with_context(|| format!("applying {}", manifest.display()))?;
        println!("applied {created} object(s) from {}", manifest.display());
    }
    harness
        .write_kubeconfig(&kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    println!(
        "kube-harness serving {} (kubeconfig {})",
        harness.url(),
        kubeconfig.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
