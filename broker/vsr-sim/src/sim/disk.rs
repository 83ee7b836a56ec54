//! Simulated storage: superblock copies, checkpoint states and a WAL whose writes land after a
//! delay and, at a crash, land or are lost (torn, misdirected or rotting, as the world allows).

use crate::checker::Violation;
use std::collections::BTreeMap;
use vsr::{Checkpoint, DiskImage, Op, Prepare, Superblock};

pub(super) enum Write {
    /// `slot` is where the prepare lands: its op's slot, unless the write is misdirected.
    Wal {
        prepare: Prepare,
        slot: u64,
    },
    Superblock(Superblock),
    Checkpoint(Box<Checkpoint>),
    Log {
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(u64, Prepare)>,
    },
}

pub(super) struct Pending {
    pub(super) complete_at: u64,
    pub(super) io: u64,
    /// Issue order: storage applies writes to the same place in the order they were issued.
    pub(super) seq: u64,
    pub(super) write: Write,
}

/// Copies of the superblock on each disk (TigerBeetle keeps four or more).
pub(super) const SUPERBLOCK_COPIES: usize = 4;

/// A replica's storage: superblock copies, checkpoint states, and a WAL of `slots` slots,
/// with writes landing after a delay and, at a crash, each pending write either landing or
/// lost (or, in world 4, a superblock write landing on only some of its copies).
pub(super) struct Disk {
    pub(super) slots: u64,
    /// The newest superblock every copy received (or that recovery adopted): what the disk's
    /// own rules (slot reuse, checkpoint garbage) go by.
    pub(super) superblock: Option<(u64, Superblock)>,
    /// Each copy keeps the newest write that reached it.
    pub(super) copies: [Option<(u64, Superblock)>; SUPERBLOCK_COPIES],
    /// Checkpoint states by op; a superblock naming one makes the older ones garbage.
    pub(super) checkpoints: BTreeMap<Op, Checkpoint>,
    /// slot → (write seq, prepare written there).
    pub(super) wal: BTreeMap<u64, (u64, Prepare)>,
    /// The redundant header ring: slot → (write seq, op, checksum of the prepare written).
    pub(super) headers: BTreeMap<u64, (u64, Op, u128)>,
    pub(super) truncations: Vec<(u64, Op)>,
    pub(super) pending: Vec<Pending>,
    pub(super) next_seq: u64,
    /// Copies of the prepare bodies whose WAL writes completed, by op, until the replica's
    /// log adopts them (`Replica::adopt_body`): what the broker's journal hands its driver,
    /// mapped from the WAL file. Lost at a crash, like the broker's.
    pub(super) written: vsr::WrittenBodies,
}

impl Disk {
    pub(super) fn new(slots: u64) -> Self {
        Self {
            slots,
            superblock: None,
            copies: [None; SUPERBLOCK_COPIES],
            checkpoints: BTreeMap::new(),
            wal: BTreeMap::new(),
            headers: BTreeMap::new(),
            truncations: Vec::new(),
            pending: Vec::new(),
            next_seq: 0,
            written: BTreeMap::new(),
        }
    }

    pub(super) fn image(&self) -> DiskImage {
        let superblocks: Vec<Superblock> =
            self.copies.iter().flatten().map(|(_, sb)| *sb).collect();
        let newest = Superblock::newest(&superblocks);
        DiskImage {
            superblocks,
            checkpoint: newest.and_then(|sb| self.checkpoints.get(&sb.checkpoint).cloned()),
            wal: self
                .wal
                .iter()
                .map(|(slot, (_, p))| (*slot, p.clone()))
                .collect(),
            headers: self
                .headers
                .iter()
                .map(|(slot, (_, op, c))| (*slot, (*op, *c)))
                .collect(),
        }
    }

    /// Lands a WAL write: the prepare (in `slot`, which a misdirected write gets wrong), then,
    /// unless the write was torn, the header in its real op's slot. The two are separate
    /// places on disk, each keeping whichever write was issued last.
    ///
    /// Overwriting, in its own slot, an op above the checkpoint the superblock names is a
    /// violation: recovery needs every op after that checkpoint, so the replica reused a slot
    /// too early.
    pub(super) fn land_wal(
        &mut self,
        seq: u64,
        prepare: Prepare,
        slot: u64,
        with_header: bool,
    ) -> Result<(), Violation> {
        let op = prepare.op();
        let checksum = prepare.checksum();
        // A later view change truncated this op: the write must not bring it back.
        let superseded = self
            .truncations
            .iter()
            .any(|(s, after)| *s > seq && op > *after);
        if superseded {
            return Ok(());
        }
        if self.wal.get(&slot).is_none_or(|(s, _)| *s <= seq) {
            let checkpoint = self.superblock.map_or(0, |(_, sb)| sb.checkpoint);
            if let Some((_, old)) = self.wal.get(&slot) {
                // (A misdirected prepare in someone else's slot is no loss when overwritten.)
                let own_slot = |op: Op| op % self.slots == slot;
                if own_slot(op) && own_slot(old.op()) && old.op() < op && old.op() > checkpoint {
                    return Err(format!(
                        "wal: op {op} overwrote op {} in slot {slot}, above the durable checkpoint {checkpoint}",
                        old.op()
                    ));
                }
            }
            self.wal.insert(slot, (seq, prepare));
        }
        let header_slot = op % self.slots;
        if with_header
            && self
                .headers
                .get(&header_slot)
                .is_none_or(|(s, _, _)| *s <= seq)
        {
            self.headers.insert(header_slot, (seq, op, checksum));
        }
        Ok(())
    }

    /// A latent sector error: the stored prepare in `slot` no longer verifies.
    pub(super) fn rot(&mut self, slot: u64) {
        if let Some((_, prepare)) = self.wal.get_mut(&slot) {
            prepare.body = [&prepare.body[..], &[0x5A]].concat().into();
        }
    }

    /// The checkpoint the superblock names no longer verifies. False when it names none.
    pub(super) fn rot_checkpoint(&mut self) -> bool {
        let named = self.superblock.map_or(0, |(_, sb)| sb.checkpoint);
        match self.checkpoints.get_mut(&named) {
            Some(checkpoint) if named > 0 => {
                checkpoint.state.push(0x5A);
                true
            }
            _ => false,
        }
    }

    /// Applies a write; returns the superblock it made durable, if any.
    pub(super) fn land(&mut self, seq: u64, write: Write) -> Result<Option<Superblock>, Violation> {
        match write {
            Write::Wal { prepare, slot } => {
                self.land_wal(seq, prepare, slot, true)?;
                Ok(None)
            }
            Write::Checkpoint(checkpoint) => {
                self.checkpoints.insert(checkpoint.op(), *checkpoint);
                Ok(None)
            }
            Write::Superblock(sb) | Write::Log { superblock: sb, .. } => {
                self.land_superblock_write(seq, write, SUPERBLOCK_COPIES);
                Ok(self.adopt(seq, sb))
            }
        }
    }

    /// A superblock or log-install write, its superblock reaching the first `copies` copies
    /// (fewer than all when a crash interrupts it; a log install's WAL part lands first, as
    /// storage orders it).
    pub(super) fn land_superblock_write(&mut self, seq: u64, write: Write, copies: usize) {
        match write {
            Write::Superblock(sb) => self.land_copies(seq, sb, copies),
            Write::Log {
                superblock,
                truncate_after,
                entries,
            } => {
                self.land_log_entries(seq, truncate_after, entries);
                self.land_copies(seq, superblock, copies);
            }
            Write::Wal { .. } | Write::Checkpoint(_) => {}
        }
    }

    pub(super) fn land_log_entries(
        &mut self,
        seq: u64,
        truncate_after: Op,
        entries: Vec<(u64, Prepare)>,
    ) {
        self.wal
            .retain(|_, (s, p)| p.op() <= truncate_after || *s > seq);
        self.headers
            .retain(|_, (s, op, _)| *op <= truncate_after || *s > seq);
        self.truncations.push((seq, truncate_after));
        for (slot, prepare) in entries {
            self.headers
                .insert(slot, (seq, prepare.op(), prepare.checksum()));
            self.wal.insert(slot, (seq, prepare));
        }
    }

    pub(super) fn land_copies(&mut self, seq: u64, sb: Superblock, copies: usize) {
        for copy in self.copies.iter_mut().take(copies) {
            if copy.is_none_or(|(s, _)| s < seq) {
                *copy = Some((seq, sb));
            }
        }
    }

    pub(super) fn adopt(&mut self, seq: u64, sb: Superblock) -> Option<Superblock> {
        if self.superblock.is_none_or(|(s, _)| s < seq) {
            self.superblock = Some((seq, sb));
            self.checkpoints = self.checkpoints.split_off(&sb.checkpoint);
            Some(sb)
        } else {
            None
        }
    }

    /// Whether copy `i` may rot: one copy at least as new as the newest complete write must
    /// stay readable (the bound superblock copies exist for).
    pub(super) fn copy_may_rot(&self, i: usize) -> bool {
        let complete = self.superblock.map_or(0, |(s, _)| s);
        let intact_newest =
            |j: usize| j != i && self.copies[j].is_some_and(|(s, sb)| s >= complete && sb.verify());
        self.copies[i].is_some_and(|(_, sb)| sb.verify())
            && (0..SUPERBLOCK_COPIES).any(intact_newest)
    }

    pub(super) fn rot_copy(&mut self, i: usize) {
        // Bits flip in what the copy says, not only in its checksum: a recovery that took
        // it anyway would come back in a view and with a commit nobody ever had.
        if let Some((_, sb)) = self.copies[i].as_mut() {
            sb.view ^= 0x40;
            sb.commit ^= 0x40;
        }
    }

    /// At a restart: the newest readable copy is what recovery takes, so from now on it is
    /// the disk's superblock even if its write was torn.
    pub(super) fn adopt_newest_copy(&mut self) {
        let newest = self
            .copies
            .iter()
            .flatten()
            .filter(|(_, sb)| sb.verify())
            .max_by_key(|(s, _)| *s)
            .copied();
        if let Some((seq, sb)) = newest {
            self.adopt(seq, sb);
        }
    }
}
