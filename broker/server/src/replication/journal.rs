//! The replication core's storage on disk: superblock copies, the WAL with its header ring, and
//! checkpoints — the files behind `vsr::DiskImage` and the core's write outputs.
//!
//! Layout under `<system.path>/vsr/`:
//! * `superblock`: [`SUPERBLOCK_COPIES`] fixed-size copies, each rewritten in full (in place)
//!   by every superblock write; recovery takes the newest copy that verifies. Copies are
//!   [`SUPERBLOCK_SIZE`] bytes and marked [`SUPERBLOCK_LAYOUT`] at byte 62; builds before the
//!   epoch start's checksum was recorded wrote unmarked copies of half that size, with the same
//!   fields up to byte 62. A file of theirs reads as such, and this build's first superblock
//!   write rewrites it in its own layout. (An older build reads this build's copies only while
//!   they record no start checksum, i.e. in the first configuration: do not downgrade a
//!   replica across this once its cluster has reconfigured.)
//! * `wal-<seq>.log`: record files, written front to back. A WAL write appends the prepare's record and
//!   then its header record (slot, op, checksum): the header is the header ring's entry, and
//!   because it lands after the prepare it proves the prepare was written completely, which is
//!   how recovery tells a torn tail (no header, discard) from a prepare that rotted after it
//!   was acknowledged (header without a valid prepare: repair it from a peer). A log installed
//!   by a view change appends a truncate record and then its entries. Replaying the records in
//!   order rebuilds the slot map the core's disk model describes. A file is obsolete once every
//!   op it holds (in a prepare or a header record) is at or below the durable checkpoint, and
//!   so is every file before it (a truncation must outlive the records it cancels).
//! * `spare-<seq>.wal`: obsolete WAL files kept (up to [`SPARE_WAL_FILES`]) to be written over
//!   as later WAL files, instead of deleted. Writing a megabyte into pages the file already has
//!   costs about half of writing it into new ones (the kernel allocates, zeroes and charges
//!   every new page: docs/benchmarks.md, 2026-12-05), and every replica writes each batch into
//!   its WAL. A spare is taken only once no body mapped from it is left ([`FileHold`]); replay
//!   never reads spares.
//! * `checkpoint-<op>`: a checkpoint (its own checksum inside), written before any superblock
//!   names it; older ones are deleted once a newer one is named.
//!
//! Once written, a large prepare body is handed back mapped from its file
//! ([`Journal::write_all`], `mapped.rs`) for the core's log to hold instead of the heap copy.
//!
//! Every record is `magic u32, kind u8, len u32, payload, xxh3-64 u64`; the checksum covers
//! kind, len and payload — except in a prepare record (kind 4), where it stops at the end of
//! the prepare's header: the body is covered by the header's own `body_checksum`, which the
//! primary computed once and replay verifies, so the body is not hashed a second time on every
//! write (kind 1, checksummed whole, is still read). A record that fails its checksum is
//! skipped by searching for the next record that verifies, so one damaged prepare costs that
//! prepare (which the header ring then reports as faulty), not everything written after it.
//!
//! The checksum is seeded with the sequence number of the file the record is written to, so
//! what a recycled file still holds past its new end — records written under an older number —
//! does not verify, and reads like a torn tail. Records of builds from before recycling are
//! unseeded (seed 0) and still verify; a file holding any is deleted, never recycled. Sequence
//! numbers only grow (a journal opens its next file above every WAL and spare file present),
//! so no leftover record can verify under the number of the file it sits in.

use super::mapped::{self, FileHold};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vsr::{Checkpoint, DiskImage, Op, Prepare, Superblock};

pub const SUPERBLOCK_COPIES: usize = 4;
const SUPERBLOCK_SIZE: usize = 128;
/// The copy size of builds before [`SUPERBLOCK_LAYOUT`].
const LEGACY_SUPERBLOCK_SIZE: usize = 64;
/// Byte 62 of a copy in this layout (zero in the older one): the copy carries the epoch
/// start's checksum at 64..80.
const SUPERBLOCK_LAYOUT: u8 = 2;
const MAGIC: u32 = 0x5653_524A; // "JRSV"
const RECORD_OVERHEAD: usize = 4 + 1 + 4 + 8;

/// What a WAL record puts around its payload: `magic, kind, len` before it and the checksum
/// after it (see the module docs for what the checksum covers).
struct RecordFrame {
    prefix: [u8; 9],
    checksum: [u8; 8],
    len: usize,
}

impl RecordFrame {
    /// The frame of a record whose payload is `parts` in order, in the WAL file `seq` (the
    /// checksum's seed), with the checksum over the first `covered` bytes of the payload.
    fn new(seq: u64, kind: u8, parts: &[&[u8]], covered: usize) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut prefix = [0u8; 9];
        prefix[..4].copy_from_slice(&MAGIC.to_le_bytes());
        prefix[4] = kind;
        prefix[5..].copy_from_slice(&(len as u32).to_le_bytes());
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(seq);
        hasher.update(&prefix[4..]);
        let mut left = covered;
        for part in parts {
            let take = left.min(part.len());
            hasher.update(&part[..take]);
            left -= take;
        }
        RecordFrame {
            prefix,
            checksum: hasher.digest().to_le_bytes(),
            len,
        }
    }

    /// The record's length in the file.
    fn wire_len(&self) -> usize {
        self.len + RECORD_OVERHEAD
    }
}
/// A WAL file is closed and a new one started once it passes this size.
const WAL_FILE_BYTES: u64 = 64 << 20;
/// Obsolete WAL files kept to be written over (see the module notes); more are deleted. Two
/// cover the files a checkpoint interval of megabyte batches makes obsolete at once.
pub const SPARE_WAL_FILES: usize = 2;
/// No record is larger: a length beyond it is damage, not a record.
const RECORD_MAX: usize = 2 << 30;

/// A prepare whose record checksum covers the whole body too (written by earlier versions).
const KIND_PREPARE: u8 = 1;
const KIND_HEADER: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
/// A prepare whose record checksum stops after the prepare's header (see the module notes).
const KIND_PREPARE_SEALED: u8 = 4;
/// `slot u64, header_len u32` before a prepare record's header.
const PREPARE_PREFIX: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a journal record: {0}")]
    Encode(#[from] postcard::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A prepare body the journal wrote, as bytes mapped from its WAL file (see `mapped.rs`).
#[derive(Debug)]
pub struct WrittenBody {
    pub op: Op,
    pub checksum: u128,
    pub body: bytes::Bytes,
}

/// One write the core asked for (its `Output::Write*`), in the order it was issued.
#[derive(Debug)]
pub enum Write {
    Wal {
        slot: u64,
        prepare: Prepare,
    },
    Checkpoint(Box<Checkpoint>),
    Superblock(Superblock),
    Log {
        superblock: Superblock,
        truncate_after: Op,
        entries: Vec<(u64, Prepare)>,
    },
}

pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    superblock: File,
    wal: File,
    wal_path: PathBuf,
    wal_seq: u64,
    wal_len: u64,
    /// [`WAL_FILE_BYTES`]; tests lower it to rotate often.
    wal_file_bytes: u64,
    /// Held by every body mapped from the open file.
    wal_hold: FileHold,
    /// Closed WAL files, by sequence.
    closed: BTreeMap<u64, Closed>,
    /// Obsolete WAL files waiting to be written over, oldest first.
    spares: Vec<Spare>,
    /// Highest op written in the open file.
    open_max_op: Op,
    /// Data written to the open WAL file since its last fsync.
    wal_dirty: bool,
    /// The checkpoint of the newest durable superblock whose garbage is not yet taken (0: none;
    /// see [`Journal::take_garbage`]).
    garbage_below: Op,
    /// Bodies written since the last [`Journal::write_all`] returned, mapped from their files.
    mapped: Vec<WrittenBody>,
    /// The open file's blocks were all allocated when it opened (reserved, or a recycled
    /// spare): appending to it takes nothing from the filesystem.
    wal_allocated: bool,
    /// What the open file may still take from the filesystem ([`Journal::unallocated`]).
    unallocated: Arc<AtomicU64>,
}

/// A closed WAL file.
#[derive(Debug)]
struct Closed {
    /// The highest op written in it.
    max_op: Op,
    /// Whether every record in it is of this build's kind (seeded), so it may be recycled.
    recyclable: bool,
    hold: FileHold,
}

/// An obsolete WAL file kept to be written over.
#[derive(Debug)]
struct Spare {
    /// The sequence it had as a WAL file: the newest seed of any record in it.
    seq: u64,
    path: PathBuf,
    hold: FileHold,
}

impl Journal {
    pub fn dir(data: &Path) -> PathBuf {
        data.join("vsr")
    }

    /// Opens (creating if needed) the journal in `dir` and reads what it holds. `fsync` false
    /// leaves write-back to the OS (`storage.fsync = never`).
    pub fn open(dir: &Path, fsync: bool) -> Result<(Journal, DiskImage), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let superblock_path = dir.join("superblock");
        let mut superblock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&superblock_path)
            .map_err(io(&superblock_path))?;
        let mut image = DiskImage {
            superblocks: read_superblocks(&mut superblock, &superblock_path)?,
            ..DiskImage::default()
        };
        let files = wal_files(dir)?;
        let mut closed = BTreeMap::new();
        for (seq, path) in &files {
            let hold = FileHold::default();
            let replayed = replay_wal(path, *seq, &mut image, &hold)?;
            closed.insert(
                *seq,
                Closed {
                    max_op: replayed.max_op,
                    recyclable: replayed.recyclable,
                    hold,
                },
            );
        }
        let mut spares: Vec<Spare> = spare_files(dir)?
            .into_iter()
            .map(|(seq, path)| Spare {
                seq,
                path,
                hold: FileHold::default(),
            })
            .collect();
        if let Some(newest) = Superblock::newest(&image.superblocks) {
            if newest.checkpoint > 0 {
                image.checkpoint = read_checkpoint(&checkpoint_path(dir, newest.checkpoint));
            }
        }
        // Above every number a record present may be seeded with (see the module notes).
        let newest = files
            .last()
            .map(|(seq, _)| *seq)
            .into_iter()
            .chain(spares.iter().map(|spare| spare.seq))
            .max();
        let wal_seq = newest.map_or(1, |seq| seq + 1);
        while spares.len() > SPARE_WAL_FILES {
            let _ = std::fs::remove_file(spares.remove(0).path);
        }
        let wal_path = wal_path(dir, wal_seq);
        let mut wal = open_wal_file(&wal_path)?;
        let wal_allocated = reserve_blocks(&wal, &wal_path);
        // A new file, so 0; read rather than assumed, because writes land at this position and
        // the offsets of mapped bodies must be exact.
        let wal_len = wal.metadata().map_err(io(&wal_path))?.len();
        wal.seek(SeekFrom::Start(wal_len)).map_err(io(&wal_path))?;
        sync_dir(dir)?;
        let journal = Journal {
            dir: dir.to_owned(),
            fsync,
            superblock,
            wal,
            wal_path,
            wal_seq,
            wal_len,
            wal_file_bytes: WAL_FILE_BYTES,
            wal_hold: FileHold::default(),
            closed,
            spares,
            open_max_op: 0,
            wal_dirty: false,
            garbage_below: 0,
            mapped: Vec::new(),
            wal_allocated,
            unallocated: Arc::default(),
        };
        journal.publish_unallocated();
        Ok((journal, image))
    }

    /// Bytes the open WAL file may still take from the filesystem as it is appended to: none
    /// when its blocks were allocated as it opened, else what it has yet to write. Published
    /// after every batch of writes and every rotation, so the replica can tell its peers the
    /// room it really has (`space.rs`): a file that grows page by page would otherwise take up
    /// to [`WAL_FILE_BYTES`] from a disk the primary thinks has room for that much data.
    pub fn unallocated(&self) -> Arc<AtomicU64> {
        self.unallocated.clone()
    }

    fn publish_unallocated(&self) {
        let left = match self.wal_allocated {
            true => 0,
            false => self.wal_file_bytes.saturating_sub(self.wal_len),
        };
        self.unallocated.store(left, Ordering::Relaxed);
    }

    /// Carries out `writes` in order and makes them durable (one WAL fsync for the lot: group
    /// commit). A superblock write first makes every WAL record before it durable, so storage
    /// never holds a superblock without the log writes issued ahead of it. Returns the prepare
    /// bodies of at least [`mapped::MAP_MIN`] bytes it wrote, mapped from the WAL.
    pub fn write_all(&mut self, writes: &[Write]) -> Result<Vec<WrittenBody>, JournalError> {
        for write in writes {
            match write {
                Write::Wal { slot, prepare } => self.append_prepare(*slot, prepare)?,
                Write::Checkpoint(checkpoint) => self.write_checkpoint(checkpoint)?,
                Write::Superblock(superblock) => self.write_superblock(superblock)?,
                Write::Log {
                    superblock,
                    truncate_after,
                    entries,
                } => {
                    self.append_record(KIND_TRUNCATE, &truncate_after.to_le_bytes())?;
                    for (slot, prepare) in entries {
                        self.append_prepare(*slot, prepare)?;
                    }
                    self.write_superblock(superblock)?;
                }
            }
        }
        self.sync_wal()?;
        self.publish_unallocated();
        Ok(std::mem::take(&mut self.mapped))
    }

    fn append_prepare(&mut self, slot: u64, prepare: &Prepare) -> Result<(), JournalError> {
        // The body is written from the prepare's own buffer, never copied into the record.
        let head = prepare_head(slot, prepare)?;
        let mut header = [0u8; 32];
        header[..8].copy_from_slice(&slot.to_le_bytes());
        header[8..16].copy_from_slice(&prepare.op().to_le_bytes());
        header[16..].copy_from_slice(&prepare.checksum().to_le_bytes());
        self.rotate_if_full()?;
        // The record checksum covers `head`; the body is vouched for by the header's
        // body_checksum, computed once by the primary.
        let record = RecordFrame::new(
            self.wal_seq,
            KIND_PREPARE_SEALED,
            &[&head, &prepare.body],
            head.len(),
        );
        let body_at = self.wal_len + (record.prefix.len() + head.len()) as u64;
        let prepare_end = self.wal_len + record.wire_len() as u64;
        // Counted in the file the prepare lands in: the header record may open the next one (a
        // file closes at a record boundary past its limit), and a file is obsolete only once
        // every op it holds is at or below the durable checkpoint.
        self.open_max_op = self.open_max_op.max(prepare.op());
        if prepare_end >= self.wal_file_bytes {
            // The header record opens the next file, so the two records are two writes.
            self.write_slices(&[&record.prefix, &head, &prepare.body, &record.checksum])?;
            self.map_written_body(body_at, prepare);
            self.append_record(KIND_HEADER, &header)?;
            // And in the header's file.
            self.open_max_op = self.open_max_op.max(prepare.op());
        } else {
            // Both records in one system call: with small requests a WAL write used to be
            // eight `write`s, the largest single cost of the primary's replica thread
            // (docs/benchmarks.md, 2026-12-05, "One write per WAL append").
            let header_record = RecordFrame::new(self.wal_seq, KIND_HEADER, &[&header], 32);
            self.write_slices(&[
                &record.prefix,
                &head,
                &prepare.body,
                &record.checksum,
                &header_record.prefix,
                &header,
                &header_record.checksum,
            ])?;
            self.map_written_body(body_at, prepare);
        }
        Ok(())
    }

    /// Hands a large body just written at `offset` of the open file back mapped from it.
    fn map_written_body(&mut self, offset: u64, prepare: &Prepare) {
        if let Some(body) = mapped::map_large(&self.wal, &self.wal_hold, offset, prepare.body.len())
        {
            self.mapped.push(WrittenBody {
                op: prepare.op(),
                checksum: prepare.checksum(),
                body,
            });
        }
    }

    fn append_record(&mut self, kind: u8, payload: &[u8]) -> Result<(), JournalError> {
        self.rotate_if_full()?;
        let record = RecordFrame::new(self.wal_seq, kind, &[payload], payload.len());
        self.write_slices(&[&record.prefix, payload, &record.checksum])
    }

    fn rotate_if_full(&mut self) -> Result<(), JournalError> {
        if self.wal_len >= self.wal_file_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Appends `slices` to the open WAL file, in order, in as few system calls as it takes.
    fn write_slices(&mut self, slices: &[&[u8]]) -> Result<(), JournalError> {
        let mut io_slices: Vec<std::io::IoSlice<'_>> =
            slices.iter().map(|s| std::io::IoSlice::new(s)).collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut left: &mut [std::io::IoSlice<'_>] = &mut io_slices;
        // Dirty before the first byte: a failed write may still have written part of it.
        self.wal_dirty = true;
        while !left.is_empty() {
            match self.wal.write_vectored(left) {
                Ok(0) => {
                    return Err(io(&self.wal_path)(std::io::Error::from(
                        std::io::ErrorKind::WriteZero,
                    )))
                }
                Ok(n) => std::io::IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(&self.wal_path)(e)),
            }
        }
        self.wal_len += total as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync_wal()?;
        self.closed.insert(
            self.wal_seq,
            Closed {
                max_op: self.open_max_op,
                recyclable: true,
                hold: std::mem::take(&mut self.wal_hold),
            },
        );
        self.wal_seq += 1;
        self.wal_path = wal_path(&self.dir, self.wal_seq);
        // A spare nothing is mapped from becomes the new file, written over from the start;
        // if renaming it fails, a new file is created as before. A new file allocates as it
        // grows; a spare was written to its end before it closed, so its blocks are all
        // allocated already.
        self.wal_allocated = false;
        if let Some(i) = self.spares.iter().position(|s| !s.hold.is_mapped()) {
            let spare = self.spares.remove(i);
            match std::fs::rename(&spare.path, &self.wal_path) {
                Ok(()) => self.wal_allocated = true,
                Err(e) => {
                    tracing::warn!(path = %spare.path.display(), error = %e, "cannot reuse a spare WAL file; deleting it");
                    let _ = std::fs::remove_file(&spare.path);
                }
            }
        }
        self.wal = open_wal_file(&self.wal_path)?;
        self.wal_len = 0;
        self.publish_unallocated();
        self.open_max_op = 0;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn sync_wal(&mut self) -> Result<(), JournalError> {
        if self.wal_dirty && self.fsync {
            self.wal.sync_data().map_err(io(&self.wal_path))?;
        }
        self.wal_dirty = false;
        Ok(())
    }

    fn write_superblock(&mut self, superblock: &Superblock) -> Result<(), JournalError> {
        self.sync_wal()?;
        let copy = encode_superblock(superblock);
        let path = self.dir.join("superblock");
        for i in 0..SUPERBLOCK_COPIES {
            self.superblock
                .seek(SeekFrom::Start((i * SUPERBLOCK_SIZE) as u64))
                .and_then(|_| self.superblock.write_all(&copy))
                .map_err(io(&path))?;
        }
        if self.fsync {
            self.superblock.sync_data().map_err(io(&path))?;
        }
        self.garbage_below = self.garbage_below.max(superblock.checkpoint);
        Ok(())
    }

    fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), JournalError> {
        write_checkpoint_file(&self.dir, checkpoint)
    }

    /// What the newest durable superblock made unnecessary: the oldest WAL files, up to the
    /// first holding an op above its checkpoint, and older checkpoints; `None` when no
    /// superblock was written since the last call. The caller deletes it
    /// ([`Garbage::remove`]) off the journal's thread: unlinking a 64 MiB WAL file frees its
    /// pages in the kernel for 10–25 ms (measured on tmpfs), and every prepare queued behind
    /// it used to wait — the p99 of replicated produce.
    /// Up to [`SPARE_WAL_FILES`] obsolete files of this build's kind are kept as spares instead
    /// (renamed here: a rename is cheap, and until it happens the file is only garbage a replay
    /// would read and ignore).
    pub fn take_garbage(&mut self) -> Option<Garbage> {
        let checkpoint = std::mem::take(&mut self.garbage_below);
        if checkpoint == 0 {
            return None;
        }
        // Oldest first, and only up to the first file still needed: a later file may hold a
        // view change's truncation, which must outlive the records it cancels in earlier ones.
        let mut wal_files = Vec::new();
        while let Some(oldest) = self.closed.first_entry() {
            if oldest.get().max_op > checkpoint {
                break;
            }
            let (seq, closed) = oldest.remove_entry();
            let path = wal_path(&self.dir, seq);
            if closed.recyclable && self.spares.len() < SPARE_WAL_FILES {
                let spare = spare_path(&self.dir, seq);
                if std::fs::rename(&path, &spare).is_ok() {
                    self.spares.push(Spare {
                        seq,
                        path: spare,
                        hold: closed.hold,
                    });
                    continue;
                }
            }
            wal_files.push(path);
        }
        Some(Garbage {
            dir: self.dir.clone(),
            wal_files,
            checkpoints_below: checkpoint,
        })
    }
}

/// Files a durable superblock made unnecessary (see [`Journal::take_garbage`]). Deleting them
/// late is harmless: a crash first only leaves them for the next superblock's collection (a
/// reopened journal replays them, finds nothing above its checkpoint, and lists them again).
#[derive(Debug)]
pub struct Garbage {
    dir: PathBuf,
    wal_files: Vec<PathBuf>,
    checkpoints_below: Op,
}

impl Garbage {
    /// Deletes the files. Failures only leave garbage behind.
    pub fn remove(self) {
        for path in &self.wal_files {
            let _ = std::fs::remove_file(path);
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                // `checkpoint-<op>` only: a checkpoint being written is `checkpoint-<op>.tmp`,
                // and its op is above this one anyway.
                let older = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("checkpoint-"))
                    .and_then(|op| op.parse::<Op>().ok())
                    .is_some_and(|op| op < self.checkpoints_below);
                if older {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Writes a checkpoint file into the journal directory `dir` durably (always fsynced: the
/// superblock that names it lets the WAL slots before it be reused, so it must outlive the
/// prepares it replaces). It touches nothing else of the journal, so it may run beside the
/// journal's other writes (see `replication::Checkpointer`).
pub fn write_checkpoint_file(dir: &Path, checkpoint: &Checkpoint) -> Result<(), JournalError> {
    let path = checkpoint_path(dir, checkpoint.op());
    let bytes = postcard::to_stdvec(checkpoint)?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    sync_dir(dir)
}

pub(super) fn checkpoint_path(dir: &Path, op: Op) -> PathBuf {
    dir.join(format!("checkpoint-{op:020}"))
}

fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    let bytes = std::fs::read(path).ok()?;
    decode_checkpoint(&bytes)
}

/// A checkpoint file, of this build or of one before checkpoints recorded their membership
/// (which reads back as [`vsr::Membership::UNSET`] and still verifies).
fn decode_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    if let Ok(checkpoint) = postcard::from_bytes::<Checkpoint>(bytes) {
        return Some(checkpoint);
    }
    let legacy = postcard::from_bytes::<LegacyCheckpoint>(bytes).ok()?;
    Some(Checkpoint {
        anchor: legacy.anchor,
        state: legacy.state,
        digest: legacy.digest,
        clients: legacy.clients,
        membership: vsr::Membership::UNSET,
        checksum: legacy.checksum,
    })
}

/// The checkpoint file format before reconfiguration (field for field, in order).
#[derive(serde::Serialize, serde::Deserialize)]
struct LegacyCheckpoint {
    anchor: vsr::Prepare,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
    digest: u128,
    clients: Vec<(vsr::ClientId, vsr::ClientSession)>,
    checksum: u128,
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Opens a WAL file for writing from its start (a new file, or a spare to write over).
fn open_wal_file(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(path)
        .map_err(io(path))
}

/// Allocates the blocks of a whole WAL file up front, leaving its length as it is (so replay
/// reads what was written, not zeros): an append then never needs space from the filesystem,
/// and a replica whose disk something else filled can still log the delete that frees space,
/// where a failed append would stop it. Best effort: a filesystem too full for it, or one
/// without `fallocate`, leaves appends to allocate as they go.
///
/// Done for the file a journal opens with, not for one a rotation creates: a rotation happens
/// on the replica thread under load, where allocating 64 MiB stalls it (15–20 ms on tmpfs, the
/// p99 of a benchmark run; 0.1–0.2 ms on ext4), and under load is not when a disk is full (the
/// primary refuses sends first). Every later file is a recycled spare, whose blocks a full
/// file's worth of records already took, or a new one while WAL traffic is heavy.
/// Returns whether the blocks were allocated.
fn reserve_blocks(file: &File, path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(WAL_FILE_BYTES) else {
        return false;
    };
    // SAFETY: the descriptor belongs to `file`, which outlives the call; fallocate reads no
    // memory of ours.
    let done = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) } == 0;
    if !done {
        let error = std::io::Error::last_os_error();
        tracing::debug!(path = %path.display(), %error, "cannot reserve a WAL file's blocks");
    }
    done
}

const WAL_NAME: (&str, &str) = ("wal-", ".log");
const SPARE_NAME: (&str, &str) = ("spare-", ".wal");

fn wal_path(dir: &Path, seq: u64) -> PathBuf {
    numbered_path(dir, WAL_NAME, seq)
}

fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    numbered_path(dir, SPARE_NAME, seq)
}

fn numbered_path(dir: &Path, (prefix, suffix): (&str, &str), seq: u64) -> PathBuf {
    dir.join(format!("{prefix}{seq:010}{suffix}"))
}

fn wal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    numbered_files(dir, WAL_NAME)
}

fn spare_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    numbered_files(dir, SPARE_NAME)
}

/// The files in `dir` named `<prefix><number><suffix>`, by number.
fn numbered_files(
    dir: &Path,
    (prefix, suffix): (&str, &str),
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// A record found by [`record_at`].
struct Record<'a> {
    kind: u8,
    payload: &'a [u8],
    /// The whole record's length.
    len: usize,
    /// Checksummed without a seed: written by a build from before WAL files were recycled.
    unseeded: bool,
}

/// The record at `at`, if one starts there and verifies under `seed` (its file's sequence) or,
/// as older builds wrote them, without one.
fn record_at(bytes: &[u8], at: usize, seed: u64) -> Option<Record<'_>> {
    let head = bytes.get(at..at + 9)?;
    if u32::from_le_bytes(head[..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let kind = head[4];
    let len = u32::from_le_bytes(head[5..9].try_into().ok()?) as usize;
    if len > RECORD_MAX {
        return None;
    }
    let end = at + 9 + len;
    let stored = u64::from_le_bytes(bytes.get(end..end + 8)?.try_into().ok()?);
    let covered_end = if kind == KIND_PREPARE_SEALED {
        let payload = bytes.get(at + 9..end)?;
        let header_len = u32::from_le_bytes(payload.get(8..PREPARE_PREFIX)?.try_into().ok()?);
        let covered = PREPARE_PREFIX.checked_add(header_len as usize)?;
        (covered <= len).then_some(at + 9 + covered)?
    } else {
        end
    };
    let covered = &bytes[at + 4..covered_end];
    let unseeded = if xxhash_rust::xxh3::xxh3_64_with_seed(covered, seed) == stored {
        false
    } else if seed != 0 && xxhash_rust::xxh3::xxh3_64(covered) == stored {
        true
    } else {
        return None;
    };
    Some(Record {
        kind,
        payload: &bytes[at + 9..end],
        len: len + RECORD_OVERHEAD,
        unseeded,
    })
}

/// What replaying one WAL file found.
struct Replayed {
    max_op: Op,
    /// No record of an older build's (unseeded) kind: the file may be recycled.
    recyclable: bool,
}

/// Replays WAL file number `seq` into `image`, mapping its large bodies under `hold`.
fn replay_wal(
    path: &Path,
    seq: u64,
    image: &mut DiskImage,
    hold: &FileHold,
) -> Result<Replayed, JournalError> {
    let mut bytes = Vec::new();
    let mut file = File::open(path).map_err(io(path))?;
    file.read_to_end(&mut bytes).map_err(io(path))?;
    let mut max_op = 0;
    let mut recyclable = true;
    let mut at = 0;
    while at < bytes.len() {
        let Some(record) = record_at(&bytes, at, seq) else {
            // Damage, a torn tail, or what a recycled file held before: look for the next
            // record that verifies (every record starts with the magic).
            at = memchr::memmem::find(&bytes[at + 1..], &MAGIC.to_le_bytes())
                .map_or(bytes.len(), |next| at + 1 + next);
            continue;
        };
        let Record {
            kind,
            payload,
            len,
            unseeded,
        } = record;
        recyclable &= !unseeded;
        let payload_end = (at + 9 + payload.len()) as u64;
        at += len;
        match kind {
            KIND_PREPARE | KIND_PREPARE_SEALED => {
                // A sealed record's body is checked here, against the header's checksum: a
                // rotten body makes the prepare absent, which the header ring reports.
                let decoded =
                    decode_prepare(payload).filter(|(_, p)| kind == KIND_PREPARE || p.verify());
                if let Some((slot, mut prepare)) = decoded {
                    max_op = max_op.max(prepare.op());
                    // Verified: the log may hold it mapped from the file rather than in the
                    // heap, as it holds bodies written since (`mapped.rs`).
                    let len = prepare.body.len();
                    let at = payload_end - len as u64;
                    if let Some(body) = mapped::map_large(&file, hold, at, len) {
                        prepare.body = body;
                    }
                    image.wal.insert(slot, prepare);
                }
            }
            KIND_HEADER if payload.len() == 32 => {
                let slot = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                let op = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
                let checksum = u128::from_le_bytes(payload[16..].try_into().unwrap_or_default());
                // A header counts like its prepare: without it the prepare reads as torn.
                max_op = max_op.max(op);
                image.headers.insert(slot, (op, checksum));
            }
            KIND_TRUNCATE if payload.len() == 8 => {
                let after = u64::from_le_bytes(payload.try_into().unwrap_or_default());
                image.wal.retain(|_, p| p.op() <= after);
                image.headers.retain(|_, (op, _)| *op <= after);
            }
            _ => {}
        }
    }
    Ok(Replayed { max_op, recyclable })
}

/// A prepare record's payload up to its body: `slot u64, header_len u32, header (postcard)`.
fn prepare_head(slot: u64, prepare: &Prepare) -> Result<Vec<u8>, JournalError> {
    let header = postcard::to_stdvec(&prepare.header)?;
    let mut head = Vec::with_capacity(12 + header.len());
    head.extend_from_slice(&slot.to_le_bytes());
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    Ok(head)
}

/// A prepare record's payload: `slot u64, header_len u32, header, body`.
fn decode_prepare(payload: &[u8]) -> Option<(u64, Prepare)> {
    let slot = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let header_len = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
    let header = postcard::from_bytes(payload.get(12..12 + header_len)?).ok()?;
    let body = payload.get(12 + header_len..)?.to_vec();
    Some((
        slot,
        Prepare {
            header,
            body: body.into(),
        },
    ))
}

fn encode_superblock(sb: &Superblock) -> [u8; SUPERBLOCK_SIZE] {
    let mut out = [0u8; SUPERBLOCK_SIZE];
    out[0..8].copy_from_slice(&sb.sequence.to_le_bytes());
    out[8..12].copy_from_slice(&sb.view.to_le_bytes());
    out[12..16].copy_from_slice(&sb.log_view.to_le_bytes());
    out[16..24].copy_from_slice(&sb.commit.to_le_bytes());
    out[24..32].copy_from_slice(&sb.checkpoint.to_le_bytes());
    out[32..48].copy_from_slice(&sb.checksum.to_le_bytes());
    // Written by reconfiguration-aware builds; zero (unset) in older superblocks.
    let m = &sb.membership;
    out[48..52].copy_from_slice(&m.epoch.to_le_bytes());
    out[52] = m.replica_count;
    out[53] = m.standby_count;
    out[54..62].copy_from_slice(&m.start.to_le_bytes());
    out[62] = SUPERBLOCK_LAYOUT;
    out[64..80].copy_from_slice(&sb.start_checksum.to_le_bytes());
    out
}

/// One copy, of either layout (an older copy reads with no start checksum recorded). Whether
/// it verifies is the caller's question.
fn decode_superblock(bytes: &[u8]) -> Option<Superblock> {
    let u64_at = |i: usize| {
        bytes
            .get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    Some(Superblock {
        sequence: u64_at(0)?,
        view: u32_at(8)?,
        log_view: u32_at(12)?,
        commit: u64_at(16)?,
        checkpoint: u64_at(24)?,
        membership: vsr::Membership {
            epoch: u32_at(48)?,
            replica_count: *bytes.get(52)?,
            standby_count: *bytes.get(53)?,
            start: u64_at(54)?,
        },
        start_checksum: match bytes.get(62) {
            Some(&SUPERBLOCK_LAYOUT) => u128::from_le_bytes(bytes.get(64..80)?.try_into().ok()?),
            _ => 0,
        },
        checksum: u128::from_le_bytes(bytes.get(32..48)?.try_into().ok()?),
    })
}

/// The copies one [`SUPERBLOCK_SIZE`] slot of the file holds: one of this layout, or two of
/// the older one (a file an older build wrote, or whose first rewrite here did not complete).
fn decode_slot(slot: &[u8]) -> Vec<Superblock> {
    if slot.get(62) == Some(&SUPERBLOCK_LAYOUT) {
        decode_superblock(slot).into_iter().collect()
    } else {
        slot.chunks(LEGACY_SUPERBLOCK_SIZE)
            .filter_map(decode_superblock)
            .collect()
    }
}

fn read_superblocks(file: &mut File, path: &Path) -> Result<Vec<Superblock>, JournalError> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io(path))?;
    Ok(bytes
        .chunks(SUPERBLOCK_SIZE)
        .take(SUPERBLOCK_COPIES)
        .flat_map(decode_slot)
        .collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::replication) fn prepare(op: Op, parent: u128) -> Prepare {
        prepare_with(op, parent, vec![op as u8; 100])
    }

    fn prepare_with(op: Op, parent: u128, body: Vec<u8>) -> Prepare {
        let mut header = Prepare::root(1, 1, 0).header;
        header.op = op;
        header.parent = parent;
        Prepare::new(header, body)
    }

    fn wal(slot: u64, prepare: &Prepare) -> Write {
        Write::Wal {
            slot,
            prepare: prepare.clone(),
        }
    }

    /// Writes `writes` to a journal in `dir` and closes it; returns what reopening reads.
    fn write_and_reopen(dir: &Path, writes: &[Write]) -> DiskImage {
        Journal::open(dir, true)
            .unwrap()
            .0
            .write_all(writes)
            .unwrap();
        Journal::open(dir, true).unwrap().1
    }

    fn superblock(sequence: u64, checkpoint: Op) -> Superblock {
        Superblock {
            sequence,
            view: 2,
            log_view: 2,
            commit: 3,
            checkpoint,
            membership: vsr::Membership::UNSET,
            start_checksum: 0,
            checksum: 0,
        }
        .sealed()
    }

    #[test]
    fn a_new_wal_file_has_its_blocks_before_anything_is_written() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), false).unwrap();
        let file = journal.wal.metadata().unwrap();
        assert_eq!(file.len(), 0, "the length is what was written");
        // st_blocks counts 512-byte units.
        assert!(
            file.blocks() * 512 >= WAL_FILE_BYTES,
            "{} bytes allocated",
            file.blocks() * 512
        );
    }

    #[test]
    fn writes_read_back_as_the_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        let one = prepare(1, 0);
        let two = prepare(2, one.checksum());
        let image = write_and_reopen(
            dir.path(),
            &[
                Write::Superblock(superblock(1, 0)),
                wal(1, &one),
                wal(2, &two),
            ],
        );
        assert_eq!(
            Superblock::newest(&image.superblocks),
            Some(superblock(1, 0))
        );
        assert_eq!(image.superblocks.len(), SUPERBLOCK_COPIES);
        assert_eq!(image.wal.get(&1), Some(&one));
        assert_eq!(image.wal.get(&2), Some(&two));
        assert_eq!(image.headers.get(&2), Some(&(2, two.checksum())));
    }

    #[test]
    fn a_view_change_log_truncates_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let one = prepare(1, 0);
        let stale = prepare(2, one.checksum());
        let mut replacement = prepare(2, one.checksum());
        replacement.header.view = 3;
        let replacement = Prepare::new(replacement.header, vec![7; 10]);
        let image = write_and_reopen(
            dir.path(),
            &[
                wal(1, &one),
                wal(2, &stale),
                Write::Log {
                    superblock: superblock(2, 0),
                    truncate_after: 1,
                    entries: vec![(2, replacement.clone())],
                },
            ],
        );
        assert_eq!(image.wal.get(&2), Some(&replacement));
        assert_eq!(image.headers.get(&2), Some(&(2, replacement.checksum())));
    }

    /// Writes prepares 1 and 2, flips the byte `at(wal bytes)` picks, and reopens.
    fn rot(dir: &Path, at: impl Fn(&[u8]) -> usize) -> (Prepare, Prepare, Vec<u8>, DiskImage) {
        let one = prepare(1, 0);
        let two = prepare(2, one.checksum());
        write_and_reopen(dir, &[wal(1, &one), wal(2, &two)]);
        let (_, path) = wal_files(dir).unwrap().remove(0);
        let mut bytes = std::fs::read(&path).unwrap();
        let index = at(&bytes);
        bytes[index] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (_, image) = Journal::open(dir, true).unwrap();
        (one, two, bytes, image)
    }

    #[test]
    fn a_rotten_prepare_keeps_its_header_and_what_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        // Inside the first prepare's header, which the record checksum covers.
        let (one, two, bytes, image) = rot(dir.path(), |_| 60);
        assert_eq!(image.wal.get(&1), None, "the damaged record is dropped");
        assert_eq!(
            image.headers.get(&1),
            Some(&(1, one.checksum())),
            "its header vouches for it"
        );
        assert_eq!(image.wal.get(&2), Some(&two), "later records survive");
        // A torn tail: the last record cut short leaves no trace.
        let (_, path) = wal_files(dir.path()).unwrap().remove(0);
        let cut = bytes.len() - 5;
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (_, image) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(image.headers.get(&2), None);
    }

    #[test]
    fn a_rotten_body_is_caught_by_the_prepares_own_checksum() {
        let dir = tempfile::tempdir().unwrap();
        // The last byte of the first record's body (its record checksum follows): the record
        // checksum does not cover the body, the header's body_checksum does.
        let (one, two, bytes, image) = rot(dir.path(), |bytes| {
            8 + u32::from_le_bytes(bytes[5..9].try_into().unwrap()) as usize
        });
        assert_eq!(bytes[4], KIND_PREPARE_SEALED);
        assert_eq!(image.wal.get(&1), None, "the rotten body is refused");
        assert_eq!(image.headers.get(&1), Some(&(1, one.checksum())));
        assert_eq!(image.wal.get(&2), Some(&two));
    }

    #[test]
    fn prepare_records_of_the_earlier_whole_checksum_kind_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let one = prepare(1, 0);
        let head = prepare_head(1, &one).unwrap();
        let whole = head.len() + one.body.len();
        std::fs::write(
            dir.path().join("wal-0000000001.log"),
            unseeded_record(KIND_PREPARE, &[&head, &one.body], whole),
        )
        .unwrap();
        let (_, image) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(image.wal.get(&1), Some(&one));
    }

    #[test]
    fn a_checkpoint_written_before_memberships_were_recorded_still_reads_and_verifies() {
        let current = Checkpoint::new(prepare(5, 0), b"manifest".to_vec(), 9, Vec::new());
        let legacy = LegacyCheckpoint {
            anchor: current.anchor.clone(),
            state: current.state.clone(),
            digest: current.digest,
            clients: Vec::new(),
            checksum: current.checksum,
        };
        let bytes = postcard::to_stdvec(&legacy).unwrap();
        let read = decode_checkpoint(&bytes).expect("decodes");
        assert_eq!(read, current);
        assert!(read.verify());
        let recorded = current.with_membership(vsr::Membership {
            epoch: 2,
            replica_count: 3,
            standby_count: 1,
            start: 4,
        });
        let bytes = postcard::to_stdvec(&recorded).unwrap();
        assert_eq!(decode_checkpoint(&bytes), Some(recorded));
    }

    #[test]
    fn a_superblock_with_a_membership_round_trips_and_an_older_one_reads_unset() {
        let mut sb = superblock(3, 0);
        let legacy = encode_superblock(&sb);
        assert_eq!(decode_superblock(&legacy), Some(sb));
        sb.membership = vsr::Membership {
            epoch: 4,
            replica_count: 5,
            standby_count: 0,
            start: 77,
        };
        sb.start_checksum = 0x5157_a127;
        let sb = sb.sealed();
        let decoded = decode_superblock(&encode_superblock(&sb)).unwrap();
        assert_eq!(decoded, sb);
        assert!(decoded.verify());
    }

    /// A copy as builds before the start's checksum wrote it: 64 bytes, no layout mark.
    fn legacy_copy(sb: &Superblock) -> Vec<u8> {
        let mut copy = encode_superblock(sb)[..LEGACY_SUPERBLOCK_SIZE].to_vec();
        copy[62] = 0;
        copy
    }

    #[test]
    fn an_older_builds_superblock_file_reads_and_is_rewritten_in_this_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = superblock(7, 0);
        old.membership = vsr::Membership {
            epoch: 1,
            replica_count: 3,
            standby_count: 0,
            start: 12,
        };
        let old = old.sealed();
        let file: Vec<u8> = (0..SUPERBLOCK_COPIES)
            .flat_map(|_| legacy_copy(&old))
            .collect();
        std::fs::write(dir.path().join("superblock"), &file).unwrap();
        let (mut journal, image) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(Superblock::newest(&image.superblocks), Some(old));
        assert_eq!(image.superblocks.len(), SUPERBLOCK_COPIES);

        let mut new = old;
        new.sequence = 8;
        new.start_checksum = 0xabcd;
        let new = new.sealed();
        journal.write_all(&[Write::Superblock(new)]).unwrap();
        drop(journal);
        let bytes = std::fs::read(dir.path().join("superblock")).unwrap();
        assert_eq!(bytes.len(), SUPERBLOCK_COPIES * SUPERBLOCK_SIZE);
        let (_, image) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(Superblock::newest(&image.superblocks), Some(new));
        assert!(image.superblocks.iter().all(|copy| *copy == new));

        // The first rewrite torn after one copy: that copy covers the first two older ones,
        // and the older write still reads from the rest.
        let mut torn = file.clone();
        torn[..SUPERBLOCK_SIZE].copy_from_slice(&encode_superblock(&new));
        let copies: Vec<Superblock> = torn
            .chunks(SUPERBLOCK_SIZE)
            .flat_map(decode_slot)
            .filter(Superblock::verify)
            .collect();
        assert_eq!(copies, vec![new, old, old]);
        // A slot damaged in its mark reads as two older copies, which do not verify.
        let mut damaged = encode_superblock(&new).to_vec();
        damaged[62] = 0;
        assert!(decode_slot(&damaged).iter().all(|copy| !copy.verify()));
    }

    fn big(op: Op) -> Prepare {
        prepare_with(op, 0, vec![op as u8; 1 << 20])
    }

    /// Writes megabyte prepares after `op` until the open file is closed; returns the bodies
    /// mapped from what was written.
    fn write_until_rotation(journal: &mut Journal, op: &mut Op) -> Vec<WrittenBody> {
        let closed = journal.closed.len();
        let mut mapped = Vec::new();
        while journal.closed.len() == closed {
            *op += 1;
            mapped.extend(journal.write_all(&[wal(*op, &big(*op))]).unwrap());
        }
        mapped
    }

    /// A checkpoint at `op` made durable, and the garbage it leaves collected.
    fn checkpoint_at(journal: &mut Journal, op: Op, sequence: u64) {
        let checkpoint = Checkpoint::new(prepare(op, 0), b"manifest".to_vec(), 9, Vec::new());
        journal
            .write_all(&[
                Write::Checkpoint(Box::new(checkpoint)),
                Write::Superblock(superblock(sequence, op)),
            ])
            .unwrap();
        journal
            .take_garbage()
            .expect("a superblock was written")
            .remove();
    }

    fn wait_until_unmapped(hold: &FileHold) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hold.is_mapped() {
            assert!(std::time::Instant::now() < deadline, "bodies still mapped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn a_wal_file_below_the_durable_checkpoint_is_kept_as_a_spare_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), false).unwrap().0;
        let mut op = 0;
        let mut mapped = write_until_rotation(&mut journal, &mut op);
        for _ in 0..SPARE_WAL_FILES {
            mapped.extend(write_until_rotation(&mut journal, &mut op));
        }
        let files: Vec<PathBuf> = (1..=SPARE_WAL_FILES as u64 + 1)
            .map(|seq| wal_path(dir.path(), seq))
            .collect();
        let checkpoint = Checkpoint::new(prepare(op, 0), b"manifest".to_vec(), 9, Vec::new());
        journal
            .write_all(&[
                Write::Checkpoint(Box::new(checkpoint)),
                Write::Superblock(superblock(1, op)),
            ])
            .unwrap();
        assert!(
            files.iter().all(|f| f.exists()),
            "nothing goes while writes wait"
        );
        let garbage = journal.take_garbage().expect("a superblock was written");
        assert!(journal.closed.is_empty());
        // The first ones became spares, the one past the limit is garbage.
        for (seq, file) in files.iter().enumerate().take(SPARE_WAL_FILES) {
            assert!(!file.exists());
            let spare = spare_path(dir.path(), seq as u64 + 1);
            assert!(spare.exists(), "{}", spare.display());
        }
        assert!(files[SPARE_WAL_FILES].exists());
        garbage.remove();
        assert!(!files[SPARE_WAL_FILES].exists());
        // Bodies mapped from the renamed and the deleted files still read.
        assert_eq!(mapped.len() as Op, op);
        assert!(mapped.iter().all(|m| m.body == big(m.op).body));
    }

    /// A spare is written over only once nothing is mapped from it; what it held before must
    /// not come back at the next open, though its bytes are still in the file past the new end.
    #[test]
    fn a_recycled_file_replays_only_what_was_written_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), false).unwrap().0;
        let unallocated = journal.unallocated();
        let left = || unallocated.load(Ordering::Relaxed);
        assert_eq!(left(), 0, "the file a journal opens with is reserved whole");
        let mut op = 0;
        let held = write_until_rotation(&mut journal, &mut op);
        // A new file: what it has not written yet, it will take from the filesystem.
        assert_eq!(left(), WAL_FILE_BYTES - journal.wal_len);
        assert!(left() > WAL_FILE_BYTES - (4 << 20), "{}", left());
        let first_ops = op - 1;
        checkpoint_at(&mut journal, op, 1);
        let spare = dir.path().join("spare-0000000001.wal");
        let spare_inode = inode(&spare);

        // Still mapped: the next file is a new one and the spare's bytes stay as they were.
        write_until_rotation(&mut journal, &mut op);
        assert!(spare.exists());
        assert_ne!(inode(&dir.path().join("wal-0000000003.log")), spare_inode);
        assert!(held.iter().all(|m| m.body == big(m.op).body));

        drop(held);
        wait_until_unmapped(&journal.spares[0].hold);
        write_until_rotation(&mut journal, &mut op);
        let recycled = dir.path().join("wal-0000000004.log");
        assert!(!spare.exists());
        assert_eq!(inode(&recycled), spare_inode);
        assert_eq!(
            left(),
            0,
            "a spare's blocks were taken when it was first written"
        );
        // Two small prepares after the one that opened it: the rest of the file is old.
        let last = op;
        journal
            .write_all(&[
                wal(last + 1, &prepare(last + 1, 0)),
                wal(last + 2, &prepare(last + 2, 0)),
            ])
            .unwrap();
        assert!(std::fs::metadata(&recycled).unwrap().len() >= WAL_FILE_BYTES);
        drop(journal);

        let (journal, image) = Journal::open(dir.path(), false).unwrap();
        assert!(
            image.wal.keys().all(|slot| *slot > first_ops),
            "ops of the file before it was recycled came back: {:?}",
            image.wal.keys().take(3).collect::<Vec<_>>()
        );
        assert!(image.headers.keys().all(|slot| *slot > first_ops));
        assert_eq!(image.wal.get(&last).map(Prepare::op), Some(last));
        assert_eq!(image.wal.get(&(last + 2)).map(Prepare::op), Some(last + 2));
        assert!(image.wal.values().all(Prepare::verify));
        assert!(journal.closed.values().all(|c| c.recyclable));
        // The next file is numbered above every file present.
        assert_eq!(journal.wal_seq, 5);
    }

    /// The size of a prepare record and of a header record as `append_prepare` writes them.
    fn record_sizes(prepare: &Prepare) -> (u64, u64) {
        let head = prepare_head(0, prepare).unwrap();
        (
            (head.len() + prepare.body.len() + RECORD_OVERHEAD) as u64,
            (32 + RECORD_OVERHEAD) as u64,
        )
    }

    /// A file is closed when the next record would start past its limit, which can fall
    /// between a prepare and its header record. The file holding the prepare must not count as
    /// obsolete once the checkpoint passes the op before it: the prepare is above that
    /// checkpoint, and a replica that restarts without it has a header vouching for a prepare
    /// it no longer holds — on every replica alike, since they all write the same records.
    #[test]
    fn a_prepare_whose_header_went_to_the_next_file_outlives_the_first_files_collection() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), false).unwrap().0;
        journal.wal_file_bytes = 4096;
        let mut op = 0;
        let split = loop {
            op += 1;
            assert!(op < 100, "no prepare split from its header");
            // Sizes that vary, so that some prepare record crosses the limit.
            let one = prepare_with(op, 0, vec![op as u8; 700 + op as usize * 13]);
            let seq = journal.wal_seq;
            journal.write_all(&[wal(op, &one)]).unwrap();
            let (_, header) = record_sizes(&one);
            if journal.wal_seq == seq + 1 && journal.wal_len == header {
                break one;
            }
        };
        checkpoint_at(&mut journal, op - 1, 1);
        drop(journal);

        let (_, image) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(image.wal.get(&op), Some(&split), "op {op} lost its prepare");
        assert_eq!(image.headers.get(&op), Some(&(op, split.checksum())));
    }

    /// A view change's log cancels what an earlier file holds above its truncation point. The
    /// file holding the truncation may not go while a file whose records it cancels stays: a
    /// restart would bring the cancelled prepares (an older view's) back into the log.
    #[test]
    fn a_truncation_is_kept_as_long_as_the_records_it_cancels() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), false).unwrap().0;
        // Files: 1..=5, 6..=10, 11..=15, 16..=20 (all view 1), then the truncation after 12
        // with 13..=14 of the new view, then 15..=16 of the new view.
        let mut parent = 0;
        for op in 1..=20 {
            let one = prepare(op, parent);
            parent = one.checksum();
            journal.write_all(&[wal(op, &one)]).unwrap();
            if op % 5 == 0 {
                journal.rotate().unwrap();
            }
        }
        let new_view = |op: Op| prepare_with(op, 0, vec![0xEE; 100]);
        journal
            .write_all(&[Write::Log {
                superblock: superblock(1, 0),
                truncate_after: 12,
                entries: vec![(13, new_view(13)), (14, new_view(14))],
            }])
            .unwrap();
        journal.rotate().unwrap();
        journal
            .write_all(&[wal(15, &new_view(15)), wal(16, &new_view(16))])
            .unwrap();
        // Above the truncation's file, below the file of cancelled ops 16..=20.
        checkpoint_at(&mut journal, 16, 2);
        drop(journal);

        let (_, image) = Journal::open(dir.path(), false).unwrap();
        let above: Vec<Op> = image
            .wal
            .values()
            .map(Prepare::op)
            .filter(|op| *op > 16)
            .collect();
        assert!(above.is_empty(), "cancelled prepares came back: {above:?}");
        assert!(image.headers.values().all(|(op, _)| *op <= 16));
        assert_eq!(image.wal.get(&16), Some(&new_view(16)));
    }

    /// A record the crash model knows the journal wrote, in order.
    #[derive(Clone)]
    enum Written {
        Prepare(u64, Prepare),
        Header(u64, Op, u128),
        Truncate(Op),
    }

    /// Slot → (op, checksum) of the prepares, and slot → (op, checksum) of the headers.
    type Slots = (BTreeMap<u64, (Op, u128)>, BTreeMap<u64, (Op, u128)>);

    /// What replaying `records` gives above `checkpoint` (the core ignores what is at or below
    /// it): the replay rules of the module notes, applied to what was written rather than to
    /// what the files hold.
    fn model_above(records: &[Written], checkpoint: Op) -> Slots {
        let mut wal = BTreeMap::new();
        let mut headers = BTreeMap::new();
        for record in records {
            match record {
                Written::Prepare(slot, prepare) => {
                    wal.insert(*slot, (prepare.op(), prepare.checksum()));
                }
                Written::Header(slot, op, checksum) => {
                    headers.insert(*slot, (*op, *checksum));
                }
                Written::Truncate(after) => {
                    wal.retain(|_, (op, _): &mut (Op, u128)| *op <= *after);
                    headers.retain(|_, (op, _): &mut (Op, u128)| *op <= *after);
                }
            }
        }
        wal.retain(|_, (op, _)| *op > checkpoint);
        headers.retain(|_, (op, _)| *op > checkpoint);
        (wal, headers)
    }

    /// What a reopened journal replayed above `checkpoint`; every prepare must verify.
    fn image_above(image: &DiskImage, checkpoint: Op) -> Slots {
        assert!(image.wal.values().all(Prepare::verify));
        let wal = image
            .wal
            .iter()
            .filter(|(_, p)| p.op() > checkpoint)
            .map(|(slot, p)| (*slot, (p.op(), p.checksum())))
            .collect();
        let headers = image
            .headers
            .iter()
            .filter(|(_, (op, _))| *op > checkpoint)
            .map(|(slot, header)| (*slot, *header))
            .collect();
        (wal, headers)
    }

    /// Slot → op only, for a failure message that fits on a screen.
    fn ops((wal, headers): &Slots) -> String {
        let ops = |map: &BTreeMap<u64, (Op, u128)>| {
            map.iter()
                .map(|(slot, (op, _))| format!("{slot}:{op}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!("prepares [{}] headers [{}]", ops(wal), ops(headers))
    }

    fn assert_replays(image: &DiskImage, records: &[Written], checkpoint: Op, when: &str) {
        let (actual, expected) = (
            image_above(image, checkpoint),
            model_above(records, checkpoint),
        );
        assert!(
            actual == expected,
            "{when}, checkpoint {checkpoint}: replayed {}; written {}",
            ops(&actual),
            ops(&expected)
        );
    }

    /// Seeded runs of small WAL files (so they close, turn obsolete, become spares and are
    /// written over many times): appends, view changes that truncate and rewrite the log,
    /// checkpoints with their collection, restarts, and at the end a crash that tears the last
    /// append — leaving, in a recycled file, its old bytes past the tear. After every reopen the
    /// replayed image above the durable checkpoint must be what the records written (minus the
    /// torn ones) say: collection and recycling may drop only what the checkpoint covers.
    #[test]
    fn collection_and_recycling_keep_every_record_above_the_checkpoint_across_crashes() {
        const SLOTS: u64 = 64;
        // Crashes that tore an append written over a recycled file's old records.
        let mut torn_over_old_records = 0;
        for seed in 0..200u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut draw = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let dir = tempfile::tempdir().unwrap();
            let reopen = |dir: &Path| {
                let (mut journal, image) = Journal::open(dir, false).unwrap();
                journal.wal_file_bytes = 3000;
                (journal, image)
            };
            let mut journal = reopen(dir.path()).0;
            let mut records: Vec<Written> = Vec::new();
            let (mut head, mut checkpoint, mut sequence, mut view) = (0u64, 0u64, 0u64, 0u128);
            let new_prepare = |op: Op, view: u128, size: u64| {
                prepare_with(
                    op,
                    view,
                    vec![(op as u8) ^ (view as u8); 50 + size as usize],
                )
            };
            for _ in 0..150 {
                let roll = draw(100);
                if head - checkpoint >= SLOTS / 2 || (roll < 15 && head > checkpoint) {
                    checkpoint += 1 + draw(head - checkpoint);
                    sequence += 1;
                    checkpoint_at(&mut journal, checkpoint, sequence);
                } else if roll < 25 {
                    view += 1;
                    let after = checkpoint + draw(head - checkpoint + 1);
                    let entries: Vec<(u64, Prepare)> = (after + 1..=after + draw(4))
                        .map(|op| (op % SLOTS, new_prepare(op, view, draw(700))))
                        .collect();
                    sequence += 1;
                    records.push(Written::Truncate(after));
                    for (slot, p) in &entries {
                        records.push(Written::Prepare(*slot, p.clone()));
                        records.push(Written::Header(*slot, p.op(), p.checksum()));
                    }
                    head = after + entries.len() as u64;
                    let log = Write::Log {
                        superblock: superblock(sequence, checkpoint),
                        truncate_after: after,
                        entries,
                    };
                    journal.write_all(&[log]).unwrap();
                } else if roll < 35 {
                    drop(journal);
                    let (reopened, image) = reopen(dir.path());
                    journal = reopened;
                    let when = format!("seed {seed}: a restart");
                    assert_replays(&image, &records, checkpoint, &when);
                    continue;
                } else {
                    head += 1;
                    let p = new_prepare(head, view, draw(700));
                    records.push(Written::Prepare(head % SLOTS, p.clone()));
                    records.push(Written::Header(head % SLOTS, head, p.checksum()));
                    journal.write_all(&[wal(head % SLOTS, &p)]).unwrap();
                }
                if let Some(garbage) = journal.take_garbage() {
                    garbage.remove();
                }
            }

            // The crash: one more append, torn somewhere inside its two records.
            head += 1;
            let last = new_prepare(head, view, draw(700));
            let (seq, start) = (journal.wal_seq, journal.wal_len);
            let path = journal.wal_path.clone();
            // What the file held before: in a recycled file, old records past `start`.
            let before = std::fs::read(&path).unwrap();
            journal.write_all(&[wal(head % SLOTS, &last)]).unwrap();
            let (prepare_len, header_len) = record_sizes(&last);
            let end = start + prepare_len + header_len;
            let torn_in_one_file = journal.wal_seq == seq && journal.wal_len == end;
            drop(journal);
            if torn_in_one_file {
                let cut = (start + draw(prepare_len + header_len + 1)) as usize;
                let after = std::fs::read(&path).unwrap();
                torn_over_old_records += usize::from(before.len() > cut);
                let mut torn = after[..cut].to_vec();
                torn.extend_from_slice(before.get(cut..).unwrap_or_default());
                std::fs::write(&path, &torn).unwrap();
                if cut as u64 >= start + prepare_len {
                    records.push(Written::Prepare(head % SLOTS, last.clone()));
                }
                if cut as u64 == end {
                    records.push(Written::Header(head % SLOTS, head, last.checksum()));
                }
            } else {
                records.push(Written::Prepare(head % SLOTS, last.clone()));
                records.push(Written::Header(head % SLOTS, head, last.checksum()));
            }
            let (_, image) = reopen(dir.path());
            assert_replays(
                &image,
                &records,
                checkpoint,
                &format!("seed {seed}: the crash"),
            );
        }
        assert!(
            torn_over_old_records >= 20,
            "only {torn_over_old_records} crashes tore a write over old records"
        );
    }

    #[test]
    fn a_journal_opens_its_next_file_above_every_spare_and_keeps_at_most_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [3u64, 7, 9] {
            std::fs::write(spare_path(dir.path(), seq), b"old").unwrap();
        }
        let journal = Journal::open(dir.path(), false).unwrap().0;
        assert_eq!(journal.wal_seq, 10);
        let kept: Vec<u64> = journal.spares.iter().map(|s| s.seq).collect();
        assert_eq!(kept, [7, 9]);
        assert!(!dir.path().join("spare-0000000003.wal").exists());
    }

    /// A record as builds before recycling wrote them: checksummed without a seed.
    fn unseeded_record(kind: u8, parts: &[&[u8]], covered: usize) -> Vec<u8> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut record = MAGIC.to_le_bytes().to_vec();
        record.push(kind);
        record.extend_from_slice(&(len as u32).to_le_bytes());
        for part in parts {
            record.extend_from_slice(part);
        }
        let checksum = xxhash_rust::xxh3::xxh3_64(&record[4..9 + covered]);
        record.extend_from_slice(&checksum.to_le_bytes());
        record
    }

    #[test]
    fn a_wal_file_of_an_older_build_is_read_and_deleted_never_recycled() {
        let dir = tempfile::tempdir().unwrap();
        let one = prepare(1, 0);
        let head = prepare_head(1, &one).unwrap();
        let old = dir.path().join("wal-0000000001.log");
        std::fs::write(
            &old,
            unseeded_record(KIND_PREPARE_SEALED, &[&head, &one.body], head.len()),
        )
        .unwrap();

        let (mut journal, image) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(image.wal.get(&1), Some(&one));
        assert!(!journal.closed[&1].recyclable);
        checkpoint_at(&mut journal, 1, 1);
        assert!(!old.exists());
        assert!(journal.spares.is_empty(), "an unseeded file became a spare");
    }

    #[test]
    fn large_bodies_replayed_at_open_are_mapped_from_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let large = prepare_with(1, 0, body);
        let small = prepare(2, large.checksum());
        let image = write_and_reopen(dir.path(), &[wal(1, &small), wal(2, &large)]);
        for (_, path) in wal_files(dir.path()).unwrap() {
            std::fs::remove_file(path).unwrap();
        }
        // Read after the files are gone: only a mapping still holds their bytes.
        assert_eq!(image.wal.get(&2), Some(&large));
        assert!(image.wal.get(&2).is_some_and(Prepare::verify));
        assert_eq!(image.wal.get(&1), Some(&small));
    }

    #[test]
    fn large_written_bodies_come_back_mapped_from_the_wal_and_small_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), true).unwrap().0;
        let sized = |op: Op, len: usize| {
            prepare_with(
                op,
                0,
                (0..len).map(|i| (i * 7 + op as usize) as u8).collect(),
            )
        };
        let (small, large) = (sized(1, 100), sized(2, mapped::MAP_MIN + 3));
        let replaced = sized(3, 200_000);
        let written = journal
            .write_all(&[
                wal(1, &small),
                wal(2, &large),
                Write::Log {
                    superblock: superblock(2, 0),
                    truncate_after: 2,
                    entries: vec![(3, replaced.clone())],
                },
            ])
            .unwrap();
        let ops: Vec<(Op, u128)> = written.iter().map(|w| (w.op, w.checksum)).collect();
        assert_eq!(ops, [(2, large.checksum()), (3, replaced.checksum())]);
        assert_eq!(written[0].body, large.body);
        assert_eq!(written[1].body, replaced.body);
        assert!(journal
            .write_all(&[wal(4, &sized(4, 10))])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn checkpoints_are_found_through_the_superblock_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = |op| Checkpoint::new(prepare(op, 0), b"manifest".to_vec(), 9, Vec::new());
        let image = write_and_reopen(
            dir.path(),
            &[
                Write::Checkpoint(Box::new(checkpoint(5))),
                Write::Superblock(superblock(1, 5)),
            ],
        );
        assert_eq!(image.checkpoint, Some(checkpoint(5)));
        let mut journal = Journal::open(dir.path(), true).unwrap().0;
        journal
            .write_all(&[
                Write::Checkpoint(Box::new(checkpoint(9))),
                Write::Superblock(superblock(2, 9)),
            ])
            .unwrap();
        // Garbage is handed out to be deleted elsewhere, not deleted while prepares wait.
        assert!(checkpoint_path(dir.path(), 5).exists());
        journal
            .take_garbage()
            .expect("a superblock was written")
            .remove();
        assert!(!checkpoint_path(dir.path(), 5).exists());
        assert!(checkpoint_path(dir.path(), 9).exists());
        assert!(journal.take_garbage().is_none(), "taken once");
        drop(journal);
        let image = Journal::open(dir.path(), true).unwrap().1;
        assert_eq!(image.checkpoint, Some(checkpoint(9)));
    }
}
