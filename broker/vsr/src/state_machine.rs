//! The replicated state machine: what committed operations are applied to. The broker applies
//! batches to partitions; tests use a model broker (see `vsr-sim`).

use crate::{ClientId, Op};

pub trait StateMachine {
    /// Applies a committed operation, in op order, exactly once per replica, and returns the
    /// reply for the client. Must be deterministic.
    fn apply(&mut self, op: Op, client: ClientId, body: &[u8]) -> Vec<u8>;
    /// A digest of the whole state: equal on every replica at the same op.
    fn digest(&self) -> u128;
}
