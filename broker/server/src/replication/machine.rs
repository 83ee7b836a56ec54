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

use crate::apply::{apply, Applied};
use crate::broker::Broker;
use crate::ops::codec::{self, RoomNeeded};
use crate::replication::capture::{self, Change, ManifestCache, CONSUMER, GROUP};
use crate::replication::space::{self, AppendedBytes};
use crate::replication::staging::{self, Staging};
use crate::replication::written::WrittenPartitions;
use crate::state::catalog::{Catalog, PartitionIds};
use crate::state::partition::Partition;
use crate::storage::StorageError;
use crate::storage::{graveyard, metadata};
use iggy_wire::ConsumerKind;
use iggy_wire::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use vsr::{PrepareHeader, RestoreError, StateMachine};

/// Largest frames buffer kept between applies (and between stagings, `staging.rs`).
const SCRATCH_KEPT: usize = 16 << 20;

/// Keeps `decoded`'s frames buffer in `slot` for the next batch, unless one oversized batch
/// grew it.
pub(super) fn keep_scratch(slot: &mut Vec<u8>, decoded: codec::Decoded) {
    let scratch = decoded.into_scratch();
    if scratch.capacity() <= SCRATCH_KEPT {
        *slot = scratch;
    }
}
/// At most one log line per this long about sends refused for lack of space.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// The status of a request refused because the cluster holds no settings yet (`admit`): never
/// an Iggy error code, and never shown to a client. The submitter that sent the request asks
/// again shortly, once the primary has put its settings in force.
pub const AWAITING_SETTINGS: u32 = 0xFFFF_FF01;

pub struct BrokerMachine {
    broker: Arc<Broker>,
    /// Where appends are noted for the journal thread's writeback and the checkpointer's syncs.
    written: Arc<WrittenPartitions>,
    digest: u128,
    /// The buffer an append's frames are copied into to be stamped, kept between applies.
    scratch: Vec<u8>,
    /// The last op applied, and the ops of the last two checkpoints taken: what was deleted at
    /// or before the older one is released from the graveyard at the next checkpoint.
    applied: u64,
    checkpoints: std::cell::Cell<(u64, u64)>,
    /// The manifest as of the last checkpoint, and what changed since (`capture.rs`).
    manifests: std::cell::RefCell<ManifestCache>,
    /// What stopped this machine: a committed operation it could not apply (see `apply`).
    halted: Option<String>,
    /// Whether a halt ends the process (`iggy-broker`) or only stops applying (the simulator,
    /// which crashes the replica itself).
    exit_on_halt: bool,
    /// When the last refusal for lack of space was logged (one line per burst, not per send).
    refusal_logged: Option<std::time::Instant>,
    /// What recent appends wrote, by op: how far behind a member's report of its room is.
    appended: AppendedBytes,
    /// The send this primary wrote ahead of its commit (`staging.rs`).
    staging: Staging,
}

impl BrokerMachine {
    pub fn new(broker: Arc<Broker>, written: Arc<WrittenPartitions>) -> Self {
        Self {
            broker,
            written,
            digest: 0,
            scratch: Vec::new(),
            applied: 0,
            checkpoints: std::cell::Cell::new((0, 0)),
            manifests: std::cell::RefCell::default(),
            halted: None,
            exit_on_halt: true,
            refusal_logged: None,
            appended: AppendedBytes::default(),
            staging: Staging::default(),
        }
    }

    /// A machine whose halt leaves the process running: it applies nothing more and says why
    /// in [`Self::halted`]; whoever runs it must stop the replica (the simulator).
    pub fn without_exit(mut self) -> Self {
        self.exit_on_halt = false;
        self
    }

    /// Whether `body` must wait for the cluster's first settings (see `admit`). A session's
    /// registration (an empty body) changes no state and never waits.
    fn awaits_settings(&self, body: &[u8]) -> bool {
        if body.is_empty() || self.broker.catalog().settings.is_some() {
            return false;
        }
        let revision = crate::replication::transport::SETTINGS_SINCE_REVISION;
        let Some(status) = self.broker.cluster_status() else {
            return false;
        };
        status.ring_reads(revision) && !codec::puts_settings(body)
    }

    /// Why this machine stopped applying, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
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
    /// A send is refused, on the primary and before it is prepared, when it would leave some
    /// member's data filesystem with less than `replication.min_free_space` once it and every
    /// send prepared or queued before it are applied there. Every replica applies every
    /// committed send, and one that fails for want of space on one replica only leaves that
    /// replica's state apart from the others' (it halts, `apply`); refusing here for the member
    /// with the least room (this replica's own disk, and the peers' as they report it,
    /// `space.rs`) keeps them all short of full, and what the reserve leaves serves deletes
    /// (the way to free space), metadata and checkpoints.
    ///
    /// Sends alone cannot take a disk below the reserve, but something else writing to it can,
    /// to its last byte, and then a metadata save fails too. So an operation that adds to the
    /// state (a create, an update, a stored offset, a join) is refused below a quarter of the
    /// reserve, answered with the generic error a single node gives when it cannot save its
    /// metadata. Removals and the broker's own clean-ups are always admitted: they are how room
    /// is made, and the metadata reserve file (`storage::metadata`) saves them at 0 bytes free.
    /// A filesystem that cannot be asked, and a peer that has not reported lately, count for
    /// nothing (an apply that fails still fails safely, by halting).
    ///
    /// Until the cluster holds settings (`state::settings`; a new cluster's first moments, or
    /// data from a build before them) every replica would apply an operation with its own
    /// configuration, and members configured apart would part. So the primary admits nothing but
    /// the operation that puts its settings in force (which it is told to issue at once), once
    /// every member it reaches can apply that; the rest is asked again by its submitter.
    fn admit(&mut self, body: &[u8], pending: u64) -> Option<Vec<u8>> {
        if self.awaits_settings(body) {
            self.broker.settings_wanted.notify_one();
            return Some(AWAITING_SETTINGS.to_le_bytes().to_vec());
        }
        let reserve = self.broker.config.replication.min_free_space.0;
        let (keep, refusal, what) = match codec::room_needed(body) {
            RoomNeeded::None => return None,
            RoomNeeded::Reserve => (reserve, ErrorCode::CANNOT_APPEND_MESSAGE, "sends"),
            RoomNeeded::Quarter => (reserve / 4, ErrorCode::ERROR, "operations that add state"),
        };
        let own = self.broker.own_room();
        let reports = self
            .broker
            .cluster_status()
            .map(|status| status.peer_space())
            .unwrap_or_default();
        let pending = pending.saturating_add(body.len() as u64);
        let (who, left) = space::tightest(own, &reports, &self.appended, pending)?;
        if left >= keep {
            return None;
        }
        self.broker
            .metrics
            .replication_refused_disk_full
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        if self
            .refusal_logged
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            self.refusal_logged = Some(now);
            let disk = match who {
                None => "this member's".to_owned(),
                Some(position) => format!("the member at ring position {position}'s"),
            };
            tracing::warn!(
                left_bytes = left,
                keep_bytes = keep,
                "refusing {what}: {disk} data filesystem is nearly full \
                 (replication.min_free_space); delete or purge data, or give the replicas more space"
            );
        }
        Some(refusal.0.to_le_bytes().to_vec())
    }

    fn apply(&mut self, header: &PrepareHeader, body: &[u8]) -> Vec<u8> {
        let mut reply = vec![0u8; 4];
        if self.halted.is_some() {
            // Its state is no longer the others': nothing it answers may count.
            reply.copy_from_slice(&ErrorCode::ERROR.0.to_le_bytes());
            return reply;
        }
        if codec::is_append(body) {
            self.appended.note(header.op, body.len() as u64);
        }
        let outcome = match self.staging.publish(&self.broker, header) {
            // A published send changed what an append changes.
            Some(published) => Ok((Change::Append, published)),
            None => self.apply_body(header, body, &mut reply),
        };
        let status = match outcome {
            Err(e) => {
                // Every replica decodes the same bytes the same way: the op fails everywhere.
                tracing::warn!(op = header.op, error = %e, "replicated operation does not decode");
                ErrorCode::INVALID_FORMAT.0
            }
            Ok((change, applied)) => match applied {
                Ok(applied) => {
                    let appended = applied.sync.as_ref().map(|(partition, _)| partition);
                    if let Some(partition) = appended {
                        self.written.note(partition);
                    }
                    self.manifests.get_mut().applied(change, appended);
                    0
                }
                // Whatever a failed op left, the next checkpoint reads it all.
                Err(e) if e.is_server_fault() => {
                    self.manifests.get_mut().invalidate();
                    // A local failure (disk full, I/O error) that the other replicas did
                    // not have: carrying on would leave this replica's state different
                    // from theirs. Stop; a restart recovers from the checkpoint and the
                    // WAL, and the others serve meanwhile.
                    tracing::error!(
                        op = header.op,
                        error = %e,
                        "cannot apply a committed operation; stopping this replica"
                    );
                    if self.exit_on_halt {
                        eprintln!("iggy-broker: cannot apply committed op {}: {e}", header.op);
                        std::process::exit(70);
                    }
                    self.halted = Some(format!("op {}: {e}", header.op));
                    ErrorCode::ERROR.0
                }
                Err(e) => {
                    self.manifests.get_mut().invalidate();
                    reply.truncate(4);
                    e.code().0
                }
            },
        };
        reply[..4].copy_from_slice(&status.to_le_bytes());
        self.applied = self.applied.max(header.op);
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

    /// Writes a send's batch into its partition while the backups acknowledge it, for the
    /// apply to publish (`staging.rs`).
    fn stage(&mut self, header: &PrepareHeader, body: &[u8]) {
        if self.halted.is_none() {
            self.staging.stage(&self.broker, header, body);
        }
    }

    /// The checkpoint's state: the running digest and a manifest of the metadata and how far
    /// each partition's log reached (see `manifest`). The partition data itself stays in the
    /// segment files; the checkpointer syncs them before the checkpoint is written.
    fn snapshot(&self) -> Vec<u8> {
        let mut manifests = self.manifests.borrow_mut();
        let manifest = manifests.capture(&self.broker.catalog(), self.digest);
        // The checkpoint before the previous one is durable by now (the core writes them in
        // order): nothing buried at or before it can be needed again.
        let (released, previous) = self.checkpoints.get();
        self.checkpoints.set((previous, self.applied));
        if released > 0 {
            if let Err(e) = graveyard::release_through(&self.broker.config.system.path, released) {
                tracing::warn!(error = %e, "cannot release deleted data from the graveyard");
            }
        }
        manifest.encode()
    }

    /// Brings the broker to a checkpoint: see [`BrokerMachine::check`] for what must hold
    /// first (nothing is cut unless all of it does); then every partition is cut back to the
    /// checkpoint and its stored consumer offsets become the checkpoint's, so the WAL's later
    /// ops replay onto exactly the state they were first applied to.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        // Whatever was staged was stamped for a state about to be replaced.
        self.staging.abandon();
        let manifest = Manifest::decode(snapshot)?;
        // Whatever happens below, the partitions may no longer be what was captured.
        self.manifests.get_mut().invalidate();
        let cuts = self.check(&manifest)?;
        let partitions = cuts.len();
        let failed = |e: StorageError| RestoreError(e.to_string());
        for (partition, next_offset, active_start, consumers, groups) in cuts {
            partition
                .log()
                .cut_to_checkpoint(next_offset, active_start)
                .map_err(failed)?;
            partition
                .offsets(ConsumerKind::Consumer)
                .replace_all(&consumers)
                .map_err(failed)?;
            partition
                .offsets(ConsumerKind::Group)
                .replace_all(&groups)
                .map_err(failed)?;
        }
        self.digest = manifest.digest;
        tracing::info!(partitions, "broker state restored to the checkpoint");
        Ok(())
    }
}

/// A partition to cut back: its next offset, where its active segment started (if recorded)
/// and its stored offsets (consumers, groups) at the checkpoint.
type Cut = (
    Arc<Partition>,
    u64,
    Option<u64>,
    Vec<(String, u64)>,
    Vec<(String, u64)>,
);

impl BrokerMachine {
    /// Decodes and applies an op the ordinary way: what it may change of a manifest, and what
    /// the apply did; an error when the body does not decode.
    fn apply_body(
        &mut self,
        header: &PrepareHeader,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(Change, crate::error::Result<Applied>), codec::CodecError> {
        let mut decoded = codec::decode_into(body, std::mem::take(&mut self.scratch))?;
        let change = Change::of(&decoded);
        // Deletions are buried, not made, until no checkpoint needs what they delete.
        let data = self.broker.config.system.path.clone();
        let applied = graveyard::during(&data, header.op, || {
            apply(
                &self.broker,
                staging::context_of(header),
                decoded.submission(),
                reply,
            )
        });
        keep_scratch(&mut self.scratch, decoded);
        Ok((change, applied))
    }

    /// Whether the broker's data can be brought to the checkpoint `manifest` describes: its
    /// metadata must already be the checkpoint's (boot writes it from the manifest before
    /// opening, state sync installs it), and every partition must hold at least the
    /// checkpoint's messages with the same last message. Data this replica never had, or lost
    /// to a purge or delete since, fails the check; state sync (`replication::sync`) fetches it.
    pub fn check(&self, manifest: &Manifest) -> Result<Vec<Cut>, RestoreError> {
        let wanted: metadata::Snapshot = serde_json::from_slice(&manifest.metadata)
            .map_err(|e| RestoreError(format!("checkpoint metadata does not decode: {e}")))?;
        let catalog = self.broker.catalog();
        if catalog.snapshot() != wanted {
            return Err(RestoreError(
                "the broker's metadata is not the checkpoint's".into(),
            ));
        }
        // Each partition's stored offsets, consumers' then groups', found in one pass: a
        // lookup per partition over all of them was quadratic in the partition count.
        let mut stored: HashMap<PartitionIds, [Vec<(String, u64)>; 2]> = HashMap::new();
        for (stream, topic, partition, kind, key, offset) in &manifest.offsets {
            let slot = match *kind {
                CONSUMER => 0,
                GROUP => 1,
                _ => continue,
            };
            stored.entry((*stream, *topic, *partition)).or_default()[slot]
                .push((key.clone(), *offset));
        }
        let mut cuts = Vec::with_capacity(manifest.partitions.len());
        for (index, &(stream, topic, partition, next_offset, last)) in
            manifest.partitions.iter().enumerate()
        {
            let Some(found) = catalog.partition_by_ids(stream, topic, partition) else {
                return Err(RestoreError(format!(
                    "partition {stream}/{topic}/{partition} of the checkpoint is missing"
                )));
            };
            let held = crate::replication::sync::ends_as_checkpointed(
                &found.log(),
                next_offset,
                last,
                crate::replication::sync::Beyond::Refused,
            )
            .map_err(|e| RestoreError(e.to_string()))?;
            if !held {
                return Err(RestoreError(format!(
                    "partition {stream}/{topic}/{partition} does not hold the checkpoint's \
                     {next_offset} messages"
                )));
            }
            let [consumers, groups] = stored
                .remove(&(stream, topic, partition))
                .unwrap_or_default();
            let active_start = manifest
                .active_starts
                .as_ref()
                .and_then(|starts| starts.get(index).copied());
            cuts.push((found, next_offset, active_start, consumers, groups));
        }
        Ok(cuts)
    }
}

/// What a checkpoint records of the broker: enough to check that a data directory holds
/// exactly the checkpointed state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub digest: u128,
    /// The metadata snapshot (streams, topics, partitions, groups, users), as JSON.
    pub metadata: Vec<u8>,
    /// (stream, topic, partition, next offset, checksum of the last message) of every
    /// partition.
    pub partitions: Vec<(u32, u32, u32, u64, u64)>,
    /// (stream, topic, partition, 0 consumer | 1 group, key, offset) of every stored offset.
    pub offsets: Vec<(u32, u32, u32, u8, String, u64)>,
    /// Where each partition's active segment starts, in the order of `partitions`: a cut back
    /// to the checkpoint must leave segments where they were (`PartitionLog::cut_to_checkpoint`).
    /// Last, so a build that predates it decodes the rest and ignores it; `None` in a
    /// manifest such a build wrote.
    pub active_starts: Option<Vec<u64>>,
}

/// A manifest as builds before `active_starts` wrote it.
#[derive(serde::Deserialize)]
struct ManifestWithoutActiveStarts {
    digest: u128,
    metadata: Vec<u8>,
    partitions: Vec<(u32, u32, u32, u64, u64)>,
    offsets: Vec<(u32, u32, u32, u8, String, u64)>,
}

/// Appends `value` as postcard's varint: seven bits a byte, low bits first, the high bit set
/// on every byte but the last.
fn push_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Manifest {
    /// The manifest of the broker's state now, read from every partition (a checkpoint takes
    /// it from [`ManifestCache`], which rereads only what changed).
    pub fn read(catalog: &Catalog, digest: u128) -> Self {
        let mut partitions = Vec::new();
        let mut offsets = Vec::new();
        let mut active_starts = Vec::new();
        for ((stream, topic, id), partition) in catalog.partitions() {
            let end = capture::read_log(partition);
            partitions.push((stream, topic, id, end.next_offset, end.last));
            active_starts.push(end.active_start);
            for (tag, entries) in [CONSUMER, GROUP]
                .into_iter()
                .zip(capture::read_offsets(partition))
            {
                for (key, offset) in entries {
                    offsets.push((stream, topic, id, tag, key, offset));
                }
            }
        }
        Self {
            digest,
            metadata: serde_json::to_vec(&catalog.snapshot()).unwrap_or_default(),
            partitions,
            offsets,
            active_starts: Some(active_starts),
        }
    }

    /// The bytes `postcard` makes of it (and [`Manifest::decode`] reads), written directly
    /// into a buffer of about their size. Through serde, and into a buffer grown by doubling,
    /// encoding was 6 % of a replica thread's time with 10,000 partitions (a manifest every
    /// 64 ops).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_bound());
        push_varint(&mut out, self.digest);
        push_varint(&mut out, self.metadata.len() as u128);
        out.extend_from_slice(&self.metadata);
        push_varint(&mut out, self.partitions.len() as u128);
        for &(stream, topic, partition, next_offset, last) in &self.partitions {
            for value in [
                stream.into(),
                topic.into(),
                partition.into(),
                next_offset,
                last,
            ] {
                push_varint(&mut out, u128::from(value));
            }
        }
        push_varint(&mut out, self.offsets.len() as u128);
        for (stream, topic, partition, tag, key, offset) in &self.offsets {
            for value in [*stream, *topic, *partition] {
                push_varint(&mut out, u128::from(value));
            }
            out.push(*tag);
            push_varint(&mut out, key.len() as u128);
            out.extend_from_slice(key.as_bytes());
            push_varint(&mut out, u128::from(*offset));
        }
        match &self.active_starts {
            None => out.push(0),
            Some(starts) => {
                out.push(1);
                push_varint(&mut out, starts.len() as u128);
                for &start in starts {
                    push_varint(&mut out, u128::from(start));
                }
            }
        }
        out
    }

    /// At least its encoded length: postcard writes integers as varints of at most 10 bytes
    /// (19 for the u128) and lengths as varints of at most 5.
    pub fn encoded_len_bound(&self) -> usize {
        let offsets: usize = self
            .offsets
            .iter()
            .map(|o| 3 * 5 + 1 + 5 + o.4.len() + 10)
            .sum();
        let starts = 1 + 5 + self.active_starts.as_ref().map_or(0, |s| s.len() * 10);
        19 + 5
            + self.metadata.len()
            + 5
            + self.partitions.len() * (3 * 5 + 2 * 10)
            + 5
            + offsets
            + starts
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RestoreError> {
        let failed =
            |e: postcard::Error| RestoreError(format!("checkpoint manifest does not decode: {e}"));
        let (older, rest) =
            postcard::take_from_bytes::<ManifestWithoutActiveStarts>(bytes).map_err(failed)?;
        let active_starts = match rest.is_empty() {
            true => None,
            false => postcard::from_bytes(rest).map_err(failed)?,
        };
        Ok(Self {
            digest: older.digest,
            metadata: older.metadata,
            partitions: older.partitions,
            offsets: older.offsets,
            active_starts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{append, apply_as_root, stream_and_topic};
    use crate::ops::Operation;
    use iggy_wire::Partitioning;

    fn store(broker: &Broker, partition: u32, kind: ConsumerKind, key: &str, offset: u64) {
        apply_as_root(
            broker,
            Operation::StoreOffset {
                stream: 0,
                topic: 0,
                partition,
                kind,
                key: key.into(),
                offset,
            },
        );
    }

    /// The manifest's own encoder writes exactly postcard's bytes, at every varint width, and
    /// they decode back.
    #[test]
    fn a_manifest_encodes_as_postcard_does() {
        let widths = [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u32::MAX as u64,
            1 << 40,
            u64::MAX,
        ];
        let mut manifest = Manifest {
            digest: u128::MAX - 5,
            metadata: vec![b'{'; 300],
            partitions: Vec::new(),
            offsets: Vec::new(),
            active_starts: Some(Vec::new()),
        };
        for (i, &value) in widths.iter().enumerate() {
            let small = value.min(u32::MAX as u64) as u32;
            manifest
                .partitions
                .push((small, i as u32, small / 3, value, value / 7));
            manifest
                .offsets
                .push((i as u32, small, 7, (i % 2) as u8, "k".repeat(i * 40), value));
            if let Some(starts) = &mut manifest.active_starts {
                starts.push(value / 3);
            }
        }
        for digest in [0, 1, 300, u128::MAX] {
            manifest.digest = digest;
            let encoded = manifest.encode();
            assert_eq!(encoded, postcard::to_stdvec(&manifest).expect("encodes"));
            assert!(encoded.len() <= manifest.encoded_len_bound());
            assert_eq!(Manifest::decode(&encoded).expect("decodes"), manifest);
        }
        // What a build before `active_starts` wrote (the same bytes without them) decodes
        // with none; what it reads of a newer manifest is the rest, unchanged.
        let encoded = manifest.encode();
        let starts = postcard::to_stdvec(&manifest.active_starts).expect("encodes");
        let older = &encoded[..encoded.len() - starts.len()];
        let decoded = Manifest::decode(older).expect("decodes");
        assert_eq!(decoded.active_starts, None);
        assert_eq!(decoded.partitions, manifest.partitions);
        let read_by_older: ManifestWithoutActiveStarts =
            postcard::from_bytes(&encoded).expect("an older build decodes it");
        assert_eq!(read_by_older.offsets, manifest.offsets);
        manifest.active_starts = None;
        assert_eq!(
            manifest.encode(),
            postcard::to_stdvec(&manifest).expect("encodes")
        );
    }

    /// Restoring a checkpoint gives each partition back exactly its own stored offsets, of
    /// consumers and of groups, whatever was stored since.
    #[test]
    fn a_restored_checkpoint_gives_every_partition_its_own_offsets() {
        let dir = tempfile::tempdir().expect("dir");
        let broker = crate::broker::open_for_tests(dir.path());
        stream_and_topic(&broker, 3);
        let messages: Vec<(u128, &[u8], &[u8])> = vec![(0, b"m", b""); 10];
        for partition in 0..3 {
            append(&broker, Partitioning::PartitionId(partition), &messages);
        }
        store(&broker, 0, ConsumerKind::Consumer, "a", 1);
        store(&broker, 1, ConsumerKind::Consumer, "a", 2);
        store(&broker, 1, ConsumerKind::Group, "a", 3);
        store(&broker, 2, ConsumerKind::Group, "b", 4);
        let manifest = Manifest::read(&broker.catalog(), 0);

        store(&broker, 0, ConsumerKind::Consumer, "a", 9);
        store(&broker, 0, ConsumerKind::Group, "c", 9);
        store(&broker, 2, ConsumerKind::Group, "b", 9);
        let mut machine = BrokerMachine::new(broker.clone(), Arc::default());
        machine
            .restore(&postcard::to_stdvec(&manifest).expect("encodes"))
            .expect("restores");

        let catalog = broker.catalog();
        let partitions = &catalog.streams[&0].topics[&0].partitions;
        let held = |p: usize, kind| partitions[p].offsets(kind).entries();
        assert_eq!(held(0, ConsumerKind::Consumer), [("a".to_string(), 1)]);
        assert_eq!(held(0, ConsumerKind::Group), []);
        assert_eq!(held(1, ConsumerKind::Consumer), [("a".to_string(), 2)]);
        assert_eq!(held(1, ConsumerKind::Group), [("a".to_string(), 3)]);
        assert_eq!(held(2, ConsumerKind::Consumer), []);
        assert_eq!(held(2, ConsumerKind::Group), [("b".to_string(), 4)]);
    }
}
