//! The broker exports traces, logs and metrics over OTLP to a real collector (rotel), over gRPC
//! and over HTTP/protobuf, configured by the standard OTEL_* variables the operator sets (or by
//! `[telemetry]`); a producer's `traceparent` header joins the broker's spans to its trace.

mod common;

use common::*;
use iggy::prelude::*;
use iggy_telemetry::testing::OtlpReceiver;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Waits (30 s at most) until the collector's output holds every `wanted` string.
fn received_all(receiver: &OtlpReceiver, wanted: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = receiver.received();
        match wanted.iter().find(|w| !received.contains(w.as_str())) {
            None => return received,
            Some(missing) if Instant::now() > deadline => {
                let start: String = received.chars().take(12_000).collect();
                panic!("missing {missing:?} in what the collector received (start):\n{start}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The log record with body `body` names the span it was logged in.
fn assert_log_in_span_context(received: &str, body: &str) {
    let record = received
        .split("LogRecord #")
        .find(|r| r.contains(&format!("Body: Str({body})")))
        .unwrap_or_else(|| panic!("no log record {body:?} in:\n{received}"));
    let trace = record
        .lines()
        .find_map(|l| l.trim().strip_prefix("Trace ID       :"))
        .map(str::trim)
        .unwrap_or_default();
    assert_eq!(trace.len(), 32, "log record outside a span:\n{record}");
}

/// A traceparent for a made-up producer span: trace id and span id as hex.
fn producer_context(trace: u128, span: u64) -> (String, String, String) {
    let (trace, span) = (format!("{trace:032x}"), format!("{span:016x}"));
    (format!("00-{trace}-{span}-01"), trace, span)
}

fn traced_message(payload: &str, traceparent: &str) -> IggyMessage {
    let headers = BTreeMap::from([(
        HeaderKey::from_str("traceparent").expect("key"),
        HeaderValue::from_str(traceparent).expect("value"),
    )]);
    IggyMessage::builder()
        .payload(payload.to_string().into())
        .user_headers(headers)
        .build()
        .expect("message")
}

/// Exports are fast in tests: spans and logs within 100 ms, metrics every 500 ms.
fn otel_env<'a>(endpoint: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=broker-0"),
        ("IGGY_LOGGING_LEVEL", "info"),
    ]
}

async fn exports_over(protocol: &str, endpoint: impl Fn(&OtlpReceiver) -> String) {
    let Some(receiver) = OtlpReceiver::start() else {
        return;
    };
    let endpoint = endpoint(&receiver);
    let mut broker = TestBroker::start_with(&otel_env(&endpoint, protocol));
    let client = broker.client().await;
    client.create_stream("orders").await.expect("stream");
    create_topic(&client, &name("orders"), "events", 1).await;

    // One producer's send: every message carries its context → the send span's parent.
    let (parent, trace, span) =
        producer_context(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
    let mut batch: Vec<IggyMessage> = (0..3)
        .map(|i| traced_message(&format!("m{i}"), &parent))
        .collect();
    send_orders(&client, &mut batch).await;
    // A batch of two producers' messages → two links.
    let (other, other_trace, _) = producer_context(0x1111_2222_3333_4444_5555_6666_7777_8888, 0x99);
    let mut mixed = vec![traced_message("a", &parent), traced_message("b", &other)];
    send_orders(&client, &mut mixed).await;
    let polled = read_all(&client, 0).await;
    assert_eq!(polled.len(), 5);
    // The header reaches the consumer unchanged.
    let headers = polled[0]
        .user_headers_map()
        .expect("headers decode")
        .expect("headers present");
    let kept = headers
        .get(&HeaderKey::from_str("traceparent").expect("key"))
        .expect("traceparent kept");
    assert_eq!(kept.as_str().expect("string"), parent);

    let wanted = [
        // The send span: named by the conventions, the producer's span as its parent.
        "Name           : send orders/events".to_string(),
        format!("Trace ID       : {trace}"),
        format!("Parent ID      : {span}"),
        "-> messaging.system: Str(iggy)".to_string(),
        "-> messaging.destination.name: Str(orders/events)".to_string(),
        "-> messaging.operation.type: Str(send)".to_string(),
        "-> messaging.batch.message_count: Int(3)".to_string(),
        "-> iggy.outcome: Str(ok)".to_string(),
        // The mixed batch and the poll link the other producer's trace.
        format!("-> Trace ID: {other_trace}"),
        "Name           : poll 0/0".to_string(),
        "SpanLink #1".to_string(),
        "-> messaging.operation.type: Str(receive)".to_string(),
        // The process: service name and the operator's resource attributes.
        "-> service.name: Str(iggy-broker)".to_string(),
        "-> k8s.pod.name: Str(broker-0)".to_string(),
        // A log record (the login) and metrics of /metrics over OTLP.
        "client logged in".to_string(),
        "iggy_requests_total".to_string(),
        "iggy_request_duration_seconds".to_string(),
        "iggy_messages_in_total".to_string(),
    ];
    let received = received_all(&receiver, &wanted);
    assert_log_in_span_context(&received, "client logged in");
    assert_eq!(broker.stop(), 0, "clean stop");
}

#[tokio::test]
async fn traces_logs_and_metrics_reach_a_collector_over_grpc() {
    exports_over("grpc", |r| r.grpc_endpoint.clone()).await;
}

#[tokio::test]
async fn traces_logs_and_metrics_reach_a_collector_over_http_protobuf() {
    exports_over("http/protobuf", |r| r.http_endpoint.clone()).await;
}

/// Sends `batch` to partition 0 of orders/events.
async fn send_orders(client: &IggyClient, batch: &mut [IggyMessage]) {
    client
        .send_messages(
            &name("orders"),
            &name("events"),
            &Partitioning::partition_id(0),
            batch,
        )
        .await
        .expect("send");
}

/// One send whose messages carry a fresh producer context; returns its trace id.
async fn traced_send(client: &IggyClient, trace: u128) -> String {
    let (parent, trace, _) = producer_context(trace, 0x42);
    let mut batch = vec![traced_message("traced", &parent)];
    send_orders(client, &mut batch).await;
    trace
}

/// `[telemetry]` alone (here through its IGGY_TELEMETRY_* variables) configures export, each
/// signal with its own transport; batches that have not been sent when SIGTERM arrives are
/// flushed before the broker exits.
#[tokio::test]
async fn the_telemetry_section_configures_export_and_a_stop_flushes_the_batches() {
    let Some(receiver) = OtlpReceiver::start() else {
        return;
    };
    let traces = format!("{}/v1/traces", receiver.http_endpoint);
    let mut broker = TestBroker::start_with(&[
        ("IGGY_TELEMETRY_ENABLED", "true"),
        ("IGGY_TELEMETRY_SERVICE_NAME", "orders-broker"),
        ("IGGY_TELEMETRY_TRACES_TRANSPORT", "http"),
        ("IGGY_TELEMETRY_TRACES_ENDPOINT", &traces),
        ("IGGY_TELEMETRY_LOGS_ENDPOINT", &receiver.grpc_endpoint),
        ("IGGY_TELEMETRY_METRICS_ENDPOINT", &receiver.grpc_endpoint),
        ("IGGY_LOGGING_LEVEL", "info"),
        // Nothing leaves before the stop: only the flush can deliver.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "600000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
    ]);
    let client = broker.client().await;
    client.create_stream("orders").await.expect("stream");
    create_topic(&client, &name("orders"), "events", 1).await;
    let trace = traced_send(&client, 0x5eed_0001).await;
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !receiver.received().contains(&trace),
        "spans were exported before the stop despite the long batch delay"
    );
    assert_eq!(broker.stop(), 0, "clean stop");
    received_all(
        &receiver,
        &[
            format!("Trace ID       : {trace}"),
            "-> service.name: Str(orders-broker)".to_string(),
            "client logged in".to_string(),
            "iggy_connections_total".to_string(),
        ],
    );
}

/// A collector that goes away costs the broker nothing but the exports it misses: clients are
/// served meanwhile, and exports resume when it is back.
#[tokio::test]
async fn the_broker_serves_while_the_collector_is_down_and_exports_resume() {
    let Some(mut receiver) = OtlpReceiver::start() else {
        return;
    };
    let mut broker = TestBroker::start_with(&otel_env(&receiver.grpc_endpoint, "grpc"));
    let client = broker.client().await;
    client.create_stream("orders").await.expect("stream");
    create_topic(&client, &name("orders"), "events", 1).await;
    let before = traced_send(&client, 0xbef0_0001).await;
    received_all(&receiver, &[format!("Trace ID       : {before}")]);

    receiver.stop();
    let started = Instant::now();
    for i in 0..50u128 {
        traced_send(&client, 0xd0_0000 + i).await;
    }
    assert_eq!(read_all(&client, 0).await.len(), 51);
    // Sends do not wait for the exporter: 50 of them took well under a retry back-off.
    assert!(started.elapsed() < Duration::from_secs(10));

    // Let the exporters try (and fail) at least once while the collector is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed = counter(
        &broker,
        "iggy_telemetry_export_failed_total{signal=\"traces\"}",
    );
    assert!(failed > 0, "failed exports are counted");

    receiver.resume();
    let after = traced_send(&client, 0xa7_0001).await;
    received_all(
        &receiver,
        &[
            format!("Trace ID       : {after}"),
            "iggy_requests_total".to_string(),
        ],
    );
    let exported = counter(&broker, "iggy_telemetry_exported_total{signal=\"traces\"}");
    let produced = counter(&broker, "iggy_telemetry_produced_total{signal=\"traces\"}");
    assert!(
        exported > 0 && produced >= exported + failed,
        "{produced} {exported} {failed}"
    );
    drop(client);
    assert_eq!(broker.stop(), 0, "clean stop");
}

/// A counter's value in the broker's /metrics.
fn counter(broker: &TestBroker, series: &str) -> u64 {
    let (_, text) = http_get(broker.http, "/metrics").expect("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

/// An example binary of this package (`cargo test` builds them next to the test binaries).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "broker", "--example", name])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building example {name}");
    }
    path
}

/// The names of the spans of `trace` and the services that sent them.
fn spans_of_trace(received: &str, trace: &str) -> Vec<(String, String)> {
    let mut spans = Vec::new();
    for resource in received.split("ResourceSpans #").skip(1) {
        let service = resource
            .lines()
            .find_map(|l| l.trim().strip_prefix("-> service.name: Str("))
            .map(|s| s.trim_end_matches(')').to_string())
            .unwrap_or_default();
        for span in resource.split("Span #").skip(1) {
            if span.contains(&format!("Trace ID       : {trace}")) {
                let name = span
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Name           : "))
                    .unwrap_or_default();
                spans.push((service.clone(), name.to_string()));
            }
        }
    }
    spans.sort();
    spans
}

/// The examples show the whole path: the producer's send span, the broker's send span as its
/// child, and the consumer's processing span continuing the same trace — in one collector.
#[tokio::test]
async fn the_example_producer_and_consumer_share_one_trace_with_the_broker() {
    let Some(receiver) = OtlpReceiver::start() else {
        return;
    };
    let mut broker = TestBroker::start_with(&otel_env(&receiver.grpc_endpoint, "grpc"));
    let run = |name: &str| {
        let output = std::process::Command::new(example(name))
            .args([&broker.tcp.to_string(), "orders", "events", "3"])
            .env("IGGY_PASSWORD", ROOT_PASSWORD)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .output()
            .expect("example runs");
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let sent = run("traced_producer");
    let consumed = run("traced_consumer");
    let sent_traces: Vec<String> = sent
        .iter()
        .map(|t| t.split('-').nth(1).expect("traceparent").to_string())
        .collect();
    assert_eq!(sent_traces.len(), 3);
    assert_eq!(
        consumed, sent_traces,
        "the consumer continued each producer trace"
    );

    let trace = &sent_traces[0];
    let wanted = [
        format!("Trace ID       : {trace}"),
        "Name           : process orders/events".to_string(),
        "processed message".to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = received_all(&receiver, &wanted);
        let spans = spans_of_trace(&received, trace);
        let expected = [
            ("iggy-broker", "replicate"),
            ("iggy-broker", "send orders/events"),
            ("traced-consumer", "process orders/events"),
            ("traced-producer", "send orders/events"),
        ];
        let found =
            |(service, name): &(&str, &str)| spans.iter().any(|(s, n)| s == service && n == name);
        if expected.iter().filter(|e| e.1 != "replicate").all(found) {
            // A single node has no replication round trip to show.
            assert!(!found(&expected[0]), "{spans:?}");
            break;
        }
        assert!(Instant::now() < deadline, "spans of {trace}: {spans:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(broker.stop(), 0, "clean stop");
}

/// On a replicated broker the send span of a backup has a child: the replication round trip
/// (forwarded to the primary, committed on a quorum, applied here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_send_shows_its_replication_as_a_child_span() {
    let Some(receiver) = OtlpReceiver::start() else {
        return;
    };
    let cluster =
        common::cluster::TestCluster::start(3, &otel_env(&receiver.grpc_endpoint, "grpc"));
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(10));
    let backup = (primary + 1) % 3;
    let client = cluster.brokers[backup].client().await;
    client.create_stream("orders").await.expect("stream");
    create_topic(&client, &name("orders"), "events", 1).await;
    let trace = traced_send(&client, 0x4e91_0001).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = spans_of_trace(&receiver.received(), &trace);
        let has = |name: &str| spans.iter().any(|(s, n)| s == "iggy-broker" && n == name);
        if has("send orders/events") && has("replicate") {
            break;
        }
        assert!(Instant::now() < deadline, "spans of {trace}: {spans:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every series the chart's Grafana dashboard queries is one a replicated broker serves.
#[test]
fn the_dashboard_queries_only_series_the_brokers_serve() {
    // With TLS on the client port, so that its series are served too.
    let pki = common::pki::Pki::new();
    let files = common::pki::served_by(&pki);
    let env = common::pki::tls_env(files.path());
    let cluster = common::cluster::TestCluster::start(3, &common::pki::borrowed(&env));
    let (code, served) = http_get(cluster.brokers[0].http, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    let dashboard = include_str!("../../../charts/iggy-operator/dashboards/iggy-brokers.json");
    let mut queried: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("iggy_"))
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            served.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
}
