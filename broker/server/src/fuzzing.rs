//! The fuzzing harness, shared by the cargo-fuzz target (`broker/server/fuzz`) and the
//! regression test that replays every input the fuzzer ever found (`tests/fuzz_regressions.rs`).
//!
//! It runs a real broker on a scratch directory and feeds it byte streams exactly as a TCP
//! connection would, through the same `handle_request` the listener uses: framing, decoding,
//! permissions, dispatch and storage all run. After every request it checks the response frame
//! is well formed; anything else wrong surfaces as a panic, which is what the fuzzer looks for.

use crate::broker::Broker;
use crate::config::Config;
use crate::net::session::Session;
use crate::net::tcp::handle_request;
use crate::state::catalog::ROOT_USER_ID;
use iggy_wire::frame::HEADER_SIZE;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

pub struct Harness {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    dir: PathBuf,
}

impl Harness {
    /// A broker in a fresh directory under the system temp dir, with small segments so rollover
    /// and retention paths are reachable with small inputs.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "iggy-fuzz-{}-{}",
            std::process::id(),
            crate::storage::fsutil::now_micros()
        ));
        let env = [
            ("IGGY_SYSTEM_PATH", dir.display().to_string()),
            ("IGGY_ROOT_PASSWORD", "fuzz-root".to_owned()),
            ("IGGY_STORAGE_SEGMENT_SIZE", "4096".to_owned()),
            ("IGGY_TCP_MAX_SEND_BYTES", "1 MiB".to_owned()),
        ];
        let config = Config::load(None, env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .expect("harness configuration is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (broker, _) = Broker::open(config).expect("open scratch broker");
        Self {
            runtime,
            broker,
            dir,
        }
    }

    /// Feeds `stream` as one connection's bytes, logged in as root when `as_root`, and returns
    /// how many requests were answered. Panics if a response frame is malformed.
    pub fn run(&self, stream: &[u8], as_root: bool) -> usize {
        let client_id = self.broker.next_client_id();
        self.broker.clients.register(client_id, "fuzz".into());
        let mut session = Session::new(client_id, "fuzz".into());
        if as_root {
            session.user_id = Some(ROOT_USER_ID);
        }
        let answered = self.runtime.block_on(async {
            let mut reader = tokio::io::BufReader::new(stream);
            let mut payload = Vec::new();
            let mut out = Vec::new();
            let mut answered = 0;
            loop {
                let mut header = [0u8; HEADER_SIZE];
                if reader.read_exact(&mut header).await.is_err() {
                    return answered;
                }
                match handle_request(
                    &self.broker,
                    &mut session,
                    &mut reader,
                    header,
                    &mut payload,
                    &mut out,
                )
                .await
                {
                    Ok(handled) => {
                        check_response(&out);
                        answered += 1;
                        if handled.close {
                            return answered;
                        }
                    }
                    Err(_) => return answered,
                }
            }
        });
        self.runtime.block_on(self.broker.disconnect(client_id));
        answered
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response is a header whose length matches what follows, and an error carries nothing.
fn check_response(out: &[u8]) {
    assert!(out.len() >= HEADER_SIZE, "response shorter than its header");
    let status = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    let len = u32::from_le_bytes([out[4], out[5], out[6], out[7]]) as usize;
    assert_eq!(
        len,
        out.len() - HEADER_SIZE,
        "response length field disagrees with its payload"
    );
    if status != 0 {
        assert_eq!(
            len, 0,
            "an error response carries a payload (status {status})"
        );
    }
}

/// Structure-aware fuzz input: a sequence of requests, mostly well-formed so the fuzzer gets
/// deep into storage and groups, with raw frames, corrupted batches and torn tails mixed in.
#[derive(arbitrary::Arbitrary, Debug)]
pub enum Op {
    Raw {
        code: u32,
        payload: Vec<u8>,
    },
    Known {
        command: u8,
        payload: Vec<u8>,
    },
    CreateStream {
        name: String,
    },
    CreateTopic {
        stream: u8,
        partitions: u8,
        name: String,
        expiry: u64,
        max_size: u64,
    },
    Send {
        stream: u8,
        topic: u8,
        partitioning: u8,
        key: Vec<u8>,
        messages: Vec<(u128, Vec<u8>, Vec<u8>)>,
        flip: Option<(u16, u8)>,
    },
    Poll {
        group: bool,
        consumer: u8,
        stream: u8,
        topic: u8,
        partition: Option<u8>,
        strategy: u8,
        value: u64,
        count: u16,
        auto_commit: bool,
    },
    StoreOffset {
        group: bool,
        consumer: u8,
        stream: u8,
        topic: u8,
        partition: Option<u8>,
        offset: u64,
    },
    StreamOp {
        command: u8,
        stream: u8,
    },
    TopicOp {
        command: u8,
        stream: u8,
        topic: u8,
        count: u8,
    },
    GroupOp {
        command: u8,
        stream: u8,
        topic: u8,
        group: u8,
        name: String,
    },
    /// Ends the stream partway through the last frame written so far.
    Tear {
        cut: u16,
    },
}

fn ident(n: u8) -> iggy_wire::Identifier {
    iggy_wire::Identifier::Numeric(u32::from(n % 4))
}

fn frame(code: u32, payload: &[u8], out: &mut Vec<u8>) {
    iggy_wire::frame::RequestHeader::encode(code, payload.len(), out);
    out.extend_from_slice(payload);
}

fn name_payload(name: &str) -> Vec<u8> {
    let name: String = name.chars().take(60).collect();
    iggy_wire::request::encode::name(if name.is_empty() { "n" } else { &name })
}

/// Encodes the ops as one connection's byte stream.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    use iggy_wire::primitives::encode_optional_partition;
    use iggy_wire::request::{encode, PartitionRef};
    use iggy_wire::{Command, Consumer, ConsumerKind, Partitioning, PollingStrategy};
    let mut out = Vec::new();
    let consumer = |group: bool, n: u8| Consumer {
        kind: if group {
            ConsumerKind::Group
        } else {
            ConsumerKind::Consumer
        },
        id: iggy_wire::Identifier::Numeric(u32::from(n % 3)),
    };
    for op in ops {
        match op {
            Op::Raw { code, payload } => frame(*code, payload, &mut out),
            Op::Known { command, payload } => {
                let command = Command::ALL[*command as usize % Command::ALL.len()];
                frame(command.code(), payload, &mut out);
            }
            Op::CreateStream { name } => {
                frame(Command::CreateStream.code(), &name_payload(name), &mut out)
            }
            Op::CreateTopic {
                stream,
                partitions,
                name,
                expiry,
                max_size,
            } => {
                let mut p = Vec::new();
                ident(*stream).encode(&mut p);
                p.extend_from_slice(&u32::from(partitions % 8).to_le_bytes());
                p.push(1);
                p.extend_from_slice(&expiry.to_le_bytes());
                p.extend_from_slice(&max_size.to_le_bytes());
                p.push(1);
                p.extend_from_slice(&name_payload(name));
                frame(Command::CreateTopic.code(), &p, &mut out);
            }
            Op::Send {
                stream,
                topic,
                partitioning,
                key,
                messages,
                flip,
            } => {
                let partitioning = match partitioning % 3 {
                    0 => Partitioning::Balanced,
                    1 => Partitioning::PartitionId(u32::from(*partitioning / 3 % 8)),
                    _ => Partitioning::MessagesKey(if key.is_empty() {
                        vec![0]
                    } else {
                        key.iter().take(255).copied().collect()
                    }),
                };
                let messages: Vec<(u128, &[u8], &[u8])> = messages
                    .iter()
                    .take(64)
                    .map(|(id, payload, headers)| (*id, payload.as_slice(), headers.as_slice()))
                    .collect();
                if messages.is_empty() {
                    continue;
                }
                let mut p = Vec::new();
                iggy_wire::message::SendMessagesHeader::encode_request(
                    &ident(*stream),
                    &ident(*topic),
                    &partitioning,
                    &messages,
                    &mut p,
                );
                if let Some((at, xor)) = flip {
                    let at = *at as usize % p.len();
                    p[at] ^= xor;
                }
                frame(Command::SendMessages.code(), &p, &mut out);
            }
            Op::Poll {
                group,
                consumer: c,
                stream,
                topic,
                partition,
                strategy,
                value,
                count,
                auto_commit,
            } => {
                let target = PartitionRef {
                    consumer: consumer(*group, *c),
                    stream: ident(*stream),
                    topic: ident(*topic),
                    partition: partition.map(|p| u32::from(p % 8)),
                };
                let strategy = match strategy % 5 {
                    0 => PollingStrategy::Offset(*value),
                    1 => PollingStrategy::Timestamp(*value),
                    2 => PollingStrategy::First,
                    3 => PollingStrategy::Last,
                    _ => PollingStrategy::Next,
                };
                let p = encode::poll_messages(&target, strategy, u32::from(*count), *auto_commit);
                frame(Command::PollMessages.code(), &p, &mut out);
            }
            Op::StoreOffset {
                group,
                consumer: c,
                stream,
                topic,
                partition,
                offset,
            } => {
                let mut p = Vec::new();
                consumer(*group, *c).encode(&mut p);
                ident(*stream).encode(&mut p);
                ident(*topic).encode(&mut p);
                encode_optional_partition(partition.map(|p| u32::from(p % 8)), &mut p);
                p.extend_from_slice(&offset.to_le_bytes());
                frame(Command::StoreConsumerOffset.code(), &p, &mut out);
            }
            Op::StreamOp { command, stream } => {
                let command = [
                    Command::GetStream,
                    Command::DeleteStream,
                    Command::PurgeStream,
                ][*command as usize % 3];
                let mut p = Vec::new();
                ident(*stream).encode(&mut p);
                frame(command.code(), &p, &mut out);
            }
            Op::TopicOp {
                command,
                stream,
                topic,
                count,
            } => {
                let command = [
                    Command::GetTopic,
                    Command::DeleteTopic,
                    Command::PurgeTopic,
                    Command::CreatePartitions,
                    Command::DeletePartitions,
                    Command::DeleteSegments,
                ][*command as usize % 6];
                let mut p = Vec::new();
                ident(*stream).encode(&mut p);
                ident(*topic).encode(&mut p);
                match command {
                    Command::CreatePartitions | Command::DeletePartitions => {
                        p.extend_from_slice(&u32::from(count % 4).to_le_bytes())
                    }
                    Command::DeleteSegments => {
                        p.extend_from_slice(&u32::from(count % 8).to_le_bytes());
                        p.extend_from_slice(&u32::from(count / 8).to_le_bytes());
                    }
                    _ => {}
                }
                frame(command.code(), &p, &mut out);
            }
            Op::GroupOp {
                command,
                stream,
                topic,
                group,
                name,
            } => {
                let command = [
                    Command::CreateConsumerGroup,
                    Command::JoinConsumerGroup,
                    Command::LeaveConsumerGroup,
                    Command::GetConsumerGroup,
                    Command::DeleteConsumerGroup,
                ][*command as usize % 5];
                let mut p = Vec::new();
                ident(*stream).encode(&mut p);
                ident(*topic).encode(&mut p);
                if command == Command::CreateConsumerGroup {
                    p.extend_from_slice(&name_payload(name));
                } else {
                    iggy_wire::Identifier::Numeric(u32::from(group % 3)).encode(&mut p);
                }
                frame(command.code(), &p, &mut out);
            }
            Op::Tear { cut } => {
                let keep = out.len().saturating_sub(*cut as usize % 64 + 1);
                out.truncate(keep);
                return out;
            }
        }
    }
    out
}

/// Decodes fuzzer bytes into ops, encodes them and runs them; used by the fuzz target and by
/// the regression test. Inputs that do not decode into ops are ignored.
pub fn replay(harness: &Harness, data: &[u8]) {
    let mut input = arbitrary::Unstructured::new(data);
    let Ok(ops) = <Vec<Op> as arbitrary::Arbitrary>::arbitrary(&mut input) else {
        return;
    };
    let stream = encode_ops(&ops);
    harness.run(&stream, true);
    // The raw bytes also go through unauthenticated, as a stranger's connection would.
    harness.run(data, false);
}
