//! A bound on what peers' messages may hold queued for the replica thread.
//!
//! Connections from peers are read by tasks of their own and hand each message to the replica
//! thread through a channel. While that thread is busy, the primary goes on sending: every
//! prepare to every backup. A state sync holds the thread for as long as the data takes —
//! a wiped member rebuilding a large partition, tens of seconds or more — and a syncing
//! member's queue grew by the cluster's whole write rate meanwhile: 1.3 GiB during a 24 s sync
//! of 950 MB under load (docs/replication.md, "Inbound messages are bounded").
//!
//! So the prepare bodies queued are counted, and a message carrying prepares that would take
//! the count past the budget is dropped, as a lossy network would drop it. VSR is built for
//! that: the primary retransmits what is not acknowledged, a backup repairs the ops it lacks,
//! and one far behind syncs again. Messages without prepares (acks, commits, pings, votes
//! without a log) are small and always pass, and so does any message when nothing is queued,
//! so a view change's log larger than the budget still gets through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use vsr::Envelope;

#[derive(Debug)]
pub struct Inbound {
    queued: AtomicUsize,
    budget: usize,
    /// Whether the last message that carried prepares was dropped (one log line per run).
    dropping: AtomicBool,
}

impl Inbound {
    /// At most `budget` bytes of prepare bodies wait (`replication.inbound_budget`, 256 MiB
    /// by default: about a second of the fastest writes measured here; more only ever queued
    /// while the thread was held up).
    pub fn with_budget(budget: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            budget,
            dropping: AtomicBool::new(false),
        }
    }

    /// Whether `envelope` may be queued; if so it is counted until [`taken`](Self::taken).
    pub fn admit(&self, envelope: &Envelope) -> bool {
        let weight = weight(envelope);
        if weight == 0 {
            return true;
        }
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + weight <= self.budget).then_some(queued + weight)
            })
            .is_ok();
        if admitted {
            if self.dropping.swap(false, Ordering::Relaxed) {
                tracing::info!("the replica thread takes peers' prepares again");
            }
        } else {
            if !self.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    queued = self.queued.load(Ordering::Relaxed),
                    budget = self.budget,
                    "the replica thread is behind (a state sync holds it): dropping peers' \
                     prepares until it catches up; the protocol repairs what it misses"
                );
            }
        }
        admitted
    }

    /// The replica thread took `envelope`, which [`admit`](Self::admit) let in.
    pub fn taken(&self, envelope: &Envelope) {
        let weight = weight(envelope);
        if weight > 0 {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    Some(queued.saturating_sub(weight))
                });
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// What `envelope` holds in memory that counts: its prepares' bodies.
fn weight(envelope: &Envelope) -> usize {
    envelope
        .message
        .prepares()
        .iter()
        .map(|p| p.body.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsr::{Message, Node, Prepare};

    fn envelope(message: Message) -> Envelope {
        Envelope {
            cluster: 1,
            group: 0,
            epoch: 0,
            from: Node::Replica(0),
            to: Node::Replica(1),
            message,
        }
    }

    fn prepare(bytes: usize) -> Envelope {
        let mut prepare = Prepare::root(1, 0, 0);
        prepare.body = vec![7u8; bytes].into();
        envelope(Message::Prepare { view: 0, prepare })
    }

    #[test]
    fn prepares_past_the_budget_are_dropped_until_the_thread_takes_what_is_queued() {
        let inbound = Inbound::with_budget(1000);
        let (first, second, third) = (prepare(600), prepare(400), prepare(1));
        assert!(inbound.admit(&first));
        assert!(inbound.admit(&second), "exactly the budget");
        assert_eq!(inbound.queued(), 1000);
        assert!(!inbound.admit(&third), "one byte past it");
        assert_eq!(inbound.queued(), 1000, "a dropped message is not counted");

        // Messages without prepares always pass, and are not counted.
        let commit = envelope(Message::Commit { view: 0, commit: 3 });
        assert!(inbound.admit(&commit));
        inbound.taken(&commit);
        assert_eq!(inbound.queued(), 1000);

        inbound.taken(&first);
        assert_eq!(inbound.queued(), 400);
        assert!(inbound.admit(&third));
        assert!(!inbound.admit(&prepare(600)));
        inbound.taken(&second);
        inbound.taken(&third);
        assert_eq!(inbound.queued(), 0);

        // Larger than the whole budget: passes when nothing is queued, so a view change's long
        // log still arrives, and then holds the rest back.
        let huge = prepare(5000);
        assert!(inbound.admit(&huge));
        assert!(!inbound.admit(&prepare(1)));
        inbound.taken(&huge);
        assert_eq!(inbound.queued(), 0);
    }
}
