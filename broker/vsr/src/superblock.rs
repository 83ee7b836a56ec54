//! The superblock: a replica's durable view state. Storage keeps several copies of it, each
//! written in full by every superblock write and each carrying a checksum; recovery takes the
//! newest copy that verifies. A write torn across the copies (a crash between them) or a copy
//! that rotted then costs nothing as long as one copy of the newest completed write stays
//! readable — the bound the copies exist for.

use crate::checksum::checksum;
use crate::membership::Membership;
use crate::{Op, View};

/// Writes carry a sequence number; storage keeps the newest, so a late completion of an older
/// write can never roll the view back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub sequence: u64,
    pub view: View,
    pub log_view: View,
    /// A commit number known when written (ops at or below it were committed).
    pub commit: Op,
    /// The checkpoint recovery starts from (0: none, the root). Its state was written before
    /// any superblock names it.
    pub checkpoint: Op,
    /// The configuration `view` and `log_view` belong to: views are ordered by `(epoch,
    /// view)`. All zero in superblocks written before reconfiguration existed (and by a replica
    /// that never left its first configuration): the configuration the replica was opened with.
    pub membership: Membership,
    /// The checksum of the reconfiguration op that started `membership`'s epoch (0: not known —
    /// the first configuration, a superblock written before it was recorded, or an epoch
    /// entered by a checkpoint past its start). With `membership.start` it names that prepare
    /// exactly, so a member whose log lost the start can still tell a member of the old epoch
    /// holding it that it committed (docs/replication.md, "Reconfiguration by epochs").
    pub start_checksum: u128,
    /// Over every field above ([`Superblock::sealed`]).
    pub checksum: u128,
}

impl Superblock {
    /// Fills in the checksum.
    pub fn sealed(mut self) -> Self {
        self.checksum = self.compute_checksum();
        self
    }

    pub fn verify(&self) -> bool {
        self.checksum == self.compute_checksum()
    }

    fn compute_checksum(&self) -> u128 {
        let (sequence, view, log_view) = (
            self.sequence.to_le_bytes(),
            self.view.to_le_bytes(),
            self.log_view.to_le_bytes(),
        );
        let (commit, checkpoint) = (self.commit.to_le_bytes(), self.checkpoint.to_le_bytes());
        let base: [&[u8]; 5] = [&sequence, &view, &log_view, &commit, &checkpoint];
        // The membership joins the checksum only when set, so superblocks written before it
        // existed still verify.
        if self.membership == Membership::UNSET {
            return checksum(&base);
        }
        let m = &self.membership;
        let (epoch, start) = (m.epoch.to_le_bytes(), m.start.to_le_bytes());
        let counts = [m.replica_count, m.standby_count];
        let membership: [&[u8]; 3] = [&epoch, &counts, &start];
        // Likewise the start's checksum, so superblocks written before it was recorded verify.
        let start_checksum = self.start_checksum.to_le_bytes();
        let recorded: &[&[u8]] = if self.start_checksum == 0 {
            &[]
        } else {
            &[&start_checksum]
        };
        checksum(&[base.as_slice(), membership.as_slice(), recorded].concat())
    }

    /// `(epoch, view, log_view)`: the order durable views only ever grow in.
    pub fn viewstamp(&self) -> (crate::Epoch, View, View) {
        (self.membership.epoch, self.view, self.log_view)
    }

    /// The newest copy that verifies, if any.
    pub fn newest(copies: &[Superblock]) -> Option<Superblock> {
        copies
            .iter()
            .filter(|copy| copy.verify())
            .max_by_key(|copy| copy.sequence)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock(sequence: u64, view: View) -> Superblock {
        Superblock {
            sequence,
            view,
            log_view: view,
            commit: 0,
            checkpoint: 0,
            membership: Membership::UNSET,
            start_checksum: 0,
            checksum: 0,
        }
        .sealed()
    }

    #[test]
    fn recovery_takes_the_newest_copy_that_verifies() {
        let old = superblock(4, 1);
        let new = superblock(5, 2);
        let mut rotten = new;
        rotten.view = 9;
        // A write torn after its first copy, then that copy rotted: the older write wins.
        assert_eq!(Superblock::newest(&[rotten, old, old, old]), Some(old));
        // The torn write's one good copy wins: it may be taken as if it had completed.
        assert_eq!(Superblock::newest(&[new, old, old, old]), Some(new));
        assert_eq!(Superblock::newest(&[rotten]), None);
        assert_eq!(Superblock::newest(&[]), None);
    }

    #[test]
    fn the_membership_is_covered_by_the_checksum_once_set() {
        let legacy = superblock(1, 0);
        let mut epoch = legacy;
        epoch.membership = Membership {
            epoch: 2,
            replica_count: 3,
            standby_count: 0,
            start: 40,
        };
        let epoch = epoch.sealed();
        assert!(legacy.verify() && epoch.verify());
        assert_ne!(legacy.checksum, epoch.checksum);
        let mut shrunk = epoch;
        shrunk.membership.replica_count = 1;
        assert!(!shrunk.verify());
        // The start's checksum joins once recorded, and is covered from then on.
        let mut named = epoch;
        named.start_checksum = 0xfeed;
        let named = named.sealed();
        assert!(named.verify());
        assert_ne!(named.checksum, epoch.checksum);
        let mut other = named;
        other.start_checksum = 0xbeef;
        assert!(!other.verify());
    }
}
