//! Consumer groups through the real SDK: membership, assignment, rebalancing on join, leave and
//! disconnect, and group offsets that survive it all.

mod common;

use common::{code, create_topic, id, message, name, TestBroker};
use iggy::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const PARTITIONS: u32 = 6;

/// (partition, offset) of every message a member received.
type Received = BTreeSet<(u32, u64)>;

async fn produce(client: &IggyClient, round: u32, per_partition: u32) -> Received {
    let mut sent = Received::new();
    for partition in 0..PARTITIONS {
        let mut batch: Vec<IggyMessage> = (0..per_partition)
            .map(|i| message(&format!("r{round}-p{partition}-{i}")))
            .collect();
        client
            .send_messages(
                &name("s"),
                &name("t"),
                &Partitioning::partition_id(partition),
                &mut batch,
            )
            .await
            .unwrap();
        let topic = client
            .get_topic(&name("s"), &name("t"))
            .await
            .unwrap()
            .unwrap();
        let end = topic.partitions[partition as usize].current_offset;
        for offset in end + 1 - per_partition as u64..=end {
            sent.insert((partition, offset));
        }
    }
    sent
}

/// Polls as a group member (no partition given) until a full round over its partitions is
/// empty; checks every message came from a partition the member owns.
async fn drain(member: &IggyClient, owned: &BTreeSet<u32>) -> Received {
    let group = Consumer::group(name("workers"));
    let mut received = Received::new();
    let mut empty_in_a_row = 0;
    while empty_in_a_row < owned.len().max(1) {
        let polled = member
            .poll_messages(
                &name("s"),
                &name("t"),
                None,
                &group,
                &PollingStrategy::next(),
                4,
                true,
            )
            .await
            .unwrap();
        if polled.messages.is_empty() {
            empty_in_a_row += 1;
            continue;
        }
        empty_in_a_row = 0;
        assert!(
            owned.contains(&polled.partition_id),
            "polled {} outside {owned:?}",
            polled.partition_id
        );
        for m in &polled.messages {
            assert!(
                received.insert((polled.partition_id, m.header.offset)),
                "duplicate delivery"
            );
        }
    }
    received
}

async fn assignment(client: &IggyClient) -> BTreeMap<u32, BTreeSet<u32>> {
    let group = client
        .get_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap()
        .unwrap();
    group
        .members
        .iter()
        .map(|m| (m.id, m.partitions.iter().copied().collect()))
        .collect()
}

fn assert_exactly_once(sent: &Received, parts: &[&Received]) {
    let mut all = Received::new();
    for part in parts {
        for item in *part {
            assert!(all.insert(*item), "{item:?} delivered to two members");
        }
    }
    assert_eq!(&all, sent, "every message delivered exactly once");
}

#[tokio::test]
async fn members_share_partitions_exactly_once_across_rebalances() {
    let broker = TestBroker::start();
    let admin = broker.client().await;
    admin.create_stream("s").await.unwrap();
    create_topic(&admin, &name("s"), "t", PARTITIONS).await;
    let group = admin
        .create_consumer_group(&name("s"), &name("t"), "workers")
        .await
        .unwrap();
    assert_eq!((group.id, group.members_count), (0, 0));
    assert_eq!(
        code(
            admin
                .create_consumer_group(&name("s"), &name("t"), "workers")
                .await
                .unwrap_err()
        ),
        5004
    );

    let (a, b, c) = (
        broker.client().await,
        broker.client().await,
        broker.client().await,
    );
    for member in [&a, &b, &c] {
        member
            .join_consumer_group(&name("s"), &name("t"), &name("workers"))
            .await
            .unwrap();
    }
    let ids: Vec<u32> = futures_ids(&[&a, &b, &c]).await;
    let me = a.get_me().await.unwrap();
    assert_eq!(me.consumer_groups_count, 1);
    assert_eq!(
        (
            me.consumer_groups[0].stream_id,
            me.consumer_groups[0].topic_id,
            me.consumer_groups[0].group_id
        ),
        (0, 0, 0)
    );

    // Round 1: three members, two partitions each.
    let sent1 = produce(&admin, 1, 5).await;
    let owners = assignment(&admin).await;
    assert_eq!(owners.len(), 3);
    assert!(owners.values().all(|p| p.len() == 2));
    let got_a = drain(&a, &owners[&ids[0]]).await;
    let got_b = drain(&b, &owners[&ids[1]]).await;
    let got_c = drain(&c, &owners[&ids[2]]).await;
    assert_exactly_once(&sent1, &[&got_a, &got_b, &got_c]);

    // Round 2: b leaves; a and c take its partitions and start at the group's stored offsets.
    b.leave_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    assert_eq!(
        code(
            b.leave_consumer_group(&name("s"), &name("t"), &name("workers"))
                .await
                .unwrap_err()
        ),
        5006
    );
    let sent2 = produce(&admin, 2, 7).await;
    let owners = assignment(&admin).await;
    assert_eq!(owners.len(), 2);
    assert_eq!(
        owners.values().map(BTreeSet::len).sum::<usize>(),
        PARTITIONS as usize
    );
    let got_a = drain(&a, &owners[&ids[0]]).await;
    let got_c = drain(&c, &owners[&ids[2]]).await;
    assert_exactly_once(&sent2, &[&got_a, &got_c]);
    let not_member = b
        .poll_messages(
            &name("s"),
            &name("t"),
            None,
            &Consumer::group(name("workers")),
            &PollingStrategy::next(),
            1,
            true,
        )
        .await;
    assert_eq!(code(not_member.unwrap_err()), 5006);

    // Round 3: b rejoins and c disconnects; offsets stored before are honoured.
    b.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    drop(c);
    let mut owners = assignment(&admin).await;
    for _ in 0..100 {
        if owners.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        owners = assignment(&admin).await;
    }
    assert_eq!(
        owners.keys().copied().collect::<Vec<_>>(),
        vec![ids[0], ids[1]],
        "c's disconnect rebalanced the group"
    );
    let sent3 = produce(&admin, 3, 3).await;
    let got_a = drain(&a, &owners[&ids[0]]).await;
    let got_b = drain(&b, &owners[&ids[1]]).await;
    assert_exactly_once(&sent3, &[&got_a, &got_b]);

    // Group offsets are visible per partition, and deleting the group removes them.
    let offset = admin
        .get_consumer_offset(
            &Consumer::group(name("workers")),
            &name("s"),
            &name("t"),
            Some(0),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offset.stored_offset, offset.current_offset);
    assert_eq!(
        admin
            .get_consumer_groups(&name("s"), &name("t"))
            .await
            .unwrap()
            .len(),
        1
    );
    admin
        .delete_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    assert!(admin
        .get_consumer_group(&name("s"), &name("t"), &id(0))
        .await
        .unwrap()
        .is_none());
    assert_eq!(a.get_me().await.unwrap().consumer_groups_count, 0);
    let gone = a
        .poll_messages(
            &name("s"),
            &name("t"),
            None,
            &Consumer::group(name("workers")),
            &PollingStrategy::next(),
            1,
            true,
        )
        .await;
    assert_eq!(code(gone.unwrap_err()), 5003);
}

async fn futures_ids(clients: &[&IggyClient]) -> Vec<u32> {
    let mut ids = Vec::new();
    for client in clients {
        ids.push(client.get_me().await.unwrap().client_id);
    }
    ids
}

#[tokio::test]
async fn groups_survive_restarts_but_memberships_do_not() {
    let mut broker = TestBroker::start();
    let admin = broker.client().await;
    admin.create_stream("s").await.unwrap();
    create_topic(&admin, &name("s"), "t", 2).await;
    admin
        .create_consumer_group(&name("s"), &name("t"), "workers")
        .await
        .unwrap();
    admin
        .join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    let mut batch = vec![message("one"), message("two")];
    admin
        .send_messages(
            &name("s"),
            &name("t"),
            &Partitioning::partition_id(1),
            &mut batch,
        )
        .await
        .unwrap();
    let polled = admin
        .poll_messages(
            &name("s"),
            &name("t"),
            Some(1),
            &Consumer::group(name("workers")),
            &PollingStrategy::next(),
            1,
            true,
        )
        .await
        .unwrap();
    assert_eq!(polled.count, 1);
    drop(admin);
    broker.restart();
    let admin = broker.client().await;
    let group = admin
        .get_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(group.members_count, 0);
    admin
        .join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    let polled = admin
        .poll_messages(
            &name("s"),
            &name("t"),
            Some(1),
            &Consumer::group(name("workers")),
            &PollingStrategy::next(),
            10,
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        polled
            .messages
            .iter()
            .map(|m| m.header.offset)
            .collect::<Vec<_>>(),
        vec![1],
        "group offset kept"
    );
}

/// The group's assignment as one member of a cluster reports it, once it has `members` members.
async fn assignment_with(client: &IggyClient, members: usize) -> BTreeMap<u32, BTreeSet<u32>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = assignment(client).await;
        if seen.len() == members {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {members} members, the group has {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// On a replicated broker, membership is replicated: consumers of one group connected to
/// different members share the partitions (never both reading one), every member reports the
/// same assignment, a closed connection's partitions go to the others, and a member that dies
/// with consumers on it is forgotten by the primary so that its partitions are consumed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spans_the_members_of_a_cluster() {
    let mut cluster =
        common::cluster::TestCluster::start(3, &[("IGGY_REPLICATION_FORGET_MEMBERS_AFTER", "2s")]);
    let primary = cluster.primary(&[0, 1, 2], std::time::Duration::from_secs(10));
    let (b1, b2) = ((primary + 1) % 3, (primary + 2) % 3);
    let admin = cluster.brokers[primary].client().await;
    admin.create_stream("s").await.unwrap();
    create_topic(&admin, &name("s"), "t", PARTITIONS).await;
    admin
        .create_consumer_group(&name("s"), &name("t"), "workers")
        .await
        .unwrap();
    let a = cluster.brokers[b1].client().await;
    let b = cluster.brokers[b2].client().await;
    for member in [&a, &b] {
        member
            .join_consumer_group(&name("s"), &name("t"), &name("workers"))
            .await
            .unwrap();
    }
    // Every member of the cluster reports the same two members, three partitions each.
    let assigned = assignment_with(&admin, 2).await;
    for other in [&a, &b] {
        assert_eq!(assignment_with(other, 2).await, assigned);
    }
    // A member's id carries its node (the member id of the broker it is connected to; in
    // this cluster the ring position) in its top bits.
    let share = |node: usize| -> BTreeSet<u32> {
        assigned
            .iter()
            .find(|(id, _)| (**id >> 28) as usize == node)
            .map(|(_, partitions)| partitions.clone())
            .expect("a member of that node")
    };
    let (a_owned, b_owned) = (share(b1), share(b2));
    assert_eq!((a_owned.len(), b_owned.len()), (3, 3));
    assert!(a_owned.is_disjoint(&b_owned));

    let sent = produce(&admin, 1, 5).await;
    let from_a = drain(&a, &a_owned).await;
    let from_b = drain(&b, &b_owned).await;
    assert_exactly_once(&sent, &[&from_a, &from_b]);

    // b's connection closes: its member leaves on every replica, a takes all six.
    b.disconnect().await.unwrap();
    drop(b);
    let after_close = assignment_with(&admin, 1).await;
    assert_eq!(
        after_close.values().next().map(BTreeSet::len),
        Some(PARTITIONS as usize)
    );

    // A consumer joins through b2, then b2 dies: after forget_members_after the primary drops
    // it, and a owns every partition again.
    let c = cluster.brokers[b2].client().await;
    c.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    assignment_with(&admin, 2).await;
    cluster.brokers[b2].kill9();
    drop(c);
    let survivors = assignment_with(&admin, 1).await;
    assert_eq!(survivors, assignment_with(&a, 1).await);
    assert_eq!(
        survivors.values().next().map(BTreeSet::len),
        Some(PARTITIONS as usize)
    );
}
