//! State sync of the broker's data: how a replica that fell behind every peer's log reaches a
//! peer's checkpoint.
//!
//! A checkpoint carries no data, only a manifest (`machine::Manifest`): the metadata, each
//! partition's next offset and last message checksum, the stored offsets. Partitions are
//! append-only, so what a lagging replica lacks of a partition is a range of messages after
//! its own end, and that range is immutable on the peer (messages are never rewritten; only
//! whole old segments are deleted by retention). Sync therefore:
//!
//! 1. installs the manifest's metadata (new partitions empty, dropped ones removed);
//! 2. per partition, fetches the messages from its own end to the checkpoint's, in chunks of
//!    at most [`CHUNK_BYTES`], each checked message by message (checksums, offsets) before it
//!    is written, and continuity-checked: the peer also sends the checksum of the message
//!    before the chunk, and a partition whose history differs (deleted and re-created since)
//!    is emptied and fetched from the start;
//! 3. hands the checkpoint to the core, whose restore (`BrokerMachine::restore`) cuts any
//!    excess, sets the stored offsets and the digest.
//!
//! A fetch runs on its own connection to the peer's replication port and is answered on it.
//! Interrupted, it resumes where the data stands: step 2 starts from each partition's end.

use crate::broker::Broker;
use crate::replication::machine::Manifest;
use crate::replication::transport::{encode_frame, FETCH, FETCHED};
use crate::storage::metadata;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Most message bytes one fetch answers with.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Ask for the messages of one partition from offset `from` up to (not including) `until`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetch {
    pub stream: u32,
    pub topic: u32,
    pub partition: u32,
    pub from: u64,
    pub until: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Fetched {
    Chunk {
        /// Checksum of the message at `from - 1` (`None` for `from` 0).
        previous: Option<u64>,
        /// Whole message frames from `from` on, as stored.
        #[serde(with = "serde_bytes")]
        frames: Vec<u8>,
    },
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot reach {peer} for state sync: {source}")]
    Connect {
        peer: String,
        source: std::io::Error,
    },
    #[error("state sync with {peer} failed: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    #[error("state sync with {peer}: {reason}")]
    Refused { peer: String, reason: String },
    #[error("state sync: {0}")]
    Local(String),
    #[error("state sync ran out of time after {0:?}")]
    Timeout(Duration),
}

/// Answers a fetch from this broker's data.
pub fn serve(broker: &Broker, request: &Fetch) -> Fetched {
    let refused = |reason: String| Fetched::Refused(reason);
    let Some(partition) =
        broker
            .catalog()
            .partition_by_ids(request.stream, request.topic, request.partition)
    else {
        return refused(format!(
            "no partition {}/{}/{}",
            request.stream, request.topic, request.partition
        ));
    };
    let log = partition.log();
    if request.until > log.next_offset() || request.from > request.until {
        return refused(format!(
            "partition holds offsets up to {}, asked for {}..{}",
            log.next_offset(),
            request.from,
            request.until
        ));
    }
    if request.from < log.first_offset().unwrap_or(0) {
        return refused(format!(
            "offsets before {} were deleted by retention",
            log.first_offset().unwrap_or(0)
        ));
    }
    if request.from < log.local_start() {
        return refused(format!(
            "offsets before {} are only in the object store (tiered); state sync of tiered \
             segments is not supported yet",
            log.local_start()
        ));
    }
    let previous = match request.from.checked_sub(1) {
        None => None,
        Some(offset) => match log.checksum_of(offset) {
            Ok(checksum) => checksum,
            Err(e) => return refused(e.to_string()),
        },
    };
    let count = (request.until - request.from).min(u64::from(u32::MAX)) as u32;
    let plan = log.plan_read(request.from, count, CHUNK_BYTES);
    drop(log);
    let mut frames = Vec::with_capacity(plan.bytes);
    if let Err(e) = plan.read_into(&mut frames) {
        return refused(e.to_string());
    }
    Fetched::Chunk { previous, frames }
}

/// Brings this broker's data to `manifest`'s by fetching what it lacks from `peer` (its
/// replication address). Blocking; gives up at `deadline`.
pub fn install(
    broker: &Broker,
    manifest: &Manifest,
    peer: &str,
    deadline: Instant,
) -> Result<u64, SyncError> {
    let snapshot: metadata::Snapshot = serde_json::from_slice(&manifest.metadata)
        .map_err(|e| SyncError::Local(format!("checkpoint metadata does not decode: {e}")))?;
    broker
        .install_metadata(&snapshot)
        .map_err(|e| SyncError::Local(e.to_string()))?;
    let mut connection = Connection::open(peer, deadline)?;
    let mut fetched = 0;
    for &(stream, topic, id, until, _) in &manifest.partitions {
        let partition = broker
            .catalog()
            .partition_by_ids(stream, topic, id)
            .ok_or_else(|| SyncError::Local(format!("partition {stream}/{topic}/{id} missing")))?;
        loop {
            let from = partition.log().next_offset();
            if from >= until {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SyncError::Timeout(CHUNK_TIMEOUT));
            }
            let request = Fetch {
                stream,
                topic,
                partition: id,
                from,
                until,
            };
            match connection.fetch(&request)? {
                Fetched::Refused(reason) => {
                    return Err(SyncError::Refused {
                        peer: peer.to_owned(),
                        reason,
                    })
                }
                Fetched::Chunk { previous, frames } => {
                    let mut log = partition.log();
                    let ours = match from.checked_sub(1) {
                        None => None,
                        Some(offset) => log
                            .checksum_of(offset)
                            .map_err(|e| SyncError::Local(e.to_string()))?,
                    };
                    if previous != ours {
                        // Another history (the partition was re-created since): start over.
                        log.purge().map_err(|e| SyncError::Local(e.to_string()))?;
                        continue;
                    }
                    if frames.is_empty() {
                        return Err(SyncError::Refused {
                            peer: peer.to_owned(),
                            reason: format!("no messages at offset {from}"),
                        });
                    }
                    fetched += log
                        .append_stamped(&frames)
                        .map_err(|e| SyncError::Local(e.to_string()))?;
                }
            }
        }
    }
    Ok(fetched)
}

/// How long one fetch may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

struct Connection {
    stream: TcpStream,
    peer: String,
}

impl Connection {
    fn open(peer: &str, deadline: Instant) -> Result<Self, SyncError> {
        let connect_error = |source| SyncError::Connect {
            peer: peer.to_owned(),
            source,
        };
        let address =
            std::net::ToSocketAddrs::to_socket_addrs(&iggy_contract::hosts::resolve(peer))
                .map_err(connect_error)?
                .next()
                .ok_or_else(|| {
                    connect_error(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no address",
                    ))
                })?;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let stream = TcpStream::connect_timeout(&address, wait).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(CHUNK_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CHUNK_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(connect_error)?;
        Ok(Self {
            stream,
            peer: peer.to_owned(),
        })
    }

    fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
        let io = |source| SyncError::Io {
            peer: self.peer.clone(),
            source,
        };
        let frame = encode_frame(FETCH, request)
            .map_err(|e| SyncError::Local(format!("cannot encode a fetch: {e}")))?;
        self.stream.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > CHUNK_BYTES * 2 + 4096 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("answer of {len} bytes"),
            )));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(io)?;
        if body[0] != FETCHED {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("answer of kind {}", body[0]),
            )));
        }
        postcard::from_bytes(&body[1..]).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ))
        })
    }
}
