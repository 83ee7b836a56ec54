//! Coverage counters: a green run must show that the faults it was meant to exercise happened.

use std::collections::BTreeMap;

/// What happened, for coverage: a green run must show that faults actually occurred.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub counters: BTreeMap<&'static str, u64>,
}

impl Coverage {
    /// Every counter a campaign of 1,000 swarm seeds is expected to make non-zero.
    pub const EXPECTED: [&'static str; 42] = [
        "abdications",
        "bodies_adopted",
        "cached_replies",
        "checkpoint_read_faults",
        "checkpoints",
        "client_retries",
        "converged_runs",
        "converged_with_reconfiguration",
        "converged_with_standbys",
        "crashes",
        "damaged_votes",
        "deaf_replicas",
        "duplicate_ops_skipped",
        "epochs_committed",
        "evictions_seen_by_clients",
        "faulty_recoveries",
        "members_retired",
        "messages_dropped",
        "messages_duplicated",
        "misdirected_writes",
        "nack_truncations",
        "ops_transferred",
        "ops_truncated",
        "partitions",
        "partitions_asymmetric",
        "paths_clogged",
        "prepares_repaired",
        "read_faults",
        "restarts",
        "retransmits",
        "session_evictions",
        "state_syncs",
        "state_transfers",
        "step_downs",
        "superblock_copies_rotted",
        "superblock_writes_torn",
        "torn_writes",
        "truncations",
        "view_change_bodies",
        "view_changes_started",
        "views_installed",
        "writes_lost_at_crash",
    ];

    /// Expected counters still at zero.
    pub fn gaps(&self) -> Vec<&'static str> {
        Self::EXPECTED
            .into_iter()
            .filter(|name| self.get(name) == 0)
            .collect()
    }

    pub(crate) fn add(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
    pub fn merge(&mut self, other: &Coverage) {
        for (k, v) in &other.counters {
            *self.counters.entry(k).or_default() += v;
        }
    }
}
