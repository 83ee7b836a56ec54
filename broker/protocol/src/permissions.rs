//! User permissions in Iggy's wire layout: ten global flags, then an optional chained list of
//! per-stream grants, each with an optional chained list of per-topic grants. "Chained" means
//! each element is followed by a `has_next u8`.

use crate::error::WireError;
use crate::reader::Reader;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GlobalPermissions {
    pub manage_servers: bool,
    pub read_servers: bool,
    pub manage_users: bool,
    pub read_users: bool,
    pub manage_streams: bool,
    pub read_streams: bool,
    pub manage_topics: bool,
    pub read_topics: bool,
    pub poll_messages: bool,
    pub send_messages: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StreamPermissions {
    pub manage_stream: bool,
    pub read_stream: bool,
    pub manage_topics: bool,
    pub read_topics: bool,
    pub poll_messages: bool,
    pub send_messages: bool,
    pub topics: BTreeMap<u32, TopicPermissions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TopicPermissions {
    pub manage_topic: bool,
    pub read_topic: bool,
    pub poll_messages: bool,
    pub send_messages: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Permissions {
    pub global: GlobalPermissions,
    pub streams: BTreeMap<u32, StreamPermissions>,
}

fn flags<const N: usize>(r: &mut Reader<'_>) -> Result<[bool; N], WireError> {
    let mut out = [false; N];
    for flag in &mut out {
        *flag = r.u8()? != 0;
    }
    Ok(out)
}

fn put_flags(out: &mut Vec<u8>, flags: &[bool]) {
    out.extend(flags.iter().map(|f| u8::from(*f)));
}

impl Permissions {
    /// Every global permission: what the root user holds.
    pub fn root() -> Self {
        Permissions {
            global: GlobalPermissions {
                manage_servers: true,
                read_servers: true,
                manage_users: true,
                read_users: true,
                manage_streams: true,
                read_streams: true,
                manage_topics: true,
                read_topics: true,
                poll_messages: true,
                send_messages: true,
            },
            streams: BTreeMap::new(),
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let [manage_servers, read_servers, manage_users, read_users, manage_streams, read_streams, manage_topics, read_topics, poll_messages, send_messages] =
            flags::<10>(r)?;
        let global = GlobalPermissions {
            manage_servers,
            read_servers,
            manage_users,
            read_users,
            manage_streams,
            read_streams,
            manage_topics,
            read_topics,
            poll_messages,
            send_messages,
        };
        let mut streams = BTreeMap::new();
        let mut more = r.u8()? != 0;
        while more {
            let stream_id = r.u32()?;
            let [manage_stream, read_stream, manage_topics, read_topics, poll_messages, send_messages] =
                flags::<6>(r)?;
            let mut topics = BTreeMap::new();
            let mut more_topics = r.u8()? != 0;
            while more_topics {
                let topic_id = r.u32()?;
                let [manage_topic, read_topic, poll_messages, send_messages] = flags::<4>(r)?;
                topics.insert(
                    topic_id,
                    TopicPermissions {
                        manage_topic,
                        read_topic,
                        poll_messages,
                        send_messages,
                    },
                );
                more_topics = r.u8()? != 0;
            }
            streams.insert(
                stream_id,
                StreamPermissions {
                    manage_stream,
                    read_stream,
                    manage_topics,
                    read_topics,
                    poll_messages,
                    send_messages,
                    topics,
                },
            );
            more = r.u8()? != 0;
        }
        Ok(Permissions { global, streams })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let g = &self.global;
        put_flags(
            out,
            &[
                g.manage_servers,
                g.read_servers,
                g.manage_users,
                g.read_users,
                g.manage_streams,
                g.read_streams,
                g.manage_topics,
                g.read_topics,
                g.poll_messages,
                g.send_messages,
            ],
        );
        out.push(u8::from(!self.streams.is_empty()));
        let last_stream = self.streams.len().saturating_sub(1);
        for (i, (stream_id, s)) in self.streams.iter().enumerate() {
            out.extend_from_slice(&stream_id.to_le_bytes());
            put_flags(
                out,
                &[
                    s.manage_stream,
                    s.read_stream,
                    s.manage_topics,
                    s.read_topics,
                    s.poll_messages,
                    s.send_messages,
                ],
            );
            out.push(u8::from(!s.topics.is_empty()));
            let last_topic = s.topics.len().saturating_sub(1);
            for (j, (topic_id, t)) in s.topics.iter().enumerate() {
                out.extend_from_slice(&topic_id.to_le_bytes());
                put_flags(
                    out,
                    &[
                        t.manage_topic,
                        t.read_topic,
                        t.poll_messages,
                        t.send_messages,
                    ],
                );
                out.push(u8::from(j != last_topic));
            }
            out.push(u8::from(i != last_stream));
        }
    }

    /// Optional permissions as sent in CreateUser / UpdatePermissions: `flag u8`, then
    /// `len u32` and the encoded permissions when the flag is 1.
    pub fn decode_optional(r: &mut Reader<'_>) -> Result<Option<Self>, WireError> {
        if r.u8()? == 0 {
            return Ok(None);
        }
        let len = r.u32()? as usize;
        let bytes = r.take(len)?;
        let mut inner = Reader::new(bytes);
        let permissions = Self::decode(&mut inner)?;
        if inner.remaining() != 0 {
            return Err(WireError::Invalid(
                "permissions length does not match their content",
            ));
        }
        Ok(Some(permissions))
    }

    pub fn encode_optional(permissions: Option<&Self>, out: &mut Vec<u8>) {
        match permissions {
            Some(p) => {
                let mut bytes = Vec::new();
                p.encode(&mut bytes);
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            None => out.push(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_permissions_round_trip() {
        let mut p = Permissions::default();
        p.global.read_users = true;
        let mut s = StreamPermissions {
            read_stream: true,
            ..Default::default()
        };
        s.topics.insert(
            3,
            TopicPermissions {
                send_messages: true,
                ..Default::default()
            },
        );
        s.topics.insert(
            9,
            TopicPermissions {
                poll_messages: true,
                ..Default::default()
            },
        );
        p.streams.insert(1, s);
        p.streams.insert(
            2,
            StreamPermissions {
                manage_stream: true,
                ..Default::default()
            },
        );
        let mut out = Vec::new();
        Permissions::encode_optional(Some(&p), &mut out);
        let decoded = Permissions::decode_optional(&mut Reader::new(&out)).unwrap();
        assert_eq!(decoded, Some(p));
        let mut none = Vec::new();
        Permissions::encode_optional(None, &mut none);
        assert_eq!(
            Permissions::decode_optional(&mut Reader::new(&none)).unwrap(),
            None
        );
    }

    #[test]
    fn a_chain_that_never_ends_is_truncated_not_a_hang() {
        let mut bytes = vec![0u8; 10];
        bytes.push(1);
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 6]);
        bytes.push(0);
        bytes.push(1); // another stream follows, but the bytes end
        assert!(Permissions::decode(&mut Reader::new(&bytes)).is_err());
    }
}
