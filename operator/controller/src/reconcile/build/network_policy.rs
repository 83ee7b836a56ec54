//! The brokers' NetworkPolicy: the replication port admits only this cluster's brokers.
//!
//! Replicas already refuse any connection that cannot prove the cluster's replication secret
//! (docs/replication.md, "Who may speak to a replica"); the policy keeps everyone else from
//! reaching the port at all, where the network plugin enforces policies. A policy that selects
//! a pod denies all ingress no rule allows, so the client port and the HTTP port (probes,
//! metrics; the admin API answers loopback only) are allowed from anywhere, as before. Those
//! three are every port a broker pod has: the sidecar listens on none, and the pod template
//! overrides cannot add containers. Egress is left alone (S3, the OTLP collector, DNS, the API
//! server).

use super::super::validate::ValidatedCluster;
use super::child_meta;
use crate::names::{CLIENT_PORT, HTTP_PORT, REPLICATION_PORT};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..NetworkPolicyPort::default()
    }
}

pub fn network_policy(cluster: &ValidatedCluster) -> NetworkPolicy {
    let brokers = LabelSelector {
        match_labels: Some(cluster.names.selector_labels()),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: child_meta(cluster, &cluster.names.network_policy(), "broker"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(brokers.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                // No `from`: any source.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(CLIENT_PORT), tcp(HTTP_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(brokers),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(REPLICATION_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn replication_is_admitted_from_the_clusters_brokers_only() {
        let cluster = validated(json!({"replicas": 3}));
        let policy = serde_json::to_value(network_policy(&cluster)).expect("serializes");
        let selector = json!({"matchLabels": cluster.names.selector_labels()});
        assert_eq!(policy["spec"]["podSelector"], selector);
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            policy["spec"]["ingress"],
            json!([
                {"ports": [{"protocol": "TCP", "port": 8090}, {"protocol": "TCP", "port": 3000}]},
                {"from": [{"podSelector": selector}], "ports": [{"protocol": "TCP", "port": 8091}]},
            ])
        );
        assert!(
            policy["spec"].get("egress").is_none(),
            "egress is not restricted"
        );
    }
}
