//! The broker's in-memory state: the catalog of streams, topics, partitions and users, consumer
//! groups, each partition's log handle, and the statistics derived from them. Commands read it;
//! only [`crate::apply`] changes it.

pub mod catalog;
pub mod groups;
pub mod partition;
pub mod settings;
pub mod stats;
