//! GetConsumerOffset, StoreConsumerOffset and DeleteConsumerOffset for standalone consumers.

use super::messages::consumer_partition;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::storage::offsets::consumer_key;
use iggy_wire::request::PartitionRef;
use iggy_wire::response;

/// Nothing stored is an empty OK reply (the SDK's `None`).
pub fn get(broker: &Broker, target: &PartitionRef, body: &mut Vec<u8>) -> Result<()> {
    let (partition, _) = consumer_partition(broker, target)?;
    let stored = partition.offsets().get(&consumer_key(&target.consumer.id));
    if let Some(stored) = stored {
        let current = partition.log().current_offset();
        body.extend_from_slice(&response::consumer_offset(partition.id, current, stored));
    }
    Ok(())
}

/// An offset past the last message would make the next poll skip messages not yet written.
pub fn store(broker: &Broker, target: &PartitionRef, offset: u64) -> Result<()> {
    let (partition, _) = consumer_partition(broker, target)?;
    let (empty, current) = {
        let log = partition.log();
        (log.is_empty(), log.current_offset())
    };
    if empty || offset > current {
        return Err(BrokerError::InvalidOffset { offset, current });
    }
    partition.offsets().store(
        &consumer_key(&target.consumer.id),
        offset,
        broker.durable_sends(),
    )?;
    Ok(())
}

pub fn delete(broker: &Broker, target: &PartitionRef) -> Result<()> {
    let (partition, _) = consumer_partition(broker, target)?;
    let removed = partition
        .offsets()
        .delete(&consumer_key(&target.consumer.id))?;
    if removed {
        Ok(())
    } else {
        Err(BrokerError::ConsumerOffsetNotFound)
    }
}
