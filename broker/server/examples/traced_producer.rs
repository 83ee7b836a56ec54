//! A producer whose sends join one trace with the broker and the consumer: each send runs in a
//! `send <stream>/<topic>` span (kind producer) and every message carries that span's W3C
//! `traceparent` in its user headers. The broker makes its own send span a child of it, and
//! `traced_consumer` makes its processing spans children too — one trace in the collector.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
//! IGGY_PASSWORD=… cargo run -p broker --example traced_producer -- 127.0.0.1:8090 orders events 10
//! ```
//!
//! Arguments: broker address, stream, topic, message count (defaults as above). Creates the
//! stream and topic (one partition) when they are missing. Prints each send's traceparent.

use iggy::prelude::*;
use std::collections::BTreeMap;
use std::str::FromStr;
use tracing::Instrument as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = iggy_telemetry::init("traced-producer")?;
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let stream = args.next().unwrap_or_else(|| "orders".into());
    let topic = args.next().unwrap_or_else(|| "events".into());
    let count: u32 = args.next().map_or(Ok(10), |n| n.parse())?;
    let username = std::env::var("IGGY_USERNAME").unwrap_or_else(|_| "iggy".into());
    let password = std::env::var("IGGY_PASSWORD")?;

    let client = IggyClient::builder()
        .with_tcp()
        .with_server_address(address)
        .build()?;
    client.connect().await?;
    client.login_user(&username, &password).await?;
    let (stream_id, topic_id) = (Identifier::named(&stream)?, Identifier::named(&topic)?);
    if client.get_stream(&stream_id).await?.is_none() {
        client.create_stream(&stream).await?;
    }
    if client.get_topic(&stream_id, &topic_id).await?.is_none() {
        client
            .create_topic(
                &stream_id,
                &topic,
                1,
                CompressionAlgorithm::None,
                None,
                IggyExpiry::ServerDefault,
                MaxTopicSize::ServerDefault,
            )
            .await?;
    }

    for i in 0..count {
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {stream}/{topic}"),
            otel.kind = "producer",
            messaging.system = "iggy",
            messaging.operation.type = "send",
            messaging.destination.name = %format!("{stream}/{topic}"),
        );
        let traceparent = iggy_telemetry::traceparent_of(&span).map(|t| t.format());
        let headers = match &traceparent {
            Some(value) => Some(BTreeMap::from([(
                HeaderKey::from_str(iggy_telemetry::trace_context::TRACEPARENT)?,
                HeaderValue::from_str(value)?,
            )])),
            None => None,
        };
        let message = IggyMessage::builder()
            .payload(format!("order {i}").into())
            .maybe_user_headers(headers)
            .build()?;
        let mut messages = vec![message];
        client
            .send_messages(
                &stream_id,
                &topic_id,
                &Partitioning::balanced(),
                &mut messages,
            )
            .instrument(span)
            .await?;
        println!("{}", traceparent.as_deref().unwrap_or("-"));
    }
    // Flushing blocks until the collector answered or timed out.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}
