//! Apply: server-side apply of every child under one field manager, skipping children that
//! already match, then deletion of children the cluster no longer needs (found by labels).
//!
//! Why skip: a server-side apply of an unchanged object is a no-op on the server but still a
//! write request; with a dozen children per cluster and a resync every few minutes that is
//! needless load on the API server. A child is skipped when it carries the hash of exactly
//! what we would apply (so fields we stopped setting still get removed) and every field we
//! set still has our value (so someone else's edit of our fields is reverted).

use super::build::Child;
use super::validate::{stable_hash, ValidatedCluster};
use crate::names::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client, Resource};
use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading {kind} {name}: {source}")]
    Read {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("cleaning up {kind} objects: {source}")]
    Cleanup { kind: String, source: kube::Error },
}

/// What one apply pass did.
#[derive(Debug, Default, PartialEq)]
pub struct ApplyReport {
    /// `Kind/name` of children created or changed.
    pub applied: Vec<String>,
    pub unchanged: usize,
    /// `Kind/name` of children deleted as no longer needed.
    pub deleted: Vec<String>,
}

/// True when every field of `desired` has the same value in `live`. Fields the server or
/// other managers added to `live` do not matter.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| {
            have.get(key)
                .is_some_and(|live_value| is_subset(value, live_value))
        }),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (want, have) => want == have,
    }
}

fn api_for(
    client: &Client,
    child_resource: &ApiResource,
    namespaced: bool,
    namespace: &str,
) -> Api<DynamicObject> {
    if namespaced {
        Api::namespaced_with(client.clone(), namespace, child_resource)
    } else {
        Api::all_with(client.clone(), child_resource)
    }
}

/// The object as it will be applied: the child plus the hash of itself.
pub fn with_hash(child: &Child) -> (Value, String) {
    let hash = stable_hash(&serde_json::to_string(&child.object).expect("JSON serializes"));
    let mut desired = child.object.clone();
    desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = Value::String(hash.clone());
    (desired, hash)
}

async fn apply_child(client: &Client, namespace: &str, child: &Child) -> Result<bool, ApplyError> {
    let api = api_for(client, &child.resource, child.namespaced, namespace);
    let (desired, hash) = with_hash(child);
    let live = api
        .get_opt(&child.name)
        .await
        .map_err(|source| ApplyError::Read {
            kind: child.resource.kind.clone(),
            name: child.name.clone(),
            source,
        })?;
    if let Some(live) = live {
        let live_hash = live
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
        let live_value = serde_json::to_value(&live).expect("JSON serializes");
        if live_hash == Some(&hash) && is_subset(&desired, &live_value) {
            return Ok(false);
        }
    }
    api.patch(
        &child.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| ApplyError::Apply {
        kind: child.resource.kind.clone(),
        name: child.name.clone(),
        source,
    })?;
    Ok(true)
}

fn erased<K>() -> (ApiResource, bool)
where
    K: Resource<DynamicType = ()>,
    K::Scope: 'static,
{
    use std::any::TypeId;
    let namespaced =
        TypeId::of::<K::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>();
    (ApiResource::erase::<K>(&()), namespaced)
}

/// Every kind the operator creates, for orphan cleanup.
fn managed_kinds() -> Vec<(ApiResource, bool)> {
    vec![
        erased::<StatefulSet>(),
        erased::<Deployment>(),
        erased::<Service>(),
        erased::<ConfigMap>(),
        erased::<PodDisruptionBudget>(),
        erased::<NetworkPolicy>(),
        erased::<RoleBinding>(),
        erased::<Role>(),
        erased::<ServiceAccount>(),
        erased::<PersistentVolume>(),
        erased::<StorageClass>(),
    ]
}

#[tracing::instrument(name = "apply", skip_all, fields(children = children.len()))]
pub async fn apply_all(
    client: &Client,
    cluster: &ValidatedCluster,
    children: &[Child],
) -> Result<ApplyReport, ApplyError> {
    let namespace = &cluster.names.namespace;
    let mut report = ApplyReport::default();
    for child in children {
        if apply_child(client, namespace, child).await? {
            report
                .applied
                .push(format!("{}/{}", child.resource.kind, child.name));
        } else {
            report.unchanged += 1;
        }
    }
    for (resource, namespaced) in managed_kinds() {
        let wanted: BTreeSet<&str> = children
            .iter()
            .filter(|child| child.resource.kind == resource.kind)
            .map(|child| child.name.as_str())
            .collect();
        let mut selector = cluster.names.children_selector();
        if !namespaced {
            selector.push_str(&format!(",iggy.rs/namespace={namespace}"));
        }
        let api = api_for(client, &resource, namespaced, namespace);
        let cleanup_error = |source| ApplyError::Cleanup {
            kind: resource.kind.clone(),
            source,
        };
        let existing = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(cleanup_error)?;
        for object in existing {
            let name = object.metadata.name.clone().unwrap_or_default();
            let ours = !namespaced
                || object
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| owner.uid == cluster.owner.uid);
            // A bound local PV still points at a member's disk; it goes when its claim does.
            let bound =
                object.data.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
            if wanted.contains(name.as_str()) || !ours || bound {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => report.deleted.push(format!("{}/{name}", resource.kind)),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(cleanup_error(source)),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_fields_the_server_added() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 1}]}});
        let live = json!({"spec": {"replicas": 3, "ports": [{"port": 1, "protocol": "TCP"}], "revisionHistoryLimit": 10}, "status": {}});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&json!({"spec": {"replicas": 5}}), &live));
        assert!(!is_subset(&json!({"spec": {"ports": []}}), &live));
    }

    #[test]
    fn managed_kinds_know_their_scope() {
        let kinds = managed_kinds();
        let scope = |kind: &str| {
            kinds
                .iter()
                .find(|(r, _)| r.kind == kind)
                .map(|(_, namespaced)| *namespaced)
        };
        assert_eq!(scope("StatefulSet"), Some(true));
        assert_eq!(scope("PersistentVolume"), Some(false));
        assert_eq!(scope("StorageClass"), Some(false));
    }
}
