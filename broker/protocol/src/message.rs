//! Message frames and SendMessages batches.
//!
//! A message frame is identical on the wire and in a segment `.log` file: a 64-byte header, the
//! payload, then the user headers. The server fills in the offset, timestamp, id (when the client
//! sent 0) and the XXH3-64 checksum of every byte after the checksum field.

use crate::error::{ErrorCode, WireError};
use crate::primitives::{Identifier, Partitioning};
use crate::reader::Reader;

pub const HEADER_SIZE: usize = 64;
/// Size of one entry of the index array in a SendMessages request and in a `.index` file.
pub const INDEX_ENTRY_SIZE: usize = 16;
/// Largest payload of one message (Iggy's `MAX_PAYLOAD_SIZE`).
pub const MAX_PAYLOAD_SIZE: u32 = 64_000_000;
/// Largest user-header block of one message.
pub const MAX_USER_HEADERS_SIZE: u32 = 100_000;

const CHECKSUM: usize = 0;
const ID: usize = 8;
const OFFSET: usize = 24;
const TIMESTAMP: usize = 32;
const ORIGIN_TIMESTAMP: usize = 40;
const USER_HEADERS_LENGTH: usize = 48;
const PAYLOAD_LENGTH: usize = 52;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Read-only view of a message header. Callers guarantee at least [`HEADER_SIZE`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader<'a>(&'a [u8]);

impl<'a> FrameHeader<'a> {
    /// `None` when fewer than 64 bytes are available.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= HEADER_SIZE).then(|| Self(&bytes[..HEADER_SIZE]))
    }
    pub fn checksum(&self) -> u64 {
        u64_at(self.0, CHECKSUM)
    }
    pub fn id(&self) -> u128 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.0[ID..ID + 16]);
        u128::from_le_bytes(a)
    }
    pub fn offset(&self) -> u64 {
        u64_at(self.0, OFFSET)
    }
    pub fn timestamp(&self) -> u64 {
        u64_at(self.0, TIMESTAMP)
    }
    pub fn origin_timestamp(&self) -> u64 {
        u64_at(self.0, ORIGIN_TIMESTAMP)
    }
    pub fn user_headers_length(&self) -> u32 {
        u32_at(self.0, USER_HEADERS_LENGTH)
    }
    pub fn payload_length(&self) -> u32 {
        u32_at(self.0, PAYLOAD_LENGTH)
    }
    /// Total frame size claimed by the two length fields (u64 so garbage cannot overflow).
    pub fn frame_len(&self) -> u64 {
        HEADER_SIZE as u64 + self.payload_length() as u64 + self.user_headers_length() as u64
    }
}

/// The checksum Iggy stores: XXH3-64, seed 0, over the frame after the checksum field.
pub fn frame_checksum(frame: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(&frame[8..])
}

/// True when a complete frame's stored checksum matches its contents.
pub fn checksum_matches(frame: &[u8]) -> bool {
    frame.len() >= HEADER_SIZE && u64_at(frame, CHECKSUM) == frame_checksum(frame)
}

/// The routing part of a SendMessages request, plus where its index array and messages are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessagesHeader {
    pub stream: Identifier,
    pub topic: Identifier,
    pub partitioning: Partitioning,
    pub count: u32,
    /// Byte range of the index array within the payload.
    pub index_start: usize,
    /// Byte offset of the first message frame within the payload; frames run to the end.
    pub messages_start: usize,
}

impl SendMessagesHeader {
    /// Parses `metadata_length u32`, the metadata block and locates the index array. Does not
    /// look at the messages; [`validate_batch`] does.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader::new(payload);
        let metadata_len = reader.u32()? as usize;
        let metadata = reader.take(metadata_len)?;
        let mut meta = Reader::new(metadata);
        let stream = Identifier::decode(&mut meta)?;
        let topic = Identifier::decode(&mut meta)?;
        let partitioning = Partitioning::decode(&mut meta)?;
        let count = meta.u32()?;
        if meta.remaining() != 0 {
            return Err(WireError::Invalid(
                "metadata length does not match its fields",
            ));
        }
        if count == 0 {
            return Err(WireError::batch(
                ErrorCode::INVALID_MESSAGES_COUNT,
                "a batch must hold at least one message",
            ));
        }
        let index_start = reader.position();
        let index_len = count as usize * INDEX_ENTRY_SIZE;
        if reader.remaining() < index_len {
            return Err(WireError::batch(
                ErrorCode::INVALID_INDEXES_BYTE_SIZE,
                format!(
                    "{count} messages need {index_len} index bytes, only {} remain",
                    reader.remaining()
                ),
            ));
        }
        Ok(Self {
            stream,
            topic,
            partitioning,
            count,
            index_start,
            messages_start: index_start + index_len,
        })
    }

    /// Encodes a SendMessages payload from (id, payload, user headers) triples (load generator,
    /// tests, fuzz seeds). Mirrors what the Iggy SDK sends.
    pub fn encode_request(
        stream: &Identifier,
        topic: &Identifier,
        partitioning: &Partitioning,
        messages: &[(u128, &[u8], &[u8])],
        out: &mut Vec<u8>,
    ) {
        let mut metadata = Vec::new();
        stream.encode(&mut metadata);
        topic.encode(&mut metadata);
        partitioning.encode(&mut metadata);
        metadata.extend_from_slice(&(messages.len() as u32).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&metadata);
        let mut end = 0u32;
        for (_, payload, headers) in messages {
            end += (HEADER_SIZE + payload.len() + headers.len()) as u32;
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        for (id, payload, headers) in messages {
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(headers);
        }
    }
}

/// Checks a batch's index array against its frames, with Iggy's error codes:
/// offsets/timestamps in the index must be zero, every frame at least 64 bytes, end positions
/// increasing and matching the frames' own length fields, the last one ending the block, and
/// payload and user headers within their limits. After this, [`stamp_batch`] cannot fail.
pub fn validate_batch(index: &[u8], messages: &[u8], count: u32) -> Result<(), WireError> {
    if index.len() != count as usize * INDEX_ENTRY_SIZE {
        return Err(WireError::batch(
            ErrorCode::INVALID_INDEXES_COUNT,
            format!("index holds {} bytes for {count} messages", index.len()),
        ));
    }
    let mut start = 0usize;
    for (i, entry) in index.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
        if u32_at(entry, 0) != 0 {
            return Err(WireError::batch(
                ErrorCode::NON_ZERO_OFFSET,
                format!("index entry {i} carries an offset"),
            ));
        }
        if u64_at(entry, 8) != 0 {
            return Err(WireError::batch(
                ErrorCode::NON_ZERO_TIMESTAMP,
                format!("index entry {i} carries a timestamp"),
            ));
        }
        let end = u32_at(entry, 4) as usize;
        if end < start + HEADER_SIZE {
            return Err(WireError::batch(
                ErrorCode::TOO_SMALL_MESSAGE,
                format!(
                    "message {i} spans {} bytes, less than a header",
                    end.saturating_sub(start)
                ),
            ));
        }
        if end > messages.len() {
            return Err(WireError::batch(
                ErrorCode::INVALID_MESSAGES_SIZE,
                format!(
                    "message {i} ends at {end}, past the {} message bytes",
                    messages.len()
                ),
            ));
        }
        let frame = &messages[start..end];
        let header = FrameHeader(&frame[..HEADER_SIZE]);
        if header.payload_length() > MAX_PAYLOAD_SIZE {
            return Err(WireError::batch(
                ErrorCode::TOO_BIG_MESSAGE_PAYLOAD,
                format!("message {i} payload of {} bytes", header.payload_length()),
            ));
        }
        if header.user_headers_length() > MAX_USER_HEADERS_SIZE {
            return Err(WireError::batch(
                ErrorCode::TOO_BIG_USER_HEADERS,
                format!(
                    "message {i} user headers of {} bytes",
                    header.user_headers_length()
                ),
            ));
        }
        if header.frame_len() != frame.len() as u64 {
            return Err(WireError::batch(
                ErrorCode::INVALID_MESSAGE_PAYLOAD_LENGTH,
                format!(
                    "message {i} declares {} bytes but its index gives {}",
                    header.frame_len(),
                    frame.len()
                ),
            ));
        }
        start = end;
    }
    if start != messages.len() {
        return Err(WireError::batch(
            ErrorCode::INVALID_MESSAGES_SIZE,
            format!("index covers {start} of {} message bytes", messages.len()),
        ));
    }
    Ok(())
}

/// Fills in server fields of a validated batch in place: consecutive offsets from `base_offset`,
/// one timestamp for the batch, a fresh id where the client sent 0, then each frame's checksum.
/// Calls `on_frame(relative index, end position within the batch)` per message so the caller can
/// build its segment index without walking the batch again.
pub fn stamp_batch(
    messages: &mut [u8],
    base_offset: u64,
    timestamp: u64,
    mut new_id: impl FnMut() -> u128,
    mut on_frame: impl FnMut(u32, usize),
) {
    let mut start = 0usize;
    let mut i = 0u32;
    while start < messages.len() {
        let len = FrameHeader(&messages[start..start + HEADER_SIZE]).frame_len() as usize;
        let frame = &mut messages[start..start + len];
        frame[OFFSET..OFFSET + 8].copy_from_slice(&(base_offset + i as u64).to_le_bytes());
        frame[TIMESTAMP..TIMESTAMP + 8].copy_from_slice(&timestamp.to_le_bytes());
        if frame[ID..ID + 16].iter().all(|b| *b == 0) {
            frame[ID..ID + 16].copy_from_slice(&new_id().to_le_bytes());
        }
        let checksum = frame_checksum(frame);
        frame[CHECKSUM..CHECKSUM + 8].copy_from_slice(&checksum.to_le_bytes());
        start += len;
        on_frame(i, start);
        i += 1;
    }
}

/// Walks frames stored back to back (a poll response body or a segment region).
pub struct FrameIter<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> FrameIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    /// A complete frame, or `Err(position)` where an incomplete one starts.
    type Item = Result<&'a [u8], usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let Some(header) = FrameHeader::new(rest) else {
            let at = self.pos;
            self.pos = self.bytes.len();
            return Some(Err(at));
        };
        let len = header.frame_len();
        if len > rest.len() as u64 {
            let at = self.pos;
            self.pos = self.bytes.len();
            return Some(Err(at));
        }
        let frame = &rest[..len as usize];
        self.pos += len as usize;
        Some(Ok(frame))
    }
}

/// Payload of a frame (after the header, before user headers).
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = FrameHeader(&frame[..HEADER_SIZE]);
    &frame[HEADER_SIZE..HEADER_SIZE + header.payload_length() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_checksum_is_xxh3_64_whatever_the_implementation() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in [8usize, 9, 16, 17, 128, 129, 240, 241, 1024, 4096, 100_000] {
            let frame: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            assert_eq!(
                frame_checksum(&frame),
                xxhash_rust::xxh3::xxh3_64(&frame[8..]),
                "length {len}"
            );
        }
    }

    fn request(messages: &[(u128, &[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        SendMessagesHeader::encode_request(
            &Identifier::Numeric(1),
            &Identifier::Named("t".into()),
            &Partitioning::PartitionId(0),
            messages,
            &mut out,
        );
        out
    }

    #[test]
    fn a_valid_batch_is_stamped_with_offsets_ids_and_checksums() {
        let mut payload = request(&[(0, b"hello", b""), (7, b"world!", b"hh")]);
        let header = SendMessagesHeader::decode(&payload).unwrap();
        assert_eq!(header.count, 2);
        let (head, messages) = payload.split_at_mut(header.messages_start);
        validate_batch(&head[header.index_start..], messages, header.count).unwrap();
        let mut ends = Vec::new();
        stamp_batch(messages, 10, 99, || 42, |i, end| ends.push((i, end)));
        assert_eq!(ends, vec![(0, 69), (1, 69 + 72)]);
        let frames: Vec<_> = FrameIter::new(messages).map(Result::unwrap).collect();
        assert_eq!(frames.len(), 2);
        let first = FrameHeader::new(frames[0]).unwrap();
        assert_eq!(
            (first.offset(), first.timestamp(), first.id()),
            (10, 99, 42)
        );
        assert_eq!(
            FrameHeader::new(frames[1]).unwrap().id(),
            7,
            "client ids are kept"
        );
        assert!(frames.iter().all(|f| checksum_matches(f)));
        assert_eq!(frame_payload(frames[1]), b"world!");
    }

    #[test]
    fn zero_messages_is_invalid_messages_count() {
        let mut out = Vec::new();
        let mut metadata = Vec::new();
        Identifier::Numeric(1).encode(&mut metadata);
        Identifier::Numeric(1).encode(&mut metadata);
        Partitioning::Balanced.encode(&mut metadata);
        metadata.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&metadata);
        let err = SendMessagesHeader::decode(&out).unwrap_err();
        assert_eq!(err.code(), ErrorCode::INVALID_MESSAGES_COUNT);
    }

    fn validate(payload: &[u8]) -> Result<(), WireError> {
        let header = SendMessagesHeader::decode(payload)?;
        validate_batch(
            &payload[header.index_start..header.messages_start],
            &payload[header.messages_start..],
            header.count,
        )
    }

    #[test]
    fn index_faults_map_to_iggy_codes() {
        let good = request(&[(0, b"abc", b""), (0, b"defg", b"")]);
        let index_at = SendMessagesHeader::decode(&good).unwrap().index_start;

        let mut bad = good.clone();
        bad[index_at] = 1;
        assert_eq!(
            validate(&bad).unwrap_err().code(),
            ErrorCode::NON_ZERO_OFFSET
        );

        let mut bad = good.clone();
        bad[index_at + 8] = 1;
        assert_eq!(
            validate(&bad).unwrap_err().code(),
            ErrorCode::NON_ZERO_TIMESTAMP
        );

        let mut bad = good.clone();
        bad[index_at + 4..index_at + 8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            validate(&bad).unwrap_err().code(),
            ErrorCode::TOO_SMALL_MESSAGE
        );

        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(
            validate(&bad).unwrap_err().code(),
            ErrorCode::INVALID_MESSAGES_SIZE
        );

        let mut bad = good.clone();
        bad.truncate(bad.len() - 1);
        assert_eq!(
            validate(&bad).unwrap_err().code(),
            ErrorCode::INVALID_MESSAGES_SIZE
        );
    }

    #[test]
    fn a_count_larger_than_the_index_is_rejected() {
        let mut payload = request(&[(0, b"abc", b"")]);
        // metadata_len(4) + stream ident(6) + topic ident(3) + partitioning(6) = count at 19.
        payload[19..23].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            validate(&payload).unwrap_err().code(),
            ErrorCode::INVALID_INDEXES_BYTE_SIZE
        );
    }

    #[test]
    fn oversized_payload_length_is_too_big() {
        let mut payload = request(&[(0, b"abc", b"")]);
        let at = SendMessagesHeader::decode(&payload).unwrap().messages_start + PAYLOAD_LENGTH;
        payload[at..at + 4].copy_from_slice(&(MAX_PAYLOAD_SIZE + 1).to_le_bytes());
        assert_eq!(
            validate(&payload).unwrap_err().code(),
            ErrorCode::TOO_BIG_MESSAGE_PAYLOAD
        );
    }

    #[test]
    fn frame_iter_reports_where_a_torn_frame_starts() {
        let mut payload = request(&[(0, b"abc", b""), (0, b"defg", b"")]);
        let start = SendMessagesHeader::decode(&payload).unwrap().messages_start;
        payload.truncate(payload.len() - 2);
        let results: Vec<_> = FrameIter::new(&payload[start..]).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(67));
    }
}
