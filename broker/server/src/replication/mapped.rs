//! Prepare bodies read from the WAL file they were written to, through a read-only shared
//! mapping, so the core's log need not keep them in the heap.
//!
//! The core keeps every prepare since its last checkpoint (for repairs, retransmissions and
//! view changes); with megabyte batches that was ~65 MiB per replica, kept even when idle.
//! Once an op is written and applied, the driver hands the core a body backed by the WAL file
//! instead ([`vsr::Replica::adopt_body`]) and the heap copy is freed. The pages belong to the
//! page cache: they count towards the process only while it reads them (a repair, a view
//! change), and the kernel may drop them under memory pressure and read them back later — the
//! WAL is the copy of record either way.
//!
//! Safe because WAL files are written front to back and never truncated (a truncation is a
//! record), a mapping only covers bytes already written, and a file is overwritten from the
//! start (recycled, `journal.rs`) only once no mapping of it is left: every mapping holds its
//! file's [`FileHold`] until it is unmapped. Deleting a mapped file is harmless on Linux: the
//! mapping keeps its pages until the last body referring to it is dropped. Something outside
//! the broker shrinking a WAL file would make a read of a mapped body fault, as it would
//! corrupt any database's files.
//!
//! A mapped body is read from the page cache, so rot on the disk under a page the kernel
//! dropped can show up in it after it was verified; the driver verifies such bodies again
//! before sending or rewriting them, and stops the replica if one fails
//! (`Driver::check_read_back`).
//!
//! Mappings are unmapped on a thread of their own (`vsr-unmap`, at idle priority:
//! `crate::reclaim`): the last mapping of a WAL file the collector has deleted holds the
//! file's pages, and unmapping it frees them — 10–25 ms for 64 MiB on tmpfs, the cost
//! `vsr-journal-gc` was created to keep off the hot threads. Without this the replica thread
//! paid it when a checkpoint trimmed the log (measured: 4–28 ms steps at every checkpoint on
//! the primary, the one slow request in 64).

use crate::reclaim::Reclaimer;
use bytes::Bytes;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

/// Bodies smaller than this stay in the heap: a mapping costs two system calls and a kernel
/// object, worth it for the large batches that made up the memory, not for a 100-byte op.
/// With the broker's checkpoint interval the heap keeps at most ~1 MiB of such bodies.
pub const MAP_MIN: usize = 16 << 10;

/// Whether anything is still mapped from one file: every mapping made from the file holds a
/// clone until it is unmapped, and the journal keeps one for as long as it knows the file.
#[derive(Clone, Debug, Default)]
pub struct FileHold(Arc<()>);

impl FileHold {
    /// True while a mapping of the file exists (mapped bodies are unmapped in the background,
    /// so this turns false a little after the last body is dropped).
    pub fn is_mapped(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

/// A read-only mapping of part of a file; unmapped when dropped.
struct Mapping {
    base: *mut libc::c_void,
    mapped_len: usize,
    /// Where the requested bytes start inside the mapping (the offset rounded down to a page).
    skip: usize,
    len: usize,
    /// Released after the unmap, not before: until then the file must not be overwritten.
    hold: FileHold,
}

// The mapping is read-only and owned by this value alone: sharing or moving it across threads
// is as safe as sharing a `&[u8]`.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `base..base + mapped_len` is a live PROT_READ mapping (see `map`), and
        // `skip + len <= mapped_len`.
        unsafe { std::slice::from_raw_parts((self.base as *const u8).add(self.skip), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let region = (self.base as usize, self.mapped_len);
        let hold = self.hold.clone();
        unmapper().submit(move || {
            unmap(region);
            drop(hold);
        });
    }
}

/// `(address, length)` of a mapping nothing refers to any more.
type Region = (usize, usize);

fn unmap((base, len): Region) {
    // SAFETY: `Region`s come only from dropped `Mapping`s: exactly a mapping `map` created, which
    // nothing refers to any more.
    unsafe {
        libc::munmap(base as *mut libc::c_void, len);
    }
}

/// The unmapping thread, started on first use, at idle priority (`crate::reclaim`). Up to
/// four checkpoint intervals' worth of bodies wait for it; past that, the dropping thread
/// unmaps.
fn unmapper() -> &'static Reclaimer {
    static UNMAPPER: OnceLock<Reclaimer> = OnceLock::new();
    UNMAPPER.get_or_init(|| Reclaimer::start("vsr-unmap", 256))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// Whether a body of `len` bytes is mapped from the WAL once written ([`MAP_MIN`]): any body
/// the log holds may be a mapping only if this says so.
pub fn worth_mapping(len: usize) -> bool {
    len >= MAP_MIN
}

/// The first of `prepares` that was read back from the WAL (a body large enough to be mapped,
/// of an op at or below `through`: applied or replayed) and no longer verifies.
pub fn rotten<'a>(
    prepares: impl IntoIterator<Item = &'a vsr::Prepare>,
    through: vsr::Op,
) -> Option<&'a vsr::Prepare> {
    prepares
        .into_iter()
        .find(|p| worth_mapping(p.body.len()) && p.op() <= through && !p.verify())
}

/// Stops the replica over `prepare`, read back from the WAL and no longer matching its
/// checksum (see `Driver::check_read_back`).
pub fn stop_over_rot(prepare: &vsr::Prepare) -> ! {
    super::fail_stop(&format!(
        "op {}'s prepare, read back from the WAL, no longer matches its checksum \
         (corrupted on disk or in the page cache); a restart repairs the WAL record \
         from the peers",
        prepare.op()
    ))
}

/// A body of `len` bytes at `offset` in `file`, mapped if it is large enough to be worth it
/// ([`MAP_MIN`]); `None` keeps the caller's heap copy (more memory, nothing wrong).
pub fn map_large(file: &File, hold: &FileHold, offset: u64, len: usize) -> Option<Bytes> {
    if !worth_mapping(len) {
        return None;
    }
    map(file, hold, offset, len)
        .inspect_err(|e| tracing::debug!(offset, len, "cannot map a WAL body: {e}"))
        .ok()
}

/// `len` bytes of `file` from `offset`, which the caller has written already, as [`Bytes`]
/// backed by a shared read-only mapping, holding `hold` (the file's) until it is unmapped. The
/// file must be open for reading.
pub fn map(file: &File, hold: &FileHold, offset: u64, len: usize) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let skip = usize::try_from(offset % page_size() as u64).unwrap_or(0);
    let start = offset - skip as u64;
    let mapped_len = skip + len;
    let start = libc::off_t::try_from(start)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh mapping chosen by the kernel; on failure nothing was mapped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapped_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Bytes::from_owner(Mapping {
        base,
        mapped_len,
        skip,
        len,
        hold: hold.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_range_reads_what_was_written_and_outlives_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("wal");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .expect("open");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).expect("write");
        // Unaligned on both ends, spanning pages.
        let hold = FileHold::default();
        let body = map(&file, &hold, 4097, 9000).expect("map");
        assert_eq!(&body[..], &data[4097..13097]);
        let slice = body.slice(10..20);
        drop(body);
        std::fs::remove_file(&path).expect("remove");
        drop(file);
        assert_eq!(&slice[..], &data[4107..4117]);
        assert!(
            map(&std::fs::File::open(dir.path()).expect("dir"), &hold, 0, 0)
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn dropped_mappings_are_unmapped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("wal-unmapped");
        std::fs::write(&path, vec![7u8; 64 << 10]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let mapped_here = || {
            std::fs::read_to_string("/proc/self/maps")
                .expect("maps")
                .lines()
                .filter(|line| line.ends_with("wal-unmapped"))
                .count()
        };
        let hold = FileHold::default();
        assert!(!hold.is_mapped());
        let bodies: Vec<Bytes> = (0..8)
            .map(|i| map(&file, &hold, i * 4096, 4096).expect("map"))
            .collect();
        assert!(bodies.iter().all(|b| b.iter().all(|&x| x == 7)));
        assert!(mapped_here() >= 1);
        assert!(hold.is_mapped());
        drop(bodies);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // The hold is let go only after the unmap.
        while hold.is_mapped() {
            assert!(std::time::Instant::now() < deadline, "still held");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(mapped_here(), 0);
    }
}
