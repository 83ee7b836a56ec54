//! iggy-broker: a persistent message-streaming server that speaks Apache Iggy's classic binary
//! protocol. See docs/broker.md for the design.

pub mod allocator;
pub mod apply;
pub mod broker;
pub mod commands;
pub mod config;
pub mod diagnostics;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod reclaim;
pub mod repair;
pub mod replication;
pub mod reply;
pub mod retention;
pub mod scrub;
pub mod security;
pub mod state;
pub mod storage;
pub mod submit;
pub mod telemetry;
pub mod tiering;
