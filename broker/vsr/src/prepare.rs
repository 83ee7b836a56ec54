//! Prepares: the ops of the replicated log. Each header is checksummed, names its body's
//! checksum and chains to the previous op's prepare (`parent`), so a log is a hash chain that a
//! replica verifies before it trusts a byte of it.

use crate::checksum::checksum;
use crate::{ClientId, Epoch, Op, View};
use bytes::Bytes;

/// The header of a prepare: what the hash chain and the checkers look at.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrepareHeader {
    /// Checksum of every other header field (the body checksum included).
    pub checksum: u128,
    /// Checksum of the previous op's prepare: the hash chain.
    pub parent: u128,
    pub body_checksum: u128,
    pub cluster: u128,
    pub group: u32,
    pub epoch: Epoch,
    /// The view in which the primary prepared this op.
    pub view: View,
    pub op: Op,
    /// The primary's commit number when it prepared this op.
    pub commit: Op,
    pub client: ClientId,
    /// The client's session (the op that registered it); 0 for a registration itself.
    pub session: u64,
    pub request: u64,
    /// Primary-assigned time, monotonic along the chain.
    pub timestamp: u64,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prepare {
    pub header: PrepareHeader,
    /// Shared: the log, the WAL write and every send of a prepare hold the same bytes.
    pub body: Bytes,
}

impl PrepareHeader {
    fn compute_checksum(&self) -> u128 {
        checksum(&[
            &self.parent.to_le_bytes(),
            &self.body_checksum.to_le_bytes(),
            &self.cluster.to_le_bytes(),
            &self.group.to_le_bytes(),
            &self.epoch.to_le_bytes(),
            &self.view.to_le_bytes(),
            &self.op.to_le_bytes(),
            &self.commit.to_le_bytes(),
            &self.client.to_le_bytes(),
            &self.session.to_le_bytes(),
            &self.request.to_le_bytes(),
            &self.timestamp.to_le_bytes(),
        ])
    }
}

impl Prepare {
    /// The chain's root, op 0: the same on every replica of a cluster and group.
    pub fn root(cluster: u128, group: u32, epoch: Epoch) -> Self {
        Self::new(
            PrepareHeader {
                checksum: 0,
                parent: 0,
                body_checksum: 0,
                cluster,
                group,
                epoch,
                view: 0,
                op: 0,
                commit: 0,
                client: 0,
                session: 0,
                request: 0,
                timestamp: 0,
            },
            Vec::new(),
        )
    }

    /// Seals a prepare: fills in the body checksum and the header checksum.
    pub fn new(mut header: PrepareHeader, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        header.body_checksum = checksum(&[&body]);
        header.checksum = header.compute_checksum();
        Self { header, body }
    }

    /// Both checksums verify.
    pub fn verify(&self) -> bool {
        self.header.body_checksum == checksum(&[&self.body])
            && self.header.checksum == self.header.compute_checksum()
    }

    pub fn op(&self) -> Op {
        self.header.op
    }

    pub fn checksum(&self) -> u128 {
        self.header.checksum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_prepares_verify_and_detect_any_change() {
        let root = Prepare::root(7, 1, 0);
        let mut header = root.header.clone();
        header.parent = root.checksum();
        header.op = 1;
        header.client = 9;
        let prepare = Prepare::new(header, b"batch".to_vec());
        assert!(prepare.verify());
        let mut body_rot = prepare.clone();
        let mut rotten = body_rot.body.to_vec();
        rotten[0] ^= 1;
        body_rot.body = rotten.into();
        assert!(!body_rot.verify());
        let mut header_rot = prepare.clone();
        header_rot.header.op = 2;
        assert!(!header_rot.verify());
        assert_ne!(
            Prepare::root(7, 1, 0).checksum(),
            Prepare::root(8, 1, 0).checksum()
        );
    }
}
