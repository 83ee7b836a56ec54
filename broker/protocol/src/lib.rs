//! Codec for the Apache Iggy *classic* binary TCP protocol, as spoken by Iggy server 0.8.0 and the
//! Rust SDK `iggy = 0.10.0`.
//!
//! This crate owns bytes and nothing else: it has no sockets, files, clocks or async runtime, so
//! the broker, the load generator and the fuzzers share one definition of the wire format.
//! Every decoder works on a complete payload slice and returns a typed [`WireError`] that maps to
//! exactly one Iggy status code ([`WireError::code`]).

pub mod codes;
pub mod error;
pub mod frame;
pub mod message;
pub mod permissions;
pub mod primitives;
pub mod reader;
pub mod request;
pub mod response;

pub use codes::Command;
pub use error::{ErrorCode, WireError};
pub use permissions::Permissions;
pub use primitives::{Consumer, ConsumerKind, Identifier, Partitioning, PollingStrategy};
pub use request::Request;
