//! How a [`Submission`] travels in the replication log: the body of a VSR prepare, decoded and
//! applied by every replica.
//!
//! Layout: `kind u8`, the acting user (`flag u8`, `id u32`), then the operation. An append
//! (`kind` 0) carries its target and partitioning in their wire encodings, `count u32`,
//! `index_len u32`, the index and the message frames exactly as the client sent them: the log
//! holds the batch once, and a replica stamps its own copy in place, as a single node stamps
//! the request buffer. Every other operation (`kind` 1) is rare and small, and is serde-encoded
//! with postcard.

use super::{Operation, Submission};
use iggy_wire::reader::Reader;
use iggy_wire::{Identifier, Partitioning, WireError};

const APPEND: u8 = 0;
const OTHER: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("operation body is truncated or malformed: {0}")]
    Wire(#[from] WireError),
    #[error("operation body does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("unknown operation kind {0}")]
    UnknownKind(u8),
}

/// Whether a log entry is an append (it grows the data by about its own size).
pub fn is_append(body: &[u8]) -> bool {
    body.first() == Some(&APPEND)
}

/// Whether a log entry puts settings in force (`SetStateSettings`, `SetDeduplication`): what a
/// primary admits before the cluster holds its first settings (`replication::machine`).
pub fn puts_settings(body: &[u8]) -> bool {
    !is_append(body)
        && decode(body).is_ok_and(|decoded| decoded.other().is_some_and(Operation::puts_settings))
}

/// How much of `replication.min_free_space` a log entry needs left on every member's disk to
/// be admitted (`replication::machine`, `admit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomNeeded {
    /// An append: all of the reserve (it grows the data by about its own size).
    Reserve,
    /// An operation that adds to the state (a create, an update, a stored offset, a join): a
    /// quarter of it, what the reserve keeps for saving the metadata.
    Quarter,
    /// A removal or a broker-issued clean-up, and an entry that does not decode (it fails on
    /// every replica alike, writing nothing): none, since they are how room is made.
    None,
}

/// What a log entry needs left on every member's disk to be admitted.
pub fn room_needed(body: &[u8]) -> RoomNeeded {
    if is_append(body) {
        return RoomNeeded::Reserve;
    }
    match decode_into(body, Vec::new()) {
        Ok(decoded)
            if decoded
                .other()
                .is_some_and(|op| !op.makes_room_or_cleans_up()) =>
        {
            RoomNeeded::Quarter
        }
        _ => RoomNeeded::None,
    }
}

/// Appends `submission`'s log encoding to `out`.
pub fn encode(submission: &Submission<'_>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let user = |out: &mut Vec<u8>| {
        out.push(u8::from(submission.user.is_some()));
        out.extend_from_slice(&submission.user.unwrap_or(0).to_le_bytes());
    };
    match &submission.op {
        Operation::Append {
            stream,
            topic,
            partitioning,
            count,
            index,
            messages,
        } => {
            // Exactly what follows, so the megabyte-sized body is never reallocated (and
            // copied) mid-encode: a named stream or topic used to overflow a fixed guess.
            out.reserve(
                1 + 5
                    + stream.encoded_len()
                    + topic.encoded_len()
                    + partitioning.encoded_len()
                    + 8
                    + index.len()
                    + messages.len(),
            );
            out.push(APPEND);
            user(out);
            stream.encode(out);
            topic.encode(out);
            partitioning.encode(out);
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&(index.len() as u32).to_le_bytes());
            out.extend_from_slice(index);
            out.extend_from_slice(messages);
        }
        op => {
            out.push(OTHER);
            user(out);
            let encoded = postcard::to_extend(op, std::mem::take(out))?;
            *out = encoded;
        }
    }
    Ok(())
}

/// A decoded log entry, owning what its operation borrows.
pub struct Decoded {
    user: Option<u32>,
    op: DecodedOp,
}

enum DecodedOp {
    Append {
        stream: Identifier,
        topic: Identifier,
        partitioning: Partitioning,
        count: u32,
        index: Vec<u8>,
        messages: Vec<u8>,
    },
    Other(Operation<'static>),
}

impl Decoded {
    /// The operation, unless it is an append.
    pub fn other(&self) -> Option<&Operation<'static>> {
        match &self.op {
            DecodedOp::Append { .. } => None,
            DecodedOp::Other(op) => Some(op),
        }
    }

    /// The frames buffer of an append (for reuse by the next `decode_into`).
    pub fn into_scratch(self) -> Vec<u8> {
        match self.op {
            DecodedOp::Append { messages, .. } => messages,
            DecodedOp::Other(_) => Vec::new(),
        }
    }

    /// The submission, borrowing this entry's buffers (an append's frames are stamped in
    /// them). An entry is applied once: a second call yields `ExpireTokens` for a non-append.
    pub fn submission(&mut self) -> Submission<'_> {
        let op = match &mut self.op {
            DecodedOp::Append {
                stream,
                topic,
                partitioning,
                count,
                index,
                messages,
            } => Operation::Append {
                stream: stream.clone(),
                topic: topic.clone(),
                partitioning: partitioning.clone(),
                count: *count,
                index,
                messages,
            },
            DecodedOp::Other(op) => std::mem::replace(op, Operation::ExpireTokens),
        };
        Submission {
            user: self.user,
            op,
        }
    }
}

pub fn decode(body: &[u8]) -> Result<Decoded, CodecError> {
    decode_into(body, Vec::new())
}

/// [`decode`], with an append's frames copied into `scratch` (cleared first): a replica
/// applying batch after batch reuses one buffer instead of mapping a fresh one per batch.
/// [`Decoded::into_scratch`] gives it back.
pub fn decode_into(body: &[u8], mut scratch: Vec<u8>) -> Result<Decoded, CodecError> {
    let mut reader = Reader::new(body);
    let kind = reader.u8()?;
    let has_user = reader.u8()? != 0;
    let id = reader.u32()?;
    let user = has_user.then_some(id);
    let op = match kind {
        APPEND => {
            let stream = Identifier::decode(&mut reader)?;
            let topic = Identifier::decode(&mut reader)?;
            let partitioning = Partitioning::decode(&mut reader)?;
            let count = reader.u32()?;
            let index_len = reader.u32()? as usize;
            let index = reader.take(index_len)?.to_vec();
            scratch.clear();
            scratch.extend_from_slice(reader.rest());
            let messages = scratch;
            DecodedOp::Append {
                stream,
                topic,
                partitioning,
                count,
                index,
                messages,
            }
        }
        OTHER => DecodedOp::Other(postcard::from_bytes(reader.rest())?),
        other => return Err(CodecError::UnknownKind(other)),
    };
    Ok(Decoded { user, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::groups::GroupMember;
    use iggy_wire::request::{GroupRef, TopicSettings};
    use iggy_wire::ConsumerKind;

    fn round_trip(submission: Submission<'_>) -> Vec<u8> {
        let mut encoded = Vec::new();
        encode(&submission, &mut encoded).unwrap();
        let mut decoded = decode(&encoded).unwrap();
        let mut again = Vec::new();
        encode(&decoded.submission(), &mut again).unwrap();
        assert_eq!(
            again, encoded,
            "decode(encode(x)) encodes to the same bytes"
        );
        encoded
    }

    #[test]
    fn every_kind_of_operation_round_trips() {
        let ops = vec![
            Operation::CreateStream { name: "s".into() },
            Operation::CreateTopic {
                stream: Identifier::Named("s".into()),
                partitions: 3,
                settings: TopicSettings {
                    compression: 1,
                    message_expiry: 7,
                    max_topic_size: u64::MAX,
                    replication_factor: 1,
                    name: "t".into(),
                },
            },
            Operation::CreateUser {
                username: "u".into(),
                password_hash: "$argon2id$...".into(),
                active: true,
                permissions: None,
            },
            Operation::StoreOffset {
                stream: 1,
                topic: 2,
                partition: 3,
                kind: ConsumerKind::Group,
                key: "7".into(),
                offset: 99,
            },
            Operation::ExpireTokens,
            Operation::JoinGroup {
                group: GroupRef {
                    stream: Identifier::Numeric(1),
                    topic: Identifier::Named("t".into()),
                    group: Identifier::Named("g".into()),
                },
                member: GroupMember {
                    node: 2,
                    incarnation: 0xdead_beef,
                    client: 17,
                },
            },
            Operation::ForgetNode {
                node: 2,
                keep: Some(5),
            },
            Operation::HandOverPartition {
                stream: 1,
                topic: 2,
                group: 3,
                handover: crate::state::groups::Handover {
                    partition: 4,
                    from: GroupMember {
                        node: 1,
                        incarnation: 9,
                        client: 12,
                    },
                    since: 1_700_000_000_000_000,
                },
            },
        ];
        for op in ops {
            round_trip(Submission { user: Some(4), op });
        }
    }

    #[test]
    fn what_an_entry_needs_left_on_a_disk_follows_what_it_does() {
        let needs = |op: Operation<'_>| {
            let mut body = Vec::new();
            encode(&Submission { user: None, op }, &mut body).unwrap();
            room_needed(&body)
        };
        let mut messages = vec![0u8; 10];
        let append = Operation::Append {
            stream: Identifier::Numeric(1),
            topic: Identifier::Numeric(1),
            partitioning: Partitioning::Balanced,
            count: 0,
            index: &[],
            messages: &mut messages,
        };
        assert_eq!(needs(append), RoomNeeded::Reserve);
        let stream = || Identifier::Named("s".into());
        assert_eq!(
            needs(Operation::CreateStream { name: "s".into() }),
            RoomNeeded::Quarter
        );
        let store = Operation::StoreOffset {
            stream: 1,
            topic: 1,
            partition: 0,
            kind: ConsumerKind::Consumer,
            key: "1".into(),
            offset: 5,
        };
        assert_eq!(needs(store), RoomNeeded::Quarter);
        assert_eq!(
            needs(Operation::DeleteStream { stream: stream() }),
            RoomNeeded::None
        );
        assert_eq!(
            needs(Operation::PurgeStream { stream: stream() }),
            RoomNeeded::None
        );
        assert_eq!(needs(Operation::EnforceRetention), RoomNeeded::None);
        assert_eq!(
            room_needed(&[OTHER, 0, 0, 0, 0, 0, 0xff]),
            RoomNeeded::None,
            "an entry that does not decode fails alike everywhere"
        );
    }

    #[test]
    fn appends_keep_their_frames_byte_for_byte() {
        let index = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut messages = vec![9u8; 100];
        let encoded = round_trip(Submission {
            user: None,
            op: Operation::Append {
                stream: Identifier::Numeric(1),
                topic: Identifier::Named("t".into()),
                partitioning: Partitioning::MessagesKey(b"key".to_vec()),
                count: 1,
                index: &index,
                messages: &mut messages,
            },
        });
        assert!(encoded.ends_with(&[9u8; 100]));
    }

    #[test]
    fn an_append_is_encoded_into_one_allocation_of_its_exact_size() {
        let index = [0u8; 16];
        let mut messages = vec![7u8; 4096];
        let mut encoded = Vec::new();
        encode(
            &Submission {
                user: Some(1),
                op: Operation::Append {
                    stream: Identifier::Named("a-rather-long-stream-name".into()),
                    topic: Identifier::Named("a-topic".into()),
                    partitioning: Partitioning::MessagesKey(b"some-key".to_vec()),
                    count: 1,
                    index: &index,
                    messages: &mut messages,
                },
            },
            &mut encoded,
        )
        .unwrap();
        assert_eq!(
            encoded.capacity(),
            encoded.len(),
            "reallocated while encoding"
        );
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let mut encoded = Vec::new();
        encode(
            &Submission {
                user: Some(1),
                op: Operation::CreateStream { name: "s".into() },
            },
            &mut encoded,
        )
        .unwrap();
        for cut in 0..encoded.len() {
            let _ = decode(&encoded[..cut]);
        }
        assert!(matches!(
            decode(&[9, 0, 0, 0, 0, 0]),
            Err(CodecError::UnknownKind(9))
        ));
    }
}
