//! Deleted segment files leave the log at once and the disk later.
//!
//! Unlinking a large file frees its extents inside the call — milliseconds for a gigabyte
//! segment on ext4 — and retention on a replica runs on the thread that applies every op, so
//! a pass that deleted many segments held up every write behind it. A deleted segment's files
//! are therefore renamed to `<name>.deleted` (cheap, and made durable with the directory) and
//! unlinked by a background thread. Boot removes any that a crash left behind; recovery never
//! reads them, since only `*.log` names are segments.

use super::{fsutil, IoContext, StorageError};
use crate::reclaim::Reclaimer;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What a renamed file's name ends with.
pub const SUFFIX: &str = ".deleted";

/// Renames each file to its `.deleted` name and makes that durable in `dir`; the files are
/// unlinked later, off the caller's thread.
pub fn discard(dir: &Path, files: &[&Path]) -> Result<(), StorageError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut renamed = Vec::with_capacity(files.len());
    for file in files {
        let target = trashed_name(file);
        std::fs::rename(file, &target).at(file)?;
        renamed.push(target);
    }
    fsutil::sync_dir(dir)?;
    unlink_later(renamed);
    Ok(())
}

/// Renames a directory tree to its `.deleted` name and removes it off the caller's thread.
pub fn discard_tree(dir: &Path) -> Result<(), StorageError> {
    let target = trashed_name(dir);
    std::fs::rename(dir, &target).at(dir)?;
    unlink_later(vec![target]);
    Ok(())
}

/// Removes the `.deleted` files a crash left in `dir` before their unlink.
pub fn empty(dir: &Path) -> Result<(), StorageError> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.to_string_lossy().ends_with(SUFFIX) {
            // The unlink thread may be removing it right now (a partition reopened in the same
            // process): gone is what we want either way.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
                _ => {}
            }
        }
    }
    Ok(())
}

fn trashed_name(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

fn unlink_later(files: Vec<PathBuf>) {
    // At idle priority (`crate::reclaim`): unlinking frees the files' pages or extents, work
    // that need not compete with serving. Past 64 waiting lots the caller unlinks.
    static UNLINKER: OnceLock<Reclaimer> = OnceLock::new();
    UNLINKER
        .get_or_init(|| Reclaimer::start("segment-unlink", 64))
        .submit(move || files.iter().for_each(|file| unlink(file)));
}

fn unlink(file: &Path) {
    let removed = match file.is_dir() {
        true => std::fs::remove_dir_all(file),
        false => std::fs::remove_file(file),
    };
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %file.display(), error = %e, "cannot remove deleted data");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarded_files_leave_at_once_and_their_renamed_copies_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("00000000000000000000.log");
        let index = dir.path().join("00000000000000000000.index");
        std::fs::write(&log, b"frames").unwrap();
        std::fs::write(&index, b"entries").unwrap();
        discard(dir.path(), &[&log, &index]).unwrap();
        assert!(!log.exists() && !index.exists());
        for _ in 0..200 {
            if std::fs::read_dir(dir.path()).unwrap().next().is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the renamed files were never unlinked");
    }

    #[test]
    fn boot_empties_what_a_crash_left_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join(format!("00000000000000000042.log{SUFFIX}"));
        let kept = dir.path().join("00000000000000000042.index");
        std::fs::write(&left, b"old").unwrap();
        std::fs::write(&kept, b"live").unwrap();
        empty(dir.path()).unwrap();
        assert!(!left.exists());
        assert!(kept.exists());
    }
}
