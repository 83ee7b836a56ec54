//! Submitters: where operations are ordered, given their context and applied.
//!
//! Every state change goes through [`Submit::submit`]. [`LocalSubmitter`] is today's single
//! node: it stamps the operation with the local clock and fresh randomness, applies it at once
//! and waits for whatever durability the storage settings promise. The replicated submitter
//! (`crate::replication::submitter`) implements the same trait by committing the operation
//! through the VSR log first, with the primary deciding the context, and applying it on every
//! replica.

mod local;

pub use local::LocalSubmitter;

use crate::broker::Broker;
use crate::error::Result;
use crate::ops::Submission;
use std::future::Future;

pub trait Submit {
    /// Orders `submission` among all state changes, applies it and returns once its effect is
    /// as durable as the broker promises. The reply to the client is appended to `reply`.
    fn submit(
        &self,
        broker: &Broker,
        submission: Submission<'_>,
        reply: &mut Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The broker's submitter. An enum rather than a trait object: the data path calls it for
/// every batch, and static dispatch keeps it free.
pub enum Submitter {
    Local(LocalSubmitter),
    Replicated(Box<crate::replication::submitter::ReplicatedSubmitter>),
}

impl Submit for Submitter {
    async fn submit(
        &self,
        broker: &Broker,
        submission: Submission<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        match self {
            Submitter::Local(local) => local.submit(broker, submission, reply).await,
            Submitter::Replicated(replicated) => replicated.submit(broker, submission, reply).await,
        }
    }
}
