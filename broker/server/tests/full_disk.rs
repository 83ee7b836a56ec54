//! A full disk: sends fail with a precise error, nothing is lost, and deleting a stream — the
//! way to free space — still works at exactly 0 bytes free. Runs on a small tmpfs mounted for
//! the test (root only; it says so and skips elsewhere), bounded in size and time.

mod common;

use common::cluster::TestCluster;
use common::{code, create_topic, id, message, name, TestBroker};
use iggy::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        mounted.then_some(Self { path, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes to `path` until the filesystem has no byte left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [65_536usize, 4096, 512, 1] {
        let block = vec![0u8; chunk];
        while file.write_all(&block).is_ok() {}
    }
    let _ = file.sync_all();
}

/// Creates stream 0 ("fill") with one topic, then sends batches of `batch` messages of 10 KB
/// to it until one is refused; returns how many messages were acknowledged and the refusal's
/// error code. Fails if `most` were acknowledged first.
async fn fill_until_refused(client: &IggyClient, batch: usize, most: usize) -> (usize, u32) {
    client.create_stream("fill").await.unwrap();
    create_topic(client, &id(0), "t", 1).await;
    let payload = "x".repeat(10_000);
    let mut acknowledged = 0usize;
    loop {
        let mut messages: Vec<IggyMessage> = (0..batch).map(|_| message(&payload)).collect();
        match common::send_to(client, 0, &mut messages).await {
            Ok(()) => acknowledged += batch,
            Err(error) => return (acknowledged, code(error)),
        }
        assert!(acknowledged < most, "the disk never filled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_precisely_and_deletes_still_free_space() {
    let Some(disk) = SmallDisk::mount("6m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (mount -t tmpfs failed)");
        return;
    };
    let data = disk.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let mut broker = TestBroker::start_with(&[
        ("IGGY_SYSTEM_PATH", data),
        ("IGGY_STORAGE_SEGMENT_SIZE", "64 KiB"),
        ("IGGY_STORAGE_SCRUB_RATE", "0"),
    ]);
    let client = broker.client().await;
    let (acknowledged, refusal) = fill_until_refused(&client, 10, 10_000).await;
    assert_eq!(refusal, 4010, "CannotAppendMessage, not a generic error");
    let polled = client
        .poll_messages(
            &id(0),
            &id(0),
            Some(0),
            &Consumer::new(id(1)),
            &PollingStrategy::offset(0),
            u32::MAX,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        polled.messages.len(),
        acknowledged,
        "every acknowledged message is there"
    );

    // The failed append cut its bytes back, so some room is left; take all of it.
    let filler = disk.path().join("filler");
    fill(&filler);
    client
        .delete_stream(&name("fill"))
        .await
        .expect("deleting frees space on a disk with 0 bytes free");
    std::fs::remove_file(&filler).unwrap();
    client.create_stream("again").await.expect("room again");
    drop(client);
    assert_eq!(broker.stop(), 0);
}

/// Three replicas, each on a small tmpfs of its own.
struct SmallDiskCluster {
    /// Declared first, so dropped first: its brokers stop before their disks are unmounted
    /// (a busy tmpfs would stay mounted).
    cluster: TestCluster,
    disks: Vec<SmallDisk>,
}

/// Three replicas, each on a tmpfs of `size` of its own, with a 24 MiB reserve.
fn small_disk_cluster(size: &str) -> Option<SmallDiskCluster> {
    let Some(disks) = (0..3)
        .map(|_| SmallDisk::mount(size))
        .collect::<Option<Vec<_>>>()
    else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (mount -t tmpfs failed)");
        return None;
    };
    let paths: Vec<String> = disks
        .iter()
        .map(|disk| disk.path().join("data").display().to_string())
        .collect();
    let cluster = TestCluster::start_configured(3, |member| {
        vec![
            ("IGGY_SYSTEM_PATH", paths[member].as_str()),
            ("IGGY_STORAGE_SEGMENT_SIZE", "4 MiB"),
            ("IGGY_STORAGE_SCRUB_RATE", "0"),
            ("IGGY_REPLICATION_MIN_FREE_SPACE", "24 MiB"),
        ]
    });
    Some(SmallDiskCluster { cluster, disks })
}

/// How long a cluster's full-disk test may take before it fails instead of hanging.
const GUARD: Duration = Duration::from_secs(150);

/// Fails unless the test finished within [`GUARD`] and every member is still running.
fn finished_with_every_member_running(
    cluster: &mut TestCluster,
    finished: Result<(), tokio::time::error::Elapsed>,
) {
    assert!(finished.is_ok(), "the test did not finish within {GUARD:?}");
    for (member, broker) in cluster.brokers.iter_mut().enumerate() {
        assert_eq!(
            broker.wait_exit(Duration::ZERO),
            None,
            "member {member} stopped"
        );
    }
}

/// Every replica of a cluster on a small disk of its own, all filling alike (they hold the same
/// data): sends through a backup are refused with the single node's precise error before any
/// disk is full, no replica stops, every acknowledged message reads back from every replica,
/// and with each disk then filled to its last byte by something else, deleting the stream still
/// works and frees space for new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_disks_filling_alike_refuse_sends_early_and_deletes_still_free_space() {
    let Some(mut small) = small_disk_cluster("224m") else {
        return;
    };
    let test = fill_refuse_and_free(&small.cluster, &small.disks);
    let finished = tokio::time::timeout(GUARD, test).await;
    finished_with_every_member_running(&mut small.cluster, finished);
}

/// One backup's disk holds 160 MiB of something else, so it fills long before the others':
/// the primary refuses sends for that backup's sake (it reports its room,
/// `replication::space`), the backup keeps running instead of stopping at a committed op it
/// cannot apply, and once a stream is deleted the primary moves the log on until the backup
/// has released the space. (The margin is wide because members' WAL files differ: each keeps
/// its own number of 64 MiB spares.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_disk_fills_first_has_sends_refused_for_it_and_keeps_running() {
    let Some(mut small) = small_disk_cluster("384m") else {
        return;
    };
    let test = refuse_for_the_fullest_backup(&small.cluster, &small.disks);
    let finished = tokio::time::timeout(GUARD, test).await;
    finished_with_every_member_running(&mut small.cluster, finished);
}

/// Fills the cluster through `client` until a send is refused: checks the refusal is 4010,
/// came after at least `at_least` messages, and was counted once by `primary`. Returns how many
/// messages were acknowledged and the primary's metrics.
async fn refused_once(
    cluster: &TestCluster,
    client: &IggyClient,
    primary: usize,
    at_least: usize,
) -> (usize, String) {
    let (acknowledged, refusal) = fill_until_refused(client, 100, 30_000).await;
    assert_eq!(refusal, 4010, "CannotAppendMessage, as a single node says");
    assert!(
        acknowledged >= at_least,
        "refused early: {acknowledged} acknowledged"
    );
    let (status, metrics) = common::http_get(cluster.brokers[primary].http, "/metrics").unwrap();
    assert_eq!(status, 200);
    // Counted once, by whichever member was primary when it refused.
    let refusals: f64 = (0..3)
        .map(|member| {
            let (_, metrics) = common::http_get(cluster.brokers[member].http, "/metrics").unwrap();
            common::metric(&metrics, "iggy_replication_refused_disk_full_total").unwrap_or(0.0)
        })
        .sum();
    assert_eq!(refusals, 1.0, "{metrics}");
    (acknowledged, metrics)
}

/// Every member's full poll of partition 0 holds `acknowledged` messages.
async fn every_member_holds(cluster: &TestCluster, acknowledged: usize) {
    for member in 0..3 {
        let reader = cluster.brokers[member].client().await;
        assert_eq!(
            common::read_all(&reader, 0).await.len(),
            acknowledged,
            "member {member} holds every acknowledged message"
        );
    }
}

async fn refuse_for_the_fullest_backup(cluster: &TestCluster, disks: &[SmallDisk]) {
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(30));
    let (fuller, through) = ((primary + 1) % 3, (primary + 2) % 3);
    let ballast = disks[fuller].path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 160 << 20]).unwrap();
    let client = cluster.brokers[through].client().await;
    let (acknowledged, metrics) = refused_once(cluster, &client, primary, 2_000).await;
    assert!(
        metrics.contains("iggy_replication_peer_room_bytes{member="),
        "{metrics}"
    );
    let pressure = |member: usize| cluster.status(member).map(|s| s.disk_pressure);
    assert_eq!(pressure(fuller), Some(true), "the fuller backup is short");
    assert_eq!(
        pressure(primary),
        Some(false),
        "the primary refused for the backup, not for its own disk"
    );
    every_member_holds(cluster, acknowledged).await;

    // Deleting the stream frees the backup's space once its log passes two checkpoints: the
    // primary, not short itself, moves the log on for the backup's sake.
    client.delete_stream(&name("fill")).await.unwrap();
    again_once_there_is_room(&client).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pressure(fuller) != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fuller backup still reports disk pressure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `attempt` until it succeeds, while it is refused for lack of space (`refusal`, the
/// error code it is refused with), every 200 ms; fails after `within`.
async fn until_room<T, F, Fut>(refusal: u32, within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, IggyError>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(error) => {
                assert_eq!(code(error), refusal);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the room never came back"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Creates stream "again" with one topic and sends it one batch of 100 messages of 10 KB,
/// each step retried while it is refused for lack of space: the room a deleted stream held
/// comes back once the log has passed two checkpoints (the primary moves it on by itself,
/// `Broker::release_deleted_when_short`), within seconds.
async fn again_once_there_is_room(client: &IggyClient) {
    let within = Duration::from_secs(30);
    until_room(1, within, || client.create_stream("again")).await;
    create_topic(client, &name("again"), "t", 1).await;
    let payload = "x".repeat(10_000);
    until_room(4010, within, || async {
        let mut batch: Vec<IggyMessage> = (0..100).map(|_| message(&payload)).collect();
        client
            .send_messages(
                &name("again"),
                &id(0),
                &Partitioning::partition_id(0),
                &mut batch,
            )
            .await
    })
    .await;
}

async fn fill_refuse_and_free(cluster: &TestCluster, disks: &[SmallDisk]) {
    let primary = cluster.primary(&[0, 1, 2], Duration::from_secs(30));
    let backup = (primary + 1) % 3;
    let client = cluster.brokers[backup].client().await;
    let (acknowledged, _) = refused_once(cluster, &client, primary, 5_000).await;
    // What the sidecar hands the operator for its DiskPressure condition: the member the
    // primary refused for reports it. (Which one that is varies: the members hold the same
    // data, but each keeps its own number of spare WAL files, 64 MiB apiece.)
    let pressure = |member: usize| cluster.status(member).map(|s| s.disk_pressure);
    let pressed: Vec<_> = (0..3).map(pressure).collect();
    assert!(
        pressed.contains(&Some(true)),
        "the fullest member reports disk pressure: {pressed:?}"
    );
    every_member_holds(cluster, acknowledged).await;

    // Something else takes every byte left: deleting the stream must still pass the log.
    let fillers: Vec<_> = disks
        .iter()
        .map(|disk| disk.path().join("filler"))
        .collect();
    for filler in &fillers {
        fill(filler);
    }
    // A create would spend the metadata reserve the delete needs, and stop every replica
    // once none is left: refused, with the error a single node gives when it cannot save.
    // (The primary sees its own disk at once; the peers' reports follow within 100 ms.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = client.create_stream("more").await.map(|_| ()).map_err(code);
    assert_eq!(refused, Err(1), "a create on full disks is refused");
    client
        .delete_stream(&name("fill"))
        .await
        .expect("deleting frees space on disks with 0 bytes free");
    for filler in &fillers {
        std::fs::remove_file(filler).unwrap();
    }
    again_once_there_is_room(&client).await;
    // The space comes back as the released files are unlinked, in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pressure(primary) != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "the primary still reports disk pressure"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
