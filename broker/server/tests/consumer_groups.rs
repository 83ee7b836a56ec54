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

/// Whether every partition has one holder and the shares differ by one at most: where a
/// rebalance from a settled group ends (placement is sticky and even; while a partition is
/// still being handed over, its holder has one more than its share and its place one less).
fn balanced(seen: &BTreeMap<u32, BTreeSet<u32>>) -> bool {
    let held: Vec<u32> = seen.values().flatten().copied().collect();
    let all: BTreeSet<u32> = held.iter().copied().collect();
    let sizes = seen.values().map(BTreeSet::len);
    let spread = sizes.clone().max().unwrap_or(0) - sizes.min().unwrap_or(0);
    held.len() == all.len() && all == (0..PARTITIONS).collect() && spread <= 1
}

/// a's and b's places after b joined a group where a held all [`PARTITIONS`]: a keeps the
/// lower half (sticky placement), b gets the upper one.
fn halves(ids: &[u32]) -> BTreeMap<u32, BTreeSet<u32>> {
    BTreeMap::from([
        (ids[0], (0..PARTITIONS / 2).collect()),
        (ids[1], (PARTITIONS / 2..PARTITIONS).collect()),
    ])
}

/// The group's assignment as `client`'s broker reports it, once it has `members` members and
/// every partition has reached its place: rebalancing is cooperative, so a partition stays
/// with its holder for a moment after a join (until the holder's node hands it over).
async fn settled(client: &IggyClient, members: usize) -> BTreeMap<u32, BTreeSet<u32>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = assignment(client).await;
        if seen.len() == members && balanced(&seen) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {members} members with their partitions, the group has {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    let owners = settled(&admin, 3).await;
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
    let owners = settled(&admin, 2).await;
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
    let owners = settled(&admin, 2).await;
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

/// What a member's polls returned: every (partition, offset), and the last offset per partition.
#[derive(Default)]
struct Polled {
    received: Received,
    last: BTreeMap<u32, u64>,
}

/// Polls each of `partitions` once as a group member, without storing offsets.
async fn poll_without_storing(member: &IggyClient, partitions: std::ops::Range<u32>) -> Polled {
    let mut polled = Polled::default();
    for partition in partitions {
        let got = member
            .poll_messages(
                &name("s"),
                &name("t"),
                Some(partition),
                &Consumer::group(name("workers")),
                &PollingStrategy::next(),
                100,
                false,
            )
            .await
            .unwrap();
        for m in &got.messages {
            polled.received.insert((partition, m.header.offset));
            polled.last.insert(partition, m.header.offset);
        }
    }
    polled
}

/// Stores the group's offset in each partition.
async fn store(member: &IggyClient, offsets: &BTreeMap<u32, u64>) {
    for (partition, offset) in offsets {
        member
            .store_consumer_offset(
                &Consumer::group(name("workers")),
                &name("s"),
                &name("t"),
                Some(*partition),
                *offset,
            )
            .await
            .unwrap();
    }
}

/// The group's assignment once it has `members` members, settled or not.
async fn with_members(client: &IggyClient, members: usize) -> BTreeMap<u32, BTreeSet<u32>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seen = assignment(client).await;
        if seen.len() == members {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group has {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Stream "s", topic "t" of [`PARTITIONS`] and group "workers" with one member: returns an
/// admin, that member (a) and a client that has not joined (b).
async fn group_of_one(broker: &TestBroker) -> (IggyClient, IggyClient, IggyClient) {
    let admin = broker.client().await;
    admin.create_stream("s").await.unwrap();
    create_topic(&admin, &name("s"), "t", PARTITIONS).await;
    admin
        .create_consumer_group(&name("s"), &name("t"), "workers")
        .await
        .unwrap();
    let (a, b) = (broker.client().await, broker.client().await);
    a.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    (admin, a, b)
}

/// Cooperative rebalancing: when b joins, the partitions that are now b's stay with a — which
/// polls them no more — for as long as a has polled messages from them that it did not store
/// an offset for; each moves once a stores, and b then reads on from there. Nothing is
/// delivered to both.
#[tokio::test]
async fn a_partition_moves_to_a_new_member_once_its_holder_stored_what_it_polled() {
    let broker = TestBroker::start();
    let (admin, a, b) = group_of_one(&broker).await;
    let sent1 = produce(&admin, 1, 3).await;
    let polled = poll_without_storing(&a, 0..PARTITIONS).await;
    assert_eq!(polled.received, sent1);

    b.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    let ids = futures_ids(&[&a, &b]).await;
    let target = halves(&ids);
    let b_share = target[&ids[1]].clone();
    assert_eq!(b_share.len(), 3);
    // Nothing moves while a has not stored: b polls nothing, a polls only what stays its own.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let now = assignment(&admin).await;
    assert_eq!(now[&ids[0]].len(), PARTITIONS as usize, "{now:?}");
    assert!(now[&ids[1]].is_empty());
    assert!(poll_without_storing(&b, 0..PARTITIONS)
        .await
        .received
        .is_empty());
    let again = poll_without_storing(&a, 0..PARTITIONS).await;
    let a_polls: BTreeSet<u32> = again.last.keys().copied().collect();
    assert_eq!(a_polls, target[&ids[0]], "a polls only what stays its own");

    // One partition stored: that one moves.
    let first = *b_share.first().unwrap();
    store(&a, &BTreeMap::from([(first, polled.last[&first])])).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !assignment(&admin).await[&ids[1]].contains(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "partition {first} never moved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        assignment(&admin).await[&ids[1]].len(),
        1,
        "only the stored one moved"
    );

    // The rest stored: all of b's share moves, and b reads only what came after a's offsets.
    store(&a, &polled.last).await;
    assert_eq!(settled(&admin, 2).await, target);
    let sent2 = produce(&admin, 2, 2).await;
    let from_a = drain(&a, &target[&ids[0]]).await;
    let from_b = drain(&b, &b_share).await;
    assert_exactly_once(&sent2, &[&from_a, &from_b]);
    assert_eq!(handovers(&broker).await, (3, 0));
}

/// (handovers, of which forced by the timeout) from the broker's metrics, once they count
/// what the assignment already shows (the count follows the commit by a moment).
async fn handovers(broker: &TestBroker) -> (u64, u64) {
    let read = || {
        let (_, text) = common::http_get(broker.http, "/metrics").expect("metrics");
        let value = |name| common::metric(&text, name).map_or(0, |v| v as u64);
        (
            value("iggy_consumer_group_handovers_total"),
            value("iggy_consumer_group_handover_timeouts_total"),
        )
    };
    let mut seen = read();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let now = read();
        if now == seen {
            break;
        }
        seen = now;
    }
    seen
}

/// A holder that never stores what it polled keeps a moving partition only until
/// `consumer_group.rebalancing_timeout`; then the new member reads from the group's stored
/// offset — the unstored messages again (at least once, as in Iggy).
#[tokio::test]
async fn a_holder_that_never_stores_hands_over_after_the_rebalancing_timeout() {
    let broker = TestBroker::start_with(&[
        ("IGGY_CONSUMER_GROUP_REBALANCING_TIMEOUT", "2s"),
        ("IGGY_CONSUMER_GROUP_REBALANCING_CHECK_INTERVAL", "100ms"),
    ]);
    let (admin, a, b) = group_of_one(&broker).await;
    let sent = produce(&admin, 1, 2).await;
    let polled = poll_without_storing(&a, 0..PARTITIONS).await;
    assert_eq!(polled.received, sent);
    let joined = std::time::Instant::now();
    b.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    let ids = futures_ids(&[&a, &b]).await;
    let target = halves(&ids);
    assert_eq!(settled(&admin, 2).await, target);
    assert!(
        joined.elapsed() >= std::time::Duration::from_millis(1900),
        "moved after {:?}, before the timeout",
        joined.elapsed()
    );
    let again = poll_without_storing(&b, 0..PARTITIONS).await;
    let expected: Received = sent
        .iter()
        .filter(|(p, _)| target[&ids[1]].contains(p))
        .copied()
        .collect();
    assert_eq!(
        again.received, expected,
        "b reads from the group's stored offset"
    );
}

async fn partition_offsets(client: &IggyClient) -> Vec<u64> {
    let topic = client
        .get_topic(&name("s"), &name("t"))
        .await
        .unwrap()
        .unwrap();
    topic.partitions.iter().map(|p| p.current_offset).collect()
}

/// Waits until the brokers `others` are connected to report the partitions' offsets `admin`'s
/// does: a backup applies what the primary committed a moment later, and a drain that polled
/// before would stop short.
async fn applied_everywhere(admin: &IggyClient, others: &[&IggyClient]) {
    let expected = partition_offsets(admin).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for other in others {
        while partition_offsets(other).await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "a member never applied the sends"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
    let assigned = settled(&admin, 2).await;
    for other in [&a, &b] {
        assert_eq!(settled(other, 2).await, assigned);
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
    applied_everywhere(&admin, &[&a, &b]).await;
    let from_a = drain(&a, &a_owned).await;
    let from_b = drain(&b, &b_owned).await;
    assert_exactly_once(&sent, &[&from_a, &from_b]);

    // b's connection closes: its member leaves on every replica, a takes all six.
    b.disconnect().await.unwrap();
    drop(b);
    let after_close = settled(&admin, 1).await;
    assert_eq!(
        after_close.values().next().map(BTreeSet::len),
        Some(PARTITIONS as usize)
    );

    // Cooperative rebalancing across nodes: a (on b1) polls everything without storing
    // offsets, then c joins through b2. c's share stays with a, which polls it no more, until
    // a stores what it polled; then b1 hands it over, and c reads only what came after.
    let sent2 = produce(&admin, 2, 4).await;
    applied_everywhere(&admin, &[&a]).await;
    let polled = poll_without_storing(&a, 0..PARTITIONS).await;
    assert_eq!(polled.received, sent2);
    let c = cluster.brokers[b2].client().await;
    c.join_consumer_group(&name("s"), &name("t"), &name("workers"))
        .await
        .unwrap();
    let moving = with_members(&admin, 2).await;
    assert_eq!(
        moving.values().map(BTreeSet::len).max(),
        Some(6),
        "{moving:?}"
    );
    assert!(poll_without_storing(&c, 0..PARTITIONS)
        .await
        .received
        .is_empty());
    store(&a, &polled.last).await;
    let assigned = settled(&admin, 2).await;
    assert_eq!(settled(&c, 2).await, assigned);
    // a's node handed over three partitions to b at the start and three to c now; each counted
    // once, though the handover was forwarded to the primary (its reply says it moved).
    assert_eq!(handovers(&cluster.brokers[b1]).await, (6, 0));
    assert_eq!(handovers(&cluster.brokers[b2]).await, (0, 0));
    let c_owned = assigned
        .iter()
        .find(|(id, _)| (**id >> 28) as usize == b2)
        .map(|(_, partitions)| partitions.clone())
        .expect("c's share");
    let a_owned: BTreeSet<u32> = (0..PARTITIONS).filter(|p| !c_owned.contains(p)).collect();
    let sent3 = produce(&admin, 3, 2).await;
    applied_everywhere(&admin, &[&a, &c]).await;
    let from_a = drain(&a, &a_owned).await;
    let from_c = drain(&c, &c_owned).await;
    assert_exactly_once(&sent3, &[&from_a, &from_c]);

    // Then b2 dies: after forget_members_after the primary drops c, and a owns every
    // partition again.
    cluster.brokers[b2].kill9();
    drop(c);
    let survivors = settled(&admin, 1).await;
    assert_eq!(survivors, settled(&a, 1).await);
    assert_eq!(
        survivors.values().next().map(BTreeSet::len),
        Some(PARTITIONS as usize)
    );
}
