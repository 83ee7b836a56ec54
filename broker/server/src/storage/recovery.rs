//! Boot recovery of one partition's segments.
//!
//! Everything up to the partition's last [`Checkpoint`] (a clean shutdown's, or a running one's)
//! is trusted (only its structure is used). Everything after it — what a crash could have
//! damaged — is re-read and every frame's checksum and offset verified. At the first bad frame recovery decides between two cases:
//!
//! * **torn write**: nothing intact follows (a scan of the rest of the file, position by
//!   position, finds no frame whose length, offset and checksum hold — the index may be stale or
//!   empty after a power loss, so it is not trusted to say where frames are — and no later
//!   segment starts with a valid frame). The tail was being written when the process or machine
//!   died, so it was never acknowledged under `fsync = always`; the log is
//!   truncated there and the broker starts.
//! * **corruption**: intact data follows the bad frame. Truncating would silently drop
//!   acknowledged messages, so boot fails with an error naming the file, byte and offset.

use super::checkpoint::Checkpoint;
use super::segment::{IndexEntry, Segment};
use super::{IoContext, StorageError};
use iggy_tiering::Manifest;
use iggy_wire::message::{checksum_matches, FrameHeader, HEADER_SIZE, INDEX_ENTRY_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const CHUNK: usize = 4 << 20;

/// Whether the object store holds every offset of `gap`, segment boundaries matching its ends.
fn held_remotely(tiered: &Manifest, gap: &std::ops::Range<u64>) -> bool {
    // The manifest is contiguous (`Manifest::check`): its ends settle it.
    let first = tiered.find(gap.start).map(|s| s.start_offset);
    let last = tiered.find(gap.end - 1).map(|s| s.next_offset);
    first == Some(gap.start) && last == Some(gap.end)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes verified by checksum (the part written since the last checkpoint).
    pub verified_bytes: u64,
    /// Bytes cut off a torn tail, and where.
    pub truncated: Option<(String, u64, u64)>,
    /// The clean-shutdown checkpoint found on disk, if one was valid.
    pub checkpoint: Option<Checkpoint>,
    /// Offsets `from..until` of messages that rotted in place (see [`rotted_in_place`]): kept,
    /// never served, for a repair from another copy.
    pub damaged: Vec<(u64, u64)>,
}

/// Opens every segment in `dir`, recovering as described in the module docs. A directory
/// without segments gets an empty one at where the object store's segments end (`tiered`),
/// or 0.
///
/// Local segments below a gap that the object store holds are dropped. A replica restarting
/// from its checkpoint gets back the segments ops deleted after it (`graveyard::exhume`), but
/// not those the tiering loop evicted meanwhile, which it deletes for good (they are in the
/// store): retention's segment comes back below an evicted one (`make chaos`, seed 38402). What
/// lies below data that already left local disk is older than it, and the replayed op that
/// deleted it deletes it again; the log starts at the gap's end, the store serving the gap.
pub fn recover(
    dir: &Path,
    tiered: &Manifest,
) -> Result<(Vec<Segment>, RecoveryReport), StorageError> {
    super::trash::empty(dir)?;
    let checkpoint = Checkpoint::load(dir);
    let mut starts = list_segment_starts(dir)?;
    if starts.is_empty() {
        starts.push(tiered.end().unwrap_or(0));
    }
    let mut report = RecoveryReport {
        checkpoint,
        ..RecoveryReport::default()
    };
    let mut segments: Vec<Segment> = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let mut segment = Segment::open(dir, start)?;
        if let Some(prev) = segments.last() {
            let gap = prev.next_offset()..start;
            if !gap.is_empty() && held_remotely(tiered, &gap) {
                tracing::warn!(
                    dir = %dir.display(),
                    below = gap.start,
                    gap = ?gap,
                    "local segments below a range only the object store holds are dropped \
                     (brought back by a restart from a checkpoint; the replayed log deletes \
                     them again)"
                );
                super::partition_log::remove_segment_files(dir, &std::mem::take(&mut segments))?;
            }
        }
        if let Some(prev) = segments.last() {
            if prev.next_offset() != start {
                return Err(StorageError::Corrupt {
                    path: segment.log_path.clone(),
                    position: 0,
                    offset: prev.next_offset(),
                    reason: format!(
                        "segment starts at offset {start}, previous ends at {}",
                        prev.next_offset()
                    ),
                });
            }
        }
        let log_len = segment.log.file_len()?;
        // A segment the last checkpoint covers whole — an earlier one, or the checkpoint's
        // own when nothing was written after it: its index file is taken at its word when its
        // ends agree with the log, so a boot does not read every entry the broker stores
        // (reads check each entry they take, and rebuild a damaged file from the log).
        let covered_whole = checkpoint.is_some_and(|cp| {
            (start < cp.segment_start && n + 1 < starts.len())
                || (start == cp.segment_start && cp.position == log_len)
        });
        if covered_whole && segment.adopt_index_file(log_len)? {
            segments.push(segment);
            continue;
        }
        let disk_index = read_index(&segment.index_path)?;
        let valid_disk = valid_prefix(&disk_index, log_len);
        let trusted_end = match checkpoint {
            Some(cp) if start < cp.segment_start => log_len,
            Some(cp) if start == cp.segment_start => cp.position.min(log_len),
            _ => 0,
        };
        let mut index: Vec<IndexEntry> = disk_index[..valid_disk]
            .iter()
            .take_while(|e| e.end as u64 <= trusted_end)
            .copied()
            .collect();
        let log_file = segment.log.file()?;
        let mut scanner = Scanner::new(&log_file, log_len);
        let covered = index.last().map_or(0, |e| e.end as u64);
        // Trusted bytes the index file does not describe (it is written after the log): walk
        // their headers, no checksums, to rebuild the entries.
        let walked = scanner.walk(covered, trusted_end, start, &mut index, false);
        if let Err(bad) = walked {
            return Err(StorageError::Corrupt {
                path: segment.log_path.clone(),
                position: bad.position,
                offset: start + index.len() as u64,
                reason: format!(
                    "{} inside data the last checkpoint recorded as intact",
                    bad.reason
                ),
            });
        }
        let verify_from = trusted_end;
        let mut from_position = verify_from;
        let verified = loop {
            let Err(bad) = scanner.walk(from_position, log_len, start, &mut index, true) else {
                break Ok(());
            };
            let sealed = n + 1 < starts.len();
            match rotted_in_place(
                &mut scanner,
                &disk_index[..valid_disk],
                &index,
                &bad,
                start,
                sealed,
            ) {
                Some(run) => {
                    let from = start + index.len() as u64;
                    let until = from + run.len() as u64;
                    tracing::error!(
                        file = %segment.log_path.display(),
                        position = bad.position,
                        offsets = ?(from..until),
                        reason = %bad.reason,
                        "messages rotted in place: kept as they are, not served, to be repaired"
                    );
                    report.damaged.push((from, until));
                    index.extend_from_slice(&run);
                    from_position = index.last().map_or(0, |e| u64::from(e.end));
                }
                None => break Err(bad),
            }
        };
        report.verified_bytes += log_len.saturating_sub(verify_from);
        segment.size = index.last().map_or(0, |e| e.end as u64);
        segment.set_index(index);
        if let Err(bad) = verified {
            let later = &starts[n + 1..];
            if valid_frame_after(&segment, log_len, bad.position)?
                || later_segment_valid(dir, later)?
            {
                return Err(StorageError::Corrupt {
                    path: segment.log_path.clone(),
                    position: bad.position,
                    offset: segment.next_offset(),
                    reason: bad.reason,
                });
            }
            tracing::warn!(
                file = %segment.log_path.display(),
                position = bad.position,
                cut_bytes = log_len - bad.position,
                reason = %bad.reason,
                "truncating torn tail left by an interrupted write"
            );
            report.truncated = Some((
                segment.log_path.display().to_string(),
                bad.position,
                log_len - bad.position,
            ));
            for &later_start in later {
                Segment::open(dir, later_start)?.remove_files()?;
            }
            segment.rewrite_files()?;
            segment.finish_building();
            segments.push(segment);
            return Ok((segments, report));
        }
        // Entry for entry, not only the count: from now on the segment reads its entries from
        // the file, which must say what the log does.
        if *segment.entries(0, segment.len())? != disk_index[..] || log_len != segment.size {
            segment.rewrite_files()?;
        }
        segment.finish_building();
        segments.push(segment);
    }
    Ok((segments, report))
}

/// Rewrites `segment`'s index file from its log, as a boot would: a read found an entry there
/// that does not fit the segment (`Segment::entries`). Every frame is verified (checksum and
/// offset) and the walk must end at the segment's size with the messages it holds; otherwise
/// nothing is written and the error says where the log failed (the log's own damage is a
/// repair's business, and a boot's).
pub fn rebuild_index(segment: &mut Segment) -> Result<(), StorageError> {
    let file = segment.log.file()?;
    let mut scanner = Scanner::new(&file, segment.size);
    let mut index = Vec::with_capacity(segment.len());
    if let Err(bad) = scanner.walk(0, segment.size, segment.start_offset, &mut index, true) {
        return Err(StorageError::CorruptRead {
            path: segment.log_path.clone(),
            position: bad.position,
            reason: "the log under a damaged index entry does not verify either",
        });
    }
    if index.len() != segment.len() {
        return Err(StorageError::BadMetadata {
            path: segment.index_path.clone(),
            reason: format!(
                "the log holds {} messages where the segment counts {}",
                index.len(),
                segment.len()
            ),
        });
    }
    segment.set_index(index);
    let rewritten = segment.rewrite_files();
    segment.finish_building();
    rewritten
}

/// Where each segment in `dir` starts (the `.log` files named by their first offset), sorted.
pub(super) fn list_segment_starts(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>() {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

fn read_index(path: &Path) -> Result<Vec<IndexEntry>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(StorageError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(bytes
        .chunks_exact(INDEX_ENTRY_SIZE)
        .map(IndexEntry::decode)
        .collect())
}

/// Length of the prefix of index entries that is structurally possible for this log.
fn valid_prefix(entries: &[IndexEntry], log_len: u64) -> usize {
    let mut previous_end = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if !e.fits(i, previous_end, log_len) {
            return i;
        }
        previous_end = u64::from(e.end);
    }
    entries.len()
}

/// Is there, anywhere after `bad_position`, a complete frame whose checksum verifies and whose
/// offset lies after the bad frame's? Found by trying every byte position, without the index
/// (which a power loss can leave stale or empty): cheap header checks reject almost every
/// position before a checksum is computed. Runs only when recovery meets a bad frame.
fn valid_frame_after(
    segment: &Segment,
    log_len: u64,
    bad_position: u64,
) -> Result<bool, StorageError> {
    let first_offset = segment.next_offset();
    let mut window_start = bad_position + 1;
    let mut window = vec![0u8; CHUNK];
    while window_start + HEADER_SIZE as u64 <= log_len {
        let len = (log_len - window_start).min(CHUNK as u64) as usize;
        segment
            .log
            .read_exact_at(&mut window[..len], window_start)?;
        // Positions whose header lies wholly inside this window; the next window starts at
        // the first position this one could not check.
        let last = len.saturating_sub(HEADER_SIZE);
        for at in 0..=last {
            let position = window_start + at as u64;
            let Some(header) = FrameHeader::new(&window[at..len]) else {
                break;
            };
            let frame_len = header.frame_len();
            let remaining = log_len - position;
            let offset = header.offset();
            // A frame here would hold at least one message per 64 bytes before it.
            let highest = first_offset + (position - bad_position) / HEADER_SIZE as u64 + 1;
            if frame_len > remaining || offset <= first_offset || offset > highest {
                continue;
            }
            let mut frame = vec![0u8; frame_len as usize];
            if segment.log.read_exact_at(&mut frame, position).is_ok() && checksum_matches(&frame) {
                return Ok(true);
            }
        }
        window_start += last as u64 + 1;
    }
    Ok(false)
}

/// Whether the bad frame is rot inside messages rather than a torn tail, and then the index
/// entries of the damaged run it starts. The index file, written after the log, must describe
/// the run — its first entry starting where the walk stands — and intact data must follow
/// right where one of its entries ends: the next message, verified, with the next offset; or,
/// after the last message of a sealed segment, nothing (the next segment exists). A torn tail
/// has no intact message after it, so it never passes; and since the damaged frames' bytes stay
/// as they are, a repair can rewrite them from another copy.
fn rotted_in_place(
    scanner: &mut Scanner<'_>,
    disk_index: &[IndexEntry],
    index: &[IndexEntry],
    bad: &BadFrame,
    segment_start: u64,
    sealed: bool,
) -> Option<Vec<IndexEntry>> {
    let first = index.len();
    let begins = index.last().map_or(0, |e| u64::from(e.end));
    let agrees = first == 0 || disk_index.get(first - 1)?.end == index[first - 1].end;
    if begins != bad.position || !agrees {
        return None;
    }
    let file_len = scanner.file_len;
    for (i, entry) in disk_index.iter().enumerate().skip(first) {
        let end = u64::from(entry.end);
        if end == file_len {
            return sealed.then(|| disk_index[first..=i].to_vec());
        }
        let available = (file_len - end).min(HEADER_SIZE as u64) as usize;
        let header = FrameHeader::new(scanner.window(end, available).ok()?)?;
        let (frame_len, offset) = (header.frame_len(), header.offset());
        let next = segment_start + i as u64 + 1;
        if frame_len <= file_len - end && offset == next {
            let frame = scanner.window(end, frame_len as usize).ok()?;
            if checksum_matches(frame) {
                return Some(disk_index[first..=i].to_vec());
            }
        }
    }
    None
}

/// Does any later segment begin with a frame that verifies?
fn later_segment_valid(dir: &Path, starts: &[u64]) -> Result<bool, StorageError> {
    for &start in starts {
        let path = dir.join(format!("{}.log", super::segment::file_stem(start)));
        let file = File::open(&path).at(&path)?;
        let len = file.metadata().at(&path)?.len();
        let mut header = [0u8; HEADER_SIZE];
        if len < HEADER_SIZE as u64 || file.read_exact_at(&mut header, 0).is_err() {
            continue;
        }
        let frame_len = FrameHeader::new(&header).map_or(u64::MAX, |h| h.frame_len());
        if frame_len > len {
            continue;
        }
        let mut frame = vec![0u8; frame_len as usize];
        if file.read_exact_at(&mut frame, 0).is_ok()
            && FrameHeader::new(&frame).is_some_and(|h| h.offset() == start)
            && checksum_matches(&frame)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

struct BadFrame {
    position: u64,
    reason: String,
}

/// Reads frames sequentially through a large buffer, so verifying a tail costs a few big reads
/// rather than two small ones per message.
struct Scanner<'f> {
    file: &'f File,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'f> Scanner<'f> {
    fn new(file: &'f File, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// Makes `[position, position + len)` available in the buffer.
    fn window(&mut self, position: u64, len: usize) -> std::io::Result<&[u8]> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if position < self.buf_start || position + len as u64 > buf_end {
            let want = len.max(CHUNK) as u64;
            let read = want.min(self.file_len - position) as usize;
            self.buf.resize(read, 0);
            self.file.read_exact_at(&mut self.buf, position)?;
            self.buf_start = position;
        }
        let at = (position - self.buf_start) as usize;
        Ok(&self.buf[at..at + len])
    }

    /// Walks frames in `[from, to)`, appending an index entry for each. With `verify`, checks
    /// each frame's checksum and offset; without, only that the frame fits.
    fn walk(
        &mut self,
        from: u64,
        to: u64,
        segment_start: u64,
        index: &mut Vec<IndexEntry>,
        verify: bool,
    ) -> Result<(), BadFrame> {
        let mut position = from;
        while position < to {
            let bad = |reason: String| BadFrame { position, reason };
            if to - position < HEADER_SIZE as u64 {
                return Err(bad(format!(
                    "{} trailing bytes, less than a message header",
                    to - position
                )));
            }
            let header = self
                .window(position, HEADER_SIZE)
                .map_err(|e| bad(format!("read failed: {e}")))?;
            let header = FrameHeader::new(header).ok_or_else(|| bad("short header".into()))?;
            let frame_len = header.frame_len();
            let expected_offset = segment_start + index.len() as u64;
            let (offset, timestamp) = (header.offset(), header.timestamp());
            if frame_len > to - position {
                return Err(bad(format!(
                    "message of {frame_len} bytes runs past the end of the log"
                )));
            }
            let end = position + frame_len;
            if end > u32::MAX as u64 {
                return Err(bad(
                    "message ends beyond the 4 GiB a segment can index".into()
                ));
            }
            if verify {
                if offset != expected_offset {
                    return Err(bad(format!(
                        "message carries offset {offset}, expected {expected_offset}"
                    )));
                }
                let frame = self
                    .window(position, frame_len as usize)
                    .map_err(|e| bad(format!("read failed: {e}")))?;
                if !checksum_matches(frame) {
                    return Err(bad("checksum mismatch".into()));
                }
            }
            index.push(IndexEntry {
                relative_offset: (expected_offset - segment_start) as u32,
                end: end as u32,
                timestamp,
            });
            position = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::partition_log::tests::batch;
    use crate::storage::partition_log::PartitionLog;
    use std::io::Write;

    const MESSAGE: u64 = 64 + 100;

    /// Ten messages of 164 bytes each, written without a clean shutdown.
    fn crashed_log(dir: &Path) -> PathBuf {
        let mut log = PartitionLog::create(dir, 1 << 20, true).unwrap();
        log.append(&mut batch(10, 100), 1, || 7).unwrap();
        dir.join("00000000000000000000.log")
    }

    use std::path::PathBuf;

    #[test]
    fn a_crash_with_intact_files_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        crashed_log(dir.path());
        let (log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 10);
        assert_eq!(report.verified_bytes, 10 * MESSAGE);
        assert_eq!(report.truncated, None);
    }

    #[test]
    fn a_cut_and_garbled_tail_is_truncated_to_the_last_whole_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = crashed_log(dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(10 * MESSAGE - 30).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[0xAB; 100]).unwrap();
        drop(file);

        let (mut log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 9);
        let (_, position, cut) = report.truncated.unwrap();
        assert_eq!((position, cut), (9 * MESSAGE, MESSAGE - 30 + 100));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 9 * MESSAGE);
        assert_eq!(
            log.append(&mut batch(1, 100), 2, || 7).unwrap().base_offset,
            9
        );
        drop(log);
        let (log, _) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 10);
    }

    /// Rot inside a message the index describes, with intact messages after it, is not a torn
    /// write: the broker starts, keeps the bytes for a repair, serves everything else, and
    /// never serves the damaged message.
    #[test]
    fn rot_inside_a_described_message_is_kept_in_place_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = crashed_log(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(3 * MESSAGE + 80) as usize] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 10);
        assert_eq!(report.damaged, vec![(3, 4)]);
        assert_eq!(report.truncated, None);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
        let read = |offset, count| {
            log.plan_read(offset, count, usize::MAX)
                .unwrap()
                .read_into(&mut Vec::new())
        };
        assert!(read(0, 3).is_ok());
        assert!(read(4, 6).is_ok());
        assert!(matches!(read(3, 1), Err(StorageError::CorruptRead { .. })));
    }

    /// Neighbours that both rotted are one damaged run, stepped over by the index.
    #[test]
    fn a_run_of_rotted_messages_is_kept_in_place_as_one_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = crashed_log(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(3 * MESSAGE + 80) as usize] ^= 0x10;
        bytes[(4 * MESSAGE + 90) as usize] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 10);
        assert_eq!(report.damaged, vec![(3, 5)]);
        assert!(log
            .plan_read(5, 5, usize::MAX)
            .unwrap()
            .read_into(&mut Vec::new())
            .is_ok());
    }

    /// The last message of a sealed segment has no message after it in its file, but the next
    /// segment shows the log went on: rot there is kept too, not cut as a torn tail.
    #[test]
    fn rot_in_the_last_message_of_a_sealed_segment_is_kept_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 4 * MESSAGE, true).unwrap();
        for _ in 0..2 {
            log.append(&mut batch(5, 100), 1, || 7).unwrap();
        }
        drop(log);
        let path = dir.path().join("00000000000000000000.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), 4 * MESSAGE, true).unwrap();
        assert_eq!(log.messages_count(), 10);
        assert_eq!(report.damaged, vec![(4, 5)]);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    /// After a power loss the active index can be stale or empty; a flipped byte mid-log must
    /// still be told from a torn tail by the frames after it, found without the index.
    #[test]
    fn damage_with_an_emptied_index_still_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = crashed_log(dir.path());
        std::fs::write(dir.path().join("00000000000000000000.index"), b"").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(3 * MESSAGE + 80) as usize] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();

        let err = PartitionLog::open(dir.path(), 1 << 20, true).err().unwrap();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("expected offset 3"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
    }

    /// The scan does not mistake garbage for a frame: a cut last message followed by noise is
    /// still a torn tail, even with the index gone.
    #[test]
    fn a_garbled_tail_with_an_emptied_index_is_still_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = crashed_log(dir.path());
        std::fs::write(dir.path().join("00000000000000000000.index"), b"").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate((9 * MESSAGE + 30) as usize);
        bytes.extend((0..500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        std::fs::write(&path, &bytes).unwrap();

        let (log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 9);
        assert!(report.truncated.is_some());
    }

    #[test]
    fn a_lost_index_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        crashed_log(dir.path());
        std::fs::remove_file(dir.path().join("00000000000000000000.index")).unwrap();
        let (log, _) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(log.messages_count(), 10);
        assert_eq!(
            std::fs::metadata(dir.path().join("00000000000000000000.index"))
                .unwrap()
                .len(),
            10 * 16
        );
    }

    #[test]
    fn data_before_the_checkpoint_is_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::create(dir.path(), 1 << 20, true).unwrap();
        log.append(&mut batch(10, 100), 1, || 7).unwrap();
        log.sync_all().unwrap();
        log.write_checkpoint().unwrap();
        log.append(&mut batch(2, 100), 1, || 7).unwrap();
        drop(log);
        let (log, report) = PartitionLog::open(dir.path(), 1 << 20, true).unwrap();
        assert_eq!(report.verified_bytes, 2 * MESSAGE);
        assert_eq!(log.messages_count(), 12);
    }
}
