//! A history of what clients sent, what was acknowledged and what each replica returned, and
//! the one checker every replication test runs on it:
//!
//! * every replica returns the same messages, in the same order, with the same offsets, ids
//!   and timestamps (one order on all replicas);
//! * offsets run 0, 1, 2, … without a gap;
//! * every acknowledged message is there, exactly once; a message whose send failed is there
//!   at most once (it may have committed before the failure reached the client); nothing is
//!   there that nobody sent;
//! * each producer's messages appear in the order it sent them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct History {
    /// (producer, payload, acknowledged), in each producer's send order.
    sends: Mutex<Vec<(usize, String, bool)>>,
}

/// What one replica returned for a partition: (offset, id, timestamp, payload).
pub type Read = Vec<(u64, u128, u64, String)>;

impl History {
    pub fn record(&self, producer: usize, payloads: &[String], acknowledged: bool) {
        let mut sends = self.sends.lock().unwrap();
        for payload in payloads {
            sends.push((producer, payload.clone(), acknowledged));
        }
    }

    pub fn acknowledged(&self) -> usize {
        self.sends.lock().unwrap().iter().filter(|s| s.2).count()
    }

    /// Checks the reads of every replica against the history; panics with what is wrong.
    pub fn check(&self, reads: &[(String, Read)]) {
        let (first_name, first) = &reads[0];
        for (name, read) in &reads[1..] {
            assert_eq!(
                read.len(),
                first.len(),
                "{name} and {first_name} hold different counts"
            );
            for (a, b) in first.iter().zip(read) {
                assert_eq!(a, b, "{name} and {first_name} differ");
            }
        }
        for (i, (offset, ..)) in first.iter().enumerate() {
            assert_eq!(*offset, i as u64, "offsets must run without gaps");
        }
        let sends = self.sends.lock().unwrap();
        let sent: HashMap<&str, (usize, bool)> = sends
            .iter()
            .map(|(producer, payload, acked)| (payload.as_str(), (*producer, *acked)))
            .collect();
        let mut seen = HashSet::new();
        let mut last_index: HashMap<usize, usize> = HashMap::new();
        let order: HashMap<&str, usize> = sends
            .iter()
            .enumerate()
            .map(|(i, (_, payload, _))| (payload.as_str(), i))
            .collect();
        for (offset, _, _, payload) in first {
            let (producer, _) = sent
                .get(payload.as_str())
                .unwrap_or_else(|| panic!("offset {offset} holds {payload:?}, which nobody sent"));
            assert!(seen.insert(payload.as_str()), "{payload:?} is stored twice");
            let index = order[payload.as_str()];
            if let Some(previous) = last_index.insert(*producer, index) {
                assert!(
                    previous < index,
                    "producer {producer}'s messages are out of order"
                );
            }
        }
        let missing: Vec<&str> = sends
            .iter()
            .filter(|(_, payload, acked)| *acked && !seen.contains(payload.as_str()))
            .map(|(_, payload, _)| payload.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged messages are missing, first {:?}",
            missing.len(),
            missing.first()
        );
    }
}
