//! Operator metrics in the Prometheus text format: reconciliations, failures by category, a
//! duration histogram and the time of the last success.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    reconciliations: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Cumulative counts per bucket, then the +Inf count.
    histogram: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    last_success_seconds: AtomicU64,
    leader: AtomicU64,
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, failure: Option<&'static str>) {
        self.reconciliations.fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        {
            let mut histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
            for (bucket, bound) in histogram.0.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            histogram.1 += 1;
            histogram.2 += seconds;
        }
        match failure {
            Some(category) => {
                *self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(category)
                    .or_default() += 1;
            }
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                self.last_success_seconds.store(now, Ordering::Relaxed);
            }
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(u64::from(leader), Ordering::Relaxed);
    }

    pub fn reconciliations(&self) -> u64 {
        self.reconciliations.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP iggy_operator_reconciliations_total Reconciliations run.\n# TYPE iggy_operator_reconciliations_total counter");
        let _ = writeln!(
            out,
            "iggy_operator_reconciliations_total {}",
            self.reconciliations()
        );
        let _ = writeln!(out, "# HELP iggy_operator_reconcile_failures_total Failed reconciliations by error category.\n# TYPE iggy_operator_reconcile_failures_total counter");
        for (category, count) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "iggy_operator_reconcile_failures_total{{category=\"{category}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP iggy_operator_reconcile_duration_seconds Time one reconciliation took.\n# TYPE iggy_operator_reconcile_duration_seconds histogram");
        let histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        for (count, bound) in histogram.0.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "iggy_operator_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "iggy_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            histogram.1
        );
        let _ = writeln!(
            out,
            "iggy_operator_reconcile_duration_seconds_sum {}",
            histogram.2
        );
        let _ = writeln!(
            out,
            "iggy_operator_reconcile_duration_seconds_count {}",
            histogram.1
        );
        let _ = writeln!(out, "# HELP iggy_operator_last_success_timestamp_seconds Unix time of the last successful reconciliation.\n# TYPE iggy_operator_last_success_timestamp_seconds gauge");
        let _ = writeln!(
            out,
            "iggy_operator_last_success_timestamp_seconds {}",
            self.last_success_seconds.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP iggy_operator_leader 1 while this instance holds the leader lease.\n# TYPE iggy_operator_leader gauge");
        let _ = writeln!(
            out,
            "iggy_operator_leader {}",
            self.leader.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_failures_and_buckets() {
        let metrics = Metrics::default();
        metrics.observe_reconcile(Duration::from_millis(20), None);
        metrics.observe_reconcile(Duration::from_millis(300), Some("apply"));
        let text = metrics.render();
        assert!(text.contains("iggy_operator_reconciliations_total 2"));
        assert!(text.contains("iggy_operator_reconcile_failures_total{category=\"apply\"} 1"));
        assert!(text.contains("iggy_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("iggy_operator_reconcile_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(!text.contains("iggy_operator_last_success_timestamp_seconds 0\n"));
    }
}
