//! The model broker used as the replicated state machine in simulation: per-partition append
//! logs and stored consumer offsets, the two kinds of write the real broker replicates.
//!
//! Operation body: `[0, partition, payload…]` appends and replies with the new offset (u64);
//! `[1, consumer, partition, offset u64]` stores an offset and replies `[1]`, or `[0]` when the
//! offset is past the partition's end.

use vsr::{ClientId, Op, StateMachine};

#[derive(Debug, Clone, Default)]
pub struct ModelBroker {
    partitions: [Vec<u64>; 4],
    offsets: std::collections::BTreeMap<(u8, u8), u64>,
    digest: u128,
}

impl StateMachine for ModelBroker {
    fn apply(&mut self, op: Op, client: ClientId, body: &[u8]) -> Vec<u8> {
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

    fn digest(&self) -> u128 {
        self.digest
    }
}
