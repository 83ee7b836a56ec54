//! The in-memory log of one replica: the prepares after its newest checkpoint, anchored on the
//! prepare of the checkpointed op (the root, op 0, before the first checkpoint). Ops at or below
//! the anchor live only in the checkpoint's state; the anchor's checksum is what the next op
//! chains to.

use crate::prepare::Prepare;
use crate::Op;

#[derive(Debug, Clone)]
pub struct Log {
    /// `entries[0]` is the anchor; `entries[i]` is op `base + i`.
    entries: Vec<Prepare>,
}

impl Log {
    pub fn new(anchor: Prepare) -> Self {
        Self {
            entries: vec![anchor],
        }
    }

    /// The anchor's op.
    pub fn base(&self) -> Op {
        self.entries[0].op()
    }

    pub fn tail(&self) -> Op {
        self.base() + self.entries.len() as Op - 1
    }

    pub fn get(&self, op: Op) -> Option<&Prepare> {
        let index = op.checked_sub(self.base())?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        self.get(op).map(Prepare::checksum)
    }

    pub fn head(&self) -> &Prepare {
        &self.entries[self.entries.len() - 1]
    }

    /// Swaps the body of the prepare at `op` (above the anchor) for `body`, which must be the
    /// same bytes held elsewhere: only when the checksum names that prepare and the length
    /// agrees. Returns whether it did.
    pub fn replace_body(&mut self, op: Op, checksum: u128, body: bytes::Bytes) -> bool {
        let Some(index) = op
            .checked_sub(self.base())
            .filter(|&i| i > 0)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        match self.entries.get_mut(index) {
            Some(entry) if entry.checksum() == checksum && entry.body.len() == body.len() => {
                debug_assert_eq!(entry.body, body, "a replacement body differs");
                entry.body = body;
                true
            }
            _ => false,
        }
    }

    pub fn push(&mut self, prepare: Prepare) {
        debug_assert_eq!(prepare.op(), self.tail() + 1);
        self.entries.push(prepare);
    }

    /// The whole log, anchor first.
    pub fn entries(&self) -> &[Prepare] {
        &self.entries
    }

    /// The prepares after `op` (all of them when `op` is below the anchor).
    pub fn after(&self, op: Op) -> &[Prepare] {
        let start = op.saturating_sub(self.base()).saturating_add(1);
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        self.entries.get(start..).unwrap_or(&[])
    }

    /// The anchor and every prepare up to `op`.
    pub fn up_to(&self, op: Op) -> Vec<Prepare> {
        let end = op.saturating_sub(self.base()).saturating_add(1);
        let end = usize::try_from(end)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        self.entries[..end].to_vec()
    }

    /// Drops everything below `op`, which becomes the anchor. No-op unless `op` is held above
    /// the current anchor.
    pub fn trim_below(&mut self, op: Op) {
        if op > self.base() && op <= self.tail() {
            let cut = (op - self.base()) as usize;
            self.entries.drain(..cut);
        }
    }

    /// The highest op both `self` and `chain` hold with the same checksum: where `chain` can
    /// be spliced onto this log. Equal checksums at one op mean equal logs up to it (the hash
    /// chain), so the splice is a valid chain.
    pub fn join_point(&self, chain: &[Prepare]) -> Option<Op> {
        let first = chain.first()?.op();
        let last = first + chain.len() as Op - 1;
        let low = self.base().max(first);
        let high = self.tail().min(last);
        (low..=high)
            .rev()
            .find(|&op| self.checksum_at(op) == Some(chain[(op - first) as usize].checksum()))
            .or_else(|| self.adopts_root_of(chain).then_some(0))
    }

    /// This log from the highest of `ops` (op, checksum) it holds with the same checksum to its
    /// tail, or all of it when it holds none of them alike. A replica holding that op joins the
    /// suffix there, with the same result as joining the whole log: equal checksums at one op
    /// mean equal logs up to it.
    pub fn from_alike(&self, ops: &[(Op, u128)]) -> &[Prepare] {
        let alike = ops
            .iter()
            .filter(|&&(op, checksum)| self.checksum_at(op) == Some(checksum))
            .map(|&(op, _)| op)
            .max();
        match alike {
            Some(op) => &self.entries[(op - self.base()) as usize..],
            None => &self.entries,
        }
    }

    /// An empty log (its root alone) joins a chain from another root of the same cluster and
    /// group at op 0, taking that root: roots carry nothing but the epoch their replica was
    /// first opened in, and a replica joining a running cluster is opened in a later epoch than
    /// the cluster's first, so its root differs from everyone else's.
    fn adopts_root_of(&self, chain: &[Prepare]) -> bool {
        let (ours, theirs) = (&self.entries[0].header, chain.first().map(|p| &p.header));
        self.entries.len() == 1
            && ours.op == 0
            && theirs
                .is_some_and(|t| t.op == 0 && t.cluster == ours.cluster && t.group == ours.group)
    }

    /// This log up to `at`, then `chain` after `at` (`at` from [`Log::join_point`]).
    pub fn spliced(&self, at: Op, chain: &[Prepare]) -> Log {
        if at == 0 && self.adopts_root_of(chain) && self.checksum_at(0) != Some(chain[0].checksum())
        {
            return Log {
                entries: chain.to_vec(),
            };
        }
        let mut entries = self.up_to(at);
        let first = chain[0].op();
        entries.extend_from_slice(&chain[(at + 1 - first) as usize..]);
        Log { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(from: &Prepare, len: u64, tag: u8) -> Vec<Prepare> {
        let mut out = vec![from.clone()];
        for _ in 0..len {
            let parent = out.last().map(Prepare::checksum).unwrap_or(0);
            let mut header = from.header.clone();
            header.op = out.last().map(Prepare::op).unwrap_or(0) + 1;
            header.parent = parent;
            out.push(Prepare::new(header, vec![tag]));
        }
        out
    }

    fn log_of(chain: &[Prepare]) -> Log {
        let mut log = Log::new(chain[0].clone());
        for prepare in &chain[1..] {
            log.push(prepare.clone());
        }
        log
    }

    #[test]
    fn addresses_ops_from_the_anchor_and_trims() {
        let root = Prepare::root(1, 1, 0);
        let entries = chain(&root, 5, 1);
        let mut log = log_of(&entries);
        assert_eq!((log.base(), log.tail()), (0, 5));
        log.trim_below(3);
        assert_eq!((log.base(), log.tail()), (3, 5));
        assert_eq!(log.get(2), None);
        assert_eq!(log.checksum_at(4), Some(entries[4].checksum()));
        assert_eq!(log.after(1).len(), 2);
        assert_eq!(log.after(4).len(), 1);
        assert_eq!(log.up_to(4).len(), 2);
        log.trim_below(9);
        assert_eq!(log.base(), 3, "trimming past the tail is refused");
    }

    #[test]
    fn replaces_a_body_only_for_the_prepare_its_checksum_names() {
        let root = Prepare::root(1, 1, 0);
        let entries = chain(&root, 3, 7);
        let mut log = log_of(&entries);
        let copy = bytes::Bytes::from(vec![7u8]);
        assert!(log.replace_body(2, entries[2].checksum(), copy.clone()));
        assert_eq!(log.get(2).map(|p| &p.body), Some(&copy));
        assert!(log.get(2).is_some_and(Prepare::verify));
        assert!(!log.replace_body(2, entries[3].checksum(), copy.clone()));
        assert!(!log.replace_body(3, entries[3].checksum(), vec![7u8, 7].into()));
        assert!(
            !log.replace_body(0, root.checksum(), bytes::Bytes::new()),
            "not the anchor"
        );
        assert!(!log.replace_body(9, entries[3].checksum(), copy));
    }

    #[test]
    fn a_requester_gets_the_log_from_the_highest_op_it_holds_alike() {
        let root = Prepare::root(1, 1, 0);
        let ours = chain(&root, 8, 1);
        let log = log_of(&ours);
        let at = |op: usize| (op as Op, ours[op].checksum());
        // Its tail (op 6) and the op it applied (op 3) are both ours: from 6.
        assert_eq!(
            log.from_alike(&[at(6), at(3)]).first().map(Prepare::op),
            Some(6)
        );
        // Its tail is of another history: from the op it applied.
        let stale = (7, ours[7].checksum() ^ 1);
        assert_eq!(
            log.from_alike(&[stale, at(3)]).first().map(Prepare::op),
            Some(3)
        );
        // Nothing alike, or ops we do not hold: the whole log.
        assert_eq!(log.from_alike(&[stale]).len(), ours.len());
        assert_eq!(log.from_alike(&[(40, 1)]).len(), ours.len());
        assert_eq!(log.from_alike(&[]).len(), ours.len());
    }

    #[test]
    fn joins_a_chain_at_the_last_common_op() {
        let root = Prepare::root(1, 1, 0);
        let ours = chain(&root, 6, 1);
        // Theirs agrees up to op 3, then diverges.
        let mut theirs = ours[..=3].to_vec();
        theirs.extend(chain(&ours[3], 4, 2).into_iter().skip(1));
        let mut log = log_of(&ours);
        log.trim_below(2);
        assert_eq!(log.join_point(&theirs[1..]), Some(3));
        let spliced = log.spliced(3, &theirs[1..]);
        assert_eq!((spliced.base(), spliced.tail()), (2, 7));
        assert_eq!(spliced.checksum_at(5), Some(theirs[5].checksum()));
        // A chain entirely above our log does not join.
        assert_eq!(log.join_point(&theirs[7..]), None);
    }

    #[test]
    fn an_empty_log_takes_the_root_of_a_chain_from_another_epoch() {
        let cluster_root = Prepare::root(1, 1, 1);
        let theirs = chain(&cluster_root, 3, 1);
        // A replica opened in epoch 2 has a root of its own.
        let joining = Log::new(Prepare::root(1, 1, 2));
        assert_eq!(joining.join_point(&theirs), Some(0));
        let joined = joining.spliced(0, &theirs);
        assert_eq!(joined.checksum_at(0), Some(cluster_root.checksum()));
        assert_eq!(joined.tail(), 3);
        // Not a log that holds ops, nor a root of another cluster.
        assert_eq!(
            log_of(&chain(&Prepare::root(1, 1, 2), 1, 2)).join_point(&theirs),
            None
        );
        assert_eq!(Log::new(Prepare::root(9, 1, 1)).join_point(&theirs), None);
    }
}
