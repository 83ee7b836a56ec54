//! The S3 store against a real S3-compatible server (s3s-fs, SigV4 checked).

use bytes::Bytes;
use iggy_tiering::testing::{S3Server, ACCESS_KEY, SECRET_KEY};
use iggy_tiering::{ObjectStore, S3Settings, StoreError};

fn settings(server: &S3Server, bucket: &str, secret: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.into(),
        region: "us-east-1".into(),
        endpoint: server.endpoint.clone(),
        force_path_style: true,
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: secret.into(),
    }
}

#[tokio::test]
async fn objects_go_up_whole_or_in_parts_and_come_back_by_range() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket("tier");
    let store = ObjectStore::s3(settings(&server, "tier", SECRET_KEY), "iggy/cluster-a/");
    store
        .put("streams/1/m.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        store.get("streams/1/m.json").await.unwrap().unwrap(),
        &b"{}"[..]
    );
    assert_eq!(store.get("streams/1/absent").await.unwrap(), None);

    // 20 MiB: above the multipart threshold, three parts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segment.log");
    let body: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let checksum = store
        .put_file("streams/1/0.log", &file, body.len() as u64)
        .await
        .unwrap();
    assert_eq!(checksum, iggy_tiering::checksum(&body));
    let stored =
        std::fs::read(server.object_path("tier", "iggy/cluster-a/streams/1/0.log")).unwrap();
    assert!(stored == body, "the multipart object is byte-identical");
    let range = store
        .get_range("streams/1/0.log", 9 << 20, 4096)
        .await
        .unwrap();
    assert_eq!(&range[..], &body[9 << 20..(9 << 20) + 4096]);
    assert!(matches!(
        store
            .get_range("streams/1/0.log", (20 << 20) - 10, 100)
            .await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        store.list("streams/").await.unwrap(),
        vec!["streams/1/0.log", "streams/1/m.json"]
    );
    store
        .delete(&["streams/1/0.log".into(), "streams/1/never".into()])
        .await
        .unwrap();
    assert_eq!(store.list("").await.unwrap(), vec!["streams/1/m.json"]);
}

#[tokio::test]
async fn failures_are_classified() {
    let Some(mut server) = S3Server::start() else {
        return;
    };
    server.create_bucket("tier");
    let wrong = ObjectStore::s3(settings(&server, "tier", "not-the-secret"), "");
    let denied = wrong.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(denied, StoreError::Denied { .. }), "{denied}");
    assert!(!denied.to_string().contains("not-the-secret"));

    let no_bucket = ObjectStore::s3(settings(&server, "absent", SECRET_KEY), "");
    // (s3s-fs creates a missing bucket's directory on PUT, so the read side shows it.)
    let missing = no_bucket.list("").await.unwrap_err();
    assert!(matches!(missing, StoreError::NoBucket { .. }), "{missing}");

    let store = ObjectStore::s3(settings(&server, "tier", SECRET_KEY), "");
    let absent = store.get_range("nothing", 0, 10).await.unwrap_err();
    assert!(matches!(absent, StoreError::NotFound { .. }), "{absent}");

    server.stop();
    let down = store.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(down, StoreError::Unreachable { .. }), "{down}");
    assert!(down.is_retryable());
    server.resume();
    store.put("k", Bytes::from_static(b"x")).await.unwrap();
}
