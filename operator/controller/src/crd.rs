//! The `IggyCluster` custom resource. Doc comments here become the CRD's field descriptions
//! (`make crds` writes crds/iggycluster.yaml), so they are written for the user of the CRD.

// Several `printcolumn(...)` entries share `type_ = "integer"`; clippy mistakes the repeated
// key for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A replicated Iggy-protocol streaming cluster: a ring of brokers replicating with
/// Viewstamped Replication, each on its own persistent volume.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iggy.rs",
    version = "v1alpha1",
    kind = "IggyCluster",
    plural = "iggyclusters",
    singular = "iggycluster",
    shortname = "iggy",
    namespaced,
    status = "IggyClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.ring.epoch"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.ring.primary"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct IggyClusterSpec {
    /// Number of brokers in the replication ring. A ring of N tolerates (N-1)/2 failures, so
    /// odd sizes are recommended. Edit it (or `kubectl scale`) to grow or shrink the ring.
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: i32,

    /// Broker container image.
    #[serde(default = "default_image")]
    pub image: String,

    /// Sidecar container image; the sidecar manages its broker's ring membership and reports
    /// the `iggy.rs/replica-ready` readiness gate.
    #[serde(default = "default_sidecar_image")]
    pub sidecar_image: String,

    /// CPU and memory for each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Persistent storage of each broker.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Tiered storage: sealed segments in S3 (L3). The operator checks (and, if asked,
    /// creates) the bucket and hands brokers its coordinates; credentials reach brokers only as
    /// Secret references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiered_storage: Option<TieredStorageSpec>,

    /// OpenTelemetry: where brokers and sidecars send logs, traces and metrics (OTLP), or a
    /// collector the operator deploys for this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,

    /// Broker settings as `section.key: value`, e.g. `storage.fsync: always`. Keys and value
    /// types are those of the broker's configuration file; unknown keys are rejected. Network
    /// addresses and the data path are set by the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,

    /// Root credentials. Without it the operator generates them once into the Secret
    /// `<cluster>-root` (keys `username` and `password`), which outlives the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// TLS on the brokers' client port. Without it clients connect in plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Additions to the broker pods' template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Pod affinity. Default: at most one broker per node (required anti-affinity on
    /// `kubernetes.io/hostname`), so a node failure costs the ring at most one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
}

pub fn default_image() -> String {
    format!("ghcr.io/iggy-rs/iggy-broker:{}", env!("CARGO_PKG_VERSION"))
}

pub fn default_sidecar_image() -> String {
    format!("ghcr.io/iggy-rs/iggy-sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// Persistent volume of each broker. Kubernetes cannot change a StatefulSet's volume claim
/// templates, so the size and the choice between local volumes and a StorageClass are fixed
/// once the cluster exists.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.localVolumes) == has(oldSelf.localVolumes)").message("storage.localVolumes cannot be switched on or off after creation"))]
pub struct StorageSpec {
    /// Size of each broker's volume, a Kubernetes quantity such as `100Gi`. Immutable.
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.size is immutable: volume claim templates cannot change"))]
    pub size: String,

    /// StorageClass of the volumes. Immutable: volumes cannot move between classes. Ignored
    /// when `localVolumes` is set (the operator then creates its own class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storageClassName is immutable"))]
    pub storage_class_name: Option<String>,

    /// Local NVMe disks, one per ring member: the operator creates a no-provisioner
    /// StorageClass with WaitForFirstConsumer binding and one node-affine local
    /// PersistentVolume per entry. Needs at least `replicas` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_volumes: Vec<LocalVolume>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            local_volumes: Vec::new(),
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

/// A disk on a node, already formatted and mounted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalVolume {
    /// Node name (its `kubernetes.io/hostname` label).
    pub node: String,
    /// Mount path of the disk on that node, e.g. `/mnt/nvme0`.
    pub path: String,
}

/// Tiered storage of sealed segments.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TieredStorageSpec {
    pub s3: S3Spec,
}

/// An S3 (or S3-compatible) bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL of an S3-compatible server, e.g. `http://minio.storage:9000`; empty for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket (and where it is created).
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret in the cluster's namespace with keys `accessKeyId` and `secretAccessKey`.
    pub credentials_secret: String,
    /// Create the bucket when it does not exist.
    #[serde(default)]
    pub create_bucket: bool,
    /// `Retain` (default) keeps the bucket and its data when the cluster is deleted; `Delete`
    /// removes the cluster's prefix, and the bucket if the operator created it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Key prefix; objects live under `<prefix>/<cluster id>/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a sealed segment stays on the brokers' disks once the bucket holds it, e.g.
    /// `30s`, `12h`, `7d`; unset, every segment stays on local disk as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_retention: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_prefix() -> String {
    "iggy".into()
}

/// What deleting the cluster does to its S3 data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// OTLP export of the brokers' and sidecars' logs, traces and metrics.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// An existing collector. Ignored when `collector.deploy` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSpec>,
    /// A collector deployed by the operator for this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorSpec>,
    /// `service.name` of the brokers' telemetry.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Extra resource attributes; pod, namespace, cluster and ring position are always set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
}

fn default_service_name() -> String {
    "iggy-broker".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OtlpSpec {
    /// Collector URL, e.g. `http://otel-collector.observability:4317`.
    pub endpoint: String,
    #[serde(default)]
    pub transport: OtlpTransport,
}

/// OTLP over gRPC (port 4317 by convention) or HTTP/protobuf (4318).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtlpTransport {
    #[default]
    Grpc,
    Http,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Deploy an OpenTelemetry Collector (Deployment, Service, ConfigMap) and point the
    /// brokers at it.
    #[serde(default)]
    pub deploy: bool,
    #[serde(default = "default_collector_image")]
    pub image: String,
    /// Collector exporters, as in the collector's own configuration (`otlp`, `otlphttp`,
    /// `prometheusremotewrite`, ...). Default: the `debug` exporter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_map")]
    pub exporters: BTreeMap<String, serde_json::Value>,
}

pub fn default_collector_image() -> String {
    "otel/opentelemetry-collector-contrib:0.140.0".into()
}

/// An object whose values Kubernetes keeps as given (collector configuration is not ours to
/// type).
fn free_form_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// TLS on the client port: the certificate brokers present, from a Secret of type
/// `kubernetes.io/tls` (keys `tls.crt`, the chain, and `tls.key`), as cert-manager's
/// `Certificate` or `kubectl create secret tls` write it. A renewed Secret reaches running
/// brokers without a restart; adding or removing `tls` rolls the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret in the cluster's namespace. Its certificate must name the addresses clients use:
    /// the client Service `<cluster>.<namespace>.svc` (and `<cluster>-primary.<namespace>.svc`),
    /// and for clients that reach members directly, `*.<cluster>-replicas.<namespace>.svc`.
    #[x_kube(validation = Rule::new("self != ''").message("tls.secretName must not be empty"))]
    pub secret_name: String,
}

/// Root user credentials from a Secret; never copied into a ConfigMap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret in the cluster's namespace holding the root credentials.
    pub root_secret: String,
    #[serde(default = "default_username_key")]
    pub username_key: String,
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Typed additions to the broker pod template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IggyClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Broker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Broker pods that are ready (their readiness gate included).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the broker pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,
    /// The tiered-storage bucket as the operator last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketStatus>,
    /// The client port's certificate as the operator last read it (with `spec.tls`). Written
    /// as `null` without it, so a merge patch clears what an earlier `spec.tls` left.
    #[serde(default)]
    pub tls: Option<TlsStatus>,
}

/// The certificate brokers present on the client port, from `tls.crt` of the TLS Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    pub secret_name: String,
    /// RFC 3339 time after which clients refuse the certificate.
    pub not_after: String,
    /// The DNS names and IP addresses it is for (subjectAltName).
    #[serde(default)]
    pub dns_names: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketStatus {
    pub name: String,
    /// The operator created this bucket (so `deletionPolicy: Delete` may remove it).
    #[serde(default)]
    pub created_by_operator: bool,
}

/// A status condition, in the shape of Kubernetes' `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default)]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The replication ring as the operator last published it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingStatus {
    /// Membership version; every change of members is a new epoch.
    pub epoch: iggy_contract::Epoch,
    /// Pod of the current primary, when a sidecar has reported it. Written as `null` when
    /// there is none: the status is a merge patch, in which an absent key keeps the old value,
    /// so a primary that stopped being one would otherwise stay named forever.
    #[serde(default)]
    pub primary: Option<String>,
    #[serde(default)]
    pub members: Vec<RingMemberStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingMemberStatus {
    pub position: iggy_contract::Position,
    /// Stable member id; never reused for another disk.
    pub id: iggy_contract::MemberId,
    pub pod: String,
    /// The member's PersistentVolumeClaim (its data), named by position.
    #[serde(default)]
    pub pvc: String,
    /// The PersistentVolume bound to that claim, once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// Stable DNS address used for replication.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `primary`, `backup`, `standby` or `recovering`, as the sidecar labels the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The member's readiness gate (`iggy.rs/replica-ready`) is True.
    #[serde(default)]
    pub caught_up: bool,
    /// Its broker reports less than twice `replication.min_free_space` of room on its volume
    /// (free bytes less what its open WAL file may still allocate; the primary refuses sends
    /// once any member is below the reserve): see the `DiskPressure` condition.
    #[serde(default)]
    pub disk_pressure: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn crd_has_subresources_columns_and_short_name() {
        let crd = serde_json::to_value(IggyCluster::crd()).expect("serializes");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["iggy"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(
            version["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(columns, ["Replicas", "Ready", "Epoch", "Primary", "Age"]);
    }

    /// crds/iggycluster.yaml is what `iggy-operator crd` prints. Generated by this test (with
    /// `UPDATE_CRDS=1`, which `make crds` sets) rather than by running the binary, so the CRD
    /// is rendered by the same build as every other test: a plain `cargo run` would compile
    /// kube and k8s-openapi a second time with other features (docs/operator.md, "Compile time").
    #[test]
    fn committed_crd_file_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/iggycluster.yaml");
        let rendered = serde_yaml::to_string(&IggyCluster::crd()).expect("renders");
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(&path, &rendered).expect("writes crds/iggycluster.yaml");
            return;
        }
        let committed = std::fs::read_to_string(&path).expect("reads crds/iggycluster.yaml");
        assert!(
            committed == rendered,
            "crds/iggycluster.yaml is stale: run 'make crds' and commit it"
        );
    }

    fn cluster(spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "iggy.rs/v1alpha1", "kind": "IggyCluster", "metadata": {"name": "c"}, "spec": spec})
    }

    #[test]
    fn cel_rejects_zero_replicas() {
        let good: IggyCluster =
            serde_json::from_value(cluster(json!({"replicas": 3}))).expect("parses");
        assert!(good.validate_cel().is_ok());
        let bad: IggyCluster =
            serde_json::from_value(cluster(json!({"replicas": 0}))).expect("parses");
        let errors = bad.validate_cel().expect_err("replicas 0 is invalid");
        assert!(
            format!("{errors:?}").contains("replicas must be at least 1"),
            "{errors:?}"
        );
    }

    #[test]
    fn cel_keeps_the_storage_class_immutable() {
        let old: IggyCluster = serde_json::from_value(cluster(
            json!({"replicas": 3, "storage": {"storageClassName": "fast"}}),
        ))
        .expect("parses");
        let same = old.clone();
        assert!(same.validate_cel_update(&old).is_ok());
        let mut moved = old.clone();
        moved.spec.storage.storage_class_name = Some("slow".into());
        let errors = moved.validate_cel_update(&old).expect_err("immutable");
        assert!(format!("{errors:?}").contains("immutable"), "{errors:?}");
    }

    #[test]
    fn cel_keeps_volume_claim_templates_fixed() {
        let old: IggyCluster =
            serde_json::from_value(cluster(json!({"replicas": 1, "storage": {"size": "10Gi"}})))
                .expect("parses");
        let mut bigger = old.clone();
        bigger.spec.storage.size = "20Gi".into();
        let errors = bigger
            .validate_cel_update(&old)
            .expect_err("size is immutable");
        assert!(
            format!("{errors:?}").contains("storage.size is immutable"),
            "{errors:?}"
        );
        let mut local = old.clone();
        local.spec.storage.local_volumes = vec![LocalVolume {
            node: "n".into(),
            path: "/mnt".into(),
        }];
        let errors = local
            .validate_cel_update(&old)
            .expect_err("cannot switch to local volumes");
        assert!(format!("{errors:?}").contains("localVolumes"), "{errors:?}");
        let mut scaled = old.clone();
        scaled.spec.replicas = 3;
        assert!(
            scaled.validate_cel_update(&old).is_ok(),
            "other edits stay allowed"
        );
    }
}
