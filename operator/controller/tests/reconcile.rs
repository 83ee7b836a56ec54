//! The real controller against the in-process API harness: create, edit, scale (held back), delete,
//! invalid specs, API faults, restarts and leader election.

mod common;

use common::*;
use iggy_operator::leader::LeaseSettings;
use iggy_operator::names::READINESS_GATE;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn children_named(harness: &kube_harness::Harness, group: &str, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = harness
        .list(group, kind, Some(NS))
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/instance"] == "events")
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_builds_every_child_and_reports_ready() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    let started = Instant::now();
    create_cluster(
        &client,
        "events",
        json!({"replicas": 3, "config": {"storage.fsync": "always"}}),
    )
    .await;
    let cluster = wait_ready(&harness, "events").await;
    println!("create → Ready for 3 replicas: {:?}", started.elapsed());

    assert_eq!(children_named(&harness, "apps", "StatefulSet"), ["events"]);
    assert_eq!(
        children_named(&harness, "", "Service"),
        ["events", "events-primary", "events-replicas"]
    );
    assert_eq!(
        children_named(&harness, "", "ConfigMap"),
        ["events-config", "events-ring"]
    );
    assert_eq!(
        children_named(&harness, "policy", "PodDisruptionBudget"),
        ["events"]
    );
    assert_eq!(
        children_named(&harness, "networking.k8s.io", "NetworkPolicy"),
        ["events-brokers"]
    );
    assert_eq!(
        children_named(&harness, "", "ServiceAccount"),
        ["events-sidecar"]
    );
    assert_eq!(
        children_named(&harness, "rbac.authorization.k8s.io", "Role"),
        ["events-sidecar"]
    );
    assert_eq!(
        children_named(&harness, "rbac.authorization.k8s.io", "RoleBinding"),
        ["events-sidecar"]
    );
    let uid = cluster["metadata"]["uid"].clone();
    for (group, kind) in [
        ("apps", "StatefulSet"),
        ("", "Service"),
        ("", "ConfigMap"),
        ("policy", "PodDisruptionBudget"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("", "ServiceAccount"),
    ] {
        for child in harness
            .list(group, kind, Some(NS))
            .iter()
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/instance"] == "events")
        {
            assert_eq!(
                child["metadata"]["ownerReferences"][0]["uid"], uid,
                "{kind} owned by the cluster"
            );
            assert_eq!(
                child["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "iggy-operator"
            );
            let managers: Vec<&str> = child["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["manager"].as_str())
                .collect();
            assert!(
                managers.contains(&"iggy-operator"),
                "{kind} applied by the operator's field manager: {managers:?}"
            );
        }
    }

    let sts = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    let config = harness
        .get("", "ConfigMap", NS, "events-config")
        .expect("config");
    assert!(config["data"]["broker.toml"]
        .as_str()
        .expect("toml")
        .contains("fsync = \"always\""));

    let status = &cluster["status"];
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["ring"]["epoch"], 1);
    let members = status["ring"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    let mut nodes: Vec<&str> = members.iter().filter_map(|m| m["node"].as_str()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one broker per node: {members:?}");
    assert_eq!(
        members[0]["address"],
        "events-0.events-replicas.default.svc:8091"
    );
    assert!(members.iter().all(|m| m["caughtUp"] == true));
    assert_eq!(
        condition(&cluster, "Degraded").expect("Degraded")["status"],
        "False"
    );

    let reasons: Vec<String> = harness
        .list("events.k8s.io", "Event", Some(NS))
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    assert!(reasons.iter().any(|r| r == "Applied"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "RingChanged"), "{reasons:?}");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_an_unchanged_cluster_writes_nothing() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_ready(&harness, "events").await;
    // Let the reconciles triggered by the last status changes finish.
    let settled = eventually("operator to go quiet", || {
        let before = (operator.metrics.reconciliations(), harness.write_requests());
        std::thread::sleep(Duration::from_millis(700));
        let after = (operator.metrics.reconciliations(), harness.write_requests());
        if before == after {
            Ok(after)
        } else {
            Err(format!("{before:?} → {after:?}"))
        }
    })
    .await;
    // Touch the cluster without changing its spec: the controller reconciles it again.
    {
        let mut store = harness.store();
        let rt = store
            .type_by_kind("iggy.rs", "IggyCluster")
            .expect("CRD served");
        store
            .patch(
                &rt,
                NS,
                "events",
                kube_harness::store::PatchKind::Merge,
                &json!({"metadata": {"annotations": {"touched": "yes"}}}),
                kube_harness::store::Subresource::Main,
                "test",
                false,
            )
            .expect("annotate");
    }
    eventually("a reconcile of the touched cluster", || {
        if operator.metrics.reconciliations() > settled.0 {
            Ok(())
        } else {
            Err("no reconcile yet".into())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = harness.write_requests() - settled.1;
    println!(
        "writes during a reconcile of an unchanged cluster: {writes}; reads by verb: {:?}",
        harness.request_counts()
    );
    assert_eq!(
        writes, 0,
        "an unchanged cluster must reconcile without writes"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_edits_update_children_and_roll_the_pods_one_at_a_time() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_ready(&harness, "events").await;
    let pods_before = uids(&harness.list("", "Pod", Some(NS)));
    assert_eq!(pods_before.len(), 3);

    patch_spec(
        &client,
        "events",
        json!({
            "image": "registry.example/iggy-broker:2",
            "config": {"storage.fsync": "always"},
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        }),
    )
    .await;
    let sts = eventually("StatefulSet to carry the edits", || {
        let sts = harness
            .get("apps", "StatefulSet", NS, "events")
            .ok_or("no sts")?;
        let broker = &sts["spec"]["template"]["spec"]["containers"][0];
        if broker["image"] == "registry.example/iggy-broker:2"
            && broker["resources"]["requests"]["cpu"] == "500m"
        {
            Ok(sts)
        } else {
            Err(broker.to_string())
        }
    })
    .await;
    assert!(sts["spec"]["template"]["metadata"]["annotations"]["iggy.rs/config-hash"].is_string());
    let config = harness
        .get("", "ConfigMap", NS, "events-config")
        .expect("config");
    assert!(config["data"]["broker.toml"]
        .as_str()
        .expect("toml")
        .contains("always"));
    // The new template reaches the brokers by a rolling restart: one pod at a time, each next
    // one only once the restarted pod's replica-ready gate is back (this harness's kubelet
    // sets the gate itself). At no moment are two members missing or unready.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut most_down = 0;
    let pods_after = loop {
        let pods = harness.list("", "Pod", Some(NS));
        let down = 3 - pods
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == READINESS_GATE && c["status"] == "True")
                    })
            })
            .count();
        most_down = most_down.max(down);
        let now = uids(&pods);
        let replaced = now.iter().filter(|uid| !pods_before.contains(uid)).count();
        if now.len() == 3 && replaced == 3 && down == 0 {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout incomplete: {replaced} of 3 pods replaced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(most_down <= 1, "{most_down} members were down at once");
    let cluster = wait_condition(&harness, "events", "Progressing", "Stable").await;
    assert_eq!(
        condition(&cluster, "Ready").expect("Ready")["status"],
        "True"
    );
    let events = harness.list("events.k8s.io", "Event", Some(NS));
    // A repeated reason becomes a series on one Event (kube's recorder).
    let restarts: u64 = events
        .iter()
        .filter(|e| e["reason"] == "RestartingPod")
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(restarts, 3, "an event for every restart: {events:#?}");

    // Scaling waits for the brokers to report the running epoch (no sidecars here): the
    // cluster stays as it is, Ready, and says what it waits for; setting replicas back clears it.
    patch_spec(&client, "events", json!({"replicas": 5})).await;
    let cluster = wait_condition(&harness, "events", "Progressing", "ScalingUp").await;
    let progressing = condition(&cluster, "Progressing").expect("Progressing");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap_or("")
            .contains("commit ring epoch 1"),
        "{progressing}"
    );
    assert_eq!(cluster["status"]["ring"]["epoch"], 1);
    let set = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(uids(&harness.list("", "Pod", Some(NS))), pods_after);
    patch_spec(&client, "events", json!({"replicas": 3})).await;
    wait_condition(&harness, "events", "Progressing", "Stable").await;
    operator.stop().await;
}

/// Sets what pod `pod`'s sidecar would report: the annotation (epoch, role, caught up), the
/// role label and the readiness gate.
async fn report_state(
    client: &kube::Client,
    harness: &kube_harness::Harness,
    pod: &str,
    epoch: u32,
    role: &str,
    caught_up: bool,
) {
    harness
        .set_pod_condition(NS, pod, READINESS_GATE, caught_up)
        .expect("gate set");
    let state = json!({"epoch": epoch, "view": 0, "role": role, "caughtUp": caught_up});
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), NS);
    pods.patch(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {
            "labels": {"iggy.rs/role": role},
            "annotations": {"iggy.rs/replica-state": state.to_string()},
        }})),
    )
    .await
    .expect("state reported");
}

/// The published ring: (epoch, members, standbys).
fn published_ring(harness: &kube_harness::Harness) -> Result<(u64, usize, usize), String> {
    let map = harness
        .get("", "ConfigMap", NS, "events-ring")
        .ok_or("no ring ConfigMap")?;
    let ring: Value = serde_json::from_str(map["data"]["ring.json"].as_str().unwrap_or("{}"))
        .map_err(|e| e.to_string())?;
    let count = |key: &str| ring[key].as_array().map_or(0, Vec::len);
    Ok((
        ring["epoch"].as_u64().unwrap_or(0),
        count("members"),
        count("standbys"),
    ))
}

fn statefulset_replicas(harness: &kube_harness::Harness) -> Option<i64> {
    harness
        .get("apps", "StatefulSet", NS, "events")
        .and_then(|set| set["spec"]["replicas"].as_i64())
}

async fn wait_ring(harness: &kube_harness::Harness, wanted: (u64, usize, usize), pods: i64) {
    eventually(&format!("ring {wanted:?} on {pods} pods"), || {
        let ring = published_ring(harness)?;
        let set = statefulset_replicas(harness);
        (ring == wanted && set == Some(pods))
            .then_some(())
            .ok_or(format!("ring {ring:?}, statefulset {set:?}"))
    })
    .await;
}

/// The ring ConfigMap's `bootstrapped`, if there is a ring.
fn published_bootstrapped(harness: &kube_harness::Harness) -> Option<bool> {
    let map = harness.get("", "ConfigMap", NS, "events-ring")?;
    let ring: Value = serde_json::from_str(map["data"]["ring.json"].as_str()?).ok()?;
    Some(ring["bootstrapped"] == true)
}

/// A new cluster's ring says nothing of a history; once a quorum of members reports running
/// it, the operator marks it formed (same epoch, one ConfigMap write, an Event), so a broker
/// that comes back on an empty disk rebuilds before it votes; later rings keep the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_is_marked_formed_once_a_quorum_of_members_runs_it() {
    let (harness, client) = harness_with(false, true).await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_pods(&harness, 0..3).await;
    report_state(&client, &harness, "events-0", 1, "primary", true).await;
    // One member of three is no quorum: any write it took is not acknowledged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(published_bootstrapped(&harness), Some(false));
    report_state(&client, &harness, "events-2", 1, "backup", true).await;
    eventually("the ring marked formed", || {
        (published_bootstrapped(&harness) == Some(true))
            .then_some(())
            .ok_or(format!("{:?}", published_ring(&harness)))
    })
    .await;
    assert_eq!(
        published_ring(&harness),
        Ok((1, 3, 0)),
        "no new epoch for it"
    );
    eventually("a ClusterFormed event", || {
        let events = harness.list("events.k8s.io", "Event", Some(NS));
        events
            .iter()
            .any(|e| e["reason"] == "ClusterFormed")
            .then_some(())
            .ok_or("no ClusterFormed event".to_string())
    })
    .await;
    // The mark outlives ring changes.
    patch_spec(&client, "events", json!({"replicas": 5})).await;
    wait_ring(&harness, (2, 3, 2), 5).await;
    assert_eq!(published_bootstrapped(&harness), Some(true));
    operator.stop().await;
}

/// Scaling one epoch at a time, on what the sidecars report (set by hand here): 3 → 5 adds
/// two standbys, makes them members once they caught up, and 5 → 3 is blocked while a member
/// that stays is behind, then publishes the smaller ring and shrinks the StatefulSet only when
/// the brokers report it committed — also across an operator restart in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_moves_one_epoch_at_a_time_on_what_the_sidecars_report() {
    let (harness, client) = harness_with(false, true).await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_pods(&harness, 0..3).await;
    for (i, role) in ["primary", "backup", "backup"].iter().enumerate() {
        report_state(&client, &harness, &format!("events-{i}"), 1, role, true).await;
    }
    wait_ready(&harness, "events").await;

    patch_spec(&client, "events", json!({"replicas": 5})).await;
    wait_ring(&harness, (2, 3, 2), 5).await;
    wait_pods(&harness, 3..5).await;
    for (i, role) in ["primary", "backup", "backup"].iter().enumerate() {
        report_state(&client, &harness, &format!("events-{i}"), 2, role, true).await;
    }
    report_state(&client, &harness, "events-3", 2, "standby", true).await;
    report_state(&client, &harness, "events-4", 2, "standby", false).await;
    let cluster = wait_condition(&harness, "events", "Progressing", "ScalingUp").await;
    assert!(
        condition(&cluster, "Progressing").expect("Progressing")["message"]
            .as_str()
            .unwrap_or("")
            .contains("events-4"),
        "{cluster}"
    );
    assert_eq!(published_ring(&harness).expect("ring"), (2, 3, 2), "waits");
    report_state(&client, &harness, "events-4", 2, "standby", true).await;
    wait_ring(&harness, (3, 5, 0), 5).await;
    for i in 0..5 {
        let role = if i == 0 { "primary" } else { "backup" };
        report_state(&client, &harness, &format!("events-{i}"), 3, role, true).await;
    }
    let cluster = wait_condition(&harness, "events", "Progressing", "Stable").await;
    assert_eq!(cluster["status"]["ring"]["epoch"], 3);
    assert_eq!(
        cluster["status"]["ring"]["members"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );

    // Down to 3 with events-1 behind: blocked, visibly, and nothing changes.
    report_state(&client, &harness, "events-1", 3, "backup", false).await;
    patch_spec(&client, "events", json!({"replicas": 3})).await;
    let cluster = wait_condition(&harness, "events", "ScaleDownBlocked", "MemberNotCaughtUp").await;
    let blocked = condition(&cluster, "ScaleDownBlocked").expect("condition");
    assert_eq!(blocked["status"], "True");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap_or("")
            .contains("events-1"),
        "{blocked}"
    );
    assert_eq!(published_ring(&harness).expect("ring"), (3, 5, 0));
    report_state(&client, &harness, "events-1", 3, "backup", true).await;
    wait_ring(&harness, (4, 3, 0), 5).await;
    wait_condition(&harness, "events", "ScaleDownBlocked", "NotBlocked").await;

    // The operator stops before the brokers report epoch 4; the next one finishes.
    operator.stop().await;
    for (i, role) in ["primary", "backup", "backup"].iter().enumerate() {
        report_state(&client, &harness, &format!("events-{i}"), 4, role, true).await;
    }
    for i in 3..5 {
        report_state(
            &client,
            &harness,
            &format!("events-{i}"),
            4,
            "retired",
            false,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        statefulset_replicas(&harness),
        Some(5),
        "no operator, no change"
    );
    let operator = Operator::start(&client, None);
    wait_ring(&harness, (4, 3, 0), 3).await;
    // Each step's Event is published right after the step.
    eventually("an event for every step", || {
        let events = harness.list("events.k8s.io", "Event", Some(NS));
        let missing: Vec<&str> = [
            "ScalingUp",
            "MembersAdded",
            "ScaleDownBlocked",
            "ScalingDown",
            "MembersRemoved",
        ]
        .into_iter()
        .filter(|reason| !events.iter().any(|e| e["reason"] == *reason))
        .collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("no event {missing:?}"))
    })
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_cluster_collects_children_and_keeps_volumes() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_ready(&harness, "events").await;
    assert_eq!(harness.list("", "PersistentVolumeClaim", Some(NS)).len(), 3);
    let api: kube::Api<iggy_operator::crd::IggyCluster> = kube::Api::namespaced(client.clone(), NS);
    api.delete("events", &Default::default())
        .await
        .expect("delete");
    eventually("children collected", || {
        let left: Vec<String> = [
            ("apps", "StatefulSet"),
            ("", "Service"),
            ("", "ConfigMap"),
            ("", "Pod"),
            ("policy", "PodDisruptionBudget"),
            ("networking.k8s.io", "NetworkPolicy"),
            ("rbac.authorization.k8s.io", "Role"),
        ]
        .iter()
        .flat_map(|(group, kind)| children_named(&harness, group, kind))
        .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    assert_eq!(
        harness.list("", "PersistentVolumeClaim", Some(NS)).len(),
        3,
        "volumes outlive the cluster"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_gives_a_condition_and_no_children() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(
        &client,
        "events",
        json!({"replicas": 3, "config": {"storage.fsnyc": "always"}}),
    )
    .await;
    let cluster = wait_condition(&harness, "events", "Degraded", "InvalidSpec").await;
    assert!(
        condition(&cluster, "Degraded").expect("Degraded")["message"]
            .as_str()
            .expect("message")
            .contains("storage.fsnyc")
    );
    assert_eq!(
        condition(&cluster, "Ready").expect("Ready")["status"],
        "False"
    );
    assert!(children_named(&harness, "apps", "StatefulSet").is_empty());
    assert!(children_named(&harness, "", "ConfigMap").is_empty());
    let warnings: Vec<Value> = harness
        .list("events.k8s.io", "Event", Some(NS))
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert!(
        warnings.iter().any(|e| e["reason"] == "InvalidSpec"),
        "{warnings:?}"
    );

    // A missing Secret is reported precisely, and creating it converges.
    patch_spec(
        &client,
        "events",
        json!({"config": null, "auth": {"rootSecret": "events-root"}}),
    )
    .await;
    wait_condition(&harness, "events", "Degraded", "SecretMissing").await;
    assert!(children_named(&harness, "apps", "StatefulSet").is_empty());
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), NS);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "events-root"},
        "stringData": {"username": "admin", "password": "s3cret-value"},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("secret created");
    patch_spec(&client, "events", json!({"replicas": 3})).await;
    wait_ready(&harness, "events").await;
    let sts = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    let text = sts.to_string();
    assert!(
        !text.contains("s3cret-value"),
        "the secret's value never reaches a child"
    );
    let config = harness
        .get("", "ConfigMap", NS, "events-config")
        .expect("config");
    assert!(!config.to_string().contains("s3cret-value"));
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_api_errors_are_retried_until_converged() {
    let (harness, client) = harness().await;
    harness.inject_errors(Some("patch"), Some("statefulsets"), 3, 500);
    harness.inject_errors(Some("get"), Some("configmaps"), 2, 503);
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_ready(&harness, "events").await;
    let metrics = operator.metrics.render();
    assert!(
        metrics.contains("iggy_operator_reconcile_failures_total{category="),
        "{metrics}"
    );
    let warnings: Vec<Value> = harness
        .list("events.k8s.io", "Event", Some(NS))
        .into_iter()
        .filter(|e| e["reason"] == "ApplyFailed")
        .collect();
    assert!(!warnings.is_empty(), "a failed apply is an event");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_reconcile_is_replaced_without_duplicates() {
    let (harness, client) = harness().await;
    // Slow requests, so the kill lands in the middle of the first reconcile.
    harness.set_latency(Duration::from_millis(40));
    let first = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    eventually("the first operator to have applied something", || {
        if harness.write_requests() >= 3 {
            Ok(())
        } else {
            Err("no writes yet".into())
        }
    })
    .await;
    first.kill();
    harness.set_latency(Duration::ZERO);
    let second = Operator::start(&client, None);
    wait_ready(&harness, "events").await;
    assert_eq!(children_named(&harness, "apps", "StatefulSet"), ["events"]);
    assert_eq!(children_named(&harness, "", "Service").len(), 3);
    assert_eq!(children_named(&harness, "", "ConfigMap").len(), 2);
    assert_eq!(harness.list("", "Pod", Some(NS)).len(), 3);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_only_the_leader_acts() {
    let (harness, client) = harness().await;
    let lease = |identity: &str| LeaseSettings {
        duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(300),
        ..LeaseSettings::new(NS, identity)
    };
    let a = Operator::start(&client, Some(lease("operator-a")));
    eventually("operator-a to lead", || {
        let lease = harness
            .get("coordination.k8s.io", "Lease", NS, "iggy-operator-leader")
            .ok_or("no lease")?;
        if lease["spec"]["holderIdentity"] == "operator-a" {
            Ok(())
        } else {
            Err(lease.to_string())
        }
    })
    .await;
    let b = Operator::start(&client, Some(lease("operator-b")));
    create_cluster(&client, "events", json!({"replicas": 1})).await;
    wait_ready(&harness, "events").await;
    // The counter moves when a reconcile returns, just after its status write.
    eventually("operator-a to count its reconcile", || {
        if a.metrics.reconciliations() > 0 {
            Ok(())
        } else {
            Err("0".into())
        }
    })
    .await;
    assert_eq!(
        b.metrics.reconciliations(),
        0,
        "the follower never reconciles"
    );
    assert!(b.metrics.render().contains("iggy_operator_leader 0"));

    // The leader goes away; the follower takes over once the lease expires, and acts.
    a.stop().await;
    eventually("operator-b to lead", || {
        let lease = harness
            .get("coordination.k8s.io", "Lease", NS, "iggy-operator-leader")
            .ok_or("no lease")?;
        if lease["spec"]["holderIdentity"] == "operator-b" {
            Ok(())
        } else {
            Err(lease.to_string())
        }
    })
    .await;
    patch_spec(&client, "events", json!({"replicas": 2})).await;
    wait_ready(&harness, "events").await;
    eventually("operator-b to count its reconciles", || {
        if b.metrics.reconciliations() > 0 {
            Ok(())
        } else {
            Err("0".into())
        }
    })
    .await;
    assert!(!b.finished());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_deploys_a_collector_and_points_brokers_at_it() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3, "telemetry": {"collector": {"deploy": true}, "resourceAttributes": {"team": "streams"}}})).await;
    let cluster = wait_condition(&harness, "events", "TelemetryReady", "CollectorAvailable").await;
    assert_eq!(
        condition(&cluster, "TelemetryReady").expect("condition")["status"],
        "True"
    );
    let deployment = harness
        .get("apps", "Deployment", NS, "events-otel-collector")
        .expect("collector Deployment");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "IggyCluster"
    );
    assert!(harness
        .get("", "Service", NS, "events-otel-collector")
        .is_some());
    let config = harness
        .get("", "ConfigMap", NS, "events-otel-collector")
        .expect("collector config");
    assert!(config["data"]["collector.yaml"]
        .as_str()
        .expect("yaml")
        .contains("debug"));
    let sts = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("sts");
    for container in sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        let env = container["env"].as_array().expect("env");
        let endpoint = env
            .iter()
            .find(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .expect("endpoint");
        assert_eq!(
            endpoint["value"], "http://events-otel-collector.default.svc:4317",
            "{}",
            container["name"]
        );
        let attributes = env
            .iter()
            .find(|e| e["name"] == "OTEL_RESOURCE_ATTRIBUTES")
            .expect("attributes");
        assert!(attributes["value"]
            .as_str()
            .expect("text")
            .contains("team=streams"));
    }

    // Switching to an external collector removes the deployed one.
    patch_spec(&client, "events", json!({"telemetry": {"collector": null, "otlp": {"endpoint": "http://otel.observability:4317"}}})).await;
    eventually("collector removed", || {
        if harness
            .get("apps", "Deployment", NS, "events-otel-collector")
            .is_none()
            && harness
                .get("", "Service", NS, "events-otel-collector")
                .is_none()
        {
            Ok(())
        } else {
            Err("collector still there".into())
        }
    })
    .await;
    let cluster = wait_condition(&harness, "events", "TelemetryReady", "EndpointConfigured").await;
    assert!(
        condition(&cluster, "TelemetryReady").expect("condition")["message"]
            .as_str()
            .expect("message")
            .contains("otel.observability")
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_credentials_and_the_replication_secret_are_generated_once_and_referenced() {
    use k8s_openapi::api::core::v1::Secret;
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 1})).await;
    wait_ready(&harness, "events").await;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), NS);
    let read = |secret: &Secret, key: &str| {
        let bytes = &secret.data.as_ref().expect("data")[key].0;
        String::from_utf8(bytes.clone()).expect("utf-8")
    };
    let secret = secrets.get("events-root").await.expect("generated Secret");
    assert_eq!(read(&secret, "username"), "iggy");
    let password = read(&secret, "password");
    assert_eq!(password.len(), 32);
    assert!(
        secret.metadata.owner_references.is_none(),
        "it outlives the cluster, like the retained volumes holding its root user"
    );
    let set = harness
        .get("apps", "StatefulSet", NS, "events")
        .expect("StatefulSet");
    let env = set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let reference = env
        .iter()
        .find(|e| e["name"] == "IGGY_ROOT_PASSWORD")
        .expect("password variable");
    assert_eq!(
        reference["valueFrom"]["secretKeyRef"],
        json!({"name": "events-root", "key": "password"})
    );
    assert!(!set.to_string().contains(&password));
    let cluster = cluster_value(&harness, "events").expect("cluster");
    assert!(!cluster.to_string().contains(&password), "not in status");

    // The replication secret: generated whatever spec.auth says, owned by the cluster (no
    // data depends on it), referenced and never copied.
    let replication = secrets
        .get("events-replication")
        .await
        .expect("generated replication Secret");
    let shared = read(&replication, "secret");
    assert_eq!(shared.len(), 32);
    assert_ne!(shared, password);
    let owners = replication
        .metadata
        .owner_references
        .clone()
        .expect("owned");
    assert_eq!(owners[0].kind, "IggyCluster");
    assert_eq!(owners[0].name, "events");
    let reference = env
        .iter()
        .find(|e| e["name"] == "IGGY_REPLICATION_SECRET")
        .expect("replication secret variable");
    assert_eq!(
        reference["valueFrom"]["secretKeyRef"],
        json!({"name": "events-replication", "key": "secret"})
    );
    assert!(!set.to_string().contains(&shared));
    assert!(!cluster.to_string().contains(&shared), "not in status");

    // Later reconciles keep it: the brokers' root user was created with this password.
    patch_spec(
        &client,
        "events",
        json!({"config": {"storage.fsync": "always"}}),
    )
    .await;
    eventually("the edit to be applied", || {
        let set = harness
            .get("apps", "StatefulSet", NS, "events")
            .ok_or("no StatefulSet")?;
        (set["metadata"]["generation"] != 1)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let again = secrets.get("events-root").await.expect("still there");
    assert_eq!(read(&again, "password"), password);
    let again = secrets
        .get("events-replication")
        .await
        .expect("still there");
    assert_eq!(
        read(&again, "secret"),
        shared,
        "pods of both would not admit each other"
    );
    operator.stop().await;
}

/// The uid of pod `name`, if it exists.
fn pod_uid(harness: &kube_harness::Harness, name: &str) -> Option<String> {
    harness
        .get("", "Pod", NS, name)
        .and_then(|pod| pod["metadata"]["uid"].as_str().map(String::from))
}

/// What a sidecar would report: the gate True and the broker's role label.
async fn report_member(
    client: &kube::Client,
    harness: &kube_harness::Harness,
    pod: &str,
    role: &str,
) {
    harness
        .set_pod_condition(NS, pod, READINESS_GATE, true)
        .expect("gate set");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), NS);
    pods.patch(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"iggy.rs/role": role}}})),
    )
    .await
    .expect("role labelled");
}

/// Waits until the pods `events-<i>` for every `i` in `ordinals` exist.
async fn wait_pods(harness: &kube_harness::Harness, ordinals: std::ops::Range<u8>) {
    eventually(&format!("pods {ordinals:?}"), || {
        ordinals
            .clone()
            .all(|i| pod_uid(harness, &format!("events-{i}")).is_some())
            .then_some(())
            .ok_or("pods missing".to_string())
    })
    .await;
}

/// Waits until pod `name` exists with a uid other than `old`; returns the new uid.
async fn replaced(harness: &kube_harness::Harness, name: &str, old: &str) -> String {
    eventually(&format!("{name} replaced"), || {
        match pod_uid(harness, name) {
            Some(uid) if uid != old => Ok(uid),
            other => Err(format!("{name}: {other:?}")),
        }
    })
    .await
}

/// A rolling restart's progress is the pods themselves, so an operator restarted halfway takes
/// the next step, not the last one again: with the gates set by hand (no sidecars here), the
/// first operator restarts events-2 and is stopped; the next one, once events-2 is caught up,
/// restarts events-1, asks the primary events-0 to step down, and restarts it only after it
/// handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_resumes_where_a_stopped_operator_left_it() {
    let (harness, client) = harness_with(false, true).await;
    let operator = Operator::start(&client, None);
    create_cluster(&client, "events", json!({"replicas": 3})).await;
    wait_pods(&harness, 0..3).await;
    for (pod, role) in [
        ("events-0", "primary"),
        ("events-1", "backup"),
        ("events-2", "backup"),
    ] {
        report_member(&client, &harness, pod, role).await;
    }
    wait_ready(&harness, "events").await;
    let first: Vec<String> = (0..3)
        .map(|i| pod_uid(&harness, &format!("events-{i}")).expect("pod"))
        .collect();

    patch_spec(
        &client,
        "events",
        json!({"config": {"storage.fsync": "always"}}),
    )
    .await;
    let second = replaced(&harness, "events-2", &first[2]).await;
    operator.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pod_uid(&harness, "events-1").as_deref(),
        Some(first[1].as_str())
    );
    assert_eq!(
        pod_uid(&harness, "events-0").as_deref(),
        Some(first[0].as_str())
    );

    // events-2 catches up while no operator runs; a new operator goes on from there.
    report_member(&client, &harness, "events-2", "backup").await;
    let operator = Operator::start(&client, None);
    replaced(&harness, "events-1", &first[1]).await;
    assert_eq!(
        pod_uid(&harness, "events-2").as_deref(),
        Some(second.as_str()),
        "events-2 is not restarted twice"
    );
    report_member(&client, &harness, "events-1", "backup").await;
    eventually("events-0 asked to step down", || {
        let pod = harness.get("", "Pod", NS, "events-0").ok_or("no pod")?;
        pod["metadata"]["annotations"]["iggy.rs/step-down"]
            .as_str()
            .map(|_| ())
            .ok_or(format!("annotations: {}", pod["metadata"]["annotations"]))
    })
    .await;
    assert_eq!(
        pod_uid(&harness, "events-0").as_deref(),
        Some(first[0].as_str()),
        "the primary waits for its hand-over"
    );
    // Its sidecar's broker hands over: events-1 is primary now.
    report_member(&client, &harness, "events-1", "primary").await;
    report_member(&client, &harness, "events-0", "backup").await;
    replaced(&harness, "events-0", &first[0]).await;
    report_member(&client, &harness, "events-0", "backup").await;
    wait_condition(&harness, "events", "Progressing", "Stable").await;
    operator.stop().await;
}

/// A `kubernetes.io/tls` Secret's data: `tls.crt` for `names` valid until `until`, with a key
/// of its own.
fn tls_secret_data(names: &[&str], until: (i32, u8, u8)) -> Value {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let cert = params.self_signed(&key).expect("sign");
    json!({
        "tls.crt": k8s_openapi::ByteString(cert.pem().into_bytes()),
        "tls.key": k8s_openapi::ByteString(key.serialize_pem().into_bytes()),
    })
}

/// `spec.tls`: a Secret whose `tls.crt` holds no certificate stops the cluster before any pod
/// (brokers could not load it); once it holds one, `status.tls` shows its expiry and names and
/// `CertificateValid` says whether clients will accept it, with a Warning Event when they will
/// not. The private key is never read into the status or a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_is_checked_before_pods_and_judged_in_status() {
    let (harness, client) = harness().await;
    let operator = Operator::start(&client, None);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), NS);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "events-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "not a certificate", "tls.key": "not a key"},
    }))
    .expect("secret");
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("secret created");
    create_cluster(
        &client,
        "events",
        json!({"replicas": 3, "tls": {"secretName": "events-tls"}}),
    )
    .await;
    let cluster = wait_condition(&harness, "events", "Degraded", "CertificateInvalid").await;
    let message = condition(&cluster, "Degraded").expect("Degraded")["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("\"events-tls\"") && m.contains("CERTIFICATE")),
        "{message}"
    );
    assert!(children_named(&harness, "apps", "StatefulSet").is_empty());

    // A certificate for the Service only: the cluster runs, and the status says which names
    // clients are given that the certificate does not cover.
    let service_only = [format!("events.{NS}.svc")];
    let service_only: Vec<&str> = service_only.iter().map(String::as_str).collect();
    let data = tls_secret_data(&service_only, (2099, 1, 1));
    let key_pem = data["tls.key"].clone();
    secrets
        .patch(
            "events-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": null, "data": data})),
        )
        .await
        .expect("secret fixed");
    // Seen by the 15 s re-check of an invalid Secret; an annotation makes it sooner, so the
    // test's bound does not rest on that period.
    let clusters: kube::Api<iggy_operator::crd::IggyCluster> =
        kube::Api::namespaced(client.clone(), NS);
    clusters
        .patch(
            "events",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"test/nudge": "1"}}})),
        )
        .await
        .expect("annotated");
    let cluster = wait_condition(&harness, "events", "CertificateValid", "NamesMissing").await;
    let verdict = condition(&cluster, "CertificateValid").expect("verdict");
    assert_eq!(verdict["status"], "False");
    let missing = format!(
        "events-primary.{NS}.svc, events-0.events-replicas.{NS}.svc, \
         events-1.events-replicas.{NS}.svc, events-2.events-replicas.{NS}.svc"
    );
    assert!(
        verdict["message"]
            .as_str()
            .is_some_and(|m| m.contains(&missing)),
        "{verdict}"
    );
    assert_eq!(cluster["status"]["tls"]["notAfter"], "2099-01-01T00:00:00Z");
    assert_eq!(cluster["status"]["tls"]["dnsNames"], json!(service_only));
    assert!(children_named(&harness, "apps", "StatefulSet").contains(&"events".to_string()));
    let warned = |reason: &str| {
        harness
            .list("events.k8s.io", "Event", Some(NS))
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == reason)
    };
    assert!(warned("CertificateInvalid") && warned("NamesMissing"));

    // Renewed with every name: valid. The Secret is not watched, so a spec edit makes the
    // reconcile that sees it (otherwise the periodic one does).
    let full = [
        format!("events.{NS}.svc"),
        format!("events-primary.{NS}.svc"),
        format!("*.events-replicas.{NS}.svc"),
    ];
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    secrets
        .patch(
            "events-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": tls_secret_data(&full, (2099, 1, 1))})),
        )
        .await
        .expect("secret renewed");
    patch_spec(
        &client,
        "events",
        json!({"resources": {"limits": {"cpu": "2"}}}),
    )
    .await;
    let cluster = wait_condition(&harness, "events", "CertificateValid", "Valid").await;
    assert_eq!(
        condition(&cluster, "CertificateValid").expect("verdict")["status"],
        "True"
    );
    let everything = serde_json::to_string(&harness.list("", "ConfigMap", Some(NS))).expect("json")
        + &serde_json::to_string(&harness.list("apps", "StatefulSet", Some(NS))).expect("json")
        + &cluster.to_string();
    let key_text = String::from_utf8(
        serde_json::from_value::<k8s_openapi::ByteString>(key_pem)
            .expect("bytes")
            .0,
    )
    .expect("pem");
    let key_body = key_text.lines().nth(1).expect("a line of the key");
    assert!(
        !everything.contains(key_body),
        "the private key reaches no child and no status"
    );

    // Taking spec.tls away clears status.tls and the condition.
    patch_spec(&client, "events", json!({"tls": null})).await;
    eventually("status.tls cleared", || {
        let cluster = cluster_value(&harness, "events")?;
        (cluster["status"]["tls"].is_null() && condition(&cluster, "CertificateValid").is_none())
            .then_some(())
            .ok_or(cluster["status"].to_string())
    })
    .await;
    operator.stop().await;
}
