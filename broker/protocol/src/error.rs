//! Iggy status codes and the decoding errors that map onto them.
//!
//! The mapping from a decode failure to a status code lives here and only here, so the broker,
//! its tests and the fuzzer agree on what a client sees.

use std::fmt;

/// A status code as carried in the first four bytes of a response (0 = OK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const ERROR: Self = Self(1);
    pub const INVALID_CONFIGURATION: Self = Self(2);
    pub const INVALID_COMMAND: Self = Self(3);
    pub const INVALID_FORMAT: Self = Self(4);
    pub const FEATURE_UNAVAILABLE: Self = Self(5);
    pub const INVALID_IDENTIFIER: Self = Self(6);
    /// Iggy's "Disconnected": the SDKs treat it as a connection-level failure worth retrying.
    pub const DISCONNECTED: Self = Self(8);
    pub const UNAUTHENTICATED: Self = Self(40);
    pub const UNAUTHORIZED: Self = Self(41);
    pub const INVALID_CREDENTIALS: Self = Self(42);
    pub const INVALID_USERNAME: Self = Self(43);
    pub const INVALID_PASSWORD: Self = Self(44);
    pub const INVALID_USER_STATUS: Self = Self(45);
    pub const USER_ALREADY_EXISTS: Self = Self(46);
    pub const USER_INACTIVE: Self = Self(47);
    pub const CANNOT_DELETE_USER: Self = Self(48);
    pub const CANNOT_CHANGE_PERMISSIONS: Self = Self(49);
    pub const INVALID_PAT_NAME: Self = Self(50);
    pub const PAT_ALREADY_EXISTS: Self = Self(51);
    pub const PAT_LIMIT_REACHED: Self = Self(52);
    pub const INVALID_PAT: Self = Self(53);
    pub const PAT_EXPIRED: Self = Self(54);
    /// A user (or other resource without its own code) that does not exist.
    pub const RESOURCE_NOT_FOUND: Self = Self(20);
    pub const CLIENT_NOT_FOUND: Self = Self(100);
    pub const STREAM_ID_NOT_FOUND: Self = Self(1009);
    pub const STREAM_NAME_NOT_FOUND: Self = Self(1010);
    pub const STREAM_NAME_ALREADY_EXISTS: Self = Self(1012);
    pub const INVALID_STREAM_NAME: Self = Self(1013);
    pub const INVALID_TOPIC_SIZE: Self = Self(1019);
    pub const TOPIC_ID_NOT_FOUND: Self = Self(2010);
    pub const TOPIC_NAME_NOT_FOUND: Self = Self(2011);
    pub const TOPIC_NAME_ALREADY_EXISTS: Self = Self(2013);
    pub const INVALID_TOPIC_NAME: Self = Self(2014);
    pub const TOO_MANY_PARTITIONS: Self = Self(2015);
    pub const INVALID_REPLICATION_FACTOR: Self = Self(2018);
    pub const INVALID_PARTITIONS_COUNT: Self = Self(2019);
    pub const CANNOT_APPEND_MESSAGE: Self = Self(4010);
    pub const PARTITION_NOT_FOUND: Self = Self(3007);
    pub const NO_PARTITIONS: Self = Self(3008);
    pub const CONSUMER_OFFSET_NOT_FOUND: Self = Self(3021);
    pub const INVALID_MESSAGES_COUNT: Self = Self(4009);
    pub const TOO_BIG_USER_HEADERS: Self = Self(4017);
    pub const TOO_BIG_MESSAGE_PAYLOAD: Self = Self(4022);
    /// A stored message failed its checksum when read back.
    pub const INVALID_MESSAGE_CHECKSUM: Self = Self(4027);
    pub const INVALID_MESSAGE_PAYLOAD_LENGTH: Self = Self(4025);
    pub const NON_ZERO_OFFSET: Self = Self(4031);
    pub const NON_ZERO_TIMESTAMP: Self = Self(4032);
    pub const MISSING_INDEX: Self = Self(4033);
    pub const INVALID_INDEXES_BYTE_SIZE: Self = Self(4034);
    pub const INVALID_INDEXES_COUNT: Self = Self(4035);
    pub const INVALID_MESSAGES_SIZE: Self = Self(4036);
    pub const TOO_SMALL_MESSAGE: Self = Self(4037);
    pub const INVALID_OFFSET: Self = Self(4100);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iggy status {}", self.0)
    }
}

/// Why a payload could not be decoded. Each variant maps to one Iggy status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The payload ended before a field could be read (Iggy: `InvalidCommand`).
    #[error("payload truncated at byte {offset}: need {need} more bytes")]
    Truncated { offset: usize, need: usize },
    /// A text field was not UTF-8 (Iggy: `InvalidCommand`).
    #[error("field at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    /// A discriminant (consumer kind, strategy, partitioning...) is unknown (Iggy: `InvalidCommand`).
    #[error("unknown {what} kind {value} at byte {offset}")]
    UnknownKind {
        what: &'static str,
        value: u8,
        offset: usize,
    },
    /// A field failed validation, e.g. a numeric identifier whose length is not 4 (Iggy: `InvalidFormat`).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// A message batch violated a rule with its own dedicated Iggy code.
    #[error("invalid message batch: {reason}")]
    Batch { code: ErrorCode, reason: String },
}

impl WireError {
    /// The status code a client receives for this error. Iggy's server maps validation
    /// failures to `InvalidFormat` and every other decode failure to `InvalidCommand`; so do we.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Truncated { .. }
            | WireError::InvalidUtf8 { .. }
            | WireError::UnknownKind { .. } => ErrorCode::INVALID_COMMAND,
            WireError::Invalid(_) => ErrorCode::INVALID_FORMAT,
            WireError::Batch { code, .. } => *code,
        }
    }

    pub(crate) fn batch(code: ErrorCode, reason: impl Into<String>) -> Self {
        WireError::Batch {
            code,
            reason: reason.into(),
        }
    }
}
