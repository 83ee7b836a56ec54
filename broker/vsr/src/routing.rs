//! Where a replica forwards a prepare: a pure function, so correctness never depends on it.
//!
//! * `Star`: the primary sends to every backup; backups forward nothing.
//! * `Ring`: each replica forwards to its ring successor (`self + 1 mod N`) unless that is the
//!   primary, so a prepare travels once around the ring. Forwarding happens before the local
//!   write (cut-through).
//!
//! PrepareOk always goes straight to the primary of the receiver's view, and the primary's
//! retransmission on timeout goes directly to every replica still missing, so a dead hop costs
//! one timeout, never liveness.

use crate::{ReplicaId, View};

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
    fn star_backups_forward_nothing() {
        assert!(forward_targets(Route::Star, 5, 0, 3).is_empty());
        assert_eq!(forward_targets(Route::Ring, 5, 0, 3), vec![4]);
        assert!(
            forward_targets(Route::Ring, 5, 0, 4).is_empty(),
            "the ring closes at the primary"
        );
    }
}
