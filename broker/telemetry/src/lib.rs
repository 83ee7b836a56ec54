//! Telemetry for every binary of the project — the broker, the operator and the sidecar — so
//! one collector sees them alike: console logs always, and OTLP traces, logs and metrics when the
//! configuration asks for them (`settings` says how the broker's `[telemetry]` section and the
//! standard `OTEL_*` variables combine). `trace_context` reads and writes W3C `traceparent`
//! values, which message headers carry from producers through the broker to consumers.
//!
//! With nothing configured nothing is exported, and the broker's request spans are switched off
//! at their call sites (their target is disabled for the console), so they cost nothing.

pub mod recent;
pub mod settings;
pub mod trace_context;

#[cfg(feature = "otlp")]
mod accounting;
#[cfg(feature = "otlp")]
mod export;
#[cfg(feature = "testing")]
pub mod testing;

pub use recent::RecentLines;
pub use settings::{FileConfig, OtlpSettings, Protocol, Signal, SignalConfig};
pub use trace_context::TraceParent;

/// The OpenTelemetry API, for binaries that record metrics or build span links themselves.
#[cfg(feature = "otlp")]
pub use opentelemetry;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of spans that exist only to be exported (one per broker request). The console
/// never shows them, so without a trace exporter their call sites are disabled outright.
pub const EXPORTED_SPANS: &str = "iggy::span";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{variable}={value} is not an OTLP protocol this build exports (grpc, http/protobuf)")]
    UnsupportedProtocol { variable: String, value: String },
    #[error(
        "OTLP export is configured but this build has none (built without the `otlp` feature)"
    )]
    NotCompiledIn,
    #[error("invalid log filter '{directives}': {reason}")]
    Filter { directives: String, reason: String },
    #[cfg(feature = "otlp")]
    #[error("building the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        signal: &'static str,
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Per signal (indexed by `Signal as usize`): items produced (spans ended, log records
/// emitted; metrics: none), items exported, and items in batches that failed to export.
/// Metrics count export rounds, as one round carries every instrument.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub produced: [std::sync::atomic::AtomicU64; 3],
    pub exported: [std::sync::atomic::AtomicU64; 3],
    pub failed: [std::sync::atomic::AtomicU64; 3],
}

/// Where console logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    Stdout,
    Stderr,
}

/// How a binary wants its telemetry.
pub struct Options<'a> {
    /// `service.name` unless `OTEL_SERVICE_NAME` or the settings name one.
    pub default_service_name: &'a str,
    /// `tracing` filter directives for console and exported logs (and for spans other than the
    /// exported-only ones, which the trace exporter always takes).
    pub directives: String,
    pub console: Console,
    /// Whether console lines name the module that logged them.
    pub show_target: bool,
    pub settings: OtlpSettings,
    /// Where console lines are also kept, for a diagnostic snapshot (`None`: nowhere).
    pub recent: Option<std::sync::Arc<RecentLines>>,
}

/// Keeps the exporters alive; [`Telemetry::shutdown`] flushes what is still buffered.
#[must_use = "dropping the guard stops OTLP export"]
pub struct Telemetry {
    settings: OtlpSettings,
    stats: std::sync::Arc<ExportStats>,
    recent: Option<std::sync::Arc<RecentLines>>,
    #[cfg(feature = "otlp")]
    providers: export::Providers,
}

impl Telemetry {
    /// What is being exported, for the start-up log line.
    pub fn settings(&self) -> &OtlpSettings {
        &self.settings
    }

    /// Where console lines are also kept, when [`Options::recent`] named a place.
    pub fn recent_lines(&self) -> Option<std::sync::Arc<RecentLines>> {
        self.recent.clone()
    }

    /// What export has done so far (all zero when nothing is exported).
    pub fn stats(&self) -> std::sync::Arc<ExportStats> {
        self.stats.clone()
    }

    /// A meter of the metrics exporter, when metrics are exported.
    #[cfg(feature = "otlp")]
    pub fn meter(&self, scope: &'static str) -> Option<opentelemetry::metrics::Meter> {
        use opentelemetry::metrics::MeterProvider as _;
        self.providers.meter.as_ref().map(|m| m.meter(scope))
    }

    /// Flushes and stops the exporters. Blocks until the last batch is sent or times out, so
    /// call it from a blocking context (`spawn_blocking`) when a runtime is running.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        self.providers.shutdown();
    }
}

/// The console filter: the directives, with exported-only spans off.
fn console_filter(directives: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(format!("{directives},{EXPORTED_SPANS}=off")).map_err(|e| {
        TelemetryError::Filter {
            directives: directives.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Console logs as `options` ask, for any subscriber stack.
fn console_layer<S>(options: &Options<'_>) -> Result<impl Layer<S>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn kept<M>(console: M, recent: &Option<std::sync::Arc<RecentLines>>) -> BoxMakeWriter
    where
        M: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        match recent {
            Some(recent) => BoxMakeWriter::new(recent::Tee {
                console,
                recent: recent.clone(),
            }),
            None => BoxMakeWriter::new(console),
        }
    }
    let (writer, ansi) = match options.console {
        Console::Stdout => (
            kept(std::io::stdout, &options.recent),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
        ),
        Console::Stderr => (
            kept(std::io::stderr, &options.recent),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    Ok(tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_target(options.show_target)
        .with_writer(writer)
        .with_filter(console_filter(&options.directives)?))
}

/// Installs the process-wide subscriber. Must run inside the Tokio runtime when gRPC export is
/// chosen (tonic's channel lives on it).
pub fn install(options: Options<'_>) -> Result<Telemetry, TelemetryError> {
    #[cfg(feature = "otlp")]
    {
        let stats = std::sync::Arc::new(ExportStats::default());
        let (layers, providers) = export::layers(
            &options.settings,
            options.default_service_name,
            &options.directives,
            &stats,
        )?;
        // An empty vector of layers hints the maximum level OFF, which would disable every
        // call site, the console's included: only stack it when something is exported.
        if layers.is_empty() {
            tracing_subscriber::registry()
                .with(console_layer(&options)?)
                .init();
        } else {
            tracing_subscriber::registry()
                .with(layers)
                .with(console_layer(&options)?)
                .init();
        }
        Ok(Telemetry {
            settings: options.settings,
            stats,
            recent: options.recent,
            providers,
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        tracing_subscriber::registry()
            .with(console_layer(&options)?)
            .init();
        if options.settings.enabled() {
            return Err(TelemetryError::NotCompiledIn);
        }
        Ok(Telemetry {
            settings: options.settings,
            stats: Default::default(),
            recent: options.recent,
        })
    }
}

/// The operator's and the sidecar's set-up: stderr logs filtered by `RUST_LOG` (default info),
/// OTLP from the environment alone, endpoints resolved through the dev cluster's hosts file
/// when one is in use.
pub fn init(default_service_name: &str) -> Result<Telemetry, TelemetryError> {
    let mut settings = OtlpSettings::from_env(|name| std::env::var(name).ok())?;
    resolve_dev_cluster_hosts(&mut settings);
    // An empty or invalid RUST_LOG counts as unset: EnvFilter would read "" as errors only.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty() && EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| "info".to_string());
    install(Options {
        default_service_name,
        directives,
        console: Console::Stderr,
        show_target: true,
        settings,
        recent: None,
    })
}

/// In the dev cluster only (its test-only hosts variable set): endpoints' host names resolve
/// through the dev cluster's hosts file, as cluster DNS would resolve a collector Service's
/// name. In production the SDK's resolver does it.
pub fn resolve_dev_cluster_hosts(settings: &mut OtlpSettings) {
    if std::env::var_os(iggy_contract::hosts::TEST_HOSTS_FILE).is_some() {
        settings.resolve_hosts(iggy_contract::hosts::resolve);
    }
}

/// Makes `span` a child of the remote `parent` (a producer's send), when traces are exported.
pub fn set_remote_parent(span: &tracing::Span, parent: &TraceParent) {
    #[cfg(feature = "otlp")]
    export::set_remote_parent(span, parent);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, parent);
}

/// Links `span` to the remote context `linked` (one of many messages' producers).
pub fn link_remote(span: &tracing::Span, linked: &TraceParent) {
    #[cfg(feature = "otlp")]
    export::link_remote(span, linked);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, linked);
}

/// The `traceparent` that names `span` as the parent, for a header a producer sends; `None`
/// when the span is not exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    #[cfg(feature = "otlp")]
    return export::traceparent_of(span);
    #[cfg(not(feature = "otlp"))]
    {
        let _ = span;
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_console_never_shows_exported_only_spans() {
        let filter = super::console_filter("trace").unwrap().to_string();
        assert!(filter.contains("iggy::span=off"), "{filter}");
        assert!(super::console_filter("not a [filter").is_err());
    }
}
