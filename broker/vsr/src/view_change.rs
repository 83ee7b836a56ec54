//! The decisions a new primary makes from its DoViewChange quorum, as pure functions. The
//! replica and the stateright model (`broker/vsr-model`) both call these, so the model checks
//! the rules the code runs, not a restatement of them.

use crate::prepare::Prepare;
use crate::quorums;
use crate::{Op, ReplicaId, View};

/// What one DoViewChange says about its sender's durable log: every op's checksum from its
/// checkpoint on, and no bodies but its anchor's. A new primary takes the bodies of the winning
/// log from its own log and asks a voter that can read them for the rest
/// (docs/replication.md, "View changes carry what is lacked").
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The view in which that log was last installed or extended.
    pub log_view: View,
    /// The prepares sent whole: the sender's checkpoint's anchor (and, from a sender that has
    /// nothing after it, nothing more).
    pub log: Vec<Prepare>,
    /// Checksums of the ops right after `log` that the sender vouches for without sending them:
    /// up to `readable` it holds them and answers requests for them; after it, it wrote them
    /// completely but can no longer read them (a damaged WAL slot and whatever follows it). It
    /// may have acknowledged all of them.
    pub vouched: Vec<u128>,
    /// The last op the sender can read.
    pub readable: Op,
    /// The highest op the sender knew committed.
    pub commit: Op,
}

impl Vote {
    /// The sender's anchor: everything at or below it is committed state.
    pub fn base(&self) -> Op {
        self.log.first().map_or(0, Prepare::op)
    }

    /// The last op whose prepare the vote carries.
    pub fn tail(&self) -> Op {
        self.log.last().map_or(0, Prepare::op)
    }

    /// The last op the sender vouches for: everything it may have acknowledged.
    pub fn head(&self) -> Op {
        self.tail() + self.vouched.len() as Op
    }

    /// How many of the vouched ops the sender cannot read.
    pub fn unreadable(&self) -> u64 {
        self.head() - self.readable.clamp(self.tail(), self.head())
    }

    /// Whether the vote is one a sender could have made: its prepares a chain, its readable
    /// part within what it vouches for, and no more ops than `wal_slots` above its anchor (an
    /// op the WAL no longer holds is under a checkpoint).
    pub fn is_well_formed(&self, wal_slots: u64) -> bool {
        crate::replica::valid_chain(&self.log)
            && (self.tail()..=self.head()).contains(&self.readable)
            && self.head() - self.base() <= wal_slots
    }

    /// The sender's prepare of `op`, if the vote carries it.
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
        self.vouched.get(index).copied()
    }

    /// Whether the sender can supply the prepare `checksum` at `op`: in the vote, or from its
    /// log on request.
    pub fn can_supply(&self, op: Op, checksum: u128) -> bool {
        op <= self.readable && self.checksum_at(op) == Some(checksum)
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

    /// What the sender lacks of `log` (a new primary's): from the highest op the sender can
    /// read with the checksum `log` holds there to `log`'s tail, or all of `log` when no such
    /// op exists. Splicing that suffix onto the sender's log gives the same log as splicing
    /// the whole: both join at that op (the hash chain makes the logs equal below it).
    pub fn lacks<'a>(&self, log: &'a crate::log::Log) -> &'a [Prepare] {
        let readable: Vec<(Op, u128)> = (self.base()..=self.readable)
            .filter_map(|op| Some((op, self.checksum_at(op)?)))
            .collect();
        log.from_alike(&readable)
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
    use crate::log::Log;

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

    /// A vote anchored at `log[0]` that vouches for the rest of `log` and reads it up to
    /// `readable`.
    fn vote(log: &[Prepare], readable: Op) -> Vote {
        Vote {
            log_view: 1,
            log: log[..1].to_vec(),
            vouched: log[1..].iter().map(Prepare::checksum).collect(),
            readable,
            commit: 0,
        }
    }

    fn log_of(prepares: &[Prepare]) -> Log {
        let mut log = Log::new(prepares[0].clone());
        for prepare in &prepares[1..] {
            log.push(prepare.clone());
        }
        log
    }

    #[test]
    fn a_vote_vouches_for_its_log_by_checksum_and_nacks_only_what_it_lacks() {
        let full = chain(3..=8);
        let damaged = vote(&full[..5], 5);
        assert_eq!((damaged.base(), damaged.tail(), damaged.head()), (3, 3, 7));
        assert_eq!(damaged.unreadable(), 2);
        assert!(damaged.is_well_formed(4) && !damaged.is_well_formed(3));
        assert_eq!(damaged.prepare(3), Some(&full[0]), "the anchor goes whole");
        assert_eq!(damaged.prepare(4), None);
        assert_eq!(damaged.checksum_at(5), Some(full[2].checksum()));
        assert_eq!(damaged.checksum_at(7), Some(full[4].checksum()));
        // It supplies what it reads, and vouches for the rest.
        assert!(damaged.can_supply(5, full[2].checksum()));
        assert!(!damaged.can_supply(5, 0xdead));
        assert!(!damaged.can_supply(6, full[3].checksum()));
        assert!(!damaged.nacks(6, full[3].checksum()));
        assert!(!damaged.nacks(7, full[4].checksum()));
        // Another prepare at the op, or a log that ends before it: nack.
        assert!(damaged.nacks(7, 0xdead));
        assert!(damaged.nacks(8, full[5].checksum()));
        // At or below the checkpoint: committed state, never nacked.
        assert!(!damaged.nacks(3, 0xdead));
        assert!(!damaged.nacks(2, 0xdead));
        // Reading past what it vouches for, or less than it carries, is no vote.
        let mut lying = vote(&full[..5], 5);
        lying.readable = 8;
        assert!(!lying.is_well_formed(9));
        lying.readable = 2;
        assert!(!lying.is_well_formed(9));
    }

    #[test]
    fn a_voter_lacks_the_new_log_from_the_last_op_it_reads_alike() {
        // The new primary's log: ops 3..=10.
        let ours = chain(3..=10);
        let log = log_of(&ours);
        // The voter agrees up to op 6, then holds two ops of another view.
        let mut header = ours[3].header.clone();
        header.op = 7;
        header.parent = ours[3].checksum();
        header.view = 9;
        let other = Prepare::new(header, vec![70]);
        let mut theirs = ours[..=3].to_vec();
        theirs.push(other);
        let lacked = vote(&theirs, 7).lacks(&log);
        assert_eq!(lacked.first().map(Prepare::op), Some(6));
        assert_eq!(lacked.len(), 5);
        // The suffix joins their log where the whole one does, to the same result.
        let their_log = log_of(&theirs);
        let at = their_log.join_point(lacked).unwrap();
        assert_eq!(Some(at), their_log.join_point(log.entries()));
        assert_eq!(
            their_log.spliced(at, lacked).entries(),
            their_log.spliced(at, log.entries()).entries()
        );
        // Only what the voter can read counts: op 6 unreadable, it joins at 5.
        assert_eq!(
            vote(&theirs, 5).lacks(&log).first().map(Prepare::op),
            Some(5)
        );
        // A voter holding all of it lacks only the tail as an anchor; one holding nothing
        // alike, or anchored past our tail, gets everything.
        assert_eq!(vote(&ours, 10).lacks(&log).len(), 1);
        let strangers = chain(20..=22);
        assert_eq!(vote(&strangers, 22).lacks(&log).len(), ours.len());
        let mut root_only = ours[..1].to_vec();
        root_only[0].header.view = 5;
        let root_only = vec![Prepare::new(root_only[0].header.clone(), vec![])];
        assert_eq!(vote(&root_only, 3).lacks(&log).len(), ours.len());
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
