//! The broker configuration file and the ring membership file.

use super::super::validate::ValidatedCluster;
use super::child_meta;
use iggy_contract::labels::{BROKER_CONFIG_KEY, RING_CONFIGMAP_KEY};
use k8s_openapi::api::core::v1::ConfigMap;
use std::collections::BTreeMap;

pub fn broker_config(cluster: &ValidatedCluster) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(cluster, &cluster.names.config_map(), "config"),
        data: Some(BTreeMap::from([(
            BROKER_CONFIG_KEY.into(),
            cluster.broker_toml.clone(),
        )])),
        ..ConfigMap::default()
    }
}

/// `ring.json`: mounted into each broker, which reads it at start, and read by the sidecar,
/// which will hand later epochs to its running broker. Its content is not part of the pod
/// template hash, so a membership change never restarts pods by itself.
pub fn ring(cluster: &ValidatedCluster) -> ConfigMap {
    let json = serde_json::to_string_pretty(&cluster.ring).expect("ring serializes");
    ConfigMap {
        metadata: child_meta(cluster, &cluster.names.ring_config_map(), "ring"),
        data: Some(BTreeMap::from([(RING_CONFIGMAP_KEY.into(), json)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn broker_config_carries_overrides_and_ring_carries_members() {
        let cluster = validated(json!({"replicas": 3, "config": {"storage.fsync": "always"}}));
        let config = broker_config(&cluster);
        let toml = &config.data.as_ref().expect("data")["broker.toml"];
        assert!(toml.contains("fsync = \"always\""), "{toml}");
        assert!(!toml.contains("password"));
        let ring_map = ring(&cluster);
        let parsed: iggy_contract::Ring =
            serde_json::from_str(&ring_map.data.expect("data")["ring.json"]).expect("ring.json");
        assert_eq!(parsed.epoch, 1);
        assert_eq!(parsed.members.len(), 3);
        assert_eq!(parsed.cluster_id, "u-1");
    }
}
