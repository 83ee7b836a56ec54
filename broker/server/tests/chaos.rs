//! Chaos with the real binaries: three brokers whose replication links run through the fault
//! proxy, an Iggy SDK producer on every member, and a seeded nemesis that kills (`kill -9`),
//! pauses (`SIGSTOP`), cuts off (both ways or one) and restarts members — mostly one at a
//! time, sometimes two at once (no quorum meanwhile), now and then all three killed together —
//! for `CHAOS_SECS` seconds (20 by default). Meanwhile a poller reads through every member and
//! commits its consumer offset after each poll.
//!
//! Then every fault heals and service must resume. The one history checker runs on what each
//! member returns (every acknowledged message present once, one order everywhere, no gaps);
//! everything any poller was served must be in that final log at the offset it was served at
//! (reads see committed state only); every member must hold, for each consumer, the same
//! offset, between its last acknowledged and its last attempted commit; and every member's
//! segment files must be byte-identical — although each member runs with a segment size of
//! its own, so the size in force (the primary's) changes whenever a restarted member leads. Half the
//! seeds tier to a real S3-compatible server (s3s-fs): old messages are then read back from the
//! store, and the tier manifests must be equal on every member. Half replicate over TLS
//! (`replication.tls`), drawn apart from the rest.
//!
//! `CHAOS_SEED` picks the fault schedule (printed at the start; the default is drawn from the
//! clock, so every run tries a new one). Processes do not run deterministically, so a seed
//! repeats the schedule, not the interleaving: a failure may take a few runs of its seed to
//! show again. `make chaos` runs many seeds for longer.

mod common;

use common::cluster::TestCluster;
use common::history::{History, Read};
use common::links::Links;
use common::{
    create_topic, id, message_with_id, padded, read_all, unpadded, TestBroker, ROOT_PASSWORD,
    ROOT_USER,
};
use iggy::prelude::*;
use iggy_contract::admin::Role;
use iggy_tiering::testing::S3Server;
use iggy_tiering::Manifest;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMBERS: usize = 3;
const BATCH: usize = 10;
/// Longer than any failover or restart the nemesis causes: a send still waiting after this is
/// counted as failed (it may still commit, which the checker allows once).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// SplitMix64: a seeded schedule without a dependency.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9`, then a restart from what its disk holds.
    Kill,
    /// The same, aimed at whoever is primary.
    KillPrimary,
    /// SIGSTOP, then SIGCONT: a stalled process whose peers must not wait for it, and which
    /// wakes up believing what it believed before (a primary, perhaps).
    Pause,
    /// Every replication link to and from the member cut, then healed.
    Isolate,
    /// Only the member's outgoing links cut: it hears its peers, they do not hear it.
    Mute,
    /// Only its incoming links cut: its peers hear it, it does not hear them.
    Deafen,
    /// All members killed at once and restarted: recovery from the disks alone.
    CrashAll,
}

impl Fault {
    fn pick(schedule: &mut Schedule) -> Self {
        match schedule.below(20) {
            0..=3 => Fault::Kill,
            4..=6 => Fault::KillPrimary,
            7..=9 => Fault::Pause,
            10..=13 => Fault::Isolate,
            14..=15 => Fault::Mute,
            16..=18 => Fault::Deafen,
            _ => Fault::CrashAll,
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A connected, logged-in client, or `None` if the member does not answer in time.
async fn connect(tcp: SocketAddr) -> Option<IggyClient> {
    let client = IggyClient::builder()
        .with_tcp()
        .with_server_address(tcp.to_string())
        .build()
        .ok()?;
    let login = async {
        client.connect().await.ok()?;
        client.login_user(ROOT_USER, ROOT_PASSWORD).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(5), login)
        .await
        .ok()??;
    Some(client)
}

/// Padding for one message of a batch (`common::padded`), so that each batch's prepare body is
/// large enough to be mapped from the WAL once applied. The history keeps payloads without it
/// (memory) and reads strip it (`common::unpadded`).
const LARGE_PAD: usize = 17 << 10;
/// Segment sizes members are configured with (each its own, drawn per seed).
const SEGMENT_SIZES: [&str; 3] = ["65536", "262144", "1048576"];

const BUCKET: &str = "chaos";

/// Tiering to `server`: uploads as soon as a segment is sealed, local copies evicted 200 ms
/// after their upload (once the member's checkpoints let it).
fn tier_env(server: &S3Server) -> Vec<(String, String)> {
    server.create_bucket(BUCKET);
    common::store_env(server, BUCKET, "iggy/chaos")
}

/// Every member's `what` (by member) is member 0's.
fn assert_alike<T: PartialEq + std::fmt::Debug>(what: &str, by_member: &[T], seed: u64) {
    for (member, value) in by_member.iter().enumerate() {
        assert_eq!(
            value, &by_member[0],
            "member {member}: {what} unlike member 0's (seed {seed})"
        );
    }
}

/// The client in `slot`, connecting one first if there is none; `None`, after a short pause,
/// while the member does not answer.
async fn connected(slot: &mut Option<IggyClient>, tcp: SocketAddr) -> Option<&IggyClient> {
    if slot.is_none() {
        *slot = connect(tcp).await;
        if slot.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    slot.as_ref()
}

/// Sends batches through member `tcp` until stopped. After a failed send it starts over as a
/// new producer (`index * 1000 + incarnation`) on a new connection: the failed batch may still
/// commit after the next one is sent elsewhere, which is no reordering of one producer's
/// acknowledged messages, so the checker must not see it as one.
///
/// `resend` (the cluster deduplicates messages): after a failed send it sends the same batch,
/// with the same message ids, again on a new connection until it is acknowledged, as a
/// producer relying on deduplication does; the checker then finds every message exactly once,
/// whether the failed attempt committed or not.
async fn produce(
    index: usize,
    tcp: SocketAddr,
    pad: usize,
    resend: bool,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut incarnation = 0;
    let mut client: Option<IggyClient> = None;
    let mut batch = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = connected(&mut client, tcp).await else {
            continue;
        };
        let producer = index * 1000 + incarnation;
        let payloads: Vec<String> = (0..BATCH)
            .map(|i| format!("p{producer}-b{batch:06}-m{i:02}"))
            .collect();
        let mut messages: Vec<IggyMessage> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = match resend {
                    true => ((index as u128) << 64) | (batch * BATCH + i + 1) as u128,
                    false => 0,
                };
                message_with_id(id, &padded(p, if i == 0 { pad } else { 0 }))
            })
            .collect();
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            current.send_messages(
                &id(0),
                &id(0),
                &Partitioning::partition_id(0),
                &mut messages,
            ),
        )
        .await;
        let acknowledged = matches!(sent, Ok(Ok(())));
        history.record(producer, &payloads, acknowledged);
        if acknowledged || !resend {
            batch += 1;
        }
        if !acknowledged {
            if !resend {
                incarnation += 1;
            }
            client = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What pollers saw while the faults went on: (member, offset, payload).
type Seen = std::sync::Mutex<Vec<(usize, u64, String)>>;

/// Polls member `tcp` from offset 0 onwards until stopped, recording every message returned.
/// Reads answer from committed state only, so everything seen must be in the final log, at the
/// same offset: a member that served a write a view change later discarded shows up here.
async fn poll(
    member: usize,
    tcp: SocketAddr,
    seen: Arc<Seen>,
    stores: Arc<Stores>,
    stop: Arc<AtomicBool>,
) {
    let mut client: Option<IggyClient> = None;
    let mut next = 0u64;
    let mut incarnation = 0;
    let mut consumer = Stored::new(member, incarnation);
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = connected(&mut client, tcp).await else {
            continue;
        };
        let polled =
            tokio::time::timeout(SEND_TIMEOUT, common::poll_offset(current, 0, next, 500)).await;
        let ok = match polled {
            Ok(Ok(polled)) if polled.is_empty() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                true
            }
            Ok(Ok(polled)) => {
                {
                    let mut seen = seen.lock().expect("seen");
                    for m in &polled {
                        seen.push((member, m.header.offset, unpadded(&m.payload)));
                        next = next.max(m.header.offset + 1);
                    }
                }
                // Commit the consumer offset, as a consumer does after processing.
                consumer.attempted = Some(next - 1);
                let stored = tokio::time::timeout(
                    SEND_TIMEOUT,
                    current.store_consumer_offset(
                        &Consumer::new(id(consumer.id)),
                        &id(0),
                        &id(0),
                        Some(0),
                        next - 1,
                    ),
                )
                .await;
                let ok = matches!(stored, Ok(Ok(())));
                if ok {
                    consumer.acknowledged = Some(next - 1);
                }
                ok
            }
            _ => false,
        };
        if !ok {
            // A failed store may still land after a later one would: a new consumer takes
            // over, so each consumer's stores are one ordered sequence (see `Stored`).
            stores.lock().expect("stores").push(consumer);
            incarnation += 1;
            consumer = Stored::new(member, incarnation);
            client = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stores.lock().expect("stores").push(consumer);
}

/// One consumer's offset commits: stored in order on one connection until one fails, so the
/// offset every member holds at the end must lie between the last acknowledged and the last
/// attempted store (both `None`: nothing may be stored).
#[derive(Debug, Clone, Copy)]
struct Stored {
    id: u32,
    acknowledged: Option<u64>,
    attempted: Option<u64>,
}

impl Stored {
    fn new(member: usize, incarnation: u32) -> Self {
        Self {
            id: 100_000 * (member as u32 + 1) + incarnation,
            acknowledged: None,
            attempted: None,
        }
    }
}

type Stores = std::sync::Mutex<Vec<Stored>>;

/// Starts `fault` on `member`.
fn strike(cluster: &mut TestCluster, links: &Links, fault: Fault, member: usize) {
    match fault {
        Fault::Kill | Fault::KillPrimary => cluster.brokers[member].kill9(),
        Fault::Pause => signal(cluster.brokers[member].pid(), "STOP"),
        Fault::Isolate => links.isolate(member, true),
        Fault::Mute => links.cut_one_way(member, true, true),
        Fault::Deafen => links.cut_one_way(member, false, true),
        Fault::CrashAll => cluster.brokers.iter_mut().for_each(TestBroker::kill9),
    }
}

/// Ends `fault` on `member`: links healed, processes resumed or started again.
fn heal(cluster: &mut TestCluster, links: &Links, fault: Fault, member: usize) {
    match fault {
        Fault::Kill | Fault::KillPrimary => cluster.brokers[member].spawn_and_wait_alive(),
        Fault::Pause => signal(cluster.brokers[member].pid(), "CONT"),
        Fault::Isolate => links.isolate(member, false),
        Fault::Mute => links.cut_one_way(member, true, false),
        Fault::Deafen => links.cut_one_way(member, false, false),
        Fault::CrashAll => cluster
            .brokers
            .iter_mut()
            .for_each(TestBroker::spawn_and_wait_alive),
    }
}

/// Strikes faults from `schedule` for `duration`; returns how many.
fn nemesis(
    cluster: &mut TestCluster,
    links: &Links,
    schedule: &mut Schedule,
    duration: Duration,
) -> usize {
    let deadline = Instant::now() + duration;
    let mut faults = 0;
    while Instant::now() < deadline {
        std::thread::sleep(schedule.millis(300, 1500));
        let first = Fault::pick(schedule);
        let primary = (0..MEMBERS)
            .find(|&m| cluster.status(m).is_some_and(|s| s.role == Role::Primary))
            .unwrap_or(0);
        let member = match first {
            Fault::KillPrimary => primary,
            _ => schedule.below(MEMBERS as u64) as usize,
        };
        let mut struck = vec![(first, member)];
        // One time in four a second fault overlaps the first, on another member: the quorum
        // may be gone for a while, and nothing acknowledged may be lost meanwhile.
        if first != Fault::CrashAll && schedule.below(4) == 0 {
            let second = Fault::pick(schedule);
            let other = (member + 1 + schedule.below(MEMBERS as u64 - 1) as usize) % MEMBERS;
            if second != Fault::CrashAll && second != Fault::KillPrimary {
                struck.push((second, other));
            }
        }
        let hold = schedule.millis(200, 3000);
        eprintln!("chaos: {struck:?} for {hold:?}");
        for &(fault, member) in &struck {
            strike(cluster, links, fault, member);
        }
        std::thread::sleep(hold);
        for &(fault, member) in struck.iter().rev() {
            heal(cluster, links, fault, member);
        }
        supervise(cluster);
        faults += struck.len();
    }
    faults
}

/// Starts again every broker that stopped itself on purpose, as its supervisor (Kubernetes)
/// would: a replica exits with code 70 when it cannot go on safely — a state sync whose every
/// source failed after it had changed local data — and resumes from its durable state. Any
/// other exit (a panic) is a failure.
fn supervise(cluster: &mut TestCluster) {
    for (member, broker) in cluster.brokers.iter_mut().enumerate() {
        match broker.exited() {
            None => {}
            Some(STOPPED_ON_PURPOSE) => {
                eprintln!("chaos: member {member} stopped itself (exit 70); starting it again");
                broker.spawn_and_wait_alive();
            }
            Some(code) => panic!("member {member} exited with code {code}"),
        }
    }
}

/// The exit code of a replica that stopped because going on could diverge (`driver.rs`).
const STOPPED_ON_PURPOSE: i32 = 70;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_nemesis_loses_no_acknowledged_message() {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let seconds = env_u64("CHAOS_SECS").unwrap_or(20);
    let mut schedule = Schedule(seed);
    let fsync = if schedule.below(2) == 0 {
        "always"
    } else {
        "never"
    };
    // Small batches stay in the heap; large ones are mapped from the WAL once applied.
    let pad = if schedule.below(2) == 0 { 0 } else { LARGE_PAD };
    let route = if schedule.below(2) == 0 {
        "star"
    } else {
        "ring"
    };
    // Drawn apart from the fault schedule, so seeds from before it keep their schedules.
    let resend = Schedule(seed ^ 0xDED0_0001).below(2) == 0;
    // Half the seeds replicate over TLS (`replication.tls`): the fault proxy between members
    // copies the encrypted bytes, and cuts, pauses and kills land mid-record.
    let tls = Schedule(seed ^ 0x7150_0001).below(2) == 0;
    eprintln!(
        "chaos: CHAOS_SEED={seed} CHAOS_SECS={seconds} fsync={fsync} pad={pad} route={route} \
         resend={resend} tls={tls}"
    );

    // Each member has a segment size of its own, as during a rolling config edit: the
    // primary's is in force, so it changes whenever another member leads (`state::settings`),
    // and nothing is ordered before the first primary's is.
    let mut sizes = Schedule(seed ^ 0x5E6_0001);
    let mut size = || SEGMENT_SIZES[sizes.below(SEGMENT_SIZES.len() as u64) as usize];
    let segment_sizes: Vec<&str> = (0..MEMBERS).map(|_| size()).collect();
    eprintln!("chaos: segment size by member {segment_sizes:?}");
    // Half the seeds tier to a real S3-compatible server: the primary uploads sealed segments
    // and records them through the log, every member evicts its copies at its own pace, and the
    // final reads take the old messages back from the store.
    let server = match Schedule(seed ^ 0x71E2_0001).below(2) == 0 {
        true => {
            let server = S3Server::start();
            if server.is_none() {
                eprintln!("chaos: no s3s-fs to tier to (cargo install s3s-fs); this run keeps everything local");
            }
            server
        }
        false => None,
    };
    let tier_env = server.as_ref().map(tier_env).unwrap_or_default();
    eprintln!("chaos: tiered={}", server.is_some());

    let links = common::links::Links::start(MEMBERS).await;
    let replication: Vec<SocketAddr> = (0..MEMBERS).map(|_| common::free_port()).collect();
    links.connect_to(&replication);
    let mut cluster = TestCluster::start_each(
        replication,
        |from, to| links.address(from, to),
        |member| {
            vec![
                ("IGGY_STORAGE_FSYNC", fsync),
                ("IGGY_REPLICATION_ROUTE", route),
                ("IGGY_STORAGE_SEGMENT_SIZE", segment_sizes[member]),
                // A resent batch must still find its first attempt: the window spans the run.
                (
                    "IGGY_MESSAGE_DEDUPLICATION_ENABLED",
                    if resend { "true" } else { "false" },
                ),
                ("IGGY_MESSAGE_DEDUPLICATION_MAX_ENTRIES", "1000000"),
                ("IGGY_MESSAGE_DEDUPLICATION_EXPIRY", "none"),
                ("IGGY_REPLICATION_TLS", if tls { "true" } else { "false" }),
            ]
            .into_iter()
            .chain(tier_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect()
        },
    );
    let all: Vec<usize> = (0..MEMBERS).collect();
    let primary = cluster.primary(&all, Duration::from_secs(10));
    if resend {
        for &member in &all {
            common::wait_deduplication_in_force(&cluster.brokers[member], 1_000_000);
        }
    }
    let setup = cluster.brokers[primary].client().await;
    setup.create_stream("chaos").await.expect("create stream");
    create_topic(&setup, &id(0), "log", 1).await;
    drop(setup);

    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let stores = Arc::new(Stores::default());
    let pollers: Vec<_> = (0..MEMBERS)
        .map(|member| {
            tokio::spawn(poll(
                member,
                cluster.brokers[member].tcp,
                seen.clone(),
                stores.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let producers: Vec<_> = (0..MEMBERS)
        .map(|member| {
            tokio::spawn(produce(
                member,
                cluster.brokers[member].tcp,
                pad,
                resend,
                history.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // The nemesis blocks (sleeps, process starts): on this worker, off the producers' way.
    let faults = tokio::task::block_in_place(|| {
        nemesis(
            &mut cluster,
            &links,
            &mut schedule,
            Duration::from_secs(seconds),
        )
    });

    // Everything healed: service must resume within a bound, through every member.
    tokio::task::block_in_place(|| supervise(&mut cluster));
    let healed_at = history.acknowledged();
    let resume_by = Instant::now() + Duration::from_secs(30);
    while history.acknowledged() < healed_at + MEMBERS * BATCH * 3 {
        assert!(
            Instant::now() < resume_by,
            "sends did not resume after the faults healed (seed {seed}): {} acknowledged; \
             members say {:?}",
            history.acknowledged(),
            all.iter().map(|&m| cluster.status(m)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in producers.into_iter().chain(pollers) {
        task.await.expect("producer or poller task");
    }
    let primary = cluster.primary(&all, Duration::from_secs(20));
    // A member may still stop itself on purpose while it catches up (a state sync its peers'
    // tiering overtook): started again, as Kubernetes would, it must catch up all the same.
    let target = cluster.commit_to_catch_up(&all, primary);
    let caught_up_by = Instant::now() + Duration::from_secs(30);
    while !cluster.caught_up(&all, target) {
        tokio::task::block_in_place(|| supervise(&mut cluster));
        assert!(
            Instant::now() < caught_up_by,
            "members did not catch up with {primary} (commit {target}, seed {seed}): {:?}",
            all.iter().map(|&m| cluster.status(m)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reads: Vec<(String, Read)> = Vec::new();
    for &member in &all {
        let client = cluster.brokers[member].client().await;
        reads.push((
            format!("member {member}"),
            read_all(&client, 0)
                .await
                .iter()
                .map(|m| {
                    let h = &m.header;
                    (h.offset, h.id, h.timestamp, unpadded(&m.payload))
                })
                .collect(),
        ));
    }
    eprintln!(
        "chaos: seed {seed}: {faults} faults, {} acknowledged, {} stored",
        history.acknowledged(),
        reads[0].1.len()
    );
    history.check(&reads);
    // Segments are byte-identical on every member (peer repair fetches whole ranges of them,
    // retention and tiering act on them whole), whichever segment size was in force when.
    // Tiered, each member evicts its copies at its own pace: the files every member still holds
    // must be identical, and the tier manifests (recorded through the log) equal.
    let mut segments: Vec<Vec<(String, u64, u64)>> = all
        .iter()
        .map(|&member| common::segment_files(&cluster.brokers[member]))
        .collect();
    if server.is_some() {
        let held_by_all = |name: &String| segments.iter().all(|f| f.iter().any(|s| &s.0 == name));
        let common: Vec<String> = segments[0]
            .iter()
            .map(|s| s.0.clone())
            .filter(held_by_all)
            .collect();
        for files in &mut segments {
            files.retain(|s| common.contains(&s.0));
        }
        let manifests: Vec<Option<Manifest>> = all
            .iter()
            .map(|&member| common::local_tier_manifest(&cluster.brokers[member]))
            .collect();
        assert_alike("tier manifest", &manifests, seed);
        eprintln!(
            "chaos: {} segments in the object store, the same manifest on every member",
            manifests[0].as_ref().map_or(0, |m| m.segments.len())
        );
    }
    assert_alike("segment files", &segments, seed);
    eprintln!(
        "chaos: {} segment files every member holds, byte-identical",
        segments[0].len()
    );
    if resend {
        let dropped: Vec<f64> = all
            .iter()
            .map(|&m| {
                let (_, body) =
                    common::http_get(cluster.brokers[m].http, "/metrics").expect("metrics");
                common::metric(&body, "iggy_messages_deduplicated_total").unwrap_or(0.0)
            })
            .collect();
        eprintln!("chaos: resent batches stored once; duplicates dropped per member (since its last start): {dropped:?}");
    }
    // The tasks are done: take what they recorded.
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let log = &reads[0].1;
    for (member, offset, payload) in seen.iter() {
        let stored = usize::try_from(*offset).ok().and_then(|o| log.get(o));
        assert_eq!(
            stored.map(|m| m.3.as_str()),
            Some(payload.as_str()),
            "member {member} served {payload:?} at offset {offset} during the faults, which the \
             final log does not hold there (seed {seed})"
        );
    }
    eprintln!("chaos: {} polled messages all in the final log", seen.len());

    let mut clients = Vec::new();
    for &member in &all {
        clients.push(cluster.brokers[member].client().await);
    }
    let stores = std::mem::take(&mut *stores.lock().expect("stores"));
    for stored in stores.iter() {
        let mut held = Vec::new();
        for client in &clients {
            let offset = client
                .get_consumer_offset(&Consumer::new(id(stored.id)), &id(0), &id(0), Some(0))
                .await
                .expect("get consumer offset")
                .map(|o| o.stored_offset);
            held.push(offset);
        }
        assert!(
            held.iter().all(|h| *h == held[0]),
            "members hold different offsets for consumer {}: {held:?} (seed {seed})",
            stored.id
        );
        // `None` orders below any offset: nothing stored.
        assert!(
            held[0] >= stored.acknowledged && held[0] <= stored.attempted,
            "consumer {} holds offset {:?}, outside its acknowledged {:?} and attempted {:?} \
             stores (seed {seed})",
            stored.id,
            held[0],
            stored.acknowledged,
            stored.attempted
        );
    }
    eprintln!(
        "chaos: {} consumers' offsets agree on every member and match their stores",
        stores.len()
    );
}
