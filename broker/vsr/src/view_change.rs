//! The decisions a new primary makes from its DoViewChange quorum, as pure functions. The
//! replica and the stateright model (`broker/vsr-model`) both call these, so the model checks
//! the rules the code runs, not a restatement of them.

use crate::quorums;
use crate::{Op, ReplicaId, View};

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
}
