//! One container's life as a local process: start, probes, exit, restart with exponential
//! back-off (CrashLoopBackOff), and termination — SIGTERM to its process group, SIGKILL when
//! the grace period runs out. Its state is shared with the kubelet, which reports it.

use super::plan::{ContainerPlan, RestartPolicy};
use super::probe::Probe;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// What the kubelet asks of a running pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// Pod deletion: SIGTERM, then SIGKILL after the grace period.
    Graceful(Duration),
    /// A node failure: SIGKILL at once.
    Kill,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: &'static str,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated(Terminated),
}

/// A container as its status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub state: State,
    pub last: Option<Terminated>,
    pub restarts: u32,
    pub ready: bool,
    pub started: bool,
    pub pid: Option<u32>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restarts: 0,
            ready: false,
            started: false,
            pid: None,
        }
    }
}

pub type SharedRecord = Arc<Mutex<Record>>;

pub fn lock(record: &SharedRecord) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exponential back-off between restarts, reset after a long healthy run (as the kubelet's,
/// with a smaller base and cap so a dev cluster recovers in seconds).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

pub struct Container {
    pub plan: ContainerPlan,
    pub record: SharedRecord,
    pub ip: Ipv4Addr,
    pub pod: String,
    pub restart_policy: RestartPolicy,
    pub grace: Duration,
    pub backoff: Backoff,
    pub wake: Arc<Notify>,
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Stopping,
    Unhealthy,
}

/// Sends `signal` to the process group led by `pid` (containers run in their own group, so
/// a shell's children go too).
pub fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

impl Container {
    fn set(&self, change: impl FnOnce(&mut Record)) {
        change(&mut lock(&self.record));
        self.wake.notify_one();
    }

    /// Runs the container until the pod stops (or, under OnFailure/Never, until it is done).
    pub async fn run(self, mut stop: watch::Receiver<Stop>) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() != Stop::Run {
                return;
            }
            let child = self
                .open_log()
                .map_err(|e| format!("opening the log {}: {e}", self.plan.log.display()))
                .and_then(|log| {
                    self.spawn(log)
                        .map_err(|e| format!("starting {}: {e}", self.plan.program.display()))
                });
            let mut child = match child {
                Ok(child) => child,
                Err(message) => {
                    self.set(|r| {
                        r.state = State::Waiting {
                            reason: "RunContainerError".into(),
                            message,
                        }
                    });
                    if !self.back_off(&mut stop, &mut failures).await {
                        return;
                    }
                    continue;
                }
            };
            let started_at = crate::store::now();
            let began = Instant::now();
            let pid = child.id();
            self.set(|r| {
                r.state = State::Running {
                    started_at: started_at.clone(),
                };
                r.pid = pid;
                r.started = self.plan.startup.is_none();
                r.ready = false;
            });
            let (unhealthy_tx, mut unhealthy) = mpsc::channel::<String>(1);
            let probes = tokio::spawn(probe_loop(
                self.plan.clone(),
                self.ip,
                self.record.clone(),
                self.wake.clone(),
                unhealthy_tx,
            ));
            let ended = tokio::select! {
                status = child.wait() => Ended::Exited(status),
                _ = stop.wait_for(|s| *s != Stop::Run) => Ended::Stopping,
                reason = unhealthy.recv() => {
                    tracing::info!(pod = %self.pod, container = %self.plan.name, reason = reason.as_deref().unwrap_or(""), "liveness failed; restarting");
                    Ended::Unhealthy
                }
            };
            let status = match ended {
                Ended::Exited(status) => status,
                Ended::Stopping => {
                    let how = *stop.borrow();
                    let grace = match how {
                        Stop::Graceful(grace) => grace,
                        _ => Duration::ZERO,
                    };
                    terminate(&mut child, pid, grace).await
                }
                Ended::Unhealthy => terminate(&mut child, pid, self.grace).await,
            };
            probes.abort();
            // The instance's log becomes the previous one (`kubectl logs --previous`).
            let _ = std::fs::rename(&self.plan.log, self.plan.log.with_extension("log.previous"));
            let terminated = describe(&status, started_at);
            let succeeded = terminated.exit_code == 0;
            tracing::info!(pod = %self.pod, container = %self.plan.name, exit_code = terminated.exit_code, signal = ?terminated.signal, "container exited");
            self.set(|r| {
                r.state = State::Terminated(terminated.clone());
                r.last = Some(terminated.clone());
                r.pid = None;
                r.ready = false;
                r.started = false;
            });
            if *stop.borrow() != Stop::Run {
                return;
            }
            let restart = match self.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !succeeded,
                RestartPolicy::Never => false,
            };
            if !restart {
                return;
            }
            if began.elapsed() >= Duration::from_secs(600) {
                failures = 0;
            }
            if !self.back_off(&mut stop, &mut failures).await {
                return;
            }
        }
    }

    /// Waits out the next back-off step; false when the pod stopped meanwhile.
    async fn back_off(&self, stop: &mut watch::Receiver<Stop>, failures: &mut u32) -> bool {
        let delay = self
            .backoff
            .base
            .saturating_mul(1u32 << (*failures).min(16))
            .min(self.backoff.cap);
        *failures += 1;
        self.set(|r| {
            r.restarts += 1;
            if !matches!(&r.state, State::Waiting { reason, .. } if reason == "RunContainerError") {
                r.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs_f32().ceil(),
                        self.plan.name,
                        self.pod
                    ),
                };
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.wait_for(|s| *s != Stop::Run) => false,
        }
    }

    fn open_log(&self) -> std::io::Result<std::fs::File> {
        if let Some(dir) = self.plan.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(&self.plan.log)
    }

    fn spawn(&self, log: std::fs::File) -> std::io::Result<tokio::process::Child> {
        let stderr = log.try_clone()?;
        let cwd = self
            .plan
            .log
            .parent()
            .and_then(|logs| logs.parent())
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let mut command = tokio::process::Command::new(&self.plan.program);
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
        // which is async-signal-safe. It asks the kernel to SIGKILL the container when the
        // thread that started it goes away — the harness killed outright (SIGKILL, a crash) must
        // not leave pods running. Containers start on the runtime's worker threads, which live as
        // long as the harness's runtime.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .args(&self.plan.args)
            .env_clear()
            .envs(self.plan.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }
}

/// SIGTERM to the group, SIGKILL once `grace` passed (at once when it is zero).
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if let Some(pid) = pid {
        if grace.is_zero() {
            signal_group(pid, libc::SIGKILL);
        } else {
            signal_group(pid, libc::SIGTERM);
            if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
                signal_group(pid, libc::SIGKILL);
                return status;
            }
            signal_group(pid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

fn describe(status: &std::io::Result<ExitStatus>, started_at: String) -> Terminated {
    let (exit_code, signal) = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, None),
            // A signal's death reads as 128 + signal, as container runtimes report it.
            (None, Some(signal)) => (128 + signal, Some(signal)),
            (None, None) => (-1, None),
        },
        Err(_) => (-1, None),
    };
    Terminated {
        exit_code,
        signal,
        reason: if exit_code == 0 { "Completed" } else { "Error" },
        started_at,
        finished_at: crate::store::now(),
    }
}

/// Startup first; then readiness and liveness side by side. Liveness or startup failing
/// `failureThreshold` times in a row asks for a restart through `unhealthy`.
async fn probe_loop(
    plan: ContainerPlan,
    ip: Ipv4Addr,
    record: SharedRecord,
    wake: Arc<Notify>,
    unhealthy: mpsc::Sender<String>,
) {
    let set = |change: &dyn Fn(&mut Record)| {
        let mut r = lock(&record);
        let before = r.clone();
        change(&mut r);
        if *r != before {
            wake.notify_one();
        }
    };
    if let Some(startup) = &plan.startup {
        if let Err(reason) = until_threshold(startup, ip, true).await {
            let _ = unhealthy.send(format!("startup probe: {reason}")).await;
            return;
        }
    }
    set(&|r| r.started = true);
    let readiness = async {
        let Some(probe) = &plan.readiness else {
            set(&|r| r.ready = true);
            return;
        };
        tokio::time::sleep(probe.initial_delay).await;
        let (mut passes, mut fails) = (0u32, 0u32);
        loop {
            match probe.check(ip).await {
                Ok(()) => {
                    passes += 1;
                    fails = 0;
                    if passes >= probe.success_threshold {
                        set(&|r| r.ready = true);
                    }
                }
                Err(_) => {
                    fails += 1;
                    passes = 0;
                    if fails >= probe.failure_threshold {
                        set(&|r| r.ready = false);
                    }
                }
            }
            tokio::time::sleep(probe.period).await;
        }
    };
    let liveness = async {
        let Some(probe) = &plan.liveness else {
            return std::future::pending::<()>().await;
        };
        tokio::time::sleep(probe.initial_delay).await;
        if let Err(reason) = until_threshold(probe, ip, false).await {
            let _ = unhealthy.send(format!("liveness probe: {reason}")).await;
        }
    };
    tokio::join!(readiness, liveness);
}

/// With `until_success`, probes until one passes (startup); otherwise until
/// `failureThreshold` consecutive failures (liveness). Err carries the last failure.
async fn until_threshold(probe: &Probe, ip: Ipv4Addr, until_success: bool) -> Result<(), String> {
    if until_success {
        tokio::time::sleep(probe.initial_delay).await;
    }
    let mut fails = 0;
    loop {
        match probe.check(ip).await {
            Ok(()) if until_success => return Ok(()),
            Ok(()) => fails = 0,
            Err(reason) => {
                fails += 1;
                if fails >= probe.failure_threshold {
                    return Err(reason);
                }
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}
