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
//!
//! A session the cluster evicted (its table holds the 1024 most recently active) executes
//! nothing more. A request that gets `Evicted` after a single copy of it was sent did not
//! execute: that copy reached a primary that no longer knew the session. It is sent again
//! under a new session. One that was sent more than once (resent here, or handed to the core
//! again in a new view) may have executed before the eviction, its reply lost. Sending it under
//! a new session could execute it twice, so it fails with the same retryable status as a
//! timeout, whose outcome is just as unknown.

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::{codec, Submission};
use crate::replication::driver::{ClientReply, DriverInput};
use crate::replication::machine::{split_reply, AWAITING_SETTINGS};
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
/// How long a request refused until the cluster holds settings waits before it asks again.
const AWAITING_SETTINGS_PAUSE: Duration = Duration::from_millis(20);

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

    /// Sends `body` in `session` until the cluster answers or the deadline passes. Also says
    /// whether it sent the request more than once.
    async fn request(
        &self,
        session: &mut Session,
        body: &bytes::Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<(ClientReply, bool)> {
        session.request += 1;
        let mut sent_again = false;
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
                Ok(Ok(reply)) => return Ok((reply, sent_again)),
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
                    sent_again = true;
                }
            }
        }
    }

    /// Commits `body` and returns the reply, asking again while the primary waits for the
    /// cluster's first settings (`machine::AWAITING_SETTINGS`), until the request timeout.
    async fn commit(&self, session: &mut Session, body: &bytes::Bytes) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let reply = self.commit_once(session, body, deadline).await?;
            if split_reply(&reply).0 != AWAITING_SETTINGS {
                return Ok(reply);
            }
            let again = tokio::time::Instant::now() + AWAITING_SETTINGS_PAUSE;
            if again >= deadline {
                return Err(BrokerError::NoPrimary(self.timeout));
            }
            tokio::time::sleep_until(again).await;
        }
    }

    async fn commit_once(
        &self,
        session: &mut Session,
        body: &bytes::Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>> {
        loop {
            if session.session == 0 {
                match self
                    .request(session, &bytes::Bytes::new(), deadline)
                    .await?
                {
                    (ClientReply::Done(reply), _) => {
                        let number = reply
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                            .ok_or(BrokerError::Wire(WireError::Invalid(
                                "session registration reply is not a session number",
                            )))?;
                        session.session = number;
                    }
                    // Registering (session 0) is never answered with an eviction.
                    (ClientReply::Evicted { .. }, _) => continue,
                }
            }
            match self.request(session, body, deadline).await? {
                (ClientReply::Done(reply), _) => return Ok(reply),
                (ClientReply::Evicted { resubmitted }, sent_again) => {
                    // The session is gone for good: whatever happens, the next request in it
                    // registers a new one.
                    session.session = 0;
                    if sent_again || resubmitted {
                        tracing::warn!(
                            client = session.client,
                            request = session.request,
                            "the cluster evicted this broker's session while a request was \
                             being sent again; it may have executed, so it is not sent again \
                             and its client gets a retryable error"
                        );
                        return Err(BrokerError::OutcomeUnknown);
                    }
                    // Sent once: that copy reached a primary that no longer knew the session,
                    // so it did not execute. Register and send it again.
                }
            }
        }
    }
}

impl Submit for ReplicatedSubmitter {
    async fn submit(
        &self,
        broker: &Broker,
        mut submission: Submission<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        crate::apply::decide_partition(broker, &mut submission.op);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// What the stand-in replica thread does with one request it is handed.
    enum Answer {
        /// Registers the session under this number.
        Register(u64),
        /// Drops the waiter without answering, as when a reply is lost.
        Lose,
        Evict {
            resubmitted: bool,
        },
        Done(&'static [u8]),
    }

    /// A request as the stand-in replica thread saw it: session, request number, body.
    type Seen = (u64, u64, bytes::Bytes);

    /// Runs `commit` for `body` against a replica thread that answers the requests it is handed
    /// with `script`, in order, and records them; a request past the script is recorded and
    /// left unanswered (the submitter's deadline ends it).
    async fn commit_against(
        script: Vec<Answer>,
        body: &'static [u8],
    ) -> (Result<Vec<u8>>, Session, Vec<Seen>) {
        let (inputs, requests) = mpsc::channel::<DriverInput>();
        let replica_thread = std::thread::spawn(move || {
            let mut script = script.into_iter();
            let mut seen = Vec::new();
            let mut unanswered = Vec::new();
            while let Ok(input) = requests.recv_timeout(Duration::from_secs(2)) {
                let DriverInput::Request {
                    session,
                    request,
                    body,
                    reply,
                    ..
                } = input
                else {
                    continue;
                };
                seen.push((session, request, body));
                match script.next() {
                    Some(Answer::Register(number)) => {
                        let _ = reply.send(ClientReply::Done(number.to_le_bytes().to_vec()));
                    }
                    Some(Answer::Lose) => drop(reply),
                    Some(Answer::Evict { resubmitted }) => {
                        let _ = reply.send(ClientReply::Evicted { resubmitted });
                    }
                    Some(Answer::Done(answer)) => {
                        let _ = reply.send(ClientReply::Done(answer.to_vec()));
                    }
                    None => unanswered.push(reply),
                }
            }
            seen
        });
        let status = Arc::new(ClusterStatus::new(0, 0, 0, "test".into(), Vec::new()));
        let submitter = ReplicatedSubmitter::new(
            inputs,
            &ClientIds::new(0, 1),
            status,
            Duration::from_millis(600),
            [0; 16],
        );
        let mut session = Session {
            client: 1,
            session: 0,
            request: 0,
        };
        let result = submitter
            .commit(&mut session, &bytes::Bytes::from_static(body))
            .await;
        drop(submitter);
        let seen = replica_thread.join().expect("the stand-in replica thread");
        (result, session, seen)
    }

    /// Its reply lost, the request was sent again, and the answer to the second copy was the
    /// eviction: the first copy may have executed. Sending it under a new session would
    /// execute it twice; it fails instead, and the next request registers anew.
    #[tokio::test]
    async fn a_request_evicted_after_it_was_sent_again_is_not_sent_under_a_new_session() {
        let script = vec![
            Answer::Register(7),
            Answer::Lose,
            Answer::Evict { resubmitted: false },
        ];
        let (result, session, seen) = commit_against(script, b"write").await;
        assert!(
            matches!(result, Err(BrokerError::OutcomeUnknown)),
            "{result:?}"
        );
        assert_eq!(session.session, 0, "the evicted session is not used again");
        let writes: Vec<_> = seen.iter().filter(|(_, _, b)| !b.is_empty()).collect();
        assert_eq!(writes.len(), 2, "{seen:?}");
        assert!(
            writes.iter().all(|(s, r, _)| (*s, *r) == (7, 2)),
            "{seen:?}"
        );
        assert!(
            seen.iter().filter(|(_, _, b)| b.is_empty()).count() == 1,
            "no new session was registered to send it again: {seen:?}"
        );
    }

    /// The same when the replica thread handed the one copy to the core again in a new view.
    #[tokio::test]
    async fn a_request_the_replica_thread_resubmitted_is_not_sent_under_a_new_session() {
        let script = vec![Answer::Register(7), Answer::Evict { resubmitted: true }];
        let (result, _, seen) = commit_against(script, b"write").await;
        assert!(
            matches!(result, Err(BrokerError::OutcomeUnknown)),
            "{result:?}"
        );
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    /// `AWAITING_SETTINGS`, as a reply's status.
    const AWAITING: &[u8] = b"\x01\xff\xff\xff";

    /// A request the primary refused until the cluster holds settings is asked again, as a
    /// new request of the same session, and its client sees only the answer that follows.
    #[tokio::test]
    async fn a_request_refused_until_settings_are_held_is_asked_again() {
        assert_eq!(AWAITING, AWAITING_SETTINGS.to_le_bytes());
        let script = vec![
            Answer::Register(7),
            Answer::Done(AWAITING),
            Answer::Done(AWAITING),
            Answer::Done(b"\0\0\0\0ok"),
        ];
        let (result, _, seen) = commit_against(script, b"write").await;
        assert_eq!(result.expect("committed"), b"\0\0\0\0ok");
        let sent: Vec<(u64, u64)> = seen.iter().map(|(s, r, _)| (*s, *r)).collect();
        assert_eq!(sent, vec![(0, 1), (7, 2), (7, 3), (7, 4)]);
    }

    /// Refused until the deadline: the client gets the retryable error a missing primary
    /// gives, never the internal status.
    #[tokio::test]
    async fn a_request_refused_until_its_deadline_fails_as_retryable() {
        let script = std::iter::once(Answer::Register(7))
            .chain((0..200).map(|_| Answer::Done(AWAITING)))
            .collect();
        let (result, _, seen) = commit_against(script, b"write").await;
        assert!(
            matches!(result, Err(BrokerError::NoPrimary(_))),
            "{result:?}"
        );
        assert!(seen.len() > 5, "asked again meanwhile: {}", seen.len());
    }

    /// Evicted in answer to the only copy sent: that copy reached a primary that no longer knew
    /// the session, so it did not execute. It registers anew and goes again, once.
    #[tokio::test]
    async fn a_request_evicted_at_its_only_copy_is_sent_again_under_a_new_session() {
        let script = vec![
            Answer::Register(7),
            Answer::Evict { resubmitted: false },
            Answer::Register(9),
            Answer::Done(b"\0\0\0\0ok"),
        ];
        let (result, session, seen) = commit_against(script, b"write").await;
        assert_eq!(result.expect("committed"), b"\0\0\0\0ok");
        assert_eq!(session.session, 9);
        let sent: Vec<(u64, u64, bool)> = seen
            .iter()
            .map(|(s, r, b)| (*s, *r, b.is_empty()))
            .collect();
        assert_eq!(
            sent,
            vec![(0, 1, true), (7, 2, false), (0, 3, true), (9, 4, false)]
        );
    }
}
