//! The decisions a new primary makes from its DoViewChange quorum, as pure functions. The
//! replica and the stateright model (`broker/vsr-model`) both call these, so the model checks
//! the rules the code runs, not a restatement of them.

use crate::prepare::Prepare;
use crate::quorums;
use crate::{Op, ReplicaId, View};

/// What one DoViewChange says about its sender's durable log.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The view in which that log was last installed or extended.
    pub log_view: View,
    /// The prepares the sender can read, from its checkpoint's anchor on.
    pub log: Vec<Prepare>,
    /// Checksums of the ops right after `log` that the sender wrote completely but can no
    /// longer read (a damaged WAL slot and whatever follows it): it may have acknowledged them,
    /// so it vouches for them without being able to supply them.
    pub unreadable: Vec<u128>,
    /// The highest op the sender knew committed.
    pub commit: Op,
}

impl Vote {
    /// The sender's anchor: everything at or below it is committed state.
    pub fn base(&self) -> Op {
        self.log.first().map_or(0, Prepare::op)
    }

    /// The last op the sender can read.
    pub fn tail(&self) -> Op {
        self.log.last().map_or(0, Prepare::op)
    }

    /// The last op the sender vouches for: everything it may have acknowledged.
    pub fn head(&self) -> Op {
        self.tail() + self.unreadable.len() as Op
    }

    /// The sender's prepare of `op`, if it can read it.
    pub fn prepare(&self, op: Op) -> Option<&Prepare> {
        let index = usize::try_from(op.checked_sub(self.base())?).ok()?;
        self.log.get(index)
    }

    /// The checksum the sender's log holds at `op`, readable or not.
    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        if op <= self.tail() {
            return self.prepare(op).map(Prepare::checksum);
        }
        let index = usize::try_from(op - self.tail() - 1).ok()?;
        self.unreadable.get(index).copied()
    }

    /// Whether the sender proves it cannot have helped commit the prepare `checksum` at `op`:
    /// above its checkpoint, its durable log — readable or not — holds another prepare at `op`
    /// or ends before it. An acknowledged prepare is durable, and a damaged one keeps its
    /// header, so a prepare the sender acknowledged can leave its log only when a newer view's
    /// log replaces it; and a newer view's log replaces only prepares that never committed
    /// (a committed one is in every later view's log).
    pub fn nacks(&self, op: Op, checksum: u128) -> bool {
        op > self.base() && self.checksum_at(op) != Some(checksum)
    }
}

/// One DoViewChange as the new primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub replica: ReplicaId,
    /// The view in which the sender's durable log was last installed or extended.
    pub log_view: View,
    /// The sender's last durable op.
    pub op_head: Op,
    /// The highest op the sender knew committed.
    pub commit: Op,
}

/// Whether the new primary may start its view: `Qv` DoViewChanges, its own among them (its own
/// state is what it installs if it wins, and it must have stopped accepting the old view).
pub fn quorum_complete(candidates: &[Candidate], primary: ReplicaId, replica_count: u8) -> bool {
    candidates.len() >= quorums::view_change(replica_count)
        && candidates.iter().any(|c| c.replica == primary)
}

/// The log to install: VRR's rule — the highest log view, then the longest log. Every op
/// committed in an earlier view is in that log: a replication quorum held it, the view-change
/// quorum meets that quorum, and no view after the one that committed it can have installed a
/// log without it. Ties go to the lowest replica id, so the choice is deterministic.
pub fn best_log(candidates: &[Candidate]) -> Option<Candidate> {
    candidates
        .iter()
        .copied()
        .max_by_key(|c| (c.log_view, c.op_head, std::cmp::Reverse(c.replica)))
}

/// The commit number the new view starts from: the highest any member of the quorum knew (and
/// the new primary's own), never beyond the log being installed.
pub fn merged_commit(candidates: &[Candidate], own_commit: Op, installed_head: Op) -> Op {
    candidates
        .iter()
        .map(|c| c.commit)
        .max()
        .unwrap_or(0)
        .max(own_commit)
        .min(installed_head)
}

/// Whether `nacks` DoViewChanges that nack a prepare prove it never committed, so that a new
/// primary that cannot find its body may drop it and everything after it.
pub fn may_truncate(nacks: usize, replica_count: u8) -> bool {
    nacks >= quorums::nack(replica_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(replica: ReplicaId, log_view: View, op_head: Op, commit: Op) -> Candidate {
        Candidate {
            replica,
            log_view,
            op_head,
            commit,
        }
    }

    #[test]
    fn a_newer_log_view_beats_a_longer_log() {
        let older_but_longer = candidate(0, 1, 9, 3);
        let newer = candidate(2, 2, 5, 4);
        assert_eq!(best_log(&[older_but_longer, newer]), Some(newer));
    }

    #[test]
    fn ties_go_to_the_longest_log_then_the_lowest_replica() {
        let a = candidate(1, 2, 5, 0);
        let b = candidate(0, 2, 5, 0);
        let c = candidate(2, 2, 4, 0);
        assert_eq!(best_log(&[a, b, c]).map(|c| c.replica), Some(0));
    }

    #[test]
    fn the_quorum_needs_the_primarys_own_do_view_change() {
        let others = [candidate(0, 1, 3, 1), candidate(2, 1, 3, 1)];
        assert!(!quorum_complete(&others, 1, 3));
        assert!(quorum_complete(&[others[0], candidate(1, 1, 2, 1)], 1, 3));
    }

    #[test]
    fn the_commit_never_passes_the_installed_log() {
        let dvcs = [candidate(0, 1, 3, 7), candidate(1, 1, 9, 2)];
        assert_eq!(merged_commit(&dvcs, 1, 9), 7);
        assert_eq!(merged_commit(&dvcs, 1, 5), 5);
        assert_eq!(merged_commit(&dvcs, 8, 9), 8);
    }

    fn chain(ops: std::ops::RangeInclusive<Op>) -> Vec<Prepare> {
        let mut log = vec![];
        let mut parent = 0;
        for op in ops {
            let mut header = Prepare::root(1, 1, 0).header;
            header.op = op;
            header.parent = parent;
            let prepare = Prepare::new(header, vec![op as u8]);
            parent = prepare.checksum();
            log.push(prepare);
        }
        log
    }

    fn vote(log: Vec<Prepare>, unreadable: Vec<u128>) -> Vote {
        Vote {
            log_view: 1,
            log,
            unreadable,
            commit: 0,
        }
    }

    #[test]
    fn a_vote_vouches_for_its_unreadable_suffix_and_nacks_only_what_it_lacks() {
        let full = chain(3..=8);
        let damaged = vote(
            full[..3].to_vec(),
            vec![full[3].checksum(), full[4].checksum()],
        );
        assert_eq!((damaged.base(), damaged.tail(), damaged.head()), (3, 5, 7));
        assert_eq!(damaged.prepare(5), Some(&full[2]));
        assert_eq!(damaged.prepare(6), None, "unreadable");
        assert_eq!(damaged.checksum_at(7), Some(full[4].checksum()));
        // Unreadable but vouched for: no nack.
        assert!(!damaged.nacks(6, full[3].checksum()));
        assert!(!damaged.nacks(7, full[4].checksum()));
        // Another prepare at the op, or a log that ends before it: nack.
        assert!(damaged.nacks(7, 0xdead));
        assert!(damaged.nacks(8, full[5].checksum()));
        // At or below the checkpoint: committed state, never nacked.
        assert!(!damaged.nacks(3, 0xdead));
        assert!(!damaged.nacks(2, 0xdead));
    }

    #[test]
    fn only_a_nack_quorum_may_drop_a_prepare() {
        assert!(!may_truncate(1, 3));
        assert!(may_truncate(2, 3));
        assert!(
            may_truncate(1, 2),
            "two replicas: one that never had it is proof enough"
        );
        assert!(!may_truncate(2, 5));
        assert!(may_truncate(3, 5));
    }
}
