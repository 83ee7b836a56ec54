//! Fault injection: crashes and restarts, deaf replicas, clogged paths, and the hooks scenario
//! tests use to place faults by hand.

use super::disk::{Write, SUPERBLOCK_COPIES};
use super::Simulation;
use crate::checker::Violation;
use vsr::{Input, Node, Op};

impl<S: crate::machine::SimMachine> Simulation<S> {
    pub(super) fn inject_faults(&mut self) -> Result<(), Violation> {
        let n = self.params.replicas;
        self.inject_deafness();
        self.inject_clogs();
        self.inject_step_downs()?;
        if self.network.cut.is_empty() {
            if n > 1 && self.rng.chance(self.params.partition_onset_ppm) {
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                let asymmetric = self.params.asymmetric_partitions && self.rng.chance(500_000);
                for a in 0..n {
                    for b in 0..n {
                        if side[a as usize] && !side[b as usize] {
                            self.network.cut.insert((a, b));
                            if !asymmetric {
                                self.network.cut.insert((b, a));
                            }
                        }
                    }
                }
                if !self.network.cut.is_empty() {
                    self.coverage.add(
                        if asymmetric {
                            "partitions_asymmetric"
                        } else {
                            "partitions"
                        },
                        1,
                    );
                    self.log(|| "partition".into());
                }
            }
        } else if self.rng.chance(self.params.partition_heal_ppm) {
            self.network.cut.clear();
            self.log(|| "partition healed".into());
        }
        for r in 0..n {
            if self.permanently_down.contains(&r) {
                continue;
            }
            self.crash_or_restart(r, false)?;
        }
        // Standbys crash and restart too, drawn from their own generator so that seeds
        // without standbys replay as before.
        for r in n..self.params.nodes() {
            self.crash_or_restart(r, true)?;
        }
        Ok(())
    }

    /// Crashes replica `r` if it is up, or restarts it if it is down, at the configured
    /// chances; a standby's draw comes from the standbys' generator.
    fn crash_or_restart(&mut self, r: u8, standby: bool) -> Result<(), Violation> {
        let up = self.replicas[r as usize].is_some();
        let ppm = if up {
            self.params.crash_ppm
        } else {
            self.params.restart_ppm
        };
        let rng = if standby {
            &mut self.standby_rng
        } else {
            &mut self.rng
        };
        match (rng.chance(ppm), up) {
            (false, _) => Ok(()),
            (true, true) => self.crash(r),
            (true, false) => self.restart(r),
        }
    }

    pub fn crash(&mut self, r: u8) -> Result<(), Violation> {
        self.replicas[r as usize] = None;
        self.disks[r as usize].written.clear();
        let pending = std::mem::take(&mut self.disks[r as usize].pending);
        for write in pending {
            if !self.rng.chance(self.params.torn_write_ppm) {
                self.disks[r as usize]
                    .land(write.seq, write.write)
                    .map_err(|e| format!("replica {r}: {e}"))?;
                continue;
            }
            self.coverage.add("writes_lost_at_crash", 1);
            // World 4: half of the interrupted superblock writes reach some of their copies.
            let superblock_write = matches!(write.write, Write::Superblock(_) | Write::Log { .. });
            if self.params.superblock_faults && superblock_write && self.rng.chance(500_000) {
                let copies = 1 + self.rng.below(SUPERBLOCK_COPIES as u64 - 1) as usize;
                self.disks[r as usize].land_superblock_write(write.seq, write.write, copies);
                self.coverage.add("superblock_writes_torn", 1);
                continue;
            }
            // Half of the interrupted WAL writes leave their prepare without its header: a torn
            // write recovery must recognise and cut, not mistake for corruption.
            if let Write::Wal { prepare, slot } = write.write {
                if self.rng.chance(500_000) {
                    self.disks[r as usize]
                        .land_wal(write.seq, prepare, slot, false)
                        .map_err(|e| format!("replica {r}: {e}"))?;
                    self.coverage.add("torn_writes", 1);
                }
            }
        }
        self.coverage.add("crashes", 1);
        self.trace(&[1, r as u64]);
        self.log(|| format!("replica {r} crashed"));
        Ok(())
    }

    pub(super) fn restart(&mut self, r: u8) -> Result<(), Violation> {
        if self.corruptible.contains(&r) {
            let slots: Vec<u64> = self.disks[r as usize].wal.keys().copied().collect();
            for slot in slots {
                if self.rng.chance(self.params.read_fault_ppm) {
                    self.disks[r as usize].rot(slot);
                    self.coverage.add("read_faults", 1);
                }
            }
        }
        if self.corruptible.contains(&r) && self.params.superblock_faults {
            for copy in 0..SUPERBLOCK_COPIES {
                if self.rng.chance(self.params.read_fault_ppm)
                    && self.disks[r as usize].copy_may_rot(copy)
                {
                    self.disks[r as usize].rot_copy(copy);
                    self.coverage.add("superblock_copies_rotted", 1);
                }
            }
        }
        self.disks[r as usize].adopt_newest_copy();
        if self.corruptible.contains(&r)
            && self.params.checkpoint_fault_ppm > 0
            && self.rng.chance(self.params.checkpoint_fault_ppm)
            && self.disks[r as usize].rot_checkpoint()
        {
            self.coverage.add("checkpoint_read_faults", 1);
        }
        let image = self.disks[r as usize].image();
        let mut replica = Self::open_replica(&self.world, self.seed, &self.params, r, image);
        let outputs = replica.take_outputs();
        // What recovery re-applied must be the committed chain.
        self.checker
            .recovered(r, replica.log_base(), replica.commit_min(), |op| {
                replica.checksum_at(op)
            })?;
        if replica.is_faulty() {
            self.coverage.add("faulty_recoveries", 1);
        }
        self.replicas[r as usize] = Some(replica);
        for output in outputs {
            self.handle_output(r, output)?;
        }
        self.coverage.add("restarts", 1);
        self.trace(&[2, r as u64]);
        self.log(|| format!("replica {r} restarted"));
        Ok(())
    }

    /// Deafness draws from its own generator, so seeds without it (most) replay the worlds
    /// they had before it existed.
    pub(super) fn inject_deafness(&mut self) {
        let n = self.params.replicas;
        if n < 2 || self.params.deaf_onset_ppm == 0 {
            return;
        }
        match self.network.deaf {
            None if self.deaf_rng.chance(self.params.deaf_onset_ppm) => {
                // Half the time the primary of the newest view: the case only abdication cures.
                let primary = self.newest_primary();
                let target = match primary {
                    Some(p) if self.deaf_rng.chance(500_000) => p,
                    _ => self.deaf_rng.below(n as u64) as u8,
                };
                self.network.deaf = Some(target);
                self.coverage.add("deaf_replicas", 1);
                self.log(|| format!("replica {target} deaf"));
            }
            Some(r) if self.deaf_rng.chance(self.params.deaf_heal_ppm) => {
                self.network.deaf = None;
                self.log(|| format!("replica {r} hears again"));
            }
            _ => {}
        }
    }

    /// World 5: now and then one directed path between two replicas clogs for a while. Unlike
    /// a partition it loses nothing: what it held arrives late and in a burst, which is what a
    /// stalled TCP connection or a paused process looks like from the other side.
    pub(super) fn inject_clogs(&mut self) {
        let n = self.params.replicas;
        let tick = self.tick;
        self.network.clogged.retain(|_, until| *until > tick);
        if n < 2 || self.params.clog_onset_ppm == 0 {
            return;
        }
        if self.clog_rng.chance(self.params.clog_onset_ppm) {
            let from = self.clog_rng.below(n as u64) as u8;
            let to = (from + 1 + self.clog_rng.below(n as u64 - 1) as u8) % n;
            let ticks = 1 + self.clog_rng.exponential(self.params.clog_ticks_mean);
            self.network
                .clogged
                .insert((Node::Replica(from), Node::Replica(to)), tick + ticks);
            self.coverage.add("paths_clogged", 1);
            self.log(|| format!("path {from} -> {to} clogged for {ticks} ticks"));
        }
    }

    /// Now and then an operator asks the primary of the newest view to step down, as the
    /// operator does before restarting it in a rolling restart — in the middle of whatever
    /// else the world is doing to the cluster.
    pub(super) fn inject_step_downs(&mut self) -> Result<(), Violation> {
        if self.params.step_down_ppm == 0 || !self.step_down_rng.chance(self.params.step_down_ppm) {
            return Ok(());
        }
        match self.newest_primary() {
            Some(r) => self.step_down(r),
            None => Ok(()),
        }
    }

    /// The replica that is primary of the newest view any replica leads, if one does.
    fn newest_primary(&self) -> Option<u8> {
        self.replicas
            .iter()
            .flatten()
            .filter(|r| r.is_primary())
            .max_by_key(|r| r.view())
            .map(|r| r.replica())
    }

    /// Asks replica `r` to step down (scenario tests; ignored unless it is a primary).
    pub fn step_down(&mut self, r: u8) -> Result<(), Violation> {
        self.log(|| format!("replica {r} asked to step down"));
        self.feed(r, Input::StepDown)
    }

    /// Cuts every link into (and, unless `receive_only`, out of) replica `r` (scenario tests).
    pub fn isolate(&mut self, r: u8, receive_only: bool) {
        for other in 0..self.params.replicas {
            if other != r {
                self.network.cut.insert((other, r));
                if !receive_only {
                    self.network.cut.insert((r, other));
                }
            }
        }
    }

    /// Rots the stored prepare of `op` on a (crashed) replica's disk (scenario tests).
    pub fn rot(&mut self, r: u8, op: Op) {
        let slot = op % self.params.wal_slots();
        self.disks[r as usize].rot(slot);
    }

    pub fn heal(&mut self) {
        self.network.cut.clear();
    }

    /// Restarts every crashed replica (scenario tests).
    pub fn restart_all(&mut self) -> Result<(), Violation> {
        for r in 0..self.params.nodes() {
            if self.replicas[r as usize].is_none() {
                self.restart(r)?;
            }
        }
        Ok(())
    }
}
