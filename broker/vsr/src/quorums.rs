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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_design_brief() {
        let qr: Vec<usize> = (1..=6).map(replication).collect();
        let qv: Vec<usize> = (1..=6).map(view_change).collect();
        assert_eq!(qr, vec![1, 2, 2, 2, 3, 3]);
        assert_eq!(qv, vec![1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn every_view_change_quorum_meets_every_replication_quorum() {
        for n in 1..=16u8 {
            assert!(replication(n) + view_change(n) > n as usize, "n = {n}");
            assert!(replication(n) <= n as usize && view_change(n) <= n as usize);
        }
    }
}
