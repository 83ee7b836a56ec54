//! Opening a replica on what its storage holds: the newest superblock that verifies, the
//! checkpoint it names, and the WAL read slot by slot until a torn write or a damaged slot.

use super::repair::ends_epoch;
use super::{Repair, Replica, Status};
use crate::disk::{classify_slot, header_of, superseded, DiskImage, SlotCase};
use crate::log::Log;
use crate::membership::Membership;
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Output;
use crate::superblock::Superblock;
use crate::{Config, Op};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl<S: StateMachine> Replica<S> {
    /// Starts a replica on what its storage holds. An empty disk is a fresh cluster member
    /// (normal in view 0); anything else is a restart, which waits to learn the current view.
    pub fn open(mut cfg: Config, disk: DiskImage, mut sm: S) -> Self {
        // Without a durable superblock this replica never sent anything (sends wait for it), so
        // nothing in its WAL was ever acknowledged: it starts as a fresh member.
        // No copy that verifies is no superblock: nothing was ever sent (the copies keep one of
        // the newest completed write readable; see `superblock.rs`).
        let durable_superblock = Superblock::newest(&disk.superblocks);
        let (wal, headers) = if durable_superblock.is_some() {
            (disk.wal, disk.headers)
        } else {
            (BTreeMap::new(), BTreeMap::new())
        };
        let superblock = durable_superblock.unwrap_or(Superblock {
            sequence: 0,
            view: 0,
            log_view: 0,
            commit: 0,
            checkpoint: 0,
            membership: Membership::UNSET,
            start_checksum: 0,
            checksum: 0,
        });
        // The configuration is durable state: the newest one recorded (by the superblock, or by
        // the checkpoint a sync brought) outranks the one the driver opened us with, which
        // is only the ring it was started from.
        let recorded = [
            superblock.membership,
            disk.checkpoint
                .as_ref()
                .filter(|c| c.op() == superblock.checkpoint && c.verify())
                .map_or(Membership::UNSET, |c| c.membership),
        ]
        .into_iter()
        .filter(|m| *m != Membership::UNSET)
        .max_by_key(|m| m.epoch);
        let mut epoch_start = 0;
        // The superblock's views belong to its own epoch. A newer epoch recorded only by the
        // checkpoint (a sync from a later epoch became durable before the superblock that
        // would have entered it) starts at view 0 of that epoch (seed 445707: a view of the
        // old epoch carried into the new one left a standby waiting for a view nobody had).
        let superblock_epoch = if superblock.membership == Membership::UNSET {
            cfg.epoch
        } else {
            superblock.membership.epoch
        };
        let entered_by_checkpoint = recorded.is_some_and(|m| m.epoch > superblock_epoch);
        let (view, log_view) = if entered_by_checkpoint {
            (0, 0)
        } else {
            (superblock.view, superblock.log_view)
        };
        if let Some(m) = recorded {
            cfg.epoch = m.epoch;
            cfg.replica_count = m.replica_count;
            cfg.standby_count = m.standby_count;
            epoch_start = m.start;
        }
        // A fresh disk joining a running cluster holds nothing it could vote with.
        let mut faulty = durable_superblock.is_none() && cfg.joining;
        let mut repair = None;
        // The root is the cluster's, made in the epoch its first members were opened in; a
        // replica that joined later took it from its peers (`Log::join_point`). Op 1 names it
        // (its own epoch is that first one); without op 1 nothing chains to the root yet.
        let root = {
            let ours = Prepare::root(cfg.cluster, cfg.group, cfg.epoch);
            wal.get(&cfg.slot(1))
                .filter(|p| p.op() == 1 && p.verify())
                .map(|p| {
                    (
                        Prepare::root(cfg.cluster, cfg.group, p.header.epoch),
                        p.header.parent,
                    )
                })
                .filter(|(root, parent)| root.checksum() == *parent)
                .map_or(ours, |(root, _)| root)
        };
        let mut anchor = root;
        let mut client_table = BTreeMap::new();
        let mut checkpoints = BTreeMap::new();
        if superblock.checkpoint > 0 {
            let named = disk
                .checkpoint
                .filter(|c| c.op() == superblock.checkpoint && c.verify());
            match named {
                Some(checkpoint) if sm.restore(&checkpoint.state).is_ok() => {
                    anchor = checkpoint.anchor.clone();
                    client_table = checkpoint.clients.iter().cloned().collect();
                    checkpoints.insert(checkpoint.op(), checkpoint);
                }
                // The checkpoint rotted: no state to start from and no log that chains. The
                // replica sits view changes out (`sits_out`) until a peer's checkpoint (state
                // sync) and a StartView repair it.
                _ => faulty = true,
            }
        }
        let mut log = Log::new(anchor);
        // A reconfiguration op to an epoch this replica's superblock is not in ends the log:
        // what the WAL holds after it was prepared in the next epoch, which this replica never
        // durably entered (so never acknowledged anything of); read as part of the old epoch's
        // log it would break "nothing follows the reconfiguration op in its epoch".
        while !faulty
            && log.tail() < log.base() + cfg.wal_slots
            && !ends_epoch(cfg.epoch, log.head())
        {
            let op = log.tail() + 1;
            let header = header_of(&headers, &cfg, op);
            let prepare = wal.get(&cfg.slot(op));
            let case = if superseded(op, log.head(), prepare) {
                SlotCase::Torn
            } else {
                classify_slot(op, log.head().checksum(), prepare, header)
            };
            match case {
                SlotCase::Intact => match prepare {
                    Some(prepare) => log.push(prepare.clone()),
                    None => break,
                },
                SlotCase::Torn => break,
                SlotCase::Faulty => {
                    faulty = true;
                    repair = Some(Repair::from_disk(op, &wal, &headers, &cfg, log.base()));
                }
            }
        }
        // An epoch's first superblock is written with the log up to its start, but a WAL too
        // full to take it then, or a checkpoint synced from a later epoch and not durable yet,
        // can leave a superblock of an epoch whose start this log does not hold. Such a replica
        // would vote without the history its epoch begins from: it sits out (as a faulty one
        // does) until a StartView gives it the log.
        let holds_start = epoch_start <= log.base()
            || log.get(epoch_start).is_some_and(|p| {
                Membership::proposed_by(&p.header, &p.body).map(|m| m.epoch) == Some(cfg.epoch)
            });
        // Unless the repair of a damaged slot covers the start: the ops it promised (by checksum
        // in the header ring) run through it, and are fetched from peers like any repair.
        let start_lost = !holds_start && !faulty;
        // How the start is named to replicas of the old epoch while the log lacks it: the
        // superblock's record, when the superblock is of this very epoch.
        let recorded_start_checksum = (!entered_by_checkpoint
            && superblock.membership.epoch == cfg.epoch
            && superblock.membership.start == epoch_start)
            .then_some(superblock.start_checksum);
        let epoch_start_checksum = log
            .checksum_at(epoch_start)
            .filter(|_| holds_start)
            .or(recorded_start_checksum)
            .unwrap_or(0);
        if !holds_start
            && repair
                .as_ref()
                .is_none_or(|r: &Repair| r.last() < epoch_start)
        {
            faulty = true;
            repair = None;
        }
        // A prepare without its header is intact but not vouched for: if it rotted later,
        // recovery could no longer tell it from a torn write. It counts as durable (and may be
        // acknowledged) only once its header is rewritten, below.
        let vouched = |p: &&Prepare| header_of(&headers, &cfg, p.op()) == Some(p.checksum());
        let durable_ops: BTreeMap<Op, (u128, u64)> = log
            .after(log.base())
            .iter()
            .take_while(vouched)
            .map(|p| (p.op(), (p.checksum(), 0)))
            .collect();
        let op_durable = log.base() + durable_ops.len() as Op;
        let base = log.base();
        let outside = Membership {
            epoch: cfg.epoch,
            replica_count: cfg.replica_count,
            standby_count: cfg.standby_count,
            start: epoch_start,
        }
        .role_of(cfg.replica)
            == crate::membership::Role::Outside;
        let status = if outside {
            Status::Retired
        } else if durable_superblock.is_some() || faulty {
            Status::Recovering
        } else {
            Status::Normal
        };
        let rng = cfg.seed ^ (cfg.replica as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A;
        let mut replica = Self {
            sm,
            status,
            view,
            log_view,
            log,
            commit_min: base,
            commit_max: base,
            durable: Some((superblock_epoch, superblock.view, superblock.log_view)),
            superblock_sequence: superblock.sequence,
            superblock_queued: false,
            op_durable,
            durable_ops,
            writes: BTreeMap::new(),
            next_io: 0,
            client_table,
            checkpoint_durable: superblock.checkpoint,
            checkpoint_named: superblock.checkpoint,
            checkpoints,
            wal_issued: op_durable,
            syncing: None,
            sync_view: None,
            last_sync_request: 0,
            acked: BTreeMap::new(),
            standbys_acked: BTreeMap::new(),
            suspects: BTreeSet::new(),
            requests: VecDeque::new(),
            svc: BTreeSet::new(),
            dvc: BTreeMap::new(),
            dvc_sent: false,
            dvc_sent_at: 0,
            view_change_bodies: BTreeMap::new(),
            last_body_request: 0,
            faulty,
            repair_until: None,
            repair,
            tick: 0,
            heard_from_primary: 0,
            status_since: 0,
            last_commit_broadcast: 0,
            commit_sent: 0,
            last_retransmit: 0,
            last_state_request: 0,
            last_view_request: 0,
            last_view_change_message: 0,
            last_progress: 0,
            sent_at: BTreeMap::new(),
            deferred: Vec::new(),
            epoch_start,
            epoch_start_checksum,
            start_lost,
            synced_epoch: None,
            proposal: None,
            last_epoch_request: 0,
            epoch_answers: BTreeMap::new(),
            jitter: 0,
            rng,
            last_timestamp: 0,
            staged: (0, 0),
            now: 0,
            out: Vec::new(),
            cfg,
        };
        replica.jitter = replica.random() % (replica.cfg.primary_timeout / 2 + 1);
        if durable_superblock.is_none() {
            // A fresh member makes view 0 durable before it says anything.
            replica.durable = None;
            replica.write_superblock();
        } else if entered_by_checkpoint {
            // Records the epoch the checkpoint took it into.
            replica.write_superblock();
        }
        // Rewrite (prepare and header) every recovered op past the vouched prefix.
        replica.write_pending();
        // Ops committed before the crash are applied again to rebuild the state machine.
        let recovered_commit = superblock.commit.min(replica.log_tail()).max(base);
        replica.commit_max = recovered_commit;
        replica.apply_committed();
        // Recovery's own applies are not news; the writes issued at open are.
        replica.out.retain(|o| !matches!(o, Output::Event(_)));
        replica
    }
}
