//! Local NVMe volumes: a no-provisioner StorageClass that binds on first consumer (so the
//! scheduler places each broker where its disk is) and one node-affine PV per listed disk.

use super::super::validate::ValidatedCluster;
use super::cluster_scoped_meta;
use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeSpec, VolumeNodeAffinity,
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
        .map(|(index, volume)| PersistentVolume {
            metadata: cluster_scoped_meta(cluster, &cluster.names.local_volume(index), "storage"),
            spec: Some(PersistentVolumeSpec {
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
}
