//! Reads of segments that only the object store holds. A poll below the local window gets the
//! segment's index (verified against the manifest's checksum), finds the byte range of the
//! messages it may return — the same count and byte budget rules as a local read — and fetches
//! that range in aligned blocks of `read_ahead` bytes: a consumer reading old data in order
//! finds its next poll in the cache. Every frame is verified before it is served, so a damaged
//! object answers an error, never wrong data.

use super::{index_key, lock, log_key, Tiering};
use crate::storage::partition_log::{verify_frames_at, RemoteRead};
use crate::storage::segment::IndexEntry;
use bytes::Bytes;
use iggy_tiering::{StoreError, TieredSegment};
use iggy_wire::message::INDEX_ENTRY_SIZE;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How long a poll waits for one block from the store before it answers an error: a stalled
/// store must not hold a consumer for the SDK's full retry budget.
const GET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The smallest block fetched, whatever `read_ahead` says.
const MIN_BLOCK: u64 = 64 << 10;

pub struct TierReader {
    cache: Mutex<Cache>,
    block: u64,
    /// Blocks being fetched ahead of the reader, so a poll does not start a second GET of one.
    prefetching: Mutex<std::collections::HashSet<(String, u64)>>,
}

/// Blocks fetched ahead of the last one a poll needed, in the background: a consumer reading
/// in order then finds its next blocks in the cache instead of waiting one GET per block.
const PREFETCH_BLOCKS: u64 = 3;

/// Messages a read served: how many, and their bytes (a poll's reads from the store and, in
/// `commands::messages`, whole polls).
pub struct Served {
    pub count: u32,
    pub bytes: usize,
}

#[derive(Clone)]
enum Cached {
    Index(Arc<Vec<IndexEntry>>),
    Block(Bytes),
}

impl Cached {
    fn size(&self) -> u64 {
        match self {
            Cached::Index(entries) => (entries.len() * INDEX_ENTRY_SIZE) as u64,
            Cached::Block(bytes) => bytes.len() as u64,
        }
    }
}

/// A byte-bounded cache, least recently used out first. Entries are few (tens of blocks of
/// megabytes), so eviction scans rather than keeping an ordered structure.
struct Cache {
    entries: HashMap<(String, u64), (Cached, u64)>,
    bytes: u64,
    capacity: u64,
    clock: u64,
}

impl Cache {
    fn get(&mut self, key: &(String, u64)) -> Option<Cached> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }

    fn put(&mut self, key: (String, u64), value: Cached) {
        let size = value.size();
        if size > self.capacity {
            return;
        }
        while self.bytes + size > self.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((gone, _)) = self.entries.remove(&oldest) {
                self.bytes -= gone.size();
            }
        }
        self.clock += 1;
        self.bytes += size;
        if let Some((old, _)) = self.entries.insert(key, (value, self.clock)) {
            self.bytes -= old.size();
        }
    }
}

/// The index's place in the cache: no block of a `.log` sits at this number.
const INDEX_SLOT: u64 = u64::MAX;

impl TierReader {
    pub fn new(cache_size: u64, read_ahead: u64) -> Self {
        Self {
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                bytes: 0,
                capacity: cache_size,
                clock: 0,
            }),
            block: read_ahead.max(MIN_BLOCK),
            prefetching: Mutex::default(),
        }
    }

    fn cached(&self, key: &(String, u64)) -> Option<Cached> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
    }

    fn remember(&self, key: (String, u64), value: Cached) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, value)
    }
}

impl Tiering {
    /// Appends the messages `read` asks for to `out`, exactly the bytes a local read of the
    /// same range would give.
    pub async fn read(
        self: &Arc<Self>,
        read: &RemoteRead,
        out: &mut Vec<u8>,
    ) -> Result<Served, StoreError> {
        let served = self.read_verified(read, out).await;
        match &served {
            Ok(served) => {
                self.health.remote_reads.fetch_add(1, Ordering::Relaxed);
                self.health
                    .remote_read_bytes
                    .fetch_add(served.bytes as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.health
                    .remote_read_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        served
    }

    async fn read_verified(
        self: &Arc<Self>,
        read: &RemoteRead,
        out: &mut Vec<u8>,
    ) -> Result<Served, StoreError> {
        let segment = &read.segment;
        let index = self.index(&read.key_base, segment).await?;
        let from = (read.offset - segment.start_offset) as usize;
        let upto = from.saturating_add(read.count as usize).min(index.len());
        if from >= upto {
            return Ok(Served { count: 0, bytes: 0 });
        }
        let start = if from == 0 {
            0
        } else {
            index[from - 1].end as u64
        };
        let budget_end = start.saturating_add(read.max_bytes as u64);
        // At least one message, however large, as a local read gives.
        let fit = from + index[from..upto].partition_point(|e| e.end as u64 <= budget_end);
        let to = fit.max(from + 1);
        let end = index[to - 1].end as u64;
        let key = log_key(&read.key_base, segment);
        let at = out.len();
        if let Err(error) = self.fetch_range(&key, segment, start, end, out).await {
            out.truncate(at);
            return Err(error);
        }
        self.prefetch_after(&read.key_base, segment, end, read.next);
        let path = PathBuf::from(format!("{}/{key}", self.store.describe()));
        if let Err(error) = verify_frames_at(&out[at..], &path, start) {
            out.truncate(at);
            return Err(StoreError::Corrupt {
                store: self.store.describe(),
                key,
                reason: error.to_string(),
            });
        }
        Ok(Served {
            count: (to - from) as u32,
            bytes: (end - start) as usize,
        })
    }

    /// The offset of the first message at or after `timestamp` in a tiered segment.
    pub async fn offset_at_or_after(
        &self,
        key_base: &str,
        segment: &TieredSegment,
        timestamp: u64,
    ) -> Result<Option<u64>, StoreError> {
        let index = self.index(key_base, segment).await?;
        let i = index.partition_point(|e| e.timestamp < timestamp);
        Ok((i < index.len()).then(|| segment.start_offset + i as u64))
    }

    async fn index(
        &self,
        key_base: &str,
        segment: &TieredSegment,
    ) -> Result<Arc<Vec<IndexEntry>>, StoreError> {
        let slot = (index_key(key_base, segment), INDEX_SLOT);
        self.await_prefetch(&slot).await;
        if let Some(Cached::Index(entries)) = self.reader.cached(&slot) {
            self.health.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(entries);
        }
        self.index_fetched(key_base, segment).await
    }

    /// GETs a segment's index, checks it against the manifest entry and caches it.
    async fn index_fetched(
        &self,
        key_base: &str,
        segment: &TieredSegment,
    ) -> Result<Arc<Vec<IndexEntry>>, StoreError> {
        let key = index_key(key_base, segment);
        let slot = (key.clone(), INDEX_SLOT);
        let bytes = self.timed_get(&key, 0, segment.index_size).await?;
        let damaged = |reason: String| StoreError::Corrupt {
            store: self.store.describe(),
            key: key.clone(),
            reason,
        };
        if iggy_tiering::checksum(&bytes) != segment.index_checksum {
            return Err(damaged("checksum differs from the manifest's".into()));
        }
        let entries: Vec<IndexEntry> = bytes
            .chunks_exact(INDEX_ENTRY_SIZE)
            .map(IndexEntry::decode)
            .collect();
        if entries.len() as u64 != segment.messages()
            || entries.last().map(|e| e.end as u64) != Some(segment.log_size)
        {
            return Err(damaged(
                "the index does not describe the segment the manifest names".into(),
            ));
        }
        let entries = Arc::new(entries);
        self.reader.remember(slot, Cached::Index(entries.clone()));
        Ok(entries)
    }

    /// Appends bytes `start..end` of the `.log` object to `out`, block by block through the
    /// cache.
    async fn fetch_range(
        &self,
        key: &str,
        segment: &TieredSegment,
        start: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let block = self.reader.block;
        let mut at = start;
        while at < end {
            let number = at / block;
            let block_start = number * block;
            let slot = (key.to_owned(), number);
            self.await_prefetch(&slot).await;
            let bytes = match self.reader.cached(&slot) {
                Some(Cached::Block(bytes)) => {
                    self.health.cache_hits.fetch_add(1, Ordering::Relaxed);
                    bytes
                }
                _ => {
                    let len = block.min(segment.log_size - block_start);
                    let bytes = self.timed_get(key, block_start, len).await?;
                    self.reader.remember(slot, Cached::Block(bytes.clone()));
                    bytes
                }
            };
            let from = (at - block_start) as usize;
            let to = ((end - block_start) as usize).min(bytes.len());
            out.extend_from_slice(&bytes[from..to]);
            at = block_start + to as u64;
        }
        Ok(())
    }

    /// Waits (a bounded time) for a block that a prefetch is fetching, rather than GET it twice.
    async fn await_prefetch(&self, slot: &(String, u64)) {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while lock(&self.reader.prefetching).contains(slot) && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Starts fetching the [`PREFETCH_BLOCKS`] blocks after the one holding byte `end - 1` of
    /// `segment`, continuing into `next` (and its index) when the segment ends first: a
    /// consumer crossing a segment boundary would otherwise wait for two GETs in a row.
    fn prefetch_after(
        self: &Arc<Self>,
        key_base: &str,
        segment: &TieredSegment,
        end: u64,
        next: Option<TieredSegment>,
    ) {
        let block = self.reader.block;
        let first = end.saturating_sub(1) / block + 1;
        let blocks_in = |s: &TieredSegment| s.log_size.div_ceil(block);
        let mut wanted: Vec<(TieredSegment, u64)> = (first..blocks_in(segment))
            .take(PREFETCH_BLOCKS as usize)
            .map(|number| (*segment, number))
            .collect();
        if let Some(next) = next.filter(|_| (wanted.len() as u64) < PREFETCH_BLOCKS) {
            self.prefetch_index(key_base, next);
            let rest = PREFETCH_BLOCKS as usize - wanted.len();
            wanted.extend(
                (0..blocks_in(&next))
                    .take(rest)
                    .map(|number| (next, number)),
            );
        }
        for (segment, number) in wanted {
            let slot = (log_key(key_base, &segment), number);
            if self.reader.cached(&slot).is_some()
                || !lock(&self.reader.prefetching).insert(slot.clone())
            {
                continue;
            }
            let tiering = self.clone();
            let block_start = number * block;
            let len = block.min(segment.log_size - block_start);
            tokio::spawn(async move {
                if let Ok(bytes) = tiering.timed_get(&slot.0, block_start, len).await {
                    tiering.reader.remember(slot.clone(), Cached::Block(bytes));
                }
                lock(&tiering.reader.prefetching).remove(&slot);
            });
        }
    }

    /// Fetches (and verifies, and caches) a segment's index in the background.
    fn prefetch_index(self: &Arc<Self>, key_base: &str, segment: TieredSegment) {
        let slot = (index_key(key_base, &segment), INDEX_SLOT);
        if self.reader.cached(&slot).is_some()
            || !lock(&self.reader.prefetching).insert(slot.clone())
        {
            return;
        }
        let (tiering, key_base) = (self.clone(), key_base.to_owned());
        tokio::spawn(async move {
            // A failure is the poll's to report when it needs the index.
            let _ = tiering.index_fetched(&key_base, &segment).await;
            lock(&tiering.reader.prefetching).remove(&slot);
        });
    }

    async fn timed_get(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let began = Instant::now();
        let answer =
            match tokio::time::timeout(GET_TIMEOUT, self.store.get_range(key, start, len)).await {
                Ok(answer) => answer,
                Err(_) => Err(StoreError::Unreachable {
                    store: self.store.describe(),
                    detail: format!("no answer for {key} within {GET_TIMEOUT:?}"),
                }),
            };
        self.health.observe_read(began.elapsed().as_secs_f64());
        match &answer {
            Ok(_) => {
                self.health.succeeded();
            }
            Err(error) => {
                self.health.failed(error);
                tracing::warn!(key, %error, "reading tiered data failed");
            }
        }
        answer
    }
}
