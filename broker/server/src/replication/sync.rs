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
//!    A chunk never crosses the end of the peer's segment and says where that segment starts,
//!    so the receiver's segments start at the same offsets (retention and tiering act on whole
//!    segments; replicas must agree on them). When the peer no longer holds the receiver's
//!    end locally — retention deleted it, or it was tiered and evicted — it says where its
//!    local data starts and which segments the object store holds before that; the receiver
//!    starts the partition again there (`PartitionLog::restart_at`) and fetches on.
//! 3. hands the checkpoint to the core, whose restore (`BrokerMachine::restore`) cuts any
//!    excess, sets the stored offsets and the digest.
//!
//! A fetch runs on its own connection to the peer's replication port and is answered on it.
//! Interrupted, it resumes where the data stands: step 2 starts from each partition's end.
//! That is also how a sync gets past a peer whose copy is damaged: the peer answers the intact
//! messages before the damage, refuses the rest and queues its own repair, and the sync goes on
//! from another member ([`install_from_each`]).

use crate::broker::Broker;
use crate::replication::machine::Manifest;
use crate::replication::peer_auth::{Binding, ClusterSecret};
use crate::replication::peer_tls;
use crate::replication::transport::{
    encode_frame, read_handshake_frame_blocking, Greeting, TransportError, FETCH, FETCHED,
    HANDSHAKE_TIMEOUT,
};
use crate::state::catalog::PartitionIds;
use crate::state::partition::Partition;
use crate::storage::partition_log::PartitionLog;
use crate::storage::{graveyard, metadata, StorageError};
use iggy_tiering::TieredSegment;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
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
    /// The partition's creation time in the checkpoint: which incarnation is meant, since
    /// ids are reused after a delete (`None`: whichever is live).
    pub created_at: Option<u64>,
    /// The checksum of the checkpoint's message at `until - 1`, when the asker wants the
    /// messages up to it as the checkpoint has them: a peer whose partition was purged since
    /// serves them from its graveyard ([`serve`]). Last, so that an older build, which leaves
    /// it unread, still answers; one that sends none is read by [`Fetch::decode`].
    pub last: Option<u64>,
}

/// A fetch as builds before [`Fetch::last`] encode it.
#[derive(Deserialize)]
struct FetchWithoutLast {
    stream: u32,
    topic: u32,
    partition: u32,
    from: u64,
    until: u64,
    created_at: Option<u64>,
}

impl Fetch {
    /// Decodes a fetch frame's body, from this build or an older one of the same wire version.
    pub fn decode(body: &[u8]) -> Result<Fetch, postcard::Error> {
        postcard::from_bytes(body).or_else(|e| {
            let older: FetchWithoutLast = postcard::from_bytes(body).map_err(|_| e)?;
            Ok(Fetch {
                stream: older.stream,
                topic: older.topic,
                partition: older.partition,
                from: older.from,
                until: older.until,
                created_at: older.created_at,
                last: None,
            })
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Fetched {
    Chunk {
        /// Checksum of the message at `from - 1` (`None` for `from` 0, or when the peer no
        /// longer holds it locally).
        previous: Option<u64>,
        /// Whole message frames from `from` on, as stored, never past the end of the peer's
        /// segment that holds `from`.
        #[serde(with = "serde_bytes")]
        frames: Vec<u8>,
        /// Where that segment starts: the receiver starts its own segments at the same offsets.
        segment_start: u64,
        /// The segment as the peer's tier manifest names it, when the object store holds it.
        tiered: Option<TieredSegment>,
    },
    /// The peer's local data starts after `from` (retention deleted what came before, or it
    /// was tiered and evicted): the receiver starts its log again at `first_local`, with
    /// `remote` — the peer's tier-manifest segments below it — as the object store's part.
    Head {
        first_local: u64,
        remote: Vec<TieredSegment>,
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
    /// The peer's local data of a partition now starts past the checkpoint's end for it
    /// (tiering or retention moved on since the checkpoint was taken). Unlike a refusal, this
    /// does not pass: a peer's local data only ever starts later. A newer checkpoint reaches it.
    #[error("state sync with {peer}: {reason}")]
    Overtaken { peer: String, reason: String },
    #[error("state sync with {peer}: {error}")]
    Handshake { peer: String, error: TransportError },
    #[error("state sync: {0}")]
    Local(String),
    /// Nothing was written for the stall; `last` says why the peers could not serve (what
    /// the last one asked answered), when one was asked.
    #[error("state sync wrote nothing for {after:?}{}", last_answer(last))]
    Stalled {
        after: Duration,
        last: Option<String>,
    },
}

/// How a stall names the last failure to serve, if any.
fn last_answer(last: &Option<String>) -> String {
    last.as_deref()
        .map(|answer| format!(" (last: {answer})"))
        .unwrap_or_default()
}

/// Answers a fetch from this broker's data: the live partition when it is the incarnation
/// asked for, else that incarnation in the graveyard — a partition deleted (and perhaps
/// re-created under the same ids) after the checkpoint the asker syncs to. Either one, when
/// purged after that checkpoint, holds another history where the checkpoint's messages were
/// (the fetch names the checkpoint's last one): those are served from what the purge buried.
pub fn serve(broker: &Broker, request: &Fetch) -> Fetched {
    let data = &broker.config.system.path;
    let dir = metadata::partition_dir(data, request.stream, request.topic, request.partition);
    let live = broker
        .catalog()
        .partition_by_ids(request.stream, request.topic, request.partition)
        .filter(|p| request.created_at.is_none_or(|at| p.created_at == at));
    if let Some(partition) = live {
        if !moved_on(&partition.log(), request) {
            return serve_partition(&partition, request, |until| {
                // Rot in what a peer needs: queue its repair from another copy, so the next
                // fetch of the range, the asker's or anyone's, finds it whole here too.
                crate::repair::report(broker, &partition, request.from, until);
            });
        }
        return serve_before_restarts(broker, &dir, request)
            .unwrap_or_else(|| serve_partition(&partition, request, |_| {}));
    }
    let buried = request
        .created_at
        .and_then(|at| graveyard::find_partition(data, dir.strip_prefix(data).ok()?, at));
    let Some(buried) = buried else {
        return Fetched::Refused(format!(
            "no partition {}/{}/{} of that incarnation",
            request.stream, request.topic, request.partition
        ));
    };
    match PartitionLog::open(&buried, broker.config.segment_size(), false) {
        Ok((log, _)) => {
            if moved_on(&log, request) {
                if let Some(answer) = serve_before_restarts(broker, &dir, request) {
                    return answer;
                }
            }
            serve_unrepaired(&log, request)
        }
        Err(e) => Fetched::Refused(format!("cannot open a deleted partition's data: {e}")),
    }
}

/// Whether `log` holds another message at `request.until - 1` than the one the fetch names,
/// or ends before it: a purge since the asker's checkpoint. (A message it holds only in the
/// object store cannot be compared, and is taken as the one named.)
fn moved_on(log: &PartitionLog, request: &Fetch) -> bool {
    let (Some(last), Some(offset)) = (request.last, request.until.checked_sub(1)) else {
        return false;
    };
    match log.checksum_of(offset) {
        Ok(Some(ours)) => ours != last,
        Ok(None) => log.next_offset() <= offset,
        Err(_) => false,
    }
}

/// Serves a fetch from a partition's files as they were before one of its restarts, the
/// newest whose message at `until - 1` is the one the fetch names (`graveyard::before_restarts`).
fn serve_before_restarts(
    broker: &Broker,
    dir: &std::path::Path,
    request: &Fetch,
) -> Option<Fetched> {
    let data = &broker.config.system.path;
    let relative = dir.strip_prefix(data).ok()?;
    graveyard::before_restarts(data, relative, |view| {
        let (log, _) = PartitionLog::open(view, broker.config.segment_size(), false).ok()?;
        if moved_on(&log, request) {
            return None;
        }
        // Read while the view's links exist (they are removed when this returns).
        Some(serve_unrepaired(&log, request))
    })
}

/// Serves a fetch from data no longer live (in the graveyard). It is not repaired when
/// damaged: only syncs to old checkpoints read it.
fn serve_unrepaired(log: &PartitionLog, request: &Fetch) -> Fetched {
    match plan_chunk(log, request) {
        Ok(planned) => read_chunk(planned, || {}),
        Err(answer) => *answer,
    }
}

/// Answers a fetch from a live partition; `on_damage` gets the end of the range asked for
/// when part of it is damaged.
pub fn serve_partition(
    partition: &Partition,
    request: &Fetch,
    on_damage: impl FnOnce(u64),
) -> Fetched {
    // The lock is held while planning only, not while the bytes are read.
    let planned = match plan_chunk(&partition.log(), request) {
        Ok(planned) => planned,
        Err(answer) => return *answer,
    };
    let until = request.from + u64::from(planned.plan.count);
    read_chunk(planned, || on_damage(until))
}

/// What a fetch will read: the plan and what the answer says besides the frames.
struct Planned {
    plan: crate::storage::partition_log::ReadPlan,
    previous: Option<u64>,
    segment_start: u64,
    tiered: Option<TieredSegment>,
}

/// Refusals and the `Head` answer come back as the error: they are the whole answer.
fn plan_chunk(log: &PartitionLog, request: &Fetch) -> Result<Planned, Box<Fetched>> {
    let refused = |reason: String| Err(Box::new(Fetched::Refused(reason)));
    if request.until > log.next_offset() || request.from > request.until {
        return refused(format!(
            "partition holds offsets up to {}, asked for {}..{}",
            log.next_offset(),
            request.from,
            request.until
        ));
    }
    if request.from < log.local_start() {
        return Err(Box::new(Fetched::Head {
            first_local: log.local_start(),
            remote: log.remote_segments().to_vec(),
        }));
    }
    let Some((segment_start, segment_end)) = log.segment_bounds(request.from) else {
        return refused(format!("no segment holds offset {}", request.from));
    };
    let tiered = log
        .tiered()
        .0
        .find(segment_start)
        .filter(|s| s.start_offset == segment_start)
        .copied();
    let previous = match request.from.checked_sub(1) {
        None => None,
        Some(offset) => match log.checksum_of(offset) {
            Ok(checksum) => checksum,
            Err(e) => return refused(e.to_string()),
        },
    };
    let count = (request.until.min(segment_end) - request.from).min(u64::from(u32::MAX)) as u32;
    Ok(Planned {
        plan: match log.plan_read(request.from, count, CHUNK_BYTES) {
            Ok(plan) => plan,
            Err(e) => return refused(e.to_string()),
        },
        previous,
        segment_start,
        tiered,
    })
}

/// Reads a planned chunk. Damage ends it early: the intact messages before it are still
/// answered (the asker fetches the rest from another peer), and `on_damage` is called.
fn read_chunk(planned: Planned, on_damage: impl FnOnce()) -> Fetched {
    let mut frames = Vec::with_capacity(planned.plan.bytes);
    match planned.plan.read_intact_prefix(&mut frames) {
        Ok(()) => {}
        Err(error @ StorageError::CorruptRead { .. }) => {
            tracing::error!(%error, "a state-sync fetch met damaged data");
            on_damage();
            if frames.is_empty() {
                return Fetched::Refused(error.to_string());
            }
        }
        Err(error) => return Fetched::Refused(error.to_string()),
    }
    Fetched::Chunk {
        previous: planned.previous,
        frames,
        segment_start: planned.segment_start,
        tiered: planned.tiered,
    }
}

/// Brings this broker's data to `manifest`'s by fetching what it lacks from `peers` (their
/// replication addresses, the checkpoint's sender first; see [`install_from_each`]).
/// Blocking; gives up when it wrote nothing for `stall`.
pub fn install(
    broker: &Broker,
    manifest: &Manifest,
    peers: &[String],
    secret: &ClusterSecret,
    stall: Duration,
) -> Result<u64, SyncFailed> {
    install_from_each(broker, manifest, peers.len(), stall, |i| {
        Connection::open(&peers[i], secret, Instant::now() + stall)
    })
}

/// A state sync that failed, and whether it had changed this broker's data before it did
/// (metadata installed, a partition written or cut). Then the data matches neither the core's
/// state nor the checkpoint, and applying the core's next ops onto it would diverge: the
/// replica must restart from its durable checkpoint (the graveyard gives back what the sync
/// deleted). A failure that touched nothing is simply retried.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", if *.touched { " (after changing local data)" } else { "" })]
pub struct SyncFailed {
    pub error: SyncError,
    pub touched: bool,
}

/// Where state sync reads a peer's data: its replication port ([`install`]), or a broker in
/// the same process ([`InProcess`], how the simulator runs the broker's apply).
pub trait Source {
    fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError>;
    /// Names the peer in errors.
    fn peer(&self) -> String;
}

/// A peer's broker in this process.
pub struct InProcess<'a>(pub &'a Broker);

impl Source for InProcess<'_> {
    fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
        Ok(serve(self.0, request))
    }

    fn peer(&self) -> String {
        "a broker in this process".into()
    }
}

/// [`install`] from any [`Source`]s: the `sources` that `open` opens by index, tried in
/// order. A peer that cannot serve what is missing — unreachable, behind the checkpoint, or
/// holding a damaged copy of the range (it answers the intact messages before the damage) —
/// hands over to the next, which resumes where the data stands. Rounds over all of them go on
/// while any makes progress, so damage in different places on different peers is fetched
/// around. A local failure, or `stall` passing without a message written, ends it at once. The
/// whole has no time limit: a sync of a large partition takes as long as its data does, and
/// one given up half way stops the replica (`SyncFailed::touched`) to resume after a restart —
/// which would lose the restart's time (under Kubernetes, a growing back-off) again and again.
pub fn install_from_each<S: Source>(
    broker: &Broker,
    manifest: &Manifest,
    sources: usize,
    stall: Duration,
    mut open: impl FnMut(usize) -> Result<S, SyncError>,
) -> Result<u64, SyncFailed> {
    let mut state = Installing {
        touched: false,
        fetched: 0,
        wrote_at: Instant::now(),
        stall,
        refetched: HashSet::new(),
    };
    let mut failed = SyncError::Local("no peer to fetch from".into());
    // Whether a peer failed to serve yet (`failed` is then its answer).
    let mut asked = false;
    loop {
        let before = state.fetched;
        // Sources this round whose data has moved past the checkpoint for good.
        let mut overtaken = 0;
        for index in 0..sources {
            let outcome = open(index)
                .and_then(|mut source| install_touching(broker, manifest, &mut source, &mut state));
            let touched = state.touched;
            match outcome {
                Ok(()) => return Ok(state.fetched),
                Err(SyncError::Stalled { after, .. }) => {
                    let last = asked.then(|| failed.to_string());
                    let error = SyncError::Stalled { after, last };
                    return Err(SyncFailed { error, touched });
                }
                Err(error @ SyncError::Local(_)) => return Err(SyncFailed { error, touched }),
                Err(error) => {
                    if sources > 1 {
                        tracing::warn!(%error, "state sync: trying another peer");
                    }
                    overtaken += usize::from(matches!(error, SyncError::Overtaken { .. }));
                    failed = error;
                    asked = true;
                }
            }
        }
        if sources > 0 && overtaken == sources {
            // Every peer answered, and none will ever hold this checkpoint's data again:
            // waiting out the stall only kept the replica out of the protocol for 30 s (and
            // then stopped it all the same, `make chaos` seed 40013).
            return Err(SyncFailed {
                error: failed,
                touched: state.touched,
            });
        }
        if state.fetched == before {
            // No source served anything this round. Untouched, the driver tries again later
            // and the replica takes part in the protocol meanwhile. Touched, the data is part
            // old, part new and the replica cannot take part anyway: wait for a peer to come
            // back — one killed in the middle of serving restarts in seconds — until `stall`
            // passes without a write, rather than stop the replica at once, whose restart
            // costs its boot and, under Kubernetes, a growing back-off (`make chaos` saw a
            // stop in most runs with small segments).
            let waited = state.wrote_at.elapsed();
            if !state.touched || waited >= state.stall {
                return Err(SyncFailed {
                    error: failed,
                    touched: state.touched,
                });
            }
            tracing::warn!(error = %failed, "state sync: no peer can serve now; waiting for one");
            std::thread::sleep(NO_PEER_PAUSE.min(state.stall - waited));
        }
    }
}

/// How long a state sync that changed local data waits before asking its peers again when
/// none could serve it.
const NO_PEER_PAUSE: Duration = Duration::from_millis(250);

/// Where a state sync stands, over all the sources it tries.
struct Installing {
    /// Whether it changed local data yet.
    touched: bool,
    /// Messages written.
    fetched: u64,
    /// When it last wrote messages (or started).
    wrote_at: Instant,
    /// How long it may go without writing any.
    stall: Duration,
    /// The partitions fetched again from scratch from a peer (by its name) because their data
    /// ended with another message than the checkpoint's.
    refetched: HashSet<(String, PartitionIds)>,
}

/// State sync from one source.
fn install_touching(
    broker: &Broker,
    manifest: &Manifest,
    source: &mut impl Source,
    state: &mut Installing,
) -> Result<(), SyncError> {
    let Installing {
        touched,
        fetched,
        wrote_at,
        stall,
        refetched,
    } = state;
    let snapshot: metadata::Snapshot = serde_json::from_slice(&manifest.metadata)
        .map_err(|e| SyncError::Local(format!("checkpoint metadata does not decode: {e}")))?;
    if broker.catalog().snapshot() != snapshot {
        *touched = true;
        broker
            .install_metadata(&snapshot)
            .map_err(|e| SyncError::Local(e.to_string()))?;
    }
    let peer = source.peer();
    let peer = peer.as_str();
    let created: std::collections::BTreeMap<(u32, u32, u32), u64> = snapshot
        .streams
        .iter()
        .flat_map(|s| {
            s.topics.iter().flat_map(move |t| {
                t.partitions
                    .iter()
                    .map(move |p| ((s.id, t.id, p.id), p.created_at))
            })
        })
        .collect();
    for &(stream, topic, id, until, last) in &manifest.partitions {
        let partition = broker
            .catalog()
            .partition_by_ids(stream, topic, id)
            .ok_or_else(|| SyncError::Local(format!("partition {stream}/{topic}/{id} missing")))?;
        // Whether the peer named an object-store entry for this partition while it served it.
        let mut peer_tiers = false;
        loop {
            let from = partition.log().next_offset();
            let request = Fetch {
                stream,
                topic,
                partition: id,
                from,
                until,
                created_at: created.get(&(stream, topic, id)).copied(),
                last: Some(last),
            };
            if from >= until {
                let held = ends_as_checkpointed(&partition.log(), until, last, Beyond::Allowed)
                    .map_err(|e| SyncError::Local(e.to_string()))?;
                if held {
                    record_tiered_gaps(broker, &partition, request, peer_tiers, source)?;
                    break;
                }
                // It reaches the checkpoint's length with another last message: data of
                // another history (a half-done earlier sync, ops a view change discarded).
                // Nothing of it can be trusted: start the partition over — once per peer. The
                // same again after fetching all of it from this peer means the peer's own
                // partition moved on since the checkpoint (purged; or purged, deleted and
                // served from its graveyard), and will never be the checkpoint's again: a
                // newer checkpoint is what to sync to. Before, the sync fetched it again and
                // again for ever (the simulator, once its workload purged topics).
                if !refetched.insert((peer.to_owned(), (stream, topic, id))) {
                    return Err(SyncError::Overtaken {
                        peer: peer.to_owned(),
                        reason: format!(
                            "partition {stream}/{topic}/{id}: the peer's messages up to offset \
                             {until} end with another message than the checkpoint's"
                        ),
                    });
                }
                tracing::warn!(
                    stream,
                    topic,
                    partition = id,
                    "local data differs from the checkpoint's; fetching the partition again"
                );
                *touched = true;
                partition
                    .log()
                    .purge()
                    .map_err(|e| SyncError::Local(e.to_string()))?;
                continue;
            }
            if wrote_at.elapsed() >= *stall {
                return Err(SyncError::Stalled {
                    after: *stall,
                    last: None,
                });
            }
            match source.fetch(&request)? {
                Fetched::Refused(reason) => {
                    return Err(SyncError::Refused {
                        peer: peer.to_owned(),
                        reason,
                    })
                }
                Fetched::Head {
                    first_local,
                    remote,
                } => {
                    peer_tiers |= !remote.is_empty();
                    let reason = || {
                        format!(
                            "partition {stream}/{topic}/{id}: the peer's local data starts at \
                             {first_local}, this checkpoint needs {from}..{until}"
                        )
                    };
                    if first_local <= from {
                        return Err(SyncError::Refused {
                            peer: peer.to_owned(),
                            reason: reason(),
                        });
                    }
                    if first_local > until {
                        // The peer's retention or tiering moved beyond this checkpoint since
                        // it was taken; a later checkpoint will reach it.
                        return Err(SyncError::Overtaken {
                            peer: peer.to_owned(),
                            reason: reason(),
                        });
                    }
                    tracing::info!(
                        stream,
                        topic,
                        partition = id,
                        from,
                        first_local,
                        "the peer no longer holds this partition's end locally; starting it \
                         again where the peer's local data starts"
                    );
                    *touched = true;
                    partition
                        .log()
                        .restart_at(first_local, remote)
                        .map_err(|e| SyncError::Local(e.to_string()))?;
                    *wrote_at = Instant::now();
                }
                Fetched::Chunk {
                    previous,
                    frames,
                    segment_start,
                    tiered,
                } => {
                    peer_tiers |= tiered.is_some();
                    let mut log = partition.log();
                    let ours = match from.checked_sub(1) {
                        None => None,
                        Some(offset) => log
                            .checksum_of(offset)
                            .map_err(|e| SyncError::Local(e.to_string()))?,
                    };
                    // A log that starts here locally has nothing before `from` to compare.
                    let starts_here = ours.is_none() && log.local_start() == from;
                    if previous != ours && !starts_here {
                        // Another history (the partition was re-created since): start over.
                        *touched = true;
                        log.purge().map_err(|e| SyncError::Local(e.to_string()))?;
                        continue;
                    }
                    if frames.is_empty() {
                        return Err(SyncError::Refused {
                            peer: peer.to_owned(),
                            reason: format!("no messages at offset {from}"),
                        });
                    }
                    if segment_start != from && segment_start != log.sealed_end() {
                        // Segments cut elsewhere than the peer's (data an earlier version
                        // synced): cut back to where the peer's segment starts and fetch it
                        // again as one segment.
                        *touched = true;
                        let cut = match segment_start >= log.local_start() {
                            true => log.truncate_to(segment_start),
                            false => log.purge().map(|_| ()),
                        };
                        cut.map_err(|e| SyncError::Local(e.to_string()))?;
                        continue;
                    }
                    *touched = true;
                    *fetched += log
                        .append_synced(&frames, segment_start)
                        .map_err(|e| SyncError::Local(e.to_string()))?;
                    *wrote_at = Instant::now();
                    if let Some(segment) = tiered.filter(|s| {
                        log.next_offset() >= s.next_offset && s.start_offset == log.next_to_tier()
                    }) {
                        // The object store holds the segment just completed: so the manifest
                        // says, as on the peer. Only where it continues ours: a kept partition
                        // whose own older sealed segments lack their entries would otherwise
                        // get a manifest with a gap below this one, and the replayed
                        // `RecordTiered` of those would stop the replica (`make chaos`, seed
                        // 38004). Those entries are asked for once the data is in
                        // (`record_tiered_gaps`), oldest first.
                        if let Err(e) = log.record_tiered(segment) {
                            tracing::debug!(error = %e, "a synced segment stays untiered here");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Records the object store's entries, as the peer's tier manifest names them, for the local
/// sealed segments below `request.until` that this partition's manifest lacks. A partition kept
/// with data of its own fetched none of those segments, so no chunk brought their entries; the
/// ops that recorded them lie before the checkpoint and are not replayed; and the next
/// `RecordTiered` the log replays would then not continue this manifest — the replica stopped
/// on it (`make chaos` with tiering). Asks one message of each such segment (the peer's
/// answer names the segment's entry), in order, until the peer names none. Nothing is asked
/// where no object store is in use: neither configured here, nor named by the manifest, nor
/// by the peer while it served this partition (`peer_tiers`; a sync of many partitions would
/// otherwise pay a round trip for each).
fn record_tiered_gaps(
    broker: &Broker,
    partition: &Partition,
    request: Fetch,
    peer_tiers: bool,
    source: &mut impl Source,
) -> Result<(), SyncError> {
    if !peer_tiers && broker.tiering.is_none() && partition.log().tiered().0.segments.is_empty() {
        return Ok(());
    }
    loop {
        let (start, next) = {
            let log = partition.log();
            let start = log.next_to_tier();
            match log.segment_bounds(start) {
                Some((first, next))
                    if first == start && next <= log.sealed_end() && next <= request.until =>
                {
                    (start, next)
                }
                _ => return Ok(()),
            }
        };
        let ask = Fetch {
            from: start,
            until: start + 1,
            // Which message lies there is not known: the data is in already.
            last: None,
            ..request.clone()
        };
        let entry = match source.fetch(&ask)? {
            Fetched::Chunk { tiered, .. } => tiered,
            Fetched::Head { remote, .. } => remote.into_iter().find(|s| s.start_offset == start),
            Fetched::Refused(_) => None,
        };
        let Some(entry) = entry.filter(|s| s.start_offset == start && s.next_offset == next) else {
            return Ok(());
        };
        let recorded = partition
            .log()
            .record_tiered(entry)
            .map_err(|e| SyncError::Local(e.to_string()))?;
        if !recorded {
            return Ok(());
        }
    }
}

/// Whether a log may go on past the checkpoint's end (see [`ends_as_checkpointed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beyond {
    /// State sync: a log that holds the checkpoint's messages and more is kept (the rest is
    /// fetched or replayed after it).
    Allowed,
    /// Restoring a checkpoint: the data must be exactly the checkpoint's.
    Refused,
}

/// Whether `log` holds a checkpointed partition of `until` messages whose last one has the
/// checksum `last`: its message `until - 1` is that one, or it holds none of its own there
/// because its local data starts at `until` (state sync restarted it where the peer's data
/// began — with `Beyond::Refused` also nothing after it there). A log shorter than `until`
/// does not; an empty checkpointed partition names `last` 0.
pub fn ends_as_checkpointed(
    log: &PartitionLog,
    until: u64,
    last: u64,
    beyond: Beyond,
) -> Result<bool, crate::storage::StorageError> {
    if log.next_offset() < until {
        return Ok(false);
    }
    let Some(offset) = until.checked_sub(1) else {
        return Ok(last == 0);
    };
    Ok(match log.checksum_of(offset)? {
        Some(ours) => ours == last,
        None => match beyond {
            Beyond::Allowed => log.local_start() >= until,
            Beyond::Refused => log.local_start() == until && log.next_offset() == until,
        },
    })
}

/// How long one fetch may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Connection {
    stream: SyncStream,
    peer: String,
}

/// A state-sync connection: plain, or a TLS session over the socket when this member opens
/// its connections over TLS (`replication.tls`, `peer_tls`). The socket's timeouts bound both.
enum SyncStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl SyncStream {
    fn socket(&self) -> &TcpStream {
        match self {
            SyncStream::Plain(stream) => stream,
            SyncStream::Tls(stream) => stream.get_ref(),
        }
    }

    /// Over TLS: finishes the TLS handshake and returns what the proofs bind.
    fn binding(&mut self) -> std::io::Result<Binding> {
        match self {
            SyncStream::Plain(_) => Ok(Binding::Plain),
            SyncStream::Tls(stream) => {
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock)?;
                }
                peer_tls::binding(&stream.conn)
            }
        }
    }
}

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SyncStream::Plain(stream) => stream.read(buf),
            SyncStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SyncStream::Plain(stream) => stream.write(buf),
            SyncStream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SyncStream::Plain(stream) => stream.flush(),
            SyncStream::Tls(stream) => stream.flush(),
        }
    }
}

impl Connection {
    /// Connects to `peer`'s replication port and proves this replica holds `secret`.
    pub fn open(peer: &str, secret: &ClusterSecret, deadline: Instant) -> Result<Self, SyncError> {
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
        let socket = TcpStream::connect_timeout(&address, wait).map_err(connect_error)?;
        socket
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| socket.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|()| socket.set_nodelay(true))
            .map_err(connect_error)?;
        let handshake_error = |error: TransportError| SyncError::Handshake {
            peer: peer.to_owned(),
            error,
        };
        let mut stream = match secret.opening_tls() {
            None => SyncStream::Plain(socket),
            Some(tls) => {
                let session = tls
                    .client_session()
                    .map_err(|e| connect_error(std::io::Error::other(e)))?;
                SyncStream::Tls(Box::new(rustls::StreamOwned::new(session, socket)))
            }
        };
        let binding = stream
            .binding()
            .map_err(|e| handshake_error(TransportError::Tls(e)))?;
        let (greeting, hello) = Greeting::new(secret, binding).map_err(handshake_error)?;
        stream.write_all(&hello).map_err(connect_error)?;
        stream.flush().map_err(connect_error)?;
        let (kind, body) = read_handshake_frame_blocking(&mut stream).map_err(handshake_error)?;
        let proof = greeting.answer(kind, &body).map_err(handshake_error)?;
        stream.write_all(&proof).map_err(connect_error)?;
        stream.flush().map_err(connect_error)?;
        let socket = stream.socket();
        socket
            .set_read_timeout(Some(CHUNK_TIMEOUT))
            .and_then(|()| socket.set_write_timeout(Some(CHUNK_TIMEOUT)))
            .map_err(connect_error)?;
        Ok(Self {
            stream,
            peer: peer.to_owned(),
        })
    }
}

impl Source for Connection {
    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
        let io = |source| SyncError::Io {
            peer: self.peer.clone(),
            source,
        };
        let frame = encode_frame(FETCH, request)
            .map_err(|e| SyncError::Local(format!("cannot encode a fetch: {e}")))?;
        self.stream.write_all(&frame).map_err(io)?;
        self.stream.flush().map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fixtures::{append, stream_and_topic};
    use iggy_wire::Partitioning;
    use std::cell::Cell;

    /// A broker holding one partition of `batches` × 1000 messages of 1000 bytes.
    fn source(dir: &std::path::Path, batches: usize) -> std::sync::Arc<Broker> {
        let broker = crate::broker::open_for_tests(dir);
        stream_and_topic(&broker, 1);
        for _ in 0..batches {
            append_batch(&broker);
        }
        broker
    }

    /// 1000 messages of 1000 bytes.
    fn append_batch(broker: &Broker) {
        let body = vec![7u8; 1000];
        let messages: Vec<(u128, &[u8], &[u8])> =
            (0..1000).map(|_| (0, &body[..], &[][..])).collect();
        append(broker, Partitioning::Balanced, &messages);
    }

    /// Ten messages of 100 bytes appended to partition 0 (its active segment).
    fn append_ten(broker: &Broker) {
        let body = [7u8; 100];
        let messages: Vec<(u128, &[u8], &[u8])> =
            (0..10).map(|_| (0, &body[..], &[][..])).collect();
        append(broker, Partitioning::PartitionId(0), &messages);
    }

    /// Thirty messages to partition 0 unlike [`append_ten`]'s: after a purge, another history.
    fn append_another_history(broker: &Broker) {
        let body = [9u8; 100];
        let other: Vec<(u128, &[u8], &[u8])> = (0..30).map(|_| (0, &body[..], &[][..])).collect();
        append(broker, Partitioning::PartitionId(0), &other);
    }

    /// [`append_ten`], sealed into a segment of their own.
    fn append_segment_of_ten(broker: &Broker) {
        append_ten(broker);
        let partition = broker.catalog().streams[&0].topics[&0].partitions[0].clone();
        let next = partition.log().next_offset();
        assert!(partition.log().seal_active(next).unwrap());
    }

    /// The object store's entry for the ten-message segment at `start`.
    fn tier_entry(start: u64) -> iggy_tiering::TieredSegment {
        iggy_tiering::TieredSegment {
            start_offset: start,
            next_offset: start + 10,
            log_size: 1,
            index_size: 1,
            first_timestamp: 1,
            last_timestamp: 2,
            log_checksum: start,
            index_checksum: start,
            uploaded_at: 3,
        }
    }

    /// A peer that serves while `answers` lasts, then takes `delay` to fail every fetch, as a
    /// connection whose peer stopped sending fails at its read timeout.
    struct Fading<'a> {
        peer: InProcess<'a>,
        answers: &'a Cell<usize>,
        delay: Duration,
    }

    impl Source for Fading<'_> {
        fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
            if self.answers.get() == 0 {
                std::thread::sleep(self.delay);
                return Err(SyncError::Io {
                    peer: self.peer(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"),
                });
            }
            self.answers.set(self.answers.get() - 1);
            self.peer.fetch(request)
        }

        fn peer(&self) -> String {
            "a fading peer".into()
        }
    }

    /// A peer that serves `first` fetches, then fails the next `down` at once (connection
    /// refused, as while it restarts), then serves again.
    struct Restarting<'a> {
        peer: InProcess<'a>,
        first: &'a Cell<usize>,
        down: &'a Cell<usize>,
    }

    impl Source for Restarting<'_> {
        fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
            if self.first.get() > 0 {
                self.first.set(self.first.get() - 1);
            } else if self.down.get() > 0 {
                self.down.set(self.down.get() - 1);
                return Err(SyncError::Connect {
                    peer: self.peer(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            self.peer.fetch(request)
        }

        fn peer(&self) -> String {
            "a restarting peer".into()
        }
    }

    /// A sync that changed local data and then finds no peer able to serve it waits for one to
    /// come back (within the stall) instead of failing at once, which stopped the replica.
    /// Untouched, it fails at once: the driver tries again later.
    #[test]
    fn a_sync_that_changed_data_waits_for_a_peer_that_comes_back() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = source(theirs.path(), 5);
        let receiver = crate::broker::open_for_tests(ours.path());
        // Two peers that answer `first` fetches, then refuse `down` between them, then serve.
        let sync = |first: usize, down: usize| {
            let (first, down) = (Cell::new(first), Cell::new(down));
            let manifest = Manifest::read(&peer.catalog(), 0);
            let outcome =
                install_from_each(&receiver, &manifest, 2, Duration::from_secs(10), |_| {
                    Ok(Restarting {
                        peer: InProcess(&peer),
                        first: &first,
                        down: &down,
                    })
                });
            (outcome, down.get())
        };
        let started = Instant::now();
        let (outcome, down) = sync(1, 4);
        assert_eq!(
            outcome.expect("the peer came back and the sync finished"),
            5000
        );
        assert_eq!(down, 0);
        assert!(started.elapsed() >= NO_PEER_PAUSE, "it waited");

        // More data on the peer, the same metadata: nothing changes before the first fetch.
        append_batch(&peer);
        let (outcome, _) = sync(0, 2);
        let failed = outcome.expect_err("no peer served and nothing was changed");
        assert!(!failed.touched);
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            match entry.file_type().unwrap().is_dir() {
                true => copy_dir(&entry.path(), &target),
                false => drop(std::fs::copy(entry.path(), target).unwrap()),
            }
        }
    }

    /// A replica that already holds a checkpoint's data keeps it, fetching nothing; the
    /// object store's entries its peer recorded meanwhile (by ops before the checkpoint, which
    /// are not replayed) are recorded here too, so the next `RecordTiered` continues its
    /// manifest. Before, the manifest kept its gap and the replica stopped at that op.
    #[test]
    fn a_kept_partition_records_the_tier_entries_its_peer_holds_below_the_checkpoint() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = source(theirs.path(), 0);
        let partition = peer.catalog().streams[&0].topics[&0].partitions[0].clone();
        for _ in 0..4 {
            append_segment_of_ten(&peer);
        }
        append_ten(&peer);
        copy_dir(theirs.path(), ours.path());
        let receiver = crate::broker::open_for_tests(ours.path());

        // The peer records three of its four sealed segments as in the store; the receiver
        // applied the first of those records only.
        for start in [0, 10, 20] {
            assert!(partition.log().record_tiered(tier_entry(start)).unwrap());
        }
        let kept = receiver.catalog().streams[&0].topics[&0].partitions[0].clone();
        assert!(kept.log().record_tiered(tier_entry(0)).unwrap());
        let manifest = Manifest::read(&peer.catalog(), 0);
        let fetched = install_from_each(&receiver, &manifest, 1, Duration::from_secs(5), |_| {
            Ok(InProcess(&peer))
        })
        .expect("synced");
        assert_eq!(fetched, 0, "the data was held already");
        let catalog = receiver.catalog();
        let log = catalog.streams[&0].topics[&0].partitions[0].log();
        assert_eq!(log.tiered().0, partition.log().tiered().0);
        assert_eq!(log.tiered().0.end(), Some(30));
    }

    /// A kept partition whose own sealed segment lacks its entry (its replica had not applied
    /// that `RecordTiered` yet) fetches the segments after it: the entries the chunks name are
    /// recorded only once the manifest reaches them, so it ends up as the peer's, oldest
    /// first. Before, the first fetched segment's entry went into the empty manifest with the
    /// held segment left out, and the replayed `RecordTiered` of that one stopped the replica
    /// ("segment 0 does not continue the manifest", `make chaos` seed 38004).
    #[test]
    fn a_kept_partition_fetching_tiered_segments_records_its_own_older_entry_first() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = source(theirs.path(), 0);
        let partition = peer.catalog().streams[&0].topics[&0].partitions[0].clone();
        append_segment_of_ten(&peer);
        // The receiver holds the first segment, sealed, and nothing after it.
        copy_dir(theirs.path(), ours.path());
        let receiver = crate::broker::open_for_tests(ours.path());
        for _ in 0..3 {
            append_segment_of_ten(&peer);
        }
        append_ten(&peer);
        for start in [0, 10, 20] {
            assert!(partition.log().record_tiered(tier_entry(start)).unwrap());
        }
        let manifest = Manifest::read(&peer.catalog(), 0);
        let fetched = install_from_each(&receiver, &manifest, 1, Duration::from_secs(5), |_| {
            Ok(InProcess(&peer))
        })
        .expect("synced");
        assert_eq!(fetched, 40, "the segments after the held one");
        let catalog = receiver.catalog();
        let log = catalog.streams[&0].topics[&0].partitions[0].log();
        assert_eq!(log.tiered().0, partition.log().tiered().0);
        // The log's next RecordTiered (of the segment at 30) continues it.
        drop(log);
        let kept = catalog.streams[&0].topics[&0].partitions[0].clone();
        drop(catalog);
        assert!(kept.log().record_tiered(tier_entry(30)).unwrap());
    }

    /// A peer that serves `first` fetches, then answers every fetch as one whose local data
    /// of the partition starts past the checkpoint's end (tiered and evicted since).
    struct Overtaking<'a> {
        peer: InProcess<'a>,
        first: &'a Cell<usize>,
    }

    impl Source for Overtaking<'_> {
        fn fetch(&mut self, request: &Fetch) -> Result<Fetched, SyncError> {
            if self.first.get() == 0 {
                return Ok(Fetched::Head {
                    first_local: request.until + 10,
                    remote: Vec::new(),
                });
            }
            self.first.set(self.first.get() - 1);
            self.peer.fetch(request)
        }

        fn peer(&self) -> String {
            "an overtaking peer".into()
        }
    }

    /// When every peer's data has moved past the checkpoint for good, a sync that changed
    /// local data gives up at once (the driver restarts the replica, which syncs to a newer
    /// checkpoint) instead of waiting out the stall, which held replicas out of the protocol
    /// for 30 s (`make chaos`, seed 40013). While one peer cannot be reached it
    /// still waits: that one may hold the data.
    #[test]
    fn a_sync_every_peer_has_overtaken_gives_up_without_waiting_out_the_stall() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Twelve megabytes: three chunks.
        let peer = source(theirs.path(), 12);
        let manifest = Manifest::read(&peer.catalog(), 0);
        let receiver = crate::broker::open_for_tests(ours.path());
        let first = Cell::new(1);
        // Waiting out this stall would end in `Stalled`.
        let failed = install_from_each(&receiver, &manifest, 2, Duration::from_secs(3), |_| {
            Ok(Overtaking {
                peer: InProcess(&peer),
                first: &first,
            })
        })
        .expect_err("no peer holds the rest");
        assert!(failed.touched, "one chunk was written");
        assert!(
            matches!(failed.error, SyncError::Overtaken { .. }),
            "{:?}",
            failed.error
        );

        // One overtaken peer (after one more chunk) and one that cannot be reached: wait for
        // the stall.
        first.set(1);
        let failed =
            install_from_each(
                &receiver,
                &manifest,
                2,
                NO_PEER_PAUSE * 2,
                |index| match index {
                    0 => Ok(Overtaking {
                        peer: InProcess(&peer),
                        first: &first,
                    }),
                    _ => Err(SyncError::Connect {
                        peer: "a peer that is down".into(),
                        source: std::io::ErrorKind::ConnectionRefused.into(),
                    }),
                },
            )
            .expect_err("nothing more was served");
        assert!(failed.touched, "one more chunk was written");
        assert!(
            failed.error.to_string().contains("a peer that is down"),
            "a stall names why the peers could not serve: {}",
            failed.error
        );
        assert!(
            matches!(failed.error, SyncError::Stalled { .. }),
            "{:?}",
            failed.error
        );
    }

    /// A peer whose partition was purged after the checkpoint serves another history: what the
    /// sync fetches ends with another message than the checkpoint's. The partition is fetched
    /// again from scratch once (local data of another history looks the same); the same again
    /// from that peer is its data having moved on for good, and the sync gives up instead of
    /// fetching it again and again (the simulator hung there once its workload purged topics).
    #[test]
    fn a_sync_from_a_peer_whose_partition_was_purged_since_gives_up() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = source(theirs.path(), 0);
        append_ten(&peer);
        append_ten(&peer);
        let manifest = Manifest::read(&peer.catalog(), 0);
        let partition = peer.catalog().streams[&0].topics[&0].partitions[0].clone();
        partition.log().purge().unwrap();
        append_another_history(&peer);
        let receiver = crate::broker::open_for_tests(ours.path());
        // Fetches enough to loop a while; a peer answers as overtaken once they run out.
        let fetches = Cell::new(50);
        let failed = install_from_each(&receiver, &manifest, 2, Duration::from_secs(5), |_| {
            Ok(Overtaking {
                peer: InProcess(&peer),
                first: &fetches,
            })
        })
        .expect_err("no peer holds the checkpoint's messages");
        assert!(failed.touched);
        assert!(
            matches!(&failed.error, SyncError::Overtaken { reason, .. } if reason.contains("another message")),
            "{:?}",
            failed.error
        );
        assert_eq!(
            50 - fetches.get(),
            2,
            "fetched once, then once again from scratch"
        );
    }

    /// The same purge applied as an op of the log (a replica's graveyard keeps what it
    /// deleted until no checkpoint needs it): the peer serves the checkpoint's messages from
    /// there, and the sync completes. Before, no peer could serve them until the next
    /// checkpoint, and a cluster left idle kept the lagging replica recovering (the simulator,
    /// once its workload purged topics).
    #[test]
    fn a_peer_whose_partition_was_purged_since_serves_the_checkpoints_messages_from_its_graveyard()
    {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let peer = source(theirs.path(), 0);
        append_segment_of_ten(&peer);
        append_ten(&peer);
        let manifest = Manifest::read(&peer.catalog(), 0);
        let partition = peer.catalog().streams[&0].topics[&0].partitions[0].clone();
        graveyard::during(theirs.path(), 70, || partition.log().purge().unwrap());
        append_another_history(&peer);

        let receiver = crate::broker::open_for_tests(ours.path());
        let fetched = install_from_each(&receiver, &manifest, 1, Duration::from_secs(5), |_| {
            Ok(InProcess(&peer))
        })
        .expect("synced from the graveyard");
        assert_eq!(fetched, 20);
        let catalog = receiver.catalog();
        let log = catalog.streams[&0].topics[&0].partitions[0].log();
        let (_, _, _, until, last) = manifest.partitions[0];
        assert!(ends_as_checkpointed(&log, until, last, Beyond::Refused).unwrap());
        assert_eq!(
            partition.log().next_offset(),
            30,
            "the peer's live data is untouched"
        );
        assert!(
            !graveyard::root(theirs.path()).join("views").exists()
                || std::fs::read_dir(graveyard::root(theirs.path()).join("views"))
                    .unwrap()
                    .next()
                    .is_none(),
            "no view is left behind"
        );
    }

    /// A fetch from a build that predates `Fetch::last` still decodes.
    #[test]
    fn a_fetch_without_the_checkpoints_last_checksum_decodes() {
        let older = postcard::to_allocvec(&(3u32, 4u32, 5u32, 6u64, 7u64, Some(8u64))).unwrap();
        let fetch = Fetch::decode(&older).unwrap();
        assert_eq!(
            (
                fetch.stream,
                fetch.partition,
                fetch.until,
                fetch.created_at,
                fetch.last
            ),
            (3, 5, 7, Some(8), None)
        );
        let newer = Fetch {
            last: Some(9),
            ..fetch
        };
        let again = Fetch::decode(&postcard::to_allocvec(&newer).unwrap()).unwrap();
        assert_eq!(again.last, Some(9));
    }

    /// Peers that stop answering after the sync has written part of the data hold it only
    /// until `stall` has passed without a write: the next round gives up as stalled (and says
    /// it changed local data, so the driver restarts the replica), instead of going round the
    /// peers' timeouts again.
    #[test]
    fn a_sync_whose_peers_stop_answering_gives_up_once_it_wrote_nothing_for_the_stall() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Five megabytes: more than one chunk.
        let peer = source(theirs.path(), 5);
        let manifest = Manifest::read(&peer.catalog(), 0);
        let receiver = crate::broker::open_for_tests(ours.path());
        let answers = Cell::new(1);
        let delay = Duration::from_millis(200);
        let failed = install_from_each(&receiver, &manifest, 2, delay * 3 / 2, |_| {
            Ok(Fading {
                peer: InProcess(&peer),
                answers: &answers,
                delay,
            })
        })
        .expect_err("the peers stopped answering");
        assert!(failed.touched, "one chunk was written");
        assert!(
            matches!(failed.error, SyncError::Stalled { .. }),
            "{:?}",
            failed.error
        );
        let catalog = receiver.catalog();
        let written = catalog.streams[&0].topics[&0].partitions[0]
            .log()
            .next_offset();
        assert!(written > 0 && written < 5000, "{written}");

        // Peers that answer again finish it where it stands.
        answers.set(usize::MAX);
        drop(catalog);
        let fetched = install_from_each(&receiver, &manifest, 2, delay, |_| {
            Ok(Fading {
                peer: InProcess(&peer),
                answers: &answers,
                delay,
            })
        })
        .expect("synced");
        assert_eq!(fetched, 5000 - written);
        let (_, _, _, until, last) = manifest.partitions[0];
        let catalog = receiver.catalog();
        let log = catalog.streams[&0].topics[&0].partitions[0].log();
        assert!(ends_as_checkpointed(&log, until, last, Beyond::Refused).unwrap());
    }
}
