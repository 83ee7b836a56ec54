//! The broker's admin HTTP API, which its sidecar uses. It listens on the broker's HTTP port and
//! answers only on loopback (or with the admin token, once that exists): the sidecar shares the
//! pod's network namespace, nothing else needs it.

use crate::ring::{Epoch, MemberId};
use serde::{Deserialize, Serialize};

/// `GET` → [`AdminStatus`].
pub const STATUS_PATH: &str = "/admin/status";
/// `POST` a [`crate::Ring`] → [`RingUpdate`].
pub const RING_PATH: &str = "/admin/ring";
/// `POST` (no body) → [`StepDown`]: the primary hands its view to the next replica, as the
/// operator asks before restarting it; 409 with [`AdminError`] from anyone else.
pub const STEP_DOWN_PATH: &str = "/admin/step-down";
/// Liveness: the process serves HTTP.
pub const HEALTH_PATH: &str = "/health";
/// Readiness: normal status and caught up.
pub const READY_PATH: &str = "/ready";

/// What part a broker plays in its ring right now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Backup,
    /// Receives prepares and catches up without voting (a joining member).
    Standby,
    /// Starting, repairing or syncing: not yet able to serve.
    Recovering,
    /// Left the ring: an epoch without it committed. It answers replicas still behind, and
    /// its pod may go.
    Retired,
}

impl Role {
    /// The value of the `iggy.rs/role` label for this role.
    pub fn label(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Standby => "standby",
            Role::Recovering => "recovering",
            Role::Retired => "retired",
        }
    }
}

/// `GET /admin/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AdminStatus {
    /// This broker's id in its ring; `None` for a single node started without a ring.
    pub member_id: Option<MemberId>,
    pub epoch: Epoch,
    pub view: u32,
    pub role: Role,
    /// The highest op this broker knows committed, and the highest it holds.
    pub commit: u64,
    pub op: u64,
    /// Committed ops this broker has not applied yet: how far behind the commit it is. (Not in
    /// the sidecar's pod annotation, which carries only what changes rarely.)
    #[serde(default)]
    pub lag: u64,
    /// Normal status and within the catch-up bound of the primary's commit: what readiness and
    /// the `iggy.rs/replica-ready` gate report.
    pub caught_up: bool,
    /// Its data filesystem has less than twice `replication.min_free_space` of room (free bytes
    /// less what its open WAL file may still allocate): a primary refuses sends once some
    /// member is below the reserve (docs/replication.md, "A full disk"). The operator shows
    /// it as the cluster's `DiskPressure` condition. Always false on a single node.
    #[serde(default)]
    pub disk_pressure: bool,
}

impl AdminStatus {
    /// A broker started without a ring: no replication log, so it is the primary of epoch 0,
    /// view 0, and caught up exactly when it is ready.
    pub fn single_node(ready: bool) -> Self {
        Self {
            member_id: None,
            epoch: 0,
            view: 0,
            role: Role::Primary,
            commit: 0,
            op: 0,
            lag: 0,
            caught_up: ready,
            disk_pressure: false,
        }
    }
}

/// The answer to `POST /admin/ring`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RingUpdate {
    /// The epoch the broker now runs in (the posted one once committed, else the current one).
    pub epoch: Epoch,
    /// True when the posted ring is already in force; false while the change is pending.
    pub applied: bool,
}

/// The answer to `POST /admin/step-down` (202 Accepted): the view this primary is handing on.
/// The hand-over itself is a view change; `GET /admin/status` shows when it is done (the role
/// is no longer `primary`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StepDown {
    pub view: u32,
}

/// The body of an admin API error answer (4xx/5xx).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AdminError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_and_writes_the_documented_json() {
        let status = AdminStatus {
            member_id: Some(2),
            epoch: 3,
            view: 7,
            role: Role::Backup,
            commit: 40,
            op: 41,
            lag: 2,
            caught_up: true,
            disk_pressure: true,
        };
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"member_id": 2, "epoch": 3, "view": 7, "role": "backup",
                "commit": 40, "op": 41, "lag": 2, "caught_up": true, "disk_pressure": true})
        );
        // A broker from before `lag` and `disk_pressure` existed still parses.
        let older = serde_json::json!({"member_id": 2, "epoch": 3, "view": 7, "role": "retired",
            "commit": 40, "op": 41, "caught_up": false});
        let parsed = serde_json::from_value::<AdminStatus>(older).expect("parses");
        assert_eq!(
            (parsed.lag, parsed.role, parsed.disk_pressure),
            (0, Role::Retired, false)
        );
        assert_eq!(
            serde_json::from_value::<AdminStatus>(json).expect("parses"),
            status
        );
        assert_eq!(Role::Primary.label(), "primary");
    }
}
