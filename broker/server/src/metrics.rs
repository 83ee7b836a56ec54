//! Prometheus metrics, kept in atomics so recording on the hot path costs a few relaxed adds.
//! Rendered by hand in the text exposition format; there are few enough series that a metrics
//! library would add more compile time than it saves code.

use crate::state::catalog::TopicTraffic;
use iggy_wire::Command;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Picks one counter out of a topic's traffic.
type TrafficField = fn(&TopicTraffic) -> &AtomicU64;

#[derive(Default)]
struct CommandStats {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Cumulative counts are computed at render time; each slot counts its own bucket only.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

pub struct Metrics {
    /// One slot per `Command::ALL` entry, plus a last one for unknown codes.
    commands: Vec<CommandStats>,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// Connections closed at once because `tcp.max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed for not logging in, or not finishing a request, in time.
    pub connections_timed_out: AtomicU64,
    /// Connections closed because their TLS handshake failed or did not finish in time.
    pub tls_handshake_failures: AtomicU64,
    /// Reads that found a stored message damaged (its range was refused).
    pub corrupt_reads: AtomicU64,
    /// Consumer-group partitions this node's members handed over (`handover`), and of those,
    /// the ones handed over because the rebalancing timeout passed, not because the member
    /// stored what it polled.
    pub group_handovers: AtomicU64,
    pub group_handover_timeouts: AtomicU64,
    /// Messages message deduplication dropped from their batches (`storage::dedup`).
    pub messages_deduplicated: AtomicU64,
    /// Logins refused without a password check because the address or user was throttled.
    pub logins_throttled: AtomicU64,
    /// Bytes of sealed segments the scrubber re-verified, and damaged ranges it found.
    pub scrub_bytes: AtomicU64,
    pub scrub_corruptions: AtomicU64,
    /// Bytes the last boot re-verified by checksum (what partitions held past their last
    /// checkpoint); passes of the running checkpoint (`storage.checkpoint_interval`) and the
    /// partition checkpoints they wrote.
    pub boot_verified_bytes: AtomicU64,
    pub checkpoint_passes: AtomicU64,
    pub partition_checkpoints: AtomicU64,
    /// Damaged ranges rewritten from another copy (a peer's, or the object store's), and
    /// repairs that found no intact copy.
    pub repairs: AtomicU64,
    pub repair_failures: AtomicU64,
    /// Replication: view changes this replica started, client requests it forwarded to the
    /// primary, and messages to peers dropped (peer down or its queue full).
    pub view_changes: AtomicU64,
    pub replication_forwarded: AtomicU64,
    pub replication_inbound_dropped: AtomicU64,
    pub replication_dropped: AtomicU64,
    /// Local client requests the replica thread passed over because nobody waited for them.
    pub replication_abandoned: AtomicU64,
    /// Requests the primary refused because some member's disk had too little of
    /// `replication.min_free_space` left for them (`replication::machine`, `admit`).
    pub replication_refused_disk_full: AtomicU64,
    /// Sends the primary wrote into their partitions ahead of the commit and published at the
    /// apply, and those whose written batch the apply could not take (`replication::staging`).
    pub replication_staged: AtomicU64,
    pub replication_staged_refused: AtomicU64,
    /// Damaged WAL slots restored from a peer.
    pub wal_repairs: AtomicU64,
    /// 1 when recovery found a WAL slot whose header vouches for a prepare that no longer
    /// reads back (the replica then repairs its log from its peers before it votes again).
    pub wal_damaged_at_start: AtomicU64,
    /// Also sees every request `record_request` counts: the OTLP exporter's histogram, when
    /// metrics are exported (`telemetry::otlp_metrics`).
    request_observer: OnceLock<RequestObserver>,
    /// What OTLP export did (`iggy_telemetry_*`), once telemetry is installed.
    export: OnceLock<Arc<iggy_telemetry::ExportStats>>,
}

/// Receives each request's command, result and duration.
pub type RequestObserver = Box<dyn Fn(Option<Command>, bool, Duration) + Send + Sync>;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            commands: (0..=Command::ALL.len())
                .map(|_| CommandStats::default())
                .collect(),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            group_handovers: AtomicU64::new(0),
            group_handover_timeouts: AtomicU64::new(0),
            messages_deduplicated: AtomicU64::new(0),
            logins_throttled: AtomicU64::new(0),
            scrub_bytes: AtomicU64::new(0),
            scrub_corruptions: AtomicU64::new(0),
            boot_verified_bytes: AtomicU64::new(0),
            checkpoint_passes: AtomicU64::new(0),
            partition_checkpoints: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            repair_failures: AtomicU64::new(0),
            view_changes: AtomicU64::new(0),
            replication_forwarded: AtomicU64::new(0),
            replication_staged: AtomicU64::new(0),
            replication_staged_refused: AtomicU64::new(0),
            replication_inbound_dropped: AtomicU64::new(0),
            replication_dropped: AtomicU64::new(0),
            replication_abandoned: AtomicU64::new(0),
            replication_refused_disk_full: AtomicU64::new(0),
            wal_repairs: AtomicU64::new(0),
            wal_damaged_at_start: AtomicU64::new(0),
            request_observer: OnceLock::new(),
            export: OnceLock::new(),
        }
    }

    fn slot(command: Option<Command>) -> usize {
        command
            .and_then(|c| Command::ALL.iter().position(|k| *k == c))
            .unwrap_or(Command::ALL.len())
    }

    /// Makes `/metrics` report what OTLP export did; a later call is ignored.
    pub fn report_export(&self, stats: Arc<iggy_telemetry::ExportStats>) {
        let _ = self.export.set(stats);
    }

    /// Installs the second recorder of requests; a later call is ignored.
    pub fn observe_requests(&self, observer: RequestObserver) {
        let _ = self.request_observer.set(observer);
    }

    pub fn record_request(&self, command: Option<Command>, ok: bool, elapsed: Duration) {
        if let Some(observer) = self.request_observer.get() {
            observer(command, ok, elapsed);
        }
        let stats = &self.commands[Self::slot(command)];
        if ok {
            stats.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        stats
            .sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The exposition text. `topics` are (stream name, topic name, counters).
    pub fn render(&self, topics: &[(String, String, &TopicTraffic)]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let names = Command::ALL
            .iter()
            .map(|c| c.name())
            .chain(std::iter::once("unknown"));

        out.push_str("# HELP iggy_requests_total Requests handled, by command and result.\n");
        out.push_str("# TYPE iggy_requests_total counter\n");
        for (name, stats) in names.clone().zip(&self.commands) {
            for (result, counter) in [("ok", &stats.ok), ("error", &stats.errors)] {
                let _ = writeln!(
                    out,
                    "iggy_requests_total{{command=\"{name}\",result=\"{result}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
        }

        out.push_str("# HELP iggy_request_duration_seconds Time from a request's arrival to its response, by command.\n");
        out.push_str("# TYPE iggy_request_duration_seconds histogram\n");
        for (name, stats) in names.zip(&self.commands) {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += stats.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "iggy_request_duration_seconds_bucket{{command=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += stats.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "iggy_request_duration_seconds_bucket{{command=\"{name}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "iggy_request_duration_seconds_sum{{command=\"{name}\"}} {}",
                stats.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "iggy_request_duration_seconds_count{{command=\"{name}\"}} {cumulative}"
            );
        }

        let series: [(&str, &str, TrafficField); 4] = [
            (
                "iggy_messages_in_total",
                "Messages appended, by topic.",
                |t| &t.messages_in,
            ),
            (
                "iggy_bytes_in_total",
                "Message bytes appended, by topic.",
                |t| &t.bytes_in,
            ),
            (
                "iggy_messages_out_total",
                "Messages returned by polls, by topic.",
                |t| &t.messages_out,
            ),
            (
                "iggy_bytes_out_total",
                "Message bytes returned by polls, by topic.",
                |t| &t.bytes_out,
            ),
        ];
        for (metric, help, field) in series {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (stream, topic, traffic) in topics {
                let _ = writeln!(
                    out,
                    "{metric}{{stream=\"{}\",topic=\"{}\"}} {}",
                    escape(stream),
                    escape(topic),
                    field(traffic).load(Ordering::Relaxed)
                );
            }
        }

        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let singles: [(&str, &str, &str, u64); 27] = [
            (
                "iggy_connections_open",
                "gauge",
                "Client TCP connections currently open.",
                self.connections_open.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "iggy_connections_total",
                "counter",
                "Client TCP connections accepted.",
                load(&self.connections_total),
            ),
            (
                "iggy_connections_refused_total",
                "counter",
                "Client connections closed at once because tcp.max_connections were open.",
                load(&self.connections_refused),
            ),
            (
                "iggy_connections_timed_out_total",
                "counter",
                "Client connections closed for not logging in or not finishing a request in time.",
                load(&self.connections_timed_out),
            ),
            (
                "iggy_tls_handshake_failures_total",
                "counter",
                "Client connections closed because their TLS handshake failed or did not finish within tcp.login_timeout.",
                load(&self.tls_handshake_failures),
            ),
            (
                "iggy_corrupt_reads_total",
                "counter",
                "Reads that found a stored message damaged; the range was refused.",
                load(&self.corrupt_reads),
            ),
            (
                "iggy_consumer_group_handovers_total",
                "counter",
                "Consumer-group partitions this node's members handed over in a rebalance.",
                load(&self.group_handovers),
            ),
            (
                "iggy_consumer_group_handover_timeouts_total",
                "counter",
                "Handovers forced by consumer_group.rebalancing_timeout: the member never stored what it polled.",
                load(&self.group_handover_timeouts),
            ),
            (
                "iggy_messages_deduplicated_total",
                "counter",
                "Messages dropped from their batch because a recent message of their partition carries the same id.",
                load(&self.messages_deduplicated),
            ),
            (
                "iggy_logins_throttled_total",
                "counter",
                "Logins refused without a password check after repeated failures.",
                load(&self.logins_throttled),
            ),
            (
                "iggy_scrub_bytes_total",
                "counter",
                "Bytes of sealed segments re-verified by the scrubber.",
                load(&self.scrub_bytes),
            ),
            (
                "iggy_scrub_corruptions_total",
                "counter",
                "Damaged ranges the scrubber found.",
                load(&self.scrub_corruptions),
            ),
            (
                "iggy_boot_verified_bytes",
                "gauge",
                "Bytes the last boot re-verified by checksum: what partitions held past their last checkpoint.",
                load(&self.boot_verified_bytes),
            ),
            (
                "iggy_checkpoint_passes_total",
                "counter",
                "Passes of the running checkpoint over the partitions (storage.checkpoint_interval).",
                load(&self.checkpoint_passes),
            ),
            (
                "iggy_partition_checkpoints_total",
                "counter",
                "Partition checkpoints written while running (storage.checkpoint_interval).",
                load(&self.partition_checkpoints),
            ),
            (
                "iggy_repairs_total",
                "counter",
                "Damaged ranges rewritten from another copy (a peer, or the object store).",
                load(&self.repairs),
            ),
            (
                "iggy_repair_failures_total",
                "counter",
                "Repairs of damaged ranges that found no intact copy.",
                load(&self.repair_failures),
            ),
            (
                "iggy_replication_view_changes_total",
                "counter",
                "View changes this replica started.",
                load(&self.view_changes),
            ),
            (
                "iggy_replication_forwarded_total",
                "counter",
                "Client requests this replica forwarded to the primary.",
                load(&self.replication_forwarded),
            ),
            (
                "iggy_replication_staged_total",
                "counter",
                "Sends this primary wrote into their partitions ahead of the commit and published at the apply.",
                load(&self.replication_staged),
            ),
            (
                "iggy_replication_staged_refused_total",
                "counter",
                "Sends written ahead of the commit whose apply could not take what was written.",
                load(&self.replication_staged_refused),
            ),
            (
                "iggy_replication_dropped_total",
                "counter",
                "Messages to other replicas dropped because the peer was down or its queue full.",
                load(&self.replication_dropped),
            ),
            (
                "iggy_replication_inbound_dropped_total",
                "counter",
                "Messages from other replicas dropped because this replica's thread had too many \
                 of their prepares queued (a state sync holds it).",
                load(&self.replication_inbound_dropped),
            ),
            (
                "iggy_replication_abandoned_total",
                "counter",
                "Client requests not proposed because their connection had stopped waiting \
                 (its deadline passed, or it sent the request again) before the replica thread \
                 took them.",
                load(&self.replication_abandoned),
            ),
            (
                "iggy_replication_refused_disk_full_total",
                "counter",
                "Requests the primary refused because they would have left some member's data \
                 filesystem with less than replication.min_free_space (sends, CannotAppendMessage) \
                 or a quarter of it (other operations that add state, the generic error).",
                load(&self.replication_refused_disk_full),
            ),
            (
                "iggy_replication_wal_repairs_total",
                "counter",
                "Damaged WAL slots this replica restored from a peer.",
                load(&self.wal_repairs),
            ),
            (
                "iggy_replication_wal_damaged_at_start",
                "gauge",
                "1 when recovery found a damaged WAL slot that the replica had to repair from its peers.",
                load(&self.wal_damaged_at_start),
            ),
        ];
        for (metric, kind, help, value) in singles {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP iggy_segment_files_open Segment files open now (at most the descriptor budget).\n\
             # TYPE iggy_segment_files_open gauge\niggy_segment_files_open {}",
            crate::storage::descriptors::open_count()
        );
        let (l1_hits, l1_hit_bytes) = crate::storage::l1::hits();
        let _ = writeln!(
            out,
            "# HELP iggy_tiering_l1_hits_total Read ranges of polls served from L1 memory, without reading the disk.\n\
             # TYPE iggy_tiering_l1_hits_total counter\niggy_tiering_l1_hits_total {l1_hits}\n\
             # HELP iggy_tiering_l1_hit_bytes_total Bytes of polls served from L1 memory.\n\
             # TYPE iggy_tiering_l1_hit_bytes_total counter\niggy_tiering_l1_hit_bytes_total {l1_hit_bytes}\n\
             # HELP iggy_tiering_l1_bytes Bytes of the newest batches held in L1 memory.\n\
             # TYPE iggy_tiering_l1_bytes gauge\niggy_tiering_l1_bytes {}",
            crate::storage::l1::used()
        );
        if let Some(not_after) = crate::net::tls::served_not_after() {
            let _ = writeln!(
                out,
                "# HELP iggy_tls_certificate_expiry_timestamp_seconds When the certificate the client port serves expires (Unix time).\n\
                 # TYPE iggy_tls_certificate_expiry_timestamp_seconds gauge\n\
                 iggy_tls_certificate_expiry_timestamp_seconds {not_after}"
            );
        }
        if let Some(export) = self.export.get() {
            render_export(export, &mut out);
        }
        out
    }
}

/// OTLP export's accounting, per signal: what the broker produced, what reached the collector,
/// what failed to; produced − exported − failed is what the exporters' full queues dropped.
fn render_export(export: &iggy_telemetry::ExportStats, out: &mut String) {
    let series: [(&str, &str, &[AtomicU64; 3]); 3] = [
        (
            "iggy_telemetry_produced_total",
            "Spans ended and log records emitted for export.",
            &export.produced,
        ),
        (
            "iggy_telemetry_exported_total",
            "Items the collector accepted (metrics: export rounds).",
            &export.exported,
        ),
        (
            "iggy_telemetry_export_failed_total",
            "Items in exports that failed (collector down, refused or too slow).",
            &export.failed,
        ),
    ];
    for (metric, help, values) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for signal in iggy_telemetry::Signal::ALL {
            let _ = writeln!(
                out,
                "{metric}{{signal=\"{}\"}} {}",
                signal.name(),
                values[signal as usize].load(Ordering::Relaxed)
            );
        }
    }
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        metrics.record_request(Some(Command::Ping), true, Duration::from_micros(50));
        metrics.record_request(Some(Command::Ping), false, Duration::from_millis(3));
        metrics.record_request(None, false, Duration::from_secs(10));
        let traffic = TopicTraffic::default();
        traffic.record_in(3, 300);
        let text = metrics.render(&[("s\"1".into(), "t".into(), &traffic)]);
        assert!(text.contains("iggy_requests_total{command=\"ping\",result=\"ok\"} 1"));
        assert!(text.contains("iggy_requests_total{command=\"ping\",result=\"error\"} 1"));
        assert!(
            text.contains("iggy_request_duration_seconds_bucket{command=\"ping\",le=\"0.0001\"} 1")
        );
        assert!(
            text.contains("iggy_request_duration_seconds_bucket{command=\"ping\",le=\"0.005\"} 2")
        );
        assert!(text.contains("iggy_request_duration_seconds_count{command=\"unknown\"} 1"));
        assert!(text.contains("iggy_messages_in_total{stream=\"s\\\"1\",topic=\"t\"} 3"));
        assert!(text.contains("iggy_bytes_in_total{stream=\"s\\\"1\",topic=\"t\"} 300"));
    }
}
