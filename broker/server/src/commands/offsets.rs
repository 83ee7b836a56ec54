//! GetConsumerOffset, StoreConsumerOffset and DeleteConsumerOffset, for standalone consumers
//! and consumer groups.

use super::messages::consumer_target;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::session::Session;
use iggy_wire::request::PartitionRef;
use iggy_wire::response;

/// Nothing stored is an empty OK reply (the SDK's `None`).
pub fn get(
    broker: &Broker,
    session: &Session,
    target: &PartitionRef,
    body: &mut Vec<u8>,
) -> Result<()> {
    let resolved = consumer_target(broker, session, target, false)?;
    let Some(partition) = resolved.partition else {
        return Ok(());
    };
    let stored = partition.offsets(resolved.kind).get(&resolved.key);
    if let Some(stored) = stored {
        let current = partition.log().current_offset();
        body.extend_from_slice(&response::consumer_offset(partition.id, current, stored));
    }
    Ok(())
}

/// An offset past the last message would make the next poll skip messages not yet written.
pub fn store(broker: &Broker, session: &Session, target: &PartitionRef, offset: u64) -> Result<()> {
    let resolved = consumer_target(broker, session, target, false)?;
    let partition = resolved
        .partition
        .ok_or(BrokerError::PartitionNotFound(0))?;
    let (empty, current) = {
        let log = partition.log();
        (log.is_empty(), log.current_offset())
    };
    if empty || offset > current {
        return Err(BrokerError::InvalidOffset { offset, current });
    }
    partition
        .offsets(resolved.kind)
        .store(&resolved.key, offset, broker.durable_sends())?;
    Ok(())
}

pub fn delete(broker: &Broker, session: &Session, target: &PartitionRef) -> Result<()> {
    let resolved = consumer_target(broker, session, target, false)?;
    let partition = resolved
        .partition
        .ok_or(BrokerError::PartitionNotFound(0))?;
    let removed = partition.offsets(resolved.kind).delete(&resolved.key)?;
    if removed {
        Ok(())
    } else {
        Err(BrokerError::ConsumerOffsetNotFound)
    }
}
