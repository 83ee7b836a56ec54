//! Decoding of every request payload except SendMessages (see [`crate::message`], which is
//! parsed in place so its frames can be stamped without a copy).
//!
//! Trailing bytes after a decoded request are ignored, as Iggy's server ignores them.

use crate::codes::Command;
use crate::error::WireError;
use crate::permissions::Permissions;
use crate::primitives::{decode_optional_partition, Consumer, Identifier, PollingStrategy};
use crate::reader::Reader;

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub compression: u8,
    /// Microseconds; 0 = server default, `u64::MAX` = never.
    pub message_expiry: u64,
    /// Bytes; 0 = server default, `u64::MAX` = unlimited.
    pub max_topic_size: u64,
    pub replication_factor: u8,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRef {
    pub consumer: Consumer,
    pub stream: Identifier,
    pub topic: Identifier,
    pub partition: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    GetMe,
    LoginUser {
        username: String,
        password: String,
        version: String,
        context: String,
    },
    LogoutUser,
    GetStream {
        stream: Identifier,
    },
    GetStreams,
    CreateStream {
        name: String,
    },
    UpdateStream {
        stream: Identifier,
        name: String,
    },
    DeleteStream {
        stream: Identifier,
    },
    PurgeStream {
        stream: Identifier,
    },
    GetTopic {
        stream: Identifier,
        topic: Identifier,
    },
    GetTopics {
        stream: Identifier,
    },
    CreateTopic {
        stream: Identifier,
        partitions_count: u32,
        settings: TopicSettings,
    },
    UpdateTopic {
        stream: Identifier,
        topic: Identifier,
        settings: TopicSettings,
    },
    DeleteTopic {
        stream: Identifier,
        topic: Identifier,
    },
    PurgeTopic {
        stream: Identifier,
        topic: Identifier,
    },
    CreatePartitions {
        stream: Identifier,
        topic: Identifier,
        count: u32,
    },
    DeletePartitions {
        stream: Identifier,
        topic: Identifier,
        count: u32,
    },
    PollMessages {
        target: PartitionRef,
        strategy: PollingStrategy,
        count: u32,
        auto_commit: bool,
    },
    FlushUnsavedBuffer {
        stream: Identifier,
        topic: Identifier,
        partition: u32,
        fsync: bool,
    },
    GetConsumerOffset {
        target: PartitionRef,
    },
    StoreConsumerOffset {
        target: PartitionRef,
        offset: u64,
    },
    DeleteConsumerOffset {
        target: PartitionRef,
    },
    GetStats,
    GetClusterMetadata,
    /// A diagnostic archive: `compression` and `kinds` are the SDK's codes, checked by the
    /// broker (which of them it can produce is its business, not the wire's).
    GetSnapshotFile {
        compression: u8,
        kinds: Vec<u8>,
    },
    GetClient {
        client_id: u32,
    },
    GetClients,
    GetUser {
        user: Identifier,
    },
    GetUsers,
    CreateUser {
        username: String,
        password: String,
        /// 1 active, 2 inactive.
        status: u8,
        permissions: Option<Permissions>,
    },
    DeleteUser {
        user: Identifier,
    },
    UpdateUser {
        user: Identifier,
        username: Option<String>,
        status: Option<u8>,
    },
    UpdatePermissions {
        user: Identifier,
        permissions: Option<Permissions>,
    },
    ChangePassword {
        user: Identifier,
        current_password: String,
        new_password: String,
    },
    GetPersonalAccessTokens,
    CreatePersonalAccessToken {
        name: String,
        /// Lifetime in microseconds; 0 = server default, `u64::MAX` = never.
        expiry: u64,
    },
    DeletePersonalAccessToken {
        name: String,
    },
    LoginWithPersonalAccessToken {
        token: String,
    },
    GetConsumerGroup {
        group: GroupRef,
    },
    GetConsumerGroups {
        stream: Identifier,
        topic: Identifier,
    },
    CreateConsumerGroup {
        stream: Identifier,
        topic: Identifier,
        name: String,
    },
    DeleteConsumerGroup {
        group: GroupRef,
    },
    JoinConsumerGroup {
        group: GroupRef,
    },
    LeaveConsumerGroup {
        group: GroupRef,
    },
    DeleteSegments {
        stream: Identifier,
        topic: Identifier,
        partition: u32,
        count: u32,
    },
}

/// A consumer group addressed by stream, topic and group identifiers.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub stream: Identifier,
    pub topic: Identifier,
    pub group: Identifier,
}

/// Outcome of decoding a code this decoder does not serve: SendMessages, which is parsed in
/// place (and any command a later protocol version adds to [`Command`] before it is served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotServed(pub Command);

impl Request {
    /// Decodes `payload` for `command`. `Ok(Err(NotServed))` marks commands not decoded here:
    /// SendMessages is parsed in place.
    pub fn decode(command: Command, payload: &[u8]) -> Result<Result<Self, NotServed>, WireError> {
        let r = &mut Reader::new(payload);
        let ident = |r: &mut Reader<'_>| Identifier::decode(r);
        let request = match command {
            Command::Ping => Request::Ping,
            Command::GetMe => Request::GetMe,
            Command::GetClusterMetadata => Request::GetClusterMetadata,
            Command::GetSnapshotFile => {
                let compression = r.u8()?;
                let count = r.u8()?;
                let kinds = (0..count).map(|_| r.u8()).collect::<Result<_, _>>()?;
                Request::GetSnapshotFile { compression, kinds }
            }
            Command::LogoutUser => Request::LogoutUser,
            Command::LoginUser => {
                let username = r.name_u8()?.to_owned();
                let password = r.name_u8()?.to_owned();
                // Both u32-prefixed fields are always present in 0.10 clients; older clients
                // may stop after the password, which Iggy also accepts.
                let version = if r.remaining() > 0 {
                    r.str_u32()?.to_owned()
                } else {
                    String::new()
                };
                let context = if r.remaining() > 0 {
                    r.str_u32()?.to_owned()
                } else {
                    String::new()
                };
                Request::LoginUser {
                    username,
                    password,
                    version,
                    context,
                }
            }
            Command::GetStream => Request::GetStream { stream: ident(r)? },
            Command::GetStreams => Request::GetStreams,
            Command::CreateStream => Request::CreateStream {
                name: r.name_u8()?.to_owned(),
            },
            Command::UpdateStream => Request::UpdateStream {
                stream: ident(r)?,
                name: r.name_u8()?.to_owned(),
            },
            Command::DeleteStream => Request::DeleteStream { stream: ident(r)? },
            Command::PurgeStream => Request::PurgeStream { stream: ident(r)? },
            Command::GetTopic => Request::GetTopic {
                stream: ident(r)?,
                topic: ident(r)?,
            },
            Command::GetTopics => Request::GetTopics { stream: ident(r)? },
            Command::CreateTopic => {
                let stream = ident(r)?;
                let partitions_count = r.u32()?;
                Request::CreateTopic {
                    stream,
                    partitions_count,
                    settings: topic_settings(r)?,
                }
            }
            Command::UpdateTopic => {
                let stream = ident(r)?;
                let topic = ident(r)?;
                Request::UpdateTopic {
                    stream,
                    topic,
                    settings: topic_settings(r)?,
                }
            }
            Command::DeleteTopic => Request::DeleteTopic {
                stream: ident(r)?,
                topic: ident(r)?,
            },
            Command::PurgeTopic => Request::PurgeTopic {
                stream: ident(r)?,
                topic: ident(r)?,
            },
            Command::CreatePartitions => Request::CreatePartitions {
                stream: ident(r)?,
                topic: ident(r)?,
                count: r.u32()?,
            },
            Command::DeletePartitions => Request::DeletePartitions {
                stream: ident(r)?,
                topic: ident(r)?,
                count: r.u32()?,
            },
            Command::PollMessages => Request::PollMessages {
                target: partition_ref(r)?,
                strategy: PollingStrategy::decode(r)?,
                count: r.u32()?,
                auto_commit: r.u8()? != 0,
            },
            Command::FlushUnsavedBuffer => Request::FlushUnsavedBuffer {
                stream: ident(r)?,
                topic: ident(r)?,
                partition: r.u32()?,
                fsync: r.u8()? != 0,
            },
            Command::GetConsumerOffset => Request::GetConsumerOffset {
                target: partition_ref(r)?,
            },
            Command::StoreConsumerOffset => Request::StoreConsumerOffset {
                target: partition_ref(r)?,
                offset: r.u64()?,
            },
            Command::DeleteConsumerOffset => Request::DeleteConsumerOffset {
                target: partition_ref(r)?,
            },
            Command::GetStats => Request::GetStats,
            Command::GetClient => Request::GetClient {
                client_id: r.u32()?,
            },
            Command::GetClients => Request::GetClients,
            Command::GetUser => Request::GetUser { user: ident(r)? },
            Command::GetUsers => Request::GetUsers,
            Command::CreateUser => Request::CreateUser {
                username: r.name_u8()?.to_owned(),
                password: r.name_u8()?.to_owned(),
                status: r.u8()?,
                permissions: Permissions::decode_optional(r)?,
            },
            Command::DeleteUser => Request::DeleteUser { user: ident(r)? },
            Command::UpdateUser => {
                let user = ident(r)?;
                let username = if r.u8()? != 0 {
                    Some(r.name_u8()?.to_owned())
                } else {
                    None
                };
                let status = if r.u8()? != 0 { Some(r.u8()?) } else { None };
                Request::UpdateUser {
                    user,
                    username,
                    status,
                }
            }
            Command::UpdatePermissions => Request::UpdatePermissions {
                user: ident(r)?,
                permissions: Permissions::decode_optional(r)?,
            },
            Command::ChangePassword => Request::ChangePassword {
                user: ident(r)?,
                current_password: r.name_u8()?.to_owned(),
                new_password: r.name_u8()?.to_owned(),
            },
            Command::GetPersonalAccessTokens => Request::GetPersonalAccessTokens,
            Command::CreatePersonalAccessToken => Request::CreatePersonalAccessToken {
                name: r.name_u8()?.to_owned(),
                expiry: r.u64()?,
            },
            Command::DeletePersonalAccessToken => Request::DeletePersonalAccessToken {
                name: r.name_u8()?.to_owned(),
            },
            Command::LoginWithPersonalAccessToken => Request::LoginWithPersonalAccessToken {
                token: r.name_u8()?.to_owned(),
            },
            Command::GetConsumerGroup => Request::GetConsumerGroup {
                group: group_ref(r)?,
            },
            Command::GetConsumerGroups => Request::GetConsumerGroups {
                stream: ident(r)?,
                topic: ident(r)?,
            },
            Command::CreateConsumerGroup => Request::CreateConsumerGroup {
                stream: ident(r)?,
                topic: ident(r)?,
                name: r.name_u8()?.to_owned(),
            },
            Command::DeleteConsumerGroup => Request::DeleteConsumerGroup {
                group: group_ref(r)?,
            },
            Command::JoinConsumerGroup => Request::JoinConsumerGroup {
                group: group_ref(r)?,
            },
            Command::LeaveConsumerGroup => Request::LeaveConsumerGroup {
                group: group_ref(r)?,
            },
            Command::DeleteSegments => Request::DeleteSegments {
                stream: ident(r)?,
                topic: ident(r)?,
                partition: r.u32()?,
                count: r.u32()?,
            },
            other => return Ok(Err(NotServed(other))),
        };
        Ok(Ok(request))
    }
}

fn topic_settings(r: &mut Reader<'_>) -> Result<TopicSettings, WireError> {
    Ok(TopicSettings {
        compression: r.u8()?,
        message_expiry: r.u64()?,
        max_topic_size: r.u64()?,
        replication_factor: r.u8()?,
        name: r.name_u8()?.to_owned(),
    })
}

fn group_ref(r: &mut Reader<'_>) -> Result<GroupRef, WireError> {
    Ok(GroupRef {
        stream: Identifier::decode(r)?,
        topic: Identifier::decode(r)?,
        group: Identifier::decode(r)?,
    })
}

fn partition_ref(r: &mut Reader<'_>) -> Result<PartitionRef, WireError> {
    Ok(PartitionRef {
        consumer: Consumer::decode(r)?,
        stream: Identifier::decode(r)?,
        topic: Identifier::decode(r)?,
        partition: decode_optional_partition(r)?,
    })
}

/// Encoders for the requests the load generator and raw-socket tests send.
pub mod encode {
    use super::*;
    use crate::primitives::encode_optional_partition;

    pub fn login_user(username: &str, password: &str) -> Vec<u8> {
        let mut out = vec![username.len() as u8];
        out.extend_from_slice(username.as_bytes());
        out.push(password.len() as u8);
        out.extend_from_slice(password.as_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    pub fn name(name: &str) -> Vec<u8> {
        let mut out = vec![name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out
    }

    pub fn create_topic(stream: &Identifier, partitions: u32, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        stream.encode(&mut out);
        out.extend_from_slice(&partitions.to_le_bytes());
        out.push(1);
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.push(1);
        out.extend_from_slice(&self::name(name));
        out
    }

    pub fn create_partitions(stream: &Identifier, topic: &Identifier, count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        stream.encode(&mut out);
        topic.encode(&mut out);
        out.extend_from_slice(&count.to_le_bytes());
        out
    }

    pub fn poll_messages(
        target: &PartitionRef,
        strategy: PollingStrategy,
        count: u32,
        auto_commit: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        target.consumer.encode(&mut out);
        target.stream.encode(&mut out);
        target.topic.encode(&mut out);
        encode_optional_partition(target.partition, &mut out);
        strategy.encode(&mut out);
        out.extend_from_slice(&count.to_le_bytes());
        out.push(u8::from(auto_commit));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::ConsumerKind;

    #[test]
    fn login_decodes_with_and_without_the_optional_fields() {
        let payload = encode::login_user("iggy", "secret");
        let request = Request::decode(Command::LoginUser, &payload)
            .unwrap()
            .unwrap();
        assert_eq!(
            request,
            Request::LoginUser {
                username: "iggy".into(),
                password: "secret".into(),
                version: String::new(),
                context: String::new()
            }
        );
        let short = &payload[..payload.len() - 8];
        assert!(Request::decode(Command::LoginUser, short).unwrap().is_ok());
    }

    #[test]
    fn poll_round_trips() {
        let target = PartitionRef {
            consumer: Consumer {
                kind: ConsumerKind::Consumer,
                id: Identifier::Numeric(1),
            },
            stream: Identifier::Named("s".into()),
            topic: Identifier::Numeric(0),
            partition: Some(2),
        };
        let payload = encode::poll_messages(&target, PollingStrategy::Next, 10, true);
        let request = Request::decode(Command::PollMessages, &payload)
            .unwrap()
            .unwrap();
        assert_eq!(
            request,
            Request::PollMessages {
                target,
                strategy: PollingStrategy::Next,
                count: 10,
                auto_commit: true
            }
        );
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let payload = encode::create_topic(&Identifier::Numeric(1), 3, "orders");
        for cut in 0..payload.len() {
            let result = Request::decode(Command::CreateTopic, &payload[..cut]);
            assert!(result.is_err(), "cut at {cut} decoded");
        }
        assert!(Request::decode(Command::CreateTopic, &payload)
            .unwrap()
            .is_ok());
    }

    #[test]
    fn send_messages_is_left_to_the_in_place_parser() {
        assert_eq!(
            Request::decode(Command::SendMessages, &[]).unwrap(),
            Err(NotServed(Command::SendMessages))
        );
    }

    #[test]
    fn a_snapshot_request_is_its_compression_then_counted_kinds() {
        assert_eq!(
            Request::decode(Command::GetSnapshotFile, &[2, 2, 1, 5])
                .unwrap()
                .unwrap(),
            Request::GetSnapshotFile {
                compression: 2,
                kinds: vec![1, 5],
            }
        );
        for cut in [&[][..], &[2], &[2, 2, 1]] {
            assert!(Request::decode(Command::GetSnapshotFile, cut).is_err());
        }
    }

    #[test]
    fn update_user_optional_fields() {
        let mut payload = Vec::new();
        Identifier::Named("bob".into()).encode(&mut payload);
        payload.extend_from_slice(&[1, 3, b'r', b'o', b'b', 1, 2]);
        assert_eq!(
            Request::decode(Command::UpdateUser, &payload)
                .unwrap()
                .unwrap(),
            Request::UpdateUser {
                user: Identifier::Named("bob".into()),
                username: Some("rob".into()),
                status: Some(2)
            }
        );
    }
}
