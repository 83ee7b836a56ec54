//! The sending side of the transport: one outgoing connection per peer, and how the replica
//! thread's frames get onto it.
//!
//! A frame other than a prepare is written by the replica thread itself when the connection is
//! idle — nothing queued, nothing being written — and the frame is small: a non-blocking write
//! into the socket, usually of a few hundred bytes ([`DIRECT_UP_TO`] at most). Everything else
//! (prepares, a frame the socket took only part of, frames behind one still queued, a message
//! the connection task encodes) goes to the peer's queue and its connection task writes it.
//!
//! Why: a replicated request used to cross from the replica thread to a peer's task for every
//! `PrepareOk`, commit and forwarded reply it caused, and each crossing is a wake-up. On a
//! machine whose two cores are busy a wake-up waits for a core (docs/benchmarks.md), and a
//! request's round trip is made of them: a backup's acknowledgement now leaves with the
//! replica thread's own write. Prepares stay with the tasks, which copy them into the peers'
//! sockets on the other core while the replica thread appends to its own WAL. Written by the
//! replica thread too, they made the primary's thread — the one every request passes —
//! slower than the wake-ups saved (a send on loopback also runs the receiver's network stack);
//! docs/benchmarks.md has the runs.
//!
//! Order: the replica thread writes only while the lane is idle, and marks the lane busy under
//! the same lock with which it queues, so a frame never overtakes one queued before it. The
//! task hands the lane back only when it has written everything and finds the queue empty,
//! under that lock.
//!
//! Over TLS (`replication.tls`) the connection task writes every frame: a TLS session is one
//! state that both writers would have to lock for every record they seal.

use crate::replication::peer_auth::ClusterSecret;
use crate::replication::status::ClusterStatus;
use crate::replication::transport::{
    self, Deferred, Frame, Opened, Outgoing, SPACE_SINCE_REVISION,
};
use std::io::{ErrorKind, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use vsr::ReplicaId;

/// Frames waiting for one peer; more are dropped (the core retransmits).
const PEER_QUEUE: usize = 4096;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// The largest frame the replica thread writes itself (acknowledgements, commits, forwarded
/// replies; never a prepare, see above). A larger one would hold the replica thread for its
/// copy into the socket.
pub const DIRECT_UP_TO: usize = 64 << 10;
/// Frames gathered into one vectored write by a connection task.
const GATHER: usize = 64;

/// The sending side: one lane per peer position (none for this replica's own), each with its
/// connection task. Owned by the replica thread, which adds the peers a new ring names (`add`).
pub struct Peers {
    lanes: Vec<Option<Arc<Lane>>>,
    me: ReplicaId,
    status: Arc<ClusterStatus>,
    secret: ClusterSecret,
    stop: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

impl Peers {
    /// Starts a connection task for every peer in `addresses` (by position; `me` is skipped).
    /// Must be called on the runtime the connection tasks run on.
    pub fn start(
        addresses: &[String],
        me: ReplicaId,
        status: Arc<ClusterStatus>,
        secret: ClusterSecret,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let mut peers = Self {
            lanes: Vec::new(),
            me,
            status,
            secret,
            stop,
            runtime: tokio::runtime::Handle::current(),
        };
        for (position, address) in addresses.iter().enumerate() {
            peers.add(position as ReplicaId, address);
        }
        peers
    }

    /// Starts the connection to the peer at `position`, unless there is one (positions keep
    /// their address for the life of a ring: a StatefulSet ordinal's DNS name).
    pub fn add(&mut self, position: ReplicaId, address: &str) {
        let index = usize::from(position);
        if self.lanes.len() <= index {
            self.lanes.resize_with(index + 1, || None);
        }
        if position == self.me || self.lanes[index].is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let lane = Arc::new(Lane {
            queue: tx,
            state: Mutex::new(LaneState::default()),
        });
        let peer = Peer {
            address: address.to_owned(),
            position,
            status: self.status.clone(),
            secret: self.secret.clone(),
        };
        self.runtime
            .spawn(send_loop(peer, lane.clone(), rx, self.stop.clone()));
        self.lanes[index] = Some(lane);
    }

    /// What this replica proves to its peers (state sync's connections prove it too).
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Sends `frame` to `to`; false when it was dropped.
    pub fn send(&self, to: ReplicaId, frame: Frame) -> bool {
        self.lane(to)
            .is_some_and(|lane| lane.send(Outgoing::Encoded(frame)))
    }

    /// Sends a space report (`transport::SPACE`) to every peer connected now whose wire
    /// revision takes it; the others miss this one (reports are periodic).
    pub fn send_space(&self, frame: &Frame) {
        for lane in self.lanes.iter().flatten() {
            lane.send_if_reads(SPACE_SINCE_REVISION, Outgoing::Encoded(frame.clone()));
        }
    }

    /// Queues `envelope` for `to`, to be verified and encoded by its connection task; false
    /// when it was dropped.
    pub fn send_deferred(
        &self,
        to: ReplicaId,
        envelope: vsr::Envelope,
        verify_through: vsr::Op,
    ) -> bool {
        self.lane(to).is_some_and(|lane| {
            lane.send(Outgoing::Deferred(Deferred::new(envelope, verify_through)))
        })
    }

    fn lane(&self, to: ReplicaId) -> Option<&Lane> {
        self.lanes.get(usize::from(to))?.as_deref()
    }
}

/// One peer's outgoing connection, shared by the replica thread and the connection task.
struct Lane {
    queue: mpsc::Sender<Outgoing>,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// The connection, once it is up and greeted; `None` while the task (re)connects.
    stream: Option<Arc<TcpStream>>,
    /// Frames are queued or being written by the task: the replica thread must queue too.
    /// `false` implies the queue is empty (only pushes made under the lock set it, and the task
    /// clears it under the lock after finding the queue empty).
    busy: bool,
    /// The wire revision the peer named in its challenge (`transport::WIRE_REVISION`); 0 while
    /// not connected.
    revision: u16,
}

impl Lane {
    fn state(&self) -> MutexGuard<'_, LaneState> {
        // A panic while holding it leaves nothing half-done: the state is two plain fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `outgoing` now if the lane is idle and it is small; queues it (or what the socket
    /// did not take) otherwise. False when it was dropped.
    fn send(&self, outgoing: Outgoing) -> bool {
        self.send_if_reads(0, outgoing)
    }

    /// [`Self::send`], if the peer is connected and reads wire revision `revision` or later
    /// (checked under the lock that hands the frame over); dropped otherwise.
    fn send_if_reads(&self, revision: u16, mut outgoing: Outgoing) -> bool {
        let mut state = self.state();
        if revision > 0 && state.revision < revision {
            return false;
        }
        if let (false, Some(stream), Outgoing::Encoded(frame)) =
            (state.busy, &state.stream, &outgoing)
        {
            if written_by_the_sender(frame) {
                match write_available(stream, &frame.parts(), 0) {
                    Ok(written) if written == frame.wire_len() => return true,
                    Ok(0) => {}
                    // The task writes the rest on this same connection: the lane is idle only
                    // while the task waits in this connection's loop (it marks the lane busy
                    // before it can leave it), so a part frame never opens another connection.
                    Ok(written) => outgoing = Outgoing::Rest(frame.clone(), written),
                    // The task's next write on it fails too, and it reconnects.
                    Err(_) => state.stream = None,
                }
            }
        }
        state.busy = true;
        self.queue.try_send(outgoing).is_ok()
    }

    /// The task is done writing: the lane is idle again unless more was queued meanwhile, which
    /// is returned for the task to write.
    fn idle_or_next(&self, queue: &mut mpsc::Receiver<Outgoing>) -> Option<Outgoing> {
        let mut state = self.state();
        match queue.try_recv() {
            Ok(next) => Some(next),
            Err(_) => {
                state.busy = false;
                None
            }
        }
    }
}

/// Whether the replica thread writes `frame` itself when the lane is idle.
fn written_by_the_sender(frame: &Frame) -> bool {
    frame.wire_len() <= DIRECT_UP_TO && !frame.is_prepare()
}

/// Writes `parts` from byte `from` for as long as the socket takes them without waiting;
/// returns how far they are written (all of them, or where the socket would block).
fn write_available(stream: &TcpStream, parts: &[&[u8]], from: usize) -> std::io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = from;
    while written < total {
        match stream.try_write_vectored(&io_slices(parts, written)) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Who a connection task sends to.
struct Peer {
    address: String,
    position: ReplicaId,
    status: Arc<ClusterStatus>,
    secret: ClusterSecret,
}

async fn send_loop(
    peer: Peer,
    lane: Arc<Lane>,
    mut frames: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let address = &peer.address;
    let mut backoff = RECONNECT_MIN;
    loop {
        let stream = tokio::select! {
            stream = TcpStream::connect(iggy_contract::hosts::resolve(address)) => stream,
            _ = stop.changed() => return,
        };
        let connected = match stream {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let greeted = tokio::select! {
                    greeted = transport::open(stream, &peer.secret) => greeted,
                    _ = stop.changed() => return,
                };
                match greeted {
                    Ok(opened) => Ok(opened),
                    Err(e) if e.is_refusal() => {
                        peer.status.count_refusal();
                        tracing::warn!(peer = %address, error = %e, "replication handshake failed");
                        Err(())
                    }
                    Err(e) => {
                        tracing::debug!(peer = %address, error = %e, "replication handshake failed");
                        Err(())
                    }
                }
            }
            Err(e) => {
                tracing::debug!(peer = %address, error = %e, "cannot reach replica");
                Err(())
            }
        };
        let Ok((opened, revision)) = connected else {
            // Frames queued while the peer is unreachable are stale by the time it answers;
            // drop them rather than replaying a burst of old prepares.
            while lane.idle_or_next(&mut frames).is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        };
        backoff = RECONNECT_MIN;
        let mut link = match opened {
            Opened::Plain(stream) => Link::Plain(Arc::new(stream)),
            Opened::Tls(stream) => Link::Tls(stream),
        };
        tracing::info!(peer = %address, tls = link.is_tls(), "connected to replica");
        peer.status.set_connected(peer.position, Some(revision));
        {
            let mut state = lane.state();
            // Over TLS every frame goes through the task: the replica thread cannot write
            // into a TLS session it does not own without a lock around every record.
            state.stream = match &link {
                Link::Plain(stream) => Some(stream.clone()),
                Link::Tls(_) => None,
            };
            state.revision = revision;
        }
        let mut next = lane.idle_or_next(&mut frames);
        loop {
            let first = match next.take() {
                Some(first) => first,
                None => tokio::select! {
                    frame = frames.recv() => match frame {
                        Some(frame) => frame,
                        None => return,
                    },
                    _ = stop.changed() => return,
                },
            };
            // Write what is queued behind it in the same call.
            let mut batch = vec![first];
            while batch.len() < GATHER {
                match frames.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            if revision < SPACE_SINCE_REVISION {
                // Queued for a connection before this one, to a peer since rolled back.
                batch.retain(|outgoing| !outgoing.is_space());
            }
            if write_batch(&mut link, batch).await.is_err() {
                break;
            }
            next = lane.idle_or_next(&mut frames);
        }
        {
            let mut state = lane.state();
            state.stream = None;
            state.revision = 0;
        }
        peer.status.set_connected(peer.position, None);
        tracing::info!(peer = %address, "lost the connection to replica");
    }
}

/// A peer's connection as the connection task writes to it.
enum Link {
    /// Shared with the lane, whose replica thread writes small frames into it directly.
    Plain(Arc<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Link {
    fn is_tls(&self) -> bool {
        matches!(self, Link::Tls(_))
    }
}

/// Writes a batch of queued frames, encoding the deferred ones first.
async fn write_batch(link: &mut Link, batch: Vec<Outgoing>) -> std::io::Result<()> {
    let mut frames = Vec::with_capacity(batch.len());
    for outgoing in batch {
        match outgoing {
            Outgoing::Encoded(frame) => frames.push((frame, 0)),
            Outgoing::Rest(frame, written) => frames.push((frame, written)),
            // Hashing and copying tens of MiB would hold an async worker (and the client
            // connections on it) for tens of milliseconds: the blocking pool does it.
            Outgoing::Deferred(deferred) => {
                if let Ok(Some(frame)) =
                    tokio::task::spawn_blocking(move || deferred.into_frame()).await
                {
                    frames.push((frame, 0));
                }
            }
        }
    }
    let mut parts = Vec::with_capacity(2 * frames.len());
    for (frame, from) in &frames {
        parts.extend(skip(&frame.parts(), *from));
    }
    match link {
        Link::Plain(stream) => write_all(stream, &parts).await,
        Link::Tls(stream) => {
            // The session seals each part into records as it takes it; the flush sends what
            // it still holds.
            for part in parts {
                stream.write_all(part).await?;
            }
            stream.flush().await
        }
    }
}

/// Writes all of `parts`, waiting for the socket as needed.
async fn write_all(stream: &TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    loop {
        written = write_available(stream, parts, written)?;
        if written == total {
            return Ok(());
        }
        stream.writable().await?;
    }
}

/// `parts` without their first `n` bytes, and without empty ones.
fn skip<'a>(parts: &[&'a [u8]], mut n: usize) -> Vec<&'a [u8]> {
    let mut rest = Vec::with_capacity(parts.len());
    for part in parts {
        if n >= part.len() {
            n -= part.len();
            continue;
        }
        rest.push(&part[n..]);
        n = 0;
    }
    rest
}

/// The slices of one vectored write of `parts` from byte `from`: at most the kernel's limit
/// (`IOV_MAX`); the caller's loop writes the rest.
fn io_slices<'a>(parts: &[&'a [u8]], from: usize) -> Vec<IoSlice<'a>> {
    const IOV_MAX: usize = 1024;
    skip(parts, from)
        .into_iter()
        .take(IOV_MAX)
        .map(IoSlice::new)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::peer_auth::Binding;
    use crate::replication::transport::{
        encode, read_handshake_frame_blocking, Challenge, ENVELOPE, PREPARE,
    };
    use std::io::{Read, Write};

    fn secret() -> ClusterSecret {
        ClusterSecret::new("a secret for this test", "test")
    }
    use std::time::Instant;

    fn envelope(message: vsr::Message) -> vsr::Envelope {
        vsr::Envelope {
            cluster: 1,
            group: 1,
            epoch: 0,
            from: vsr::Node::Replica(0),
            to: vsr::Node::Replica(1),
            message,
        }
    }

    /// Frame number `seq`: a prepare of op `seq`, or a forwarded reply of op `seq`, whose
    /// `body_len` bytes all say `seq`.
    fn frame(seq: u64, body_len: usize, prepare: bool) -> Frame {
        let body = vec![seq as u8; body_len];
        let message = if prepare {
            let mut header = vsr::Prepare::root(1, 1, 0).header;
            header.op = seq;
            vsr::Message::Prepare {
                view: 0,
                prepare: vsr::Prepare::new(header, body),
            }
        } else {
            vsr::Message::Reply {
                client: 7,
                request: 1,
                view: 0,
                op: seq,
                body,
            }
        };
        let frame = encode(&envelope(message)).unwrap();
        assert_eq!(frame.is_prepare(), prepare);
        frame
    }

    /// Takes the handshake as a replica does, then reads `count` frames; returns each one's
    /// number and whether its body is the bytes [`frame`] made.
    fn receive(mut stream: std::net::TcpStream, count: usize, pause: Duration) -> Vec<(u64, bool)> {
        let read = |stream: &mut std::net::TcpStream| {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let len = u32::from_le_bytes(len) as usize;
            // Frames of this test are at most a megabyte and a little; a larger length is
            // bytes of two frames interleaved.
            assert!(
                len <= 2 << 20,
                "a frame length of {len}: the stream is garbled"
            );
            let mut rest = vec![0u8; len];
            stream.read_exact(&mut rest).unwrap();
            rest
        };
        let (kind, body) = read_handshake_frame_blocking(&mut stream).unwrap();
        let (challenge, frame) = Challenge::new(&secret(), Binding::Plain, kind, &body).unwrap();
        stream.write_all(&frame).unwrap();
        let (kind, body) = read_handshake_frame_blocking(&mut stream).unwrap();
        challenge.check(kind, &body).unwrap();
        // Let the sender fill the socket's buffers, so some frames are taken in part.
        std::thread::sleep(pause);
        (0..count)
            .map(|_| {
                let rest = read(&mut stream);
                let (seq, body) = match rest[0] {
                    PREPARE => {
                        let head_len = u32::from_le_bytes(rest[1..5].try_into().unwrap()) as usize;
                        let envelope: vsr::Envelope =
                            postcard::from_bytes(&rest[5..5 + head_len]).unwrap();
                        let vsr::Message::Prepare { prepare, .. } = envelope.message else {
                            panic!("not a prepare")
                        };
                        (prepare.header.op, rest[5 + head_len..].to_vec())
                    }
                    ENVELOPE => {
                        let envelope: vsr::Envelope = postcard::from_bytes(&rest[1..]).unwrap();
                        let vsr::Message::Reply { op, body, .. } = envelope.message else {
                            panic!("not a reply")
                        };
                        (op, body)
                    }
                    other => panic!("frame kind {other}"),
                };
                (seq, body.iter().all(|b| *b == seq as u8))
            })
            .collect()
    }

    #[test]
    fn small_frames_are_written_by_the_replica_thread_and_none_overtakes_one_queued_before_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let status = Arc::new(ClusterStatus::new(0, 0, 0, "test".into(), Vec::new()));
        let peers = {
            let _inside = runtime.enter();
            Peers::start(&["self".into(), address], 0, status, secret(), stop_rx)
        };
        // First frames just under the limit while the receiver does not read, until the
        // socket takes one only in part and the rest is queued. Then, with the receiver
        // reading, small frames, every seventh a megabyte prepare and every fifth a small one
        // (prepares are always queued): the small frame after a queued one must queue behind
        // it, not go out while the task is still writing it.
        let first: Vec<Frame> = (1..=250u64)
            .map(|seq| frame(seq, DIRECT_UP_TO - 200, false))
            .collect();
        let then: Vec<Frame> = (251..=600u64)
            .map(|seq| match seq {
                _ if seq % 7 == 0 => frame(seq, 1 << 20, true),
                _ => frame(seq, 100, seq % 5 == 0),
            })
            .collect();
        let count = first.len() + then.len() + 1;
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            receive(stream, count, Duration::from_millis(300))
        });
        let lane = peers.lane(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lane.state().stream.is_none() {
            assert!(Instant::now() < deadline, "never connected");
            std::thread::sleep(Duration::from_millis(5));
        }

        // This test's thread is not one of the runtime's, as the replica thread is not.
        assert!(peers.send(1, frame(0, 100, false)));
        assert!(
            !lane.state().busy,
            "an idle lane's small frame is written at once, not queued"
        );
        let wait_idle = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lane.state().busy {
                assert!(
                    Instant::now() < deadline,
                    "the task never handed the lane back"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for frame in first {
            assert!(peers.send(1, frame));
        }
        wait_idle();
        for frame in then {
            assert!(peers.send(1, frame));
        }
        let received = receiver.join().unwrap();
        let expected: Vec<(u64, bool)> = (0..count as u64).map(|seq| (seq, true)).collect();
        assert_eq!(received, expected, "every frame, whole and in order");
        wait_idle();
        assert!(written_by_the_sender(&frame(0, DIRECT_UP_TO - 200, false)));
        assert!(!written_by_the_sender(&frame(0, DIRECT_UP_TO + 1, false)));
        assert!(
            !written_by_the_sender(&frame(0, 100, true)),
            "a prepare goes to the task"
        );
    }

    #[test]
    fn parts_skip_what_was_written_across_frame_boundaries() {
        let parts: [&[u8]; 3] = [b"abc", b"", b"defg"];
        assert_eq!(skip(&parts, 0), vec![&b"abc"[..], b"defg"]);
        assert_eq!(skip(&parts, 2), vec![&b"c"[..], b"defg"]);
        assert_eq!(skip(&parts, 3), vec![&b"defg"[..]]);
        assert_eq!(skip(&parts, 5), vec![&b"fg"[..]]);
        assert!(skip(&parts, 7).is_empty());
        assert_eq!(io_slices(&parts, 4).len(), 1);
    }
}
