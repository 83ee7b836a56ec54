//! `iggy-broker [--config FILE]`: loads configuration, recovers the data directory, serves
//! clients until SIGINT/SIGTERM, then shuts down cleanly (fsync + checkpoint).
//!
//! Exit codes: 0 clean stop, 1 runtime failure (corrupt data, port in use), 2 bad
//! configuration or arguments.

use broker::broker::Broker;
use broker::config::{Config, FsyncPolicy};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

const USAGE: &str = "usage: iggy-broker [--config FILE]\n\
    Settings come from FILE (TOML) and IGGY_<SECTION>_<KEY> environment variables.";

fn main() -> ExitCode {
    let started = Instant::now();
    broker::allocator::tune(false);
    let descriptors = raise_descriptor_limit();
    broker::storage::descriptors::set_limit(segment_file_budget(descriptors));
    let config_path = match parse_args(std::env::args().skip(1)) {
        Ok(Some(path)) => path,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("iggy-broker: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("iggy-broker: {e}");
            return ExitCode::from(2);
        }
    };
    broker::storage::descriptors::set_sync_on_close(config.storage.fsync != FsyncPolicy::Never);
    broker::storage::l1::set_capacity(config.tiering.l1.size.0);
    // A ring that cannot be replicated with is a configuration error, found before the data
    // directory is touched.
    let cluster = if config.cluster.is_replicated() {
        match broker::replication::Setup::load(&config) {
            Ok(setup) => Some(setup),
            Err(e) => {
                eprintln!("iggy-broker: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    broker::allocator::tune(cluster.is_some());
    if let Err(e) = broker::allocator::spawn_trimmer() {
        eprintln!("iggy-broker: cannot start the heap trimmer: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("iggy-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: a gRPC exporter's channel lives on it.
    let telemetry = match runtime.block_on(async { install_telemetry(&config) }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("iggy-broker: {e}");
            return ExitCode::from(2);
        }
    };
    // A certificate that cannot be served is a configuration error, found before the data
    // directory is touched; after the logs are set up, so what it serves is logged.
    let tls = match broker::net::tls::acceptor(&config.tcp.tls) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("iggy-broker: {e}");
            telemetry.shutdown();
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(config, cluster, tls, started, descriptors, &telemetry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_configuration_error(&e) => {
            eprintln!("iggy-broker: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("iggy-broker: {e:#}");
            ExitCode::FAILURE
        }
    };
    // After the last log line, while the runtime's workers still run: a gRPC exporter sends
    // its last batches.
    telemetry.shutdown();
    code
}

/// Console logs at `logging.level` (colours only on a terminal: log files and collectors get
/// plain `key=value` fields), and OTLP export as `[telemetry]` and the `OTEL_*` variables say.
fn install_telemetry(
    config: &Config,
) -> Result<iggy_telemetry::Telemetry, iggy_telemetry::TelemetryError> {
    let file = config.telemetry.file_config();
    let mut settings =
        iggy_telemetry::OtlpSettings::resolve(Some(&file), |name| std::env::var(name).ok())?;
    iggy_telemetry::resolve_dev_cluster_hosts(&mut settings);
    iggy_telemetry::install(iggy_telemetry::Options {
        default_service_name: "iggy-broker",
        directives: config.logging.level.clone(),
        console: iggy_telemetry::Console::Stdout,
        show_target: false,
        settings,
        recent: Some(iggy_telemetry::RecentLines::new(
            broker::diagnostics::RECENT_LOG_BYTES,
        )),
    })
}

/// Raises the soft limit on open files to the hard limit: every partition holds its active
/// segment's files open and every client a socket, and the soft default (often 1,024) ran out
/// at ~500 partitions. Returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// How many segment files may be open at once: half of what the process may open beyond a
/// reserve of 64 (listeners, the replication journal, metadata and offset files written
/// atomically, the runtime's own); the other half is for client and peer sockets. At the
/// common 1,024 that is 480; at a container's usual 1,048,576 it never binds.
fn segment_file_budget(descriptors: u64) -> usize {
    let usable = descriptors.saturating_sub(64);
    usize::try_from(usable / 2).unwrap_or(usize::MAX).max(32)
}

/// `Ok(None)` when the arguments asked for help or the version.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Option<PathBuf>>, String> {
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("iggy-broker {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--config" => {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a file")?));
            }
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(format!("unknown argument '{other}'")),
            },
        }
    }
    Ok(Some(config))
}

/// Where each signal goes, once at start (endpoints only: credentials never travel in them).
fn log_telemetry(settings: &iggy_telemetry::OtlpSettings) {
    for signal in iggy_telemetry::Signal::ALL {
        if let Some(export) = settings.export(signal) {
            tracing::info!(
                signal = signal.name(),
                endpoint = %export.endpoint,
                protocol = ?export.protocol,
                "exporting over OTLP"
            );
        }
    }
}

fn is_configuration_error(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<broker::replication::ClusterError>()
        .is_some_and(|e| e.is_configuration())
}

async fn run(
    config: Config,
    cluster: Option<broker::replication::Setup>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    started: Instant,
    descriptors: u64,
    telemetry: &iggy_telemetry::Telemetry,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let tcp_address = config.tcp.address;
    let tcp_tls = tls.is_some();
    let http_address = config.http.address;
    let data = config.system.path.clone();
    let fsync = config.storage.fsync;
    let (broker, report, replica) = match cluster {
        Some(setup) => {
            let (broker, report, replica) = broker::replication::boot(config, setup).await?;
            (broker, report, Some(replica))
        }
        None => {
            let (broker, report) = tokio::task::block_in_place(|| Broker::open(config))
                .with_context(|| format!("cannot open data directory {}", data.display()))?;
            (broker, report, None)
        }
    };
    if let Some(password) = &report.generated_root_password {
        println!(
            "Generated root password (shown once, store it now): {password}\n\
             Set IGGY_ROOT_PASSWORD on first boot to choose it instead."
        );
    }
    broker
        .metrics
        .boot_verified_bytes
        .store(report.verified_bytes, std::sync::atomic::Ordering::Relaxed);
    if report.truncated_tails > 0 {
        tracing::warn!(partitions = report.truncated_tails, "recovered torn tails");
    }
    for &((stream, topic, partition), from, until) in &report.damaged {
        // Logged where found; repaired by the worker below when another copy exists.
        let found = broker.catalog().partition_by_ids(stream, topic, partition);
        if let Some(partition) = found {
            broker::repair::report(&broker, &partition, from, until);
        }
    }
    if broker.cluster_status().is_none() {
        // Before any client: the first requests already meet the configured settings. (A
        // replicated broker's primary does this once it leads: `replication::boot`.)
        broker
            .put_settings_in_force()
            .await
            .context("cannot record the configured settings in force")?;
    }
    let tcp = TcpListener::bind(tcp_address)
        .await
        .with_context(|| format!("cannot listen on {tcp_address} (tcp.address)"))?;
    let http = TcpListener::bind(http_address)
        .await
        .with_context(|| format!("cannot listen on {http_address} (http.address)"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tcp_task = tokio::spawn(broker::net::tcp::serve(
        tcp,
        broker.clone(),
        stop_rx.clone(),
        tls,
    ));
    tokio::spawn(broker::net::http::serve(
        http,
        broker.clone(),
        stop_rx.clone(),
    ));
    if let FsyncPolicy::Interval(every) = fsync {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                broker.sync_dirty_partitions().await;
            }
        });
    }
    {
        // The first pass runs at once: it records what boot recovery just verified, so a
        // broker that crashes again soon does not verify it all again.
        let broker = broker.clone();
        let every = broker.config.storage.checkpoint_interval.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let broker = broker.clone();
                let started = Instant::now();
                let pass =
                    tokio::task::spawn_blocking(move || broker.checkpoint_written_partitions());
                if let Ok(written) = pass.await {
                    if written > 0 {
                        tracing::debug!(
                            partitions = written,
                            ms = started.elapsed().as_millis() as u64,
                            "checkpointed the partitions written since their last checkpoint"
                        );
                    }
                }
            }
        });
    }
    {
        let broker = broker.clone();
        let every = broker.config.retention.cleaner_interval.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                broker.enforce_retention().await;
                if let Err(e) = broker.expire_tokens().await {
                    tracing::warn!(error = %e, "could not remove expired access tokens");
                }
            }
        });
    }
    if broker.cluster_status().is_some() {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELEASE_CHECK_INTERVAL);
            let mut committed = 0;
            loop {
                tick.tick().await;
                committed = broker.release_deleted_when_short(committed).await;
            }
        });
    }
    tokio::spawn(broker::scrub::run(broker.clone()));
    if broker::repair::has_copies(&broker) {
        tokio::spawn(broker::repair::run(broker.clone()));
    }
    if let Some(tiering) = broker.tiering.clone() {
        tracing::info!(store = %tiering.store.describe(), "tiering sealed segments to the object store");
        tokio::spawn(broker::tiering::uploader::run(broker.clone(), tiering));
    }
    broker.metrics.report_export(telemetry.stats());
    if let Some(recent) = telemetry.recent_lines() {
        let _ = broker.recent_logs.set(recent);
    }
    #[cfg(feature = "otlp")]
    if let Some(meter) = telemetry.meter("iggy-broker") {
        broker::telemetry::otlp_metrics::register(&meter, broker.clone());
    }
    log_telemetry(telemetry.settings());
    tokio::spawn({
        let broker = broker.clone();
        async move { broker.forget_earlier_incarnations().await }
    });
    tokio::spawn(broker::handover::run(broker.clone()));
    if broker.cluster_status().is_some() {
        let broker = broker.clone();
        let after = broker.config.replication.forget_members_after.0;
        tokio::spawn(async move { broker.forget_lost_nodes(after).await });
    }
    broker.set_ready();
    tracing::info!(
        tcp = %tcp_address,
        tcp_tls,
        http = %http_address,
        data = %data.display(),
        ?fsync,
        partitions = report.partitions,
        verified_bytes = report.verified_bytes,
        descriptors,
        segment_file_budget = broker::storage::descriptors::limit(),
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        "iggy-broker ready"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tcp_task.await;
    drain_connections(&broker).await;
    if let Some(replica) = replica {
        tokio::task::block_in_place(|| replica.stop());
    }
    tokio::task::block_in_place(|| broker.shutdown()).context("clean shutdown failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    match (terminate, interrupt) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long shutdown waits for requests in progress to be answered.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a replicated broker checks whether deleted data waits for the log to move on
/// while its disk is short (`Broker::release_deleted_when_short`).
const RELEASE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until every connection has finished the request it was serving and closed, or
/// `DRAIN_TIMEOUT` passed: a send whose bytes were read is applied and acknowledged rather
/// than cut off (which a client would retry, duplicating it).
async fn drain_connections(broker: &broker::broker::Broker) {
    use std::sync::atomic::Ordering;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let open = broker.metrics.connections_open.load(Ordering::Relaxed);
        if open <= 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                open,
                "connections still busy after the drain timeout; closing them"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
