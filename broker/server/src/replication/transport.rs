//! TCP between replicas. Every replica listens on its replication address and keeps one
//! outgoing connection per peer (`sending`), so each direction of each pair is its own ordered
//! stream.
//!
//! A frame is `len u32`, a kind byte, then a postcard-encoded body: a `vsr::Envelope`, or a
//! state-sync fetch and its answer (`sync`), which travel on a connection of their own and are
//! answered on it. Every connection opens with a `HELLO` frame naming the wire version its
//! sender speaks; the accepting replica serves only versions it understands
//! ([`OLDEST_WIRE_VERSION`]..=[`WIRE_VERSION`]) and closes others with a log line naming both,
//! so a rolling upgrade that changes the format fails loudly instead of as decode errors. The
//! hello also opens a handshake in which each side proves it holds the cluster's replication
//! secret (`peer_auth`: `HELLO`, `CHALLENGE`, `PROOF`); no other frame is read before it ends.
//! A member with `replication.tls` on runs all of that inside TLS 1.3 (`peer_tls`), the proofs
//! bound to the session; the accepting side tells the two kinds apart by the first byte and
//! takes either.
//! Envelope delivery is best effort: a
//! message for a peer that is down, or whose queue is full, is dropped — the core retransmits
//! whatever matters, and its correctness never depends on delivery. Messages for another
//! cluster are dropped by the core (every envelope carries the cluster id).

use crate::broker::Broker;
use crate::replication::driver::DriverInput;
use crate::replication::inbound::Inbound;
use crate::replication::peer_auth::{self, Binding, ClusterSecret, Nonce, Proof, Side};
use crate::replication::peer_tls;
use crate::replication::sync;
use bytes::Bytes;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use vsr::{Envelope, Message};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("frame of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("frame does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "the replica speaks replication wire version {0}; this broker speaks versions \
         {OLDEST_WIRE_VERSION} to {WIRE_VERSION} (upgrade or roll back one of them)"
    )]
    Version(u16),
    #[error(
        "the connection did not open with a replication hello (frame kind {0}): the peer is not \
         an iggy-broker replica, or one from before wire version 1"
    )]
    NoHello(u8),
    #[error("the replication handshake expected a {expected} frame, got kind {kind}")]
    Handshake { expected: &'static str, kind: u8 },
    #[error(
        "the peer did not prove it holds this cluster's replication secret (its \
         replication.secret differs, or it belongs to another cluster)"
    )]
    Unproven,
    #[error("the TLS handshake with the peer failed: {0}")]
    Tls(std::io::Error),
    #[error("the peer opened a TLS connection and this member has no TLS for replication set up")]
    TlsUnavailable,
    #[error(transparent)]
    TlsSetup(#[from] peer_tls::PeerTlsError),
    #[error("the replication handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(
        "{HANDSHAKES_MAX} replication connections are proving themselves already; closed \
         before reading anything"
    )]
    Busy,
}

impl TransportError {
    /// Whether this closed a connection for who the peer is (another version, not a replica,
    /// no proof of the secret) or because too many were proving themselves, rather than for a
    /// network failure: worth a warning. A handshake that timed out is a network failure (a
    /// cut link stalls it the same way), so it is not one.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TransportError::Version(_)
                | TransportError::NoHello(_)
                | TransportError::Handshake { .. }
                | TransportError::Unproven
                | TransportError::Busy
                | TransportError::TlsUnavailable
                | TransportError::TlsSetup(_)
        )
    }
}

/// Frame kinds.
pub const ENVELOPE: u8 = 0;
pub const FETCH: u8 = 1;
pub const FETCHED: u8 = 2;
/// A prepare: `head_len u32`, the envelope with an empty body, then the body, so neither side
/// copies the batch into or out of an encoding.
pub const PREPARE: u8 = 3;
/// The first frame of every connection: [`HELLO_MAGIC`], the sender's wire version and its
/// handshake nonce.
pub const HELLO: u8 = 4;
/// The accepting side's answer to a hello: its nonce and its proof of the secret.
pub const CHALLENGE: u8 = 5;
/// The connecting side's proof of the secret: the handshake's last frame.
pub const PROOF: u8 = 6;
/// A member's room on its data filesystem ([`SpaceReport`], `space.rs`). Sent only to a peer
/// whose challenge named wire revision [`SPACE_SINCE_REVISION`] or later: an older one closes
/// the connection on a frame kind it does not know.
pub const SPACE: u8 = 7;
/// Additions within [`WIRE_VERSION`] that older builds of that version neither send nor read:
/// the accepting side names the revision it reads after its challenge's proof, and a sender
/// uses an addition only with peers that named it. A challenge that names none is revision 0
/// (it predates revisions; postcard leaves the trailing field unread, so such a build reads a
/// newer challenge as before). The hello keeps naming the version alone, so an older build of
/// the same version accepts a newer one's connections: a bump of the version would be refused.
///
/// 1: [`SPACE`] frames.
/// 2: the broker applies the operations that put configured settings in force
/// (`SetDeduplication`, `SetStateSettings`): not a frame, but what a prepare may carry. A
/// build that cannot decode one stops applying the log, so a primary issues them only while
/// the ring reads this revision (`ClusterStatus::ring_reads`).
pub const WIRE_REVISION: u16 = 2;
/// The first revision that takes [`SPACE`] frames.
pub const SPACE_SINCE_REVISION: u16 = 1;
/// The first revision whose broker applies `SetDeduplication` and `SetStateSettings`.
pub const SETTINGS_SINCE_REVISION: u16 = 2;
/// The revision of an accepting side whose challenge names none.
const UNNAMED_REVISION: u16 = 0;
// A replica that names no revision must never be sent a frame kind it does not know.
const _: () = assert!(UNNAMED_REVISION < SPACE_SINCE_REVISION);

/// A replica's room on its data filesystem (`space::room`), and the last op it had applied
/// when it looked: what the primary needs to refuse sends before this replica's disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpaceReport {
    pub position: vsr::ReplicaId,
    pub applied: vsr::Op,
    pub room: u64,
}

const HELLO_MAGIC: [u8; 4] = *b"IGVR";
/// The replication wire format this build speaks. Bump it with any change to frames, envelopes
/// or sync messages, and keep [`OLDEST_WIRE_VERSION`] at the oldest one still understood.
///
/// 2: reconfiguration (`RequestStartEpoch` and `StartEpoch`, and checkpoints carrying their
/// membership). Version 1 cannot decode a version-2 checkpoint, so 2 is also the oldest: a
/// rolling upgrade across it keeps a quorum (the restarted members talk to each other, and the
/// primary, restarted last, hands over first).
///
/// 3: a DoViewChange's vote carries its log as checksums (`vsr::view_change::Vote::vouched`
/// and `readable`), its anchor alone whole, and a RequestStartView names the ops its sender
/// holds (`holds`). Version-2 messages do not decode as these, so 3 is the oldest too, with
/// the same rolling-upgrade argument.
///
/// 4: the hello carries a nonce and opens the secret handshake (`peer_auth`). A version-3
/// replica would never prove itself, so 4 is the oldest as well.
///
/// Not bumped for `EpochStartedAt`, a message appended after the others: every message an
/// older build of version 4 sends or expects encodes as before. An older build that gets the
/// new one closes the connection on it (a decoding error, logged) and the sender reconnects;
/// it is sent only to a replica of an older epoch by a member whose log lost its epoch's
/// start, a pair the older build could not get out of anyway. A bump would have cost every
/// cluster a stop-the-world upgrade (docs/operator.md) for that rare pair.
///
/// Not bumped for [`SPACE`] either, which an older build never gets ([`WIRE_REVISION`]).
///
/// Nor for `sync::Fetch::last`, appended to a fetch: an older build leaves it unread, and
/// `sync::Fetch::decode` reads an older build's fetch without it.
pub const WIRE_VERSION: u16 = 4;
pub const OLDEST_WIRE_VERSION: u16 = 4;

/// Largest handshake frame (kind and body); a hello is about 40 bytes, a challenge about 70.
const HANDSHAKE_FRAME_MAX: usize = 128;
/// How long either side waits for the other's handshake frames.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most accepted connections in their handshake at once. Peers finish theirs in a round trip,
/// and a member has a handful of connections (one per peer, plus syncs and repairs); the bound
/// keeps connections from strangers from using up descriptors and memory.
pub const HANDSHAKES_MAX: usize = 64;

/// The frame a connection opens with.
pub fn hello(nonce: &Nonce) -> Vec<u8> {
    encode_frame(HELLO, &(HELLO_MAGIC, WIRE_VERSION, nonce)).unwrap_or_default()
}

/// Checks the first frame of a connection (its kind and body, the length already read):
/// returns the sender's wire version and nonce.
pub fn check_hello(kind: u8, body: &[u8]) -> Result<(u16, Nonce), TransportError> {
    if kind != HELLO {
        return Err(TransportError::NoHello(kind));
    }
    // Magic and version first: an older replica's hello, whatever follows them, is refused
    // by its version rather than as a decoding error.
    let ((magic, version), rest): (([u8; 4], u16), _) = postcard::take_from_bytes(body)?;
    if magic != HELLO_MAGIC {
        return Err(TransportError::NoHello(kind));
    }
    if !(OLDEST_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(TransportError::Version(version));
    }
    let nonce: Nonce = postcard::from_bytes(rest)?;
    Ok((version, nonce))
}

/// The connecting side of the handshake.
pub struct Greeting {
    secret: ClusterSecret,
    nonce: Nonce,
    binding: Binding,
}

impl Greeting {
    /// A fresh nonce, and the hello frame that carries it, on a connection bound to `binding`.
    pub fn new(
        secret: &ClusterSecret,
        binding: Binding,
    ) -> Result<(Self, Vec<u8>), TransportError> {
        let nonce = peer_auth::nonce()?;
        let greeting = Self {
            secret: secret.clone(),
            nonce,
            binding,
        };
        Ok((greeting, hello(&nonce)))
    }

    /// Checks the accepting side's challenge frame; returns the proof frame to send.
    pub fn answer(&self, kind: u8, body: &[u8]) -> Result<Vec<u8>, TransportError> {
        if kind != CHALLENGE {
            return Err(TransportError::Handshake {
                expected: "challenge",
                kind,
            });
        }
        let (accepting, proof): (Nonce, Proof) = postcard::from_bytes(body)?;
        if !self.secret.verify(
            Side::Accepting,
            &self.nonce,
            &accepting,
            &self.binding,
            &proof,
        ) {
            return Err(TransportError::Unproven);
        }
        let ours = self
            .secret
            .proof(Side::Connecting, &self.nonce, &accepting, &self.binding);
        Ok(encode_frame(PROOF, &ours)?)
    }
}

/// The wire revision the accepting side reads ([`WIRE_REVISION`]), from its challenge's body.
pub fn accepting_revision(body: &[u8]) -> u16 {
    postcard::take_from_bytes::<(Nonce, Proof)>(body)
        .ok()
        .and_then(|(_, rest)| postcard::from_bytes::<u16>(rest).ok())
        .unwrap_or(UNNAMED_REVISION)
}

/// The accepting side of the handshake.
pub struct Challenge {
    secret: ClusterSecret,
    connecting: Nonce,
    accepting: Nonce,
    binding: Binding,
}

impl Challenge {
    /// Checks a connection's hello; returns the challenge frame to answer it with, on a
    /// connection bound to `binding`.
    pub fn new(
        secret: &ClusterSecret,
        binding: Binding,
        kind: u8,
        body: &[u8],
    ) -> Result<(Self, Vec<u8>), TransportError> {
        let (_, connecting) = check_hello(kind, body)?;
        let accepting = peer_auth::nonce()?;
        let proof = secret.proof(Side::Accepting, &connecting, &accepting, &binding);
        let frame = encode_frame(CHALLENGE, &(accepting, proof, WIRE_REVISION))?;
        let challenge = Self {
            secret: secret.clone(),
            connecting,
            accepting,
            binding,
        };
        Ok((challenge, frame))
    }

    /// Checks the connecting side's proof frame.
    pub fn check(&self, kind: u8, body: &[u8]) -> Result<(), TransportError> {
        if kind != PROOF {
            return Err(TransportError::Handshake {
                expected: "proof",
                kind,
            });
        }
        let proof: Proof = postcard::from_bytes(body)?;
        match self.secret.verify(
            Side::Connecting,
            &self.connecting,
            &self.accepting,
            &self.binding,
            &proof,
        ) {
            true => Ok(()),
            false => Err(TransportError::Unproven),
        }
    }
}

/// The length of a handshake frame, checked; `first` says whether it opens the connection
/// (then anything else is not a replica's hello).
fn handshake_frame_len(len: u32, first: bool) -> Result<usize, TransportError> {
    let len = len as usize;
    match len {
        1..=HANDSHAKE_FRAME_MAX => Ok(len),
        _ if first => Err(TransportError::NoHello(0)),
        _ => Err(TransportError::TooLarge(len, HANDSHAKE_FRAME_MAX)),
    }
}

/// Reads one handshake frame: its kind and body.
async fn read_handshake_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    first: bool,
) -> Result<(u8, Vec<u8>), TransportError> {
    let len = handshake_frame_len(reader.read_u32_le().await?, first)?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    let body = frame.split_off(1);
    Ok((frame[0], body))
}

/// Reads one handshake frame from a blocking stream (state sync's connections).
pub fn read_handshake_frame_blocking<R: std::io::Read>(
    reader: &mut R,
) -> Result<(u8, Vec<u8>), TransportError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = handshake_frame_len(u32::from_le_bytes(len), false)?;
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame)?;
    let body = frame.split_off(1);
    Ok((frame[0], body))
}

/// A connection this member opened to a peer, greeted: over TLS when `replication.tls` is on.
pub enum Opened {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The connecting side's handshake on a fresh connection (TLS first, when this member opens
/// its connections over TLS), bounded by [`HANDSHAKE_TIMEOUT`]; returns the connection and
/// the wire revision the accepting side reads.
pub async fn open(
    stream: TcpStream,
    secret: &ClusterSecret,
) -> Result<(Opened, u16), TransportError> {
    let handshake = async {
        match secret.opening_tls() {
            None => {
                let mut stream = stream;
                let revision = connect_handshake(&mut stream, secret, Binding::Plain).await?;
                Ok((Opened::Plain(stream), revision))
            }
            Some(tls) => {
                let mut stream = tls
                    .connector()?
                    .connect(peer_tls::peer_name(), stream)
                    .await
                    .map_err(TransportError::Tls)?;
                let binding = peer_tls::binding(stream.get_ref().1)?;
                let revision = connect_handshake(&mut stream, secret, binding).await?;
                Ok((Opened::Tls(Box::new(stream)), revision))
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(TransportError::HandshakeTimeout(HANDSHAKE_TIMEOUT)))
}

/// The connecting side's frames of the secret handshake.
async fn connect_handshake<S>(
    stream: &mut S,
    secret: &ClusterSecret,
    binding: Binding,
) -> Result<u16, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (greeting, hello) = Greeting::new(secret, binding)?;
    stream.write_all(&hello).await?;
    stream.flush().await?;
    let (kind, body) = read_handshake_frame(stream, false).await?;
    let proof = greeting.answer(kind, &body)?;
    stream.write_all(&proof).await?;
    stream.flush().await?;
    Ok(accepting_revision(&body))
}

/// A connection this replica's port admitted.
enum Accepted {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The accepting side: TLS if the connection opens with a TLS record (whatever this member's
/// own `replication.tls`, so a ring changes it one member at a time), then the secret
/// handshake; bounded by [`HANDSHAKE_TIMEOUT`].
async fn accept(stream: TcpStream, secret: &ClusterSecret) -> Result<Accepted, TransportError> {
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match (first[0], secret.accepting_tls()) {
            (peer_tls::TLS_HANDSHAKE_RECORD, Some(tls)) => {
                let mut stream = tls
                    .acceptor()?
                    .accept(stream)
                    .await
                    .map_err(TransportError::Tls)?;
                let binding = peer_tls::binding(stream.get_ref().1)?;
                accept_handshake(&mut stream, secret, binding).await?;
                Ok(Accepted::Tls(Box::new(stream)))
            }
            (peer_tls::TLS_HANDSHAKE_RECORD, None) => Err(TransportError::TlsUnavailable),
            _ => {
                let mut stream = stream;
                accept_handshake(&mut stream, secret, Binding::Plain).await?;
                Ok(Accepted::Plain(stream))
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(TransportError::HandshakeTimeout(HANDSHAKE_TIMEOUT)))
}

/// The accepting side's frames of the secret handshake.
async fn accept_handshake<S>(
    stream: &mut S,
    secret: &ClusterSecret,
    binding: Binding,
) -> Result<(), TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (kind, body) = read_handshake_frame(stream, true).await?;
    let (challenge, frame) = Challenge::new(secret, binding, kind, &body)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let (kind, body) = read_handshake_frame(stream, false).await?;
    challenge.check(kind, &body)
}

/// Room for a frame without a body (a header, a vote, an acknowledgement) from the start: a
/// buffer grown from empty was reallocated and copied a few times per message.
const SMALL_FRAME: usize = 256;

/// Encodes a value as a frame of `kind`.
pub fn encode_frame<T: serde::Serialize>(kind: u8, value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut frame = Vec::with_capacity(SMALL_FRAME);
    frame.extend_from_slice(&[0, 0, 0, 0, kind]);
    let mut frame = postcard::to_extend(value, frame)?;
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Encodes an envelope as a frame: its head, and a prepare's body kept as it is.
pub fn encode(envelope: &Envelope) -> Result<Frame, postcard::Error> {
    let Message::Prepare { view, prepare } = &envelope.message else {
        return Ok(Arc::new(OutFrame {
            head: encode_frame(ENVELOPE, envelope)?,
            body: Bytes::new(),
        }));
    };
    let bare = Envelope {
        cluster: envelope.cluster,
        group: envelope.group,
        epoch: envelope.epoch,
        from: envelope.from,
        to: envelope.to,
        message: Message::Prepare {
            view: *view,
            prepare: vsr::Prepare {
                header: prepare.header.clone(),
                body: Bytes::new(),
            },
        },
    };
    // Length, kind and the head's length first, filled in once the head is encoded after them.
    let mut head = Vec::with_capacity(SMALL_FRAME);
    head.extend_from_slice(&[0, 0, 0, 0, PREPARE, 0, 0, 0, 0]);
    let mut head = postcard::to_extend(&bare, head)?;
    let encoded = head.len() - 9;
    let len = 1 + 4 + encoded + prepare.body.len();
    head[..4].copy_from_slice(&(len as u32).to_le_bytes());
    head[5..9].copy_from_slice(&(encoded as u32).to_le_bytes());
    Ok(Arc::new(OutFrame {
        head,
        body: prepare.body.clone(),
    }))
}

/// An encoded frame, shared by the queues of every peer it goes to: its encoded head and the
/// bytes that follow it unencoded (a prepare's body; empty otherwise).
pub struct OutFrame {
    head: Vec<u8>,
    body: Bytes,
}
pub type Frame = Arc<OutFrame>;

impl OutFrame {
    /// Bytes on the wire (never zero: a frame has at least its length and kind).
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether it carries a prepare.
    pub fn is_prepare(&self) -> bool {
        self.head.get(4) == Some(&PREPARE)
    }

    /// Whether it is a [`SPACE`] report.
    pub fn is_space(&self) -> bool {
        self.head.get(4) == Some(&SPACE)
    }

    /// A frame of `kind` carrying `value`, with nothing after it.
    pub fn small<T: serde::Serialize>(kind: u8, value: &T) -> Result<Frame, postcard::Error> {
        Ok(Arc::new(OutFrame {
            head: encode_frame(kind, value)?,
            body: Bytes::new(),
        }))
    }

    /// Its bytes in the order they go out.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, &self.body]
    }
}

/// What a peer's connection task is handed: a frame the replica thread encoded, the rest of one
/// the replica thread began to write (`sending`), or a message carrying large prepares that the
/// task verifies and encodes itself ([`worth_deferring`]).
pub enum Outgoing {
    Encoded(Frame),
    /// The frame from this byte on.
    Rest(Frame, usize),
    Deferred(Deferred),
}

impl Outgoing {
    /// Whether it is a whole [`SPACE`] report (a part-written one must be finished).
    pub fn is_space(&self) -> bool {
        matches!(self, Outgoing::Encoded(frame) if frame.is_space())
    }
}

/// A message the connection task verifies and encodes.
pub struct Deferred {
    envelope: Box<Envelope>,
    /// Bodies of ops up to here may have been read back from the WAL: verified before they
    /// leave (`mapped::rotten`).
    verify_through: vsr::Op,
}

/// Prepares' bytes from which a message (other than a prepare, which is encoded once for all
/// its peers) is encoded by the connection task instead of the replica thread.
const DEFER_FROM: usize = 256 << 10;

/// Whether `message` is encoded by the connection task: it carries at least [`DEFER_FROM`]
/// bytes of prepares and is not a prepare. A view's log or a catch-up can be tens of MiB; read
/// through the WAL mappings, verified and copied into a frame on the replica thread, it held
/// up everything queued behind it.
pub fn worth_deferring(message: &Message) -> bool {
    !matches!(message, Message::Prepare { .. })
        && message
            .prepares()
            .iter()
            .map(|p| p.body.len())
            .sum::<usize>()
            >= DEFER_FROM
}

impl Deferred {
    pub fn new(envelope: Envelope, verify_through: vsr::Op) -> Self {
        Self {
            envelope: Box::new(envelope),
            verify_through,
        }
    }

    /// The frame to write, its read-back bodies verified first. `None` when it does not
    /// encode (logged; the core resends what matters).
    pub fn into_frame(self) -> Option<Frame> {
        let prepares = self.envelope.message.prepares();
        if let Some(prepare) = super::mapped::rotten(prepares, self.verify_through) {
            super::mapped::stop_over_rot(prepare);
        }
        encode(&self.envelope)
            .map_err(|e| tracing::error!(error = %e, "cannot encode a replication message"))
            .ok()
    }
}

/// Reads the rest of a `PREPARE` frame of `len` bytes (its kind already read): the body lands
/// in a buffer of its own that becomes the prepare's body without a copy.
async fn read_prepare<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Envelope, TransportError> {
    let head_len = reader.read_u32_le().await? as usize;
    let body_len = len
        .checked_sub(1 + 4 + head_len)
        .ok_or(TransportError::TooLarge(head_len, len))?;
    let mut head = vec![0u8; head_len];
    reader.read_exact(&mut head).await?;
    let body = read_body(reader, body_len).await?;
    let mut envelope: Envelope = postcard::from_bytes(&head)?;
    if let Message::Prepare { prepare, .. } = &mut envelope.message {
        prepare.body = body;
    }
    Ok(envelope)
}

/// Reads exactly `len` bytes into uninitialised capacity: zeroing a megabyte first only to
/// overwrite it showed up as ~3 % of a backup's CPU.
async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> std::io::Result<Bytes> {
    let mut body = bytes::BytesMut::with_capacity(len);
    let mut limited = reader.take(len as u64);
    while body.len() < len {
        if limited.read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body.freeze())
}

/// What every connection from a peer shares.
#[derive(Clone)]
pub struct Receiving {
    /// To the replica thread.
    pub inputs: Sender<DriverInput>,
    /// How much of what was sent there the replica thread has yet to take.
    pub inbound: Arc<Inbound>,
    /// Answers state-sync fetches.
    pub broker: Arc<Broker>,
    pub max_frame: usize,
    /// What a connecting peer must prove it holds.
    pub secret: ClusterSecret,
    /// Slots for connections still in their handshake ([`HANDSHAKES_MAX`]).
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

impl Receiving {
    /// Hands `envelope` to the replica thread, unless too much is queued there already
    /// (dropped and counted). `false` once the replica thread is gone.
    fn deliver(&self, envelope: Envelope) -> bool {
        if !self.inbound.admit(&envelope) {
            self.broker
                .metrics
                .replication_inbound_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        self.inputs.send(DriverInput::Envelope(envelope)).is_ok()
    }
}

/// Accepts replica connections and feeds what they carry to the driver; answers state-sync
/// fetches from the broker's data.
pub async fn serve(listener: TcpListener, receiving: Receiving, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let receiving = receiving.clone();
                tokio::spawn(async move {
                    match receive_loop(stream, &receiving).await {
                        // Counted, not logged: a flood of connections would flood the log.
                        Err(TransportError::Busy) => {
                            if let Some(status) = receiving.broker.cluster_status() {
                                status.count_refusal();
                            }
                        }
                        Err(e) if e.is_refusal() => {
                            if let Some(status) = receiving.broker.cluster_status() {
                                status.count_refusal();
                            }
                            tracing::warn!(%peer, error = %e, "refused a replication connection");
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "replica connection closed"),
                        Ok(()) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a replica connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The largest frame buffer a connection keeps between frames.
const FRAME_BUFFER_KEEP: usize = 1 << 20;

/// Makes `frame` `len` bytes long for the next frame. A buffer grown for a large one (a view
/// change's or a catch-up's log: tens of MiB) is let go at the next ordinary frame instead of
/// staying allocated for the connection's life — it kept a restarted replica at ~78 MiB, the
/// StartView it had caught up with.
fn size_frame_buffer(frame: &mut Vec<u8>, len: usize) {
    if frame.capacity() > FRAME_BUFFER_KEEP && len <= FRAME_BUFFER_KEEP {
        *frame = Vec::new();
    }
    frame.resize(len, 0);
}

async fn receive_loop(stream: TcpStream, receiving: &Receiving) -> Result<(), TransportError> {
    let accepted = {
        // Until it has proven itself a connection holds one of few slots and no large buffer
        // (the handshake reads exact lengths, so nothing after the proof is read early).
        let Ok(_slot) = receiving.handshakes.clone().try_acquire_owned() else {
            return Err(TransportError::Busy);
        };
        accept(stream, &receiving.secret).await?
    };
    let status = receiving.broker.cluster_status();
    match accepted {
        Accepted::Plain(stream) => {
            if let Some(status) = status {
                status.count_accepted(false);
            }
            let (reader, writer) = stream.into_split();
            receive_frames(reader, writer, receiving).await
        }
        Accepted::Tls(stream) => {
            if let Some(status) = status {
                status.count_accepted(true);
            }
            let (reader, writer) = tokio::io::split(*stream);
            receive_frames(reader, writer, receiving).await
        }
    }
}

/// Reads an admitted connection's frames until it closes.
async fn receive_frames<R, W>(
    reader: R,
    mut writer: W,
    receiving: &Receiving,
) -> Result<(), TransportError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let max_frame = receiving.max_frame;
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
    let mut frame = Vec::new();
    loop {
        let len = reader.read_u32_le().await? as usize;
        if len == 0 || len > max_frame {
            return Err(TransportError::TooLarge(len, max_frame));
        }
        let kind = reader.read_u8().await?;
        if kind == PREPARE {
            let envelope = read_prepare(&mut reader, len).await?;
            if !receiving.deliver(envelope) {
                return Ok(());
            }
            continue;
        }
        size_frame_buffer(&mut frame, len - 1);
        reader.read_exact(&mut frame).await?;
        match kind {
            ENVELOPE => {
                let envelope: Envelope = postcard::from_bytes(&frame)?;
                if !receiving.deliver(envelope) {
                    return Ok(());
                }
            }
            SPACE => {
                let report: SpaceReport = postcard::from_bytes(&frame)?;
                if let Some(status) = receiving.broker.cluster_status() {
                    status.record_space(report);
                }
            }
            FETCH => {
                let request = sync::Fetch::decode(&frame)?;
                let broker = receiving.broker.clone();
                let answer = tokio::task::spawn_blocking(move || sync::serve(&broker, &request))
                    .await
                    .unwrap_or_else(|e| sync::Fetched::Refused(e.to_string()));
                writer.write_all(&encode_frame(FETCHED, &answer)?).await?;
                writer.flush().await?;
            }
            other => {
                return Err(TransportError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown frame kind {other}"),
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        (frame[4], &frame[5..])
    }

    fn start_view(body_len: usize, ops: u64) -> Envelope {
        let root = vsr::Prepare::root(1, 1, 0);
        let mut log = vec![root];
        for op in 1..=ops {
            let mut header = log[0].header.clone();
            header.op = op;
            header.parent = log.last().map_or(0, vsr::Prepare::checksum);
            log.push(vsr::Prepare::new(header, vec![op as u8; body_len]));
        }
        Envelope {
            cluster: 1,
            group: 1,
            epoch: 0,
            from: vsr::Node::Replica(0),
            to: vsr::Node::Replica(1),
            message: Message::StartView {
                view: 1,
                log,
                commit: 0,
            },
        }
    }

    #[test]
    fn large_messages_other_than_prepares_are_encoded_by_the_connection_task_to_the_same_bytes() {
        let small = start_view(1000, 4);
        assert!(!worth_deferring(&small.message));
        let large = start_view(64 << 10, 8);
        assert!(worth_deferring(&large.message), "512 KiB of prepares");
        let Message::StartView { log, .. } = &large.message else {
            unreachable!()
        };
        let prepare = Message::Prepare {
            view: 1,
            prepare: vsr::Prepare::new(log[1].header.clone(), vec![0; 1 << 20]),
        };
        assert!(
            !worth_deferring(&prepare),
            "prepares are encoded once for all peers"
        );

        let inline = encode(&large).unwrap();
        let deferred = Deferred::new(large, 8);
        let frame = deferred.into_frame().expect("encodes");
        assert_eq!((&frame.head, &frame.body), (&inline.head, &inline.body));
    }

    /// A prepare's frame, head encoded in place behind its lengths and body unencoded after
    /// it, reads back as the envelope it was made from.
    #[tokio::test]
    async fn a_prepare_frame_reads_back_as_its_envelope() {
        let Message::StartView { log, .. } = start_view(100, 2).message else {
            unreachable!()
        };
        let envelope = Envelope {
            cluster: 7,
            group: 1,
            epoch: 3,
            from: vsr::Node::Replica(0),
            to: vsr::Node::Replica(2),
            message: Message::Prepare {
                view: 4,
                prepare: vsr::Prepare::new(log[1].header.clone(), vec![9; 3000]),
            },
        };
        let frame = encode(&envelope).unwrap();
        let wire: Vec<u8> = [frame.head.as_slice(), &frame.body].concat();
        let len = u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 4);
        assert_eq!(wire[4], PREPARE);
        let mut rest = &wire[5..];
        let read = read_prepare(&mut rest, len).await.expect("reads back");
        assert_eq!(read, envelope);
        assert!(rest.is_empty());
    }

    #[test]
    fn a_frame_buffer_grown_for_a_large_frame_is_let_go_at_the_next_small_one() {
        let mut frame = Vec::new();
        size_frame_buffer(&mut frame, 40 << 20);
        assert_eq!(frame.len(), 40 << 20);
        size_frame_buffer(&mut frame, 50 << 20);
        assert!(
            frame.capacity() >= 50 << 20,
            "large after large keeps growing"
        );
        size_frame_buffer(&mut frame, 100);
        assert_eq!(frame.len(), 100);
        assert!(frame.capacity() <= FRAME_BUFFER_KEEP);
        size_frame_buffer(&mut frame, 200);
        assert_eq!(frame.len(), 200);
    }

    #[test]
    fn a_hello_names_the_wire_version_and_others_are_refused() {
        let nonce = [9u8; peer_auth::NONCE_LEN];
        let ours = hello(&nonce);
        let (kind, body) = split(&ours);
        assert_eq!(check_hello(kind, body).unwrap(), (WIRE_VERSION, nonce));

        let future = encode_frame(HELLO, &(HELLO_MAGIC, WIRE_VERSION + 1, nonce)).unwrap();
        let (kind, body) = split(&future);
        let refused = check_hello(kind, body).unwrap_err();
        assert!(matches!(refused, TransportError::Version(v) if v == WIRE_VERSION + 1));
        assert!(
            refused.to_string().contains("speaks versions 4 to 4"),
            "{refused}"
        );

        // A version-1 peer (before reconfiguration) cannot read our checkpoints, a version-2
        // one our votes, and a version-3 one (its hello has no nonce) cannot prove the secret:
        // refused by version, not as a decoding error.
        for old in [1u16, 2, 3] {
            let hello = encode_frame(HELLO, &(HELLO_MAGIC, old)).unwrap();
            let (kind, body) = split(&hello);
            assert!(matches!(
                check_hello(kind, body),
                Err(TransportError::Version(v)) if v == old
            ));
        }

        let stranger = encode_frame(HELLO, &(*b"HTTP", WIRE_VERSION, nonce)).unwrap();
        let (kind, body) = split(&stranger);
        assert!(matches!(
            check_hello(kind, body),
            Err(TransportError::NoHello(_))
        ));
        assert!(matches!(
            check_hello(ENVELOPE, body),
            Err(TransportError::NoHello(0))
        ));
    }

    #[test]
    fn a_message_appended_within_version_4_leaves_the_others_encoded_as_before() {
        // postcard writes a variant's index first: the ones older builds know keep theirs.
        let request = Message::RequestStartEpoch { replica: 3 };
        assert_eq!(postcard::to_stdvec(&request).unwrap(), vec![16, 3]);
        let start = Message::StartEpoch { log: Vec::new() };
        assert_eq!(postcard::to_stdvec(&start).unwrap(), vec![17, 0]);
        let named = Message::EpochStartedAt {
            start: 12,
            checksum: 1,
        };
        let bytes = postcard::to_stdvec(&named).unwrap();
        assert_eq!(bytes[..2], [18, 12]);
        assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), named);
    }

    #[test]
    fn a_challenge_names_its_revision_and_reads_as_an_older_one_without_it() {
        let secret = ClusterSecret::new("one secret for the ring", "prod");
        let (greeting, hello) = Greeting::new(&secret, Binding::Plain).unwrap();
        let (kind, body) = split(&hello);
        // The hello names the version alone, which builds from before revisions accept.
        assert_eq!(check_hello(kind, body).unwrap().0, 4);
        let (_, challenge) = Challenge::new(&secret, Binding::Plain, kind, body).unwrap();
        let (kind, body) = split(&challenge);
        assert_eq!(accepting_revision(body), WIRE_REVISION);
        assert!(accepting_revision(body) >= SPACE_SINCE_REVISION);
        assert!(greeting.answer(kind, body).is_ok());
        // What a build from before revisions decodes: the nonce and the proof, the rest left.
        let (nonce, proof): (Nonce, Proof) = postcard::from_bytes(body).unwrap();

        let older = encode_frame(CHALLENGE, &(nonce, proof)).unwrap();
        let (kind, body) = split(&older);
        assert_eq!(accepting_revision(body), 0, "an older build's challenge");
        assert!(greeting.answer(kind, body).is_ok());
    }

    /// Runs the accepting side's handshake on one end of a pipe and `connecting` on the other;
    /// returns both results.
    async fn handshake_with<F, Fut>(
        secret: &ClusterSecret,
        connecting: F,
    ) -> (Result<(), TransportError>, Result<(), TransportError>)
    where
        F: FnOnce(tokio::io::DuplexStream) -> Fut,
        Fut: std::future::Future<Output = Result<(), TransportError>>,
    {
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let accepting = async { accept_handshake(&mut ours, secret, Binding::Plain).await };
        let (accepted, connected) = tokio::join!(accepting, connecting(theirs));
        (accepted, connected)
    }

    /// The connecting side's steps over any stream (the broker's own run over a TcpStream).
    async fn connect_over(
        mut stream: tokio::io::DuplexStream,
        secret: ClusterSecret,
    ) -> Result<(), TransportError> {
        let (greeting, hello) = Greeting::new(&secret, Binding::Plain)?;
        stream.write_all(&hello).await?;
        let (kind, body) = read_handshake_frame(&mut stream, false).await?;
        // On an error the stream is dropped, so the accepting side sees it end.
        let proof = greeting.answer(kind, &body)?;
        stream.write_all(&proof).await?;
        Ok(())
    }

    #[tokio::test]
    async fn replicas_holding_the_same_secret_admit_each_other() {
        let secret = ClusterSecret::new("one secret for the ring", "prod");
        let theirs = secret.clone();
        let (accepted, connected) =
            handshake_with(&secret, |stream| connect_over(stream, theirs)).await;
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn a_peer_with_another_secret_or_cluster_is_refused_by_both_sides() {
        let secret = ClusterSecret::new("one secret for the ring", "prod");
        for stranger in [
            ClusterSecret::new("a guess at the secret!", "prod"),
            ClusterSecret::new("one secret for the ring", "staging"),
        ] {
            let (accepted, connected) =
                handshake_with(&secret, |stream| connect_over(stream, stranger)).await;
            // The connecting side finds the accepting side's proof wrong and never proves
            // itself; the accepting side sees the connection end before a proof.
            assert!(
                matches!(connected, Err(TransportError::Unproven)),
                "{connected:?}"
            );
            assert!(accepted.is_err());
        }
    }

    #[tokio::test]
    async fn frames_before_a_proof_are_refused_unread() {
        let secret = ClusterSecret::new("one secret for the ring", "prod");
        let (accepted, _) = handshake_with(&secret, |mut stream| async move {
            let (_, hello) = Greeting::new(&ClusterSecret::new("x", "prod"), Binding::Plain)?;
            stream.write_all(&hello).await?;
            let _ = read_handshake_frame(&mut stream, false).await?;
            // A fetch where the proof belongs.
            let fetch = encode_frame(
                FETCH,
                &sync::Fetch {
                    stream: 1,
                    topic: 1,
                    partition: 0,
                    from: 0,
                    until: 10,
                    created_at: None,
                    last: None,
                },
            )?;
            stream.write_all(&fetch).await?;
            Ok(())
        })
        .await;
        assert!(
            matches!(
                accepted,
                Err(TransportError::Handshake {
                    expected: "proof",
                    kind: FETCH
                })
            ),
            "{accepted:?}"
        );

        // A proof of the right shape but made up.
        let knows_the_format = secret.clone();
        let (accepted, _) = handshake_with(&secret, |mut stream| async move {
            let (_, hello) = Greeting::new(&knows_the_format, Binding::Plain)?;
            stream.write_all(&hello).await?;
            let _ = read_handshake_frame(&mut stream, false).await?;
            stream.write_all(&encode_frame(PROOF, &[7u8; 32])?).await?;
            Ok(())
        })
        .await;
        assert!(
            matches!(accepted, Err(TransportError::Unproven)),
            "{accepted:?}"
        );
    }

    /// Arbitrary bytes where a handshake belongs — random, or a real hello followed by
    /// random or bit-flipped proofs — never panic either side and are never admitted.
    #[tokio::test]
    async fn no_byte_stream_without_the_secret_is_admitted() {
        let secret = ClusterSecret::new("one secret for the ring", "prod");
        let mut rng = fastrand::Rng::with_seed(0x1667);
        for case in 0..1500 {
            let mut stream = Vec::new();
            match case % 3 {
                0 => stream.extend((0..rng.usize(0..300)).map(|_| rng.u8(..))),
                _ => {
                    let (_, hello) = Greeting::new(&secret, Binding::Plain).expect("nonce");
                    stream.extend_from_slice(&hello);
                    let mut proof = encode_frame(PROOF, &[rng.u8(..); 32]).expect("frame");
                    if case % 3 == 2 {
                        // A valid-looking frame with a byte of its header or body flipped.
                        let at = rng.usize(..proof.len());
                        proof[at] ^= 1 << rng.u8(0..8);
                    }
                    stream.extend_from_slice(&proof);
                }
            }
            let (accepted, _) = handshake_with(&secret, |mut theirs| {
                let stream = stream.clone();
                async move {
                    theirs.write_all(&stream).await?;
                    Ok(())
                }
            })
            .await;
            assert!(accepted.is_err(), "case {case} admitted: {stream:?}");

            let body: Vec<u8> = (0..rng.usize(0..100)).map(|_| rng.u8(..)).collect();
            let (greeting, _) = Greeting::new(&secret, Binding::Plain).expect("nonce");
            assert!(greeting.answer(CHALLENGE, &body).is_err(), "case {case}");
        }
    }

    /// A member's credentials: the ring's secret, and TLS for its own connections or not.
    fn member(tls: bool) -> ClusterSecret {
        ClusterSecret::new("one secret for the ring", "prod")
            .with_tls(peer_tls::PeerTls::generate(tls).expect("generate"))
    }

    /// Accepts one connection on a loopback port with `accepting` and opens it with
    /// `connecting`, through `relay` when given (it gets both sockets); returns both sides'
    /// results.
    async fn over_loopback<R, Fut>(
        accepting: &ClusterSecret,
        connecting: &ClusterSecret,
        relay: Option<R>,
    ) -> (Result<bool, TransportError>, Result<bool, TransportError>)
    where
        R: FnOnce(TcpStream, TcpStream) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = async {
            let (stream, _) = listener.accept().await?;
            accept(stream, accepting)
                .await
                .map(|accepted| matches!(accepted, Accepted::Tls(_)))
        };
        let opened = async {
            let stream = match relay {
                None => TcpStream::connect(address).await?,
                Some(relay) => {
                    let front = TcpListener::bind("127.0.0.1:0").await?;
                    let front_address = front.local_addr()?;
                    let ours = TcpStream::connect(front_address);
                    let (ours, theirs) = tokio::join!(ours, front.accept());
                    let onward = TcpStream::connect(address).await?;
                    tokio::spawn(relay(theirs?.0, onward));
                    ours?
                }
            };
            open(stream, connecting)
                .await
                .map(|(opened, _)| matches!(opened, Opened::Tls(_)))
        };
        tokio::join!(accepted, opened)
    }

    type NoRelay = fn(TcpStream, TcpStream) -> std::future::Ready<()>;

    #[test]
    fn a_plain_hello_never_opens_like_a_tls_record() {
        let hello = hello(&[0xff; 32]);
        assert_ne!(hello[0], peer_tls::TLS_HANDSHAKE_RECORD);
        assert_eq!(hello.len(), 4 + 38, "a hello's length is fixed");
    }

    #[tokio::test]
    async fn members_admit_each_other_over_tls_and_plain_whatever_the_accepting_side_opens_with() {
        for (accepting_tls, connecting_tls) in [(true, true), (false, true), (true, false)] {
            let (accepted, opened) = over_loopback(
                &member(accepting_tls),
                &member(connecting_tls),
                None::<NoRelay>,
            )
            .await;
            assert_eq!(accepted.unwrap(), connecting_tls);
            assert_eq!(opened.unwrap(), connecting_tls);
        }
    }

    /// A member with `replication.tls` off makes its key only when a peer first opens a TLS
    /// connection to it, and keeps it for the next ones; one with it on makes it at start.
    #[tokio::test]
    async fn a_member_without_tls_of_its_own_makes_its_key_at_the_first_tls_connection() {
        let plain_member = member(false);
        let generated = |secret: &ClusterSecret| {
            secret
                .accepting_tls()
                .is_some_and(peer_tls::PeerTls::generated)
        };
        assert!(!generated(&plain_member));
        assert!(
            generated(&member(true)),
            "made at start when it opens over TLS"
        );
        let (accepted, _) = over_loopback(&plain_member, &member(false), None::<NoRelay>).await;
        assert!(!accepted.unwrap());
        assert!(
            !generated(&plain_member),
            "a plain connection makes nothing"
        );
        for _ in 0..2 {
            let (accepted, opened) =
                over_loopback(&plain_member, &member(true), None::<NoRelay>).await;
            assert!(accepted.unwrap() && opened.unwrap());
            assert!(generated(&plain_member));
        }
    }

    #[tokio::test]
    async fn a_tls_connection_to_a_member_without_tls_is_refused_by_name() {
        let without = ClusterSecret::new("one secret for the ring", "prod");
        let (accepted, opened) = over_loopback(&without, &member(true), None::<NoRelay>).await;
        assert!(
            matches!(accepted, Err(TransportError::TlsUnavailable)),
            "{accepted:?}"
        );
        assert!(accepted.unwrap_err().is_refusal());
        assert!(opened.is_err());
    }

    /// A relay in the middle that ends one TLS session with each member and copies the plain
    /// bytes across: both hold the secret, but each proof is bound to its own session, so
    /// neither side is admitted. The same relay copying bytes without ending TLS is harmless
    /// to the members, which admit each other through it: what refuses the first is the
    /// binding, not the relay's copying.
    #[tokio::test]
    async fn a_relay_ending_tls_on_both_sides_is_refused_and_a_byte_copying_one_is_not() {
        let intercept = |front: TcpStream, back: TcpStream| async move {
            let relay = peer_tls::PeerTls::generate(true).expect("generate");
            let (Ok(mut front), Ok(mut back)) = tokio::join!(
                relay.acceptor().expect("acceptor").accept(front),
                relay
                    .connector()
                    .expect("connector")
                    .connect(peer_tls::peer_name(), back)
            ) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut front, &mut back).await;
        };
        let (accepted, opened) = over_loopback(&member(true), &member(true), Some(intercept)).await;
        assert!(
            matches!(opened, Err(TransportError::Unproven)),
            "{opened:?}"
        );
        assert!(accepted.is_err(), "{accepted:?}");

        let copy = |mut front: TcpStream, mut back: TcpStream| async move {
            let _ = tokio::io::copy_bidirectional(&mut front, &mut back).await;
        };
        let (accepted, opened) = over_loopback(&member(true), &member(true), Some(copy)).await;
        assert!(accepted.unwrap() && opened.unwrap());
    }
}
