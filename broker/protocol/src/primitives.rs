//! Identifiers, consumers, polling strategies and partitioning: the small structures that many
//! requests share (`iggy_binary_protocol` 0.10.0 `primitives/`).

use crate::error::WireError;
use crate::reader::Reader;

/// A stream, topic, group, user or consumer reference: a numeric id or a name.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    Numeric(u32),
    Named(String),
}

const IDENTIFIER_NUMERIC: u8 = 1;
const IDENTIFIER_STRING: u8 = 2;

impl Identifier {
    /// `kind u8`, `len u8`, value. Numeric ids must be exactly 4 bytes; names 1-255 UTF-8 bytes.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind_offset = reader.position();
        let kind = reader.u8()?;
        let len = reader.u8()? as usize;
        match kind {
            IDENTIFIER_NUMERIC => {
                if len != 4 {
                    return Err(WireError::Invalid("numeric identifier length must be 4"));
                }
                Ok(Identifier::Numeric(reader.u32()?))
            }
            IDENTIFIER_STRING => {
                if len == 0 {
                    return Err(WireError::Invalid("string identifier must not be empty"));
                }
                Ok(Identifier::Named(reader.str(len)?.to_owned()))
            }
            other => Err(WireError::UnknownKind {
                what: "identifier",
                value: other,
                offset: kind_offset,
            }),
        }
    }

    /// Bytes [`Identifier::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Identifier::Numeric(_) => 4,
            Identifier::Named(name) => name.len(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Identifier::Numeric(id) => {
                out.extend_from_slice(&[IDENTIFIER_NUMERIC, 4]);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Identifier::Named(name) => {
                out.extend_from_slice(&[IDENTIFIER_STRING, name.len() as u8]);
                out.extend_from_slice(name.as_bytes());
            }
        }
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identifier::Numeric(id) => write!(f, "#{id}"),
            Identifier::Named(name) => write!(f, "'{name}'"),
        }
    }
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumerKind {
    /// A standalone consumer whose id the client chooses.
    Consumer,
    /// A consumer group.
    Group,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Consumer {
    pub kind: ConsumerKind,
    pub id: Identifier,
}

impl Consumer {
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, WireError> {
        let offset = reader.position();
        let kind = match reader.u8()? {
            1 => ConsumerKind::Consumer,
            2 => ConsumerKind::Group,
            other => {
                return Err(WireError::UnknownKind {
                    what: "consumer",
                    value: other,
                    offset,
                })
            }
        };
        Ok(Consumer {
            kind,
            id: Identifier::decode(reader)?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self.kind {
            ConsumerKind::Consumer => 1,
            ConsumerKind::Group => 2,
        });
        self.id.encode(out);
    }
}

/// Where a poll starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollingStrategy {
    Offset(u64),
    /// Microseconds since the Unix epoch: the first message at or after it.
    Timestamp(u64),
    First,
    Last,
    /// The consumer's stored offset + 1, or the first message if none is stored.
    Next,
}

impl PollingStrategy {
    /// Always 9 bytes: `kind u8`, `value u64` (ignored for First, Last and Next).
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, WireError> {
        let offset = reader.position();
        let kind = reader.u8()?;
        let value = reader.u64()?;
        Ok(match kind {
            1 => PollingStrategy::Offset(value),
            2 => PollingStrategy::Timestamp(value),
            3 => PollingStrategy::First,
            4 => PollingStrategy::Last,
            5 => PollingStrategy::Next,
            other => {
                return Err(WireError::UnknownKind {
                    what: "polling strategy",
                    value: other,
                    offset,
                })
            }
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, value) = match *self {
            PollingStrategy::Offset(v) => (1, v),
            PollingStrategy::Timestamp(v) => (2, v),
            PollingStrategy::First => (3, 0),
            PollingStrategy::Last => (4, 0),
            PollingStrategy::Next => (5, 0),
        };
        out.push(kind);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// How a send picks its partition.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Round-robin over the topic's partitions.
    Balanced,
    PartitionId(u32),
    /// XXH32 (seed 0) of the key modulo the partition count, so equal keys share a partition.
    MessagesKey(Vec<u8>),
}

impl Partitioning {
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, WireError> {
        let offset = reader.position();
        let kind = reader.u8()?;
        let len = reader.u8()? as usize;
        match kind {
            1 => {
                if len != 0 {
                    return Err(WireError::Invalid("balanced partitioning carries no value"));
                }
                Ok(Partitioning::Balanced)
            }
            2 => {
                if len != 4 {
                    return Err(WireError::Invalid("partition id length must be 4"));
                }
                Ok(Partitioning::PartitionId(reader.u32()?))
            }
            3 => {
                if len == 0 {
                    return Err(WireError::Invalid("messages key must not be empty"));
                }
                Ok(Partitioning::MessagesKey(reader.take(len)?.to_vec()))
            }
            other => Err(WireError::UnknownKind {
                what: "partitioning",
                value: other,
                offset,
            }),
        }
    }

    /// Bytes [`Partitioning::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Partitioning::Balanced => 0,
            Partitioning::PartitionId(_) => 4,
            Partitioning::MessagesKey(key) => key.len(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Partitioning::Balanced => out.extend_from_slice(&[1, 0]),
            Partitioning::PartitionId(id) => {
                out.extend_from_slice(&[2, 4]);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Partitioning::MessagesKey(key) => {
                out.extend_from_slice(&[3, key.len() as u8]);
                out.extend_from_slice(key);
            }
        }
    }

    /// The partition a key maps to, the same function Iggy uses.
    pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
        xxhash_rust::xxh32::xxh32(key, 0) % partitions
    }
}

/// Optional partition id as sent in polls and offset commands: `flag u8`, `id u32` (always 5 bytes).
pub fn decode_optional_partition(reader: &mut Reader<'_>) -> Result<Option<u32>, WireError> {
    let flag = reader.u8()?;
    let id = reader.u32()?;
    Ok((flag != 0).then_some(id))
}

pub fn encode_optional_partition(partition: Option<u32>, out: &mut Vec<u8>) {
    out.push(u8::from(partition.is_some()));
    out.extend_from_slice(&partition.unwrap_or(0).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: PartialEq + std::fmt::Debug>(
        value: T,
        encode: impl Fn(&T, &mut Vec<u8>),
        decode: impl Fn(&mut Reader<'_>) -> Result<T, WireError>,
    ) {
        let mut out = Vec::new();
        encode(&value, &mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(decode(&mut reader).unwrap(), value);
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn encoded_len_is_what_encode_writes() {
        for id in [Identifier::Numeric(7), Identifier::Named("orders".into())] {
            let mut out = Vec::new();
            id.encode(&mut out);
            assert_eq!(out.len(), id.encoded_len(), "{id:?}");
        }
        for partitioning in [
            Partitioning::Balanced,
            Partitioning::PartitionId(3),
            Partitioning::MessagesKey(b"user-42".to_vec()),
        ] {
            let mut out = Vec::new();
            partitioning.encode(&mut out);
            assert_eq!(out.len(), partitioning.encoded_len(), "{partitioning:?}");
        }
    }

    #[test]
    fn primitives_round_trip() {
        round_trip(
            Identifier::Numeric(7),
            Identifier::encode,
            Identifier::decode,
        );
        round_trip(
            Identifier::Named("orders".into()),
            Identifier::encode,
            Identifier::decode,
        );
        round_trip(
            Consumer {
                kind: ConsumerKind::Group,
                id: Identifier::Numeric(3),
            },
            Consumer::encode,
            Consumer::decode,
        );
        for strategy in [
            PollingStrategy::Offset(5),
            PollingStrategy::Timestamp(9),
            PollingStrategy::First,
            PollingStrategy::Last,
            PollingStrategy::Next,
        ] {
            round_trip(strategy, PollingStrategy::encode, PollingStrategy::decode);
        }
        round_trip(
            Partitioning::MessagesKey(b"k".to_vec()),
            Partitioning::encode,
            Partitioning::decode,
        );
    }

    #[test]
    fn numeric_identifier_with_wrong_length_is_invalid_format() {
        let bytes = [1u8, 3, 0, 0, 0];
        let err = Identifier::decode(&mut Reader::new(&bytes)).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::INVALID_FORMAT);
    }

    #[test]
    fn unknown_identifier_kind_is_invalid_command() {
        let bytes = [9u8, 4, 0, 0, 0, 0];
        let err = Identifier::decode(&mut Reader::new(&bytes)).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::INVALID_COMMAND);
    }

    #[test]
    fn key_partitioning_is_stable() {
        let a = Partitioning::partition_for_key(b"user-42", 8);
        assert_eq!(a, Partitioning::partition_for_key(b"user-42", 8));
        assert!(a < 8);
    }
}
