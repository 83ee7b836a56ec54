//! The brokers' StatefulSet: broker and sidecar containers, the readiness gate, probes, a
//! non-root security context, default anti-affinity, and one volume claim per member.

use super::super::validate::ValidatedCluster;
use super::child_meta;
use super::telemetry::otel_env;
use crate::broker_config::DATA_PATH;
use crate::names::{
    CLIENT_PORT, CONFIG_HASH_ANNOTATION, HTTP_PORT, READINESS_GATE, REPLICATION_PORT,
};
use crate::reconcile::generated_secrets::REPLICATION_SECRET_KEY;
use crate::reconcile::validate::{TLS_CERT_KEY, TLS_KEY_KEY};
use crate::s3::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use iggy_contract::defaults::{
    POD_CONFIG_DIR, POD_CONFIG_FILE, POD_RING_DIR, POD_RING_FILE, POD_TLS_DIR,
};
use iggy_contract::env::*;
use iggy_contract::labels::POD_INDEX_LABEL;
use iggy_contract::ports::{all_interfaces, local_admin_url};
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{json, Value};

/// The pod volume of the client port's TLS Secret.
const TLS_VOLUME: &str = "tls";

/// The broker's user id in the image; the pod runs as it, never as root.
pub const BROKER_UID: i64 = 10001;

fn env(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The downward-API path of the pod's ordinal, which is its ring position.
fn pod_index_path() -> String {
    format!("metadata.labels['{POD_INDEX_LABEL}']")
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn broker_container(cluster: &ValidatedCluster) -> Value {
    let mut env_vars = vec![
        env(SYSTEM_PATH, DATA_PATH),
        env(TCP_ADDRESS, &all_interfaces(CLIENT_PORT)),
        env(HTTP_ADDRESS, &all_interfaces(HTTP_PORT)),
        field_env(POD_NAME, "metadata.name"),
        field_env(POD_NAMESPACE, "metadata.namespace"),
        field_env(RING_POSITION, &pod_index_path()),
        // Every member replicates through VSR from its first start: the ring file names the
        // members, the pod's ordinal says which one it is (ids are the operator's to assign).
        env(CLUSTER_RING_FILE, POD_RING_FILE),
        field_env(CLUSTER_POSITION, &pod_index_path()),
        env(REPLICATION_ADDRESS, &all_interfaces(REPLICATION_PORT)),
    ];
    if let Some(telemetry) = &cluster.telemetry {
        env_vars.extend(otel_env(cluster, telemetry));
    }
    let mut volume_mounts = vec![
        json!({"name": "data", "mountPath": DATA_PATH}),
        json!({"name": "config", "mountPath": POD_CONFIG_DIR, "readOnly": true}),
        json!({"name": "ring", "mountPath": POD_RING_DIR, "readOnly": true}),
    ];
    if cluster.tls.is_some() {
        // The whole Secret as a directory: the kubelet swaps a renewed Secret's files in
        // place, which a `subPath` mount would never see.
        volume_mounts.push(json!({"name": TLS_VOLUME, "mountPath": POD_TLS_DIR, "readOnly": true}));
        // The files of the mounted Secret; `self_signed` off, so a Secret without them stops
        // the broker instead of serving a generated certificate.
        env_vars.push(env(TCP_TLS_ENABLED, "true"));
        env_vars.push(env(TCP_TLS_SELF_SIGNED, "false"));
        env_vars.push(env(
            TCP_TLS_CERT_FILE,
            &format!("{POD_TLS_DIR}/{TLS_CERT_KEY}"),
        ));
        env_vars.push(env(
            TCP_TLS_KEY_FILE,
            &format!("{POD_TLS_DIR}/{TLS_KEY_KEY}"),
        ));
    }
    // By reference only: the values never pass through the operator or a ConfigMap.
    let auth = &cluster.auth;
    for (name, key) in [
        (ROOT_USERNAME, &auth.username_key),
        (ROOT_PASSWORD, &auth.password_key),
    ] {
        env_vars.push(json!({"name": name, "valueFrom": {"secretKeyRef": {"name": auth.root_secret, "key": key}}}));
    }
    env_vars.push(
        json!({"name": REPLICATION_SECRET, "valueFrom": {"secretKeyRef": {
            "name": cluster.names.replication_secret(),
            "key": REPLICATION_SECRET_KEY,
        }}}),
    );
    if let Some(tiering) = &cluster.tiering {
        // Bucket coordinates as plain values, the key pair by Secret reference only.
        let s3 = &tiering.s3;
        env_vars.push(env(TIERING_S3_BUCKET, &s3.bucket));
        env_vars.push(env(TIERING_S3_REGION, &s3.region));
        env_vars.push(env(TIERING_S3_PREFIX, &tiering.cluster_prefix));
        env_vars.push(env(
            TIERING_S3_FORCE_PATH_STYLE,
            &s3.force_path_style.to_string(),
        ));
        if let Some(endpoint) = &s3.endpoint {
            env_vars.push(env(TIERING_S3_ENDPOINT, endpoint));
        }
        if let Some(retention) = &s3.local_retention {
            env_vars.push(env(TIERING_LOCAL_RETENTION, retention));
        }
        for (name, key) in [
            (TIERING_S3_ACCESS_KEY_ID, ACCESS_KEY_ID),
            (TIERING_S3_SECRET_ACCESS_KEY, SECRET_ACCESS_KEY),
        ] {
            env_vars.push(json!({"name": name, "valueFrom": {"secretKeyRef": {"name": s3.credentials_secret, "key": key}}}));
        }
    }
    let mut container = json!({
        "name": "broker",
        "image": cluster.image,
        "args": ["--config", POD_CONFIG_FILE],
        "env": env_vars,
        "ports": [
            {"name": "tcp", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "replication", "containerPort": REPLICATION_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 2, "failureThreshold": 900},
        "volumeMounts": volume_mounts,
        "securityContext": container_security(),
    });
    if let Some(resources) = &cluster.resources {
        container["resources"] = serde_json::to_value(resources).expect("resources serialize");
    }
    container
}

fn sidecar_container(cluster: &ValidatedCluster) -> Value {
    let mut env_vars = vec![
        field_env(POD_NAME, "metadata.name"),
        field_env(POD_NAMESPACE, "metadata.namespace"),
        field_env(RING_POSITION, &pod_index_path()),
        env(SIDECAR_CLUSTER, &cluster.names.cluster),
        env(SIDECAR_RING_CONFIGMAP, &cluster.names.ring_config_map()),
        env(SIDECAR_BROKER_ADMIN_URL, &local_admin_url()),
    ];
    if let Some(telemetry) = &cluster.telemetry {
        env_vars.extend(otel_env(cluster, telemetry));
    }
    json!({
        "name": "sidecar",
        "image": cluster.sidecar_image,
        "env": env_vars,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": container_security(),
    })
}

/// Default placement: one broker per node, so losing a node costs the ring one member.
fn default_affinity(cluster: &ValidatedCluster) -> Value {
    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": cluster.names.selector_labels()},
        "topologyKey": "kubernetes.io/hostname",
    }]}})
}

pub fn statefulset(cluster: &ValidatedCluster) -> StatefulSet {
    let names = &cluster.names;
    let overrides = &cluster.pod_template;
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(names.labels("broker"));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), cluster.config_hash.clone());
    let affinity = match &cluster.affinity {
        Some(affinity) => serde_json::to_value(affinity).expect("affinity serializes"),
        None => default_affinity(cluster),
    };
    let mut pod_spec = json!({
        "serviceAccountName": names.service_account(),
        "readinessGates": [{"conditionType": READINESS_GATE}],
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": BROKER_UID,
            "runAsGroup": BROKER_UID,
            "fsGroup": BROKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 60,
        "affinity": affinity,
        "containers": [broker_container(cluster), sidecar_container(cluster)],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map()}},
            {"name": "ring", "configMap": {"name": names.ring_config_map()}},
        ],
    });
    if let Some(tls) = &cluster.tls {
        // Readable by the broker's group (the pod's fsGroup), by no one else.
        pod_spec["volumes"]
            .as_array_mut()
            .expect("volumes is an array")
            .push(json!({"name": TLS_VOLUME, "secret": {
                "secretName": tls.secret_name,
                "defaultMode": 0o440,
            }}));
    }
    if !overrides.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(overrides.node_selector);
    }
    if !overrides.tolerations.is_empty() {
        pod_spec["tolerations"] =
            serde_json::to_value(&overrides.tolerations).expect("tolerations serialize");
    }
    if let Some(class) = &overrides.priority_class_name {
        pod_spec["priorityClassName"] = json!(class);
    }
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cluster.storage_size}},
    });
    if let Some(class) = &cluster.storage_class {
        claim_spec["storageClassName"] = json!(class);
    }
    let value = json!({
        "metadata": child_meta(cluster, &names.statefulset(), "broker"),
        "spec": {
            "replicas": cluster.replicas,
            "serviceName": names.headless_service(),
            // Members must start together: a ring needs a quorum before any member is ready.
            "podManagementPolicy": "Parallel",
            // The operator restarts pods itself, one at a time, in ring-safe order.
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": names.selector_labels()},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": names.labels("broker")},
                "spec": claim_spec,
            }],
        },
    });
    serde_json::from_value(value).expect("the StatefulSet template matches the Kubernetes schema")
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;

    fn built(spec: Value) -> Value {
        serde_json::to_value(statefulset(&validated(spec))).expect("serializes")
    }

    #[test]
    fn pods_are_gated_non_root_spread_and_probed() {
        let sts = built(json!({"replicas": 3}));
        let spec = &sts["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["updateStrategy"]["type"], "OnDelete");
        assert_eq!(spec["serviceName"], "events-replicas");
        let pod = &spec["template"]["spec"];
        assert_eq!(
            pod["readinessGates"][0]["conditionType"],
            "iggy.rs/replica-ready"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                ["topologyKey"],
            "kubernetes.io/hostname"
        );
        let containers: Vec<&str> = pod["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(containers, ["broker", "sidecar"]);
        assert_eq!(
            pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/ready"
        );
        assert_eq!(
            pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "10Gi"
        );
    }

    #[test]
    fn root_credentials_come_from_the_secret_by_reference() {
        let sts = built(json!({"replicas": 1, "auth": {"rootSecret": "root"}}));
        let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
        let password = env
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "IGGY_ROOT_PASSWORD")
            .expect("password env");
        assert_eq!(
            password["valueFrom"]["secretKeyRef"],
            json!({"name": "root", "key": "password"})
        );
        assert!(password.get("value").is_none());
    }

    #[test]
    fn tiering_credentials_reach_brokers_only_by_reference() {
        use crate::reconcile::dereference::Dereferenced;
        use crate::reconcile::validate::{tests::cluster, validate};
        use crate::s3::S3Credentials;
        let refs = Dereferenced {
            s3_credentials: Some(Ok(S3Credentials {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: "very-secret".into(),
            })),
            ..Dereferenced::default()
        };
        let spec = json!({"replicas": 1, "tieredStorage": {"s3": {"bucket": "segments", "endpoint": "http://s3:9000", "forcePathStyle": true, "credentialsSecret": "s3-creds", "localRetention": "7d"}}});
        let valid = validate(&cluster(spec), &refs).expect("valid");
        let sts = serde_json::to_value(statefulset(&valid)).expect("serializes");
        let text = sts.to_string();
        assert!(!text.contains("AKIAEXAMPLE") && !text.contains("very-secret"));
        let env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .clone();
        let find = |name: &str| env.iter().find(|e| e["name"] == name).cloned().expect(name);
        assert_eq!(find("IGGY_TIERING_S3_BUCKET")["value"], "segments");
        assert_eq!(find("IGGY_TIERING_S3_PREFIX")["value"], "iggy/u-1/");
        assert_eq!(find("IGGY_TIERING_LOCAL_RETENTION")["value"], "7d");
        assert_eq!(
            find("IGGY_TIERING_S3_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"],
            json!({"name": "s3-creds", "key": "secretAccessKey"})
        );
    }

    #[test]
    fn tls_mounts_the_whole_secret_for_the_broker_alone_and_points_the_broker_at_it() {
        let sts = built(json!({"replicas": 3, "tls": {"secretName": "events-tls"}}));
        let pod = &sts["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "tls")
            .expect("tls volume");
        assert_eq!(volume["secret"]["secretName"], "events-tls");
        assert_eq!(volume["secret"]["defaultMode"], 0o440);
        let broker = &pod["containers"][0];
        let mount = broker["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "tls")
            .expect("tls mount");
        assert_eq!(mount["mountPath"], "/etc/iggy-tls");
        assert_eq!(mount["readOnly"], true);
        assert!(
            mount.get("subPath").is_none(),
            "a subPath never sees a renewal"
        );
        let env = broker["env"].as_array().expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
                .unwrap_or_default()
        };
        assert_eq!(value("IGGY_TCP_TLS_ENABLED"), "true");
        assert_eq!(value("IGGY_TCP_TLS_SELF_SIGNED"), "false");
        assert_eq!(value("IGGY_TCP_TLS_CERT_FILE"), "/etc/iggy-tls/tls.crt");
        assert_eq!(value("IGGY_TCP_TLS_KEY_FILE"), "/etc/iggy-tls/tls.key");
        assert!(
            pod["containers"][1].get("volumeMounts").is_none(),
            "the sidecar never sees the key"
        );

        let plain = built(json!({"replicas": 3}));
        let plain_pod = &plain["spec"]["template"]["spec"];
        assert!(!plain_pod.to_string().contains("IGGY_TCP_TLS"));
        assert!(!plain_pod["volumes"].to_string().contains("\"tls\""));
    }

    #[test]
    fn config_edits_change_the_template_hash_but_ring_size_does_not() {
        let base = built(json!({"replicas": 3}));
        let edited = built(json!({"replicas": 3, "config": {"storage.fsync": "always"}}));
        let scaled = built(json!({"replicas": 5}));
        let hash = |sts: &Value| {
            sts["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].clone()
        };
        assert_ne!(hash(&base), hash(&edited));
        assert_eq!(base["spec"]["template"], scaled["spec"]["template"]);
    }
}
