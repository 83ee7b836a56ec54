//! Names and labels of everything the operator creates for one cluster, in one place so the
//! builders, the orphan cleanup and the tests agree on them.

use iggy_contract::Position;
use std::collections::BTreeMap;

// Names other components read too (the sidecar, the broker, the harness) come from the
// contract crate. The config hash on the pod template lets a config edit change the template
// (so restarted pods get it) without the operator deleting running pods; the applied hash is
// explained in `apply.rs`.
pub use iggy_contract::labels::{
    APPLIED_HASH_ANNOTATION, APP_NAME, COMPONENT_LABEL, CONFIG_HASH_ANNOTATION, FIELD_MANAGER,
    INSTANCE_LABEL, MANAGED_BY_LABEL, NAME_LABEL, READINESS_GATE, ROLE_LABEL,
};
pub use iggy_contract::ports::{CLIENT_PORT, HTTP_PORT, REPLICATION_PORT};

/// The cluster's object names.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterNames {
    pub cluster: String,
    pub namespace: String,
}

impl ClusterNames {
    pub fn new(cluster: &str, namespace: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
        }
    }

    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    pub fn headless_service(&self) -> String {
        format!("{}-replicas", self.cluster)
    }

    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    pub fn primary_service(&self) -> String {
        format!("{}-primary", self.cluster)
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }

    /// The root credentials the operator generates when `spec.auth` is not set.
    pub fn root_secret(&self) -> String {
        format!("{}-root", self.cluster)
    }

    /// The secret the brokers prove to each other, which the operator generates.
    pub fn replication_secret(&self) -> String {
        format!("{}-replication", self.cluster)
    }

    pub fn ring_config_map(&self) -> String {
        format!("{}-ring", self.cluster)
    }

    pub fn disruption_budget(&self) -> String {
        self.cluster.clone()
    }

    /// Who may reach the brokers' ports (`build::network_policy`).
    pub fn network_policy(&self) -> String {
        format!("{}-brokers", self.cluster)
    }

    pub fn service_account(&self) -> String {
        format!("{}-sidecar", self.cluster)
    }

    /// The OpenTelemetry Collector's Deployment, Service and ConfigMap.
    pub fn collector(&self) -> String {
        format!("{}-otel-collector", self.cluster)
    }

    /// Cluster-scoped, so the namespace is part of the name.
    pub fn storage_class(&self) -> String {
        format!("iggy-local-{}-{}", self.namespace, self.cluster)
    }

    pub fn local_volume(&self, position: usize) -> String {
        format!("iggy-{}-{}-{position}", self.namespace, self.cluster)
    }

    pub fn pod(&self, position: Position) -> String {
        format!("{}-{position}", self.cluster)
    }

    /// The member's PersistentVolumeClaim, as the StatefulSet names it from its claim template
    /// (`data`) and the pod.
    pub fn claim(&self, position: Position) -> String {
        format!("data-{}", self.pod(position))
    }

    /// Stable replication address of a member: the pod's DNS name under the headless Service.
    pub fn member_address(&self, position: Position) -> String {
        self.member_endpoint(position, REPLICATION_PORT)
    }

    /// Where Iggy clients reach the member at `position` directly (what `GetClusterMetadata`
    /// reports).
    pub fn member_client_address(&self, position: Position) -> String {
        self.member_endpoint(position, CLIENT_PORT)
    }

    /// The member's DNS name under the headless Service (what its addresses name, and what
    /// a client checks its certificate against).
    pub fn member_host(&self, position: Position) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(position),
            self.headless_service(),
            self.namespace
        )
    }

    fn member_endpoint(&self, position: Position, port: u16) -> String {
        format!("{}:{port}", self.member_host(position))
    }

    /// Labels every child carries; `component` says which part it is.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(MANAGED_BY_LABEL.into(), FIELD_MANAGER.into());
        labels.insert(COMPONENT_LABEL.into(), component.into());
        labels
    }

    /// The subset that selects the cluster's broker pods (and, with managed-by, its children).
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME_LABEL.into(), APP_NAME.into()),
            (INSTANCE_LABEL.into(), self.cluster.clone()),
        ])
    }

    /// `app.kubernetes.io/name=iggy,app.kubernetes.io/instance=<cluster>`
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Selects every child the operator manages for this cluster (orphan cleanup).
    pub fn children_selector(&self) -> String {
        format!(
            "{},{MANAGED_BY_LABEL}={FIELD_MANAGER}",
            self.selector_string()
        )
    }
}
