//! Every way a request can fail, and the one place that maps each to an Iggy status code.

use crate::storage::StorageError;
use iggy_wire::{Command, ErrorCode, Identifier, WireError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unknown command code {0}")]
    UnknownCommand(u32),
    #[error("request of {size} bytes exceeds the {limit}-byte limit")]
    RequestTooLarge { size: u64, limit: u64 },
    #[error("{} is not served by this broker yet", .0.name())]
    NotServed(Command),
    #[error("invalid snapshot request: {0}")]
    InvalidSnapshotRequest(String),
    #[error("snapshot compression {0} is not available here (1 stored and 2 deflated are)")]
    SnapshotCompressionUnavailable(u8),
    #[error("the snapshot could not be made: {0}")]
    SnapshotFailed(String),
    #[error("not logged in")]
    Unauthenticated,
    #[error(transparent)]
    HashBusy(#[from] crate::security::hashing::HashBusy),
    #[error("the user lacks the permission for this command")]
    Unauthorized,
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("user is inactive")]
    UserInactive,
    #[error("stream {0} not found")]
    StreamNotFound(Identifier),
    #[error("topic {1} not found in stream {0}")]
    TopicNotFound(Identifier, Identifier),
    #[error("partition {0} not found")]
    PartitionNotFound(u32),
    #[error("topic has no partitions")]
    NoPartitions,
    #[error("consumer group {0} not found")]
    ConsumerGroupNotFound(Identifier),
    #[error("client {0} is not a member of the consumer group")]
    ConsumerGroupMemberNotFound(u32),
    #[error("consumer group name '{0}' already exists")]
    ConsumerGroupNameExists(String),
    #[error("consumer group name must be 1-255 bytes")]
    InvalidConsumerGroupName,
    #[error("user {0} not found")]
    UserNotFound(Identifier),
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("username must be 3-50 bytes")]
    InvalidUsername,
    #[error("password must be 3-100 bytes")]
    InvalidPassword,
    #[error("user status {0} is neither 1 (active) nor 2 (inactive)")]
    InvalidUserStatus(u8),
    #[error("the root user cannot be deleted or deactivated")]
    CannotDeleteRoot,
    #[error("the root user's permissions cannot be changed")]
    CannotChangeRootPermissions,
    #[error("token name must be 3-30 bytes")]
    InvalidTokenName,
    #[error("a token named '{0}' already exists")]
    TokenExists(String),
    #[error("user already holds the maximum of {0} tokens")]
    TokenLimit(u32),
    #[error("no token named '{0}'")]
    TokenNotFound(String),
    #[error("invalid personal access token")]
    InvalidToken,
    #[error("personal access token '{0}' expired")]
    TokenExpired(String),
    #[error("segments count must be positive")]
    InvalidSegmentsCount,
    #[error("stream name '{0}' already exists")]
    StreamNameExists(String),
    #[error("topic name '{0}' already exists")]
    TopicNameExists(String),
    #[error("stream name must be 1-255 bytes")]
    InvalidStreamName,
    #[error("topic name must be 1-255 bytes")]
    InvalidTopicName,
    #[error("at most 1000 partitions per request")]
    TooManyPartitions,
    #[error("invalid partitions count {0}")]
    InvalidPartitionsCount(u32),
    #[error("max topic size {size} is smaller than the segment size {segment}")]
    InvalidTopicSize { size: u64, segment: u64 },
    #[error("unknown compression algorithm {0}")]
    InvalidCompression(u8),
    #[error("offset {offset} is past the partition's current offset {current}")]
    InvalidOffset { offset: u64, current: u64 },
    #[error("no offset stored for this consumer")]
    ConsumerOffsetNotFound,
    #[error("cannot append messages: {0}")]
    Append(StorageError),
    /// A replicated operation failed when the replicas applied it; every replica failed it
    /// the same way, and this is the Iggy status they answered with.
    #[error("the operation failed on the replicas with Iggy status {}", .0.0)]
    Replicated(ErrorCode),
    /// No primary answered in time (a view change, or this replica is cut off): nothing is
    /// known to have happened, and the client may retry.
    #[error("no primary committed the operation within {0:?}; retry")]
    NoPrimary(std::time::Duration),
    /// The cluster evicted this broker's client session while a request in it was being sent
    /// again: one of its copies may have executed, and sending it under a new session could
    /// execute it twice, so it is not sent again. Like a timeout, the outcome is unknown.
    #[error(
        "the cluster evicted the session of a request that was sent more than once: it may \
         have executed, and it is not sent again"
    )]
    OutcomeUnknown,
    /// This replica's own state is not the cluster's (it is rebuilding, syncing, far behind,
    /// in a view change or retired) and did not become so in time: it answers nothing from
    /// it, and the client may retry here or at another member.
    #[error("this replica is not caught up with the cluster (waited {0:?}); retry")]
    NotCaughtUp(std::time::Duration),
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    /// Reading a segment that only the object store holds failed.
    #[error("tiered data could not be read: {0}")]
    Tier(iggy_tiering::StoreError),
    #[error(
        "partition {0} has segments in an object store, but none is configured \
         (tiering.l3): they cannot be read"
    )]
    TierMissing(u32),
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        use BrokerError::*;
        match self {
            Wire(e) => e.code(),
            UnknownCommand(_) | RequestTooLarge { .. } => ErrorCode::INVALID_COMMAND,
            NotServed(_) | SnapshotCompressionUnavailable(_) => ErrorCode::FEATURE_UNAVAILABLE,
            InvalidSnapshotRequest(_) => ErrorCode::INVALID_COMMAND,
            // Iggy's SnapshotFileCompletionFailed.
            SnapshotFailed(_) => ErrorCode(9000),
            Unauthenticated => ErrorCode::UNAUTHENTICATED,
            // Iggy has no "busy" status; the generic error tells the SDK to give up on this
            // attempt, and the log line says why.
            HashBusy(_) => ErrorCode::ERROR,
            Unauthorized => ErrorCode::UNAUTHORIZED,
            InvalidCredentials => ErrorCode::INVALID_CREDENTIALS,
            UserInactive => ErrorCode::USER_INACTIVE,
            StreamNotFound(Identifier::Numeric(_)) => ErrorCode::STREAM_ID_NOT_FOUND,
            StreamNotFound(Identifier::Named(_)) => ErrorCode::STREAM_NAME_NOT_FOUND,
            TopicNotFound(_, Identifier::Numeric(_)) => ErrorCode::TOPIC_ID_NOT_FOUND,
            TopicNotFound(_, Identifier::Named(_)) => ErrorCode::TOPIC_NAME_NOT_FOUND,
            PartitionNotFound(_) => ErrorCode::PARTITION_NOT_FOUND,
            NoPartitions => ErrorCode::NO_PARTITIONS,
            ConsumerGroupNotFound(Identifier::Numeric(_)) => ErrorCode(5000),
            ConsumerGroupNotFound(Identifier::Named(_)) => ErrorCode(5003),
            ConsumerGroupMemberNotFound(_) => ErrorCode(5006),
            ConsumerGroupNameExists(_) => ErrorCode(5004),
            InvalidConsumerGroupName => ErrorCode(5005),
            UserNotFound(_) => ErrorCode::RESOURCE_NOT_FOUND,
            UserExists(_) => ErrorCode::USER_ALREADY_EXISTS,
            InvalidUsername => ErrorCode::INVALID_USERNAME,
            InvalidPassword => ErrorCode::INVALID_PASSWORD,
            InvalidUserStatus(_) => ErrorCode::INVALID_USER_STATUS,
            CannotDeleteRoot => ErrorCode::CANNOT_DELETE_USER,
            CannotChangeRootPermissions => ErrorCode::CANNOT_CHANGE_PERMISSIONS,
            InvalidTokenName => ErrorCode::INVALID_PAT_NAME,
            TokenExists(_) => ErrorCode::PAT_ALREADY_EXISTS,
            TokenLimit(_) => ErrorCode::PAT_LIMIT_REACHED,
            InvalidToken => ErrorCode::INVALID_PAT,
            TokenNotFound(_) => ErrorCode::RESOURCE_NOT_FOUND,
            TokenExpired(_) => ErrorCode::PAT_EXPIRED,
            InvalidSegmentsCount => ErrorCode(4030),
            StreamNameExists(_) => ErrorCode::STREAM_NAME_ALREADY_EXISTS,
            TopicNameExists(_) => ErrorCode::TOPIC_NAME_ALREADY_EXISTS,
            InvalidStreamName => ErrorCode::INVALID_STREAM_NAME,
            InvalidTopicName => ErrorCode::INVALID_TOPIC_NAME,
            TooManyPartitions => ErrorCode::TOO_MANY_PARTITIONS,
            InvalidPartitionsCount(_) => ErrorCode::INVALID_PARTITIONS_COUNT,
            InvalidTopicSize { .. } => ErrorCode::INVALID_TOPIC_SIZE,
            InvalidCompression(_) => ErrorCode::INVALID_FORMAT,
            InvalidOffset { .. } => ErrorCode::INVALID_OFFSET,
            ConsumerOffsetNotFound => ErrorCode::CONSUMER_OFFSET_NOT_FOUND,
            Append(_) => ErrorCode::CANNOT_APPEND_MESSAGE,
            Replicated(code) => *code,
            NoPrimary(_) | NotCaughtUp(_) | OutcomeUnknown => ErrorCode::DISCONNECTED,
            Storage(StorageError::CorruptRead { .. }) => ErrorCode::INVALID_MESSAGE_CHECKSUM,
            Storage(_) => ErrorCode::ERROR,
            Tier(iggy_tiering::StoreError::Corrupt { .. }) => ErrorCode::INVALID_MESSAGE_CHECKSUM,
            // Iggy has no status for "stored elsewhere and unreachable"; the generic error
            // makes SDKs retry the poll, and the log line names the store and the cause.
            Tier(_) | TierMissing(_) => ErrorCode::ERROR,
        }
    }

    /// Server-side failures are logged at error level; client mistakes are not.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            BrokerError::Append(_)
                | BrokerError::Storage(_)
                | BrokerError::Tier(_)
                | BrokerError::TierMissing(_)
        )
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
