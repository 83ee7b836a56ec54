//! Local NVMe volumes: a no-provisioner StorageClass that binds on first consumer (so the
//! scheduler places each broker where its disk is) and one node-affine PV per listed disk,
//! pre-bound (`claimRef`) to the claim of the member at its position: entry `i` of
//! `localVolumes` is member `i`'s disk and no other claim may take it, so a member's identity,
//! pod and data stay together across restarts and rescheduling. (Without the pre-binding the
//! first claim to be scheduled takes any free PV of the class, and which disk holds which
//! member's log is left to scheduling order.)
//!
//! A PV already bound to another claim — made by an operator before pre-binding, whose claims
//! took disks in scheduling order — keeps its binding: rewriting `claimRef` would hand a
//! member's log to another member. The operator then leaves `claimRef` out of what it applies.

use super::super::validate::ValidatedCluster;
use super::cluster_scoped_meta;
use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

pub fn storage_class(cluster: &ValidatedCluster) -> Option<StorageClass> {
    if cluster.local_volumes.is_empty() {
        return None;
    }
    Some(StorageClass {
        metadata: cluster_scoped_meta(cluster, &cluster.names.storage_class(), "storage"),
        provisioner: "kubernetes.io/no-provisioner".into(),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        // A local disk holds a member's log: never let Kubernetes recycle it.
        reclaim_policy: Some("Retain".into()),
        ..StorageClass::default()
    })
}

pub fn local_volumes(cluster: &ValidatedCluster) -> Vec<PersistentVolume> {
    cluster
        .local_volumes
        .iter()
        .enumerate()
        .map(|(index, volume)| {
            let name = cluster.names.local_volume(index);
            let claim = cluster.names.claim(index as iggy_contract::Position);
            let bound_elsewhere = cluster
                .volume_claims
                .get(&name)
                .is_some_and(|bound| *bound != claim);
            let claim_ref = (!bound_elsewhere).then(|| ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(cluster.names.namespace.clone()),
                name: Some(claim),
                ..ObjectReference::default()
            });
            PersistentVolume {
                metadata: cluster_scoped_meta(cluster, &name, "storage"),
                spec: Some(PersistentVolumeSpec {
                    claim_ref,
                    capacity: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity(cluster.storage_size.clone()),
                    )])),
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    persistent_volume_reclaim_policy: Some("Retain".into()),
                    storage_class_name: cluster.storage_class.clone(),
                    volume_mode: Some("Filesystem".into()),
                    local: Some(LocalVolumeSource {
                        path: volume.path.clone(),
                        ..LocalVolumeSource::default()
                    }),
                    node_affinity: Some(VolumeNodeAffinity {
                        required: Some(NodeSelector {
                            node_selector_terms: vec![NodeSelectorTerm {
                                match_expressions: Some(vec![NodeSelectorRequirement {
                                    key: "kubernetes.io/hostname".into(),
                                    operator: "In".into(),
                                    values: Some(vec![volume.node.clone()]),
                                }]),
                                ..NodeSelectorTerm::default()
                            }],
                        }),
                    }),
                    ..PersistentVolumeSpec::default()
                }),
                ..PersistentVolume::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn one_node_affine_volume_per_disk() {
        let cluster = validated(
            json!({"replicas": 1, "storage": {"size": "500Gi", "localVolumes": [{"node": "n1", "path": "/mnt/nvme0"}]}}),
        );
        let class = storage_class(&cluster).expect("local class");
        assert_eq!(class.provisioner, "kubernetes.io/no-provisioner");
        assert_eq!(
            class.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        let volumes = local_volumes(&cluster);
        assert_eq!(volumes.len(), 1);
        let value = serde_json::to_value(&volumes[0]).expect("serializes");
        assert_eq!(value["spec"]["local"]["path"], "/mnt/nvme0");
        assert_eq!(
            value["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
                [0]["values"],
            json!(["n1"])
        );
        assert_eq!(value["spec"]["capacity"]["storage"], "500Gi");
        assert_eq!(value["spec"]["storageClassName"], "iggy-local-prod-events");
        assert!(storage_class(&validated(json!({"replicas": 1}))).is_none());
    }

    #[test]
    fn each_volume_is_pre_bound_to_its_positions_claim_unless_bound_elsewhere() {
        let spec = json!({"replicas": 2, "storage": {"localVolumes": [
            {"node": "n1", "path": "/mnt/nvme0"}, {"node": "n2", "path": "/mnt/nvme0"}]}});
        let mut cluster = validated(spec);
        let claims: Vec<serde_json::Value> = local_volumes(&cluster)
            .iter()
            .map(|pv| serde_json::to_value(pv).expect("serializes")["spec"]["claimRef"].clone())
            .collect();
        assert_eq!(
            claims[1],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "prod", "name": "data-events-1"})
        );
        // An older operator's PV bound in scheduling order keeps its claim.
        cluster
            .volume_claims
            .insert("iggy-prod-events-0".into(), "data-events-1".into());
        cluster
            .volume_claims
            .insert("iggy-prod-events-1".into(), "data-events-1".into());
        let volumes = local_volumes(&cluster);
        assert!(volumes[0].spec.as_ref().expect("spec").claim_ref.is_none());
        assert!(volumes[1].spec.as_ref().expect("spec").claim_ref.is_some());
    }
}
