//! Command handlers, one module per command group. Each handler takes the decoded request,
//! acts on the broker and appends its OK payload to `body`; errors become status codes in the
//! connection loop, through [`crate::error::BrokerError::code`].

mod messages;
mod offsets;
mod streams;
mod system;
mod topics;

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::session::Session;
use iggy_wire::{Command, Request};

/// Runs one request. `payload` is mutable because SendMessages stamps its frames in place.
pub async fn dispatch(
    broker: &Broker,
    session: &mut Session,
    command: Command,
    payload: &mut [u8],
    body: &mut Vec<u8>,
) -> Result<()> {
    if !command.allowed_without_login() && session.user_id.is_none() {
        return Err(BrokerError::Unauthenticated);
    }
    if command == Command::SendMessages {
        return messages::send(broker, payload).await;
    }
    let request = Request::decode(command, payload)?.map_err(|n| BrokerError::NotServed(n.0))?;
    match request {
        Request::Ping => Ok(()),
        Request::LoginUser {
            username, password, ..
        } => system::login(broker, session, username, password, body).await,
        Request::LogoutUser => {
            session.user_id = None;
            Ok(())
        }
        Request::GetMe => system::get_me(session, body),
        Request::GetStream { stream } => streams::get(broker, &stream, body),
        Request::GetStreams => streams::get_all(broker, body),
        Request::CreateStream { name } => streams::create(broker, name, body),
        Request::UpdateStream { stream, name } => streams::update(broker, &stream, name),
        Request::DeleteStream { stream } => streams::delete(broker, &stream),
        Request::PurgeStream { stream } => streams::purge(broker, &stream),
        Request::GetTopic { stream, topic } => topics::get(broker, &stream, &topic, body),
        Request::GetTopics { stream } => topics::get_all(broker, &stream, body),
        Request::CreateTopic {
            stream,
            partitions_count,
            settings,
        } => topics::create(broker, &stream, partitions_count, settings, body),
        Request::UpdateTopic {
            stream,
            topic,
            settings,
        } => topics::update(broker, &stream, &topic, settings),
        Request::DeleteTopic { stream, topic } => topics::delete(broker, &stream, &topic),
        Request::PurgeTopic { stream, topic } => topics::purge(broker, &stream, &topic),
        Request::CreatePartitions {
            stream,
            topic,
            count,
        } => topics::create_partitions(broker, &stream, &topic, count),
        Request::DeletePartitions {
            stream,
            topic,
            count,
        } => topics::delete_partitions(broker, &stream, &topic, count),
        Request::PollMessages {
            target,
            strategy,
            count,
            auto_commit,
        } => messages::poll(broker, &target, strategy, count, auto_commit, body).await,
        Request::FlushUnsavedBuffer {
            stream,
            topic,
            partition,
            fsync,
        } => messages::flush(broker, &stream, &topic, partition, fsync).await,
        Request::GetConsumerOffset { target } => offsets::get(broker, &target, body),
        Request::StoreConsumerOffset { target, offset } => offsets::store(broker, &target, offset),
        Request::DeleteConsumerOffset { target } => offsets::delete(broker, &target),
    }
}
