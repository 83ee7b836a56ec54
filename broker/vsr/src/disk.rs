//! The disk contract between the core and its storage: what storage holds when a replica
//! (re)starts ([`DiskImage`]), and how recovery reads one WAL slot ([`classify_slot`]).

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::prepare::Prepare;
use crate::superblock::Superblock;
use crate::Op;
use std::collections::BTreeMap;

/// What storage held when the replica (re)started: the superblock copies as read (any of
/// them possibly stale, torn or rotten; recovery takes the newest that verifies), the checkpoint it
/// names, the WAL prepares by slot as read (possibly corrupt, possibly misplaced, possibly an
/// older op's), and the redundant header ring (slot → op and checksum of the prepare written
/// there). A WAL write lands its prepare first and its header second, and is acknowledged only
/// after both: a header therefore proves the prepare was completely written, which is how
/// recovery tells a torn write from corruption.
#[derive(Debug, Clone, Default)]
pub struct DiskImage {
    pub superblocks: Vec<Superblock>,
    pub checkpoint: Option<Checkpoint>,
    pub wal: BTreeMap<u64, Prepare>,
    pub headers: BTreeMap<u64, (Op, u128)>,
}

/// How recovery read one WAL slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCase {
    /// Prepare valid, chains, header agrees (or the header write was lost: still intact).
    Intact,
    /// No header and no valid prepare: never written, or a torn write never acknowledged.
    Torn,
    /// A header vouches for a prepare that is missing, corrupt or another op's: a write that
    /// completed (and may have been acknowledged) and then rotted or was misdirected.
    Faulty,
}

/// Classifies slot `op` given the previous prepare's checksum.
pub fn classify_slot(
    op: Op,
    parent: u128,
    prepare: Option<&Prepare>,
    header: Option<u128>,
) -> SlotCase {
    let intact = prepare.filter(|p| p.op() == op && p.verify() && p.header.parent == parent);
    match (intact, header) {
        (Some(p), Some(h)) if h != p.checksum() => SlotCase::Faulty,
        (Some(_), _) => SlotCase::Intact,
        (None, Some(_)) => SlotCase::Faulty,
        (None, None) => SlotCase::Torn,
    }
}

/// Whether the slot of `op` holds a whole prepare (its header may vouch for it) left over from a
/// history the log has since replaced: it was prepared in an earlier `(epoch, view)` than
/// `previous`, the log's op before it, and so cannot follow it — views never go back along a
/// chain. That happens when recovery cut the log at a torn write below it and a later view
/// prepared the ops from there again: the old prepare's header still vouches for it until its
/// slot is written again. It was never committed (its own predecessor was not kept, and a
/// later view keeps every committed op), so it ends the log like a torn write instead of
/// marking the replica faulty — which a cluster of one, with no peer to repair from, would
/// never leave.
pub fn superseded(op: Op, previous: &Prepare, prepare: Option<&Prepare>) -> bool {
    prepare.is_some_and(|p| {
        p.op() == op
            && p.verify()
            && p.header.parent != previous.checksum()
            && (p.header.epoch, p.header.view) < (previous.header.epoch, previous.header.view)
    })
}

/// The checksum the header ring records for `op`, if its slot's header is `op`'s (an older
/// op's header there says nothing about `op`).
pub(crate) fn header_of(headers: &BTreeMap<u64, (Op, u128)>, cfg: &Config, op: Op) -> Option<u128> {
    headers
        .get(&cfg.slot(op))
        .filter(|(written, _)| *written == op)
        .map(|(_, checksum)| *checksum)
}
