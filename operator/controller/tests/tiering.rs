//! Tiered-storage buckets against a real S3-compatible server (`s3s-fs`, which checks SigV4):
//! creation, bad credentials, a missing Secret, an unreachable endpoint, and both deletion
//! policies. `.ci/run` installs s3s-fs (`cargo install s3s-fs@0.14.1 --features binary`); without
//! it these tests say so and skip, unless S3S_REQUIRED=1 makes that a failure.

mod common;

use common::*;
use iggy_operator::crd::S3Spec;
use iggy_operator::s3::{self, S3Credentials};
use kube::Api;
use serde_json::{json, Value};
use std::time::Duration;

fn tiering(endpoint: &str, secret: &str, extra: Value) -> Value {
    let mut s3 = json!({"bucket": "segments", "endpoint": endpoint, "forcePathStyle": true, "credentialsSecret": secret, "createBucket": true});
    if let (Some(s3_map), Some(extra_map)) = (s3.as_object_mut(), extra.as_object()) {
        s3_map.extend(extra_map.clone());
    }
    json!({"replicas": 1, "tieredStorage": {"s3": s3}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_is_created_and_credentials_stay_in_the_secret() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    credentials_secret(&client, "s3-creds", S3_SECRET_KEY).await;
    create_cluster(
        &client,
        "events",
        tiering(&server.endpoint, "s3-creds", json!({"region": "eu-west-1"})),
    )
    .await;
    let cluster = wait_condition(&harness, "events", "BucketReady", "BucketCreated").await;
    assert_eq!(
        condition(&cluster, "BucketReady").expect("condition")["status"],
        "True"
    );
    assert!(
        server.bucket_exists("segments"),
        "the bucket exists on the S3 server"
    );
    assert_eq!(
        cluster["status"]["bucket"],
        json!({"name": "segments", "createdByOperator": true})
    );
    wait_ready(&harness, "events").await;
    let sts = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts")
        .to_string();
    assert!(
        !sts.contains(S3_SECRET_KEY),
        "the secret key never reaches the StatefulSet"
    );
    assert!(sts.contains("IGGY_TIERING_S3_SECRET_ACCESS_KEY"));
    let config = harness
        .get("", "ConfigMap", NS, "events-config")
        .expect("config")
        .to_string();
    assert!(!config.contains(S3_SECRET_KEY) && !config.contains(S3_ACCESS_KEY));
    // Later reconciles keep saying the operator created it (deletion depends on that).
    patch_spec(
        &client,
        "events",
        json!({"config": {"storage.fsync": "always"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cluster = cluster_value(&harness, "events").expect("cluster");
    assert_eq!(cluster["status"]["bucket"]["createdByOperator"], true);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_missing_secret_and_unreachable_endpoint_are_reported() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);

    credentials_secret(&client, "wrong-creds", "not-the-secret-key").await;
    create_cluster(
        &client,
        "denied",
        tiering(&server.endpoint, "wrong-creds", json!({})),
    )
    .await;
    let cluster = wait_condition(&harness, "denied", "BucketReady", "AccessDenied").await;
    assert_eq!(
        condition(&cluster, "BucketReady").expect("condition")["status"],
        "False"
    );
    assert!(!server.bucket_exists("segments"));
    // The brokers do not depend on the bucket to run: the cluster is still built.
    assert!(harness.get("apps", "StatefulSet", NS, "denied").is_some());

    create_cluster(
        &client,
        "nosecret",
        tiering(&server.endpoint, "absent", json!({})),
    )
    .await;
    let cluster = wait_condition(&harness, "nosecret", "Degraded", "SecretMissing").await;
    assert!(
        condition(&cluster, "Degraded").expect("Degraded")["message"]
            .as_str()
            .expect("message")
            .contains("\"absent\"")
    );
    assert!(
        harness.get("apps", "StatefulSet", NS, "nosecret").is_none(),
        "pods would not start without the Secret"
    );

    credentials_secret(&client, "s3-creds", S3_SECRET_KEY).await;
    create_cluster(
        &client,
        "offline",
        tiering("http://127.0.0.1:9", "s3-creds", json!({})),
    )
    .await;
    let cluster = wait_condition(&harness, "offline", "BucketReady", "EndpointUnreachable").await;
    assert!(
        condition(&cluster, "BucketReady").expect("condition")["message"]
            .as_str()
            .expect("message")
            .contains("127.0.0.1:9")
    );

    create_cluster(
        &client,
        "nocreate",
        tiering(
            &server.endpoint,
            "s3-creds",
            json!({"bucket": "absent-bucket", "createBucket": false}),
        ),
    )
    .await;
    wait_condition(&harness, "nocreate", "BucketReady", "BucketMissing").await;
    assert!(!server.bucket_exists("absent-bucket"));
    assert!(!operator.finished(), "no failure crashes the operator");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_delete_removes_the_prefix_and_retain_keeps_everything() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    credentials_secret(&client, "s3-creds", S3_SECRET_KEY).await;
    let spec = S3Spec {
        bucket: "segments".into(),
        endpoint: Some(server.endpoint.clone()),
        region: "us-east-1".into(),
        force_path_style: true,
        credentials_secret: "s3-creds".into(),
        create_bucket: true,
        deletion_policy: Default::default(),
        prefix: "iggy".into(),
        local_retention: None,
    };
    let s3_client = s3::client(
        &spec,
        &S3Credentials {
            access_key_id: S3_ACCESS_KEY.into(),
            secret_access_key: S3_SECRET_KEY.into(),
        },
    );
    let put = |key: String| {
        let s3_client = s3_client.clone();
        async move {
            s3_client
                .put_object()
                .bucket("segments")
                .key(key)
                .body(b"segment".to_vec().into())
                .send()
                .await
                .expect("put object");
        }
    };

    // Retain (the default): no finalizer; deleting the cluster leaves the data.
    let kept = create_cluster(
        &client,
        "kept",
        tiering(&server.endpoint, "s3-creds", json!({})),
    )
    .await;
    wait_condition(&harness, "kept", "BucketReady", "BucketCreated").await;
    let kept_uid = kept.metadata.uid.clone().expect("uid");
    put(format!(
        "iggy/{kept_uid}/streams/1/topics/1/partitions/1/00000000000000000000.log"
    ))
    .await;
    assert!(cluster_value(&harness, "kept").expect("cluster")["metadata"]["finalizers"].is_null());
    let api: Api<iggy_operator::crd::IggyCluster> = Api::namespaced(client.clone(), NS);
    api.delete("kept", &Default::default())
        .await
        .expect("delete");
    eventually("kept deleted", || {
        if cluster_value(&harness, "kept").is_err() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    assert!(server
        .path(&format!(
            "segments/iggy/{kept_uid}/streams/1/topics/1/partitions/1/00000000000000000000.log"
        ))
        .is_file());

    // Delete: a finalizer; deleting the cluster removes its prefix and the bucket the operator
    // created for it, and nothing of the other cluster.
    let gone = create_cluster(
        &client,
        "gone",
        tiering(
            &server.endpoint,
            "s3-creds",
            json!({"bucket": "scratch", "deletionPolicy": "Delete"}),
        ),
    )
    .await;
    let gone_uid = gone.metadata.uid.clone().expect("uid");
    eventually("finalizer added", || {
        let cluster = cluster_value(&harness, "gone")?;
        if cluster["metadata"]["finalizers"] == json!(["iggy.rs/s3-data"]) {
            Ok(())
        } else {
            Err(cluster["metadata"].to_string())
        }
    })
    .await;
    wait_condition(&harness, "gone", "BucketReady", "BucketCreated").await;
    let put_scratch = |key: String| {
        let s3_client = s3_client.clone();
        async move {
            s3_client
                .put_object()
                .bucket("scratch")
                .key(key)
                .body(b"segment".to_vec().into())
                .send()
                .await
                .expect("put object");
        }
    };
    put_scratch(format!(
        "iggy/{gone_uid}/streams/1/topics/1/partitions/1/00000000000000000000.log"
    ))
    .await;
    put_scratch(format!(
        "iggy/{gone_uid}/streams/1/topics/1/partitions/1/00000000000000000000.index"
    ))
    .await;
    api.delete("gone", &Default::default())
        .await
        .expect("delete");
    eventually("gone deleted", || {
        if cluster_value(&harness, "gone").is_err() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    assert!(
        !server.bucket_exists("scratch"),
        "the operator's bucket went with its data"
    );
    assert!(
        server
            .path(&format!(
                "segments/iggy/{kept_uid}/streams/1/topics/1/partitions/1/00000000000000000000.log"
            ))
            .is_file(),
        "only the deleted cluster's prefix goes"
    );
    let notes: Vec<String> = harness
        .list("events.k8s.io", "Event", Some(NS))
        .iter()
        .filter(|e| e["reason"] == "DataDeleted")
        .filter_map(|e| e["note"].as_str().map(String::from))
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("deleted 2 object(s)") && n.contains("and bucket scratch")),
        "{notes:?}"
    );
    operator.stop().await;
}
