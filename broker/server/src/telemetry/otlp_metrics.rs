//! The `/metrics` series over OTLP, from the same instruments.
//!
//! The broker's counters are atomics that `/metrics` renders as Prometheus text. Rather than keep
//! a second set of instruments in step with the first, the OTLP side reads that rendering: each
//! counter or gauge family becomes an observable instrument of the same name, labels and help,
//! whose callback takes its samples from a rendering at most a second old (one rendering serves
//! every family of an export). Histograms cannot be observed in OpenTelemetry, so the request
//! duration histogram is recorded a second time, at the one place requests are counted
//! (`Metrics::observe_requests`), with the same bucket bounds.

use crate::broker::Broker;
use crate::metrics::BUCKETS;
use iggy_telemetry::opentelemetry::metrics::{AsyncInstrument, Meter};
use iggy_telemetry::opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a rendering may be and still serve a family's callback.
const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Family {
    kind: Option<Kind>,
    help: String,
    samples: Vec<Sample>,
}

/// Parses the Prometheus text the broker renders: `# HELP`, `# TYPE` and sample lines.
/// Histogram and unknown families are left out (their samples have no counter/gauge type).
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                families.entry(name.to_string()).or_default().help = help.to_string();
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                families.entry(name.to_string()).or_default().kind = match kind.trim() {
                    "counter" => Some(Kind::Counter),
                    "gauge" => Some(Kind::Gauge),
                    _ => None,
                };
            }
        } else if let Some((name, sample)) = parse_sample(line) {
            if let Some(family) = families.get_mut(&name) {
                family.samples.push(sample);
            }
        }
    }
    families.retain(|_, family| family.kind.is_some());
    families
}

/// `name{label="value",…} number` or `name number`.
fn parse_sample(line: &str) -> Option<(String, Sample)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some((name.to_string(), Sample { labels, value }))
}

/// `a="x",b="y\"z"` with the exposition format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.push((name.trim_start_matches(',').to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(labels)
}

type Families = Arc<BTreeMap<String, Family>>;

/// The latest rendering, parsed, shared by every family's callback.
struct Snapshot {
    broker: Arc<Broker>,
    taken: Mutex<Option<(Instant, Families)>>,
}

impl Snapshot {
    fn families(&self) -> Families {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        match &*taken {
            Some((at, families)) if at.elapsed() < FRESH_FOR => families.clone(),
            _ => {
                let families = Arc::new(parse(&self.broker.render_metrics()));
                *taken = Some((Instant::now(), families.clone()));
                families
            }
        }
    }

    fn observations(&self, name: &str) -> Vec<(f64, Vec<KeyValue>)> {
        self.families()
            .get(name)
            .map(|family| {
                family
                    .samples
                    .iter()
                    .map(|s| {
                        let labels = s
                            .labels
                            .iter()
                            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                            .collect();
                        (s.value, labels)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The callback of family `name`: its samples from the latest rendering.
fn observer(
    source: Arc<Snapshot>,
    name: String,
) -> impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static {
    move |instrument| {
        for (value, labels) in source.observations(&name) {
            instrument.observe(value, &labels);
        }
    }
}

/// Registers every counter and gauge of `/metrics`, and the request duration histogram, on
/// `meter`. Families that appear later (none do today: each is rendered from the start, even
/// without samples) would not be exported.
pub fn register(meter: &Meter, broker: Arc<Broker>) {
    let snapshot = Arc::new(Snapshot {
        broker: broker.clone(),
        taken: Mutex::new(None),
    });
    for (name, family) in snapshot.families().iter() {
        let observe = observer(snapshot.clone(), name.clone());
        match family.kind {
            Some(Kind::Counter) => {
                meter
                    .f64_observable_counter(name.clone())
                    .with_description(family.help.clone())
                    .with_callback(observe)
                    .build();
            }
            Some(Kind::Gauge) => {
                meter
                    .f64_observable_gauge(name.clone())
                    .with_description(family.help.clone())
                    .with_callback(observe)
                    .build();
            }
            None => {}
        }
    }
    let durations = meter
        .f64_histogram("iggy_request_duration_seconds")
        .with_unit("s")
        .with_description("Time from a request's arrival to its response, by command.")
        .with_boundaries(BUCKETS.to_vec())
        .build();
    broker
        .metrics
        .observe_requests(Box::new(move |command, _ok, elapsed| {
            let name = command.map_or("unknown", |c| c.name());
            durations.record(elapsed.as_secs_f64(), &[KeyValue::new("command", name)]);
        }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_into_counter_and_gauge_families() {
        let text = "# HELP iggy_requests_total Requests handled.\n\
                    # TYPE iggy_requests_total counter\n\
                    iggy_requests_total{command=\"ping\",result=\"ok\"} 3\n\
                    # HELP d A histogram.\n# TYPE d histogram\nd_bucket{le=\"0.1\"} 1\n\
                    # HELP iggy_messages_in_total Messages.\n# TYPE iggy_messages_in_total counter\n\
                    iggy_messages_in_total{stream=\"s\\\"1\",topic=\"a,b\"} 7\n\
                    # HELP iggy_connections_open Open.\n# TYPE iggy_connections_open gauge\n\
                    iggy_connections_open 2\n";
        let families = parse(text);
        assert_eq!(
            families.keys().collect::<Vec<_>>(),
            [
                "iggy_connections_open",
                "iggy_messages_in_total",
                "iggy_requests_total"
            ]
        );
        let requests = &families["iggy_requests_total"];
        assert_eq!(requests.kind, Some(Kind::Counter));
        assert_eq!(requests.help, "Requests handled.");
        assert_eq!(
            requests.samples,
            vec![Sample {
                labels: vec![
                    ("command".into(), "ping".into()),
                    ("result".into(), "ok".into())
                ],
                value: 3.0
            }]
        );
        assert_eq!(
            families["iggy_messages_in_total"].samples[0].labels,
            vec![
                ("stream".to_string(), "s\"1".to_string()),
                ("topic".to_string(), "a,b".to_string())
            ]
        );
        assert_eq!(families["iggy_connections_open"].kind, Some(Kind::Gauge));
        assert_eq!(families["iggy_connections_open"].samples[0].value, 2.0);
    }

    #[test]
    fn the_broker_rendering_yields_every_family() {
        let metrics = crate::metrics::Metrics::new();
        let families = parse(&metrics.render(&[]));
        for name in [
            "iggy_requests_total",
            "iggy_messages_in_total",
            "iggy_connections_open",
            "iggy_replication_view_changes_total",
        ] {
            assert!(families.contains_key(name), "{name} missing");
        }
        assert!(!families.contains_key("iggy_request_duration_seconds"));
    }
}
