//! The scrubber: re-verifies stored data in the background at `storage.scrub_rate` bytes per second
//! — the sealed segments, and the active one as far as its checkpoint vouches for it (what a boot
//! no longer verifies) — so rot in data nobody reads is found before a consumer (or a replica's
//! repair) needs it. It reads through the same verified read path as a poll, a window at a time
//! outside the partition's lock, and reports damage with an error log naming the file and byte and
//! `iggy_scrub_corruptions_total`; polls of a damaged range answer `InvalidMessageChecksum`. The
//! range is then rewritten from another copy (`repair`): a peer's, or the object store's when the
//! segment is tiered; a single node without L3 has no other copy.

use crate::broker::Broker;
use crate::repair::{self, Damage};
use crate::state::partition::Partition;
use crate::storage::StorageError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read per step; the pause after each keeps the average at the configured rate. The
/// window's buffer stays allocated for a whole pass, which on a replica holding data is most of
/// the time, so it is kept small: an idle replica may hold 16 MiB in all.
const WINDOW: usize = 256 << 10;
/// Pause between full passes when there is little to scrub.
const IDLE: Duration = Duration::from_secs(10);

/// Runs until the process ends; a rate of 0 turns scrubbing off.
pub async fn run(broker: Arc<Broker>) {
    let rate = broker.config.storage.scrub_rate.0;
    if rate == 0 {
        return;
    }
    // One window's buffer for the whole pass, handed to each blocking read and back: a fresh
    // one per window moved the heap by a window several times a second, which the allocator's
    // trimmer reads as a busy broker, so it gave nothing back while a pass ran.
    let mut buffer = Vec::new();
    loop {
        let mut scrubbed = 0u64;
        for partition in broker.all_partitions() {
            let Some(range) = scrub_range(&partition) else {
                continue;
            };
            let mut next = range.start;
            // Where an index was last rebuilt: a window is checked again once after it.
            let mut rebuilt_at = None;
            while next < range.end {
                let checked = {
                    let partition = partition.clone();
                    let mut lent = std::mem::take(&mut buffer);
                    tokio::task::spawn_blocking(move || {
                        let window = check_window(&partition, next, &mut lent);
                        (window, lent)
                    })
                    .await
                };
                let Ok((Some(window), lent)) = checked else {
                    break;
                };
                buffer = lent;
                let damaged_index = window
                    .outcome
                    .as_ref()
                    .err()
                    .and_then(repair::damaged_index);
                match window.outcome {
                    Ok(()) => {}
                    // The segment's index file, not its log: rebuilt from the log, and this
                    // window checked again.
                    Err(error) if damaged_index.is_some() && rebuilt_at != Some(next) => {
                        broker
                            .metrics
                            .scrub_corruptions
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "scrub found a damaged index entry");
                        rebuilt_at = Some(next);
                        let partition = partition.clone();
                        let rebuilt = tokio::task::spawn_blocking(move || {
                            damaged_index
                                .is_some_and(|segment| repair::rebuild_index(&partition, segment))
                        })
                        .await;
                        if matches!(rebuilt, Ok(true)) {
                            continue;
                        }
                        break;
                    }
                    Err(error @ StorageError::CorruptRead { .. }) => {
                        broker
                            .metrics
                            .scrub_corruptions
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "scrub found damaged data");
                        let damage = Damage::of(&partition, next, next + u64::from(window.count));
                        if let (Some(damage), true) = (damage, repair::has_copies(&broker)) {
                            let (broker, partition) = (broker.clone(), partition.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                repair::repair(&broker, &partition, damage)
                            })
                            .await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "scrub could not read a segment"),
                }
                broker
                    .metrics
                    .scrub_bytes
                    .fetch_add(window.bytes, Ordering::Relaxed);
                scrubbed += window.bytes;
                next += u64::from(window.count);
                let pause = window.bytes as f64 / rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            }
        }
        if scrubbed < WINDOW as u64 {
            // Nothing to read for a while: the buffer goes back to the allocator.
            buffer = Vec::new();
            tokio::time::sleep(IDLE).await;
        }
    }
}

/// What the scrubber re-verifies in `partition`: its sealed local segments, and the active
/// segment up to where the checkpoint on disk covers it (a segment can stay active for weeks
/// on a slow topic, and a boot no longer verifies what a checkpoint covers, taken every
/// `storage.checkpoint_interval`). `None` when nothing is local.
pub fn scrub_range(partition: &Partition) -> Option<std::ops::Range<u64>> {
    let log = partition.log();
    let end = log.checkpointed_end().unwrap_or_else(|_| log.sealed_end());
    Some(log.local_first_offset()?..end)
}

/// The offsets of `partition`'s sealed local segments (empty when only the active segment is
/// local); `None` when nothing is local. The simulator rots and scrubs these.
pub fn sealed_range(partition: &Partition) -> Option<std::ops::Range<u64>> {
    let log = partition.log();
    Some(log.local_first_offset()?..log.sealed_end())
}

/// One window of sealed data read through the verified read path.
pub struct Window {
    /// Messages and bytes it covered.
    pub count: u32,
    pub bytes: u64,
    /// Whether they verified.
    pub outcome: Result<(), StorageError>,
}

/// Reads and verifies up to a window of `partition` from `next` on, into `buffer` (emptied
/// first; kept by the caller so that a pass reuses one allocation). Blocking. `None` when
/// nothing is there to read.
pub fn check_window(partition: &Partition, next: u64, buffer: &mut Vec<u8>) -> Option<Window> {
    let (plan, _) = match partition.plan_read(next, u32::MAX, WINDOW) {
        Ok(planned) => planned,
        // The segment's index file is damaged: the rest of the segment cannot be placed, so
        // it is what the window covered (the scrubber rebuilds the index and checks again).
        Err(error) => {
            let (_, end) = partition.log().segment_bounds(next)?;
            return Some(Window {
                count: u32::try_from(end - next).unwrap_or(u32::MAX),
                bytes: 0,
                outcome: Err(error),
            });
        }
    };
    if plan.count == 0 {
        return None;
    }
    let (count, bytes) = (plan.count, plan.bytes as u64);
    buffer.clear();
    let outcome = plan.read_into(buffer);
    Some(Window {
        count,
        bytes,
        outcome,
    })
}

/// One pass over `partition`'s sealed local segments without pauses: the ranges of offsets
/// that do not verify. Blocking (tests and the simulator scrub this way).
pub fn damaged_ranges(partition: &Partition) -> Vec<(u64, u64)> {
    let mut damaged = Vec::new();
    let Some(sealed) = sealed_range(partition) else {
        return damaged;
    };
    let mut next = sealed.start;
    let mut buffer = Vec::new();
    while next < sealed.end {
        let Some(window) = check_window(partition, next, &mut buffer) else {
            break;
        };
        let until = next + u64::from(window.count);
        if let Err(StorageError::CorruptRead { .. }) = window.outcome {
            damaged.push((next, until));
        }
        next = until;
    }
    damaged
}
