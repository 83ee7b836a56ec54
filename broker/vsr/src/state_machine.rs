//! The replicated state machine: what committed operations are applied to. The broker applies
//! batches to partitions; tests use a model broker (see `vsr-sim`).

use crate::prepare::PrepareHeader;

pub trait StateMachine {
    /// Applies a committed operation, in op order, exactly once per replica, and returns the
    /// reply for the client. Must be deterministic: it may use the header (its op, client and
    /// the primary-assigned timestamp, the same on every replica) and the body, nothing else.
    fn apply(&mut self, header: &PrepareHeader, body: &[u8]) -> Vec<u8>;
    /// A digest of the whole state: equal on every replica at the same op.
    fn digest(&self) -> u128;
    /// The whole state as bytes, for a checkpoint. Equal states give equal bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's. A snapshot that does not decode is refused and
    /// the state is left as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
    /// Asked by the primary before it prepares a new request: `Some(reply)` refuses it, and
    /// the client gets that reply with nothing prepared (its request number stays unused, so
    /// a retry is a new request). `pending` is the size of the bodies prepared or queued and
    /// not yet applied. For what the primary alone can know and the log must not depend on —
    /// the broker refuses sends while its disk is nearly full, because an apply that fails on
    /// one replica only would leave the replicas' states apart. The default admits everything.
    fn admit(&mut self, body: &[u8], pending: u64) -> Option<Vec<u8>> {
        let _ = (body, pending);
        None
    }
    /// A hint to the primary's state machine, given once the prepare of the op it applies next
    /// is out (sent and written): it may do that op's work ahead, while the backups acknowledge
    /// it, as long as [`StateMachine::apply`] answers and leaves the state exactly as it would
    /// have without the hint. Nothing is promised: a view change may put another op in its
    /// place (the header's checksum tells them apart), a checkpoint may be restored first, the
    /// op may be applied on a replica that is no longer primary, or it may be one the core
    /// applies itself (a session's registration) and never hands to `apply`. The broker writes a send's
    /// batch into its segment here and publishes it at the apply. The default does nothing.
    fn stage(&mut self, header: &PrepareHeader, body: &[u8]) {
        let _ = (header, body);
    }
}

/// A snapshot the state machine could not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot rejected: {0}")]
pub struct RestoreError(pub String);
