//! Storage: WAL writes and their header ring, the superblock (view, log view, commit,
//! checkpoint), atomic log installs, checkpoint writes, and what becomes durable when a write
//! completes — which is what acknowledgements may promise.

use super::{Replica, Status};
use crate::message::Message;
use crate::prepare::Prepare;
use crate::state_machine::StateMachine;
use crate::step::Output;
use crate::superblock::Superblock;
use crate::Op;

#[derive(Debug, Clone)]
pub(super) enum PendingWrite {
    Wal {
        op: Op,
        checksum: u128,
    },
    Superblock(Superblock),
    Log {
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(Op, u128)>,
    },
    Checkpoint {
        op: Op,
    },
}

impl<S: StateMachine> Replica<S> {
    pub(super) fn io(&mut self) -> u64 {
        self.next_io += 1;
        // Unique across restarts of this replica object family: the sequence of superblocks.
        (self.superblock_sequence << 32) | self.next_io
    }

    pub(super) fn superblock(&mut self) -> Superblock {
        self.superblock_sequence += 1;
        Superblock {
            sequence: self.superblock_sequence,
            view: self.view,
            log_view: self.log_view,
            // Recovery re-applies the WAL up to this commit, so it may not pass what the WAL
            // holds of our log — nor, while a sync's checkpoint is not yet durable, the
            // checkpoint recovery would start from (the WAL then holds another history).
            commit: match self.syncing {
                Some(_) => self.checkpoint_durable,
                None => self.commit_max.min(self.op_durable),
            },
            checkpoint: self.checkpoint_named,
            membership: self.membership(),
            start_checksum: self.epoch_start_checksum,
            checksum: 0,
        }
        .sealed()
    }

    pub(super) fn write_superblock(&mut self) {
        // One superblock may not overtake a log install still in flight: it would name the
        // installed log view while the WAL still holds the previous log, and a crash (or a
        // DoViewChange taken from the durable state) would pair that log view with the wrong
        // log (seed 9011539). The write waits and is issued, with the then-current view, when
        // the install lands.
        if self
            .writes
            .values()
            .any(|w| matches!(w, PendingWrite::Log { .. }))
        {
            self.superblock_queued = true;
            return;
        }
        let superblock = self.superblock();
        let io = self.io();
        self.writes.insert(io, PendingWrite::Superblock(superblock));
        self.out.push(Output::WriteSuperblock { io, superblock });
    }

    /// The highest op the WAL may hold: one more would overwrite a slot whose op is not yet
    /// covered by a durable checkpoint.
    pub(super) fn wal_limit(&self) -> Op {
        self.checkpoint_durable + self.cfg.wal_slots
    }

    /// Issues the WAL writes of every op of the log not yet written that fits in the WAL.
    /// Ops beyond it wait in memory (unacknowledged) for the next durable checkpoint.
    pub(super) fn write_pending(&mut self) {
        self.wal_issued = self.wal_issued.max(self.log.base());
        let end = self.log.tail().min(self.wal_limit());
        while self.wal_issued < end {
            let op = self.wal_issued + 1;
            let Some(prepare) = self.log.get(op).cloned() else {
                return;
            };
            let io = self.io();
            self.writes.insert(
                io,
                PendingWrite::Wal {
                    op,
                    checksum: prepare.checksum(),
                },
            );
            let slot = self.cfg.slot(op);
            self.out.push(Output::WriteWal { io, slot, prepare });
            self.wal_issued = op;
        }
    }

    pub(super) fn write_log(&mut self, truncate_after: Op) {
        let superblock = self.superblock();
        let io = self.io();
        let limit = self.wal_limit();
        let entries: Vec<(u64, Prepare)> = self
            .log
            .after(truncate_after)
            .iter()
            .take_while(|p| p.op() <= limit)
            .map(|p| (self.cfg.slot(p.op()), p.clone()))
            .collect();
        self.wal_issued = entries.last().map_or(truncate_after, |(_, p)| p.op());
        self.writes.insert(
            io,
            PendingWrite::Log {
                superblock,
                truncate_after,
                entries: entries
                    .iter()
                    .map(|(_, p)| (p.op(), p.checksum()))
                    .collect(),
            },
        );
        self.out.push(Output::WriteLog {
            io,
            superblock,
            truncate_after,
            entries,
        });
    }

    pub(super) fn on_write_done(&mut self, io: u64) {
        let Some(write) = self.writes.remove(&io) else {
            return;
        };
        match write {
            PendingWrite::Wal { op, checksum } => {
                if self
                    .durable_ops
                    .get(&op)
                    .is_none_or(|(_, written_by)| *written_by < io)
                {
                    self.durable_ops.insert(op, (checksum, io));
                }
            }
            PendingWrite::Superblock(sb) => self.superblock_durable(sb),
            PendingWrite::Checkpoint { op } => {
                // Its state is on disk: superblocks may name it from now on.
                if op > self.checkpoint_named {
                    self.checkpoint_named = op;
                    self.write_superblock();
                } else if op == self.checkpoint_durable {
                    // The superblock already names it: a sync rewrote a checkpoint that had
                    // rotted on our disk, and it is durable again now.
                    self.checkpoint_became_durable();
                }
            }
            PendingWrite::Log {
                superblock,
                truncate_after,
                entries,
            } => {
                self.durable_ops
                    .retain(|op, (_, written_by)| *op <= truncate_after || *written_by > io);
                for (op, checksum) in entries {
                    if self
                        .durable_ops
                        .get(&op)
                        .is_none_or(|(_, written_by)| *written_by < io)
                    {
                        self.durable_ops.insert(op, (checksum, io));
                    }
                }
                self.superblock_durable(superblock);
                if self.superblock_queued {
                    self.superblock_queued = false;
                    self.write_superblock();
                }
            }
        }
        self.advance_op_durable();
        self.flush_deferred();
    }

    pub(super) fn superblock_durable(&mut self, sb: Superblock) {
        if self.durable.is_none_or(|d| sb.viewstamp() > d) {
            self.durable = Some(sb.viewstamp());
        }
        if sb.checkpoint > self.checkpoint_durable {
            self.checkpoint_durable = sb.checkpoint;
            self.checkpoint_became_durable();
        }
    }

    /// A superblock naming a newer checkpoint landed: recovery starts there now, so the log
    /// below it is dropped, its WAL slots may be reused, and a sync that installed it is done.
    pub(super) fn checkpoint_became_durable(&mut self) {
        let op = self.checkpoint_durable;
        if self.checkpoints.get(&op).map(|c| c.anchor.checksum()) == self.log.checksum_at(op) {
            self.log.trim_below(op);
        }
        let base = self.log.base();
        self.checkpoints = self.checkpoints.split_off(&base);
        self.durable_ops = self.durable_ops.split_off(&(base + 1));
        if self.syncing.is_some_and(|synced| synced <= op) {
            self.syncing = None;
        }
        if let Some((_, next)) = self.synced_epoch.filter(|(at, _)| *at <= op) {
            // A synced checkpoint of a newer epoch is durable: enter that epoch, waiting
            // (recovering) to learn its view.
            self.synced_epoch = None;
            if next.epoch > self.cfg.epoch {
                if self.status != Status::Retired {
                    self.status = Status::Recovering;
                }
                self.enter_epoch(next);
            }
        }
        self.resume_start_view();
        self.write_pending();
        self.prepare_queued();
    }

    /// Asks again for the StartView a missing checkpoint interrupted, once that checkpoint is
    /// durable.
    pub(super) fn resume_start_view(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        if let Some(view) = self.sync_view.take() {
            self.last_view_request = 0;
            self.request_start_view(view);
        }
    }

    pub(super) fn advance_op_durable(&mut self) {
        let before = self.op_durable;
        // Ops up to the durable checkpoint are in its state; the anchor counts as durable (see
        // `syncing` for the one case where it is not yet, and acks wait).
        let mut op = self
            .op_durable
            .max(self.checkpoint_durable)
            .max(self.log.base())
            .min(self.log.tail());
        while let Some(prepare) = self.log.get(op + 1) {
            if self
                .durable_ops
                .get(&(op + 1))
                .map(|(checksum, _)| *checksum)
                != Some(prepare.checksum())
            {
                break;
            }
            op += 1;
        }
        self.op_durable = op;
        if self.repair_until.is_some_and(|until| op >= until) {
            self.faulty = false;
            self.repair_until = None;
            self.repair = None;
        }
        if op > before || self.status == Status::Normal {
            self.acknowledge();
        }
    }

    /// Reports `op_durable` to the primary (or counts it, as the primary).
    pub(super) fn acknowledge(&mut self) {
        // An ack, the primary's own included, promises the view too: not before it is durable.
        if self.status != Status::Normal
            || self.op_durable == 0
            || !self.view_durable()
            || self.syncing.is_some()
        {
            return;
        }
        let op = self.op_durable;
        if self.is_primary() {
            self.on_ack(self.cfg.replica, op);
        } else {
            let Some(checksum) = self.log.checksum_at(op) else {
                return;
            };
            let primary = self.primary();
            self.send(
                primary,
                Message::PrepareOk {
                    view: self.view,
                    op,
                    checksum,
                    replica: self.cfg.replica,
                },
            );
        }
    }
}
