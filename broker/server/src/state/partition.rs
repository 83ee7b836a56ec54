//! A partition as the broker uses it: its log and consumer offsets behind short-held locks,
//! plus the group commit that makes `fsync = always` affordable. The partition owns the
//! durability decision: an append returns at once with its write sequence number, and
//! [`Partition::persisted`] waits for whatever the fsync policy promises for it.
//!
//! Group commit: an appender writes under the log lock and takes a sequence number, releases the
//! lock, then waits until a sync covering that number completes. Only one fsync runs at a time
//! per partition; whoever runs it first reads the newest sequence number, so every append that
//! landed before the fsync started is covered by it and its writer returns without another.

use crate::config::FsyncPolicy;
use crate::storage::dedup::Deduplication;
use crate::storage::offsets::ConsumerOffsets;
use crate::storage::partition_log::{Appended, PartitionLog, ReadPlan, Unpublished};
use crate::storage::{fsutil, StorageError};
use iggy_wire::ConsumerKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct Partition {
    pub id: u32,
    pub created_at: u64,
    log: Mutex<PartitionLog>,
    consumer_offsets: Mutex<ConsumerOffsets>,
    group_offsets: Mutex<ConsumerOffsets>,
    /// Highest append sequence number known to be on disk.
    durable_seq: AtomicU64,
    /// Highest append sequence number whose writeback was started ([`Self::start_writeback`]).
    writeback_seq: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// Set when an fsync failed: the page cache may have dropped the dirty pages, so nothing
    /// written since can be promised durable (the "fsyncgate" lesson). Cleared only by restart.
    poisoned: AtomicBool,
    /// `fsync = always`: an append is acknowledged only once it is on disk.
    sync_appends: bool,
    /// On a replica: the log's next offset at the last two checkpoints the core captured
    /// (older, newer). Restoring a checkpoint needs its last message on local disk, and the
    /// durable checkpoint may still be the older one, so tiering evicts only segments that end
    /// before both (`tiering::uploader`). (0, 0) until captures happen: nothing is evicted.
    checkpoints: std::sync::Mutex<(u64, u64)>,
    /// Held by whoever writes the partition's checkpoint (a running checkpoint, the clean
    /// shutdown): both stage the same temporary file.
    checkpoint_writer: std::sync::Mutex<()>,
}

impl Partition {
    /// Wraps an opened log and loads the partition's stored consumer and group offsets.
    pub fn new(
        id: u32,
        created_at: u64,
        log: PartitionLog,
        fsync: FsyncPolicy,
    ) -> Result<Self, StorageError> {
        let seq = log.write_seq();
        let sync_appends = fsync == FsyncPolicy::Always;
        let consumer_offsets = ConsumerOffsets::load(log.dir(), sync_appends)?;
        let group_offsets = ConsumerOffsets::load_groups(log.dir(), sync_appends)?;
        Ok(Self {
            id,
            created_at,
            log: Mutex::new(log),
            consumer_offsets: Mutex::new(consumer_offsets),
            group_offsets: Mutex::new(group_offsets),
            durable_seq: AtomicU64::new(seq),
            writeback_seq: AtomicU64::new(seq),
            sync_lock: tokio::sync::Mutex::new(()),
            poisoned: AtomicBool::new(false),
            sync_appends,
            checkpoints: std::sync::Mutex::new((0, 0)),
            checkpoint_writer: std::sync::Mutex::new(()),
        })
    }

    /// The log, for short non-blocking work. A panic while holding it cannot leave the log
    /// half-updated in memory (appends update memory only after the write succeeded), so a
    /// poisoned mutex is safe to keep using.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stored offsets of standalone consumers or of consumer groups.
    pub fn offsets(&self, kind: ConsumerKind) -> MutexGuard<'_, ConsumerOffsets> {
        let offsets = match kind {
            ConsumerKind::Consumer => &self.consumer_offsets,
            ConsumerKind::Group => &self.group_offsets,
        };
        offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self) -> PathBuf {
        self.log().dir().to_owned()
    }

    /// Appends a validated batch, stamping it with `timestamp` and, for messages sent with id
    /// 0, ids from `new_id`. Returns once it is written; [`Self::persisted`] waits for the
    /// durability the policy promises.
    ///
    /// With `dedup`, messages whose id one of the partition's newest messages carries are
    /// dropped first (`storage::dedup`); the second value is how many were.
    pub fn append(
        &self,
        messages: &mut [u8],
        timestamp: u64,
        new_id: impl FnMut() -> u128,
        dedup: Option<&Deduplication>,
    ) -> Result<(Appended, u32), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned { path: self.dir() });
        }
        let mut log = self.log();
        match dedup {
            Some(settings) => log.append_deduplicated(messages, timestamp, new_id, settings),
            None => Ok((log.append(messages, timestamp, new_id)?, 0)),
        }
    }

    /// Writes a stamped batch past the log's end without taking it in, for [`Self::publish`]
    /// to take in later (`storage::partition_log::unpublished`, a replicated primary's
    /// write ahead of the commit). `None` when the batch would start a new segment.
    pub fn write_unpublished(
        &self,
        messages: &mut [u8],
        timestamp: u64,
        new_id: impl FnMut() -> u128,
    ) -> Result<Option<Unpublished>, StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned { path: self.dir() });
        }
        self.log().write_unpublished(messages, timestamp, new_id)
    }

    /// Takes in a batch [`Self::write_unpublished`] wrote: `None` when the log changed since,
    /// and the batch must be appended the ordinary way.
    pub fn publish(
        &self,
        batch: Unpublished,
        messages: &[u8],
        timestamp: u64,
    ) -> Result<Option<Appended>, StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned { path: self.dir() });
        }
        self.log().publish(batch, messages, timestamp)
    }

    /// Returns once the append numbered `seq` is as durable as the fsync policy promises: on
    /// disk under `always` (group commit), at once otherwise.
    pub async fn persisted(&self, seq: u64) -> Result<(), StorageError> {
        if self.sync_appends {
            self.sync_through(seq).await
        } else {
            Ok(())
        }
    }

    /// Waits until every append up to `seq` is on disk, fsyncing if nobody else is.
    pub async fn sync_through(&self, seq: u64) -> Result<(), StorageError> {
        loop {
            if self.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            let _turn = self.sync_lock.lock().await;
            if self.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            let (target, file) = {
                let log = self.log();
                (log.write_seq(), log.active_log())
            };
            let synced = tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .map_err(|e| StorageError::Io {
                    path: self.dir(),
                    source: std::io::Error::other(e),
                })?;
            synced.map_err(|e| self.poison(e))?;
            self.durable_seq.fetch_max(target, Ordering::AcqRel);
        }
    }

    /// fsyncs whatever is dirty (interval policy, FlushUnsavedBuffer with fsync).
    pub async fn sync_now(&self) -> Result<(), StorageError> {
        let seq = self.log().write_seq();
        self.sync_through(seq).await
    }

    /// Asks the kernel to start writing the active segment's dirty pages to disk now, without
    /// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the replication journal does this
    /// after each group of writes, so the checkpoint's fsync every few dozen ops finds most of
    /// its megabytes already on their way instead of stalling the journal for all of them. A
    /// hint only; durability still comes from [`Self::sync_written`].
    pub fn start_writeback(&self) {
        let (written, file) = {
            let log = self.log();
            let written = log.write_seq();
            if self.writeback_seq.load(Ordering::Acquire) >= written {
                return;
            }
            (written, log.active_log())
        };
        // A file the descriptor budget closed was synced then: nothing to start.
        let Some(file) = file.if_open() else {
            self.writeback_seq.fetch_max(written, Ordering::AcqRel);
            return;
        };
        // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&*file),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.writeback_seq.fetch_max(written, Ordering::AcqRel);
    }

    /// Blocking: fsyncs every segment if anything was appended since the last sync, so a
    /// replication checkpoint (which names this log's end) costs idle partitions nothing. The
    /// fsyncs run outside the partition's lock: a checkpoint's sync of tens of megabytes must
    /// not hold up the appends applied meanwhile (they are newer than `written` and not
    /// claimed durable by this sync).
    pub fn sync_written(&self) -> Result<(), StorageError> {
        let (written, handles) = {
            let log = self.log();
            let written = log.write_seq();
            if self.durable_seq.load(Ordering::Acquire) >= written {
                return Ok(());
            }
            (written, log.sync_handles())
        };
        for file in handles {
            file.sync_data()?;
        }
        self.durable_seq.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// Blocking: moves the partition's checkpoint up to what it has written while it keeps
    /// taking appends — the record a clean shutdown writes, taken every
    /// `storage.checkpoint_interval` — so a boot after a crash verifies only what came after.
    /// The files written since the last checkpoint are fsynced and the new record staged
    /// outside the lock; it replaces the old one only if the log was not cut meanwhile and
    /// still lives at its path. Returns whether it wrote one: not when nothing was appended
    /// since, nor when a cut or a deletion got in between.
    pub fn checkpoint_running(&self) -> Result<bool, StorageError> {
        let _writer = self.checkpoint_writer();
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned { path: self.dir() });
        }
        let (due, dir) = {
            let log = self.log();
            let Some(due) = log.checkpoint_due() else {
                return Ok(false);
            };
            (due, log.dir().to_owned())
        };
        for file in &due.files {
            file.sync_data().map_err(|e| self.poison(e))?;
        }
        self.durable_seq.fetch_max(due.write_seq, Ordering::AcqRel);
        let staged = due.checkpoint.stage(&dir)?;
        if !self.log().install_checkpoint(&due, staged)? {
            return Ok(false);
        }
        fsutil::sync_dir(&dir)?;
        Ok(true)
    }

    /// After a failed fsync: the kernel may have dropped the pages it failed to write, so
    /// nothing written since can be promised durable, let alone checkpointed; the partition
    /// refuses writes until restart. Returns the error.
    fn poison(&self, error: StorageError) -> StorageError {
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(error = %error, "fsync failed; partition refuses writes until restart");
        error
    }

    fn checkpoint_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.checkpoint_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A checkpoint captured the log at `next_offset` (replicas only).
    pub fn note_checkpoint(&self, next_offset: u64) {
        let mut checkpoints = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        *checkpoints = (checkpoints.1, next_offset);
    }

    /// Segments ending below this may leave local disk on a replica (see `checkpoints`).
    pub fn eviction_floor(&self) -> u64 {
        let checkpoints = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        checkpoints.0.min(checkpoints.1)
    }

    /// Plans a read under the lock; the caller performs it after the lock is released.
    pub fn plan_read(
        &self,
        offset: u64,
        count: u32,
        max_bytes: usize,
    ) -> Result<(ReadPlan, u64), StorageError> {
        let log = self.log();
        Ok((
            log.plan_read(offset, count, max_bytes)?,
            log.current_offset(),
        ))
    }

    /// [`Self::plan_read`] for a consumer's poll: what L1 holds is served from memory.
    pub fn plan_poll(
        &self,
        offset: u64,
        count: u32,
        max_bytes: usize,
    ) -> Result<(ReadPlan, u64), StorageError> {
        let log = self.log();
        Ok((
            log.plan_poll(offset, count, max_bytes)?,
            log.current_offset(),
        ))
    }

    /// Clean shutdown: everything to disk, then the checkpoint that spares the next boot a
    /// full verification.
    pub fn shutdown(&self) -> Result<(), StorageError> {
        let _writer = self.checkpoint_writer();
        let mut log = self.log();
        if !log.needs_checkpoint() {
            return Ok(());
        }
        log.sync_all()?;
        log.write_checkpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::checkpoint::{self, Checkpoint};
    use crate::storage::partition_log::tests::batch;

    /// Bytes of one stored 100-byte message (header + payload).
    const MESSAGE: u64 = 64 + 100;

    fn partition(dir: &std::path::Path) -> Partition {
        let log = PartitionLog::create(dir, 1 << 20, false).unwrap();
        Partition::new(0, 0, log, FsyncPolicy::Never).unwrap()
    }

    /// Reopens the partition's files as a boot after a crash does (nothing was shut down).
    fn boot_after_crash(dir: &std::path::Path) -> (PartitionLog, u64) {
        let (log, report) = PartitionLog::open(dir, 1 << 20, false).unwrap();
        (log, report.verified_bytes)
    }

    #[test]
    fn a_running_checkpoint_spares_a_boot_after_a_crash_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition(dir.path());
        assert!(
            !partition.checkpoint_running().unwrap(),
            "an empty log needs no checkpoint"
        );
        partition
            .append(&mut batch(10, 100), 1, || 7, None)
            .unwrap();
        assert!(partition.checkpoint_running().unwrap());
        assert_eq!(
            Checkpoint::load(dir.path()),
            Some(Checkpoint {
                segment_start: 0,
                position: 10 * MESSAGE
            })
        );
        assert!(
            !partition.checkpoint_running().unwrap(),
            "nothing was written since"
        );
        partition.append(&mut batch(3, 100), 1, || 7, None).unwrap();
        drop(partition);
        let (log, verified) = boot_after_crash(dir.path());
        assert_eq!(verified, 3 * MESSAGE, "only what came after the checkpoint");
        assert_eq!(log.messages_count(), 13);
    }

    #[test]
    fn a_running_checkpoint_captured_before_a_cut_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition(dir.path());
        partition
            .append(&mut batch(10, 100), 1, || 7, None)
            .unwrap();
        assert!(partition.checkpoint_running().unwrap());
        let at_ten = Checkpoint::load(dir.path());
        partition.append(&mut batch(5, 100), 1, || 7, None).unwrap();
        // Captured at 15 messages; the log is cut back to 12 and written again before the
        // record is installed, as a replica restoring its replication checkpoint would.
        let due = partition.log().checkpoint_due().unwrap();
        let staged = due.checkpoint.stage(dir.path()).unwrap();
        partition.log().truncate_to(12).unwrap();
        assert_eq!(
            Checkpoint::load(dir.path()),
            at_ten,
            "a checkpoint below the cut still holds"
        );
        partition.append(&mut batch(3, 100), 1, || 7, None).unwrap();
        assert!(!partition.log().install_checkpoint(&due, staged).unwrap());
        assert_eq!(Checkpoint::load(dir.path()), at_ten);
        drop(partition);
        let (log, verified) = boot_after_crash(dir.path());
        assert_eq!(verified, 5 * MESSAGE, "everything after the tenth message");
        assert_eq!(log.messages_count(), 15);
    }

    #[test]
    fn a_cut_below_the_checkpoint_removes_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition(dir.path());
        partition
            .append(&mut batch(10, 100), 1, || 7, None)
            .unwrap();
        assert!(partition.checkpoint_running().unwrap());
        partition.log().truncate_to(8).unwrap();
        assert!(!dir.path().join(checkpoint::FILE_NAME).exists());
        partition.append(&mut batch(4, 100), 1, || 7, None).unwrap();
        drop(partition);
        let (log, verified) = boot_after_crash(dir.path());
        assert_eq!(verified, 12 * MESSAGE, "everything is verified again");
        assert_eq!(log.messages_count(), 12);
    }

    #[test]
    fn a_running_checkpoint_is_not_installed_into_a_partition_created_at_the_same_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("p");
        let old = partition(&dir);
        old.append(&mut batch(10, 100), 1, || 7, None).unwrap();
        let due = old.log().checkpoint_due().unwrap();
        // Deleted (a replica buries the directory) and created again at the same path while
        // the pass fsynced; the record is staged into the new directory.
        std::fs::rename(&dir, root.path().join("buried")).unwrap();
        let new = partition(&dir);
        new.append(&mut batch(2, 100), 1, || 7, None).unwrap();
        let staged = due.checkpoint.stage(&dir).unwrap();
        assert!(!old.log().install_checkpoint(&due, staged).unwrap());
        assert_eq!(Checkpoint::load(&dir), None);
        drop((old, new));
        let (log, verified) = boot_after_crash(&dir);
        assert_eq!(verified, 2 * MESSAGE);
        assert_eq!(log.messages_count(), 2);
    }

    #[test]
    fn a_poisoned_partition_is_not_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let partition = partition(dir.path());
        partition.append(&mut batch(2, 100), 1, || 7, None).unwrap();
        partition.poisoned.store(true, Ordering::Release);
        assert!(matches!(
            partition.checkpoint_running(),
            Err(StorageError::Poisoned { .. })
        ));
        assert_eq!(Checkpoint::load(dir.path()), None);
    }
}
