//! Test harness: runs the real `iggy-broker` binary as a child process on free loopback ports
//! with its own data directory, so tests can kill -9 it, restart it and corrupt its files.
#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod links;
pub mod pki;

use iggy::prelude::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROOT_USER: &str = "iggy";
pub const ROOT_PASSWORD: &str = "test-secret";
/// Not a broker setting: `start_with` takes it as the soft open-files limit to start the broker
/// under (the hard limit is left as it is).
pub const SOFT_NOFILE: &str = "TEST_SOFT_NOFILE";
/// Not a broker setting either: the soft and hard open-files limits (the broker cannot raise
/// them) to start the broker under.
pub const NOFILE: &str = "TEST_NOFILE";

pub struct TestBroker {
    pub data: tempfile::TempDir,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A loopback address for a broker to listen on later. Taken below the kernel's ephemeral
/// range: a port from that range, once released, can be handed to any outgoing connection of
/// any process before the broker binds it (seen in CI once clusters of three brokers with
/// peer links ran beside the other tests: "Address already in use" at start). The pick is
/// random and checked free by binding it, and it is claimed for the life of this test process
/// with an exclusive lock on a file named after it: between the check and the broker's bind,
/// another test process running beside this one could otherwise pick the same port (seen in CI
/// once: a cluster's replication listener "Address already in use").
pub fn free_port() -> SocketAddr {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let ceiling = ephemeral_start.max(12_000);
    loop {
        let port = fastrand::u16(10_000..ceiling);
        let Some(claim) = claim_port(port) else {
            continue;
        };
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            let address = listener.local_addr().expect("local address");
            CLAIMED_PORTS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(claim);
            return address;
        }
    }
}

/// Locks held on the ports this process handed out; the kernel drops them when it exits.
static CLAIMED_PORTS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// An exclusive, non-blocking lock on `port`'s claim file, or `None` when another process
/// (or this one) holds it.
fn claim_port(port: u16) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join("iggy-broker-test-ports");
    std::fs::create_dir_all(&dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .ok()?;
    // SAFETY: flock(2) on a descriptor this function owns; released when it is closed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

impl TestBroker {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a broker with extra `IGGY_*` settings.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), env)
    }

    /// Starts a broker serving clients on `tcp`.
    pub fn start_on(tcp: SocketAddr, env: &[(&str, &str)]) -> Self {
        let mut broker = Self {
            data: tempfile::tempdir().expect("temp dir"),
            tcp,
            http: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        broker.spawn_and_wait();
        broker
    }

    /// Changes (or adds) a setting for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Empties the data directory, as a lost disk would (the broker must not be running).
    pub fn wipe_data(&self) {
        for entry in std::fs::read_dir(self.data_path()).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("wipe");
            } else {
                std::fs::remove_file(&path).expect("wipe");
            }
        }
    }

    pub fn data_path(&self) -> &Path {
        self.data.path()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iggy-broker"));
        command
            .env_clear()
            .env("IGGY_SYSTEM_PATH", self.data.path())
            .env("IGGY_TCP_ADDRESS", self.tcp.to_string())
            .env("IGGY_HTTP_ADDRESS", self.http.to_string())
            .env("IGGY_ROOT_USERNAME", ROOT_USER)
            .env("IGGY_ROOT_PASSWORD", ROOT_PASSWORD)
            .env(
                "IGGY_LOGGING_LEVEL",
                std::env::var("TEST_BROKER_LOGS").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            // TEST_BROKER_LOGS=<level> shows the brokers' logs (they go to stdout).
            .stdout(if std::env::var_os("TEST_BROKER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit());
        // TEST_BROKER_CHECKPOINT_INTERVAL=<duration> runs every broker's storage checkpoint
        // passes that often (`make chaos` with a short one stresses them against crashes and
        // cuts); a test's own setting wins.
        if let Ok(every) = std::env::var("TEST_BROKER_CHECKPOINT_INTERVAL") {
            command.env("IGGY_STORAGE_CHECKPOINT_INTERVAL", every);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let limit = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let (soft_nofile, nofile) = (limit(SOFT_NOFILE), limit(NOFILE));
        if soft_nofile.is_some() || nofile.is_some() {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec; getrlimit/setrlimit are
            // async-signal-safe and touch only the struct on this stack.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                        if let Some(both) = nofile {
                            limit.rlim_max = both.min(limit.rlim_max);
                            limit.rlim_cur = limit.rlim_max;
                        }
                        if let Some(soft) = soft_nofile {
                            limit.rlim_cur = soft.min(limit.rlim_max);
                        }
                        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// Starts the process and waits until /ready answers 200.
    pub fn spawn_and_wait(&mut self) {
        self.spawn_until("/ready");
    }

    /// Starts the process and waits until it answers /health (a replica that is still
    /// catching up is not ready yet).
    pub fn spawn_and_wait_alive(&mut self) {
        self.spawn_until("/health");
    }

    fn spawn_until(&mut self, path: &str) {
        let child = self.command().spawn().expect("spawn iggy-broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("iggy-broker exited during startup: {status}");
            }
            if http_get(self.http, path)
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("iggy-broker did not become ready");
    }

    /// Runs the broker with the current settings and returns its exit code and output (for
    /// boot failures). A broker that is still running after 30 s is killed and reported with
    /// exit code -1, so a boot that wrongly succeeds fails the test instead of hanging it.
    pub fn run_expecting_failure(&self) -> (i32, String) {
        let mut child = self
            .command()
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run iggy-broker");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let output = child
            .wait_with_output()
            .expect("collect iggy-broker output");
        (output.status.code().unwrap_or(-1), output_text(&output))
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `within` for the process to exit by itself; its exit code (-1 for a
    /// signal), or `None` if it is still running (then it is left running).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(code) = self.exited() {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The exit code (-1 for a signal) if the process this broker started has exited by
    /// itself, not waiting; `None` while it runs or when none was started.
    pub fn exited(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> i32 {
        let Some(mut child) = self.child.take() else {
            return 0;
        };
        unsafe_free_sigterm(child.id());
        child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1)
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    pub async fn client(&self) -> IggyClient {
        let client = self.anonymous_client().await;
        client
            .login_user(ROOT_USER, ROOT_PASSWORD)
            .await
            .expect("login as root");
        client
    }

    pub async fn anonymous_client(&self) -> IggyClient {
        let client = IggyClient::builder()
            .with_tcp()
            .with_server_address(self.tcp.to_string())
            .build()
            .expect("build client");
        client.connect().await.expect("connect");
        client
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn partition_dir(&self, stream: u32, topic: u32, partition: u32) -> PathBuf {
        self.data.path().join(format!(
            "streams/{stream}/topics/{topic}/partitions/{partition}"
        ))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends SIGTERM through the `kill` utility, keeping the tests free of unsafe code.
/// SIGTERM without waiting for the exit (`stop` waits).
pub fn sigterm(pid: u32) {
    unsafe_free_sigterm(pid);
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// A finished process's standard output followed by its standard error.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The value of the unlabelled series `name` in a Prometheus text exposition.
/// Waits until `broker` applied message deduplication settings with `max_entries` (0: off);
/// a replicated broker's primary commits its settings within a second of leading.
pub fn wait_deduplication_in_force(broker: &TestBroker, max_entries: u32) {
    wait_metric(
        broker,
        "iggy_message_deduplication_max_entries",
        f64::from(max_entries),
    );
}

/// Waits up to 15 s until `broker` reports `value` for the metric `name` (settings in force
/// are committed by the primary within a second of leading).
pub fn wait_metric(broker: &TestBroker, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(broker.http, "/metrics").expect("metrics");
        let now = metric(&body, name);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, waiting for {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stream 0, topic 0, partition 0's segment files on `broker`: name, length and a hash of the
/// bytes, by name.
pub fn segment_files(broker: &TestBroker) -> Vec<(String, u64, u64)> {
    let mut files: Vec<(String, u64, u64)> = std::fs::read_dir(broker.partition_dir(0, 0, 0))
        .expect("partition dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("segment");
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(&bytes))
        })
        .collect();
    files.sort();
    files
}

/// Settings that tier to `server`'s `bucket` under `prefix`: a look for sealed segments every
/// 100 ms, local copies evicted 200 ms after their upload.
pub fn store_env(
    server: &iggy_tiering::testing::S3Server,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, String)> {
    use iggy_tiering::testing::{ACCESS_KEY, SECRET_KEY};
    [
        ("IGGY_TIERING_INTERVAL", "100ms"),
        ("IGGY_TIERING_LOCAL_RETENTION", "200ms"),
        ("IGGY_TIERING_S3_BUCKET", bucket),
        ("IGGY_TIERING_S3_ENDPOINT", server.endpoint.as_str()),
        ("IGGY_TIERING_S3_FORCE_PATH_STYLE", "true"),
        ("IGGY_TIERING_S3_PREFIX", prefix),
        ("IGGY_TIERING_S3_ACCESS_KEY_ID", ACCESS_KEY),
        ("IGGY_TIERING_S3_SECRET_ACCESS_KEY", SECRET_KEY),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Stream 0, topic 0, partition 0's tier manifest on `broker`, if it has one.
pub fn local_tier_manifest(broker: &TestBroker) -> Option<iggy_tiering::Manifest> {
    let bytes = std::fs::read(broker.partition_dir(0, 0, 0).join("tiered.json")).ok()?;
    Some(iggy_tiering::Manifest::decode(&bytes).expect("a valid tier manifest"))
}

pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A minimal HTTP/1.0 GET returning (status, body).
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "GET", path, "")
}

/// A minimal HTTP/1.0 POST of `body`, returning (status, body).
pub fn http_post(address: SocketAddr, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "POST", path, body)
}

fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

pub fn id(n: u32) -> Identifier {
    Identifier::numeric(n).expect("valid numeric identifier")
}

pub fn name(s: &str) -> Identifier {
    Identifier::named(s).expect("valid name")
}

/// Creates a topic with the server's default expiry and size, no compression.
pub async fn create_topic(
    client: &IggyClient,
    stream: &Identifier,
    topic: &str,
    partitions: u32,
) -> TopicDetails {
    client
        .create_topic(
            stream,
            topic,
            partitions,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::ServerDefault,
            MaxTopicSize::ServerDefault,
        )
        .await
        .expect("create topic")
}

/// The Iggy status code inside an SDK error.
/// Up to `count` messages of stream 0, topic 0, `partition` from `offset`, as a standalone
/// consumer polling by offset without committing.
pub async fn poll_offset(
    client: &IggyClient,
    partition: u32,
    offset: u64,
    count: u32,
) -> Result<Vec<IggyMessage>, IggyError> {
    client
        .poll_messages(
            &id(0),
            &id(0),
            Some(partition),
            &Consumer::new(id(1)),
            &PollingStrategy::offset(offset),
            count,
            false,
        )
        .await
        .map(|polled| polled.messages)
}

pub fn code(error: IggyError) -> u32 {
    error.as_code()
}

/// A message for `text`, whose id the broker picks.
pub fn message(text: &str) -> IggyMessage {
    message_with_id(0, text)
}

/// A message for `text` with the id `id` (0: the broker picks one).
pub fn message_with_id(id: u128, text: &str) -> IggyMessage {
    IggyMessage::builder()
        .id(id)
        .payload(bytes::Bytes::from(text.to_owned()))
        .build()
        .expect("valid message")
}

/// Sends `messages` to `partition` of stream 0, topic 0.
pub async fn send_to(
    client: &IggyClient,
    partition: u32,
    messages: &mut [IggyMessage],
) -> Result<(), IggyError> {
    client
        .send_messages(
            &id(0),
            &id(0),
            &Partitioning::partition_id(partition),
            messages,
        )
        .await
}

/// How many messages stream 0, topic 0 holds.
pub async fn messages_count(client: &IggyClient) -> u64 {
    client
        .get_topic(&id(0), &id(0))
        .await
        .expect("topic")
        .expect("exists")
        .messages_count
}

/// What pads a payload out to a given size ([`padded`]); no generated payload contains it.
pub const PAD: char = '~';

/// `payload` followed by `pad` copies of [`PAD`]: large batches without large bookkeeping.
pub fn padded(payload: &str, pad: usize) -> String {
    let mut out = String::with_capacity(payload.len() + pad);
    out.push_str(payload);
    out.extend(std::iter::repeat_n(PAD, pad));
    out
}

/// A payload with its padding removed; padding that changed leaves characters no generated
/// payload has.
pub fn unpadded(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload)
        .trim_end_matches(PAD)
        .to_owned()
}

/// Every message of `partition` of stream 0, topic 0, polled from offset 0 in pages.
pub async fn read_all(client: &IggyClient, partition: u32) -> Vec<IggyMessage> {
    let mut all = Vec::new();
    read_each(client, partition, 1000, |m| all.push(m)).await;
    all
}

/// Polls every message of `partition` from offset 0, `chunk` at a time, handing each to
/// `each` as it arrives (a large log need not be held whole).
pub async fn read_each(
    client: &IggyClient,
    partition: u32,
    chunk: u32,
    mut each: impl FnMut(IggyMessage),
) {
    let mut next = 0u64;
    loop {
        let polled = client
            .poll_messages(
                &id(0),
                &id(0),
                Some(partition),
                &Consumer::new(id(1)),
                &PollingStrategy::offset(next),
                chunk,
                false,
            )
            .await
            .expect("poll");
        if polled.messages.is_empty() {
            return;
        }
        next += polled.messages.len() as u64;
        polled.messages.into_iter().for_each(&mut each);
    }
}
