//! Reading one user header out of a stored message frame, without decoding the others.
//!
//! A frame's user headers follow its payload as repeated entries: key kind (u8), key length
//! (u32 LE), key, value kind (u8), value length (u32 LE), value — the layout Iggy's SDKs write.
//! The block comes from clients, so every length is checked against what is there.

use iggy_telemetry::TraceParent;
use iggy_wire::message::{FrameHeader, HEADER_SIZE};

/// Kinds a text header may have: raw bytes or a string.
const RAW: u8 = 1;
const STRING: u8 = 2;

/// The value of the first header named `key` (string key, compared ignoring ASCII case, as
/// HTTP header names are), if the block holds one and is well formed up to it.
pub fn find<'a>(block: &'a [u8], key: &str) -> Option<(u8, &'a [u8])> {
    let mut rest = block;
    while !rest.is_empty() {
        let (key_kind, name, after_key) = entry(rest)?;
        let (value_kind, value, after_value) = entry(after_key)?;
        if key_kind == STRING && name.eq_ignore_ascii_case(key.as_bytes()) {
            return Some((value_kind, value));
        }
        rest = after_value;
    }
    None
}

/// One kind-length-bytes item and what follows it.
fn entry(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&kind, rest) = bytes.split_first()?;
    let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let value = rest.get(4..4usize.checked_add(length)?)?;
    Some((kind, value, &rest[4 + length..]))
}

/// The raw `traceparent` value of a message frame, unparsed: a batch from one producer send
/// carries the same value in every message, so callers compare bytes before parsing.
pub fn traceparent_value(frame: &[u8]) -> Option<&[u8]> {
    let header = FrameHeader::new(frame)?;
    if header.user_headers_length() == 0 {
        return None;
    }
    let start = HEADER_SIZE.checked_add(header.payload_length() as usize)?;
    let end = start.checked_add(header.user_headers_length() as usize)?;
    let block = frame.get(start..end)?;
    match find(block, iggy_telemetry::trace_context::TRACEPARENT)? {
        (RAW | STRING, value) => Some(value),
        _ => None,
    }
}

/// The W3C trace context a message frame carries in its `traceparent` user header.
pub fn traceparent(frame: &[u8]) -> Option<TraceParent> {
    parse(traceparent_value(frame)?)
}

pub fn parse(value: &[u8]) -> Option<TraceParent> {
    TraceParent::parse(std::str::from_utf8(value).ok()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A user-header block as the SDKs encode it: string keys, string values.
    pub(crate) fn block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in headers {
            for (kind, bytes) in [(STRING, key.as_bytes()), (STRING, value.as_bytes())] {
                out.push(kind);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn finds_a_header_among_others_ignoring_case() {
        let headers = block(&[("tenant", "a"), ("TraceParent", PARENT)]);
        assert_eq!(
            find(&headers, "traceparent"),
            Some((STRING, PARENT.as_bytes()))
        );
        assert_eq!(find(&headers, "missing"), None);
    }

    #[test]
    fn malformed_blocks_find_nothing_and_never_panic() {
        let good = block(&[("traceparent", PARENT)]);
        for cut in 0..good.len() {
            assert_eq!(find(&good[..cut], "traceparent"), None, "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find(&lying, "traceparent"), None);
    }

    #[test]
    fn a_frame_carries_its_trace_context() {
        let headers = block(&[("traceparent", PARENT)]);
        let payload = b"hello";
        let mut frame = vec![0u8; HEADER_SIZE];
        frame[48..52].copy_from_slice(&(headers.len() as u32).to_le_bytes());
        frame[52..56].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&headers);
        assert_eq!(traceparent(&frame), TraceParent::parse(PARENT));
        frame[48..52].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(traceparent(&frame), None);
    }
}
