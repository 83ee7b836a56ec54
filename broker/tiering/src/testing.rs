//! A real S3-compatible server for integration tests: `s3s-fs` (which checks SigV4 signatures)
//! serving a temporary directory on loopback. It can be stopped and started again on the same
//! port and data, to test an outage. Killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIAIGGYTEST";
pub const SECRET_KEY: &str = "iggy-test-secret-key";

pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    host: String,
    port: u16,
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl S3Server {
    /// On 127.0.0.1; `None` (with the reason printed) when s3s-fs is not installed, unless
    /// `S3S_REQUIRED` is set, which makes a missing server a failure (CI sets it).
    pub fn start() -> Option<Self> {
        Self::start_on("127.0.0.1")
    }

    pub fn start_on(host: &str) -> Option<Self> {
        let installed = Command::new("s3s-fs")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let why = "s3s-fs not found on PATH (cargo install s3s-fs@0.14.1 --features binary)";
            assert!(
                std::env::var("S3S_REQUIRED").is_err(),
                "S3S_REQUIRED is set but {why}"
            );
            eprintln!("SKIP: {why}");
            return None;
        }
        let root = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self {
            child: None,
            root,
            host: host.to_owned(),
            port,
            endpoint: format!("http://{host}:{port}"),
        };
        server.resume();
        Some(server)
    }

    /// Creates a bucket (a directory, for s3s-fs).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).expect("bucket directory");
    }

    /// Where an object is stored: `<root>/<bucket>/<key>`.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Every object key in `bucket`, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut keys = Vec::new();
        let mut pending = vec![base.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&base) {
                    let key = relative.to_string_lossy().into_owned();
                    // s3s-fs keeps upload bookkeeping beside the objects.
                    if !key.starts_with(".") && !key.contains("/.") {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        keys
    }

    /// Kills the server (an outage); [`Self::resume`] brings it back with the same data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn resume(&mut self) {
        if self.child.is_some() {
            return;
        }
        let child = Command::new("s3s-fs")
            .args(["--host", &self.host, "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.host.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
