//! Hostile load that must not take the broker down: a burst of wrong logins. Bounded in count
//! and time, loopback only.

mod common;

use common::TestBroker;
use iggy::prelude::*;
use iggy_wire::request::encode;
use iggy_wire::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WRONG_LOGINS: usize = 300;

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .expect("VmHWM")
}

/// One connection, one wrong login; returns the status it got.
async fn wrong_login(address: std::net::SocketAddr, n: usize) -> u32 {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let payload = encode::login_user(common::ROOT_USER, &format!("wrong-{n}"));
    let mut frame = Vec::new();
    iggy_wire::frame::RequestHeader::encode(Command::LoginUser.code(), payload.len(), &mut frame);
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.expect("send");
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.expect("answer");
    u32::from_le_bytes(header[..4].try_into().expect("4 bytes"))
}

/// 300 simultaneous wrong logins: each is answered (wrong credentials, or busy once the hashing
/// queue is full), a logged-in client's pings stay fast, and memory stays bounded — hashing runs
/// on a bounded pool instead of one argon2 run (19 MiB) per login at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_logins_neither_starves_clients_nor_eats_memory() {
    let broker = TestBroker::start();
    let client = broker.client().await;
    client.ping().await.expect("ping");
    let address = broker.tcp;
    let burst = tokio::spawn(async move {
        let tasks: Vec<_> = (0..WRONG_LOGINS)
            .map(|n| tokio::spawn(wrong_login(address, n)))
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.expect("login task"));
        }
        statuses
    });
    let mut slowest = Duration::ZERO;
    while !burst.is_finished() {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), client.ping())
            .await
            .expect("ping answered within 30 s")
            .expect("ping");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let statuses = tokio::time::timeout(Duration::from_secs(120), burst)
        .await
        .expect("every login answered within two minutes")
        .expect("burst");
    let wrong = statuses.iter().filter(|s| **s == 42).count();
    let busy = statuses.iter().filter(|s| **s == 1).count();
    assert_eq!(wrong + busy, WRONG_LOGINS, "{statuses:?}");
    assert!(wrong > 0, "some logins are checked, not all refused");
    let peak = peak_rss_mib(broker.pid());
    assert!(peak < 512.0, "peak RSS {peak:.0} MiB");
    assert!(slowest < Duration::from_secs(1), "slowest ping {slowest:?}");
    eprintln!(
        "{wrong} wrong, {busy} refused as busy; slowest ping {slowest:?}; peak RSS {peak:.0} MiB"
    );
    // The right password still works afterwards.
    broker
        .client()
        .await
        .ping()
        .await
        .expect("login after the burst");
}
