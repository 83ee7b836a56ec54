//! What the replica thread publishes after every step, for `/admin/status`, `/ready` and
//! `GetClusterMetadata`: read by connections and HTTP handlers, written by the driver alone.

use crate::replication::machine::BrokerMachine;
use iggy_contract::admin::{AdminStatus, Role};
use iggy_contract::{Epoch, MemberId};
use std::sync::Mutex;
use vsr::{Replica, ReplicaId, Status};

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
    pub epoch: Epoch,
    pub replica_count: u8,
    latest: Mutex<Snapshot>,
}

impl ClusterStatus {
    pub fn new(member_id: MemberId, epoch: Epoch, replica_count: u8) -> Self {
        Self {
            member_id,
            epoch,
            replica_count,
            latest: Mutex::new(Snapshot::default()),
        }
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
