//! Open segment files are a budget, not one descriptor per file forever.
//!
//! Every segment has a `.log` and an `.index`; a broker with 10,000 partitions would hold
//! 20,000 descriptors for their active segments alone, plus sealed ones, against a process limit
//! that is often 1,024 — creates then failed, sends failed, and shutdown broke. A
//! [`SegmentFile`] opens its file on demand and the process keeps at most [`set_limit`] of them
//! open: opening one more closes the least recently used (approximately: the oldest of a window
//! of candidates, as Redis evicts), preferring files with nothing unsynced.
//!
//! Durability does not depend on a descriptor: written bytes live in the page cache whether or
//! not a descriptor is open, and an fsync through any descriptor flushes the file. What a closed
//! descriptor would lose is the *report* of a failed writeback (Linux tells only descriptors
//! open when it happened). So when the storage policy syncs at all (`fsync = always` or an
//! interval), a file written since its last sync is synced before its descriptor is closed. With
//! `fsync = never` no send waits for an fsync, so a descriptor is closed without one — an fsync
//! per eviction would make a broker with more partitions than descriptors crawl — and the file
//! stays marked as written: a later sync (a running storage checkpoint's, the shutdown's) opens
//! it again to flush it, rather than take a closed file for a synced one.

use super::{IoContext, StorageError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// How many candidates an eviction looks at.
const WINDOW: usize = 64;

struct Budget {
    limit: AtomicUsize,
    sync_on_close: AtomicBool,
    open: AtomicUsize,
    clock: AtomicU64,
    /// The slots whose file is open (entries of dropped segments linger until met), so an
    /// eviction looks at open files only, however many segments exist.
    open_slots: Mutex<Vec<Weak<Slot>>>,
    cursor: AtomicUsize,
}

fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| Budget {
        limit: AtomicUsize::new(usize::MAX),
        sync_on_close: AtomicBool::new(true),
        open: AtomicUsize::new(0),
        clock: AtomicU64::new(0),
        open_slots: Mutex::new(Vec::new()),
        cursor: AtomicUsize::new(0),
    })
}

/// At most `files` segment files open at once in this process (the broker derives it from the
/// descriptor limit at start; unlimited until then).
pub fn set_limit(files: usize) {
    budget().limit.store(files.max(2), Ordering::Relaxed);
}

/// Whether a file written since its last sync is synced before its descriptor is closed
/// (every fsync policy but `never`; see the module's comment).
pub fn set_sync_on_close(sync: bool) {
    budget().sync_on_close.store(sync, Ordering::Relaxed);
}

/// The budget in force.
pub fn limit() -> usize {
    budget().limit.load(Ordering::Relaxed)
}

/// Segment files open now, for `/metrics`.
pub fn open_count() -> usize {
    budget().open.load(Ordering::Relaxed)
}

struct Slot {
    path: PathBuf,
    file: Mutex<Option<Arc<File>>>,
    /// Written since its last sync.
    dirty: AtomicBool,
    /// The budget's clock at the last use.
    used: AtomicU64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.file.get_mut().map(|f| f.is_some()).unwrap_or(false);
        if open {
            budget().open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One segment file, opened on demand within the process's budget. Clones share the file.
#[derive(Clone)]
pub struct SegmentFile(Arc<Slot>);

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SegmentFile").field(&self.0.path).finish()
    }
}

fn out_of_descriptors(path: &Path, source: std::io::Error) -> StorageError {
    match source.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => StorageError::OutOfDescriptors {
            path: path.to_owned(),
            budget: budget().limit.load(Ordering::Relaxed),
        },
        _ => StorageError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

impl SegmentFile {
    /// Opens `path` for reading and writing, creating it if it does not exist.
    pub fn create(path: PathBuf) -> Result<Self, StorageError> {
        let slot = Arc::new(Slot {
            path,
            file: Mutex::new(None),
            dirty: AtomicBool::new(false),
            used: AtomicU64::new(0),
        });
        let file = SegmentFile(slot);
        file.open(true)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The open file, reopened (never created again: a file deleted meanwhile is an error)
    /// when the budget closed it.
    pub fn file(&self) -> Result<Arc<File>, StorageError> {
        self.touch();
        if let Some(file) = self.lock().as_ref() {
            return Ok(file.clone());
        }
        self.open(false)
    }

    /// The file if it is open now: for hints (writeback) that are not worth a reopen.
    pub fn if_open(&self) -> Option<Arc<File>> {
        self.lock().clone()
    }

    pub fn write_all_at(&self, bytes: &[u8], position: u64) -> Result<(), StorageError> {
        super::faults::check_write(&self.0.path).at(&self.0.path)?;
        let result = self.file()?.write_all_at(bytes, position).at(&self.0.path);
        // After the write, so a sync that clears the flag first cannot miss it.
        self.0.dirty.store(true, Ordering::Release);
        result
    }

    pub fn read_exact_at(&self, out: &mut [u8], position: u64) -> Result<(), StorageError> {
        self.file()?.read_exact_at(out, position).at(&self.0.path)
    }

    pub fn set_len(&self, len: u64) -> Result<(), StorageError> {
        let result = self.file()?.set_len(len).at(&self.0.path);
        self.0.dirty.store(true, Ordering::Release);
        result
    }

    pub fn file_len(&self) -> Result<u64, StorageError> {
        Ok(self.file()?.metadata().at(&self.0.path)?.len())
    }

    /// fsyncs the file's data if anything was written since its last sync. A file that is not
    /// open was synced when its descriptor was closed.
    pub fn sync_data(&self) -> Result<(), StorageError> {
        self.sync(|f| f.sync_data())
    }

    /// Like [`Self::sync_data`], with the metadata too.
    pub fn sync_all(&self) -> Result<(), StorageError> {
        self.sync(|f| f.sync_all())
    }

    fn sync(&self, how: impl Fn(&File) -> std::io::Result<()>) -> Result<(), StorageError> {
        if !self.0.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let file = match self.if_open() {
            Some(file) => file,
            // Closed without a sync (`fsync = never`): open it again to flush it.
            None => match self.open(false) {
                Ok(file) => file,
                // Deleted meanwhile (retention moved it to the trash): nothing left to flush.
                Err(StorageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(())
                }
                Err(e) => {
                    self.0.dirty.store(true, Ordering::Release);
                    return Err(e);
                }
            },
        };
        how(&file).at(&self.0.path).inspect_err(|_| {
            self.0.dirty.store(true, Ordering::Release);
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<File>>> {
        self.0.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        let now = budget().clock.fetch_add(1, Ordering::Relaxed);
        self.0.used.store(now, Ordering::Relaxed);
    }

    /// Opens the file, first closing others if the budget is spent. Holds no slot's lock while
    /// choosing a victim, so two threads opening files cannot wait on each other.
    fn open(&self, create: bool) -> Result<Arc<File>, StorageError> {
        let budget = budget();
        // Others open files concurrently: evict until there is room, unless nothing can go.
        while budget.open.load(Ordering::Relaxed) >= budget.limit.load(Ordering::Relaxed) {
            if !evict_one(&self.0)? {
                break;
            }
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&self.0.path);
        let opened = match opened {
            Ok(file) => Arc::new(file),
            Err(e) => return Err(out_of_descriptors(&self.0.path, e)),
        };
        let mut slot = self.lock();
        if let Some(file) = slot.as_ref() {
            // Another thread opened it meanwhile: keep one descriptor.
            return Ok(file.clone());
        }
        *slot = Some(opened.clone());
        drop(slot);
        budget.open.fetch_add(1, Ordering::Relaxed);
        budget
            .open_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&self.0));
        self.touch();
        Ok(opened)
    }
}

/// Closes the least recently used open file among a window of candidates, preferring one with
/// nothing unsynced (a dirty one is synced first); `false` when no file could be closed (none
/// open but `keep`, or all busy). Slots of dropped segments are pruned as they are met.
fn evict_one(keep: &Arc<Slot>) -> Result<bool, StorageError> {
    let budget = budget();
    let victim = {
        let mut slots = budget.open_slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.is_empty() {
            return Ok(false);
        }
        let start = budget.cursor.fetch_add(WINDOW, Ordering::Relaxed) % slots.len();
        // (position in `open_slots`, slot, dirty, last use) of up to WINDOW candidates; dead
        // entries met on the way are dropped afterwards.
        let mut dead = Vec::new();
        let mut best: Option<(usize, Arc<Slot>, bool, u64)> = None;
        let mut seen = 0;
        for step in 0..slots.len() {
            if seen == WINDOW {
                break;
            }
            let at = (start + step) % slots.len();
            let Some(slot) = slots[at].upgrade() else {
                dead.push(at);
                continue;
            };
            if Arc::ptr_eq(&slot, keep) || !slot.file.try_lock().is_ok_and(|f| f.is_some()) {
                continue;
            }
            seen += 1;
            let key = (
                slot.dirty.load(Ordering::Acquire),
                slot.used.load(Ordering::Relaxed),
            );
            // Clean before dirty, then least recently used.
            if best.as_ref().is_none_or(|b| key < (b.2, b.3)) {
                best = Some((at, slot, key.0, key.1));
            }
        }
        let chosen = best.map(|(at, slot, _, _)| {
            dead.push(at);
            slot
        });
        dead.sort_unstable();
        for at in dead.into_iter().rev() {
            slots.swap_remove(at);
        }
        chosen
    };
    let Some(victim) = victim else {
        return Ok(false);
    };
    let Ok(mut file) = victim.file.try_lock() else {
        return Ok(false);
    };
    let Some(open) = file.take() else {
        // Closed by another thread meanwhile: room was made all the same.
        return Ok(true);
    };
    // Without a sync the file stays dirty, for the next sync to open and flush.
    let sync = budget.sync_on_close.load(Ordering::Relaxed);
    if sync && victim.dirty.swap(false, Ordering::AcqRel) {
        if let Err(e) = open.sync_data().at(&victim.path) {
            victim.dirty.store(true, Ordering::Release);
            *file = Some(open);
            drop(file);
            budget
                .open_slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&victim));
            return Err(e);
        }
    }
    budget.open.fetch_sub(1, Ordering::Relaxed);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget is process-wide; this test owns it while it runs (other unit tests only ever
    /// see an unlimited budget, and a lower limit only costs them reopens).
    #[test]
    fn files_beyond_the_budget_are_closed_and_reopen_with_their_data() {
        let dir = tempfile::tempdir().unwrap();
        set_limit(8);
        let files: Vec<SegmentFile> = (0..40)
            .map(|i| SegmentFile::create(dir.path().join(format!("{i}.log"))).unwrap())
            .collect();
        for (i, file) in files.iter().enumerate() {
            file.write_all_at(format!("file {i}").as_bytes(), 0)
                .unwrap();
        }
        let open = files.iter().filter(|f| f.if_open().is_some()).count();
        assert!(open <= 8, "{open} files open with a budget of 8");
        for (i, file) in files.iter().enumerate() {
            let mut back = vec![0u8; format!("file {i}").len()];
            file.read_exact_at(&mut back, 0).unwrap();
            assert_eq!(back, format!("file {i}").as_bytes());
            file.sync_data().unwrap();
        }
        // A file removed while closed is not created again by a read.
        let gone = &files[0];
        std::fs::remove_file(gone.path()).unwrap();
        if gone.lock().take().is_some() {
            budget().open.fetch_sub(1, Ordering::Relaxed);
        }
        assert!(gone.file().is_err());
        assert!(!gone.path().exists());
        set_limit(usize::MAX);
    }

    /// `fsync = never` closes written files without a sync; a sync asked for later must still
    /// flush them, or a storage checkpoint would vouch for bytes still only in the page cache.
    #[test]
    fn a_file_closed_without_a_sync_is_opened_again_to_be_synced() {
        let dir = tempfile::tempdir().unwrap();
        set_limit(2);
        set_sync_on_close(false);
        let written = |name: &str| {
            let file = SegmentFile::create(dir.path().join(name)).unwrap();
            file.write_all_at(b"unsynced", 0).unwrap();
            file
        };
        let (first, second) = (written("first"), written("second"));
        // A third evicts the least recently used of two written files, without syncing it.
        let _third = written("third");
        assert!(first.if_open().is_none(), "the oldest is closed");
        first.sync_data().unwrap();
        assert!(first.if_open().is_some(), "opened again to be flushed");
        // Flushed: the next sync has nothing to do and opens nothing.
        assert!(second.if_open().is_none());
        second.sync_data().unwrap();
        assert!(second.if_open().is_some());
        let _fourth = written("fourth");
        let _fifth = written("fifth");
        assert!(first.if_open().is_none());
        first.sync_data().unwrap();
        assert!(
            first.if_open().is_none(),
            "a clean file is not opened to be synced"
        );
        // A written file deleted while closed has nothing left to flush, and is not created.
        second.write_all_at(b"more", 8).unwrap();
        let _sixth = written("sixth");
        let _seventh = written("seventh");
        assert!(second.if_open().is_none());
        std::fs::remove_file(second.path()).unwrap();
        second.sync_data().unwrap();
        assert!(!second.path().exists());
        set_sync_on_close(true);
        set_limit(usize::MAX);
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::*;

    #[test]
    fn concurrent_creates_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        set_limit(50);
        let files: Vec<SegmentFile> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let dir = dir.path().to_owned();
                    scope.spawn(move || {
                        (0..60)
                            .map(|i| SegmentFile::create(dir.join(format!("{t}-{i}"))).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let open = files.iter().filter(|f| f.if_open().is_some()).count();
        // Each of the 16 threads may open one file past the budget while others evict.
        assert!(
            open <= 66,
            "{open} open with a budget of 50 (count {})",
            open_count()
        );
    }
}
