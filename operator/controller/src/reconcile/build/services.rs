//! Services: the headless one that gives members stable DNS names, the client one, and the
//! one that routes to the primary only.

use super::super::validate::ValidatedCluster;
use super::child_meta;
use crate::names::{CLIENT_PORT, HTTP_PORT, REPLICATION_PORT, ROLE_LABEL};
use iggy_contract::Role;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number.into(),
        target_port: Some(IntOrString::Int(number.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// `<cluster>-replicas`: headless, publishing not-ready addresses because a member must be
/// reachable by its peers before it is ready (it catches up over this address).
pub fn headless(cluster: &ValidatedCluster) -> Service {
    Service {
        metadata: child_meta(cluster, &cluster.names.headless_service(), "replication"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster.names.selector_labels()),
            ports: Some(vec![
                port("replication", REPLICATION_PORT),
                port("tcp", CLIENT_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<cluster>`: what clients connect to; any ready member serves (backups forward).
pub fn client(cluster: &ValidatedCluster) -> Service {
    Service {
        metadata: child_meta(cluster, &cluster.names.client_service(), "client"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(cluster.names.selector_labels()),
            ports: Some(vec![port("tcp", CLIENT_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<cluster>-primary`: selects the pod the sidecar labels `iggy.rs/role=primary`.
pub fn primary(cluster: &ValidatedCluster) -> Service {
    let mut selector = cluster.names.selector_labels();
    selector.insert(ROLE_LABEL.into(), Role::Primary.label().into());
    Service {
        metadata: child_meta(cluster, &cluster.names.primary_service(), "primary"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![port("tcp", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn services_select_the_brokers() {
        let cluster = validated(json!({"replicas": 3}));
        let replicas = headless(&cluster);
        let spec = replicas.spec.expect("spec");
        assert_eq!(replicas.metadata.name.as_deref(), Some("events-replicas"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let primary_spec = primary(&cluster).spec.expect("spec");
        assert_eq!(
            primary_spec.selector.expect("selector")["iggy.rs/role"],
            "primary"
        );
        let client_ports: Vec<i32> = client(&cluster)
            .spec
            .expect("spec")
            .ports
            .expect("ports")
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(client_ports, [8090, 3000]);
    }
}
