//! A full disk: sends fail with a precise error, nothing is lost, and deleting a stream — the
//! way to free space — still works at exactly 0 bytes free. Runs on a small tmpfs mounted for
//! the test (root only; it says so and skips elsewhere), bounded in size and time.

mod common;

use common::{code, create_topic, id, message, name, TestBroker};
use iggy::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    client.create_stream("fill").await.unwrap();
    create_topic(&client, &id(0), "t", 1).await;
    let payload = "x".repeat(10_000);
    let mut acknowledged = 0usize;
    let refusal = loop {
        let mut batch: Vec<IggyMessage> = (0..10).map(|_| message(&payload)).collect();
        match client
            .send_messages(&id(0), &id(0), &Partitioning::partition_id(0), &mut batch)
            .await
        {
            Ok(()) => acknowledged += 10,
            Err(error) => break code(error),
        }
        assert!(acknowledged < 10_000, "the disk never filled");
    };
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
