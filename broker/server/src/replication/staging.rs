//! The primary's work ahead on the send it applies next (`StateMachine::stage`). A replicated
//! send waits for a backup's acknowledgement and then for the primary's apply, whose segment
//! write is about half a millisecond per megabyte here: on the path of every send, where the
//! replica thread had nothing to do while the backups worked. So once a send's prepare is out,
//! the primary stamps its batch and writes it past its partition's end, unpublished
//! (`storage::partition_log::unpublished`); the apply of that op then writes only the index
//! entries and counts the batch in.
//!
//! The apply must answer and leave the state exactly as without the staging, on this replica
//! and every other. The core stages only the op after the last one applied, so the state a
//! staged batch was stamped in is the state its apply meets — unless something came between:
//! a view change that put another op in its place (told apart by the prepare's checksum), a
//! restored checkpoint (which drops the staging), or a change of the partition's tail (which
//! cuts the unpublished bytes, and the publish is refused). Whatever is refused is applied the
//! ordinary way, from the op's body.

use crate::apply::{self, Applied, StagedSend};
use crate::broker::Broker;
use crate::error::Result;
use crate::ops::codec::{self, Decoded};
use crate::ops::OpContext;
use vsr::{Op, PrepareHeader};

#[derive(Default)]
pub struct Staging {
    staged: Option<Staged>,
    /// The buffer a batch is copied into to be stamped, kept between stagings.
    scratch: Vec<u8>,
}

/// A send written ahead of its commit.
struct Staged {
    op: Op,
    checksum: u128,
    /// The op's submission, its frames stamped as written.
    decoded: Decoded,
    send: StagedSend,
}

impl Staging {
    /// Stages the send `header` and `body` prepare, when its apply's outcome is known now
    /// (`apply::stage`); anything else is left to the apply. Drops an earlier staging that was
    /// never applied.
    pub fn stage(&mut self, broker: &Broker, header: &PrepareHeader, body: &[u8]) {
        self.abandon();
        if !codec::is_append(body) {
            return;
        }
        let Ok(mut decoded) = codec::decode_into(body, std::mem::take(&mut self.scratch)) else {
            return;
        };
        match apply::stage(broker, context_of(header), decoded.submission()) {
            Some(send) => {
                self.staged = Some(Staged {
                    op: header.op,
                    checksum: header.checksum,
                    decoded,
                    send,
                })
            }
            None => self.keep(decoded),
        }
    }

    /// Applies the op `header` names by publishing what was staged for it. `None` when nothing
    /// was, or what was no longer fits: the op must be applied from its body.
    pub fn publish(&mut self, broker: &Broker, header: &PrepareHeader) -> Option<Result<Applied>> {
        let mut staged = self.staged.take()?;
        let published = if (staged.op, staged.checksum) == (header.op, header.checksum) {
            apply::publish(
                broker,
                context_of(header),
                staged.decoded.submission(),
                staged.send,
            )
        } else {
            abandon(staged.send);
            Ok(None)
        };
        self.keep(staged.decoded);
        let counter = match &published {
            Ok(Some(_)) => &broker.metrics.replication_staged,
            Ok(None) => &broker.metrics.replication_staged_refused,
            Err(_) => return published.transpose(),
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        published.transpose()
    }

    /// Drops what was staged: its op will not be applied onto the state it was staged in.
    pub fn abandon(&mut self) {
        if let Some(staged) = self.staged.take() {
            abandon(staged.send);
            self.keep(staged.decoded);
        }
    }

    fn keep(&mut self, decoded: Decoded) {
        super::machine::keep_scratch(&mut self.scratch, decoded);
    }
}

/// The context the apply of the op `header` prepares runs in: the same on every replica.
pub fn context_of(header: &PrepareHeader) -> OpContext {
    OpContext {
        timestamp: header.timestamp,
        entropy: header.checksum,
    }
}

/// Cuts a staged send's bytes off its partition. Failing that, the partition keeps them
/// marked, and its next change of the tail cuts them before it writes (or fails, and the
/// replica halts as for any apply that fails).
fn abandon(send: StagedSend) {
    if let Err(error) = send.abandon() {
        tracing::warn!(%error, "could not cut a batch written ahead of its commit");
    }
}
