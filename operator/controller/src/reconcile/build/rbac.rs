//! The sidecar's identity and its least-privilege Role: read its cluster's ring ConfigMap,
//! and report its own pod's role label and readiness-gate condition.

use super::super::validate::ValidatedCluster;
use super::child_meta;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

pub fn service_account(cluster: &ValidatedCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(cluster, &cluster.names.service_account(), "sidecar"),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

fn rule(resource: &str, names: Option<Vec<String>>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

pub fn role(cluster: &ValidatedCluster) -> Role {
    let pods: Vec<String> = (0..cluster.replicas)
        .map(|p| cluster.names.pod(p))
        .collect();
    Role {
        metadata: child_meta(cluster, &cluster.names.service_account(), "sidecar"),
        rules: Some(vec![
            rule(
                "configmaps",
                Some(vec![cluster.names.ring_config_map()]),
                &["get", "list", "watch"],
            ),
            rule("pods", Some(pods.clone()), &["get", "patch"]),
            rule("pods/status", Some(pods), &["get", "patch"]),
        ]),
    }
}

pub fn role_binding(cluster: &ValidatedCluster) -> RoleBinding {
    let name = cluster.names.service_account();
    RoleBinding {
        metadata: child_meta(cluster, &name, "sidecar"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(cluster.names.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn sidecar_role_is_limited_to_its_own_objects() {
        let role = role(&validated(json!({"replicas": 2})));
        let rules = role.rules.expect("rules");
        assert!(rules
            .iter()
            .all(|r| r.resource_names.as_ref().is_some_and(|n| !n.is_empty())));
        assert!(rules
            .iter()
            .all(|r| !r.verbs.iter().any(|v| v == "delete" || v == "create")));
        assert_eq!(
            rules[1].resource_names.as_ref().expect("names"),
            &["events-0", "events-1"]
        );
    }
}
