//! Request and response framing.
//!
//! Request: `[length u32 = 4 + payload][code u32][payload]`; response:
//! `[status u32][length u32][payload]`; all little-endian. There is no request id, so a
//! connection is strictly one request, one response, in order.

use crate::error::ErrorCode;

/// Size of both the request and the response header.
pub const HEADER_SIZE: usize = 8;

/// Largest payload accepted for any command but SendMessages (Iggy's `MAX_CONTROL_FRAME_PAYLOAD`).
pub const MAX_CONTROL_PAYLOAD: usize = 10 * 1000 * 1000;

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub code: u32,
    /// Payload bytes that follow the header (the wire length minus the 4-byte code).
    pub payload_len: u32,
}

/// Why a request header is unusable. The payload length is still known when it is, so the
/// caller can skip the payload and keep the connection in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The length field is smaller than the code it must include; nothing follows.
    LengthTooSmall(u32),
}

impl RequestHeader {
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Result<Self, HeaderError> {
        let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let code = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let payload_len = length
            .checked_sub(4)
            .ok_or(HeaderError::LengthTooSmall(length))?;
        Ok(Self { code, payload_len })
    }

    /// Encodes a request header (used by the load generator and tests).
    pub fn encode(code: u32, payload_len: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&(payload_len as u32 + 4).to_le_bytes());
        out.extend_from_slice(&code.to_le_bytes());
    }
}

/// Encodes a response header for an OK reply carrying `payload_len` bytes.
pub fn ok_header(payload_len: usize) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[4..].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header
}

/// Encodes an error response: the status and a zero length. Iggy SDKs read no payload after a
/// non-zero status, so anything else would desynchronise the stream.
pub fn error_frame(code: ErrorCode) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[..4].copy_from_slice(&code.0.to_le_bytes());
    header
}

/// A parsed response header (used by clients in this workspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: u32,
    pub payload_len: u32,
}

impl ResponseHeader {
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Self {
        Self {
            status: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            payload_len: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_counts_the_code_but_not_itself() {
        let mut out = Vec::new();
        RequestHeader::encode(38, 10, &mut out);
        let header = RequestHeader::parse(out.as_slice().try_into().unwrap()).unwrap();
        assert_eq!(
            header,
            RequestHeader {
                code: 38,
                payload_len: 10
            }
        );
    }

    #[test]
    fn length_below_four_is_rejected() {
        let bytes = [3, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(
            RequestHeader::parse(&bytes),
            Err(HeaderError::LengthTooSmall(3))
        );
    }

    #[test]
    fn error_frame_has_status_and_no_payload() {
        let frame = error_frame(ErrorCode::STREAM_ID_NOT_FOUND);
        assert_eq!(
            ResponseHeader::parse(&frame),
            ResponseHeader {
                status: 1009,
                payload_len: 0
            }
        );
    }
}
