//! What the replica thread publishes after every step, for `/admin/status`, `/ready` and
//! `GetClusterMetadata`: read by connections and HTTP handlers, written by the driver alone.

use crate::replication::machine::BrokerMachine;
use crate::replication::peer_auth::ClusterSecret;
use crate::replication::space;
use crate::replication::transport::SpaceReport;
use iggy_contract::admin::{AdminStatus, Role};
use iggy_contract::{Epoch, MemberId};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// Its replication address (`host:port`), where state sync and repairs fetch data.
    pub replication: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// The configuration the core runs: its epoch, members and standbys.
    pub membership: Option<vsr::Membership>,
    pub status: Option<Status>,
    pub view: u32,
    pub primary: bool,
    pub commit_min: u64,
    pub commit_max: u64,
    pub op: u64,
    pub syncing: bool,
    /// Its durable log reaches back to the start of its epoch (see `caught_up`).
    pub holds_epoch_start: bool,
}

pub struct ClusterStatus {
    pub member_id: MemberId,
    pub position: ReplicaId,
    /// The ring's `cluster_id`.
    pub cluster_name: String,
    /// The newest ring this replica knows (it started with, or was handed): who is where.
    layout: RwLock<Arc<Layout>>,
    latest: Mutex<Snapshot>,
    started: Instant,
    /// Per position: when a message from that replica last arrived (ms since `started`, plus
    /// one; 0 = never).
    heard: Vec<AtomicU64>,
    /// Per position: 0 while this replica's connection to it is down, else the wire revision
    /// the peer named (`transport::WIRE_REVISION`) plus one.
    connected: Vec<AtomicU32>,
    /// Per position, on the primary: ops committed that the replica has not acknowledged.
    lag: Vec<AtomicU64>,
    /// Prepare round trips (primary: sent → acknowledged), as a histogram.
    round_trips: RoundTrips,
    /// What this replica proves to the peers it fetches from (repairs of rotted data).
    secret: Option<ClusterSecret>,
    /// Replication connections ended for who the other side is, in either direction
    /// (`TransportError::is_refusal`).
    refused: AtomicU64,
    /// Replication connections admitted by this replica's port: [plain, TLS].
    accepted: [AtomicU64; 2],
    /// Per position: the peer's last report of its room, and when it arrived (`space.rs`).
    space: Mutex<Vec<Option<(SpaceReport, Instant)>>>,
    /// What this replica's open WAL file may still take from its filesystem
    /// (`Journal::unallocated`).
    wal_unallocated: Arc<AtomicU64>,
}

/// Who is at which position: the members and standbys of the newest ring this replica knows.
/// Which of them vote is the core's business ([`Snapshot::membership`]): a ring handed over is
/// a proposal until its epoch commits.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Members then standbys, by position.
    pub members: Vec<MemberInfo>,
    /// That ring (what `POST /admin/ring` compares against).
    pub ring: Option<iggy_contract::Ring>,
}

/// Most committed ops a replica may not have applied yet and still answer reads: a busy backup
/// applies a few ops behind its commit; more than a pipeline's worth means it is catching up.
pub const READ_LAG_MAX: u64 = 64;

/// Upper bounds of the prepare round-trip buckets, in seconds.
const ROUND_TRIP_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

#[derive(Default)]
struct RoundTrips {
    buckets: [AtomicU64; ROUND_TRIP_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl ClusterStatus {
    pub fn new(
        member_id: MemberId,
        position: ReplicaId,
        epoch: Epoch,
        cluster_name: String,
        members: Vec<MemberInfo>,
    ) -> Self {
        // Every position a ring can name, so that a grown ring finds its counters.
        let positions = iggy_contract::ring::MAX_MEMBERS + 1;
        let latest = Snapshot {
            membership: Some(vsr::Membership {
                epoch,
                replica_count: members.len() as u8,
                standby_count: 0,
                start: 0,
            }),
            ..Snapshot::default()
        };
        Self {
            member_id,
            position,
            cluster_name,
            heard: (0..positions).map(|_| AtomicU64::new(0)).collect(),
            connected: (0..positions).map(|_| AtomicU32::new(0)).collect(),
            lag: (0..positions).map(|_| AtomicU64::new(0)).collect(),
            round_trips: RoundTrips::default(),
            layout: RwLock::new(Arc::new(Layout {
                members,
                ring: None,
            })),
            latest: Mutex::new(latest),
            started: Instant::now(),
            secret: None,
            refused: AtomicU64::new(0),
            accepted: [AtomicU64::new(0), AtomicU64::new(0)],
            space: Mutex::new(vec![None; positions]),
            wal_unallocated: Arc::default(),
        }
    }

    /// Where this replica's journal publishes what its open WAL file may still allocate.
    pub fn with_wal_unallocated(mut self, unallocated: Arc<AtomicU64>) -> Self {
        self.wal_unallocated = unallocated;
        self
    }

    /// This replica's room on its data filesystem (`data`), as its peers are told it: free
    /// bytes less what its open WAL file may still take. `None` when the filesystem cannot be
    /// asked.
    pub fn own_room(&self, data: &std::path::Path) -> Option<u64> {
        let unallocated = self.wal_unallocated.load(Ordering::Relaxed);
        space::room(data, unallocated)
    }

    /// A peer reported its room (`transport::SPACE`). A report naming this replica's own
    /// position is ignored.
    pub fn record_space(&self, report: SpaceReport) {
        if report.position == self.position {
            return;
        }
        let mut space = self.space.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = space.get_mut(usize::from(report.position)) {
            *slot = Some((report, Instant::now()));
        }
    }

    /// The peers' reports that arrived within [`space::REPORT_FRESH`].
    pub fn peer_space(&self) -> Vec<SpaceReport> {
        let space = self.space.lock().unwrap_or_else(|e| e.into_inner());
        space
            .iter()
            .flatten()
            .filter(|(_, at)| at.elapsed() <= space::REPORT_FRESH)
            .map(|(report, _)| *report)
            .collect()
    }

    /// Counts a replication connection refused: another wire version, not a replica, no proof
    /// of the secret (either side's), or no free handshake slot.
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection this replica's port admitted (its peer proved the secret), by
    /// whether it came over TLS: a ring meant to be encrypted shows a member that is not.
    pub fn count_accepted(&self, tls: bool) {
        self.accepted[usize::from(tls)].fetch_add(1, Ordering::Relaxed);
    }

    /// The secret this replica proves to its peers.
    pub fn with_secret(mut self, secret: ClusterSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    pub fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_ref()
    }

    /// The ring this replica runs.
    pub fn with_ring(self, ring: iggy_contract::Ring) -> Self {
        {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            latest.membership = Some(vsr::Membership {
                epoch: ring.epoch,
                replica_count: ring.members.len() as u8,
                standby_count: ring.standbys.len() as u8,
                start: 0,
            });
        }
        let members = self.layout().members.clone();
        self.set_layout(Layout {
            members,
            ring: Some(ring),
        });
        self
    }

    /// Who is where, as the newest ring says.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A newer ring was handed over (the replica thread checked it).
    pub fn set_layout(&self, layout: Layout) {
        *self.layout.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(layout);
    }

    /// The epoch the core runs.
    pub fn epoch(&self) -> Epoch {
        self.membership().epoch
    }

    /// How many replicas vote in the running epoch (the rest, by position, are standbys).
    pub fn voters(&self) -> usize {
        usize::from(self.membership().replica_count)
    }

    /// The configuration the core runs.
    pub fn membership(&self) -> vsr::Membership {
        self.snapshot().membership.unwrap_or(vsr::Membership::UNSET)
    }

    /// This replica is a standby: it follows the log without voting.
    pub fn is_standby(&self) -> bool {
        self.membership().role_of(self.position) == vsr::Role::Standby
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

    /// The transport's connection to the replica at `position` came up (the wire revision the
    /// peer reads) or went down (`None`).
    pub fn set_connected(&self, position: ReplicaId, revision: Option<u16>) {
        if let Some(connected) = self.connected.get(usize::from(position)) {
            connected.store(revision.map_or(0, |r| u32::from(r) + 1), Ordering::Relaxed);
        }
    }

    /// The wire revision the replica at `position` reads, while connected to it.
    fn revision_of(&self, position: ReplicaId) -> Option<u16> {
        let connected = self.connected.get(usize::from(position))?;
        let stored = connected.load(Ordering::Relaxed);
        (stored > 0).then(|| (stored - 1) as u16)
    }

    /// Whether the ring may be sent what needs wire revision `revision`: every peer connected
    /// now reads it, and so many do that, with this replica, they form a majority of the
    /// ring's members. A member down meanwhile is not known to read it; a rolling upgrade
    /// brings members back on the new build, and until a majority runs it nothing that needs
    /// it could commit anyway.
    pub fn ring_reads(&self, revision: u16) -> bool {
        let voters = self.voters();
        let mut reading = usize::from(usize::from(self.position) < voters);
        for position in 0..self.layout().members.len() {
            if position == usize::from(self.position) {
                continue;
            }
            match self.revision_of(position as ReplicaId) {
                Some(r) if r < revision => return false,
                // Standbys must read it too, but do not make a majority.
                Some(_) => reading += usize::from(position < voters),
                None => {}
            }
        }
        reading > voters / 2
    }

    /// Whether the replica at `position` (another one) is reachable: connected to, or heard
    /// from lately (a backup hears only from the primary, but keeps a connection to every
    /// peer).
    pub fn reachable(&self, position: ReplicaId) -> bool {
        let connected = self
            .connected
            .get(usize::from(position))
            .is_some_and(|c| c.load(Ordering::Relaxed) > 0);
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

    /// A prepare sent `elapsed` ago was acknowledged.
    pub fn record_round_trip(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = ROUND_TRIP_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(ROUND_TRIP_BUCKETS.len());
        self.round_trips.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.round_trips
            .sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The replication series of `/metrics`, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.snapshot();
        let _ = writeln!(
            out,
            "# HELP iggy_replication_view Current view.\n# TYPE iggy_replication_view gauge\n\
             iggy_replication_view {}\n\
             # HELP iggy_replication_commit Highest op known committed.\n\
             # TYPE iggy_replication_commit gauge\niggy_replication_commit {}\n\
             # HELP iggy_replication_primary 1 on the primary.\n\
             # TYPE iggy_replication_primary gauge\niggy_replication_primary {}",
            s.view,
            s.commit_max,
            u8::from(s.primary)
        );
        let _ = writeln!(
            out,
            "# HELP iggy_replication_commit_lag Committed ops a member has not acknowledged (reported by the primary).\n\
             # TYPE iggy_replication_commit_lag gauge"
        );
        let layout = self.layout();
        for (member, lag) in layout.members.iter().zip(&self.lag) {
            let _ = writeln!(
                out,
                "iggy_replication_commit_lag{{member=\"{}\"}} {}",
                member.id,
                lag.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP iggy_replication_peer_room_bytes Room on a peer's data filesystem (free bytes less what its open WAL file may still allocate), as it last reported (fresh reports only).\n\
             # TYPE iggy_replication_peer_room_bytes gauge"
        );
        for report in self.peer_space() {
            if let Some(member) = layout.members.get(usize::from(report.position)) {
                let _ = writeln!(
                    out,
                    "iggy_replication_peer_room_bytes{{member=\"{}\"}} {}",
                    member.id, report.room
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP iggy_replication_prepare_round_trip_seconds From sending a prepare to a backup's acknowledgement.\n\
             # TYPE iggy_replication_prepare_round_trip_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in ROUND_TRIP_BUCKETS.iter().enumerate() {
            cumulative += self.round_trips.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "iggy_replication_prepare_round_trip_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.round_trips.buckets[ROUND_TRIP_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "iggy_replication_prepare_round_trip_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             iggy_replication_prepare_round_trip_seconds_sum {}\n\
             iggy_replication_prepare_round_trip_seconds_count {cumulative}",
            self.round_trips.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "# HELP iggy_replication_refused_total Replication connections refused, accepted or \
             made: another wire version, not a replica, no proof of the cluster's replication \
             secret, or too many connections proving themselves at once.\n# TYPE iggy_replication_refused_total counter\n\
             iggy_replication_refused_total {}",
            self.refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP iggy_replication_accepted_total Replication connections this member's port \
             admitted after the peer proved the secret, by whether the peer opened them over \
             TLS (its replication.tls).\n# TYPE iggy_replication_accepted_total counter\n\
             iggy_replication_accepted_total{{tls=\"false\"}} {}\n\
             iggy_replication_accepted_total{{tls=\"true\"}} {}",
            self.accepted[0].load(Ordering::Relaxed),
            self.accepted[1].load(Ordering::Relaxed)
        );
    }

    pub fn publish(&self, replica: &Replica<BrokerMachine>) {
        let primary = replica.is_primary();
        let membership = replica.membership();
        let positions =
            usize::from(membership.replica_count) + usize::from(membership.standby_count);
        for (position, lag) in self.lag.iter().enumerate().take(positions.max(1)) {
            let behind = if !primary || position == usize::from(self.position) {
                0
            } else {
                let acked = replica.acked().get(&(position as ReplicaId)).copied();
                replica.commit_max().saturating_sub(acked.unwrap_or(0))
            };
            lag.store(behind, Ordering::Relaxed);
        }
        let snapshot = Snapshot {
            membership: Some(replica.membership()),
            status: Some(replica.status()),
            view: replica.view(),
            primary: replica.is_primary(),
            commit_min: replica.commit_min(),
            commit_max: replica.commit_max(),
            op: replica.log_tail(),
            syncing: replica.is_syncing(),
            holds_epoch_start: replica.holds_epoch_start(),
        };
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// Whether this replica may answer clients from its own state: normal in its view (so
    /// neither rebuilding, nor in a view change, nor retired), not installing a synced
    /// checkpoint, and within `READ_LAG_MAX` ops of the commit it knows — a member rebuilt on
    /// an empty disk is normal long before it applied the history its peers gave it.
    pub fn serves_reads(&self) -> bool {
        let s = self.snapshot();
        s.status == Some(Status::Normal)
            && !s.syncing
            && s.commit_max.saturating_sub(s.commit_min) <= READ_LAG_MAX
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position of the primary of the current view, when the replica is normal in it.
    pub fn primary(&self) -> Option<ReplicaId> {
        let snapshot = self.snapshot();
        (snapshot.status == Some(Status::Normal)).then(|| {
            let voters = snapshot.membership.map_or(1, |m| m.replica_count.max(1));
            vsr::routing::primary_of(snapshot.view, voters)
        })
    }

    /// Normal, not syncing, every op it knows committed applied, and the start of its epoch
    /// durable: until then the members of the previous epoch may hold the only durable copies
    /// of that history, so the operator keeps them (scale-down waits on this).
    pub fn caught_up(&self) -> bool {
        let s = self.snapshot();
        s.status == Some(Status::Normal)
            && !s.syncing
            && s.holds_epoch_start
            && s.commit_min >= s.commit_max
    }

    pub fn admin(&self, ready: bool) -> AdminStatus {
        let s = self.snapshot();
        let role = match s.status {
            Some(Status::Retired) => Role::Retired,
            Some(Status::Normal) if self.is_standby() => Role::Standby,
            Some(Status::Normal) if s.primary => Role::Primary,
            Some(Status::Normal) => Role::Backup,
            _ => Role::Recovering,
        };
        AdminStatus {
            member_id: Some(self.member_id),
            epoch: s.membership.map_or(0, |m| m.epoch),
            view: s.view,
            role,
            commit: s.commit_max,
            op: s.op,
            lag: s.commit_max.saturating_sub(s.commit_min),
            caught_up: ready && self.caught_up(),
            // The broker fills it in: it knows the data directory and the reserve.
            disk_pressure: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: MemberId) -> MemberInfo {
        MemberInfo {
            id,
            host: "127.0.0.1".into(),
            client_port: 8090,
            replication: "127.0.0.1:8091".into(),
        }
    }

    fn report(position: ReplicaId, room: u64) -> SpaceReport {
        SpaceReport {
            position,
            applied: 7,
            room,
        }
    }

    #[test]
    fn the_ring_reads_a_revision_when_every_peer_connected_does_and_they_are_a_majority() {
        let members = vec![member(10), member(11), member(12)];
        let status = ClusterStatus::new(10, 0, 0, "test".into(), members);
        assert!(!status.ring_reads(2), "alone: no majority");
        status.set_connected(1, Some(2));
        assert!(status.ring_reads(2), "itself and one peer of three");
        assert!(!status.ring_reads(3));
        status.set_connected(2, Some(1));
        assert!(
            !status.ring_reads(2),
            "a peer connected on an older build holds it back"
        );
        assert!(status.reachable(2));
        status.set_connected(2, None);
        assert!(status.ring_reads(2), "a peer down is not asked");
        status.set_connected(1, None);
        assert!(!status.ring_reads(2));
        assert!(!status.reachable(1));
        status.set_connected(1, Some(0));
        assert!(
            status.ring_reads(0) && !status.ring_reads(1),
            "revision 0 is a connected peer that names none"
        );
    }

    #[test]
    fn peers_reports_of_their_room_are_kept_by_position_and_shown_by_member() {
        let members = vec![member(10), member(11), member(12)];
        let status = ClusterStatus::new(10, 0, 0, "test".into(), members);
        assert!(status.peer_space().is_empty());
        status.record_space(report(2, 500));
        status.record_space(report(1, 300));
        status.record_space(report(2, 400));
        // Its own position is not a peer.
        status.record_space(report(0, 1));
        let mut reports = status.peer_space();
        reports.sort_by_key(|r| r.position);
        assert_eq!(
            reports,
            vec![report(1, 300), report(2, 400)],
            "the latest per peer"
        );

        let mut metrics = String::new();
        status.render_metrics(&mut metrics);
        assert!(metrics.contains("iggy_replication_peer_room_bytes{member=\"11\"} 300"));
        assert!(metrics.contains("iggy_replication_peer_room_bytes{member=\"12\"} 400"));
        assert!(!metrics.contains("iggy_replication_peer_room_bytes{member=\"10\"}"));
    }
}
