//! Dereference: the only step before apply that reads the API. It fetches what the spec
//! points at (the root Secret's key names — never its values; the TLS Secret's key names and
//! its certificate, never its private key) and the ring last published, and hands them to the
//! pure validate step.

use crate::certificate::{CertificateProblem, ServedCertificate};
use crate::crd::IggyCluster;
use crate::names::ClusterNames;
use crate::s3::{BucketProblem, S3Credentials, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use iggy_contract::Ring;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dereferenced {
    /// Key names of the root credentials Secret; None when it does not exist.
    pub root_secret_keys: Option<BTreeSet<String>>,
    /// Key names of the client port's TLS Secret; None when it does not exist.
    pub tls_secret_keys: Option<BTreeSet<String>>,
    /// The certificate in that Secret's `tls.crt`, or why it holds none; None when the Secret
    /// or the key does not exist.
    pub tls_certificate: Option<Result<ServedCertificate, CertificateProblem>>,
    /// The ring in the ring ConfigMap, if one was published.
    pub current_ring: Option<Ring>,
    /// Tiered-storage credentials from their Secret, or why they could not be read; None when
    /// tiering is not configured.
    pub s3_credentials: Option<Result<S3Credentials, BucketProblem>>,
    /// The claim each of the cluster's local PVs is bound or pre-bound to (`spec.claimRef`),
    /// by PV name; only with local volumes.
    pub volume_claims: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    #[error("reading Secret {name}: {source}")]
    Secret { name: String, source: kube::Error },
    #[error("reading ring ConfigMap {name}: {source}")]
    Ring { name: String, source: kube::Error },
    #[error("listing the cluster's local PersistentVolumes: {0}")]
    Volumes(kube::Error),
    #[error("ring ConfigMap {name} holds no valid ring.json: {source}")]
    RingCorrupt {
        name: String,
        source: serde_json::Error,
    },
}

#[tracing::instrument(name = "dereference", skip_all)]
pub async fn dereference(
    client: &Client,
    cluster: &IggyCluster,
) -> Result<Dereferenced, DereferenceError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let names = ClusterNames::new(&cluster.name_any(), &namespace);
    let root_secret_keys = match &cluster.spec.auth {
        None => None,
        Some(auth) => secret_keys(client, &namespace, &auth.root_secret).await?,
    };
    let (tls_secret_keys, tls_certificate) = match &cluster.spec.tls {
        None => (None, None),
        Some(tls) => match get_secret(client, &namespace, &tls.secret_name).await? {
            None => (None, None),
            Some(secret) => (
                Some(key_names(&secret)),
                value(&secret, crate::reconcile::validate::TLS_CERT_KEY)
                    .map(|pem| crate::certificate::read(&pem)),
            ),
        },
    };
    let s3_credentials = match &cluster.spec.tiered_storage {
        None => None,
        Some(tiering) => {
            let name = &tiering.s3.credentials_secret;
            Some(match get_secret(client, &namespace, name).await? {
                None => Err(BucketProblem::SecretMissing(name.clone())),
                Some(secret) => credentials_from(name, &secret),
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
        match ring_map.and_then(|map| {
            map.data?
                .get(iggy_contract::labels::RING_CONFIGMAP_KEY)
                .cloned()
        }) {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|source| {
                DereferenceError::RingCorrupt {
                    name: ring_name.clone(),
                    source,
                }
            })?),
        };
    let volume_claims = if cluster.spec.storage.local_volumes.is_empty() {
        BTreeMap::new()
    } else {
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        let selector = format!(
            "{},iggy.rs/namespace={namespace}",
            names.children_selector()
        );
        volumes
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(DereferenceError::Volumes)?
            .items
            .into_iter()
            .filter_map(|pv| {
                let claim = pv.spec.as_ref()?.claim_ref.as_ref()?.name.clone()?;
                Some((pv.name_any(), claim))
            })
            .collect()
    };
    Ok(Dereferenced {
        root_secret_keys,
        tls_secret_keys,
        tls_certificate,
        current_ring,
        s3_credentials,
        volume_claims,
    })
}

/// Secret `name`, or None when it does not exist.
async fn get_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, DereferenceError> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| DereferenceError::Secret {
            name: name.to_string(),
            source,
        })
}

/// The key names of Secret `name` (never its values); None when it does not exist.
async fn secret_keys(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeSet<String>>, DereferenceError> {
    let secret = get_secret(client, namespace, name).await?;
    Ok(secret.as_ref().map(key_names))
}

fn key_names(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|data| data.keys());
    let plain = secret.string_data.iter().flat_map(|data| data.keys());
    data.chain(plain).cloned().collect()
}

/// The value of `key` in a Secret (from `data`, or `stringData` as written before the API
/// server folds it in); None without it.
fn value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| bytes.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()?
                .get(key)
                .map(|text| text.clone().into_bytes())
        })
}

/// The access key pair in a Secret; values stay in memory and are never logged.
fn credentials_from(name: &str, secret: &Secret) -> Result<S3Credentials, BucketProblem> {
    let value = |key: &str| -> Result<String, BucketProblem> {
        let missing = || BucketProblem::SecretKeyMissing {
            secret: name.to_string(),
            key: key.to_string(),
        };
        let bytes = value(secret, key).ok_or_else(missing)?;
        String::from_utf8(bytes)
            .map(|text| text.trim().to_string())
            .map_err(|_| missing())
    };
    Ok(S3Credentials {
        access_key_id: value(ACCESS_KEY_ID)?,
        secret_access_key: value(SECRET_ACCESS_KEY)?,
    })
}
