//! The node's half of cooperative rebalancing (`state::groups`): a partition moving away from
//! a consumer-group member stays with it until the member stored an offset for everything it
//! polled from it, and only the node the member is connected to saw those polls. So each node
//! looks at the moves away from its own members and, for each one that is due (all polled
//! messages stored, nothing polled, or `consumer_group.rebalancing_timeout` passed), issues the
//! operation that completes it ([`Operation::HandOverPartition`]), which every replica applies.
//!
//! It looks when `apply` says a move may have begun or become due (a membership change, a group
//! offset stored for a moving partition) and besides every `rebalancing_check_interval` (for the
//! timeout). A node that dies takes its members with it: the moves away from them end when they
//! are forgotten (`Operation::ForgetNode`).

use crate::broker::Broker;
use crate::ops::{Operation, Submission};
use crate::state::groups::{self, Handover};
use crate::submit::Submit;
use iggy_wire::ConsumerKind;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Wakes the node's handover task.
#[derive(Default)]
pub struct Handovers {
    wake: Notify,
}

impl Handovers {
    /// A move may have begun or become due: look now. Cheap and callable from `apply`; wakes
    /// coalesce while the task looks.
    pub fn look(&self) {
        self.wake.notify_one();
    }
}

/// A handover due from one of this node's members, with the group it belongs to.
struct Due {
    group: (u32, u32, u32),
    handover: Handover,
    why: groups::Due,
}

/// Runs for as long as the broker does.
pub async fn run(broker: std::sync::Arc<Broker>) {
    let every = broker.config.consumer_group.rebalancing_check_interval.0;
    loop {
        let _ = tokio::time::timeout(every, broker.handovers.wake.notified()).await;
        for due in due_now(&broker) {
            let submission = Submission {
                user: None,
                op: Operation::HandOverPartition {
                    stream: due.group.0,
                    topic: due.group.1,
                    group: due.group.2,
                    handover: due.handover,
                },
            };
            let mut moved = Vec::new();
            match broker
                .submitter()
                .submit(&broker, submission, &mut moved)
                .await
            {
                // Stale by the time it applied (the move cancelled, or completed by an earlier
                // submission this node had not applied yet when it looked again).
                Ok(()) if moved != [1] => {}
                Ok(()) => {
                    broker
                        .metrics
                        .group_handovers
                        .fetch_add(1, Ordering::Relaxed);
                    if due.why == groups::Due::TimedOut {
                        broker
                            .metrics
                            .group_handover_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        // The member polled messages it never stored an offset for; whoever
                        // holds the partition next polls them again.
                        tracing::info!(
                            partition = due.handover.partition,
                            member = due.handover.from.client,
                            "a consumer-group member did not store what it polled within the \
                             rebalancing timeout; its partition moved anyway"
                        );
                    }
                }
                // Retried at the next look (no primary for now, a full log, ...).
                Err(e) => {
                    tracing::debug!(error = %e, "a partition handover is not committed yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    broker.handovers.look();
                    break;
                }
            }
        }
    }
}

/// The handovers this node's members owe now.
fn due_now(broker: &Broker) -> Vec<Due> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let timeout = broker
        .config
        .consumer_group
        .rebalancing_timeout
        .0
        .as_micros() as u64;
    let local = |m: &crate::state::groups::GroupMember| *m == broker.group_member(m.client);
    let catalog = broker.catalog();
    let mut due = Vec::new();
    for (s, topic) in catalog
        .streams
        .values()
        .flat_map(|s| s.topics.values().map(move |t| (s.id, t)))
    {
        for group in topic.groups().values().filter(|g| !g.moving.is_empty()) {
            let key = group.id.to_string();
            let stored = |p: u32| {
                topic
                    .partitions
                    .get(p as usize)
                    .and_then(|partition| partition.offsets(ConsumerKind::Group).get(&key))
            };
            due.extend(
                group
                    .handovers_due(local, stored, now, timeout)
                    .into_iter()
                    .map(|(handover, why)| Due {
                        group: (s, topic.id, group.id),
                        handover,
                        why,
                    }),
            );
        }
    }
    due
}
