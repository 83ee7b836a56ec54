//! `kube-harness`: the in-process API server as a standalone process for `make dev-cluster`
//! and kubectl. Writes a kubeconfig and serves until interrupted.

use anyhow::Context;
use kube_harness::kubelet::ProcessOptions;
use kube_harness::{Harness, HarnessOptions};
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
            "--auto-ready-gate" => options.controllers.auto_ready_gates.push(
                args.next()
                    .context("--auto-ready-gate needs a condition type")?,
            ),
            // Run pods as processes; pod files, claims and logs live under this directory.
            "--processes" => {
                let dir = PathBuf::from(args.next().context("--processes needs a directory")?);
                let dir = std::path::absolute(&dir).context("--processes")?;
                // The API starts empty, so files of an earlier run (claims keyed by uids that
                // will be handed out again) would be attached to new objects.
                let leftovers = std::fs::read_dir(&dir)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                anyhow::ensure!(
                    !leftovers,
                    "--processes {}: the directory is not empty; remove it first (it holds an earlier run's pods and claims)",
                    dir.display()
                );
                options.processes = Some(ProcessOptions::new(dir));
            }
            // IMAGE=BINARY: the binary that runs for an image (its last path segment, no tag).
            "--image" => {
                let mapping = args.next().context("--image needs NAME=BINARY")?;
                let (image, binary) = mapping
                    .split_once('=')
                    .context("--image needs NAME=BINARY")?;
                let processes = options
                    .processes
                    .as_mut()
                    .context("--image comes after --processes DIR")?;
                let binary = std::path::absolute(binary).context("--image")?;
                processes.images.insert(image.to_string(), binary);
            }
            // NAME=ARGS: arguments (split on spaces) replacing the container's own for an image
            // whose local stand-in takes others, e.g. rotel for the collector image.
            "--image-args" => {
                let mapping = args.next().context("--image-args needs NAME=ARGS")?;
                let (image, list) = mapping
                    .split_once('=')
                    .context("--image-args needs NAME=ARGS")?;
                let processes = options
                    .processes
                    .as_mut()
                    .context("--image-args comes after --processes DIR")?;
                processes.image_args.insert(
                    image.to_string(),
                    list.split_whitespace().map(String::from).collect(),
                );
            }
            // Every workspace binary (iggy-broker, iggy-sidecar, iggy-operator) from this dir.
            "--workspace-binaries" => {
                let dir = PathBuf::from(
                    args.next()
                        .context("--workspace-binaries needs a directory")?,
                );
                let dir = std::path::absolute(&dir).context("--workspace-binaries")?;
                let processes = options
                    .processes
                    .take()
                    .context("--workspace-binaries comes after --processes DIR")?;
                options.processes = Some(processes.with_workspace_binaries(&dir));
            }
            "--help" | "-h" => {
                println!("kube-harness [--kubeconfig PATH] [--nodes N] [--address 127.0.0.1:PORT] [--auto-ready-gate TYPE] [--apply FILE.yaml]...\n\
                          \x20            [--processes STATE_DIR [--workspace-binaries target/debug] [--image NAME=BINARY]... [--image-args NAME=ARGS]...]");
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
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    // Pods get a short grace period: a dev cluster stops in seconds, brokers flush and exit.
    harness.stop_pods(std::time::Duration::from_secs(10)).await;
    Ok(())
}
