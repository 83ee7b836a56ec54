//! The model broker used as the replicated state machine in simulation: per-partition append
//! logs and stored consumer offsets, the two kinds of write the real broker replicates.
//!
//! Operation body: `[0, partition, payload…]` appends and replies with the new offset (u64);
//! `[1, consumer, partition, offset u64]` stores an offset and replies `[1]`, or `[0]` when the
//! offset is past the partition's end.

use vsr::{ClientId, Op, PrepareHeader, RestoreError, StateMachine};

#[derive(Debug, Clone, Default)]
pub struct ModelBroker {
    partitions: [Vec<u64>; 4],
    offsets: std::collections::BTreeMap<(u8, u8), u64>,
    digest: u128,
}

impl ModelBroker {
    /// Applies one operation of `client` at `op` (the checker replays committed ops with it).
    pub fn apply_op(&mut self, op: Op, client: ClientId, body: &[u8]) -> Vec<u8> {
        let reply = match body {
            [0, partition, payload @ ..] => {
                let log = &mut self.partitions[*partition as usize % 4];
                log.push(xxhash_rust::xxh3::xxh3_64(payload));
                (log.len() as u64 - 1).to_le_bytes().to_vec()
            }
            [1, consumer, partition, offset @ ..] if offset.len() == 8 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(offset);
                let offset = u64::from_le_bytes(raw);
                let end = self.partitions[*partition as usize % 4].len() as u64;
                if offset < end {
                    self.offsets.insert((*consumer, *partition % 4), offset);
                    vec![1]
                } else {
                    vec![0]
                }
            }
            _ => vec![0xFF],
        };
        // A running digest of everything applied: equal states, equal digests.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&self.digest.to_le_bytes());
        hasher.update(&op.to_le_bytes());
        hasher.update(&client.to_le_bytes());
        hasher.update(body);
        hasher.update(&reply);
        self.digest = hasher.digest128();
        reply
    }
}

impl StateMachine for ModelBroker {
    fn apply(&mut self, header: &PrepareHeader, body: &[u8]) -> Vec<u8> {
        self.apply_op(header.op, header.client, body)
    }

    fn digest(&self) -> u128 {
        self.digest
    }

    /// Little-endian: the digest, each partition's length and entries, then the stored
    /// offsets as (consumer, partition, offset).
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.digest.to_le_bytes());
        for partition in &self.partitions {
            out.extend_from_slice(&(partition.len() as u64).to_le_bytes());
            for entry in partition {
                out.extend_from_slice(&entry.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.offsets.len() as u64).to_le_bytes());
        for ((consumer, partition), offset) in &self.offsets {
            out.extend_from_slice(&[*consumer, *partition]);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let mut input = Reader(snapshot);
        let digest = u128::from_le_bytes(input.array()?);
        let mut partitions: [Vec<u64>; 4] = Default::default();
        for partition in &mut partitions {
            let len = input.u64()?;
            for _ in 0..len {
                partition.push(input.u64()?);
            }
        }
        let mut offsets = std::collections::BTreeMap::new();
        for _ in 0..input.u64()? {
            let [consumer, partition] = input.array()?;
            offsets.insert((consumer, partition), input.u64()?);
        }
        if !input.0.is_empty() {
            return Err(RestoreError(format!(
                "{} trailing bytes after the offsets",
                input.0.len()
            )));
        }
        *self = Self {
            partitions,
            offsets,
            digest,
        };
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RestoreError> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(RestoreError(format!(
                "truncated: wanted {N} bytes, {} left",
                self.0.len()
            )));
        };
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, RestoreError> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_restores_the_same_state_and_bad_ones_are_refused() {
        let mut broker = ModelBroker::default();
        broker.apply_op(1, 7, &[0, 2, 9, 9]);
        broker.apply_op(2, 7, &[1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        let snapshot = broker.snapshot();
        let mut restored = ModelBroker::default();
        restored.restore(&snapshot).expect("restores");
        assert_eq!(restored.snapshot(), snapshot);
        assert_eq!(restored.digest(), broker.digest());
        // The restored copy goes on exactly like the original.
        assert_eq!(
            broker.apply_op(3, 8, &[0, 2, 1]),
            restored.apply_op(3, 8, &[0, 2, 1])
        );
        assert_eq!(restored.digest(), broker.digest());
        let mut untouched = ModelBroker::default();
        assert!(untouched.restore(&snapshot[..snapshot.len() - 1]).is_err());
        let mut longer = snapshot.clone();
        longer.push(0);
        assert!(untouched.restore(&longer).is_err());
        assert_eq!(untouched.digest(), 0, "a refused snapshot changes nothing");
    }
}
