//! Command handlers, one module per command group. Each handler takes the decoded request,
//! checks the caller's permissions, acts on the broker and appends its OK payload to `body`;
//! errors become status codes in the connection loop, through
//! [`crate::error::BrokerError::code`].

mod groups;
mod messages;
mod offsets;
mod streams;
mod system;
pub mod tokens;
mod topics;
mod users;

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
    if !command.allowed_without_login() {
        // The user must still exist and be active: deletion and deactivation apply at once.
        broker.catalog().session_user(session.user_id)?;
    }
    let user = session.user_id;
    if command == Command::SendMessages {
        return messages::send(broker, user, payload).await;
    }
    let request = Request::decode(command, payload)?.map_err(|n| BrokerError::NotServed(n.0))?;
    match request {
        Request::Ping => Ok(()),
        Request::LoginUser {
            username, password, ..
        } => system::login(broker, session, username, password, body).await,
        Request::LoginWithPersonalAccessToken { token } => {
            tokens::login(broker, session, &token, body)
        }
        Request::LogoutUser => system::logout(broker, session),
        Request::GetMe => system::get_me(broker, session, body),
        Request::GetStats => system::get_stats(broker, session, body),
        Request::GetClient { client_id } => system::get_client(broker, session, client_id, body),
        Request::GetClients => system::get_clients(broker, session, body),
        Request::GetUser { user: id } => users::get(broker, session, &id, body),
        Request::GetUsers => users::get_all(broker, session, body),
        Request::CreateUser {
            username,
            password,
            status,
            permissions,
        } => {
            users::create(
                broker,
                session,
                username,
                password,
                status,
                permissions,
                body,
            )
            .await
        }
        Request::DeleteUser { user: id } => users::delete(broker, session, &id),
        Request::UpdateUser {
            user: id,
            username,
            status,
        } => users::update(broker, session, &id, username, status),
        Request::UpdatePermissions {
            user: id,
            permissions,
        } => users::update_permissions(broker, session, &id, permissions),
        Request::ChangePassword {
            user: id,
            current_password,
            new_password,
        } => users::change_password(broker, session, &id, current_password, new_password).await,
        Request::GetPersonalAccessTokens => tokens::get_all(broker, session, body),
        Request::CreatePersonalAccessToken { name, expiry } => {
            tokens::create(broker, session, name, expiry, body)
        }
        Request::DeletePersonalAccessToken { name } => tokens::delete(broker, session, &name),
        Request::GetStream { stream } => streams::get(broker, user, &stream, body),
        Request::GetStreams => streams::get_all(broker, user, body),
        Request::CreateStream { name } => streams::create(broker, user, name, body),
        Request::UpdateStream { stream, name } => streams::update(broker, user, &stream, name),
        Request::DeleteStream { stream } => streams::delete(broker, user, &stream),
        Request::PurgeStream { stream } => streams::purge(broker, user, &stream),
        Request::GetTopic { stream, topic } => topics::get(broker, user, &stream, &topic, body),
        Request::GetTopics { stream } => topics::get_all(broker, user, &stream, body),
        Request::CreateTopic {
            stream,
            partitions_count,
            settings,
        } => topics::create(broker, user, &stream, partitions_count, settings, body),
        Request::UpdateTopic {
            stream,
            topic,
            settings,
        } => topics::update(broker, user, &stream, &topic, settings),
        Request::DeleteTopic { stream, topic } => topics::delete(broker, user, &stream, &topic),
        Request::PurgeTopic { stream, topic } => topics::purge(broker, user, &stream, &topic),
        Request::CreatePartitions {
            stream,
            topic,
            count,
        } => topics::create_partitions(broker, user, &stream, &topic, count),
        Request::DeletePartitions {
            stream,
            topic,
            count,
        } => topics::delete_partitions(broker, user, &stream, &topic, count),
        Request::DeleteSegments {
            stream,
            topic,
            partition,
            count,
        } => topics::delete_segments(broker, user, &stream, &topic, partition, count),
        Request::PollMessages {
            target,
            strategy,
            count,
            auto_commit,
        } => messages::poll(broker, session, &target, strategy, count, auto_commit, body).await,
        Request::FlushUnsavedBuffer {
            stream,
            topic,
            partition,
            fsync,
        } => messages::flush(broker, user, &stream, &topic, partition, fsync).await,
        Request::GetConsumerOffset { target } => offsets::get(broker, session, &target, body),
        Request::StoreConsumerOffset { target, offset } => {
            offsets::store(broker, session, &target, offset)
        }
        Request::DeleteConsumerOffset { target } => offsets::delete(broker, session, &target),
        Request::GetConsumerGroup { group } => groups::get(broker, session, &group, body),
        Request::GetConsumerGroups { stream, topic } => {
            groups::get_all(broker, session, &stream, &topic, body)
        }
        Request::CreateConsumerGroup {
            stream,
            topic,
            name,
        } => groups::create(broker, session, &stream, &topic, name, body),
        Request::DeleteConsumerGroup { group } => groups::delete(broker, session, &group),
        Request::JoinConsumerGroup { group } => groups::join(broker, session, &group),
        Request::LeaveConsumerGroup { group } => groups::leave(broker, session, &group),
    }
}
