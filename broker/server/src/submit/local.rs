//! The single-node submitter: applies each operation at once, in the order callers reach the
//! state's locks (which is the order the state records), then waits for the storage's
//! durability (group commit under `fsync = always`; nothing otherwise).

use super::Submit;
use crate::apply::apply;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::ops::{OpContext, Submission};
use crate::storage::fsutil::now_micros;

#[derive(Debug, Default)]
pub struct LocalSubmitter;

impl Submit for LocalSubmitter {
    async fn submit(
        &self,
        broker: &Broker,
        submission: Submission<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        let context = OpContext {
            timestamp: now_micros(),
            entropy: fastrand::u128(..),
        };
        let applied = apply(broker, context, submission, reply)?;
        if let Some((partition, seq)) = applied.sync {
            partition
                .persisted(seq)
                .await
                .map_err(BrokerError::Append)?;
        }
        Ok(())
    }
}
