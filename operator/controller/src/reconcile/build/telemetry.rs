//! OpenTelemetry wiring: the environment brokers and sidecars export with (the standard
//! `OTEL_*` variables every OpenTelemetry SDK reads), and, with `collector.deploy`, a collector
//! of the cluster's own: ConfigMap, Deployment and Service.

use super::super::validate::{stable_hash, Telemetry, ValidatedCluster};
use super::child_meta;
use crate::crd::OtlpTransport;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const OTLP_GRPC_PORT: i32 = 4317;
pub const OTLP_HTTP_PORT: i32 = 4318;

/// Environment for a container exporting OTLP. Expects POD_NAME, POD_NAMESPACE and
/// RING_POSITION to be defined earlier in the same list (Kubernetes expands `$(VAR)` only from
/// variables before it).
pub fn otel_env(cluster: &ValidatedCluster, telemetry: &Telemetry) -> Vec<Value> {
    let protocol = match telemetry.transport {
        OtlpTransport::Grpc => "grpc",
        OtlpTransport::Http => "http/protobuf",
    };
    let mut attributes = vec![
        "k8s.pod.name=$(POD_NAME)".to_string(),
        "k8s.namespace.name=$(POD_NAMESPACE)".to_string(),
        format!("iggy.cluster={}", cluster.names.cluster),
        "iggy.ring.position=$(RING_POSITION)".to_string(),
    ];
    attributes.extend(
        telemetry
            .resource_attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    vec![
        json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": telemetry.endpoint}),
        json!({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": protocol}),
        json!({"name": "OTEL_SERVICE_NAME", "value": telemetry.service_name}),
        json!({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes.join(",")}),
    ]
}

/// The collector configuration: OTLP in over gRPC and HTTP, batched, out through the spec's
/// exporters (or `debug`), for traces, metrics and logs.
pub fn collector_config(exporters: &BTreeMap<String, Value>) -> String {
    let exporters: BTreeMap<String, Value> = if exporters.is_empty() {
        BTreeMap::from([("debug".to_string(), json!({"verbosity": "basic"}))])
    } else {
        exporters.clone()
    };
    let names: Vec<&String> = exporters.keys().collect();
    let pipeline = json!({"receivers": ["otlp"], "processors": ["batch"], "exporters": names});
    let config = json!({
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": format!("0.0.0.0:{OTLP_GRPC_PORT}")},
            "http": {"endpoint": format!("0.0.0.0:{OTLP_HTTP_PORT}")},
        }}},
        "processors": {"batch": {}},
        "exporters": exporters,
        "service": {"pipelines": {"traces": pipeline, "metrics": pipeline, "logs": pipeline}},
    });
    serde_yaml::to_string(&config).expect("collector configuration serializes")
}

/// `app.kubernetes.io/name` of the collector's pods (the brokers' is `iggy`).
pub const COLLECTOR_APP_NAME: &str = "iggy-otel-collector";

pub fn collector_children(cluster: &ValidatedCluster) -> Option<(ConfigMap, Deployment, Service)> {
    let collector = cluster.telemetry.as_ref()?.collector.as_ref()?;
    let name = cluster.names.collector();
    let config = collector_config(&collector.exporters);
    let config_map = ConfigMap {
        metadata: child_meta(cluster, &name, "telemetry"),
        data: Some(BTreeMap::from([(
            "collector.yaml".to_string(),
            config.clone(),
        )])),
        ..ConfigMap::default()
    };
    // The collector's pods must not carry the brokers' selector labels: the client and
    // headless Services, the PodDisruptionBudget, the brokers' anti-affinity and the status
    // count all select brokers by them (a collector counted as a fourth broker kept a
    // three-member cluster from ever being Ready, and the client Service sent it clients).
    let selector = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            COLLECTOR_APP_NAME.to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.names.cluster.clone(),
        ),
    ]);
    let mut pod_labels = selector.clone();
    pod_labels.insert("app.kubernetes.io/component".into(), "telemetry".into());
    let deployment = serde_json::from_value(json!({
        "metadata": child_meta(cluster, &name, "telemetry"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    // A configuration change rolls the collector.
                    "annotations": {"iggy.rs/config-hash": stable_hash(&config)},
                },
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "otel-collector",
                        "image": collector.image,
                        "args": ["--config=/conf/collector.yaml"],
                        "ports": [
                            {"name": "otlp-grpc", "containerPort": OTLP_GRPC_PORT, "protocol": "TCP"},
                            {"name": "otlp-http", "containerPort": OTLP_HTTP_PORT, "protocol": "TCP"},
                        ],
                        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "config", "mountPath": "/conf", "readOnly": true}],
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": name}}],
                },
            },
        },
    }))
    .expect("the collector Deployment matches the Kubernetes schema");
    let service = serde_json::from_value(json!({
        "metadata": child_meta(cluster, &name, "telemetry"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "otlp-grpc", "port": OTLP_GRPC_PORT, "targetPort": OTLP_GRPC_PORT, "protocol": "TCP"},
                {"name": "otlp-http", "port": OTLP_HTTP_PORT, "targetPort": OTLP_HTTP_PORT, "protocol": "TCP"},
            ],
        },
    }))
    .expect("the collector Service matches the Kubernetes schema");
    Some((config_map, deployment, service))
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;

    #[test]
    fn the_collector_receives_otlp_and_exports_where_the_spec_says() {
        let cluster = validated(
            json!({"replicas": 1, "telemetry": {"collector": {"deploy": true, "exporters": {"otlphttp": {"endpoint": "https://tempo:4318"}}}}}),
        );
        let (config_map, deployment, service) = collector_children(&cluster).expect("collector");
        let config: Value =
            serde_yaml::from_str(&config_map.data.expect("data")["collector.yaml"]).expect("YAML");
        assert_eq!(
            config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
            "0.0.0.0:4317"
        );
        assert_eq!(
            config["exporters"]["otlphttp"]["endpoint"],
            "https://tempo:4318"
        );
        assert_eq!(
            config["service"]["pipelines"]["logs"]["exporters"],
            json!(["otlphttp"])
        );
        let deployment = serde_json::to_value(deployment).expect("serializes");
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["--config=/conf/collector.yaml"])
        );
        // Nothing that selects brokers selects the collector's pods.
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let brokers_selected = cluster
            .names
            .selector_labels()
            .iter()
            .all(|(k, v)| pod_labels[k] == v.as_str());
        assert!(!brokers_selected, "{pod_labels}");
        let ports: Vec<i64> = serde_json::to_value(service).expect("serializes")["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        assert_eq!(ports, [4317, 4318]);
        let default_config: Value =
            serde_yaml::from_str(&collector_config(&BTreeMap::new())).expect("YAML");
        assert_eq!(
            default_config["service"]["pipelines"]["traces"]["exporters"],
            json!(["debug"])
        );
    }

    #[test]
    fn brokers_get_endpoint_protocol_and_resource_attributes() {
        let cluster = validated(
            json!({"replicas": 1, "telemetry": {"otlp": {"endpoint": "http://otel:4318", "transport": "http"}, "resourceAttributes": {"deployment.environment": "prod"}}}),
        );
        let env = otel_env(&cluster, cluster.telemetry.as_ref().expect("telemetry"));
        let find = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
                .expect(name)
        };
        assert_eq!(find("OTEL_EXPORTER_OTLP_ENDPOINT"), "http://otel:4318");
        assert_eq!(find("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf");
        let attributes = find("OTEL_RESOURCE_ATTRIBUTES");
        let attributes = attributes.as_str().expect("text");
        for expected in [
            "k8s.pod.name=$(POD_NAME)",
            "iggy.cluster=events",
            "iggy.ring.position=$(RING_POSITION)",
            "deployment.environment=prod",
        ] {
            assert!(attributes.contains(expected), "{attributes}");
        }
        assert!(collector_children(&cluster).is_none());
    }
}
