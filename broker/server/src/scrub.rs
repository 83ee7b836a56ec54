//! The scrubber: re-verifies sealed segments in the background at `storage.scrub_rate` bytes
//! per second, so rot in data nobody reads is found before a consumer (or a replica's repair)
//! needs it. It reads through the same verified read path as a poll, a window at a time outside
//! the partition's lock, and reports damage with an error log naming the file and byte and
//! `iggy_scrub_corruptions_total`; polls of a damaged range answer `InvalidMessageChecksum`.
//! The range is then rewritten from another copy (`repair`): a peer's, or the
//! object store's when the segment is tiered; a single node without L3 has no other copy.

use crate::broker::Broker;
use crate::repair::{self, Damage};
use crate::storage::StorageError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read per step; the pause after each keeps the average at the configured rate.
const WINDOW: usize = 1 << 20;
/// Pause between full passes when there is little to scrub.
const IDLE: Duration = Duration::from_secs(10);

/// Runs until the process ends; a rate of 0 turns scrubbing off.
pub async fn run(broker: Arc<Broker>) {
    let rate = broker.config.storage.scrub_rate.0;
    if rate == 0 {
        return;
    }
    loop {
        let mut scrubbed = 0u64;
        for partition in broker.all_partitions() {
            let (first, sealed_end) = {
                let log = partition.log();
                (log.local_first_offset(), log.sealed_end())
            };
            let Some(mut next) = first else {
                continue;
            };
            while next < sealed_end {
                let (plan, _) = partition.plan_read(next, u32::MAX, WINDOW);
                if plan.count == 0 {
                    break;
                }
                let (count, bytes) = (plan.count, plan.bytes as u64);
                let checked = tokio::task::spawn_blocking(move || {
                    let mut scratch = Vec::new();
                    plan.read_into(&mut scratch)
                })
                .await;
                match checked {
                    Ok(Ok(())) => {}
                    Ok(Err(error @ StorageError::CorruptRead { .. })) => {
                        broker
                            .metrics
                            .scrub_corruptions
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "scrub found damaged data");
                        let damage = Damage::of(&partition, next, next + u64::from(count));
                        if let (Some(damage), true) = (damage, repair::has_copies(&broker)) {
                            let (broker, partition) = (broker.clone(), partition.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                repair::repair(&broker, &partition, damage)
                            })
                            .await;
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "scrub could not read a segment"),
                    Err(_) => return,
                }
                broker
                    .metrics
                    .scrub_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                scrubbed += bytes;
                next += u64::from(count);
                tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
            }
        }
        if scrubbed < WINDOW as u64 {
            tokio::time::sleep(IDLE).await;
        }
    }
}
