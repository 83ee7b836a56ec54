//! TCP between replicas. Every replica listens on its replication address and keeps one
//! outgoing connection per peer (`sending`), so each direction of each pair is its own ordered
//! stream.
//!
//! A frame is `len u32`, a kind byte, then a postcard-encoded body: a `vsr::Envelope`, or a
//! state-sync fetch and its answer (`sync`), which travel on a connection of their own and are
//! answered on it. Every connection opens with a `HELLO` frame naming the wire version its
//! sender speaks; the accepting replica serves only versions it understands
//! ([`OLDEST_WIRE_VERSION`]..=[`WIRE_VERSION`]) and closes others with a log line naming both,
//! so a rolling upgrade that changes the format fails loudly instead of as decode errors. Envelope delivery is best effort: a
//! message for a peer that is down, or whose queue is full, is dropped — the core retransmits
//! whatever matters, and its correctness never depends on delivery. Messages for another
//! cluster are dropped by the core (every envelope carries the cluster id).

use crate::broker::Broker;
use crate::replication::driver::DriverInput;
use crate::replication::inbound::Inbound;
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
}

/// Frame kinds.
pub const ENVELOPE: u8 = 0;
pub const FETCH: u8 = 1;
pub const FETCHED: u8 = 2;
/// A prepare: `head_len u32`, the envelope with an empty body, then the body, so neither side
/// copies the batch into or out of an encoding.
pub const PREPARE: u8 = 3;
/// The first frame of every connection: [`HELLO_MAGIC`] and the sender's wire version.
pub const HELLO: u8 = 4;
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
pub const WIRE_VERSION: u16 = 3;
pub const OLDEST_WIRE_VERSION: u16 = 3;

/// The frame a connection opens with.
pub fn hello() -> Vec<u8> {
    encode_frame(HELLO, &(HELLO_MAGIC, WIRE_VERSION)).unwrap_or_default()
}

/// Checks the first frame of a connection (its kind and body, the length already read).
pub fn check_hello(kind: u8, body: &[u8]) -> Result<u16, TransportError> {
    if kind != HELLO {
        return Err(TransportError::NoHello(kind));
    }
    let (magic, version): ([u8; 4], u16) = postcard::from_bytes(body)?;
    if magic != HELLO_MAGIC {
        return Err(TransportError::NoHello(kind));
    }
    if !(OLDEST_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(TransportError::Version(version));
    }
    Ok(version)
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
                        Err(e @ (TransportError::Version(_) | TransportError::NoHello(_))) => {
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
    let max_frame = receiving.max_frame;
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
    let mut frame = Vec::new();
    let mut greeted = false;
    loop {
        let len = reader.read_u32_le().await? as usize;
        if len == 0 || len > max_frame {
            return Err(TransportError::TooLarge(len, max_frame));
        }
        let kind = reader.read_u8().await?;
        if !greeted {
            if len > 64 {
                return Err(TransportError::NoHello(kind));
            }
            frame.resize(len - 1, 0);
            reader.read_exact(&mut frame).await?;
            check_hello(kind, &frame)?;
            greeted = true;
            continue;
        }
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
            FETCH => {
                let request: sync::Fetch = postcard::from_bytes(&frame)?;
                let broker = receiving.broker.clone();
                let answer = tokio::task::spawn_blocking(move || sync::serve(&broker, &request))
                    .await
                    .unwrap_or_else(|e| sync::Fetched::Refused(e.to_string()));
                writer.write_all(&encode_frame(FETCHED, &answer)?).await?;
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
        let ours = hello();
        let (kind, body) = split(&ours);
        assert_eq!(check_hello(kind, body).unwrap(), WIRE_VERSION);

        let future = encode_frame(HELLO, &(HELLO_MAGIC, WIRE_VERSION + 1)).unwrap();
        let (kind, body) = split(&future);
        let refused = check_hello(kind, body).unwrap_err();
        assert!(matches!(refused, TransportError::Version(v) if v == WIRE_VERSION + 1));
        assert!(
            refused.to_string().contains("speaks versions 3 to 3"),
            "{refused}"
        );

        // A version-1 peer (before reconfiguration) cannot read our checkpoints, nor a
        // version-2 one our votes: refused.
        for old in [1u16, 2] {
            let hello = encode_frame(HELLO, &(HELLO_MAGIC, old)).unwrap();
            let (kind, body) = split(&hello);
            assert!(matches!(
                check_hello(kind, body),
                Err(TransportError::Version(v)) if v == old
            ));
        }

        let stranger = encode_frame(HELLO, &(*b"HTTP", WIRE_VERSION)).unwrap();
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
}
