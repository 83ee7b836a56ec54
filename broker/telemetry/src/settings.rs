//! What to export, where and how: the broker's `[telemetry]` section (when a binary has one)
//! overlaid by the standard OpenTelemetry environment, which wins.
//!
//! Precedence, per signal (traces, logs, metrics):
//! 1. `OTEL_SDK_DISABLED=true` exports nothing; `OTEL_<SIGNAL>_EXPORTER=none` drops one signal.
//! 2. Endpoint: `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` as given, else `OTEL_EXPORTER_OTLP_ENDPOINT`
//!    (with `/v1/<signal>` appended for HTTP, as the specification says), else — only with
//!    `telemetry.enabled` — `[telemetry.<signal>] endpoint`, else the transport's default
//!    (`http://localhost:4317` for gRPC, `http://localhost:4318/v1/<signal>` for HTTP).
//!    A signal is exported when an environment endpoint applies or the file enables telemetry.
//! 3. Protocol: `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else the
//!    file's `transport` (`grpc` or `http`) when telemetry is enabled there, else
//!    `http/protobuf` (the specification's default).
//! 4. Service name: `OTEL_SERVICE_NAME`, else the file's `service_name`, else the binary's name.

use crate::TelemetryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The file's `transport` value: `grpc` or `http` (also `http/protobuf`).
    pub fn from_transport(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http" | "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// One signal's part of the broker's `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalConfig {
    pub transport: Protocol,
    /// Empty: the transport's default endpoint.
    pub endpoint: String,
}

/// The broker's `[telemetry]` section, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub enabled: bool,
    pub service_name: String,
    pub logs: SignalConfig,
    pub traces: SignalConfig,
    pub metrics: SignalConfig,
}

impl FileConfig {
    fn signal(&self, signal: Signal) -> &SignalConfig {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
            Signal::Metrics => &self.metrics,
        }
    }
}

/// Where one signal goes: resolved completely, so the SDK's own reading of the environment
/// (which we pass explicit values over) cannot disagree with what is logged at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub protocol: Protocol,
    pub endpoint: String,
}

/// What the configuration asks of OTLP export, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpSettings {
    pub traces: Option<Export>,
    pub logs: Option<Export>,
    pub metrics: Option<Export>,
    /// `None`: the binary's own name.
    pub service_name: Option<String>,
}

impl OtlpSettings {
    /// Resolves the settings from an optional `[telemetry]` section and an environment lookup
    /// (a function, so tests need not touch the process environment).
    pub fn resolve(
        file: Option<&FileConfig>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let disabled = get("OTEL_SDK_DISABLED")
            .map(|v| v.trim().eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let file_enabled = file.filter(|f| f.enabled);
        let mut settings = OtlpSettings {
            service_name: get("OTEL_SERVICE_NAME")
                .or_else(|| file.map(|f| f.service_name.clone()))
                .filter(|name| !name.trim().is_empty()),
            ..OtlpSettings::default()
        };
        if disabled {
            return Ok(settings);
        }
        for signal in Signal::ALL {
            let upper = signal.name().to_ascii_uppercase();
            let exporter = get(&format!("OTEL_{upper}_EXPORTER"));
            if exporter.is_some_and(|e| e.trim().eq_ignore_ascii_case("none")) {
                continue;
            }
            let specific_endpoint = get(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"));
            let generic_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
            let from_file = file_enabled.map(|f| f.signal(signal));
            if specific_endpoint.is_none() && generic_endpoint.is_none() && from_file.is_none() {
                continue;
            }
            let protocol = protocol(signal, &get, from_file.map(|f| f.transport))?;
            let endpoint = match (specific_endpoint, generic_endpoint, from_file) {
                (Some(url), _, _) => url.trim().to_string(),
                (None, Some(base), _) => with_signal_path(&base, signal, protocol),
                (None, None, Some(file)) if !file.endpoint.trim().is_empty() => {
                    file.endpoint.trim().to_string()
                }
                (None, None, _) => default_endpoint(signal, protocol),
            };
            let export = Some(Export { protocol, endpoint });
            match signal {
                Signal::Traces => settings.traces = export,
                Signal::Logs => settings.logs = export,
                Signal::Metrics => settings.metrics = export,
            }
        }
        Ok(settings)
    }

    /// The environment alone: what the operator's and the sidecar's binaries read.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        Self::resolve(None, get)
    }

    pub fn enabled(&self) -> bool {
        self.traces.is_some() || self.logs.is_some() || self.metrics.is_some()
    }

    pub fn export(&self, signal: Signal) -> Option<&Export> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Logs => self.logs.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
        }
    }

    /// Rewrites every endpoint's host through `resolve` (the dev cluster's hosts file).
    pub fn resolve_hosts(&mut self, resolve: impl Fn(&str) -> String) {
        for export in [&mut self.traces, &mut self.logs, &mut self.metrics]
            .into_iter()
            .flatten()
        {
            export.endpoint = resolve_endpoint_host(&export.endpoint, &resolve);
        }
    }
}

fn protocol(
    signal: Signal,
    get: &impl Fn(&str) -> Option<String>,
    file: Option<Protocol>,
) -> Result<Protocol, TelemetryError> {
    let specific = format!(
        "OTEL_EXPORTER_OTLP_{}_PROTOCOL",
        signal.name().to_ascii_uppercase()
    );
    let (variable, value) = match get(&specific) {
        Some(value) => (specific, value),
        None => match get("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(value) => ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), value),
            None => return Ok(file.unwrap_or(Protocol::HttpProtobuf)),
        },
    };
    match value.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err(TelemetryError::UnsupportedProtocol { variable, value }),
    }
}

/// The generic endpoint is a base URL: HTTP appends the signal's path, gRPC uses it as is.
fn with_signal_path(base: &str, signal: Signal, protocol: Protocol) -> String {
    let base = base.trim();
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/v1/{}", base.trim_end_matches('/'), signal.name()),
    }
}

fn default_endpoint(signal: Signal, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => "http://localhost:4317".to_string(),
        Protocol::HttpProtobuf => with_signal_path("http://localhost:4318", signal, protocol),
    }
}

/// `scheme://host:port/path` with `host:port` passed through `resolve`; anything else as is.
fn resolve_endpoint_host(url: &str, resolve: &impl Fn(&str) -> String) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{}{path}", resolve(authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn settings(vars: &[(&str, &str)]) -> Result<OtlpSettings, TelemetryError> {
        OtlpSettings::from_env(env(vars))
    }

    fn file(enabled: bool) -> FileConfig {
        let signal = |endpoint: &str| SignalConfig {
            transport: Protocol::Grpc,
            endpoint: endpoint.into(),
        };
        FileConfig {
            enabled,
            service_name: "from-file".into(),
            logs: signal("http://logs:4317"),
            traces: signal(""),
            metrics: signal("http://metrics:4317"),
        }
    }

    fn endpoint(export: &Option<Export>) -> Option<&str> {
        export.as_ref().map(|e| e.endpoint.as_str())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_the_file_enabling_it() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert!(!s.enabled());
        let s = OtlpSettings::resolve(Some(&file(false)), env(&[])).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.service_name.as_deref(), Some("from-file"));
    }

    #[test]
    fn the_default_protocol_is_http_protobuf_and_http_endpoints_get_the_signal_path() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(s.traces.as_ref().unwrap().protocol, Protocol::HttpProtobuf);
        assert_eq!(endpoint(&s.traces), Some("http://collector:4318/v1/traces"));
        assert_eq!(endpoint(&s.logs), Some("http://collector:4318/v1/logs"));
        assert_eq!(
            endpoint(&s.metrics),
            Some("http://collector:4318/v1/metrics")
        );
    }

    #[test]
    fn per_signal_settings_override_the_generic_ones() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://other:4318/custom",
            ),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(s.traces.as_ref().unwrap().protocol, Protocol::Grpc);
        assert_eq!(endpoint(&s.traces), Some("http://collector:4317"));
        assert_eq!(s.logs.as_ref().unwrap().protocol, Protocol::HttpProtobuf);
        assert_eq!(endpoint(&s.logs), Some("http://other:4318/custom"));
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn the_file_applies_only_where_the_environment_is_silent() {
        let from_file = OtlpSettings::resolve(Some(&file(true)), env(&[])).unwrap();
        assert_eq!(endpoint(&from_file.logs), Some("http://logs:4317"));
        assert_eq!(endpoint(&from_file.traces), Some("http://localhost:4317"));
        assert_eq!(from_file.metrics.as_ref().unwrap().protocol, Protocol::Grpc);
        let overlaid = OtlpSettings::resolve(
            Some(&file(true)),
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://m:4318/v1/metrics",
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ]),
        )
        .unwrap();
        assert_eq!(
            endpoint(&overlaid.metrics),
            Some("http://m:4318/v1/metrics")
        );
        assert_eq!(
            overlaid.metrics.as_ref().unwrap().protocol,
            Protocol::HttpProtobuf
        );
        assert_eq!(endpoint(&overlaid.logs), Some("http://logs:4317"));
        assert_eq!(overlaid.service_name.as_deref(), Some("from-env"));
    }

    #[test]
    fn sdk_disabled_wins_over_the_file_and_the_environment() {
        let s = OtlpSettings::resolve(
            Some(&file(true)),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_SDK_DISABLED", "TRUE"),
            ]),
        )
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

    #[test]
    fn dev_cluster_names_resolve_through_the_hosts_file() {
        let hosts = "127.9.0.4 collector.default.svc\n";
        let mut s = settings(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector.default.svc:4318",
        )])
        .unwrap();
        s.resolve_hosts(|address| iggy_contract::hosts::resolve_in(hosts, address));
        assert_eq!(endpoint(&s.traces), Some("http://127.9.0.4:4318/v1/traces"));
        let mut elsewhere = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo.example:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        elsewhere.resolve_hosts(|address| iggy_contract::hosts::resolve_in(hosts, address));
        assert_eq!(endpoint(&elsewhere.logs), Some("http://tempo.example:4317"));
    }
}
