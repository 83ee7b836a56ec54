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
    client
        .send_messages(
            &name("orders"),
            &name("events"),
            &Partitioning::partition_id(0),
            &mut batch,
        )
        .await
        .expect("send");
    // A batch of two producers' messages → two links.
    let (other, other_trace, _) = producer_context(0x1111_2222_3333_4444_5555_6666_7777_8888, 0x99);
    let mut mixed = vec![traced_message("a", &parent), traced_message("b", &other)];
    client
        .send_messages(
            &name("orders"),
            &name("events"),
            &Partitioning::partition_id(0),
            &mut mixed,
        )
        .await
        .expect("send");
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
