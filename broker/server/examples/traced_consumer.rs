//! A consumer that continues the producer's trace: each message's `traceparent` user header
//! (written by `traced_producer`) becomes the parent of a `process <stream>/<topic>` span
//! (kind consumer), inside which the message is handled and logged — so the collector shows
//! producer → broker → consumer as one trace, and the log line in it.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
//! IGGY_PASSWORD=… cargo run -p broker --example traced_consumer -- 127.0.0.1:8090 orders events 10
//! ```
//!
//! Arguments: broker address, stream, topic, how many messages to process before exiting (it
//! gives up after 30 s). Polls partition 0 as consumer 1, committing offsets; prints the trace
//! id each processed message belongs to.

use iggy::prelude::*;
use iggy_telemetry::TraceParent;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The producer's context a message carries, if any.
fn producer_context(message: &IggyMessage) -> Option<TraceParent> {
    let headers = message.user_headers_map().ok()??;
    let key = HeaderKey::from_str(iggy_telemetry::trace_context::TRACEPARENT).ok()?;
    TraceParent::parse(headers.get(&key)?.as_str().ok()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = iggy_telemetry::init("traced-consumer")?;
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let stream = args.next().unwrap_or_else(|| "orders".into());
    let topic = args.next().unwrap_or_else(|| "events".into());
    let wanted: usize = args.next().map_or(Ok(10), |n| n.parse())?;
    let username = std::env::var("IGGY_USERNAME").unwrap_or_else(|_| "iggy".into());
    let password = std::env::var("IGGY_PASSWORD")?;

    let client = IggyClient::builder()
        .with_tcp()
        .with_server_address(address)
        .build()?;
    client.connect().await?;
    client.login_user(&username, &password).await?;
    let (stream_id, topic_id) = (Identifier::named(&stream)?, Identifier::named(&topic)?);
    let consumer = Consumer::new(Identifier::numeric(1)?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut processed = 0;
    while processed < wanted && Instant::now() < deadline {
        let polled = client
            .poll_messages(
                &stream_id,
                &topic_id,
                Some(0),
                &consumer,
                &PollingStrategy::next(),
                100,
                true,
            )
            .await?;
        if polled.messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for message in &polled.messages {
            let span = tracing::info_span!(
                "process",
                otel.name = %format!("process {stream}/{topic}"),
                otel.kind = "consumer",
                messaging.system = "iggy",
                messaging.operation.type = "process",
                messaging.destination.name = %format!("{stream}/{topic}"),
                messaging.message.id = %message.header.id,
            );
            let context = producer_context(message);
            if let Some(parent) = &context {
                iggy_telemetry::set_remote_parent(&span, parent);
            }
            let _entered = span.enter();
            tracing::info!(offset = message.header.offset, "processed message");
            println!("{}", context.map_or("-".into(), |c| hex(&c.trace_id)));
            processed += 1;
        }
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    anyhow::ensure!(
        processed >= wanted,
        "only {processed} of {wanted} messages arrived in 30 s"
    );
    Ok(())
}
