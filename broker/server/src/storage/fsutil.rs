//! Small filesystem helpers whose ordering matters for crash safety.

use super::{IoContext, StorageError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// fsyncs a directory so that entries created or renamed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `path` with `bytes` atomically: write a sibling temp file, fsync it, rename it over
/// the target, fsync the directory. A crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    stage(path, bytes)?.install()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The first half of [`write_atomically`]: `bytes` written to `path`'s sibling temp file and
/// fsynced, not yet in place. For a caller that must decide under a lock whether the new
/// content may still replace the old, without holding the lock for the fsyncs.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged, StorageError> {
    let tmp = path.with_extension("tmp");
    super::faults::check_write(&tmp).at(&tmp)?;
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

/// A file [`stage`]d next to the one it replaces.
#[derive(Debug)]
#[must_use = "a staged file replaces nothing until it is installed"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Renames the staged file over its target; durable once the directory is synced.
    pub fn install(self) -> Result<(), StorageError> {
        std::fs::rename(&self.tmp, &self.path).at(&self.path)
    }
}

/// Creates a directory and its parents, then fsyncs each newly reachable level's parent.
pub fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    super::faults::check_write(dir).at(dir)?;
    std::fs::create_dir_all(dir).at(dir)?;
    for level in dirs_to_sync_after_creating(dir).iter().skip(1) {
        sync_dir(level)?;
    }
    Ok(())
}

/// What must be synced for a newly created directory and its contents to survive a crash: the
/// directory itself (its entries) and two levels above it (the new entries there). Two levels
/// are enough for our layout: a new partition's `partitions/` and its topic's directory.
pub fn dirs_to_sync_after_creating(dir: &Path) -> Vec<PathBuf> {
    let mut levels = vec![dir.to_owned()];
    let mut current = dir;
    for _ in 0..2 {
        let Some(parent) = current.parent() else {
            break;
        };
        levels.push(parent.to_owned());
        current = parent;
    }
    levels
}

/// Syncs directories on several threads at once (each fsync waits on the device, not a core),
/// each once however often it is named. Returns the first failure after trying them all.
pub fn sync_dirs(dirs: &[PathBuf]) -> Result<(), StorageError> {
    let mut unique: Vec<&PathBuf> = dirs.iter().collect();
    unique.sort();
    unique.dedup();
    on_threads(&unique, |dir| sync_dir(dir))
}

/// Threads for I/O that waits on the device rather than a core (fsyncs): more than the cores,
/// so the device's queue stays full.
const IO_THREADS: usize = 16;

/// Runs `work` on every item, on up to [`IO_THREADS`] threads taking items in turn. Every item
/// is tried; the first failure is returned.
pub fn on_threads<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), StorageError> + Sync,
) -> Result<(), StorageError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = IO_THREADS.min(items.len()).max(1);
    let failures: Vec<StorageError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return failed;
                        };
                        if let Err(e) = work(item) {
                            failed.push(e);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    match failures.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Microseconds since the Unix epoch, the unit of every Iggy timestamp.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
