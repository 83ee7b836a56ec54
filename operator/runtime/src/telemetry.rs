//! Logs to stderr always, and traces and logs over OTLP when the standard OpenTelemetry
//! environment asks for it — the same variables the operator gives its brokers, so one
//! collector sees the operator, the sidecars and the brokers alike.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or a per-signal `..._TRACES_ENDPOINT` /
//! `..._LOGS_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`. `OTEL_EXPORTER_OTLP_PROTOCOL`
//! picks `grpc` or `http/protobuf` (the specification's default); `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_LOGS_EXPORTER=none` switch one signal off; `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` describe the process.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// What the environment asks of OTLP export, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    pub traces: Option<Protocol>,
    pub logs: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{variable}={value} is not an OTLP protocol this build exports (grpc, http/protobuf)")]
    UnsupportedProtocol { variable: String, value: String },
    #[error(
        "{variable} is set but this build has no OTLP export (built without the `otlp` feature)"
    )]
    NotCompiledIn { variable: &'static str },
    #[cfg(feature = "otlp")]
    #[error("building the OTLP {signal} exporter: {source}")]
    Exporter {
        signal: &'static str,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

impl OtlpSettings {
    /// Reads the settings from an environment lookup (a function, so tests need not touch the
    /// process environment).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let disabled = get("OTEL_SDK_DISABLED")
            .map(|v| v.trim().eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let signal = |name: &str| -> Result<Option<Protocol>, TelemetryError> {
            let upper = name.to_ascii_uppercase();
            let exporter = get(&format!("OTEL_{upper}_EXPORTER"));
            if disabled || exporter.is_some_and(|e| e.trim().eq_ignore_ascii_case("none")) {
                return Ok(None);
            }
            let endpoint = get(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"))
                .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .filter(|e| !e.trim().is_empty());
            if endpoint.is_none() {
                return Ok(None);
            }
            let specific = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
            let (variable, value) = match get(&specific) {
                Some(value) => (specific, value),
                None => match get("OTEL_EXPORTER_OTLP_PROTOCOL") {
                    Some(value) => ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), value),
                    None => return Ok(Some(Protocol::HttpProtobuf)),
                },
            };
            match value.trim() {
                "grpc" => Ok(Some(Protocol::Grpc)),
                "http/protobuf" | "" => Ok(Some(Protocol::HttpProtobuf)),
                _ => Err(TelemetryError::UnsupportedProtocol { variable, value }),
            }
        };
        Ok(OtlpSettings {
            traces: signal("traces")?,
            logs: signal("logs")?,
        })
    }

    pub fn enabled(&self) -> bool {
        self.traces.is_some() || self.logs.is_some()
    }
}

/// Keeps the exporters alive; [`Telemetry::shutdown`] flushes what is still buffered.
#[must_use = "dropping the guard stops OTLP export"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    #[cfg(feature = "otlp")]
    logger: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporters. Blocks until the last batch is sent or times out, so
    /// call it from a blocking context (`spawn_blocking`) when a runtime is running.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        {
            if let Some(tracer) = &self.tracer {
                if let Err(error) = tracer.shutdown() {
                    eprintln!("flushing OTLP traces: {error}");
                }
            }
            if let Some(logger) = &self.logger {
                if let Err(error) = logger.shutdown() {
                    eprintln!("flushing OTLP logs: {error}");
                }
            }
        }
    }
}

/// Installs the process-wide subscriber: stderr logs filtered by `RUST_LOG` (default info),
/// plus OTLP traces and logs when the environment configures them. Must run inside the Tokio
/// runtime when gRPC export is chosen (tonic's channel lives on it).
pub fn init(default_service_name: &str) -> Result<Telemetry, TelemetryError> {
    let settings = OtlpSettings::from_env(|name| std::env::var(name).ok())?;
    // An empty RUST_LOG counts as unset: EnvFilter would read it as "errors only".
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| "info".into());
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // The OTLP layers sit next to the registry (their boxed type names it); the EnvFilter
    // above them still filters globally, whatever its position.
    #[cfg(feature = "otlp")]
    {
        let (layers, telemetry) = otlp::layers(&settings, default_service_name)?;
        tracing_subscriber::registry()
            .with(layers)
            .with(filter)
            .with(stderr)
            .init();
        Ok(telemetry)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = default_service_name;
        tracing_subscriber::registry()
            .with(filter)
            .with(stderr)
            .init();
        if settings.enabled() {
            return Err(TelemetryError::NotCompiledIn {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
            });
        }
        Ok(Telemetry {})
    }
}

/// In the dev cluster only (its test-only hosts variable set): the signal's OTLP endpoint with
/// the host resolved through the dev cluster's hosts file, so a collector Service's name works
/// as cluster DNS would make it. None leaves the endpoint to the SDK, which reads the
/// environment itself — always so in production. A generic HTTP endpoint gets the signal's
/// path, as the SDK would add it.
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
fn dev_cluster_endpoint(signal: &str, protocol: Protocol) -> Option<String> {
    std::env::var_os(iggy_contract::hosts::TEST_HOSTS_FILE)?;
    dev_cluster_endpoint_from(
        signal,
        protocol,
        |name| std::env::var(name).ok(),
        iggy_contract::hosts::resolve,
    )
}

fn dev_cluster_endpoint_from(
    signal: &str,
    protocol: Protocol,
    get: impl Fn(&str) -> Option<String>,
    resolve: impl Fn(&str) -> String,
) -> Option<String> {
    let upper = signal.to_ascii_uppercase();
    let (url, generic) = match get(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) {
        Some(url) if !url.trim().is_empty() => (url, false),
        _ => (get("OTEL_EXPORTER_OTLP_ENDPOINT")?, true),
    };
    let (scheme, rest) = url.trim().split_once("://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let resolved = resolve(authority);
    if resolved == authority {
        return None;
    }
    let mut endpoint = format!("{scheme}://{resolved}{path}");
    if generic && protocol == Protocol::HttpProtobuf {
        endpoint = format!("{}/v1/{signal}", endpoint.trim_end_matches('/'));
    }
    Some(endpoint)
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::{OtlpSettings, Protocol, Telemetry, TelemetryError};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{LogExporter, SpanExporter, WithExportConfig as _};
    use opentelemetry_sdk::logs::SdkLoggerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::{Layer, Registry};

    type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

    /// Events from the exporters' own HTTP/gRPC stack must not be exported again: each export
    /// would log, and each log would be exported.
    fn not_from_the_export_path(target: &str) -> bool {
        const EXPORT_PATH: [&str; 6] =
            ["opentelemetry", "hyper", "h2", "tonic", "reqwest", "tower"];
        !EXPORT_PATH.iter().any(|prefix| target.starts_with(prefix))
    }

    fn resource(default_service_name: &str) -> Resource {
        // The builder reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; a name set there
        // wins over the binary's default.
        let builder = Resource::builder();
        match std::env::var("OTEL_SERVICE_NAME") {
            Ok(name) if !name.trim().is_empty() => builder.build(),
            _ => builder
                .with_service_name(default_service_name.to_string())
                .build(),
        }
    }

    fn span_exporter(protocol: Protocol) -> Result<SpanExporter, TelemetryError> {
        let endpoint = super::dev_cluster_endpoint("traces", protocol);
        let built = match (protocol, endpoint) {
            (Protocol::Grpc, None) => SpanExporter::builder().with_tonic().build(),
            (Protocol::Grpc, Some(endpoint)) => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            (Protocol::HttpProtobuf, endpoint) => {
                let builder = SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build(),
                    None => builder.build(),
                }
            }
        };
        built.map_err(|source| TelemetryError::Exporter {
            signal: "traces",
            source,
        })
    }

    fn log_exporter(protocol: Protocol) -> Result<LogExporter, TelemetryError> {
        let endpoint = super::dev_cluster_endpoint("logs", protocol);
        let built = match (protocol, endpoint) {
            (Protocol::Grpc, None) => LogExporter::builder().with_tonic().build(),
            (Protocol::Grpc, Some(endpoint)) => LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            (Protocol::HttpProtobuf, endpoint) => {
                let builder = LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build(),
                    None => builder.build(),
                }
            }
        };
        built.map_err(|source| TelemetryError::Exporter {
            signal: "logs",
            source,
        })
    }

    pub(super) fn layers(
        settings: &OtlpSettings,
        default_service_name: &str,
    ) -> Result<(Vec<BoxedLayer>, Telemetry), TelemetryError> {
        let mut layers: Vec<BoxedLayer> = Vec::new();
        let resource = resource(default_service_name);
        let tracer = match settings.traces {
            None => None,
            Some(protocol) => {
                let provider = SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(span_exporter(protocol)?)
                    .build();
                let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter_fn(|meta| not_from_the_export_path(meta.target())))
                        .boxed(),
                );
                Some(provider)
            }
        };
        let logger = match settings.logs {
            None => None,
            Some(protocol) => {
                let provider = SdkLoggerProvider::builder()
                    .with_resource(resource)
                    .with_batch_exporter(log_exporter(protocol)?)
                    .build();
                layers.push(
                    opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(
                        &provider,
                    )
                    .with_filter(filter_fn(|meta| not_from_the_export_path(meta.target())))
                    .boxed(),
                );
                Some(provider)
            }
        };
        Ok((layers, Telemetry { tracer, logger }))
    }

    #[cfg(test)]
    mod tests {
        use super::not_from_the_export_path;

        #[test]
        fn the_export_stack_is_not_exported_again() {
            assert!(!not_from_the_export_path("hyper_util::client::legacy"));
            assert!(!not_from_the_export_path("opentelemetry_sdk"));
            assert!(!not_from_the_export_path("h2::codec"));
            assert!(not_from_the_export_path("iggy_operator::reconcile"));
            assert!(not_from_the_export_path("kube_runtime::controller"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<OtlpSettings, TelemetryError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::from_env(|name| map.get(name).cloned())
    }

    #[test]
    fn dev_cluster_names_resolve_through_the_hosts_file_and_http_keeps_the_signal_path() {
        let hosts = "127.9.0.4 collector.default.svc\n";
        let resolve = |address: &str| iggy_contract::hosts::resolve_in(hosts, address);
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let generic = env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector.default.svc:4318",
        )]);
        assert_eq!(
            dev_cluster_endpoint_from("traces", Protocol::HttpProtobuf, generic, resolve),
            Some("http://127.9.0.4:4318/v1/traces".into())
        );
        assert_eq!(
            dev_cluster_endpoint_from("logs", Protocol::Grpc, generic, resolve),
            Some("http://127.9.0.4:4318".into())
        );
        let specific = env(&[(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://collector.default.svc:4318/custom",
        )]);
        assert_eq!(
            dev_cluster_endpoint_from("logs", Protocol::HttpProtobuf, specific, resolve),
            Some("http://127.9.0.4:4318/custom".into())
        );
        // Names the file does not know are the SDK's to resolve, as in production.
        let elsewhere = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo.example:4317")]);
        assert_eq!(
            dev_cluster_endpoint_from("traces", Protocol::Grpc, elsewhere, resolve),
            None
        );
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert!(!s.enabled());
    }

    #[test]
    fn the_default_protocol_is_http_protobuf() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap();
        assert_eq!(s.traces, Some(Protocol::HttpProtobuf));
        assert_eq!(s.logs, Some(Protocol::HttpProtobuf));
    }

    #[test]
    fn per_signal_settings_override_the_generic_ones() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ])
        .unwrap();
        assert_eq!(s.traces, Some(Protocol::Grpc));
        assert_eq!(s.logs, Some(Protocol::HttpProtobuf));
        let only_logs = settings(&[
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://collector:4318/v1/logs",
            ),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(only_logs.traces, None);
        assert_eq!(only_logs.logs, Some(Protocol::HttpProtobuf));
    }

    #[test]
    fn sdk_disabled_wins() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])
        .unwrap();
        assert!(!s.enabled());
    }

    #[test]
    fn an_unknown_protocol_is_named_in_the_error() {
        let error = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json is not an OTLP protocol this build exports (grpc, http/protobuf)"
        );
    }
}
