//! Disk faults injected on purpose, for the simulator (`tests/simulation.rs`): it runs several
//! replicas' brokers in one process, each over its own directory, and fills one replica's disk
//! at a time to prove that a replica which cannot apply a committed operation stops rather than
//! diverges, and comes back whole. Writes that grow data under a filled directory — segment and
//! index appends, atomic file replacements, offset files, new directories — fail with the
//! operating system's own "no space left on device", as a real full disk answers; shrinking
//! (cutting a failed append back) still works, as it does on a real one.
//!
//! Nothing in the broker fills a directory: the seam costs one relaxed atomic load per write
//! while nothing is filled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ARMED: AtomicBool = AtomicBool::new(false);
static FULL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn full() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    FULL.lock().unwrap_or_else(|e| e.into_inner())
}

/// From now on, writes under `dir` fail as on a full disk.
pub fn fill(dir: &Path) {
    let mut full = full();
    if !full.iter().any(|d| d == dir) {
        full.push(dir.to_owned());
    }
    ARMED.store(true, Ordering::Release);
}

/// Writes under `dir` work again.
pub fn free(dir: &Path) {
    let mut full = full();
    full.retain(|d| d != dir);
    ARMED.store(!full.is_empty(), Ordering::Release);
}

/// Whether `dir` is filled.
pub fn is_full(dir: &Path) -> bool {
    ARMED.load(Ordering::Acquire) && full().iter().any(|d| d == dir)
}

/// `Err(ENOSPC)` when `path` lies under a filled directory.
pub(crate) fn check_write(path: &Path) -> std::io::Result<()> {
    if !ARMED.load(Ordering::Acquire) {
        return Ok(());
    }
    if full().iter().any(|dir| path.starts_with(dir)) {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_under_a_filled_directory_fail_and_they_fail_as_a_full_disk_does() {
        let dir = tempfile::tempdir().unwrap();
        let filled = dir.path().join("filled");
        fill(&filled);
        let error = check_write(&filled.join("a/b.log")).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::StorageFull);
        assert!(check_write(&dir.path().join("other/b.log")).is_ok());
        assert!(is_full(&filled));
        free(&filled);
        assert!(check_write(&filled.join("a/b.log")).is_ok());
        assert!(!is_full(&filled));
    }
}
