//! Repair of damaged WAL slots: a replica whose header ring vouches for prepares it can no
//! longer read fetches them, byte for byte, from any peer, and votes again once they are back.

use super::Replica;
use crate::config::Config;
use crate::disk::header_of;
use crate::message::{Message, Node};
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Event;
use crate::{Op, ReplicaId};
use std::collections::BTreeMap;

/// What a replica that found a damaged WAL slot at recovery promised and still holds. Its
/// header ring names every prepare it wrote completely — everything it may have acknowledged —
/// so once those ops are back, byte for byte, its durable log is what it was and it may vote
/// again, without waiting for a StartView.
#[derive(Debug, Clone)]
pub(super) struct Repair {
    /// op → checksum, contiguous from the damaged slot (acks are cumulative: nothing after a
    /// slot that was never completely written can have been acknowledged).
    pub(super) promised: BTreeMap<Op, u128>,
    /// Promised ops whose own slot is intact, waiting for the ones before them.
    pub(super) spare: BTreeMap<Op, Prepare>,
}

impl Repair {
    pub(super) fn from_disk(
        damaged: Op,
        wal: &BTreeMap<u64, Prepare>,
        headers: &BTreeMap<u64, (Op, u128)>,
        cfg: &Config,
        base: Op,
    ) -> Self {
        let mut promised = BTreeMap::new();
        let mut spare = BTreeMap::new();
        let mut op = damaged;
        while op <= base + cfg.wal_slots {
            let Some(checksum) = header_of(headers, cfg, op) else {
                break;
            };
            let intact = wal
                .get(&cfg.slot(op))
                .filter(|p| p.op() == op && p.checksum() == checksum && p.verify());
            // The header ring also names what this replica prepared in the next epoch, which
            // it never durably entered (so never acknowledged anything of): its promises in
            // this epoch end at the reconfiguration op, as recovery's log does. Vouched for in
            // a vote, those ops became the new view's log after the reconfiguration op of the
            // epoch they are not part of (seed 7546744).
            if intact.is_some_and(|p| p.header.epoch > cfg.epoch) {
                break;
            }
            promised.insert(op, checksum);
            if let Some(prepare) = intact {
                spare.insert(op, prepare.clone());
                if ends_epoch(cfg.epoch, prepare) {
                    break;
                }
            }
            op += 1;
        }
        Self { promised, spare }
    }

    pub(super) fn last(&self) -> Op {
        self.promised.keys().next_back().copied().unwrap_or(0)
    }

    fn empty() -> Self {
        Self {
            promised: BTreeMap::new(),
            spare: BTreeMap::new(),
        }
    }

    /// The promises up to `op` only.
    fn up_to(mut self, op: Op) -> Self {
        self.promised.split_off(&(op + 1));
        self.spare.split_off(&(op + 1));
        self
    }

    /// What is left to repair once a checkpoint at `op` covers everything up to it.
    pub(super) fn after(mut self, op: Op) -> Self {
        Self {
            promised: self.promised.split_off(&(op + 1)),
            spare: self.spare.split_off(&(op + 1)),
        }
    }
}

/// Whether `prepare` is a reconfiguration op to an epoch after `epoch`: the last op of
/// `epoch`'s log.
pub(super) fn ends_epoch(epoch: crate::Epoch, prepare: &Prepare) -> bool {
    crate::membership::Membership::proposed_by(&prepare.header, &prepare.body)
        .is_some_and(|m| m.epoch > epoch)
}

impl<S: StateMachine> Replica<S> {
    /// Asks every peer for the first promised op our log lacks.
    pub(super) fn request_repair(&mut self) {
        let next = self.log.tail() + 1;
        if let Some(&checksum) = self.repair.as_ref().and_then(|r| r.promised.get(&next)) {
            self.ask_peers_for_prepare(next, checksum);
        }
    }

    /// Asks every peer for the prepare `checksum` at `op`; whoever holds it answers
    /// (`RepairPrepare`), in any view: the checksum names the prepare.
    pub(super) fn ask_peers_for_prepare(&mut self, op: Op, checksum: u128) {
        let me = self.cfg.replica;
        for to in (0..self.cfg.replica_count).filter(|&to| to != me) {
            self.ask_for_prepare(to, op, checksum);
        }
    }

    /// Asks `to` for the prepare `checksum` at `op`.
    pub(super) fn ask_for_prepare(&mut self, to: ReplicaId, op: Op, checksum: u128) {
        let replica = self.cfg.replica;
        self.send_now(
            Node::Replica(to),
            Message::RequestPrepare {
                op,
                checksum,
                replica,
            },
        );
    }

    /// A peer's copy of a promised prepare: appended (with any intact ones after it) and
    /// written. When every promised op is back and durable the replica is whole again.
    pub(super) fn on_repair_prepare(&mut self, prepare: Prepare) {
        let Some(repair) = self.repair.as_mut() else {
            return;
        };
        let op = prepare.op();
        // With op 1 lost too, recovery could not tell which root the log grows from and took
        // one of its own epoch; op 1, vouched for by our header ring, names the cluster's (the
        // one made in the epoch the first members opened in: seed 818285).
        if op == 1 && self.log.base() == 0 && self.log.tail() == 0 {
            let root = Prepare::root(self.cfg.cluster, self.cfg.group, prepare.header.epoch);
            if repair.promised.get(&1) == Some(&prepare.checksum())
                && prepare.verify()
                && root.checksum() == prepare.header.parent
            {
                self.log = crate::log::Log::new(root);
            }
        }
        if op != self.log.tail() + 1
            || repair.promised.get(&op) != Some(&prepare.checksum())
            || !prepare.verify()
            || prepare.header.parent != self.log.head().checksum()
        {
            return;
        }
        self.log.push(prepare);
        while !ends_epoch(self.cfg.epoch, self.log.head()) {
            let Some(next) = repair.spare.remove(&(self.log.tail() + 1)) else {
                break;
            };
            if next.header.parent != self.log.head().checksum() {
                break;
            }
            self.log.push(next);
        }
        if ends_epoch(self.cfg.epoch, self.log.head()) {
            // The header ring also vouches for what this replica prepared in the next epoch,
            // which it never durably entered (so never acknowledged anything of): its log in
            // this epoch ends here, as recovery's does (seed 809138).
            *repair = std::mem::replace(repair, Repair::empty()).up_to(self.log.tail());
        }
        let last = repair.last();
        self.event(Event::Repaired { op });
        self.write_pending();
        if self.log.tail() >= last {
            // Whole once these writes land (`advance_op_durable` clears `faulty` and the
            // repair; until then our votes still mark the ops not yet durable unreadable).
            self.repair_until = Some(last);
            self.advance_op_durable();
        } else {
            self.request_repair();
        }
    }
}
