//! The broker's telemetry: a span for every request, following the OpenTelemetry messaging
//! semantic conventions, joined to the producer's trace through the messages' `traceparent`
//! headers; and the `/metrics` series exported over OTLP (`otlp_metrics`).
//!
//! Request spans have the target [`iggy_telemetry::EXPORTED_SPANS`], which only a trace
//! exporter enables: without one `request_span` returns a disabled span and everything below
//! returns at its first check, so a broker that exports nothing pays nothing.

pub mod headers;
#[cfg(feature = "otlp")]
pub mod otlp_metrics;

use crate::error::BrokerError;
use crate::net::session::Session;
use iggy_telemetry::{TraceParent, EXPORTED_SPANS};
use iggy_wire::message::{FrameIter, SendMessagesHeader};
use iggy_wire::{Command, ConsumerKind, Identifier, Partitioning, Request};
use tracing::field::Empty;
use tracing::Span;

/// Most producer contexts one span links to (the OpenTelemetry SDK's default link limit).
const MAX_LINKS: usize = 128;

/// The span of one request, before it runs.
pub fn request_span(command: Command, session: &Session, request_bytes: u64) -> Span {
    tracing::span!(
        target: EXPORTED_SPANS,
        tracing::Level::INFO,
        "request",
        otel.name = command.name(),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_message = Empty,
        messaging.system = "iggy",
        messaging.operation.name = Empty,
        messaging.operation.type = Empty,
        messaging.destination.name = Empty,
        messaging.destination.partition.id = Empty,
        messaging.batch.message_count = Empty,
        messaging.consumer.group.name = Empty,
        iggy.command = command.name(),
        iggy.client_id = i64::from(session.client_id),
        iggy.user_id = Empty,
        iggy.request.bytes = request_bytes as i64,
        iggy.response.bytes = Empty,
        iggy.outcome = Empty,
        error.type = Empty,
        network.peer.address = session.address.as_str(),
    )
}

/// An identifier as a destination names it: the name, or the number.
fn plain(id: &Identifier) -> String {
    match id {
        Identifier::Numeric(n) => n.to_string(),
        Identifier::Named(name) => name.clone(),
    }
}

/// Names the span `<operation> <stream>/<topic>`, as the conventions ask.
fn record_destination(span: &Span, operation: &str, kind: &str, stream: &str, topic: &str) {
    let destination = format!("{stream}/{topic}");
    span.record("otel.name", format!("{operation} {destination}"));
    span.record("messaging.operation.name", operation);
    span.record("messaging.operation.type", kind);
    span.record("messaging.destination.name", destination);
}

/// Before a request runs (the span's name and parent can change only until it is first
/// entered): a send's or a poll's destination, and a send's size and producers' trace contexts.
/// One context shared by the batch (a producer's send) becomes the span's parent; several
/// become links, since one span cannot have many parents.
pub fn describe_request(span: &Span, command: Command, payload: &[u8]) {
    if span.is_disabled() {
        return;
    }
    match command {
        Command::SendMessages => describe_send(span, payload),
        Command::PollMessages => {
            if let Ok(Ok(Request::PollMessages { target, .. })) = Request::decode(command, payload)
            {
                let (stream, topic) = (plain(&target.stream), plain(&target.topic));
                record_destination(span, "poll", "receive", &stream, &topic);
                if target.consumer.kind == ConsumerKind::Group {
                    span.record("messaging.consumer.group.name", plain(&target.consumer.id));
                }
            }
        }
        _ => {}
    }
}

fn describe_send(span: &Span, payload: &[u8]) {
    let Ok(header) = SendMessagesHeader::decode(payload) else {
        return;
    };
    let (stream, topic) = (plain(&header.stream), plain(&header.topic));
    record_destination(span, "send", "send", &stream, &topic);
    span.record("messaging.batch.message_count", i64::from(header.count));
    if let Partitioning::PartitionId(id) = header.partitioning {
        span.record("messaging.destination.partition.id", i64::from(id));
    }
    let frames = payload.get(header.messages_start..).unwrap_or_default();
    let contexts = distinct_contexts(frames);
    match contexts.as_slice() {
        [] => {}
        [only] => iggy_telemetry::set_remote_parent(span, only),
        many => {
            for context in many {
                iggy_telemetry::link_remote(span, context);
            }
        }
    }
}

/// After a poll read its messages (`frames`, back to back): the partition and count, and a link
/// to the producer's context of each message that carries one.
pub fn record_poll(partition: u32, count: u32, frames: &[u8]) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("messaging.destination.partition.id", i64::from(partition));
    span.record("messaging.batch.message_count", i64::from(count));
    for context in distinct_contexts(frames) {
        iggy_telemetry::link_remote(&span, &context);
    }
}

/// After the request ran: its outcome, the response size, and who the user is by now.
pub fn record_outcome(
    span: &Span,
    session: &Session,
    result: &Result<(), BrokerError>,
    response_bytes: usize,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(user) = session.user_id {
        span.record("iggy.user_id", i64::from(user));
    }
    span.record("iggy.response.bytes", response_bytes as i64);
    match result {
        Ok(()) => {
            span.record("iggy.outcome", "ok");
        }
        Err(error) => {
            span.record("iggy.outcome", "error");
            span.record("otel.status_code", "error");
            span.record("otel.status_message", error.to_string());
            span.record("error.type", i64::from(error.code().0));
        }
    }
}

/// The distinct trace contexts of the frames, in order of first appearance, at most
/// [`MAX_LINKS`]. Stops at the first incomplete frame (a malformed batch is refused later).
fn distinct_contexts(frames: &[u8]) -> Vec<TraceParent> {
    let mut contexts: Vec<TraceParent> = Vec::new();
    // Consecutive messages of one producer send carry the same bytes: parse each run once.
    let mut previous: Option<&[u8]> = None;
    for frame in FrameIter::new(frames) {
        let Ok(frame) = frame else { break };
        let Some(value) = headers::traceparent_value(frame) else {
            continue;
        };
        if previous == Some(value) {
            continue;
        }
        previous = Some(value);
        if let Some(context) = headers::parse(value) {
            if !contexts.contains(&context) {
                contexts.push(context);
                if contexts.len() == MAX_LINKS {
                    break;
                }
            }
        }
    }
    contexts
}
