//! Names on Kubernetes objects that more than one component reads or writes.

/// The pod condition the sidecar sets (and the StatefulSet's readiness gate): the broker is a
/// member of the current epoch, in normal status and caught up.
pub const READINESS_GATE: &str = "iggy.rs/replica-ready";
/// `primary | backup | standby | recovering`, set by the sidecar on its pod so
/// `<cluster>-primary` routes to the primary; removed while the broker does not answer.
pub const ROLE_LABEL: &str = "iggy.rs/role";
/// Epoch, view and lag of the pod's broker, written by the sidecar for the operator.
pub const REPLICA_STATE_ANNOTATION: &str = "iggy.rs/replica-state";
/// Set by the operator on the primary's pod before restarting it (value: the pod template
/// revision the restart moves to): the pod's sidecar asks its broker to step down.
pub const STEP_DOWN_ANNOTATION: &str = "iggy.rs/step-down";
/// Hash of what the operator last applied to an object.
pub const APPLIED_HASH_ANNOTATION: &str = "iggy.rs/applied-hash";
/// Hash of the broker configuration on the pod template.
pub const CONFIG_HASH_ANNOTATION: &str = "iggy.rs/config-hash";
/// The StatefulSet controller's label holding a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Recommended labels (`app.kubernetes.io/*`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The value of [`NAME_LABEL`] on every broker pod.
pub const APP_NAME: &str = "iggy";
/// The operator's field manager, and the value of [`MANAGED_BY_LABEL`].
pub const FIELD_MANAGER: &str = "iggy-operator";

/// The key of `ring.json` in the ring ConfigMap.
pub const RING_CONFIGMAP_KEY: &str = "ring.json";
/// The key of the broker's TOML in the broker ConfigMap.
pub const BROKER_CONFIG_KEY: &str = "broker.toml";
