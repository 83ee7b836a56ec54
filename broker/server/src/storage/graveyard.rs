//! Data a replica deletes stays on disk until no checkpoint it may restart from needs it.
//!
//! A replica restarts from its durable checkpoint and replays the WAL's later ops onto it, so
//! the data that checkpoint names must still be there: a topic deleted, a partition purged or a
//! segment removed by retention *after* the checkpoint would otherwise be gone, the checkpoint
//! could not be restored, and the replica would stay recovering — every replica at once after
//! a power loss of the whole cluster. (The simulator found it as soon as its workload deleted
//! topics: `broker/server/tests/simulation.rs`.) So while an op is applied on a replica
//! ([`during`]), deleting a directory or segment files moves them into
//! `<data>/vsr/graveyard/<op>/<path below data>` instead; a checkpoint taken two checkpoints
//! later releases them ([`release_through`]); and boot ([`exhume`]) moves back what was buried
//! after the checkpoint it restarts from, before the broker opens — the WAL's replay deletes
//! it again. A log that starts again (a purge, a sync's restart) is recorded too, so that boot
//! also deletes the files it wrote since ([`mark_restart`]). A single node never sets the
//! context, and deletes at once as before.

use super::{IoContext, StorageError};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The graveyard below a data directory.
pub fn root(data: &Path) -> PathBuf {
    data.join("vsr").join("graveyard")
}

struct Context {
    data: PathBuf,
    op: u64,
    /// The number the next burial in this op's grave gets, once the grave was read (an op may
    /// bury thousands of segment files; the list is read once, not per burial).
    next: Option<usize>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Runs `f` with deletions below `data` buried under `op` (on this thread).
pub fn during<T>(data: &Path, op: u64, f: impl FnOnce() -> T) -> T {
    let previous = CONTEXT.with(|c| {
        c.borrow_mut().replace(Context {
            data: data.to_owned(),
            op,
            next: None,
        })
    });
    let result = f();
    CONTEXT.with(|c| *c.borrow_mut() = previous);
    result
}

/// The list of what one op's grave holds: a line `<number>\t<path below data>` per burial.
const PATHS: &str = "paths";

/// Buries `path` (a directory or a file below the data directory) if an op is being applied
/// on this thread; returns `false` when the caller should delete it itself. The burial is
/// listed before the move, so a crash in between leaves a line whose entry is missing (skipped
/// by [`exhume`]) rather than an entry nobody knows.
pub fn bury(path: &Path) -> Result<bool, StorageError> {
    let Some((grave, number)) = list(path, |number| number.to_string())? else {
        return Ok(false);
    };
    if let Some(number) = number {
        std::fs::rename(path, grave.join(number)).at(path)?;
    }
    Ok(true)
}

/// The entry name that records a restart of a partition's log (see [`mark_restart`]).
const RESTART: &str = "restart@";

/// Records, if an op is being applied on this thread, that the partition directory `dir`
/// (its segments and tier manifest already buried) starts again at `first_local`: a purge, or
/// state sync's restart at a peer's first local offset (`PartitionLog::start_again`). What the
/// log writes from then on is new files, which burial does not cover, so [`exhume`] undoes
/// the restart itself: it deletes the segments from `first_local` on, the tier manifest and
/// the partition's checkpoint file, then moves the buried ones back. Without it a replica
/// killed before the op was durable came back with its old segments beside the new ones and
/// refused to start (`make chaos` seed 40029). Returns whether it was recorded.
pub fn mark_restart(dir: &Path, first_local: u64) -> Result<bool, StorageError> {
    let listed = list(dir, |_| format!("{RESTART}{first_local}"))?;
    Ok(listed.is_some_and(|(_, entry)| entry.is_some()))
}

/// Appends a line for `path` to the grave of the op being applied, its entry named by
/// `entry` (given the burial's number); `None` when no op is applied on this thread or `path`
/// is not below its data directory. Returns the grave and, when `path` exists, the entry name.
fn list(
    path: &Path,
    entry: impl FnOnce(usize) -> String,
) -> Result<Option<(PathBuf, Option<String>)>, StorageError> {
    CONTEXT.with(|c| {
        let mut context = c.borrow_mut();
        let Some(context) = context.as_mut() else {
            return Ok(None);
        };
        let Ok(relative) = path.strip_prefix(&context.data) else {
            return Ok(None);
        };
        let grave = root(&context.data).join(format!("{:020}", context.op));
        if !path.exists() {
            return Ok(Some((grave, None)));
        }
        std::fs::create_dir_all(&grave).at(&grave)?;
        let list = grave.join(PATHS);
        let number = match context.next {
            Some(next) => next,
            None => listed(&grave)?.len(),
        };
        context.next = Some(number + 1);
        let name = entry(number);
        let line = format!("{name}\t{}\n", relative.display());
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&list)
                .at(&list)?,
            line.as_bytes(),
        )
        .at(&list)?;
        Ok(Some((grave, Some(name))))
    })
}

/// What one op's grave lists, in burial order: (entry name, path below data).
fn listed(grave: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let list = grave.join(PATHS);
    let text = match std::fs::read_to_string(&list) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&list),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(number, path)| (number.to_owned(), PathBuf::from(path)))
        .collect())
}

/// The ops with graves, oldest first.
fn graves(data: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let root = root(data);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&root),
    };
    let mut graves = Vec::new();
    for entry in entries {
        let path = entry.at(&root)?.path();
        if let Some(op) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        {
            graves.push((op, path));
        }
    }
    graves.sort();
    Ok(graves)
}

/// The name of the file holding a partition directory's creation time (`Broker::
/// create_partitions` writes it): which incarnation of its ids the directory is.
pub const INCARNATION: &str = "incarnation";

/// Records which incarnation a partition directory is.
pub fn mark_incarnation(partition_dir: &Path, created_at: u64) -> Result<(), StorageError> {
    let path = partition_dir.join(INCARNATION);
    std::fs::write(&path, created_at.to_string()).at(&path)
}

/// The buried directory of the partition at `relative` (below the data directory) created at
/// `created_at` — buried itself, or inside a buried topic or stream directory.
pub fn find_partition(data: &Path, relative: &Path, created_at: u64) -> Option<PathBuf> {
    for (_, grave) in graves(data).ok()?.into_iter().rev() {
        for (entry, buried) in listed(&grave).ok()? {
            let Ok(inside) = relative.strip_prefix(&buried) else {
                continue;
            };
            let candidate = grave.join(&entry).join(inside);
            let marked = std::fs::read_to_string(candidate.join(INCARNATION)).ok();
            if marked.and_then(|m| m.trim().parse().ok()) == Some(created_at) {
                return Some(candidate);
            }
        }
    }
    None
}

/// Calls `f` with a directory holding the files of the partition directory at `relative`
/// (below the data directory) as they were before each restart of its log that a grave records
/// ([`mark_restart`]: a purge, a sync's restart), newest first, until `f` answers. The
/// directory is made of hard links to what that restart buried (its segments, its tier
/// manifest) and removed after `f`. A peer serves a state sync from it when the asker's
/// checkpoint predates a purge: the live partition holds another history by then, and the
/// checkpoint's messages are only here. Anything unreadable (a release deleting the grave
/// meanwhile) skips that restart.
pub fn before_restarts<T>(
    data: &Path,
    relative: &Path,
    mut f: impl FnMut(&Path) -> Option<T>,
) -> Option<T> {
    static VIEWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for (op, grave) in graves(data).ok()?.into_iter().rev() {
        let Ok(entries) = listed(&grave) else {
            continue;
        };
        for (at, (entry, path)) in entries.iter().enumerate().rev() {
            if !entry.starts_with(RESTART) || path != relative {
                continue;
            }
            // What the restart buried: the files directly in that directory listed before
            // its line (a later restart in the same op buried what this one wrote).
            let earlier = entries[..at]
                .iter()
                .rev()
                .take_while(|(e, p)| !(e.starts_with(RESTART) && p == relative));
            let files: Vec<(PathBuf, &std::ffi::OsStr)> = earlier
                .filter(|(_, p)| p.parent() == Some(relative))
                .filter_map(|(e, p)| Some((grave.join(e), p.file_name()?)))
                .collect();
            let view = root(data).join("views").join(format!(
                "{op}-{at}-{}",
                VIEWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let linked = std::fs::create_dir_all(&view).is_ok()
                && files
                    .iter()
                    .all(|(from, name)| std::fs::hard_link(from, view.join(name)).is_ok());
            let answer = if linked { f(&view) } else { None };
            let _ = std::fs::remove_dir_all(&view);
            if answer.is_some() {
                return answer;
            }
        }
    }
    None
}

/// Whether anything buried waits for its release.
pub fn holds_any(data: &Path) -> Result<bool, StorageError> {
    Ok(!graves(data)?.is_empty())
}

/// Deletes what was buried at or before `op` (in the background: it may be gigabytes).
pub fn release_through(data: &Path, op: u64) -> Result<(), StorageError> {
    for (buried, path) in graves(data)? {
        if buried > op {
            break;
        }
        super::trash::discard_tree(&path)?;
    }
    Ok(())
}

/// Boot of a replica restarting from the checkpoint at `checkpoint` (0: none, the data is
/// rebuilt from the WAL): moves back everything buried after it over whatever lies there now
/// — newest burial first, so that for a path buried several times the first burial, which is
/// what the checkpoint knew, ends up in place, and a directory restored from a later op gets
/// back the segment files an earlier op took from it — then forgets every grave. Returns how
/// many burials came back.
pub fn exhume(data: &Path, checkpoint: u64) -> Result<usize, StorageError> {
    let graves = graves(data)?;
    let mut restored = 0;
    if checkpoint > 0 {
        for (op, grave) in graves.iter().rev() {
            if *op <= checkpoint {
                continue;
            }
            for (entry, relative) in listed(grave)?.into_iter().rev() {
                if let Some(first_local) = entry.strip_prefix(RESTART) {
                    undo_restart(&data.join(&relative), first_local)?;
                    continue;
                }
                let from = grave.join(&entry);
                if !from.exists() {
                    continue;
                }
                let target = data.join(&relative);
                super::metadata::remove_tree_now(&target)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).at(parent)?;
                }
                std::fs::rename(&from, &target).at(&target)?;
                restored += 1;
            }
        }
    }
    // Every grave, and what an interrupted release left renamed.
    super::metadata::remove_tree_now(&root(data))?;
    Ok(restored)
}

/// Undoes [`mark_restart`] in `dir`: what the restarted log wrote goes, so that the burials
/// moved back next leave the log, its tier manifest and its recovery as before the restart.
fn undo_restart(dir: &Path, first_local: &str) -> Result<(), StorageError> {
    let Ok(first_local) = first_local.parse::<u64>() else {
        return Ok(());
    };
    // Gone since (a later op deleted it, and that burial was moved back first if the
    // checkpoint knew it): nothing of the restart is left.
    if !dir.exists() {
        return Ok(());
    }
    let written = super::recovery::list_segment_starts(dir)?
        .into_iter()
        .filter(|&start| start >= first_local)
        .flat_map(|start| {
            let stem = super::segment::file_stem(start);
            [format!("{stem}.log"), format!("{stem}.index")]
        });
    let state = [super::tiered::FILE_NAME, super::checkpoint::FILE_NAME].map(String::from);
    for name in written.chain(state) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn what_was_deleted_after_the_checkpoint_comes_back_as_the_checkpoint_knew_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let partition = data.join("streams/0/topics/1/partitions/0");
        write(&partition.join("0.log"), "first incarnation, old segment");
        write(&partition.join("5.log"), "first incarnation, new segment");
        // Op 11: retention takes the old segment. Op 12: the topic goes. Op 13: a new topic
        // with the same ids appears, and op 14 deletes it too.
        during(data, 11, || bury(&partition.join("0.log"))).unwrap();
        during(data, 12, || bury(&data.join("streams/0/topics/1"))).unwrap();
        write(&partition.join("0.log"), "second incarnation");
        during(data, 14, || bury(&data.join("streams/0/topics/1"))).unwrap();
        write(&partition.join("0.log"), "third incarnation, live");
        assert!(
            !bury(&partition).unwrap(),
            "no op applied: the caller deletes"
        );

        assert_eq!(exhume(data, 10).unwrap(), 3);
        let read = |name: &str| std::fs::read_to_string(partition.join(name)).unwrap();
        assert_eq!(read("0.log"), "first incarnation, old segment");
        assert_eq!(read("5.log"), "first incarnation, new segment");
        assert!(!root(data).exists(), "every grave is forgotten");
    }

    #[test]
    fn burials_at_or_before_the_checkpoint_stay_deleted_and_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        write(&data.join("streams/0/a"), "old");
        write(&data.join("streams/1/b"), "newer");
        during(data, 5, || bury(&data.join("streams/0"))).unwrap();
        during(data, 9, || bury(&data.join("streams/1"))).unwrap();
        release_through(data, 5).unwrap();
        assert_eq!(graves(data).unwrap().len(), 1, "op 9's grave stays");
        assert_eq!(exhume(data, 9).unwrap(), 0);
        assert!(!data.join("streams/0").exists() && !data.join("streams/1").exists());
    }
}
