//! Opening a replica on what its storage holds: the newest superblock that verifies, the
//! checkpoint it names, and the WAL read slot by slot until a torn write or a damaged slot.

use super::{Repair, Replica, Status};
use crate::disk::{classify_slot, header_of, DiskImage, SlotCase};
use crate::log::Log;
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Output;
use crate::superblock::Superblock;
use crate::{Config, Op};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl<S: StateMachine> Replica<S> {
    /// Starts a replica on what its storage holds. An empty disk is a fresh cluster member
    /// (normal in view 0); anything else is a restart, which waits to learn the current view.
    pub fn open(cfg: Config, disk: DiskImage, mut sm: S) -> Self {
        let root = Prepare::root(cfg.cluster, cfg.group, cfg.epoch);
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
            checksum: 0,
        });
        let mut faulty = false;
        let mut repair = None;
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
        while !faulty && log.tail() < log.base() + cfg.wal_slots {
            let op = log.tail() + 1;
            let header = header_of(&headers, &cfg, op);
            let prepare = wal.get(&cfg.slot(op));
            match classify_slot(op, log.head().checksum(), prepare, header) {
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
        let status = if durable_superblock.is_some() {
            Status::Recovering
        } else {
            Status::Normal
        };
        let rng = cfg.seed ^ (cfg.replica as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A;
        let mut replica = Self {
            sm,
            status,
            view: superblock.view,
            log_view: superblock.log_view,
            log,
            commit_min: base,
            commit_max: base,
            durable: Some((superblock.view, superblock.log_view)),
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
            view_change_bodies: BTreeMap::new(),
            last_body_request: 0,
            faulty,
            repair_until: None,
            repair,
            tick: 0,
            heard_from_primary: 0,
            status_since: 0,
            last_commit_broadcast: 0,
            last_retransmit: 0,
            last_state_request: 0,
            last_view_request: 0,
            last_view_change_message: 0,
            last_progress: 0,
            sent_at: BTreeMap::new(),
            deferred: Vec::new(),
            jitter: 0,
            rng,
            last_timestamp: 0,
            now: 0,
            out: Vec::new(),
            cfg,
        };
        replica.jitter = replica.random() % (replica.cfg.primary_timeout / 2 + 1);
        if durable_superblock.is_none() {
            // A fresh member makes view 0 durable before it says anything.
            replica.durable = None;
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
