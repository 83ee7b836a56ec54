//! The client listener and the per-connection loop: read a frame, run it, write one response.
//!
//! The loop keeps the stream in sync whatever arrives: a payload that is too large (by at most
//! [`DRAIN_ALLOWANCE`]) or carries an unknown code is read and discarded before the error is
//! sent, so the next request parses; one far larger is answered from its header and the
//! connection closed, its body never read.
//! Before login that courtesy ends at a few KiB: a larger request is refused unread and the
//! connection closed, so a stranger cannot make the broker read, let alone buffer, their bytes.

use crate::broker::Broker;
use crate::commands;
use crate::error::BrokerError;
use crate::net::quickack;
use crate::net::session::Session;
use crate::telemetry;
use iggy_wire::frame::{self, HeaderError, RequestHeader};
use iggy_wire::Command;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

/// Buffers larger than this are released after the request that needed them, so an idle
/// connection does not pin the memory of its largest batch.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// How far past its limit a logged-in client's request is still read (and dropped) to keep the
/// connection usable; larger ones are refused from the header and the connection closed, so a
/// client cannot make the broker read hundreds of megabytes it will not use.
pub const DRAIN_ALLOWANCE: u64 = 16 << 20;

/// Largest request a connection that has not logged in may send (a login is well under 1 KiB).
pub const UNAUTHENTICATED_MAX_PAYLOAD: u64 = 4096;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The command, when the code named one.
    pub command: Option<Command>,
    /// Send the response, then close: the rest of the request was not read.
    pub close: bool,
}

/// Serves clients on `listener` until shutdown; with `tls`, each connection starts with a TLS
/// handshake (`net::tls`).
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, address)) => {
                    let open = broker.metrics.connections_open.load(Ordering::Relaxed);
                    if open >= i64::from(broker.config.tcp.max_connections) {
                        // Closing at once frees the descriptor; the client sees the connection
                        // reset and may retry later.
                        broker.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%address, open, "refused a connection: tcp.max_connections are open");
                        drop(stream);
                        continue;
                    }
                    // Counted here, not in the task, so a burst of accepts sees every one.
                    broker.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
                    broker.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(open_connection(
                        stream,
                        address,
                        broker.clone(),
                        shutdown.clone(),
                        tls.clone(),
                    ));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Takes an accepted connection through its TLS handshake, if the port has TLS, and serves it.
/// A handshake gets the time a client has to log in (`tcp.login_timeout`): a peer that opens
/// sockets and sends nothing holds one no longer than a plain connection that never logs in.
async fn open_connection(
    stream: TcpStream,
    address: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    // The login clock starts here: a handshake's time counts against `tcp.login_timeout`.
    let opened = Instant::now();
    let _ = stream.set_nodelay(true);
    // Stays valid while the connection is served: the stream (or the TLS stream around it)
    // lives until `serve_connection` returns.
    let socket = stream.as_raw_fd();
    let Some(acceptor) = tls else {
        let (reader, writer) = stream.into_split();
        return serve_connection(reader, writer, socket, address, broker, shutdown, opened).await;
    };
    let handshake =
        tokio::time::timeout(broker.config.tcp.login_timeout.0, acceptor.accept(stream));
    let failure = tokio::select! {
        accepted = handshake => match accepted {
            Ok(Ok(stream)) => {
                let (reader, writer) = tokio::io::split(stream);
                return serve_connection(
                    reader, writer, socket, address, broker, shutdown, opened,
                )
                .await;
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no handshake within tcp.login_timeout".to_string()),
        },
        // Not the client's failure: not counted.
        _ = shutdown.changed() => None,
    };
    if let Some(failure) = &failure {
        broker
            .metrics
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%address, reason = %failure, "closed: TLS handshake failed");
    }
    broker
        .metrics
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

/// Serves one connection until it closes, or until shutdown: then the request in progress, if
/// any, is finished and answered, and the connection closes before reading another. `socket`
/// is the TCP socket under `reader` and `writer`, for `quickack`; `opened`, when it was
/// accepted.
async fn serve_connection<R, W>(
    reader: R,
    mut writer: W,
    socket: RawFd,
    address: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    opened: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let metrics = &broker.metrics;
    let mut session = Session::new(broker.next_client_id(), address.to_string());
    broker
        .clients
        .register(session.client_id, session.address.clone());
    tracing::debug!(client = session.client_id, %address, "connected");
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut payload = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let login_timeout = broker.config.tcp.login_timeout.0;
    // Since when the connection has had no logged-in user: its start, or its last logout.
    let mut anonymous_since = Some(opened);
    loop {
        let mut header = [0u8; frame::HEADER_SIZE];
        if *shutdown.borrow() {
            break;
        }
        let next = async {
            tokio::select! {
                read = reader.read_exact(&mut header) => read.map(|_| ()),
                // Between requests only: a request already begun is finished below.
                _ = shutdown.changed() => Err(std::io::ErrorKind::Interrupted.into()),
            }
        };
        // A connection without a logged-in user gets `login_timeout` in all (from its start or
        // its logout); a logged-in one may idle as long as it likes between requests.
        let read = if let Some(since) = anonymous_since {
            let left = login_timeout.saturating_sub(since.elapsed());
            match tokio::time::timeout(left, next).await {
                Ok(read) => read,
                Err(_) => {
                    metrics
                        .connections_timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        client = session.client_id,
                        "closed: no login within tcp.login_timeout"
                    );
                    break;
                }
            }
        } else {
            next.await
        };
        if read.is_err() {
            break;
        }
        // A payload still on its way may be held back by the client's Nagle until this header
        // is acknowledged (`quickack.rs`).
        let incomplete = RequestHeader::parse(&header)
            .is_ok_and(|parsed| reader.buffer().len() < parsed.payload_len as usize);
        if incomplete {
            quickack::acknowledge_now(socket);
        }
        let started = Instant::now();
        let handled = match handle_request(
            &broker,
            &mut session,
            &mut reader,
            header,
            &mut payload,
            &mut out,
        )
        .await
        {
            Ok(handled) => handled,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    metrics
                        .connections_timed_out
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(client = session.client_id, error = %e, "connection closed mid-request");
                break;
            }
        };
        // Recorded before the response goes out, so a client that reads /metrics after its
        // reply always sees its own request counted.
        let ok = out[..4] == [0, 0, 0, 0];
        metrics.record_request(handled.command, ok, started.elapsed());
        anonymous_since = match (session.user_id, anonymous_since) {
            (Some(_), _) => None,
            (None, Some(since)) => Some(since),
            (None, None) => Some(Instant::now()),
        };
        // A TLS stream holds the last record until flushed; a plain socket's flush is free.
        let written = match writer.write_all(&out).await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        session.response_budget = Default::default();
        if written.is_err() || handled.close {
            break;
        }
        if payload.capacity() > KEEP_BUFFER_BYTES {
            payload = Vec::new();
        }
        if out.capacity() > KEEP_BUFFER_BYTES {
            out = Vec::with_capacity(4096);
        }
    }
    broker.disconnect(session.client_id).await;
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(client = session.client_id, "disconnected");
}

/// Reads one request's payload, runs it and leaves the whole response frame in `out`.
/// Only an I/O failure on the socket is an `Err`; every protocol error becomes a response, and
/// [`Handled::close`] says when the connection must close after it.
/// Public for the fuzzer, which drives it with in-memory byte streams.
pub async fn handle_request<R: AsyncRead + Unpin>(
    broker: &Broker,
    session: &mut Session,
    reader: &mut R,
    header: [u8; frame::HEADER_SIZE],
    payload: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> std::io::Result<Handled> {
    out.clear();
    let done = |command| Handled {
        command,
        close: false,
    };
    let header = match RequestHeader::parse(&header) {
        Ok(header) => header,
        Err(HeaderError::LengthTooSmall(length)) => {
            tracing::debug!(length, "request length smaller than its code");
            out.extend_from_slice(&frame::error_frame(iggy_wire::ErrorCode::INVALID_COMMAND));
            return Ok(done(None));
        }
    };
    let command = Command::from_code(header.code);
    let size = header.payload_len as u64;
    if session.user_id.is_none() && size > UNAUTHENTICATED_MAX_PAYLOAD {
        let error = match command {
            Some(command) if command.allowed_without_login() => BrokerError::RequestTooLarge {
                size,
                limit: UNAUTHENTICATED_MAX_PAYLOAD,
            },
            _ => BrokerError::Unauthenticated,
        };
        tracing::debug!(client = session.client_id, size, error = %error, "refused unread before login; closing");
        out.extend_from_slice(&frame::error_frame(error.code()));
        return Ok(Handled {
            command,
            close: true,
        });
    }
    let limit = match command {
        Some(Command::SendMessages) => broker.config.tcp.max_send_bytes.0,
        _ => frame::MAX_CONTROL_PAYLOAD as u64,
    };
    let rejected = match command {
        None => Some(BrokerError::UnknownCommand(header.code)),
        Some(_) if size > limit => Some(BrokerError::RequestTooLarge { size, limit }),
        Some(_) => None,
    };
    let request_timeout = broker.config.tcp.request_timeout.0;
    if let Some(error) = rejected {
        // A little over the limit is read and dropped so the connection stays usable; far over
        // it, the broker will not read the body at all: it answers from the header and closes.
        if size > limit.saturating_add(DRAIN_ALLOWANCE) {
            tracing::debug!(client = session.client_id, size, limit, error = %error, "refused unread; closing");
            out.extend_from_slice(&frame::error_frame(error.code()));
            return Ok(Handled {
                command,
                close: true,
            });
        }
        within(
            request_timeout,
            tokio::io::copy(&mut reader.take(size), &mut tokio::io::sink()),
        )
        .await?;
        tracing::debug!(client = session.client_id, error = %error, "request refused");
        out.extend_from_slice(&frame::error_frame(error.code()));
        return Ok(done(command));
    }
    let Some(command) = command else {
        return Ok(done(None));
    };
    // Held until the request is done: its body, and whatever dispatch builds from it.
    let _body_budget = broker.memory.reserve(size).await;
    payload.clear();
    payload.reserve(size as usize);
    let read = within(request_timeout, reader.take(size).read_to_end(payload)).await?;
    if read as u64 != size {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    out.extend_from_slice(&[0u8; frame::HEADER_SIZE]);
    let span = telemetry::request_span(command, session, size);
    telemetry::describe_request(&span, command, payload);
    let result = commands::dispatch(broker, session, command, payload, out)
        .instrument(span.clone())
        .await;
    telemetry::record_outcome(&span, session, &result, out.len() - frame::HEADER_SIZE);
    match result {
        Ok(()) => {
            let header = frame::ok_header(out.len() - frame::HEADER_SIZE);
            out[..frame::HEADER_SIZE].copy_from_slice(&header);
        }
        Err(error) => {
            if error.is_server_fault() {
                tracing::error!(client = session.client_id, command = command.name(), error = %error, "request failed");
            } else {
                tracing::debug!(client = session.client_id, command = command.name(), error = %error, "request refused");
            }
            out.clear();
            out.extend_from_slice(&frame::error_frame(error.code()));
        }
    }
    Ok(done(Some(command)))
}

/// A request's bytes must keep arriving: a body still incomplete after `limit` is abandoned
/// (`TimedOut`), and the connection closes rather than hold its buffer for a stalled client.
async fn within<T>(
    limit: std::time::Duration,
    read: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
