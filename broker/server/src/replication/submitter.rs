//! The replicated submitter: a connection's operation is encoded (`ops::codec`), committed
//! through the VSR log by the replica thread and applied there on every replica; the connection
//! gets the reply once this replica has applied it.
//!
//! The core's client sessions give at-most-once execution of retried requests. Each broker
//! keeps a pool of sessions (one request in flight each) shared by its connections: a write
//! borrows one, registers it with the cluster on first use, and sends its request, resending
//! the same request number while no reply comes (a request dropped in a view change is
//! retried; one that did commit is answered from the client table, never executed twice).
//! While no primary answers, a write waits up to `replication.request_timeout` and then gets
//! the retryable `Disconnected` status.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::{codec, Submission};
use crate::replication::driver::{ClientReply, DriverInput};
use crate::replication::machine::split_reply;
use crate::replication::status::ClusterStatus;
use crate::replication::ClientIds;
use crate::submit::Submit;
use iggy_wire::{ErrorCode, WireError};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};
use tracing::Instrument as _;
use vsr::ClientId;

/// Sessions per broker: the most writes one replica has in flight at once.
const SESSIONS: usize = 64;
/// A request unanswered this long is sent again (same number: at most once).
const RESEND_AFTER: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Session {
    client: ClientId,
    /// 0 until registered.
    session: u64,
    /// The last request number used.
    request: u64,
}

pub struct ReplicatedSubmitter {
    inputs: Sender<DriverInput>,
    pool: Mutex<Vec<Session>>,
    slots: Semaphore,
    timeout: Duration,
    pub status: Arc<ClusterStatus>,
    /// Salt for the root user's password hash, the same on every replica (see `Broker::open`).
    pub root_salt: [u8; 16],
}

impl ReplicatedSubmitter {
    pub fn new(
        inputs: Sender<DriverInput>,
        clients: &ClientIds,
        status: Arc<ClusterStatus>,
        timeout: Duration,
        root_salt: [u8; 16],
    ) -> Self {
        let pool = (0..SESSIONS as u32)
            .map(|slot| Session {
                client: clients.id(slot),
                session: 0,
                request: 0,
            })
            .collect();
        Self {
            inputs,
            pool: Mutex::new(pool),
            slots: Semaphore::new(SESSIONS),
            timeout,
            status,
            root_salt,
        }
    }

    /// Hands the replica thread a ring to propose; false when it is gone.
    pub fn propose_ring(&self, ring: iggy_contract::Ring) -> bool {
        self.inputs.send(DriverInput::Ring(ring)).is_ok()
    }

    /// Asks the replica thread to hand its view on; false when it is gone.
    pub fn step_down(&self) -> bool {
        self.inputs.send(DriverInput::StepDown).is_ok()
    }

    /// Sends `body` in `session` until the cluster answers or the deadline passes.
    async fn request(
        &self,
        session: &mut Session,
        body: &bytes::Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<ClientReply> {
        session.request += 1;
        loop {
            let (tx, rx) = oneshot::channel();
            let input = DriverInput::Request {
                client: session.client,
                session: session.session,
                request: session.request,
                body: body.clone(),
                reply: tx,
            };
            let sent = self.inputs.send(input).is_ok();
            if !sent {
                return Err(BrokerError::NoPrimary(self.timeout));
            }
            let resend = (tokio::time::Instant::now() + RESEND_AFTER).min(deadline);
            match tokio::time::timeout_at(resend, rx).await {
                Ok(Ok(reply)) => return Ok(reply),
                // The driver dropped the waiter (a newer request of this session replaced it,
                // or the replica is stopping): ask again unless time is up.
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(
                        client = session.client,
                        request = session.request,
                        "no reply yet; sending the request again"
                    );
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BrokerError::NoPrimary(self.timeout));
                    }
                }
            }
        }
    }

    async fn commit(&self, session: &mut Session, body: &bytes::Bytes) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if session.session == 0 {
                match self
                    .request(session, &bytes::Bytes::new(), deadline)
                    .await?
                {
                    ClientReply::Done(reply) => {
                        let number = reply
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                            .ok_or(BrokerError::Wire(WireError::Invalid(
                                "session registration reply is not a session number",
                            )))?;
                        session.session = number;
                    }
                    ClientReply::Evicted => continue,
                }
            }
            match self.request(session, body, deadline).await? {
                ClientReply::Done(reply) => return Ok(reply),
                ClientReply::Evicted => {
                    // Evicted before it ran: it never will; register and try again.
                    session.session = 0;
                }
            }
        }
    }
}

impl Submit for ReplicatedSubmitter {
    async fn submit(
        &self,
        _broker: &Broker,
        submission: Submission<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        let mut body = Vec::new();
        codec::encode(&submission, &mut body).map_err(|e| {
            tracing::error!(error = %e, "cannot encode an operation for the log");
            BrokerError::Replicated(ErrorCode::ERROR)
        })?;
        let _permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| BrokerError::NoPrimary(self.timeout))?;
        let session = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or(BrokerError::NoPrimary(self.timeout))?;
        let mut borrowed = Borrowed {
            pool: &self.pool,
            session,
        };
        // The request's child span: from handing the operation to the replica to this
        // member having applied it (committed on a quorum, forwarded if this is a backup).
        let span = tracing::span!(
            target: iggy_telemetry::EXPORTED_SPANS,
            tracing::Level::INFO,
            "replicate",
            otel.kind = "internal",
            iggy.replication.bytes = body.len() as i64,
            iggy.replication.primary = tracing::field::Empty,
        );
        if !span.is_disabled() {
            let primary = self.status.primary().map(i64::from);
            span.record("iggy.replication.primary", primary.unwrap_or(-1));
        }
        let answer = self
            .commit(&mut borrowed.session, &bytes::Bytes::from(body))
            .instrument(span)
            .await?;
        let (status, payload) = split_reply(&answer);
        if status != 0 {
            return Err(BrokerError::Replicated(ErrorCode(status)));
        }
        reply.extend_from_slice(payload);
        Ok(())
    }
}

/// A session out of the pool; it goes back when dropped, also when the connection that
/// borrowed it goes away mid-request (its request number stays used).
struct Borrowed<'a> {
    pool: &'a Mutex<Vec<Session>>,
    session: Session,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.session);
    }
}
