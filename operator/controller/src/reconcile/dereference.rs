//! Dereference: the only step before apply that reads the API. It fetches what the spec
//! points at (the root Secret's key names — never its values) and the ring last published,
//! and hands them to the pure validate step.

use crate::crd::IggyCluster;
use crate::names::ClusterNames;
use crate::ring::Ring;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeSet;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dereferenced {
    /// Key names of the root credentials Secret; None when it does not exist.
    pub root_secret_keys: Option<BTreeSet<String>>,
    /// The ring in the ring ConfigMap, if one was published.
    pub current_ring: Option<Ring>,
}

#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    #[error("reading Secret {name}: {source}")]
    Secret { name: String, source: kube::Error },
    #[error("reading ring ConfigMap {name}: {source}")]
    Ring { name: String, source: kube::Error },
    #[error("ring ConfigMap {name} holds no valid ring.json: {source}")]
    RingCorrupt {
        name: String,
        source: serde_json::Error,
    },
}

pub async fn dereference(
    client: &Client,
    cluster: &IggyCluster,
) -> Result<Dereferenced, DereferenceError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let names = ClusterNames::new(&cluster.name_any(), &namespace);
    let root_secret_keys = match &cluster.spec.auth {
        None => None,
        Some(auth) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret = secrets.get_opt(&auth.root_secret).await.map_err(|source| {
                DereferenceError::Secret {
                    name: auth.root_secret.clone(),
                    source,
                }
            })?;
            secret.map(|secret| {
                let data = secret.data.unwrap_or_default().into_keys();
                let plain = secret.string_data.unwrap_or_default().into_keys();
                data.chain(plain).collect()
            })
        }
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let ring_name = names.ring_config_map();
    let ring_map =
        config_maps
            .get_opt(&ring_name)
            .await
            .map_err(|source| DereferenceError::Ring {
                name: ring_name.clone(),
                source,
            })?;
    let current_ring =
        match ring_map.and_then(|map| map.data?.get("ring.json").cloned()) {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|source| {
                DereferenceError::RingCorrupt {
                    name: ring_name.clone(),
                    source,
                }
            })?),
        };
    Ok(Dereferenced {
        root_secret_keys,
        current_ring,
    })
}
