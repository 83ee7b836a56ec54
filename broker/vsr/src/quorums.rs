//! Quorum sizes, in one small place (flexible quorums as in TigerBeetle's `quorums()`):
//! replication `Qr = min(3, ceil(N/2))` (2 when N = 2), view change `Qv = N - Qr + 1`
//! (2 when N = 2), so `Qr + Qv > N`: every view-change quorum meets every replication quorum.

/// Replicas (the primary included) that must hold a prepare before it commits.
pub fn replication(replica_count: u8) -> usize {
    match replica_count {
        0 => 0,
        2 => 2,
        n => (n as usize).div_ceil(2).min(3),
    }
}

/// Replicas that must take part in a view change.
pub fn view_change(replica_count: u8) -> usize {
    match replica_count {
        0 => 0,
        2 => 2,
        n => n as usize - replication(n) + 1,
    }
}

/// Replicas whose DoViewChanges must prove they never acknowledged a prepare before a new
/// primary may drop it: `N - Qr + 1`, so that at most `Qr - 1` replicas can have acknowledged
/// it and it cannot have committed.
pub fn nack(replica_count: u8) -> usize {
    (replica_count as usize + 1).saturating_sub(replication(replica_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_design_brief() {
        let qr: Vec<usize> = (1..=6).map(replication).collect();
        let qv: Vec<usize> = (1..=6).map(view_change).collect();
        assert_eq!(qr, vec![1, 2, 2, 2, 3, 3]);
        assert_eq!(qv, vec![1, 2, 2, 3, 3, 4]);
        let qnack: Vec<usize> = (1..=6).map(nack).collect();
        assert_eq!(qnack, vec![1, 1, 2, 3, 3, 4]);
    }

    #[test]
    fn a_nack_quorum_leaves_too_few_replicas_to_have_committed() {
        for n in 1..=16u8 {
            assert!(n as usize - nack(n) < replication(n), "n = {n}");
            assert!(nack(n) <= n as usize, "n = {n}");
        }
    }

    #[test]
    fn every_view_change_quorum_meets_every_replication_quorum() {
        for n in 1..=16u8 {
            assert!(replication(n) + view_change(n) > n as usize, "n = {n}");
            assert!(replication(n) <= n as usize && view_change(n) <= n as usize);
        }
    }
}
