//! Topic reads: Get and GetAll. Every topic and partition change is an operation, submitted by
//! the dispatcher and applied in `apply/topics.rs`.

use crate::broker::Broker;
use crate::error::Result;
use crate::reply;
use crate::security::access::Access;
use iggy_wire::Identifier;

pub fn get(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    topic: &Identifier,
    body: &mut Vec<u8>,
) -> Result<()> {
    let catalog = broker.catalog();
    match catalog.topic(stream, topic) {
        Ok((s, t)) => {
            catalog.authorize(user, Access::ReadTopic(s.id, t.id))?;
            reply::topic_details(t, body);
        }
        // Missing: empty to a caller who may read the stream's topics (or every stream when the
        // stream itself is missing), `Unauthorized` to anyone else — no existence oracle.
        Err(_) => match catalog.stream(stream) {
            Ok(s) => catalog.authorize(user, Access::ReadTopics(s.id))?,
            Err(_) => catalog.authorize(user, Access::ReadStreams)?,
        },
    }
    Ok(())
}

pub fn get_all(
    broker: &Broker,
    user: Option<u32>,
    stream: &Identifier,
    body: &mut Vec<u8>,
) -> Result<()> {
    let catalog = broker.catalog();
    let s = catalog.stream(stream)?;
    catalog.authorize(user, Access::ReadTopics(s.id))?;
    for topic in s.topics.values() {
        reply::topic_header(topic, body);
    }
    Ok(())
}
