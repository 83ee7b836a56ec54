//! What export did with what the process produced: spans ended and log records emitted, items
//! the exporters delivered, and items in batches the collector refused or never answered.
//! The SDK's batch processors drop what does not fit their bounded queues (2,048 items by
//! default) rather than block the data path, and say so only in their own logs; these counts
//! make the loss visible: ended − exported − failed is what was dropped, give or take one queue
//! still in flight.

use crate::{ExportStats, Signal};
use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Counts every span that ends and every log record emitted (a processor next to the batch
/// processor, which sees the same items).
#[derive(Debug)]
pub(crate) struct Produced(pub(crate) Arc<ExportStats>);

impl SpanProcessor for Produced {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, _span: SpanData) {
        self.0.produced[Signal::Traces as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl LogProcessor for Produced {
    fn emit(&self, _record: &mut SdkLogRecord, _scope: &InstrumentationScope) {
        self.0.produced[Signal::Logs as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// An exporter that counts what it delivered and what failed.
#[derive(Debug)]
pub(crate) struct Counted<E> {
    pub(crate) inner: E,
    pub(crate) stats: Arc<ExportStats>,
    pub(crate) signal: Signal,
}

impl<E> Counted<E> {
    fn count(&self, result: OTelSdkResult, items: usize) -> OTelSdkResult {
        let slot = self.signal as usize;
        let counter = match result {
            Ok(()) => &self.stats.exported[slot],
            Err(_) => &self.stats.failed[slot],
        };
        counter.fetch_add(items as u64, Ordering::Relaxed);
        result
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let items = batch.len();
        let result = self.inner.export(batch).await;
        self.count(result, items)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let items = batch.iter().count();
        let result = self.inner.export(batch).await;
        self.count(result, items)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    /// Counts export rounds: a metric export carries every instrument at once.
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.count(result, 1)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
