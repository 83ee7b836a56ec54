//! Several real `iggy-broker` processes forming one replicated cluster on loopback: a ring
//! file naming free ports, one `TestBroker` per member. Dropping the cluster kills every
//! process it started, and only those.

use super::{free_port, http_get, TestBroker};
use iggy_contract::admin::{AdminStatus, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The replication secret every member of a test cluster is given (a test may give one
/// member another, after it in `env`).
pub const SECRET: &str = "test-cluster replication secret";

pub struct TestCluster {
    pub brokers: Vec<TestBroker>,
    pub replication: Vec<SocketAddr>,
    ring_dir: tempfile::TempDir,
    /// The last `standbys` brokers are standbys (in the ring's `standbys`, not its members).
    standbys: usize,
    /// Client ports by position, those of positions not started yet included.
    clients: Vec<SocketAddr>,
}

impl TestCluster {
    /// Starts `members` brokers (each waits for its own /ready before the next starts) with
    /// the extra `IGGY_*` settings in `env`.
    pub fn start(members: usize, env: &[(&str, &str)]) -> Self {
        Self::start_with_standbys(members, 0, env)
    }

    /// `members` voting brokers and `standbys` non-voting ones after them.
    pub fn start_with_standbys(members: usize, standbys: usize, env: &[(&str, &str)]) -> Self {
        let replication: Vec<SocketAddr> = (0..members + standbys).map(|_| free_port()).collect();
        let direct = replication.clone();
        Self::unstarted(standbys).launched(replication, move |_, to| direct[to], |_| env.to_vec())
    }

    fn unstarted(standbys: usize) -> Self {
        Self {
            brokers: Vec::new(),
            replication: Vec::new(),
            ring_dir: tempfile::tempdir().expect("temp dir"),
            standbys,
            clients: Vec::new(),
        }
    }

    /// `members` brokers, with ports set aside for `capacity` in all: positions a later ring
    /// adds are started with [`TestCluster::add_broker`].
    pub fn start_growable(members: usize, capacity: usize, env: &[(&str, &str)]) -> Self {
        let replication: Vec<SocketAddr> = (0..capacity).map(|_| free_port()).collect();
        let mut cluster = Self::start(members, env);
        // `start` picked its own ports for the first `members`; keep them, add the rest.
        cluster
            .replication
            .extend_from_slice(&replication[members..]);
        cluster
            .clients
            .extend((members..capacity).map(|_| free_port()));
        cluster
    }

    /// ring.json of `epoch` with positions `0..members` voting and the next `standbys` not.
    pub fn ring_for(&self, epoch: u32, members: usize, standbys: usize) -> String {
        let entry = |i: usize| {
            serde_json::json!({
                "id": i,
                "position": i,
                "address": self.replication[i].to_string(),
                "client_address": self.clients[i].to_string(),
            })
        };
        serde_json::json!({
            "cluster_id": "test-cluster",
            "epoch": epoch,
            "members": (0..members).map(entry).collect::<Vec<_>>(),
            "standbys": (members..members + standbys).map(entry).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Hands `ring` to member `member` as its sidecar does (`POST /admin/ring`).
    pub fn post_ring(&self, member: usize, ring: &str) -> (u16, String) {
        super::http_post(self.brokers[member].http, "/admin/ring", ring).expect("post ring")
    }

    /// Starts the broker at the next position with `ring` as its ring file (a pod the
    /// operator adds for a grown ring).
    pub fn add_broker(&mut self, ring: &str, env: &[(&str, &str)]) -> usize {
        let position = self.brokers.len();
        let file = self.ring_dir.path().join(format!("ring-{position}.json"));
        std::fs::write(&file, ring).expect("write ring.json");
        let file = file.display().to_string();
        let member = position.to_string();
        let address = self.replication[position].to_string();
        let mut settings: Vec<(&str, &str)> = vec![
            ("IGGY_CLUSTER_RING_FILE", &file),
            ("IGGY_CLUSTER_POSITION", &member),
            ("IGGY_REPLICATION_ADDRESS", &address),
            ("IGGY_REPLICATION_SECRET", SECRET),
        ];
        settings.extend_from_slice(env);
        let broker = TestBroker::start_on(self.clients[position], &settings);
        self.brokers.push(broker);
        position
    }

    /// Waits until every member in `members` reports `epoch` (and, when given, `role`).
    pub fn wait_epoch(&self, members: &[usize], epoch: u32, role: Option<Role>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let statuses: Vec<Option<AdminStatus>> =
                members.iter().map(|&m| self.status(m)).collect();
            let done = statuses.iter().all(|s| {
                s.as_ref()
                    .is_some_and(|s| s.epoch == epoch && role.is_none_or(|r| s.role == r))
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members {members:?} did not reach epoch {epoch} ({role:?}): {statuses:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like `start`, but member `i` reaches member `j` at `reach(i, j)` (a fault proxy's
    /// link): each member gets a ring file of its own, alike but for the addresses.
    pub fn start_reaching(
        replication: Vec<SocketAddr>,
        reach: impl Fn(usize, usize) -> SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_each(replication, reach, |_| env.to_vec())
    }

    /// `members` brokers reaching each other directly, each with settings of its own
    /// (`env_of(member)`).
    pub fn start_configured<'a>(
        members: usize,
        env_of: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
    ) -> Self {
        let replication: Vec<SocketAddr> = (0..members).map(|_| free_port()).collect();
        let direct = replication.clone();
        Self::start_each(replication, move |_, to| direct[to], env_of)
    }

    /// Like `start_reaching`, with settings of each member's own (`env_of(member)`).
    pub fn start_each<'a>(
        replication: Vec<SocketAddr>,
        reach: impl Fn(usize, usize) -> SocketAddr,
        env_of: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
    ) -> Self {
        Self::unstarted(0).launched(replication, reach, env_of)
    }

    fn launched<'a>(
        mut self,
        replication: Vec<SocketAddr>,
        reach: impl Fn(usize, usize) -> SocketAddr,
        env_of: impl Fn(usize) -> Vec<(&'a str, &'a str)>,
    ) -> Self {
        let members = replication.len();
        let voters = members - self.standbys;
        let ring_dir = &self.ring_dir;
        let clients: Vec<SocketAddr> = (0..members).map(|_| free_port()).collect();
        self.clients = clients.clone();
        let ring_files: Vec<String> = (0..members)
            .map(|me| {
                let entry = |i: usize| {
                    serde_json::json!({
                        "id": i,
                        "position": i,
                        "address": if i == me { replication[i] } else { reach(me, i) }.to_string(),
                        "client_address": clients[i].to_string(),
                    })
                };
                let ring = serde_json::json!({
                    "cluster_id": "test-cluster",
                    "epoch": 0,
                    "members": (0..voters).map(entry).collect::<Vec<_>>(),
                    "standbys": (voters..members).map(entry).collect::<Vec<_>>(),
                });
                let file = ring_dir.path().join(format!("ring-{me}.json"));
                std::fs::write(&file, ring.to_string()).expect("write ring.json");
                file.display().to_string()
            })
            .collect();
        let brokers = (0..members)
            .map(|i| {
                let member = i.to_string();
                let address = replication[i].to_string();
                // Member 0 is named by its id, the others by their position, as the
                // operator's pods are (both ways must find the same member).
                let whom = if i == 0 {
                    "IGGY_CLUSTER_MEMBER_ID"
                } else {
                    "IGGY_CLUSTER_POSITION"
                };
                let mut settings: Vec<(&str, &str)> = vec![
                    ("IGGY_CLUSTER_RING_FILE", &ring_files[i]),
                    (whom, &member),
                    ("IGGY_REPLICATION_ADDRESS", &address),
                    ("IGGY_REPLICATION_SECRET", SECRET),
                ];
                settings.extend(env_of(i));
                TestBroker::start_on(clients[i], &settings)
            })
            .collect();
        self.brokers = brokers;
        self.replication = replication;
        self
    }

    /// Marks every member's ring file formed (`bootstrapped`), as the operator marks its ring
    /// once a quorum ran it: what a member restarted from now on reads.
    pub fn mark_formed(&self) {
        for member in 0..self.brokers.len() {
            let mut ring: serde_json::Value =
                serde_json::from_str(&self.ring_json(member)).expect("ring file is JSON");
            ring["bootstrapped"] = serde_json::json!(true);
            let file = self.ring_dir.path().join(format!("ring-{member}.json"));
            std::fs::write(file, ring.to_string()).expect("write ring.json");
        }
    }

    /// The ring.json member `member` was started with.
    pub fn ring_json(&self, member: usize) -> String {
        std::fs::read_to_string(self.ring_dir.path().join(format!("ring-{member}.json")))
            .expect("ring file")
    }

    pub fn status(&self, member: usize) -> Option<AdminStatus> {
        let (code, body) = http_get(self.brokers[member].http, "/admin/status").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The member that reports itself primary among `alive`, waiting up to `within`.
    pub fn primary(&self, alive: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for &member in alive {
                if self
                    .status(member)
                    .is_some_and(|s| s.role == Role::Primary && s.caught_up)
                {
                    return member;
                }
            }
            assert!(Instant::now() < deadline, "no primary among {alive:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The commit every member in `members` must reach to have applied everything `reference`
    /// has. Statuses are published on the replicas' 10 ms ticks, so a client can hold an
    /// acknowledgement before even the primary's status shows that commit: this lets a few
    /// ticks pass, then takes the highest commit any of them reports. (Later commits —
    /// background operations such as retention passes — need not wait.)
    pub fn commit_to_catch_up(&self, members: &[usize], reference: usize) -> u64 {
        std::thread::sleep(Duration::from_millis(50));
        std::iter::once(reference)
            .chain(members.iter().copied())
            .filter_map(|m| self.status(m).map(|s| s.commit))
            .max()
            .unwrap_or(u64::MAX)
    }

    /// Whether every member in `members` is caught up and has applied `target`.
    pub fn caught_up(&self, members: &[usize], target: u64) -> bool {
        members.iter().all(|&m| {
            self.status(m)
                .is_some_and(|s| s.caught_up && s.commit >= target)
        })
    }

    /// Waits until every member in `members` has applied everything `reference` has.
    pub fn wait_caught_up(&self, members: &[usize], reference: usize, within: Duration) {
        let target = self.commit_to_catch_up(members, reference);
        let deadline = Instant::now() + within;
        loop {
            if self.caught_up(members, target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members {members:?} did not catch up with {reference} (commit {target}): {:?}",
                members.iter().map(|&m| self.status(m)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
