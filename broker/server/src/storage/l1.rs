//! L1: the newest batches of every partition, kept in memory as they were written, so polls of
//! recent data (the common case: consumers keeping up with producers) are served without a
//! read from disk or a re-verification of bytes that never left memory.
//!
//! One byte budget for the whole process ([`set_capacity`], from `tiering.l1.size`; off until
//! set), spent on the newest batches across all partitions: when it is exceeded, the oldest
//! batch of the process goes, whichever partition holds it. A partition's batches sit in its
//! [`TailCache`] behind a lock of their own, which the eviction of another partition's append
//! may take (never the partition's log lock: an appender holds its own log lock while it
//! evicts, and two appenders evicting each other's batches must not wait on each other).
//!
//! Lock order: a partition's log lock, then any tail lock, or the queue lock, then one tail
//! lock. Nobody takes the queue lock while holding a tail lock.
//!
//! What is cached is exactly what went to the segment file at that position, so a hit is the
//! same bytes a disk read returns. Anything that rewrites a log other than by appending
//! (truncation, purge, restart, state sync) clears the partition's cache first.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

struct Pool {
    capacity: AtomicU64,
    used: AtomicU64,
    /// Every cached batch of the process, oldest first (entries of cleared or dropped caches
    /// linger until met, and are skipped then).
    queue: Mutex<VecDeque<Entry>>,
    /// Batches cached now (the queue's live entries).
    live: AtomicU64,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    /// Buffers of evicted batches, reused for the next ones: a broker that gives every large
    /// allocation its own mapping (`allocator.rs`) would otherwise fault in every page of every
    /// batch it caches — measured, that cost 40 % of a single node's produce throughput.
    spare: Mutex<Vec<BytesMut>>,
}

/// The most bytes of evicted buffers kept for reuse.
const SPARE_BYTES: usize = 16 << 20;

struct Entry {
    tail: Weak<Mutex<Batches>>,
    /// The tail's generation when the batch was cached; a clear starts a new one.
    generation: u64,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        capacity: AtomicU64::new(0),
        used: AtomicU64::new(0),
        queue: Mutex::new(VecDeque::new()),
        live: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        hit_bytes: AtomicU64::new(0),
        spare: Mutex::new(Vec::new()),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's L1 budget in bytes; 0 turns L1 off (what is cached drains as the next appends
/// find the budget exceeded).
pub fn set_capacity(bytes: u64) {
    pool().capacity.store(bytes, Ordering::Relaxed);
}

pub fn capacity() -> u64 {
    pool().capacity.load(Ordering::Relaxed)
}

/// Bytes cached now, for `/metrics`.
pub fn used() -> u64 {
    pool().used.load(Ordering::Relaxed)
}

/// Read ranges served from L1 and their bytes, for `/metrics`.
pub fn hits() -> (u64, u64) {
    let pool = pool();
    (
        pool.hits.load(Ordering::Relaxed),
        pool.hit_bytes.load(Ordering::Relaxed),
    )
}

/// One batch as written: `bytes` went to the segment starting at offset `segment`, at byte
/// `position` of its `.log`.
struct CachedBatch {
    segment: u64,
    position: u64,
    bytes: Bytes,
}

impl CachedBatch {
    fn end(&self) -> u64 {
        self.position + self.bytes.len() as u64
    }
}

#[derive(Default)]
struct Batches {
    generation: u64,
    batches: VecDeque<CachedBatch>,
    bytes: u64,
}

impl Batches {
    fn clear(&mut self) {
        self.generation += 1;
        self.release();
        self.batches.clear();
        self.bytes = 0;
    }

    /// Takes this cache's batches off the pool's accounts.
    fn release(&self) {
        let pool = pool();
        pool.used.fetch_sub(self.bytes, Ordering::Relaxed);
        pool.live
            .fetch_sub(self.batches.len() as u64, Ordering::Relaxed);
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.release();
    }
}

/// A partition's share of L1: its newest batches, in log order.
#[derive(Default)]
pub struct TailCache {
    batches: Arc<Mutex<Batches>>,
    /// Until when (µs since the epoch) appends are cached: a consumer polled near the log's
    /// end recently ([`Self::want`]). Copying every batch of a partition nobody reads at its
    /// end would cost producers a memcpy per byte for nothing (measured: 15–25 % of a single
    /// node's produce throughput).
    wanted_until: AtomicU64,
}

/// How long one poll near a partition's end keeps its appends cached.
const DEMAND_WINDOW_MICROS: u64 = 10_000_000;

/// Where a read range is found in L1: `from` is the first byte position the cache holds (the
/// range's start when it holds it all), `slices` the cached bytes from there to the range's end.
pub struct Cached {
    pub from: u64,
    pub slices: Vec<Bytes>,
}

impl TailCache {
    /// A consumer polled at (or near) the log's end at `now` (µs): cache what is appended for
    /// a while.
    pub fn want(&self, now: u64) {
        self.wanted_until
            .fetch_max(now + DEMAND_WINDOW_MICROS, Ordering::Relaxed);
    }

    /// Caches a batch just written at `position` of the segment starting at `segment` if a
    /// consumer wants the partition's newest data (as of `now`, µs), then evicts the process's
    /// oldest batches while the budget is exceeded.
    pub fn push(&self, segment: u64, position: u64, frames: &[u8], now: u64) {
        let pool = pool();
        let capacity = pool.capacity.load(Ordering::Relaxed);
        let len = frames.len() as u64;
        if now > self.wanted_until.load(Ordering::Relaxed) {
            return;
        }
        if capacity == 0 {
            if pool.used.load(Ordering::Relaxed) > 0 {
                evict(pool, 0);
            }
            return;
        }
        if len > capacity {
            return;
        }
        let generation = {
            let mut own = lock(&self.batches);
            own.batches.push_back(CachedBatch {
                segment,
                position,
                bytes: copied(pool, frames),
            });
            own.bytes += len;
            own.generation
        };
        pool.used.fetch_add(len, Ordering::Relaxed);
        pool.live.fetch_add(1, Ordering::Relaxed);
        lock(&pool.queue).push_back(Entry {
            tail: Arc::downgrade(&self.batches),
            generation,
        });
        evict(pool, capacity);
    }

    /// Forgets every cached batch (the log was rewritten other than by an append).
    pub fn clear(&self) {
        lock(&self.batches).clear();
    }

    /// The cached bytes of `len` bytes at `position` of the segment starting at `segment`: all
    /// of them, or a suffix (the cache begins inside the range), or `None`.
    pub fn lookup(&self, segment: u64, position: u64, len: usize) -> Option<Cached> {
        let end = position + len as u64;
        let own = lock(&self.batches);
        let first = own
            .batches
            .partition_point(|b| (b.segment, b.end()) <= (segment, position));
        let mut slices = Vec::new();
        let mut from = None;
        let mut next = None;
        for batch in own.batches.range(first..) {
            if batch.segment != segment || batch.position >= end {
                break;
            }
            if next.is_some_and(|n| n != batch.position) {
                // A gap: batches appended while nobody tailed the partition were not cached.
                // Only what follows the last gap can be served from memory.
                slices.clear();
                from = Some(batch.position);
            }
            from.get_or_insert(batch.position.max(position));
            let lo = position.saturating_sub(batch.position) as usize;
            let hi = (end.min(batch.end()) - batch.position) as usize;
            slices.push(batch.bytes.slice(lo..hi));
            next = Some(batch.end());
        }
        let from = from?;
        if next.is_none_or(|n| n < end) {
            return None;
        }
        let pool = pool();
        pool.hits.fetch_add(1, Ordering::Relaxed);
        pool.hit_bytes.fetch_add(end - from, Ordering::Relaxed);
        Some(Cached { from, slices })
    }
}

/// `frames` in a buffer of the pool's spares when one is large enough, else a new one.
fn copied(pool: &Pool, frames: &[u8]) -> Bytes {
    let reused = {
        let mut spare = lock(&pool.spare);
        let fit = spare.iter().position(|b| b.capacity() >= frames.len());
        fit.map(|i| spare.swap_remove(i))
    };
    let mut buffer = reused.unwrap_or_else(|| BytesMut::with_capacity(frames.len()));
    buffer.clear();
    buffer.extend_from_slice(frames);
    buffer.freeze()
}

fn recycle(pool: &Pool, buffer: BytesMut) {
    let mut spare = lock(&pool.spare);
    let held: usize = spare.iter().map(|b| b.capacity()).sum();
    if held + buffer.capacity() <= SPARE_BYTES {
        spare.push(buffer);
    }
}

/// Drops the oldest batches of the process until at most `capacity` bytes are cached.
fn evict(pool: &Pool, capacity: u64) {
    let mut queue = lock(&pool.queue);
    while pool.used.load(Ordering::Relaxed) > capacity {
        let Some(entry) = queue.pop_front() else {
            break;
        };
        let Some(tail) = entry.tail.upgrade() else {
            continue;
        };
        let mut tail = lock(&tail);
        if tail.generation != entry.generation {
            continue;
        }
        if let Some(batch) = tail.batches.pop_front() {
            let len = batch.bytes.len() as u64;
            tail.bytes -= len;
            pool.used.fetch_sub(len, Ordering::Relaxed);
            pool.live.fetch_sub(1, Ordering::Relaxed);
            // Unless a poll still holds it, the buffer serves a later batch.
            if let Ok(buffer) = batch.bytes.try_into_mut() {
                recycle(pool, buffer);
            }
        }
    }
    // Entries of cleared or dropped caches are skipped only when met; when the budget is never
    // exceeded they would pile up, so drop them once they outnumber the live batches.
    if queue.len() > 4096 && queue.len() as u64 > 2 * pool.live.load(Ordering::Relaxed) {
        queue.retain(|entry| {
            entry
                .tail
                .upgrade()
                .is_some_and(|tail| lock(&tail).generation == entry.generation)
        });
    }
}

/// Tests that change the process's budget hold this, so they do not race each other.
#[cfg(test)]
pub(crate) static BUDGET_TESTS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(cached: &Cached) -> Vec<u8> {
        cached
            .slices
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }

    #[test]
    fn serves_whole_ranges_and_suffixes_and_evicts_the_oldest_batch_of_the_process() {
        let _serial = lock(&BUDGET_TESTS);
        set_capacity(300);
        let a = TailCache::default();
        let b = TailCache::default();
        a.push(0, 0, &[9; 100], 1);
        assert_eq!(used(), 0, "nobody polled near a's end: not cached");
        a.want(0);
        b.want(0);
        a.push(0, 0, &[1; 100], 1);
        a.push(0, 100, &[2; 100], 1);
        b.push(7, 0, &[3; 100], 1);
        assert_eq!(used(), 300);

        let whole = a.lookup(0, 50, 100).expect("cached");
        assert_eq!(whole.from, 50);
        assert_eq!(joined(&whole), [[1u8; 50], [2u8; 50]].concat());
        assert!(
            a.lookup(0, 150, 100).is_none(),
            "runs past what was written"
        );
        assert!(a.lookup(7, 0, 10).is_none(), "another segment");

        // A fourth batch pushes out the process's oldest, a's first.
        b.push(7, 100, &[4; 100], 1);
        assert_eq!(used(), 300);
        let suffix = a.lookup(0, 0, 200).expect("the newer half is cached");
        assert_eq!(suffix.from, 100);
        assert_eq!(joined(&suffix), vec![2u8; 100]);

        // A cleared cache and a dropped one give their bytes back, and their lingering queue
        // entries do not evict anything else.
        a.clear();
        assert!(a.lookup(0, 100, 100).is_none());
        drop(b);
        assert_eq!(used(), 0);
        let c = TailCache::default();
        c.want(0);
        c.push(1, 0, &[5; 100], 1);
        c.push(1, 100, &[6; 100], 1);
        c.push(1, 200, &[7; 100], 1);
        assert_eq!(joined(&c.lookup(1, 0, 300).expect("all three")).len(), 300);

        // A batch nobody wanted leaves a gap: only what follows it is served.
        let d = TailCache::default();
        d.want(0);
        d.push(2, 0, &[1; 10], 1);
        d.push(2, 10, &[2; 10], u64::MAX);
        d.push(2, 20, &[3; 10], 1);
        let after_gap = d.lookup(2, 0, 30).expect("the batch after the gap");
        assert_eq!((after_gap.from, joined(&after_gap)), (20, vec![3u8; 10]));
        assert!(d.lookup(2, 5, 10).is_none(), "ends inside the gap");
        drop(d);

        // Off: the next append drains what is cached.
        set_capacity(0);
        c.push(1, 300, &[8; 10], 1);
        assert!(c.lookup(1, 0, 10).is_none());
        assert_eq!(used(), 0);
    }
}
