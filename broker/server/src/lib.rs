//! iggy-broker: a persistent message-streaming server that speaks Apache Iggy's classic binary
//! protocol. See docs/broker.md for the design.

pub mod access;
pub mod auth;
pub mod broker;
pub mod catalog;
pub mod clients;
pub mod commands;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod partition;
pub mod retention;
pub mod session;
pub mod stats;
pub mod storage;
pub mod tcp;
