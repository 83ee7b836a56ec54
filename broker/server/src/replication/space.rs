//! Room on every member's disk, as the primary sees it.
//!
//! The primary refuses a send that would leave a disk with less than
//! `replication.min_free_space` (`machine.rs`, `admit`). Its own disk it can ask; the others'
//! it learns from the members themselves: every replica sends each peer a [`SpaceReport`] —
//! its room ([`room`]: free bytes less what its open WAL file may still allocate) and the last
//! op it had applied when it looked — every [`REPORT_INTERVAL`] (`transport::SPACE`). A
//! report is a little old when it arrives, so the primary subtracts what the ops it applied
//! since the reported one appended ([`AppendedBytes`]): that is what the member will have
//! written by the time it catches up to the primary. What the primary has prepared and not
//! yet applied, it adds to every member's need, its own included.
//!
//! Why not only the primary's own disk: the members hold the same data and fill alike only
//! when their disks are alike. A local volume larger than its claim, a disk something else
//! writes to, or only a different number of spare WAL files (64 MiB each) runs out on one
//! backup first, and a replica that cannot apply a committed op must stop (its state would
//! leave the others'). Refusing at the primary for the fullest member keeps them all running.

use crate::replication::transport::SpaceReport;
use crate::state::stats;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;
use vsr::{Op, ReplicaId};

/// How often a replica tells its peers how much room it has. What a member writes between
/// two reports the primary charges from its own log, except the first pages of a WAL file a
/// rotation creates in that time; so the reserve should exceed what arrives in this long.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// A report older than this no longer counts: its member stopped reporting (it is down, cut
/// off, or left the ring), and a member that takes no prepares writes nothing either.
pub const REPORT_FRESH: Duration = Duration::from_secs(2);
/// Ops whose appended bytes are remembered. A member reporting an op older than the window is
/// catching up by far; it is charged the window and, for the ops before it, the window's
/// average per op ([`AppendedBytes::since`]).
const WINDOW: usize = 4096;

/// A replica's room on the filesystem holding `data`: its free bytes less `unallocated`, what
/// its open WAL file may still take (`Journal::unallocated`). `None` when the filesystem cannot
/// be asked.
pub fn room(data: &Path, unallocated: u64) -> Option<u64> {
    stats::try_disk_space(data).map(|(free, _)| free.saturating_sub(unallocated))
}

/// What the ops this replica applied appended, by op, for the last [`WINDOW`] appends.
#[derive(Debug, Default)]
pub struct AppendedBytes {
    /// Every appended byte applied since this replica started.
    total: u64,
    /// `(op, total before it)`, in apply order (increasing ops).
    window: VecDeque<(Op, u64)>,
    /// The last op to leave the window: appends up to it happened and are no longer known.
    forgotten: Option<Op>,
}

impl AppendedBytes {
    /// The op `op`, an append of `bytes`, was applied.
    pub fn note(&mut self, op: Op, bytes: u64) {
        if self.window.len() == WINDOW {
            self.forgotten = self.window.pop_front().map(|(op, _)| op);
        }
        self.window.push_back((op, self.total));
        self.total = self.total.saturating_add(bytes);
    }

    /// What the ops applied after `op` appended. Nothing is known from before this replica
    /// started. For an `op` before the window, the ops between it and the window are
    /// estimated at the window's average per op: a member that far behind still has to write
    /// them (by applying them, or by state sync of what they wrote), and charging the window
    /// alone made a lagging member look roomier the further behind it was.
    pub fn since(&self, op: Op) -> u64 {
        let later = self.window.partition_point(|(noted, _)| *noted <= op);
        let Some((_, before)) = self.window.get(later) else {
            return 0;
        };
        let known = self.total - before;
        match self.forgotten {
            // Every op in the window is after `forgotten`, so `op` is before all of them too.
            Some(forgotten) if op < forgotten => {
                known.saturating_add(self.estimate(forgotten - op))
            }
            _ => known,
        }
    }

    /// What `ops` ops append at the window's average per op.
    fn estimate(&self, ops: u64) -> u64 {
        let (Some((first, before)), Some((last, _))) = (self.window.front(), self.window.back())
        else {
            return 0;
        };
        let span = u128::from(last - first + 1);
        let bytes = u128::from(self.total - before);
        u64::try_from(bytes * u128::from(ops) / span).unwrap_or(u64::MAX)
    }
}

/// The member with the least room once everything pending is written: its position (`None`
/// for this replica) and the bytes it would have left. `own_room` is this replica's room
/// ([`room`]), `reports` its peers' fresh reports, `pending` the bytes prepared and not
/// applied here plus the request being admitted.
pub fn tightest(
    own_room: Option<u64>,
    reports: &[SpaceReport],
    appended: &AppendedBytes,
    pending: u64,
) -> Option<(Option<ReplicaId>, u64)> {
    let own = own_room.map(|room| (None, room));
    let peers = reports.iter().map(|report| {
        let written_since = appended.since(report.applied);
        (
            Some(report.position),
            report.room.saturating_sub(written_since),
        )
    });
    own.into_iter()
        .chain(peers)
        .map(|(who, room)| (who, room.saturating_sub(pending)))
        .min_by_key(|(_, left)| *left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(position: ReplicaId, applied: Op, room: u64) -> SpaceReport {
        SpaceReport {
            position,
            applied,
            room,
        }
    }

    #[test]
    fn appended_bytes_since_an_op_count_only_later_ops() {
        let mut appended = AppendedBytes::default();
        assert_eq!(appended.since(0), 0, "nothing applied yet");
        appended.note(5, 100);
        appended.note(6, 10);
        appended.note(9, 1);
        assert_eq!(appended.since(4), 111);
        assert_eq!(appended.since(5), 11);
        assert_eq!(
            appended.since(7),
            1,
            "ops between appends count from the next append"
        );
        assert_eq!(appended.since(9), 0);
        assert_eq!(appended.since(100), 0, "a report ahead of this replica");
    }

    #[test]
    fn an_op_older_than_the_window_is_charged_the_window_and_its_average_for_the_ops_before_it() {
        let mut appended = AppendedBytes::default();
        // Appends of 10 bytes at every other op: ops 2, 4, ..., 2 * (WINDOW + 10).
        for n in 1..=(WINDOW as u64 + 10) {
            appended.note(2 * n, 10);
        }
        let window = WINDOW as u64 * 10;
        // The window holds ops 22 ..= 2 * (WINDOW + 10); op 20 was the last forgotten. Its
        // average is 5 bytes per op.
        assert_eq!(
            appended.since(21),
            window,
            "inside the window: what it holds"
        );
        assert_eq!(appended.since(20), window, "the op just forgotten");
        assert_eq!(appended.since(10), window + 10 * 5);
        assert_eq!(appended.since(0), window + 20 * 5);
        assert_eq!(appended.since(23), window - 10);
    }

    #[test]
    fn before_anything_was_forgotten_only_what_was_applied_here_is_charged() {
        let mut appended = AppendedBytes::default();
        appended.note(100, 7);
        appended.note(101, 7);
        assert_eq!(
            appended.since(3),
            14,
            "ops before this replica started are not guessed at"
        );
    }

    #[test]
    fn the_tightest_member_is_the_one_with_least_room_after_what_it_has_yet_to_write() {
        let mut appended = AppendedBytes::default();
        appended.note(10, 300);
        appended.note(11, 300);
        // Member 1 reported more room than member 2, but before two appends it has yet to
        // write; member 2 reported after them.
        let reports = [report(1, 9, 1000), report(2, 11, 500)];
        assert_eq!(
            tightest(Some(2000), &reports, &appended, 50),
            Some((Some(1), 1000 - 600 - 50))
        );
        assert_eq!(
            tightest(Some(300), &reports, &appended, 50),
            Some((None, 250)),
            "this replica's own disk counts the same way"
        );
        assert_eq!(
            tightest(None, &reports[1..], &appended, 600),
            Some((Some(2), 0)),
            "a member without room for what is pending has none left"
        );
        assert_eq!(tightest(None, &[], &appended, 0), None, "nothing known");
    }
}
