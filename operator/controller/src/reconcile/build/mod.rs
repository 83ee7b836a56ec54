//! Build: pure functions from a validated cluster to the objects it needs, one module per
//! kind. No client, no clock: the same input always builds the same objects, which is what
//! makes an unchanged cluster reconcile without writes.

pub mod config_maps;
pub mod network_policy;
pub mod policy;
pub mod rbac;
pub mod services;
pub mod statefulset;
pub mod storage;
pub mod telemetry;

use super::validate::ValidatedCluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ApiResource;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;

/// One object to apply, type-erased for the generic apply step.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub name: String,
    pub object: Value,
}

impl Child {
    pub fn from_typed<K>(object: &K) -> Self
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut value = serde_json::to_value(object).expect("Kubernetes objects serialize");
        value["apiVersion"] = Value::String(resource.api_version.clone());
        value["kind"] = Value::String(resource.kind.clone());
        Self {
            namespaced: object.meta().namespace.is_some(),
            name: object.meta().name.clone().unwrap_or_default(),
            resource,
            object: value,
        }
    }
}

/// Metadata of a namespaced child: name, namespace, labels and the controller owner reference.
pub fn child_meta(cluster: &ValidatedCluster, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(cluster.names.namespace.clone()),
        labels: Some(cluster.names.labels(component)),
        owner_references: Some(vec![cluster.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Metadata of a cluster-scoped child: no owner reference (Kubernetes does not let a
/// namespaced object own a cluster-scoped one), a namespace label instead.
pub fn cluster_scoped_meta(cluster: &ValidatedCluster, name: &str, component: &str) -> ObjectMeta {
    let mut labels = cluster.names.labels(component);
    labels.insert("iggy.rs/namespace".into(), cluster.names.namespace.clone());
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// Every child of the cluster, in apply order: storage and configuration before the pods that
/// use them, so a new StatefulSet never starts pods against missing ConfigMaps.
pub fn build_all(cluster: &ValidatedCluster) -> Vec<Child> {
    let mut children = Vec::new();
    if let Some(class) = storage::storage_class(cluster) {
        children.push(Child::from_typed(&class));
    }
    children.extend(
        storage::local_volumes(cluster)
            .iter()
            .map(Child::from_typed),
    );
    children.push(Child::from_typed(&rbac::service_account(cluster)));
    children.push(Child::from_typed(&rbac::role(cluster)));
    children.push(Child::from_typed(&rbac::role_binding(cluster)));
    children.push(Child::from_typed(&config_maps::broker_config(cluster)));
    children.push(Child::from_typed(&config_maps::ring(cluster)));
    children.push(Child::from_typed(&services::headless(cluster)));
    children.push(Child::from_typed(&services::client(cluster)));
    children.push(Child::from_typed(&services::primary(cluster)));
    if let Some((config_map, deployment, service)) = telemetry::collector_children(cluster) {
        children.push(Child::from_typed(&config_map));
        children.push(Child::from_typed(&service));
        children.push(Child::from_typed(&deployment));
    }
    children.push(Child::from_typed(&policy::disruption_budget(cluster)));
    children.push(Child::from_typed(&network_policy::network_policy(cluster)));
    children.push(Child::from_typed(&statefulset::statefulset(cluster)));
    children
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::dereference::Dereferenced;
    use super::super::validate::{tests::cluster, validate, ValidatedCluster};
    use super::*;
    use serde_json::json;

    /// A validated cluster whose referenced root Secret exists with the default keys.
    pub fn validated(spec: Value) -> ValidatedCluster {
        let refs = Dereferenced {
            root_secret_keys: Some(["username".to_string(), "password".to_string()].into()),
            tls_secret_keys: Some(["tls.crt".to_string(), "tls.key".to_string()].into()),
            tls_certificate: Some(Ok(crate::certificate::ServedCertificate {
                not_after: 1_893_456_000,
                names: vec!["events.prod.svc".into()],
            })),
            ..Dereferenced::default()
        };
        validate(&cluster(spec), &refs).expect("valid spec")
    }

    #[test]
    fn every_namespaced_child_is_owned_and_labelled() {
        let children = build_all(&validated(
            json!({"replicas": 3, "storage": {"localVolumes": [
            {"node": "a", "path": "/mnt/nvme0"}, {"node": "b", "path": "/mnt/nvme0"}, {"node": "c", "path": "/mnt/nvme0"}]}}),
        ));
        let kinds: Vec<&str> = children.iter().map(|c| c.resource.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "StorageClass",
                "PersistentVolume",
                "PersistentVolume",
                "PersistentVolume",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "StatefulSet"
            ]
        );
        for child in &children {
            let labels = &child.object["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/name"], "iggy", "{}", child.name);
            assert_eq!(labels["app.kubernetes.io/instance"], "events");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "iggy-operator");
            assert!(labels["app.kubernetes.io/component"].is_string());
            if child.namespaced {
                assert_eq!(
                    child.object["metadata"]["ownerReferences"][0]["uid"], "u-1",
                    "{}",
                    child.name
                );
                assert_eq!(
                    child.object["metadata"]["ownerReferences"][0]["controller"],
                    true
                );
            } else {
                assert!(child.object["metadata"]["ownerReferences"].is_null());
            }
        }
    }

    #[test]
    fn building_twice_gives_identical_objects() {
        let cluster = validated(json!({"replicas": 3, "config": {"storage.fsync": "always"}}));
        assert_eq!(build_all(&cluster), build_all(&cluster));
    }
}
