//! Malformed frames over a raw socket: each gets the right Iggy status, nothing is stored, no
//! panic, and both the offending connection and other clients keep working.

mod common;

use common::{TestBroker, ROOT_PASSWORD, ROOT_USER};
use iggy_wire::message::SendMessagesHeader;
use iggy_wire::request::encode;
use iggy_wire::{Command, Identifier, Partitioning};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Raw(TcpStream);

impl Raw {
    fn connect(broker: &TestBroker) -> Self {
        let stream = TcpStream::connect(broker.tcp).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw(stream)
    }

    fn logged_in(broker: &TestBroker) -> Self {
        let mut raw = Self::connect(broker);
        let (status, _) = raw.call(
            Command::LoginUser.code(),
            &encode::login_user(ROOT_USER, ROOT_PASSWORD),
        );
        assert_eq!(status, 0);
        raw
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    fn response(&mut self) -> (u32, Vec<u8>) {
        let mut header = [0u8; 8];
        self.0.read_exact(&mut header).unwrap();
        let status = u32::from_le_bytes(header[..4].try_into().unwrap());
        let len = u32::from_le_bytes(header[4..].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        self.0.read_exact(&mut payload).unwrap();
        (status, payload)
    }

    fn call(&mut self, code: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut frame = Vec::new();
        iggy_wire::frame::RequestHeader::encode(code, payload.len(), &mut frame);
        frame.extend_from_slice(payload);
        self.send_bytes(&frame);
        self.response()
    }

    fn status(&mut self, code: u32, payload: &[u8]) -> u32 {
        self.call(code, payload).0
    }

    fn assert_usable(&mut self) {
        assert_eq!(
            self.status(Command::Ping.code(), &[]),
            0,
            "connection still usable"
        );
    }
}

fn send_payload(messages: &[(u128, &[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    SendMessagesHeader::encode_request(
        &Identifier::Numeric(0),
        &Identifier::Numeric(0),
        &Partitioning::PartitionId(0),
        messages,
        &mut out,
    );
    out
}

/// Byte offset of the index array in a [`send_payload`] request.
const INDEX_AT: usize = 4 + 6 + 6 + 6 + 4;

fn setup(broker: &TestBroker) -> Raw {
    let mut raw = Raw::logged_in(broker);
    assert_eq!(
        raw.status(Command::CreateStream.code(), &encode::name("s")),
        0
    );
    let topic = encode::create_topic(&Identifier::Numeric(0), 1, "t");
    assert_eq!(raw.status(Command::CreateTopic.code(), &topic), 0);
    raw
}

fn messages_stored(raw: &mut Raw) -> u64 {
    let mut payload = Vec::new();
    Identifier::Numeric(0).encode(&mut payload);
    Identifier::Numeric(0).encode(&mut payload);
    let (status, topic) = raw.call(Command::GetTopic.code(), &payload);
    assert_eq!(status, 0);
    // TopicHeader: messages_count is the u64 at bytes 42..50.
    u64::from_le_bytes(topic[42..50].try_into().unwrap())
}

/// Far past its limit, a logged-in client's request is refused from its header alone: the
/// error comes at once, the body is never read, and the connection closes (the 300 MB
/// send used to be read whole before the refusal).
#[test]
fn a_request_far_over_its_limit_is_refused_unread_and_the_connection_closed() {
    let broker = TestBroker::start();
    let mut raw = Raw::logged_in(&broker);
    let mut header = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::SendMessages.code(), 300_000_000, &mut header);
    raw.send_bytes(&header);
    // Nothing of the 300 MB follows; the answer must not wait for it.
    assert_eq!(raw.response(), (3, vec![]));
    let mut rest = Vec::new();
    assert_eq!(
        raw.0.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
    Raw::logged_in(&broker).assert_usable();
}

#[test]
fn framing_errors_keep_the_connection_in_sync() {
    let broker = TestBroker::start_with(&[("IGGY_TCP_MAX_SEND_BYTES", "1 MiB")]);
    let mut raw = Raw::logged_in(&broker);

    // Length smaller than the code it must include.
    raw.send_bytes(&[2, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(raw.response(), (3, vec![]));
    raw.assert_usable();

    // Unknown command code, with a payload that must be skipped.
    assert_eq!(raw.call(9999, b"ignored payload"), (3, vec![]));
    raw.assert_usable();

    // A control command over the 10 MB limit is drained and refused.
    let huge = vec![0u8; 10_000_001];
    assert_eq!(raw.status(Command::CreateStream.code(), &huge), 3);
    raw.assert_usable();

    // A send over tcp.max_send_bytes likewise.
    let big_send = vec![0u8; (1 << 20) + 1];
    assert_eq!(raw.status(Command::SendMessages.code(), &big_send), 3);
    raw.assert_usable();

    // A snapshot request cut short is invalid; one for a compression not made here is a
    // feature this broker lacks.
    assert_eq!(raw.status(Command::GetSnapshotFile.code(), &[]), 3);
    raw.assert_usable();
    assert_eq!(raw.status(Command::GetSnapshotFile.code(), &[6, 1, 4]), 5);
    raw.assert_usable();

    // A truncated header followed by a hang-up only closes that connection.
    let mut torn = Raw::connect(&broker);
    torn.send_bytes(&[9, 0, 0]);
    torn.0.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        torn.0.read_to_end(&mut rest).unwrap(),
        0,
        "closed without a reply"
    );
    // A payload shorter than its length, then a hang-up.
    let mut short = Raw::connect(&broker);
    short.send_bytes(&[50, 0, 0, 0, 202, 0, 0, 0, 1, 2, 3]);
    short.0.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(short.0.read_to_end(&mut rest).unwrap(), 0);
    Raw::logged_in(&broker).assert_usable();
    raw.assert_usable();
}

#[test]
fn malformed_requests_get_iggy_codes_and_store_nothing() {
    let broker = TestBroker::start();
    let mut raw = setup(&broker);
    let mut other = Raw::logged_in(&broker);

    // Identifier faults: unknown kind -> InvalidCommand, numeric of length 3 -> InvalidFormat,
    // truncated -> InvalidCommand.
    assert_eq!(
        raw.status(Command::GetStream.code(), &[9, 4, 0, 0, 0, 0]),
        3
    );
    assert_eq!(raw.status(Command::GetStream.code(), &[1, 3, 0, 0, 0]), 4);
    assert_eq!(raw.status(Command::GetStream.code(), &[2, 10, b'a']), 3);
    assert_eq!(raw.status(Command::DeleteStream.code(), &[2, 0]), 4);

    // Names: not UTF-8 -> InvalidCommand; empty -> InvalidStreamName.
    assert_eq!(
        raw.status(Command::CreateStream.code(), &[2, 0xff, 0xfe]),
        3
    );
    assert_eq!(raw.status(Command::CreateStream.code(), &[0]), 1013);
    let (status, streams) = raw.call(Command::GetStreams.code(), &[]);
    assert_eq!(
        (status, streams.len()),
        (0, 33 + 1),
        "only stream 's' exists"
    );

    let good = send_payload(&[(0, b"abc", b""), (0, b"defgh", b"")]);

    // Message count says 3 but only 2 messages follow: the index array swallows the first 16
    // bytes of the first message, so the frame read at the first index position is shifted and
    // its user-headers length field holds payload bytes ("abc" + header bytes): far too big.
    let mut count_mismatch = good.clone();
    count_mismatch[INDEX_AT - 4..INDEX_AT].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        raw.status(Command::SendMessages.code(), &count_mismatch),
        4017
    );
    // Count says 1 but 2 messages follow: the index covers only part of the message bytes.
    let mut count_short = good.clone();
    count_short[INDEX_AT - 4..INDEX_AT].copy_from_slice(&1u32.to_le_bytes());
    assert_ne!(raw.status(Command::SendMessages.code(), &count_short), 0);

    // Count says 0.
    let mut zero = good.clone();
    zero[INDEX_AT - 4..INDEX_AT].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(raw.status(Command::SendMessages.code(), &zero), 4009);

    // Count far beyond the bytes sent.
    let mut too_many = good.clone();
    too_many[INDEX_AT - 4..INDEX_AT].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert_eq!(raw.status(Command::SendMessages.code(), &too_many), 4034);

    // Bad index arrays: an offset, a timestamp, decreasing positions, a short total.
    let mut offset_in_index = good.clone();
    offset_in_index[INDEX_AT] = 1;
    assert_eq!(
        raw.status(Command::SendMessages.code(), &offset_in_index),
        4031
    );
    let mut timestamp_in_index = good.clone();
    timestamp_in_index[INDEX_AT + 8] = 1;
    assert_eq!(
        raw.status(Command::SendMessages.code(), &timestamp_in_index),
        4032
    );
    let mut backwards = good.clone();
    backwards[INDEX_AT + 20..INDEX_AT + 24].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(raw.status(Command::SendMessages.code(), &backwards), 4037);
    let mut extra_bytes = good.clone();
    extra_bytes.extend_from_slice(&[0; 7]);
    assert_eq!(raw.status(Command::SendMessages.code(), &extra_bytes), 4036);

    // A frame whose length fields disagree with its index entry.
    let messages_at = INDEX_AT + 32;
    let mut lying_length = good.clone();
    lying_length[messages_at + 52..messages_at + 56].copy_from_slice(&4u32.to_le_bytes());
    assert_eq!(
        raw.status(Command::SendMessages.code(), &lying_length),
        4025
    );

    // Oversized payload and user headers, as declared by the frame.
    let mut oversized = good.clone();
    oversized[messages_at + 52..messages_at + 56].copy_from_slice(&64_000_001u32.to_le_bytes());
    assert_eq!(raw.status(Command::SendMessages.code(), &oversized), 4022);
    let mut big_headers = good.clone();
    big_headers[messages_at + 48..messages_at + 52].copy_from_slice(&100_001u32.to_le_bytes());
    assert_eq!(raw.status(Command::SendMessages.code(), &big_headers), 4017);

    // Metadata length that does not match its fields; unknown partitioning kind.
    let mut bad_metadata = good.clone();
    bad_metadata[0] = 30;
    assert_eq!(raw.status(Command::SendMessages.code(), &bad_metadata), 4);
    let mut bad_partitioning = good.clone();
    bad_partitioning[16] = 9;
    assert_eq!(
        raw.status(Command::SendMessages.code(), &bad_partitioning),
        3
    );

    assert_eq!(
        messages_stored(&mut raw),
        0,
        "nothing from a rejected batch is stored"
    );
    other.assert_usable();

    // And a well-formed batch on the same connection still works.
    assert_eq!(raw.status(Command::SendMessages.code(), &good), 0);
    assert_eq!(messages_stored(&mut raw), 2);
}

#[test]
fn unauthenticated_requests_are_refused_before_anything_runs() {
    let broker = TestBroker::start();
    let mut raw = Raw::connect(&broker);
    assert_eq!(raw.status(Command::Ping.code(), &[]), 0);
    assert_eq!(
        raw.status(Command::CreateStream.code(), &encode::name("x")),
        40
    );
    assert_eq!(
        raw.status(
            Command::SendMessages.code(),
            &send_payload(&[(0, b"a", b"")])
        ),
        40
    );
    assert_eq!(
        raw.status(
            Command::LoginUser.code(),
            &encode::login_user(ROOT_USER, "nope")
        ),
        42
    );
    assert_eq!(raw.status(Command::LoginUser.code(), &[5, b'a']), 3);
    let mut admin = Raw::logged_in(&broker);
    let (_, streams) = admin.call(Command::GetStreams.code(), &[]);
    assert!(streams.is_empty());
}

/// A stranger cannot make the broker read, let alone buffer, a large request: before login a
/// request declaring more than a few KiB is answered from its header alone — Unauthenticated, or
/// for an oversized login RequestTooLarge (InvalidCommand) — and the connection is closed; the
/// broker never waits for the body. Logged-in clients are untouched.
#[test]
fn before_login_large_requests_are_refused_unread_and_the_connection_closed() {
    let broker = TestBroker::start();
    for (code, expected) in [
        (Command::SendMessages.code(), 40),
        (Command::CreateStream.code(), 40),
        (Command::LoginUser.code(), 3),
    ] {
        let mut raw = Raw::connect(&broker);
        let mut header = Vec::new();
        // 256 MiB declared; only the header is ever sent.
        iggy_wire::frame::RequestHeader::encode(code, 256 << 20, &mut header);
        raw.send_bytes(&header);
        assert_eq!(raw.response().0, expected, "code {code}");
        let mut rest = [0u8; 1];
        assert_eq!(
            raw.0.read(&mut rest).unwrap(),
            0,
            "closed after refusing code {code}"
        );
    }
    // A small unauthenticated request is still read and answered on an open connection.
    let mut raw = Raw::connect(&broker);
    assert_eq!(raw.status(Command::GetStreams.code(), &[]), 40);
    raw.assert_usable();
    let mut admin = Raw::logged_in(&broker);
    admin.assert_usable();
}
