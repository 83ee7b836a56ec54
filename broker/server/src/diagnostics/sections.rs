//! The text of each snapshot entry, read from `/proc`, the data directory and the broker.
//! Every reader tolerates what it cannot read (a process gone mid-listing, a file deleted by
//! retention while walked): it says so in the text and goes on.

use super::time::utc_text;
use super::Facts;
use crate::state::stats;
use crate::storage::descriptors;
use crate::storage::fsutil::now_micros;
use iggy_telemetry::recent::Tail;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Entries of the data directory listed at most; the rest are counted.
const MAX_LISTED: usize = 20_000;
/// Entries counted at most: past this the walk stops, so a directory of millions of files
/// answers in bounded time (a stat each).
const MAX_WALKED: usize = 1_000_000;
/// Processes listed at most (a pod shares few; a host's process namespace may hold thousands).
const MAX_PROCESSES: usize = 2_000;

pub fn filesystem_overview(root: &Path) -> String {
    listing(root, MAX_LISTED, MAX_WALKED)
}

/// The overview, listing at most `most` entries and counting at most `walk_most`.
fn listing(root: &Path, most: usize, walk_most: usize) -> String {
    let shown = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut text = format!("Data directory: {}\n", shown.display());
    match stats::try_disk_space(root) {
        Some((free, total)) => {
            let _ = writeln!(
                text,
                "Filesystem: {} free of {}",
                human_bytes(free),
                human_bytes(total)
            );
        }
        None => text.push_str("Filesystem: cannot be read (statvfs failed)\n"),
    }
    text.push_str("\nkind        bytes  modified              path\n");
    let mut listed: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    let mut unlisted = 0usize;
    let mut file_bytes = 0u64;
    // Depth first, each directory's entries in name order: the entries come in path order,
    // so a cut listing shows the first part of the whole.
    let mut pending: Vec<PathBuf> = children_in_reverse(root, root, &mut text);
    while listed.len() + unlisted < walk_most {
        let Some(path) = pending.pop() else {
            break;
        };
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone since its directory was read
        };
        if meta.is_dir() {
            pending.extend(children_in_reverse(root, &path, &mut text));
        } else {
            file_bytes += meta.len();
        }
        if listed.len() < most {
            listed.push((path, meta));
        } else {
            unlisted += 1;
        }
    }
    for (path, meta) in &listed {
        let kind = if meta.is_dir() {
            "dir "
        } else if meta.is_symlink() {
            "link"
        } else {
            "file"
        };
        let size = if meta.is_dir() {
            "-".to_owned()
        } else {
            meta.len().to_string()
        };
        let modified = meta.modified().map_or_else(|_| "?".into(), utc_text);
        let _ = writeln!(
            text,
            "{kind} {size:>12}  {modified}  {}",
            relative(root, path)
        );
    }
    let walked = listed.len() + unlisted;
    let _ = writeln!(
        text,
        "\n{}{walked} entries, {} in files{}",
        if pending.is_empty() { "" } else { "at least " },
        human_bytes(file_bytes),
        if unlisted > 0 {
            format!(" ({unlisted} not listed: at most {most} are)")
        } else {
            String::new()
        }
    );
    if !pending.is_empty() {
        let _ = writeln!(text, "(counting stopped after {walk_most} entries)");
    }
    text
}

/// A directory's entries, last name first (to be popped in name order); an unreadable
/// directory is noted in `text`.
fn children_in_reverse(root: &Path, dir: &Path, text: &mut String) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut children: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            children.sort_by(|a, b| b.cmp(a));
            children
        }
        Err(e) => {
            let _ = writeln!(text, "! cannot read {}: {e}", relative(root, dir));
            Vec::new()
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

/// One process's line, from `/proc/<pid>/{stat,status,cmdline}`.
struct ProcessRow {
    pid: u32,
    ppid: u32,
    state: String,
    threads: u64,
    rss_kib: u64,
    cpu_seconds: f64,
    uid: String,
    command: String,
}

/// The fields of a `/proc/*/stat` line after the command name (which may hold spaces and
/// parentheses, so it ends at the last `)`), and the name.
fn stat_fields(stat: &str) -> Option<(String, Vec<&str>)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    Some((name, rest.split_whitespace().collect()))
}

fn field<T: std::str::FromStr + Default>(fields: &[&str], index: usize) -> T {
    fields
        .get(index)
        .and_then(|f| f.parse().ok())
        .unwrap_or_default()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn read_process(dir: &Path, ticks: f64) -> Option<ProcessRow> {
    let pid = dir.file_name()?.to_str()?.parse().ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (name, fields) = stat_fields(&stat)?;
    // After the name: state (0), ppid (1), … utime (11), stime (12), … num_threads (17).
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let status_field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_owned()
    };
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(ProcessRow {
        pid,
        ppid: field(&fields, 1),
        state: fields.first().copied().unwrap_or("?").to_owned(),
        threads: field(&fields, 17),
        rss_kib: status_field("VmRSS:").parse().unwrap_or(0),
        cpu_seconds: (field::<f64>(&fields, 11) + field::<f64>(&fields, 12)) / ticks,
        uid: status_field("Uid:"),
        command: shown_command(pid, &name, &args),
    })
}

/// A process's command line as the list shows it: the broker's own whole, another's program
/// alone — arguments may carry secrets (a password given to a CLI), which `ps` would show to
/// whoever reads the archive.
fn shown_command(pid: u32, name: &str, args: &[String]) -> String {
    match args.split_first() {
        None => format!("[{name}]"),
        Some(_) if pid == std::process::id() => args.join(" "),
        Some((program, [])) => program.clone(),
        Some((program, rest)) => format!("{program} ({} arguments not shown)", rest.len()),
    }
}

pub fn process_list() -> String {
    let ticks = clock_ticks_per_second();
    let mut rows: Vec<ProcessRow> = match std::fs::read_dir("/proc") {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| read_process(&e.path(), ticks))
            .collect(),
        Err(e) => return format!("cannot read /proc: {e}\n"),
    };
    rows.sort_by_key(|r| r.pid);
    let mut text = format!(
        "Processes visible to this broker (pid {}), from /proc\n\n\
         {:>7} {:>7} S {:>7} {:>10} {:>9} {:>6}  COMMAND\n",
        std::process::id(),
        "PID",
        "PPID",
        "THREADS",
        "RSS KiB",
        "CPU s",
        "UID"
    );
    for row in rows.iter().take(MAX_PROCESSES) {
        let _ = writeln!(
            text,
            "{:>7} {:>7} {} {:>7} {:>10} {:>9.2} {:>6}  {}",
            row.pid,
            row.ppid,
            row.state,
            row.threads,
            row.rss_kib,
            row.cpu_seconds,
            row.uid,
            row.command
        );
    }
    if rows.len() > MAX_PROCESSES {
        let _ = writeln!(
            text,
            "… and {} more (at most {MAX_PROCESSES} are listed)",
            rows.len() - MAX_PROCESSES
        );
    }
    text
}

pub fn resource_usage(facts: &Facts) -> String {
    let ticks = clock_ticks_per_second();
    let run_time = now_micros().saturating_sub(facts.started_at) / 1_000_000;
    let mut text = format!(
        "Broker process {} (iggy-broker {}), up {run_time} s\n\nMemory (/proc/self/status)\n",
        std::process::id(),
        env!("CARGO_PKG_VERSION"),
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for key in [
        "VmPeak:", "VmSize:", "VmHWM:", "VmRSS:", "RssAnon:", "RssFile:", "VmSwap:", "Threads:",
    ] {
        if let Some(line) = status.lines().find(|l| l.starts_with(key)) {
            let _ = writeln!(
                text,
                "  {}",
                line.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    let open_descriptors = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let (soft, hard) = descriptor_limits();
    let (reserved, budget) = facts.memory;
    let _ = write!(
        text,
        "\nDescriptors: {open_descriptors} open, limit {soft} (hard {hard})\n\
         Segment files open: {} of a budget of {}\n\
         Request memory (tcp.memory_budget): {} reserved of {}\n\
         Clients connected: {}\n",
        descriptors::open_count(),
        descriptors::limit(),
        human_bytes(reserved),
        human_bytes(budget),
        facts.clients,
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        text,
        "Load average (1, 5, 15 min): {}",
        first_words(&load, 3)
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    for key in ["MemTotal:", "MemAvailable:"] {
        if let Some(line) = meminfo.lines().find(|l| l.starts_with(key)) {
            let _ = writeln!(
                text,
                "Host {}",
                line.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    let _ = writeln!(
        text,
        "\nThreads (/proc/self/task)\n{:>8} {:<16} S {:>9} {:>9}",
        "TID", "NAME", "USER s", "SYSTEM s"
    );
    let mut threads: Vec<(u32, String, String, f64, f64)> = std::fs::read_dir("/proc/self/task")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let tid = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let (name, fields) = stat_fields(&stat)?;
                    let state = fields.first().copied().unwrap_or("?").to_owned();
                    let user = field::<f64>(&fields, 11) / ticks;
                    let system = field::<f64>(&fields, 12) / ticks;
                    Some((tid, name, state, user, system))
                })
                .collect()
        })
        .unwrap_or_default();
    threads.sort_by_key(|t| t.0);
    for (tid, name, state, user, system) in threads {
        let _ = writeln!(
            text,
            "{tid:>8} {name:<16} {state} {user:>9.2} {system:>9.2}"
        );
    }
    let _ = writeln!(text, "\nStatus (GET /admin/status)\n{}", facts.status);
    text
}

pub fn server_logs(tail: Option<&Tail>) -> String {
    let Some(tail) = tail else {
        return "# This broker keeps no console lines in memory; its log is its standard output.\n"
            .to_owned();
    };
    let lines = tail.text.lines().count();
    let mut text = format!(
        "# The last {lines} lines this broker wrote to its console ({} kept at most; {} older \
         lines dropped). The whole log is the broker's standard output (kubectl logs).\n",
        human_bytes(super::RECENT_LOG_BYTES as u64),
        tail.dropped
    );
    text.push_str(&tail.text);
    text
}

fn descriptor_limits() -> (String, String) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return ("?".into(), "?".into());
    }
    let show = |n: libc::rlim_t| {
        if n == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            n.to_string()
        }
    };
    (show(limit.rlim_cur), show(limit.rlim_max))
}

fn first_words(text: &str, count: usize) -> String {
    text.split_whitespace()
        .take(count)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1536` → `1.5 KiB`: binary units, one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_names_with_spaces_and_parentheses() {
        let (name, fields) = stat_fields("42 (tokio (x) 1) S 7 42 42 0 -1").unwrap();
        assert_eq!(name, "tokio (x) 1");
        assert_eq!(fields[0], "S");
        assert_eq!(field::<u32>(&fields, 1), 7);
        assert_eq!(field::<u32>(&fields, 99), 0);
    }

    #[test]
    fn this_process_is_in_the_process_list() {
        let text = process_list();
        let me = std::process::id().to_string();
        assert!(
            text.lines()
                .skip(3)
                .any(|l| l.split_whitespace().next() == Some(&me)),
            "{text}"
        );
    }

    #[test]
    fn a_cut_listing_shows_the_first_entries_in_path_order_and_counts_the_rest() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/inner")).unwrap();
        std::fs::write(root.path().join("a/inner/x.log"), b"12345").unwrap();
        std::fs::write(root.path().join("a/y.log"), b"1").unwrap();
        std::fs::write(root.path().join("b.log"), b"12").unwrap();
        let paths = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("dir") || l.starts_with("file"))
                .map(|l| l.rsplit("  ").next().unwrap().to_owned())
                .collect()
        };
        let whole = listing(root.path(), 100, 100);
        assert_eq!(
            paths(&whole),
            ["a", "a/inner", "a/inner/x.log", "a/y.log", "b.log"]
        );
        assert!(whole.ends_with("5 entries, 8 B in files\n"), "{whole}");
        let cut = listing(root.path(), 3, 100);
        assert_eq!(paths(&cut), ["a", "a/inner", "a/inner/x.log"]);
        assert!(
            cut.ends_with("5 entries, 8 B in files (2 not listed: at most 3 are)\n"),
            "{cut}"
        );
        let stopped = listing(root.path(), 3, 4);
        assert!(
            stopped.ends_with(
                "at least 4 entries, 6 B in files (1 not listed: at most 3 are)\n\
                 (counting stopped after 4 entries)\n"
            ),
            "{stopped}"
        );
    }

    #[test]
    fn only_the_brokers_own_arguments_are_shown() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let me = std::process::id();
        assert_eq!(
            shown_command(
                me,
                "iggy-broker",
                &args(&["iggy-broker", "--config", "b.toml"])
            ),
            "iggy-broker --config b.toml"
        );
        assert_eq!(
            shown_command(
                me + 1,
                "iggy",
                &args(&["iggy", "-p", "hunter2", "stream", "list"])
            ),
            "iggy (4 arguments not shown)"
        );
        assert_eq!(shown_command(me + 1, "sh", &args(&["/bin/sh"])), "/bin/sh");
        assert_eq!(shown_command(me + 1, "kthreadd", &[]), "[kthreadd]");
    }

    #[test]
    fn human_bytes_use_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
