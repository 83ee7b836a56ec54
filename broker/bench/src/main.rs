//! `iggy-load`: a load generator for any server speaking the Iggy classic binary protocol.
//!
//! Creates a fresh stream and topic, then runs producers (each its own connection, sending
//! pre-built batches round-robin over the partitions) and then consumers (each polling its share
//! of partitions by offset until it has read everything). Reports throughput in MB/s and
//! messages/s, and per-request latency percentiles. Speaks the protocol through `iggy-wire`
//! directly so the client costs as little CPU as possible on a 2-core machine.

mod args;
mod connection;
mod report;

use anyhow::{bail, Context, Result};
use args::Args;
use connection::Connection;
use iggy_wire::message::SendMessagesHeader;
use iggy_wire::request::{encode, PartitionRef};
use iggy_wire::{Command, Consumer, ConsumerKind, Identifier, Partitioning, PollingStrategy};
use report::{Phase, Samples};
use std::time::{Duration, Instant};

/// The most partitions one CreateTopic or CreatePartitions request may ask for.
const PARTITIONS_PER_REQUEST: u32 = 1000;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    let stream_name = format!("bench-{}", std::process::id());
    let mut admin = Connection::login(&args).await?;
    admin
        .ok(Command::CreateStream, &encode::name(&stream_name))
        .await?;
    let stream = Identifier::Named(stream_name.clone());
    // A request creates at most 1000 partitions (as in Iggy); more are added 1000 at a time.
    let first = args.partitions.min(PARTITIONS_PER_REQUEST);
    admin
        .ok(
            Command::CreateTopic,
            &encode::create_topic(&stream, first, "load"),
        )
        .await?;
    let topic = Identifier::Named("load".into());
    let mut created = first;
    while created < args.partitions {
        let more = (args.partitions - created).min(PARTITIONS_PER_REQUEST);
        admin
            .ok(
                Command::CreatePartitions,
                &encode::create_partitions(&stream, &topic, more),
            )
            .await?;
        created += more;
    }

    if args.tail {
        // Producers start once every consumer is connected and waiting at the end.
        let consumers = args.consumers.min(args.partitions as usize).max(1);
        let gate = std::sync::Arc::new(tokio::sync::Barrier::new(consumers + 1));
        let (produce, consume) = tokio::join!(
            async {
                gate.wait().await;
                run_producers(&args, &stream).await
            },
            run_consumers(&args, &stream, Some(gate.clone()))
        );
        produce?.print("produce", &args)?;
        consume?.print("consume-tail", &args)?;
    } else {
        let produce = run_producers(&args, &stream).await?;
        produce.print("produce", &args)?;
        tokio::time::sleep(args.consume_after).await;
    }
    if args.tail {
        // Consumed alongside the producers.
    } else if args.consume && args.group {
        admin
            .ok(Command::CreateConsumerGroup, &{
                let mut p = Vec::new();
                stream.encode(&mut p);
                Identifier::Named("load".into()).encode(&mut p);
                p.extend_from_slice(&encode::name("load"));
                p
            })
            .await?;
        let consume = run_group_consumers(&args, &stream).await?;
        consume.print("consume-group", &args)?;
    } else if args.consume {
        let consume = run_consumers(&args, &stream, None).await?;
        consume.print(
            if args.commit {
                "consume-commit"
            } else {
                "consume"
            },
            &args,
        )?;
    }
    if !args.keep {
        admin
            .ok(Command::DeleteStream, &{
                let mut p = Vec::new();
                stream.encode(&mut p);
                p
            })
            .await?;
    }
    Ok(())
}

/// A user-header block holding one `traceparent`, laid out as Iggy's SDKs write it (key kind,
/// key length, key, value kind, value length, value; kind 2 = string).
fn traceparent_header() -> Vec<u8> {
    let mut block = Vec::new();
    for text in [
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        block.push(2);
        block.extend_from_slice(&(text.len() as u32).to_le_bytes());
        block.extend_from_slice(text.as_bytes());
    }
    block
}

/// One request per batch: the same pre-encoded batch for a partition every time (the server
/// assigns offsets, timestamps, ids and checksums, so identical requests are fine).
async fn run_producers(args: &Args, stream: &Identifier) -> Result<Phase> {
    let payload = vec![0xA5u8; args.message_size];
    let headers = if args.traceparent {
        traceparent_header()
    } else {
        Vec::new()
    };
    let messages: Vec<(u128, &[u8], &[u8])> = (0..args.batch_size)
        .map(|_| (0u128, payload.as_slice(), headers.as_slice()))
        .collect();
    let requests: Vec<Vec<u8>> = (0..args.partitions)
        .map(|p| {
            let mut out = Vec::new();
            SendMessagesHeader::encode_request(
                stream,
                &Identifier::Named("load".into()),
                &Partitioning::PartitionId(p),
                &messages,
                &mut out,
            );
            out
        })
        .collect();
    let ids = args.ids.then(|| IdSlots::of(&requests[0], args.batch_size));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..args.producers {
        let args = args.clone();
        // Each producer writes its ids into its own copy of the requests.
        let mut requests = requests.clone();
        let ids = ids.clone();
        let batches = share(args.batches, args.producers, producer);
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::login(&args).await?;
            let mut samples = Samples::with_capacity(batches);
            for i in 0..batches {
                let partition = (producer + i) % requests.len();
                if let Some(slots) = &ids {
                    let first = ((producer as u128) << 64) | (i * args.batch_size + 1) as u128;
                    slots.stamp(&mut requests[partition], first);
                }
                let sent = Instant::now();
                connection
                    .ok(Command::SendMessages, &requests[partition])
                    .await?;
                samples.push(sent.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    collect(tasks, started, args.batches * args.batch_size).await
}

/// Where the message ids sit in a pre-encoded SendMessages request: its frames all have the
/// same length, so the id of message `k` is at `first + k * stride`.
#[derive(Clone)]
struct IdSlots {
    first: usize,
    stride: usize,
    count: usize,
}

impl IdSlots {
    fn of(request: &[u8], count: usize) -> Self {
        let header = SendMessagesHeader::decode(request).expect("the load's own request");
        let frames = request.len() - header.messages_start;
        Self {
            first: header.messages_start + 8,
            stride: frames / count.max(1),
            count,
        }
    }

    /// Gives the messages ids `first`, `first + 1`, ...
    fn stamp(&self, request: &mut [u8], first: u128) {
        for k in 0..self.count {
            let at = self.first + k * self.stride;
            request[at..at + 16].copy_from_slice(&(first + k as u128).to_le_bytes());
        }
    }
}

/// `gate`: tail mode, passed once each consumer is connected.
async fn run_consumers(
    args: &Args,
    stream: &Identifier,
    gate: Option<std::sync::Arc<tokio::sync::Barrier>>,
) -> Result<Phase> {
    let per_partition = per_partition_counts(args);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let consumers = args.consumers.min(args.partitions as usize).max(1);
    for consumer in 0..consumers {
        let args = args.clone();
        let stream = stream.clone();
        let mine: Vec<(u32, u64)> = (0..args.partitions)
            .filter(|p| *p as usize % consumers == consumer)
            .map(|p| (p, per_partition[p as usize]))
            .collect();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::login(&args).await?;
            if let Some(gate) = gate {
                gate.wait().await;
            }
            let mut samples = Samples::with_capacity(1024);
            for (partition, expected) in mine {
                let target = PartitionRef {
                    consumer: Consumer {
                        kind: ConsumerKind::Consumer,
                        id: Identifier::Numeric(1),
                    },
                    stream: stream.clone(),
                    topic: Identifier::Named("load".into()),
                    partition: Some(partition),
                };
                let mut offset = 0u64;
                while offset < expected {
                    let strategy = if args.commit {
                        PollingStrategy::Next
                    } else {
                        PollingStrategy::Offset(offset)
                    };
                    let request = encode::poll_messages(
                        &target,
                        strategy,
                        args.batch_size as u32,
                        args.commit,
                    );
                    let sent = Instant::now();
                    let response = connection.ok(Command::PollMessages, &request).await?;
                    let elapsed = sent.elapsed();
                    if response.len() < 16 {
                        bail!("poll response of {} bytes", response.len());
                    }
                    let count = u32::from_le_bytes(response[12..16].try_into()?) as u64;
                    if count > 0 {
                        samples.push(elapsed);
                    }
                    if count == 0 && args.tail {
                        // Caught up with the producers: ask again shortly.
                        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                    } else if count == 0 {
                        bail!("partition {partition} ended at {offset}, expected {expected}");
                    }
                    offset += count;
                }
            }
            anyhow::Ok(samples)
        }));
    }
    collect(tasks, started, args.batches * args.batch_size).await
}

/// Members of one consumer group: each joins, then polls without naming a partition (the
/// server rotates over the member's share) with Next and auto-commit, until every message of
/// the run has been consumed by someone.
async fn run_group_consumers(args: &Args, stream: &Identifier) -> Result<Phase> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let total = (args.batches * args.batch_size) as u64;
    let consumed = std::sync::Arc::new(AtomicU64::new(0));
    let group = {
        let mut p = Vec::new();
        stream.encode(&mut p);
        Identifier::Named("load".into()).encode(&mut p);
        Identifier::Named("load".into()).encode(&mut p);
        p
    };
    // Everyone joins before anyone polls, so the assignment is settled during the run.
    let mut connections = Vec::new();
    for _ in 0..args.consumers {
        let mut connection = Connection::login(args).await?;
        connection.ok(Command::JoinConsumerGroup, &group).await?;
        connections.push(connection);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in connections {
        let args = args.clone();
        let consumed = consumed.clone();
        let target = PartitionRef {
            consumer: Consumer {
                kind: ConsumerKind::Group,
                id: Identifier::Named("load".into()),
            },
            stream: stream.clone(),
            topic: Identifier::Named("load".into()),
            partition: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(1024);
            let request =
                encode::poll_messages(&target, PollingStrategy::Next, args.batch_size as u32, true);
            let mut empty_in_a_row = 0;
            while consumed.load(Ordering::Relaxed) < total && empty_in_a_row < args.partitions {
                let sent = Instant::now();
                let response = connection.ok(Command::PollMessages, &request).await?;
                samples.push(sent.elapsed());
                let count = u32::from_le_bytes(response[12..16].try_into()?) as u64;
                if count == 0 {
                    empty_in_a_row += 1;
                } else {
                    empty_in_a_row = 0;
                    consumed.fetch_add(count, Ordering::Relaxed);
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let phase = collect(tasks, started, total as usize).await?;
    let got = consumed.load(Ordering::Relaxed);
    if got != total {
        bail!("the group consumed {got} of {total} messages");
    }
    Ok(phase)
}

/// Messages each partition received, from the producers' round-robin.
fn per_partition_counts(args: &Args) -> Vec<u64> {
    let mut counts = vec![0u64; args.partitions as usize];
    for producer in 0..args.producers {
        for i in 0..share(args.batches, args.producers, producer) {
            counts[(producer + i) % args.partitions as usize] += args.batch_size as u64;
        }
    }
    counts
}

/// Splits `total` as evenly as possible over `parts`.
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Samples>>>,
    started: Instant,
    messages: usize,
) -> Result<Phase> {
    let mut all = Samples::with_capacity(1024);
    for task in tasks {
        all.extend(task.await.context("worker panicked")??);
    }
    Ok(Phase {
        elapsed: started.elapsed().max(Duration::from_nanos(1)),
        messages,
        samples: all,
    })
}
