//! Process and host figures for GetStats, read from /proc and statvfs (Linux).

use std::path::Path;

#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    /// Percent of one CPU used by this process since it started.
    pub cpu_percent: f32,
    /// Percent of all CPUs busy since boot.
    pub total_cpu_percent: f32,
    pub rss_bytes: u64,
    pub total_memory: u64,
    pub available_memory: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub threads: u32,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A `Key:   123 kB` field of /proc/*/status or /proc/meminfo, in bytes.
fn kb_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn io_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0)
}

pub fn process(run_time_secs: f64) -> ProcessFigures {
    let status = read("/proc/self/status");
    let meminfo = read("/proc/meminfo");
    let io = read("/proc/self/io");
    // utime and stime are fields 14 and 15 of /proc/self/stat, counted after the ")" that ends
    // the command name (which may itself contain spaces).
    let stat = read("/proc/self/stat");
    let ticks_per_second = 100.0;
    let cpu_seconds = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (field(11) + field(12)) / ticks_per_second
        })
        .unwrap_or(0.0);
    let total = read("/proc/stat");
    let total_cpu_percent = total
        .lines()
        .next()
        .map(|line| {
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let all: f64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
            if all > 0.0 {
                ((all - idle) / all * 100.0) as f32
            } else {
                0.0
            }
        })
        .unwrap_or(0.0);
    ProcessFigures {
        cpu_percent: if run_time_secs > 0.0 {
            (cpu_seconds / run_time_secs * 100.0) as f32
        } else {
            0.0
        },
        total_cpu_percent,
        rss_bytes: kb_field(&status, "VmRSS:"),
        total_memory: kb_field(&meminfo, "MemTotal:"),
        available_memory: kb_field(&meminfo, "MemAvailable:"),
        read_bytes: io_field(&io, "read_bytes:"),
        written_bytes: io_field(&io, "write_bytes:"),
        threads: io_field(&status, "Threads:") as u32,
    }
}

/// (free, total) bytes of the filesystem holding `path`; zeros when it cannot be asked.
pub fn disk_space(path: &Path) -> (u64, u64) {
    try_disk_space(path).unwrap_or((0, 0))
}

/// (free, total) bytes of the filesystem holding `path` (free: what an unprivileged writer may
/// still take), or `None` when statvfs fails.
pub fn try_disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and vfs points to writable memory of the
    // right type; statvfs fills it completely on success and we read it only then.
    let ok = unsafe { libc::statvfs(c_path.as_ptr(), vfs.as_mut_ptr()) } == 0;
    if !ok {
        return None;
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let vfs = unsafe { vfs.assume_init() };
    let block = vfs.f_frsize;
    Some((vfs.f_bavail * block, vfs.f_blocks * block))
}

pub fn hostname() -> String {
    read("/proc/sys/kernel/hostname").trim().to_owned()
}

pub fn kernel_version() -> String {
    read("/proc/sys/kernel/osrelease").trim().to_owned()
}

/// PRETTY_NAME of /etc/os-release.
pub fn os_version() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_running_process() {
        let figures = process(1.0);
        assert!(figures.rss_bytes > 0);
        assert!(figures.total_memory >= figures.available_memory);
        assert!(figures.threads >= 1);
        let (free, total) = disk_space(Path::new("."));
        assert!(total > 0 && free <= total);
        assert!(!kernel_version().is_empty());
    }
}
