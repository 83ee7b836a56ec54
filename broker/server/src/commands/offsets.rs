//! GetConsumerOffset, StoreConsumerOffset and DeleteConsumerOffset, for standalone consumers
//! and consumer groups. Store and delete are operations (`apply/messages.rs`).

use super::messages::consumer_target;
use super::submit;
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::net::session::Session;
use crate::ops::Operation;
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

/// Resolves the consumer's partition here (a group member's depends on its connection) and
/// submits the store; `apply` checks the offset against the partition.
pub async fn store(
    broker: &Broker,
    session: &Session,
    target: &PartitionRef,
    offset: u64,
) -> Result<()> {
    let resolved = consumer_target(broker, session, target, false)?;
    let partition = resolved
        .partition
        .ok_or(BrokerError::PartitionNotFound(0))?;
    let op = Operation::StoreOffset {
        stream: resolved.stream,
        topic: resolved.topic,
        partition: partition.id,
        kind: resolved.kind,
        key: resolved.key,
        offset,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await
}

pub async fn delete(broker: &Broker, session: &Session, target: &PartitionRef) -> Result<()> {
    let resolved = consumer_target(broker, session, target, false)?;
    let partition = resolved
        .partition
        .ok_or(BrokerError::PartitionNotFound(0))?;
    let op = Operation::DeleteOffset {
        stream: resolved.stream,
        topic: resolved.topic,
        partition: partition.id,
        kind: resolved.kind,
        key: resolved.key,
    };
    submit(broker, session.user_id, op, &mut Vec::new()).await
}
