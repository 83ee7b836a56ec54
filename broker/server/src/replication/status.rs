//! What the replica thread publishes after every step, for `/admin/status`, `/ready` and
//! `GetClusterMetadata`: read by connections and HTTP handlers, written by the driver alone.

use crate::replication::machine::BrokerMachine;
use iggy_contract::admin::{AdminStatus, Role};
use iggy_contract::{Epoch, MemberId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vsr::{Replica, ReplicaId, Status};

/// A peer heard from within this long counts as reachable.
const REACHABLE_WITHIN: Duration = Duration::from_secs(1);

/// A member as clients see it (`GetClusterMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: MemberId,
    pub host: String,
    pub client_port: u16,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub status: Option<Status>,
    pub view: u32,
    pub primary: bool,
    pub commit_min: u64,
    pub commit_max: u64,
    pub op: u64,
    pub syncing: bool,
}

pub struct ClusterStatus {
    pub member_id: MemberId,
    pub position: ReplicaId,
    pub epoch: Epoch,
    pub replica_count: u8,
    /// The ring's `cluster_id`.
    pub cluster_name: String,
    /// Every member, by position.
    pub members: Vec<MemberInfo>,
    latest: Mutex<Snapshot>,
    started: Instant,
    /// Per position: when a message from that replica last arrived (ms since `started`, plus
    /// one; 0 = never).
    heard: Vec<AtomicU64>,
    /// Per position: whether this replica's connection to it is up.
    connected: Vec<AtomicBool>,
}

impl ClusterStatus {
    pub fn new(
        member_id: MemberId,
        position: ReplicaId,
        epoch: Epoch,
        cluster_name: String,
        members: Vec<MemberInfo>,
    ) -> Self {
        Self {
            member_id,
            position,
            epoch,
            replica_count: members.len() as u8,
            cluster_name,
            heard: members.iter().map(|_| AtomicU64::new(0)).collect(),
            connected: members.iter().map(|_| AtomicBool::new(false)).collect(),
            members,
            latest: Mutex::new(Snapshot::default()),
            started: Instant::now(),
        }
    }

    /// A message from the replica at `position` arrived.
    pub fn heard_from(&self, position: ReplicaId) {
        if let Some(heard) = self.heard.get(usize::from(position)) {
            heard.store(
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
        }
    }

    /// The transport's connection to the replica at `position` came up or went down.
    pub fn set_connected(&self, position: ReplicaId, up: bool) {
        if let Some(connected) = self.connected.get(usize::from(position)) {
            connected.store(up, Ordering::Relaxed);
        }
    }

    /// Whether the replica at `position` (another one) is reachable: connected to, or heard
    /// from lately (a backup hears only from the primary, but keeps a connection to every
    /// peer).
    pub fn reachable(&self, position: ReplicaId) -> bool {
        let connected = self
            .connected
            .get(usize::from(position))
            .is_some_and(|c| c.load(Ordering::Relaxed));
        connected || self.heard_lately(position)
    }

    fn heard_lately(&self, position: ReplicaId) -> bool {
        let heard = self
            .heard
            .get(usize::from(position))
            .map_or(0, |h| h.load(Ordering::Relaxed));
        heard > 0
            && self.started.elapsed().as_millis() as u64 + 1 - heard
                <= REACHABLE_WITHIN.as_millis() as u64
    }

    pub fn publish(&self, replica: &Replica<BrokerMachine>) {
        let snapshot = Snapshot {
            status: Some(replica.status()),
            view: replica.view(),
            primary: replica.is_primary(),
            commit_min: replica.commit_min(),
            commit_max: replica.commit_max(),
            op: replica.log_tail(),
            syncing: replica.is_syncing(),
        };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position of the primary of the current view, when the replica is normal in it.
    pub fn primary(&self) -> Option<ReplicaId> {
        let snapshot = self.snapshot();
        (snapshot.status == Some(Status::Normal))
            .then(|| vsr::routing::primary_of(snapshot.view, self.replica_count))
    }

    /// Normal, not syncing, and every op it knows committed is applied.
    pub fn caught_up(&self) -> bool {
        let s = self.snapshot();
        s.status == Some(Status::Normal) && !s.syncing && s.commit_min >= s.commit_max
    }

    pub fn admin(&self, ready: bool) -> AdminStatus {
        let s = self.snapshot();
        let role = match s.status {
            Some(Status::Normal) if s.primary => Role::Primary,
            Some(Status::Normal) => Role::Backup,
            _ => Role::Recovering,
        };
        AdminStatus {
            member_id: Some(self.member_id),
            epoch: self.epoch,
            view: s.view,
            role,
            commit: s.commit_max,
            op: s.op,
            caught_up: ready && self.caught_up(),
        }
    }
}
