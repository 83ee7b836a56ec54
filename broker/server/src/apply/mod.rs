//! The deterministic half of every state change: [`apply`] executes an [`Operation`] against
//! the catalog and the partitions, given the context the submitter decided, and writes the
//! client's reply. Given the same state, operation and context it does the same thing — which
//! is what lets every replica of a replicated broker run it — so it reads no clock and draws no
//! randomness, and it checks permissions itself, against the state the operation meets.
//!
//! One module per kind of object, as in `commands/`.

mod groups;
mod messages;
mod settings;
mod streams;
mod tokens;
mod topics;
mod users;

use crate::broker::Broker;
use crate::error::Result;
use crate::ops::{OpContext, Operation, Submission};
use crate::state::partition::Partition;
use iggy_wire::Partitioning;
use std::sync::Arc;

pub use tokens::is_expired;

/// What an applied operation leaves for its submitter to finish.
#[derive(Default)]
pub struct Applied {
    /// An append's partition and write sequence number: the submitter waits until the
    /// partition's durability policy is met for it (`Partition::persisted`).
    pub sync: Option<(Arc<Partition>, u64)>,
}

pub use messages::StagedSend;

/// A replicated primary's work ahead on the op it applies next, while the backups acknowledge
/// it: a send's batch is stamped and written into its partition, unpublished
/// ([`messages::stage`]). Nothing else is worth doing ahead; `None` for every other operation.
pub fn stage(
    broker: &Broker,
    context: OpContext,
    mut submission: Submission<'_>,
) -> Option<StagedSend> {
    let batch = batch_of(&mut submission.op)?;
    messages::stage(broker, context, submission.user, batch)
}

/// Applies the op [`stage`] worked on, whose submission holds the frames it stamped, by
/// publishing what it wrote. `None` when that no longer fits the state: the op must then be
/// applied ([`apply`]) from its body.
pub fn publish(
    broker: &Broker,
    context: OpContext,
    mut submission: Submission<'_>,
    staged: StagedSend,
) -> Result<Option<Applied>> {
    let user = submission.user;
    match batch_of(&mut submission.op) {
        Some(batch) => messages::publish(broker, context, user, batch, staged),
        None => staged
            .abandon()
            .map(|()| None)
            .map_err(crate::error::BrokerError::Append),
    }
}

/// Decides where a balanced send goes before it enters the replication log: the partition this
/// member's round-robin cursor names, carried in the op as a partition id. Applied as
/// `Balanced`, every replica would move a cursor of its own, which no checkpoint holds: a
/// replica restored from one (after a restart or a state sync) starts it again at 0 and sends
/// the replayed and later batches to other partitions than its peers do, with the same reply,
/// so nothing would notice. A single node applies `Balanced` itself, as before.
pub fn decide_partition(broker: &Broker, op: &mut Operation<'_>) {
    if let Operation::Append {
        stream,
        topic,
        partitioning: partitioning @ Partitioning::Balanced,
        ..
    } = op
    {
        if let Some(id) = messages::next_balanced(broker, stream, topic) {
            *partitioning = Partitioning::PartitionId(id);
        }
    }
}

/// A send's batch, borrowed from its operation.
fn batch_of<'a>(op: &'a mut Operation<'_>) -> Option<messages::Batch<'a>> {
    match op {
        Operation::Append {
            stream,
            topic,
            partitioning,
            count,
            index,
            messages,
        } => Some(messages::Batch {
            stream,
            topic,
            partitioning,
            count: *count,
            index,
            messages,
        }),
        _ => None,
    }
}

pub fn apply(
    broker: &Broker,
    context: OpContext,
    submission: Submission<'_>,
    reply: &mut Vec<u8>,
) -> Result<Applied> {
    let Submission { user, op } = submission;
    let done = |result: Result<()>| result.map(|()| Applied::default());
    match op {
        Operation::CreateStream { name } => {
            done(streams::create(broker, context, user, name, reply))
        }
        Operation::UpdateStream { stream, name } => {
            done(streams::update(broker, user, &stream, name))
        }
        Operation::DeleteStream { stream } => done(streams::delete(broker, user, &stream)),
        Operation::PurgeStream { stream } => done(streams::purge(broker, user, &stream)),
        Operation::CreateTopic {
            stream,
            partitions,
            settings,
        } => done(topics::create(
            broker, context, user, &stream, partitions, settings, reply,
        )),
        Operation::UpdateTopic {
            stream,
            topic,
            settings,
        } => done(topics::update(broker, user, &stream, &topic, settings)),
        Operation::DeleteTopic { stream, topic } => {
            done(topics::delete(broker, user, &stream, &topic))
        }
        Operation::PurgeTopic { stream, topic } => {
            done(topics::purge(broker, user, &stream, &topic))
        }
        Operation::CreatePartitions {
            stream,
            topic,
            count,
        } => done(topics::create_partitions(
            broker, context, user, &stream, &topic, count,
        )),
        Operation::DeletePartitions {
            stream,
            topic,
            count,
        } => done(topics::delete_partitions(
            broker, context, user, &stream, &topic, count,
        )),
        Operation::DeleteSegments {
            stream,
            topic,
            partition,
            count,
        } => done(topics::delete_segments(
            broker, user, &stream, &topic, partition, count,
        )),
        Operation::CreateUser {
            username,
            password_hash,
            active,
            permissions,
        } => done(users::create(
            broker,
            context,
            user,
            users::NewUser {
                username,
                password_hash,
                active,
                permissions,
            },
            reply,
        )),
        Operation::DeleteUser { user: target } => done(users::delete(broker, user, &target)),
        Operation::UpdateUser {
            user: target,
            username,
            active,
        } => done(users::update(broker, user, &target, username, active)),
        Operation::UpdatePermissions {
            user: target,
            permissions,
        } => done(users::update_permissions(
            broker,
            user,
            &target,
            permissions,
        )),
        Operation::ChangePassword {
            user: target,
            expected_hash,
            new_hash,
        } => done(users::change_password(
            broker,
            user,
            target,
            &expected_hash,
            new_hash,
        )),
        Operation::CreateToken {
            name,
            token_sha256,
            lifetime,
        } => done(tokens::create(
            broker,
            context,
            user,
            name,
            token_sha256,
            lifetime,
        )),
        Operation::DeleteToken { name } => done(tokens::delete(broker, user, &name)),
        Operation::ExpireTokens => done(tokens::expire(broker, context).map(|_| ())),
        Operation::SetDeduplication { settings } => {
            done(messages::set_deduplication(broker, context, settings))
        }
        Operation::SetStateSettings { settings } => {
            done(settings::set_state_settings(broker, settings))
        }
        Operation::Append {
            stream,
            topic,
            partitioning,
            count,
            index,
            messages,
        } => messages::append(
            broker,
            context,
            user,
            messages::Batch {
                stream: &stream,
                topic: &topic,
                partitioning: &partitioning,
                count,
                index,
                messages,
            },
        ),
        Operation::StoreOffset {
            stream,
            topic,
            partition,
            kind,
            key,
            offset,
        } => done(messages::store_offset(
            broker,
            user,
            (stream, topic, partition),
            kind,
            &key,
            offset,
        )),
        Operation::DeleteOffset {
            stream,
            topic,
            partition,
            kind,
            key,
        } => done(messages::delete_offset(
            broker,
            user,
            (stream, topic, partition),
            kind,
            &key,
        )),
        Operation::CreateGroup {
            stream,
            topic,
            name,
        } => done(groups::create(broker, user, &stream, &topic, name, reply)),
        Operation::DeleteGroup { group } => done(groups::delete(broker, user, &group)),
        Operation::JoinGroup { group, member } => {
            done(groups::join(broker, context, user, &group, member))
        }
        Operation::LeaveGroup { group, member } => {
            done(groups::leave(broker, context, user, &group, member))
        }
        Operation::LeaveAllGroups { member } => {
            groups::drop_members(broker, context, |id| *id == member);
            done(Ok(()))
        }
        Operation::HandOverPartition {
            stream,
            topic,
            group,
            handover,
        } => {
            groups::hand_over(broker, (stream, topic, group), handover, reply);
            done(Ok(()))
        }
        Operation::EnforceRetention => {
            crate::retention::run_pass_at(broker, context.timestamp);
            done(Ok(()))
        }
        Operation::RecordTiered {
            stream,
            topic,
            partition,
            segment,
        } => done(on_log(broker, (stream, topic, partition), |log| {
            log.record_tiered(segment).map(|_| ())
        })),
        Operation::SealSegment {
            stream,
            topic,
            partition,
            at,
        } => done(on_log(broker, (stream, topic, partition), |log| {
            log.seal_active(at).map(|_| ())
        })),
        Operation::ForgetNode { node, keep } => {
            groups::drop_members(broker, context, |id| {
                id.node == node && Some(id.incarnation) != keep
            });
            done(Ok(()))
        }
    }
}

/// Runs a tiering operation on a partition's log; a partition deleted since the primary
/// issued it has nothing to change.
fn on_log(
    broker: &Broker,
    (stream, topic, partition): (u32, u32, u32),
    change: impl FnOnce(
        &mut crate::storage::partition_log::PartitionLog,
    ) -> Result<(), crate::storage::StorageError>,
) -> crate::error::Result<()> {
    match broker.catalog().partition_by_ids(stream, topic, partition) {
        Some(partition) => change(&mut partition.log()).map_err(crate::error::BrokerError::Storage),
        None => Ok(()),
    }
}

/// A broker's state built the way every replica builds it: operations applied as root in one
/// fixed context, for the tests of what is built on top of `apply` (checkpoints, state sync).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::state::catalog::ROOT_USER_ID;
    use iggy_wire::message::SendMessagesHeader;
    use iggy_wire::request::TopicSettings;
    use iggy_wire::{Identifier, Partitioning};

    /// Applies `op` as root.
    pub(crate) fn apply_as_root(broker: &Broker, op: Operation<'_>) {
        let context = OpContext {
            timestamp: 1,
            entropy: 1,
        };
        let user = Some(ROOT_USER_ID);
        apply(broker, context, Submission { user, op }, &mut Vec::new()).expect("applies");
    }

    /// Creates stream 0 ("s") and its topic 0 ("t") of `partitions` partitions.
    pub(crate) fn stream_and_topic(broker: &Broker, partitions: u32) {
        apply_as_root(broker, Operation::CreateStream { name: "s".into() });
        apply_as_root(
            broker,
            Operation::CreateTopic {
                stream: Identifier::Numeric(0),
                partitions,
                settings: TopicSettings {
                    compression: 1,
                    message_expiry: 0,
                    max_topic_size: 0,
                    replication_factor: 1,
                    name: "t".into(),
                },
            },
        );
    }

    /// Appends `messages` (id, payload, headers) to topic 0 of stream 0 as one batch.
    pub(crate) fn append(
        broker: &Broker,
        partitioning: Partitioning,
        messages: &[(u128, &[u8], &[u8])],
    ) {
        let mut payload = Vec::new();
        SendMessagesHeader::encode_request(
            &Identifier::Numeric(0),
            &Identifier::Numeric(0),
            &partitioning,
            messages,
            &mut payload,
        );
        apply_as_root(
            broker,
            Operation::append(&mut payload).expect("a valid batch"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::ROOT_USER_ID;
    use iggy_wire::message::SendMessagesHeader;
    use iggy_wire::request::TopicSettings;
    use iggy_wire::{Identifier, Partitioning};

    /// Creates a stream and a topic, appends two batches with ids 0 (generated) and 7, and
    /// returns the partition's bytes as a poll reads them plus the stream's reply.
    fn run(broker: &Broker, context: OpContext) -> (Vec<u8>, Vec<u8>) {
        let mut stream_reply = Vec::new();
        let submit = |op: Operation<'_>, reply: &mut Vec<u8>| {
            let user = Some(ROOT_USER_ID);
            apply(broker, context, Submission { user, op }, reply).expect("applies");
        };
        submit(
            Operation::CreateStream {
                name: "orders".into(),
            },
            &mut stream_reply,
        );
        submit(
            Operation::CreateTopic {
                stream: Identifier::Numeric(0),
                partitions: 2,
                settings: TopicSettings {
                    compression: 1,
                    message_expiry: 0,
                    max_topic_size: 0,
                    replication_factor: 1,
                    name: "created".into(),
                },
            },
            &mut Vec::new(),
        );
        for id in [0u128, 7] {
            let mut payload = Vec::new();
            SendMessagesHeader::encode_request(
                &Identifier::Numeric(0),
                &Identifier::Numeric(0),
                &Partitioning::Balanced,
                &[(id, b"one", b""), (0, b"two", b"")],
                &mut payload,
            );
            submit(
                Operation::append(&mut payload).expect("a valid batch"),
                &mut Vec::new(),
            );
        }
        let catalog = broker.catalog();
        let topic = &catalog.streams[&0].topics[&0];
        let mut bytes = Vec::new();
        for partition in &topic.partitions {
            let (plan, _) = partition.plan_read(0, 100, 1 << 20).unwrap();
            plan.read_into(&mut bytes).expect("reads");
        }
        (bytes, stream_reply)
    }

    /// What lets every replica run `apply`: the same operations in the same context give the
    /// same state, byte for byte, in two data directories; another context gives other ids.
    #[test]
    fn the_same_operations_and_context_give_the_same_bytes() {
        let context = OpContext {
            timestamp: 1_700_000_000_000_000,
            entropy: 0xfeed_beef,
        };
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let first = run(&crate::broker::open_for_tests(a.path()), context);
        let second = run(&crate::broker::open_for_tests(b.path()), context);
        assert!(!first.0.is_empty());
        assert_eq!(first, second);
        let c = tempfile::tempdir().expect("dir");
        let other = run(
            &crate::broker::open_for_tests(c.path()),
            OpContext {
                entropy: 1,
                ..context
            },
        );
        assert_ne!(other.0, first.0, "generated ids follow the entropy");
        assert_eq!(other.1, first.1, "the stream's reply does not");
    }

    /// `apply` checks permissions against the state the operation meets, whatever a handler
    /// checked before submitting: a plain user may not change root's password even holding a
    /// correct proof of it.
    #[test]
    fn apply_authorizes_what_it_applies() {
        let dir = tempfile::tempdir().expect("dir");
        let broker = crate::broker::open_for_tests(dir.path());
        let context = OpContext {
            timestamp: 1,
            entropy: 1,
        };
        let root = Some(ROOT_USER_ID);
        let create = Operation::CreateUser {
            username: "plain".into(),
            password_hash: "h".into(),
            active: true,
            permissions: None,
        };
        apply(
            &broker,
            context,
            Submission {
                user: root,
                op: create,
            },
            &mut Vec::new(),
        )
        .expect("root creates a user");
        let plain = broker
            .catalog()
            .users
            .iter()
            .find(|u| u.username == "plain")
            .map(|u| u.id);
        let root_hash = broker.catalog().users[0].password_hash.clone();
        let change = Operation::ChangePassword {
            user: ROOT_USER_ID,
            expected_hash: root_hash.clone(),
            new_hash: "stolen".into(),
        };
        let refused = apply(
            &broker,
            context,
            Submission {
                user: plain,
                op: change,
            },
            &mut Vec::new(),
        );
        assert!(matches!(
            refused,
            Err(crate::error::BrokerError::Unauthorized)
        ));
        assert_eq!(broker.catalog().users[0].password_hash, root_hash);
        let stream = Operation::CreateStream { name: "s".into() };
        let refused = apply(
            &broker,
            context,
            Submission {
                user: plain,
                op: stream,
            },
            &mut Vec::new(),
        );
        assert!(matches!(
            refused,
            Err(crate::error::BrokerError::Unauthorized)
        ));
    }
}
