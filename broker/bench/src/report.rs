//! Latency samples and the printed report.

use crate::args::Args;
use std::time::Duration;

pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }
    /// Nearest-rank percentile in milliseconds.
    fn percentile(sorted: &[Duration], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
    }
}

pub struct Phase {
    pub elapsed: Duration,
    pub messages: usize,
    pub samples: Samples,
}

impl Phase {
    pub fn print(mut self, name: &str, args: &Args) -> std::io::Result<()> {
        if let Some(path) = &args.latencies {
            let mut path = path.clone().into_os_string();
            path.push(format!(".{name}"));
            let lines: String = self
                .samples
                .0
                .iter()
                .map(|d| format!("{:.3}\n", d.as_secs_f64() * 1000.0))
                .collect();
            std::fs::write(path, lines)?;
        }
        self.samples.0.sort_unstable();
        let seconds = self.elapsed.as_secs_f64();
        let payload_mb = (self.messages * args.message_size) as f64 / 1e6;
        let wire_mb = (self.messages * (args.message_size + 64)) as f64 / 1e6;
        let s = &self.samples.0;
        println!(
            "{label}{name:<8} producers={p} consumers={c} partitions={parts} msgs={m} \
             payload_MB/s={pmb:.0} wire_MB/s={wmb:.0} msgs/s={mps:.0} \
             p50_ms={p50:.3} p99_ms={p99:.3} p999_ms={p999:.3} max_ms={max:.3} requests={n}",
            label = if args.label.is_empty() {
                String::new()
            } else {
                format!("[{}] ", args.label)
            },
            p = args.producers,
            c = args.consumers.min(args.partitions as usize).max(1),
            parts = args.partitions,
            m = self.messages,
            pmb = payload_mb / seconds,
            wmb = wire_mb / seconds,
            mps = self.messages as f64 / seconds,
            p50 = Samples::percentile(s, 50.0),
            p99 = Samples::percentile(s, 99.0),
            p999 = Samples::percentile(s, 99.9),
            max = Samples::percentile(s, 100.0),
            n = s.len(),
        );
        Ok(())
    }
}
