//! Stream reads: Get and GetAll. Create, Update, Delete and Purge are operations, submitted
//! by the dispatcher and applied in `apply/streams.rs`.

use crate::broker::Broker;
use crate::error::Result;
use crate::reply;
use crate::security::access::Access;
use iggy_wire::Identifier;

/// A missing stream is an empty OK reply, which the SDK reads as `None` — to a caller who may
/// read every stream. Anyone else gets `Unauthorized` for a missing stream as for one they may
/// not read, so the answer does not reveal which names exist.
pub fn get(broker: &Broker, user: Option<u32>, id: &Identifier, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    match catalog.stream(id) {
        Ok(stream) => {
            catalog.authorize(user, Access::ReadStream(stream.id))?;
            reply::stream_details(stream, body);
        }
        Err(_) => catalog.authorize(user, Access::ReadStreams)?,
    }
    Ok(())
}

pub fn get_all(broker: &Broker, user: Option<u32>, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    catalog.authorize(user, Access::ReadStreams)?;
    for stream in catalog.streams.values() {
        reply::stream(stream, body);
    }
    Ok(())
}
