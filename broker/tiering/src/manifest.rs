//! The per-partition manifest: which sealed segments the object store holds, with the sizes,
//! offsets, timestamps and checksums a reader needs to find and verify them without listing the
//! bucket. It is written after every upload (locally and beside the segments in the store), and
//! a local copy of a segment is deleted only once a durable manifest names it.

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly; a newer manifest is refused, not misread.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Oldest first, contiguous: each segment starts where the previous one ends.
    pub segments: Vec<TieredSegment>,
}

/// One sealed segment in the store: `<start_offset>.log` and `<start_offset>.index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TieredSegment {
    pub start_offset: u64,
    /// One past the last message's offset.
    pub next_offset: u64,
    pub log_size: u64,
    pub index_size: u64,
    pub first_timestamp: u64,
    pub last_timestamp: u64,
    /// XXH3-64 of the `.log` and `.index` objects as uploaded.
    pub log_checksum: u64,
    pub index_checksum: u64,
    /// When the upload finished (µs since the epoch): the local retention window counts from
    /// here.
    pub uploaded_at: u64,
}

impl TieredSegment {
    pub fn messages(&self) -> u64 {
        self.next_offset - self.start_offset
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.start_offset <= offset && offset < self.next_offset
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Parse(String),
    #[error("manifest version {0} is newer than this broker understands ({MANIFEST_VERSION})")]
    Version(u32),
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
}

impl Manifest {
    pub fn new() -> Self {
        Self {
            version: MANIFEST_VERSION,
            segments: Vec::new(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if manifest.version > MANIFEST_VERSION {
            return Err(ManifestError::Version(manifest.version));
        }
        manifest.check()?;
        Ok(manifest)
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of integers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Segments are non-empty, ordered and contiguous.
    pub fn check(&self) -> Result<(), ManifestError> {
        let mut expected: Option<u64> = None;
        for segment in &self.segments {
            if segment.next_offset <= segment.start_offset {
                return Err(ManifestError::Inconsistent(format!(
                    "segment {} holds no messages",
                    segment.start_offset
                )));
            }
            if let Some(expected) = expected {
                if segment.start_offset != expected {
                    return Err(ManifestError::Inconsistent(format!(
                        "segment {} should start at {expected}",
                        segment.start_offset
                    )));
                }
            }
            expected = Some(segment.next_offset);
        }
        Ok(())
    }

    /// The offset after the newest segment in the store, if any.
    pub fn end(&self) -> Option<u64> {
        self.segments.last().map(|s| s.next_offset)
    }

    pub fn find(&self, offset: u64) -> Option<&TieredSegment> {
        let i = self.segments.partition_point(|s| s.next_offset <= offset);
        self.segments.get(i).filter(|s| s.contains(offset))
    }

    pub fn holds(&self, start_offset: u64) -> bool {
        self.segments
            .binary_search_by_key(&start_offset, |s| s.start_offset)
            .is_ok()
    }

    /// Adds the next segment; it must continue the manifest (an upload retried after a crash
    /// names a segment already present, which is a no-op rather than a duplicate).
    pub fn push(&mut self, segment: TieredSegment) -> Result<(), ManifestError> {
        if self.holds(segment.start_offset) {
            return Ok(());
        }
        if let Some(end) = self.end() {
            if segment.start_offset != end {
                return Err(ManifestError::Inconsistent(format!(
                    "segment {} does not continue the manifest, which ends at {end}",
                    segment.start_offset
                )));
            }
        }
        self.segments.push(segment);
        Ok(())
    }

    /// Removes the segments that start below `offset` and returns them (retention).
    pub fn remove_below(&mut self, offset: u64) -> Vec<TieredSegment> {
        let n = self.segments.partition_point(|s| s.start_offset < offset);
        self.segments.drain(..n).collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.log_size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: u64, next: u64) -> TieredSegment {
        TieredSegment {
            start_offset: start,
            next_offset: next,
            log_size: (next - start) * 100,
            index_size: (next - start) * 16,
            first_timestamp: start,
            last_timestamp: next - 1,
            log_checksum: 1,
            index_checksum: 2,
            uploaded_at: 3,
        }
    }

    #[test]
    fn segments_must_continue_and_repeats_are_no_ops() {
        let mut manifest = Manifest::new();
        manifest.push(segment(0, 10)).unwrap();
        manifest.push(segment(10, 25)).unwrap();
        manifest.push(segment(10, 25)).unwrap();
        assert_eq!(manifest.segments.len(), 2);
        assert!(manifest.push(segment(30, 40)).is_err());
        assert_eq!(manifest.find(24).map(|s| s.start_offset), Some(10));
        assert_eq!(manifest.find(25), None);
        assert_eq!(manifest.end(), Some(25));
        let decoded = Manifest::decode(&manifest.encode()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(manifest.remove_below(10).len(), 1);
        assert_eq!(manifest.segments[0].start_offset, 10);
    }

    #[test]
    fn damaged_or_newer_manifests_are_refused() {
        assert!(matches!(
            Manifest::decode(b"{\"version\": 1"),
            Err(ManifestError::Parse(_))
        ));
        let mut newer = Manifest::new();
        newer.version = MANIFEST_VERSION + 1;
        assert!(matches!(
            Manifest::decode(&newer.encode()),
            Err(ManifestError::Version(_))
        ));
        let mut gap = Manifest::new();
        gap.segments = vec![segment(0, 10), segment(11, 20)];
        assert!(matches!(
            Manifest::decode(&gap.encode()),
            Err(ManifestError::Inconsistent(_))
        ));
    }
}
