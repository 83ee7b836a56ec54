//! Users, permissions, personal access tokens, clients and stats through the real SDK.

mod common;

use common::{code, create_topic, id, message, name, TestBroker, ROOT_PASSWORD, ROOT_USER};
use iggy::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

async fn login_as(broker: &TestBroker, user: &str, password: &str) -> IggyClient {
    let client = broker.anonymous_client().await;
    client.login_user(user, password).await.unwrap();
    client
}

async fn stream_with_topics(client: &IggyClient) {
    client.create_stream("data").await.unwrap();
    for topic in ["t0", "t1"] {
        create_topic(client, &name("data"), topic, 1).await;
    }
}

#[tokio::test]
async fn user_lifecycle_and_root_protection() {
    let broker = TestBroker::start();
    let root = broker.client().await;
    let created = root
        .create_user("alice", "alice-pass", UserStatus::Active, None)
        .await
        .unwrap();
    assert_eq!((created.id, created.username.as_str()), (1, "alice"));
    assert_eq!(
        code(
            root.create_user("alice", "other", UserStatus::Active, None)
                .await
                .unwrap_err()
        ),
        46
    );
    assert_eq!(
        code(
            root.create_user("al", "alice-pass", UserStatus::Active, None)
                .await
                .unwrap_err()
        ),
        43
    );
    assert_eq!(
        code(
            root.create_user("bobby", "p", UserStatus::Active, None)
                .await
                .unwrap_err()
        ),
        44
    );

    let users = root.get_users().await.unwrap();
    assert_eq!(
        users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        vec![ROOT_USER, "alice"]
    );
    let details = root.get_user(&name("alice")).await.unwrap().unwrap();
    assert_eq!(details.status, UserStatus::Active);
    assert!(details.permissions.is_none());
    assert!(root.get_user(&name("nobody")).await.unwrap().is_none());

    root.update_user(&name("alice"), Some("alicia"), None)
        .await
        .unwrap();
    assert!(root.get_user(&name("alicia")).await.unwrap().is_some());
    root.change_password(&name("alicia"), "alice-pass", "new-pass")
        .await
        .unwrap();
    assert_eq!(
        code(
            root.change_password(&name("alicia"), "wrong", "x-pass")
                .await
                .unwrap_err()
        ),
        42
    );
    let alicia = login_as(&broker, "alicia", "new-pass").await;
    alicia
        .change_password(&name("alicia"), "new-pass", "newer-pass")
        .await
        .unwrap();

    // The root user can be neither deleted, deactivated nor stripped of its permissions.
    assert_eq!(code(root.delete_user(&id(0)).await.unwrap_err()), 48);
    assert_eq!(
        code(
            root.update_user(&id(0), None, Some(UserStatus::Inactive))
                .await
                .unwrap_err()
        ),
        48
    );
    assert_eq!(
        code(root.update_permissions(&id(0), None).await.unwrap_err()),
        49
    );

    // Deactivation ends the session at its next request and blocks new logins — with the
    // answer a wrong password gets, so the right one is not confirmed to whoever tries it.
    root.update_user(&name("alicia"), None, Some(UserStatus::Inactive))
        .await
        .unwrap();
    assert_eq!(code(alicia.get_me().await.unwrap_err()), 40);
    let again = broker.anonymous_client().await;
    assert_eq!(
        code(again.login_user("alicia", "newer-pass").await.unwrap_err()),
        42
    );
    assert_eq!(
        code(again.login_user("alicia", "wrong-pass").await.unwrap_err()),
        42
    );

    root.delete_user(&name("alicia")).await.unwrap();
    assert_eq!(
        code(root.delete_user(&name("alicia")).await.unwrap_err()),
        20
    );
    assert_eq!(
        code(again.login_user("alicia", "newer-pass").await.unwrap_err()),
        42
    );

    let metadata = std::fs::read_to_string(broker.data_path().join("state/metadata.json")).unwrap();
    assert!(!metadata.contains(ROOT_PASSWORD) && !metadata.contains("newer-pass"));
}

#[tokio::test]
async fn permissions_are_enforced_on_every_command() {
    let broker = TestBroker::start();
    let root = broker.client().await;
    stream_with_topics(&root).await;
    let mut batch = vec![message("hello")];
    root.send_messages(
        &name("data"),
        &name("t0"),
        &Partitioning::partition_id(0),
        &mut batch,
    )
    .await
    .unwrap();

    // reader: may poll topic t0 of stream 0 only; writer: may send to stream 0.
    let mut topics = BTreeMap::new();
    topics.insert(
        0usize,
        TopicPermissions {
            poll_messages: true,
            ..Default::default()
        },
    );
    let mut streams = BTreeMap::new();
    streams.insert(
        0usize,
        StreamPermissions {
            topics: Some(topics),
            ..Default::default()
        },
    );
    let reader_perms = Permissions {
        global: GlobalPermissions::default(),
        streams: Some(streams),
    };
    root.create_user(
        "reader",
        "reader-pass",
        UserStatus::Active,
        Some(reader_perms),
    )
    .await
    .unwrap();
    let mut streams = BTreeMap::new();
    streams.insert(
        0usize,
        StreamPermissions {
            send_messages: true,
            read_stream: true,
            ..Default::default()
        },
    );
    let writer_perms = Permissions {
        global: GlobalPermissions::default(),
        streams: Some(streams),
    };
    root.create_user(
        "writer",
        "writer-pass",
        UserStatus::Active,
        Some(writer_perms.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        root.get_user(&name("writer"))
            .await
            .unwrap()
            .unwrap()
            .permissions,
        Some(writer_perms)
    );

    let reader = login_as(&broker, "reader", "reader-pass").await;
    let consumer = Consumer::new(id(1));
    let polled = reader
        .poll_messages(
            &name("data"),
            &name("t0"),
            Some(0),
            &consumer,
            &PollingStrategy::first(),
            10,
            true,
        )
        .await
        .unwrap();
    assert_eq!(polled.count, 1);
    reader
        .get_consumer_offset(&consumer, &name("data"), &name("t0"), Some(0))
        .await
        .unwrap();
    let denied = [
        code(
            reader
                .poll_messages(
                    &name("data"),
                    &name("t1"),
                    Some(0),
                    &consumer,
                    &PollingStrategy::first(),
                    1,
                    false,
                )
                .await
                .unwrap_err(),
        ),
        code(
            reader
                .send_messages(
                    &name("data"),
                    &name("t0"),
                    &Partitioning::balanced(),
                    &mut [message("x")],
                )
                .await
                .unwrap_err(),
        ),
        code(reader.create_stream("mine").await.unwrap_err()),
        code(reader.get_streams().await.unwrap_err()),
        code(
            reader
                .delete_topic(&name("data"), &name("t0"))
                .await
                .unwrap_err(),
        ),
        code(reader.get_users().await.unwrap_err()),
        code(reader.get_stats().await.unwrap_err()),
        code(reader.get_clients().await.unwrap_err()),
        code(
            reader
                .create_user("sneaky", "sneaky", UserStatus::Active, None)
                .await
                .unwrap_err(),
        ),
        code(
            reader
                .snapshot(SnapshotCompression::Deflated, vec![SystemSnapshotType::All])
                .await
                .unwrap_err(),
        ),
    ];
    assert_eq!(denied, [41; 10]);

    let writer = login_as(&broker, "writer", "writer-pass").await;
    writer
        .send_messages(
            &name("data"),
            &name("t1"),
            &Partitioning::balanced(),
            &mut [message("w")],
        )
        .await
        .unwrap();
    assert_eq!(
        writer
            .get_stream(&name("data"))
            .await
            .unwrap()
            .unwrap()
            .topics_count,
        2
    );
    assert_eq!(
        code(writer.purge_stream(&name("data")).await.unwrap_err()),
        41
    );

    // Permission changes apply to live sessions at once.
    root.update_permissions(&name("writer"), None)
        .await
        .unwrap();
    let revoked = writer
        .send_messages(
            &name("data"),
            &name("t1"),
            &Partitioning::balanced(),
            &mut [message("w")],
        )
        .await;
    assert_eq!(code(revoked.unwrap_err()), 41);
}

#[tokio::test]
async fn personal_access_tokens() {
    let broker = TestBroker::start_with(&[("IGGY_PERSONAL_ACCESS_TOKEN_MAX_TOKENS_PER_USER", "2")]);
    let root = broker.client().await;
    let token = root
        .create_personal_access_token("ci-token", IggyExpiry::NeverExpire)
        .await
        .unwrap();
    assert_eq!(token.token.len(), 50);
    assert_eq!(
        code(
            root.create_personal_access_token("ci-token", IggyExpiry::NeverExpire)
                .await
                .unwrap_err()
        ),
        51
    );
    assert_eq!(
        code(
            root.create_personal_access_token("x", IggyExpiry::NeverExpire)
                .await
                .unwrap_err()
        ),
        50
    );
    let short = root
        .create_personal_access_token(
            "short",
            IggyExpiry::ExpireDuration(IggyDuration::from(Duration::from_millis(300))),
        )
        .await
        .unwrap();
    assert_eq!(
        code(
            root.create_personal_access_token("third", IggyExpiry::NeverExpire)
                .await
                .unwrap_err()
        ),
        52
    );
    let listed = root.get_personal_access_tokens().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["ci-token", "short"]
    );
    assert!(listed[0].expiry_at.is_none() && listed[1].expiry_at.is_some());

    let by_token = broker.anonymous_client().await;
    assert_eq!(
        by_token
            .login_with_personal_access_token(&token.token)
            .await
            .unwrap()
            .user_id,
        0
    );
    by_token.get_streams().await.unwrap();
    let bad = broker.anonymous_client().await;
    assert_eq!(
        code(
            bad.login_with_personal_access_token("not-a-token")
                .await
                .unwrap_err()
        ),
        53
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        code(
            bad.login_with_personal_access_token(&short.token)
                .await
                .unwrap_err()
        ),
        54
    );

    let metadata = std::fs::read_to_string(broker.data_path().join("state/metadata.json")).unwrap();
    assert!(
        !metadata.contains(&token.token),
        "only a hash of the token is stored"
    );

    root.delete_personal_access_token("ci-token").await.unwrap();
    assert_eq!(
        code(
            root.delete_personal_access_token("ci-token")
                .await
                .unwrap_err()
        ),
        20
    );
    assert_eq!(
        code(
            bad.login_with_personal_access_token(&token.token)
                .await
                .unwrap_err()
        ),
        53
    );
}

#[tokio::test]
async fn clients_and_stats_report_real_figures() {
    let broker = TestBroker::start();
    let root = broker.client().await;
    stream_with_topics(&root).await;
    let mut batch: Vec<IggyMessage> = (0..10).map(|i| message(&i.to_string())).collect();
    root.send_messages(
        &name("data"),
        &name("t0"),
        &Partitioning::partition_id(0),
        &mut batch,
    )
    .await
    .unwrap();
    let anonymous = broker.anonymous_client().await;
    // Connecting completes before the server has registered the connection; an answered ping
    // proves it has.
    anonymous.ping().await.unwrap();

    let me = root.get_me().await.unwrap();
    let clients = root.get_clients().await.unwrap();
    assert_eq!(clients.len(), 2);
    assert!(clients
        .iter()
        .any(|c| c.client_id == me.client_id && c.user_id == Some(0)));
    assert!(clients.iter().any(|c| c.user_id.is_none()));
    let one = root.get_client(me.client_id).await.unwrap().unwrap();
    assert_eq!(one.address, me.address);
    assert!(root.get_client(999_999).await.unwrap().is_none());

    let stats = root.get_stats().await.unwrap();
    assert_eq!(stats.process_id, broker.pid());
    assert_eq!(
        (
            stats.streams_count,
            stats.topics_count,
            stats.partitions_count
        ),
        (1, 2, 2)
    );
    assert_eq!(stats.messages_count, 10);
    assert_eq!(stats.segments_count, 2);
    assert_eq!(stats.clients_count, 2);
    assert!(stats.memory_usage.as_bytes_u64() > 1_000_000);
    assert!(stats.total_memory.as_bytes_u64() >= stats.available_memory.as_bytes_u64());
    assert!(stats.total_disk_space.as_bytes_u64() > 0);
    assert!(stats.threads_count >= 2);
    assert!(!stats.kernel_version.is_empty() && !stats.hostname.is_empty());
    assert_eq!(stats.iggy_server_version, env!("CARGO_PKG_VERSION"));
    assert!(stats.messages_size_bytes.as_bytes_u64() >= 10 * 65);
}

/// No existence oracle: a user who may not read a stream, topic or user cannot tell a missing
/// one from one they may not see — both answer Unauthorized (41) — while a user who may read
/// them all still gets the empty answer (None) for a missing one.
#[tokio::test]
async fn unauthorized_users_cannot_probe_what_exists() {
    let broker = TestBroker::start();
    let root = broker.client().await;
    stream_with_topics(&root).await;
    root.create_stream("secret").await.unwrap();
    let mut streams = BTreeMap::new();
    streams.insert(
        0usize,
        StreamPermissions {
            read_stream: true,
            ..Default::default()
        },
    );
    root.create_user(
        "limited",
        "limited-pass",
        UserStatus::Active,
        Some(Permissions {
            global: GlobalPermissions::default(),
            streams: Some(streams),
        }),
    )
    .await
    .unwrap();
    let limited = login_as(&broker, "limited", "limited-pass").await;
    assert!(limited.get_stream(&name("data")).await.unwrap().is_some());
    let existing = code(limited.get_stream(&name("secret")).await.unwrap_err());
    let missing = code(limited.get_stream(&name("no-such")).await.unwrap_err());
    assert_eq!((existing, missing), (41, 41));
    let existing = code(
        limited
            .get_topic(&name("secret"), &id(0))
            .await
            .unwrap_err(),
    );
    let missing = code(
        limited
            .get_topic(&name("no-such"), &id(0))
            .await
            .unwrap_err(),
    );
    assert_eq!((existing, missing), (41, 41));
    let existing = code(limited.get_user(&name("iggy")).await.unwrap_err());
    let missing = code(limited.get_user(&name("nobody")).await.unwrap_err());
    assert_eq!((existing, missing), (41, 41));
    assert!(root.get_stream(&name("no-such")).await.unwrap().is_none());
    assert!(root
        .get_topic(&name("data"), &name("no-such"))
        .await
        .unwrap()
        .is_none());
    assert!(root.get_user(&name("nobody")).await.unwrap().is_none());
}
