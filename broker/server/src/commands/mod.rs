//! Command handlers, one module per command group. A read checks the caller's permissions
//! and encodes what the state holds. A change becomes an [`Operation`] that the broker's
//! submitter orders and `apply` executes (see `ops.rs`); a handler only does what belongs to
//! the connection or must happen before submitting (decoding, the session, hashing a password,
//! generating a token), and many changes need no handler at all: the dispatcher submits them.
//! The OK payload is appended to `body`; errors become status codes in the connection loop,
//! through [`crate::error::BrokerError::code`].

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
use crate::net::session::Session;
use crate::ops::{Operation, Submission};
use crate::submit::Submit;
use iggy_wire::{Command, Request};

/// Submits `op` on behalf of `user`; the reply lands in `body`.
pub(crate) async fn submit(
    broker: &Broker,
    user: Option<u32>,
    op: Operation<'_>,
    body: &mut Vec<u8>,
) -> Result<()> {
    broker
        .submitter()
        .submit(broker, Submission { user, op }, body)
        .await
}

/// Runs one request. `payload` is mutable because SendMessages stamps its frames in place.
pub async fn dispatch(
    broker: &Broker,
    session: &mut Session,
    command: Command,
    payload: &mut [u8],
    body: &mut Vec<u8>,
) -> Result<()> {
    // Everything but these answers from, or checks against, this replica's state (a write is
    // validated here before it is submitted): a replica whose state is not the cluster's
    // waits, then says so, rather than answer from an old or empty catalog.
    if !matches!(
        command,
        Command::Ping | Command::GetClusterMetadata | Command::LogoutUser
    ) {
        broker.caught_up_to_answer().await?;
    }
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
        Request::GetClusterMetadata => system::get_cluster_metadata(broker, body),
        Request::GetSnapshotFile { compression, kinds } => {
            system::get_snapshot(broker, session, compression, &kinds, body).await
        }
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
        Request::DeleteUser { user: target } => {
            submit(broker, user, Operation::DeleteUser { user: target }, body).await
        }
        Request::UpdateUser {
            user: target,
            username,
            status,
        } => users::update(broker, session, target, username, status).await,
        Request::UpdatePermissions {
            user: target,
            permissions,
        } => {
            let op = Operation::UpdatePermissions {
                user: target,
                permissions,
            };
            submit(broker, user, op, body).await
        }
        Request::ChangePassword {
            user: id,
            current_password,
            new_password,
        } => users::change_password(broker, session, &id, current_password, new_password).await,
        Request::GetPersonalAccessTokens => tokens::get_all(broker, session, body),
        Request::CreatePersonalAccessToken { name, expiry } => {
            tokens::create(broker, session, name, expiry, body).await
        }
        Request::DeletePersonalAccessToken { name } => {
            submit(broker, user, Operation::DeleteToken { name }, body).await
        }
        Request::GetStream { stream } => streams::get(broker, user, &stream, body),
        Request::GetStreams => streams::get_all(broker, user, body),
        Request::CreateStream { name } => {
            submit(broker, user, Operation::CreateStream { name }, body).await
        }
        Request::UpdateStream { stream, name } => {
            submit(broker, user, Operation::UpdateStream { stream, name }, body).await
        }
        Request::DeleteStream { stream } => {
            submit(broker, user, Operation::DeleteStream { stream }, body).await
        }
        Request::PurgeStream { stream } => {
            submit(broker, user, Operation::PurgeStream { stream }, body).await
        }
        Request::GetTopic { stream, topic } => topics::get(broker, user, &stream, &topic, body),
        Request::GetTopics { stream } => topics::get_all(broker, user, &stream, body),
        Request::CreateTopic {
            stream,
            partitions_count,
            settings,
        } => {
            let op = Operation::CreateTopic {
                stream,
                partitions: partitions_count,
                settings,
            };
            submit(broker, user, op, body).await
        }
        Request::UpdateTopic {
            stream,
            topic,
            settings,
        } => {
            let op = Operation::UpdateTopic {
                stream,
                topic,
                settings,
            };
            submit(broker, user, op, body).await
        }
        Request::DeleteTopic { stream, topic } => {
            submit(broker, user, Operation::DeleteTopic { stream, topic }, body).await
        }
        Request::PurgeTopic { stream, topic } => {
            submit(broker, user, Operation::PurgeTopic { stream, topic }, body).await
        }
        Request::CreatePartitions {
            stream,
            topic,
            count,
        } => {
            let op = Operation::CreatePartitions {
                stream,
                topic,
                count,
            };
            submit(broker, user, op, body).await
        }
        Request::DeletePartitions {
            stream,
            topic,
            count,
        } => {
            let op = Operation::DeletePartitions {
                stream,
                topic,
                count,
            };
            submit(broker, user, op, body).await
        }
        Request::DeleteSegments {
            stream,
            topic,
            partition,
            count,
        } => {
            let op = Operation::DeleteSegments {
                stream,
                topic,
                partition,
                count,
            };
            submit(broker, user, op, body).await
        }
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
            offsets::store(broker, session, &target, offset).await
        }
        Request::DeleteConsumerOffset { target } => offsets::delete(broker, session, &target).await,
        Request::GetConsumerGroup { group } => groups::get(broker, session, &group, body),
        Request::GetConsumerGroups { stream, topic } => {
            groups::get_all(broker, session, &stream, &topic, body)
        }
        Request::CreateConsumerGroup {
            stream,
            topic,
            name,
        } => {
            let op = Operation::CreateGroup {
                stream,
                topic,
                name,
            };
            submit(broker, user, op, body).await
        }
        Request::DeleteConsumerGroup { group } => {
            submit(broker, user, Operation::DeleteGroup { group }, body).await
        }
        Request::JoinConsumerGroup { group } => groups::join(broker, session, &group).await,
        Request::LeaveConsumerGroup { group } => groups::leave(broker, session, &group).await,
    }
}
