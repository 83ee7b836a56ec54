//! Stream reads: Get and GetAll. Create, Update, Delete and Purge are operations, submitted
//! by the dispatcher and applied in `apply/streams.rs`.

use crate::broker::Broker;
use crate::error::Result;
use crate::reply;
use crate::security::access::Access;
use iggy_wire::Identifier;

/// A missing stream is an empty OK reply, which the SDK reads as `None`.
pub fn get(broker: &Broker, user: Option<u32>, id: &Identifier, body: &mut Vec<u8>) -> Result<()> {
    let catalog = broker.catalog();
    if let Ok(stream) = catalog.stream(id) {
        catalog.authorize(user, Access::ReadStream(stream.id))?;
        reply::stream_details(stream, body);
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
