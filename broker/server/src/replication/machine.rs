//! The broker as the replication core's state machine: a committed prepare's body is a
//! submission (`ops::codec`), applied by the same deterministic `apply` a single node runs, with
//! the context the primary decided — its timestamp, and the prepare's checksum as the entropy
//! for generated message ids — so every replica writes the same bytes.
//!
//! The reply the core caches for a client's session (and the driver hands to the waiting
//! connection) is `status u32` followed by the Iggy reply payload.
//!
//! The digest is a running hash of everything applied (op, body checksum, reply): equal on
//! replicas that applied the same ops with the same results, which is what the core and the
//! checkers compare. Hashing the whole broker state per op would cost more than the op.

use crate::apply::apply;
use crate::broker::Broker;
use crate::ops::codec;
use crate::ops::OpContext;
use crate::state::catalog::Catalog;
use iggy_wire::ErrorCode;
use std::sync::Arc;
use vsr::{PrepareHeader, RestoreError, StateMachine};

pub struct BrokerMachine {
    broker: Arc<Broker>,
    digest: u128,
}

impl BrokerMachine {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker, digest: 0 }
    }
}

/// Splits a replicated reply into its status and payload.
pub fn split_reply(reply: &[u8]) -> (u32, &[u8]) {
    match reply.split_first_chunk::<4>() {
        Some((status, payload)) => (u32::from_le_bytes(*status), payload),
        None => (ErrorCode::ERROR.0, &[]),
    }
}

impl StateMachine for BrokerMachine {
    fn apply(&mut self, header: &PrepareHeader, body: &[u8]) -> Vec<u8> {
        let mut reply = vec![0u8; 4];
        let status = match codec::decode(body) {
            Err(e) => {
                // Every replica decodes the same bytes the same way: the op fails everywhere.
                tracing::warn!(op = header.op, error = %e, "replicated operation does not decode");
                ErrorCode::INVALID_FORMAT.0
            }
            Ok(mut decoded) => {
                let context = OpContext {
                    timestamp: header.timestamp,
                    entropy: header.checksum,
                };
                match apply(&self.broker, context, decoded.submission(), &mut reply) {
                    Ok(_) => 0,
                    Err(e) if e.is_server_fault() => {
                        // A local failure (disk full, I/O error) that the other replicas did
                        // not have: carrying on would leave this replica's state different
                        // from theirs. Stop; a restart recovers from the checkpoint and the
                        // WAL, and the others serve meanwhile.
                        tracing::error!(
                            op = header.op,
                            error = %e,
                            "cannot apply a committed operation; stopping this replica"
                        );
                        eprintln!("iggy-broker: cannot apply committed op {}: {e}", header.op);
                        std::process::exit(70);
                    }
                    Err(e) => {
                        reply.truncate(4);
                        e.code().0
                    }
                }
            }
        };
        reply[..4].copy_from_slice(&status.to_le_bytes());
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&self.digest.to_le_bytes());
        hasher.update(&header.op.to_le_bytes());
        hasher.update(&header.body_checksum.to_le_bytes());
        hasher.update(&reply);
        self.digest = hasher.digest128();
        reply
    }

    fn digest(&self) -> u128 {
        self.digest
    }

    /// The checkpoint's state: the running digest and a manifest of the metadata and how far
    /// each partition's log reached (see `manifest`). The partition data itself stays in the
    /// segment files; the driver syncs them before the checkpoint is written.
    fn snapshot(&self) -> Vec<u8> {
        let manifest = Manifest::capture(&self.broker.catalog(), self.digest);
        postcard::to_stdvec(&manifest).unwrap_or_default()
    }

    /// Accepts a checkpoint whose manifest matches the broker's state as opened (boot
    /// recovery brought the data directory to the checkpoint; see `Manifest::matches`).
    /// Installing a peer's checkpoint — state sync of segment files — is not built yet, so
    /// a checkpoint this broker's data does not match is refused and the core keeps asking.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let manifest: Manifest = postcard::from_bytes(snapshot)
            .map_err(|e| RestoreError(format!("checkpoint manifest does not decode: {e}")))?;
        let here = Manifest::capture(&self.broker.catalog(), manifest.digest);
        if here != manifest {
            return Err(RestoreError(
                "the local data does not match the checkpoint, and state sync of segment files \
                 is not implemented yet"
                    .into(),
            ));
        }
        self.digest = manifest.digest;
        Ok(())
    }
}

/// What a checkpoint records of the broker: enough to check that a data directory holds
/// exactly the checkpointed state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub digest: u128,
    /// The metadata snapshot (streams, topics, partitions, groups, users), as JSON.
    pub metadata: Vec<u8>,
    /// (stream, topic, partition, next offset) of every partition.
    pub partitions: Vec<(u32, u32, u32, u64)>,
}

impl Manifest {
    pub fn capture(catalog: &Catalog, digest: u128) -> Self {
        let metadata = serde_json::to_vec(&catalog.snapshot()).unwrap_or_default();
        let mut partitions = Vec::new();
        for stream in catalog.streams.values() {
            for topic in stream.topics.values() {
                for partition in &topic.partitions {
                    partitions.push((
                        stream.id,
                        topic.id,
                        partition.id,
                        partition.log().next_offset(),
                    ));
                }
            }
        }
        Self {
            digest,
            metadata,
            partitions,
        }
    }
}
