//! What tiering has been doing, for `/ready` (details, never readiness itself: a broker whose
//! object store is down keeps serving from local disk) and `/metrics`.

use iggy_tiering::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the L3 read latency histogram's buckets.
pub const READ_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Upper bounds (seconds) of the histogram of how long data took to reach the store.
pub const DELAY_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

/// A Prometheus histogram over fixed bounds (given to each call, at most 10).
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &[f64], seconds: f64) {
        for (bound, bucket) in bounds.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[f64]) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[derive(Default)]
pub struct TierHealth {
    pub uploaded_segments: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub upload_failures: AtomicU64,
    pub evicted_segments: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub deleted_objects: AtomicU64,
    pub lag_segments: AtomicU64,
    pub lag_bytes: AtomicU64,
    pub remote_reads: AtomicU64,
    pub remote_read_bytes: AtomicU64,
    pub remote_read_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    reads: Histogram,
    delays: Histogram,
    last_error: Mutex<Option<(StoreError, u64)>>,
}

impl TierHealth {
    /// Records a failed store request; returns whether its kind differs from the last one
    /// (worth a warning; repeats of the same failure are logged at debug level).
    pub fn failed(&self, error: &StoreError) -> bool {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let new_kind = last.as_ref().map(|(e, _)| e.kind()) != Some(error.kind());
        *last = Some((error.clone(), crate::storage::fsutil::now_micros()));
        new_kind
    }

    /// A store request succeeded: the store is healthy again. Returns whether it was not.
    pub fn succeeded(&self) -> bool {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }

    pub fn observe_read(&self, seconds: f64) {
        self.reads.observe(&READ_BUCKETS, seconds);
    }

    /// A segment's upload was recorded `seconds` after its first message was stored: how long
    /// the oldest data of a segment waited to reach the store.
    pub fn observe_delay(&self, seconds: f64) {
        self.delays.observe(&DELAY_BUCKETS, seconds);
    }

    /// `ok`, or `degraded` with the last failure: the `/ready` detail line.
    pub fn summary(&self) -> String {
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            None => "ok".into(),
            Some((error, _)) => format!(
                "degraded ({}; {} sealed segments wait for upload): {error}",
                error.kind(),
                self.lag_segments.load(Ordering::Relaxed)
            ),
        }
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        counter(
            out,
            "iggy_tiering_uploaded_segments_total",
            "Sealed segments uploaded to the object store.",
            &self.uploaded_segments,
        );
        counter(
            out,
            "iggy_tiering_uploaded_bytes_total",
            "Segment bytes uploaded to the object store.",
            &self.uploaded_bytes,
        );
        counter(
            out,
            "iggy_tiering_upload_failures_total",
            "Failed uploads, manifest writes and deletions.",
            &self.upload_failures,
        );
        counter(
            out,
            "iggy_tiering_evicted_segments_total",
            "Local copies deleted because the object store holds them.",
            &self.evicted_segments,
        );
        counter(
            out,
            "iggy_tiering_evicted_bytes_total",
            "Bytes of local copies deleted because the object store holds them.",
            &self.evicted_bytes,
        );
        counter(
            out,
            "iggy_tiering_deleted_objects_total",
            "Objects deleted from the store (retention, purges, deletions).",
            &self.deleted_objects,
        );
        gauge(
            out,
            "iggy_tiering_upload_lag_segments",
            "Sealed local segments not yet in the object store.",
            self.lag_segments.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "iggy_tiering_upload_lag_bytes",
            "Bytes of sealed local segments not yet in the object store.",
            self.lag_bytes.load(Ordering::Relaxed),
        );
        counter(
            out,
            "iggy_tiering_remote_reads_total",
            "Polls answered from the object store.",
            &self.remote_reads,
        );
        counter(
            out,
            "iggy_tiering_remote_read_bytes_total",
            "Message bytes served from the object store.",
            &self.remote_read_bytes,
        );
        counter(
            out,
            "iggy_tiering_remote_read_failures_total",
            "Polls of tiered data that failed.",
            &self.remote_read_failures,
        );
        counter(
            out,
            "iggy_tiering_cache_hits_total",
            "Reads of tiered data served from the read cache.",
            &self.cache_hits,
        );
        let healthy = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        gauge(
            out,
            "iggy_tiering_healthy",
            "1 when the last object-store request succeeded.",
            u64::from(healthy),
        );
        self.reads.render(
            out,
            "iggy_tiering_store_read_seconds",
            "Latency of GET requests to the object store.",
            &READ_BUCKETS,
        );
        self.delays.render(
            out,
            "iggy_tiering_store_delay_seconds",
            "From a segment's first message to the store's manifest naming the segment.",
            &DELAY_BUCKETS,
        );
    }
}
