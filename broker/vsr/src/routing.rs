//! Where a replica forwards a prepare: a pure function, so correctness never depends on it.
//!
//! * `Star`: the primary sends to every backup; backups forward nothing.
//! * `Ring`: each replica forwards to its ring successor (`self + 1 mod N`) unless that is the
//!   primary, so a prepare travels once around the ring. Forwarding happens before the local
//!   write (cut-through).
//!
//! PrepareOk always goes straight to the primary of the receiver's view, and the primary's
//! retransmission on timeout goes directly to every replica still missing, so a dead hop costs
//! one timeout, never liveness. On the ring the primary also routes *around* replicas it
//! suspects (`forward_targets_avoiding`), so a dead hop costs that timeout once, not on every
//! prepare.

use crate::{ReplicaId, View};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Star,
    Ring,
}

pub fn primary_of(view: View, replica_count: u8) -> ReplicaId {
    (view % replica_count as u32) as ReplicaId
}

/// Replicas `me` sends a fresh prepare of `view` to.
pub fn forward_targets(
    route: Route,
    replica_count: u8,
    view: View,
    me: ReplicaId,
) -> Vec<ReplicaId> {
    let primary = primary_of(view, replica_count);
    match route {
        Route::Star if me == primary => (0..replica_count).filter(|r| *r != me).collect(),
        Route::Star => Vec::new(),
        Route::Ring => {
            let next = (me + 1) % replica_count;
            if next == primary || next == me {
                Vec::new()
            } else {
                vec![next]
            }
        }
    }
}

/// Like [`forward_targets`], for the primary of a ring that suspects some replicas dead (it had
/// to retransmit to them and they have not acknowledged since): it also sends each fresh
/// prepare to the successor of every suspect, so the replicas behind a dead hop receive it
/// without waiting for a retransmission. A suspect that is alive after all makes its successor
/// receive the prepare twice, which a backup ignores; correctness never depends on the route.
pub fn forward_targets_avoiding(
    route: Route,
    replica_count: u8,
    view: View,
    me: ReplicaId,
    suspects: &BTreeSet<ReplicaId>,
) -> Vec<ReplicaId> {
    let mut targets = forward_targets(route, replica_count, view, me);
    let primary = primary_of(view, replica_count);
    if route == Route::Ring && me == primary {
        for suspect in suspects {
            let next = (suspect + 1) % replica_count;
            if next != primary && !targets.contains(&next) {
                targets.push(next);
            }
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows forwards from the primary and returns who received the prepare.
    fn reached(route: Route, n: u8, view: View) -> Vec<ReplicaId> {
        let mut seen = vec![primary_of(view, n)];
        let mut frontier = seen.clone();
        while let Some(r) = frontier.pop() {
            for t in forward_targets(route, n, view, r) {
                assert!(!seen.contains(&t), "{route:?} n={n} sends twice to {t}");
                seen.push(t);
                frontier.push(t);
            }
        }
        seen.sort();
        seen
    }

    #[test]
    fn every_route_reaches_every_replica_exactly_once() {
        for route in [Route::Star, Route::Ring] {
            for n in 1..=6u8 {
                for view in 0..12 {
                    assert_eq!(reached(route, n, view), (0..n).collect::<Vec<_>>());
                }
            }
        }
    }

    #[test]
    fn the_primary_routes_around_suspects_on_the_ring() {
        let suspects: BTreeSet<ReplicaId> = [2].into_iter().collect();
        // View 0 of five: 0 → 1 → 2 (dead) → 3 → 4; the primary also feeds 3.
        assert_eq!(
            forward_targets_avoiding(Route::Ring, 5, 0, 0, &suspects),
            vec![1, 3]
        );
        // Two dead in a row: the successor of each, the primary excluded.
        let both: BTreeSet<ReplicaId> = [3, 4].into_iter().collect();
        assert_eq!(
            forward_targets_avoiding(Route::Ring, 5, 0, 0, &both),
            vec![1, 4]
        );
        // Backups and the star are unchanged.
        assert_eq!(
            forward_targets_avoiding(Route::Ring, 5, 0, 1, &suspects),
            vec![2]
        );
        assert_eq!(
            forward_targets_avoiding(Route::Star, 3, 0, 0, &suspects),
            vec![1, 2]
        );
    }

    #[test]
    fn star_backups_forward_nothing() {
        assert!(forward_targets(Route::Star, 5, 0, 3).is_empty());
        assert_eq!(forward_targets(Route::Ring, 5, 0, 3), vec![4]);
        assert!(
            forward_targets(Route::Ring, 5, 0, 4).is_empty(),
            "the ring closes at the primary"
        );
    }
}
