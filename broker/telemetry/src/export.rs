//! The OTLP side: exporters for each signal, the `tracing` layers that feed them, and the
//! providers that batch and flush.

use crate::accounting::{Counted, Produced};
use crate::settings::{Export, OtlpSettings, Protocol, Signal};
use crate::{ExportStats, TelemetryError, TraceParent, EXPORTED_SPANS};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{EnvFilter, Layer, Registry};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The providers of the exported signals; each batches on its own thread.
#[derive(Default)]
pub(crate) struct Providers {
    tracer: Option<SdkTracerProvider>,
    logger: Option<SdkLoggerProvider>,
    pub(crate) meter: Option<SdkMeterProvider>,
}

impl Providers {
    pub(crate) fn shutdown(self) {
        if let Some(tracer) = &self.tracer {
            if let Err(error) = tracer.shutdown() {
                eprintln!("flushing OTLP traces: {error}");
            }
        }
        if let Some(meter) = &self.meter {
            if let Err(error) = meter.shutdown() {
                eprintln!("flushing OTLP metrics: {error}");
            }
        }
        if let Some(logger) = &self.logger {
            if let Err(error) = logger.shutdown() {
                eprintln!("flushing OTLP logs: {error}");
            }
        }
    }
}

/// Events from the exporters' own HTTP/gRPC stack must not be exported again: each export
/// would log, and each log would be exported.
fn not_from_the_export_path(target: &str) -> bool {
    const EXPORT_PATH: [&str; 6] = ["opentelemetry", "hyper", "h2", "tonic", "reqwest", "tower"];
    !EXPORT_PATH.iter().any(|prefix| target.starts_with(prefix))
}

fn resource(settings: &OtlpSettings, default_service_name: &str) -> Resource {
    // The builder reads OTEL_RESOURCE_ATTRIBUTES (and OTEL_SERVICE_NAME, which the settings
    // already resolved, so the explicit name below agrees with it).
    let name = settings
        .service_name
        .clone()
        .unwrap_or_else(|| default_service_name.to_string());
    Resource::builder().with_service_name(name).build()
}

fn exporter_error<'a>(
    signal: &'static str,
    export: &'a Export,
) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> TelemetryError + 'a {
    move |source| TelemetryError::Exporter {
        signal,
        endpoint: export.endpoint.clone(),
        source,
    }
}

fn span_exporter(export: &Export) -> Result<SpanExporter, TelemetryError> {
    let built = match export.protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .build(),
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build(),
    };
    built.map_err(exporter_error("traces", export))
}

fn log_exporter(export: &Export) -> Result<LogExporter, TelemetryError> {
    let built = match export.protocol {
        Protocol::Grpc => LogExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .build(),
        Protocol::HttpProtobuf => LogExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build(),
    };
    built.map_err(exporter_error("logs", export))
}

fn metric_exporter(export: &Export) -> Result<MetricExporter, TelemetryError> {
    let built = match export.protocol {
        Protocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .build(),
        Protocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build(),
    };
    built.map_err(exporter_error("metrics", export))
}

fn filter(directives: &str) -> EnvFilter {
    // Validated by the console filter already; the fallback only keeps this total.
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Wraps exporters of one signal in the accounting.
struct CountedBy {
    stats: Arc<ExportStats>,
    signal: Signal,
}

impl CountedBy {
    fn wrap<E>(self, inner: E) -> Counted<E> {
        Counted {
            inner,
            stats: self.stats,
            signal: self.signal,
        }
    }
}

pub(crate) fn layers(
    settings: &OtlpSettings,
    default_service_name: &str,
    directives: &str,
    stats: &Arc<ExportStats>,
) -> Result<(Vec<BoxedLayer>, Providers), TelemetryError> {
    let counted = |signal| CountedBy {
        stats: stats.clone(),
        signal,
    };
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut providers = Providers::default();
    let resource = resource(settings, default_service_name);
    if let Some(export) = &settings.traces {
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Produced(stats.clone()))
            .with_batch_exporter(counted(Signal::Traces).wrap(span_exporter(export)?))
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        // Spans at the configured level, plus the exported-only request spans at any level.
        let spans = filter(&format!("{directives},{EXPORTED_SPANS}=trace"));
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans)
                .with_filter(filter_fn(|meta| not_from_the_export_path(meta.target())))
                .boxed(),
        );
        providers.tracer = Some(provider);
    }
    if let Some(export) = &settings.logs {
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource.clone())
            .with_log_processor(Produced(stats.clone()))
            .with_batch_exporter(counted(Signal::Logs).wrap(log_exporter(export)?))
            .build();
        layers.push(
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&provider)
                .with_filter(filter(directives))
                .with_filter(filter_fn(|meta| not_from_the_export_path(meta.target())))
                .boxed(),
        );
        providers.logger = Some(provider);
    }
    if let Some(export) = &settings.metrics {
        // The periodic reader exports every OTEL_METRIC_EXPORT_INTERVAL (60 s by default).
        providers.meter = Some(
            SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(counted(Signal::Metrics).wrap(metric_exporter(export)?))
                .build(),
        );
    }
    Ok((layers, providers))
}

fn span_context(remote: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(remote.trace_id),
        SpanId::from_bytes(remote.parent_id),
        TraceFlags::new(remote.flags),
        true,
        TraceState::default(),
    )
}

pub(crate) fn set_remote_parent(span: &tracing::Span, parent: &TraceParent) {
    let context = opentelemetry::Context::new().with_remote_span_context(span_context(parent));
    // Fails only when the span was already started elsewhere or is not exported: nothing to do.
    let _ = span.set_parent(context);
}

pub(crate) fn link_remote(span: &tracing::Span, linked: &TraceParent) {
    span.add_link(span_context(linked));
}

pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceParent {
        trace_id: span_context.trace_id().to_bytes(),
        parent_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
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
        assert!(not_from_the_export_path("broker::net::tcp"));
    }
}
