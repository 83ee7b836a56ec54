//! A real OTLP receiver for integration tests: the `rotel` collector (PyPI package `rotel`,
//! binary `rotel-agent`), listening for gRPC and HTTP on free loopback ports and printing what it
//! receives (traces, logs and metrics, in detail) to a file the test reads.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set by CI: the receiver must be there, and a test fails rather than skips without it.
pub const REQUIRED_VARIABLE: &str = "ROTEL_REQUIRED";

pub struct OtlpReceiver {
    agent: PathBuf,
    child: Option<Child>,
    output: PathBuf,
    dir: tempfile::TempDir,
    grpc_port: u16,
    http_port: u16,
    pub grpc_endpoint: String,
    pub http_endpoint: String,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `rotel-agent` is: $ROTEL_AGENT, PATH, or inside the installed Python package.
pub fn rotel_agent() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("ROTEL_AGENT") {
        return Some(PathBuf::from(path));
    }
    let on_path = Command::new("rotel-agent")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        return Some(PathBuf::from("rotel-agent"));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl OtlpReceiver {
    /// Starts a receiver; `None` (with the reason on stderr) when rotel is not installed and
    /// CI did not require it.
    pub fn start() -> Option<Self> {
        let Some(agent) = rotel_agent() else {
            let why = "rotel-agent not found (pip install rotel==0.0.1a15, or set ROTEL_AGENT)";
            assert!(
                std::env::var(REQUIRED_VARIABLE).is_err(),
                "{REQUIRED_VARIABLE} is set but {why}"
            );
            eprintln!("SKIP: {why}");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut receiver = OtlpReceiver {
            agent,
            child: None,
            output: dir.path().join("received-0.txt"),
            dir,
            grpc_port,
            http_port,
            grpc_endpoint: format!("http://127.0.0.1:{grpc_port}"),
            http_endpoint: format!("http://127.0.0.1:{http_port}"),
        };
        // A port picked free can be taken by another test before rotel binds it; rotel then
        // exits, and a fresh pair of ports is tried.
        for _ in 0..3 {
            match receiver.try_resume() {
                Ok(()) => return Some(receiver),
                Err(why) => {
                    eprintln!("rotel did not start ({why}); trying other ports");
                    receiver.grpc_port = free_port();
                    receiver.http_port = free_port();
                    receiver.grpc_endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
                    receiver.http_endpoint = format!("http://127.0.0.1:{}", receiver.http_port);
                }
            }
        }
        panic!("rotel did not start on three pairs of ports");
    }

    /// Stops the collector (its ports close; exporters see it down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the collector again on the same ports, printing to a fresh file: `received`
    /// then shows only what arrived after the restart.
    pub fn resume(&mut self) {
        if let Err(why) = self.try_resume() {
            panic!("rotel did not start again: {why}");
        }
    }

    fn try_resume(&mut self) -> Result<(), String> {
        self.stop();
        let generation = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.output = self.dir.path().join(format!("received-{generation}.txt"));
        let mut args = vec![
            "start".to_string(),
            "--otlp-grpc-endpoint".into(),
            format!("127.0.0.1:{}", self.grpc_port),
            "--otlp-http-endpoint".into(),
            format!("127.0.0.1:{}", self.http_port),
            "--exporter".into(),
            "blackhole".into(),
            "--debug-log-verbosity".into(),
            "detailed".into(),
        ];
        for signal in ["traces", "logs", "metrics"] {
            args.extend(["--debug-log".to_string(), signal.to_string()]);
        }
        let child = Command::new(&self.agent)
            .args(&args)
            .stdout(std::fs::File::create(&self.output).expect("output file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent starts");
        self.child = Some(child);
        // Generous: on a loaded 2-core machine the agent has taken over 10 s to listen.
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.grpc_port, self.http_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    return Err(format!("it exited ({status}) before listening on {port}"));
                }
                if Instant::now() >= deadline {
                    return Err(format!("it did not listen on {port} within 30 s"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Everything received since the collector last started, as its debug output.
    pub fn received(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}
