//! Secrets the operator generates once and never rewrites; values come from the kernel's
//! CSPRNG, are written to the API and never logged or put in status.
//!
//! - `<cluster>-root` (keys `username`, `password`): root credentials a user can find, when
//!   `spec.auth` is not set; the brokers are pointed at it by reference, as at a user's Secret.
//!   It is never rewritten because the brokers' data already holds the root user, so a changed
//!   password would lock everyone out. It has no owner, for the same reason it outlives the
//!   cluster with the retained volumes: a cluster recreated on those volumes must find the
//!   password its root user was created with.
//! - `<cluster>-replication` (key `secret`): what the brokers prove to each other before they
//!   replicate (the broker's `replication.secret`). No data depends on it, so it is owned by the
//!   cluster and goes with it. It is not rewritten either: pods started before and after a
//!   change would not admit each other. A user rotates it by deleting it (a new one is
//!   generated) and restarting every pod.

use super::build::child_meta;
use super::validate::ValidatedCluster;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::io::Read;

/// The root user's name in a generated Secret: Iggy's default root user.
pub const GENERATED_USERNAME: &str = "iggy";
const PASSWORD_LENGTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum GeneratedSecretError {
    #[error("reading Secret {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("creating Secret {name}: {source}")]
    Create { name: String, source: kube::Error },
    #[error("generating a secret: reading /dev/urandom: {0}")]
    Entropy(std::io::Error),
}

/// A password of letters and digits (no quoting trouble in shells and URLs), from the
/// kernel's CSPRNG; rejection sampling keeps every character equally likely.
pub fn generate_password() -> Result<String, std::io::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut password = String::with_capacity(PASSWORD_LENGTH);
    let mut buffer = [0u8; 64];
    while password.len() < PASSWORD_LENGTH {
        urandom.read_exact(&mut buffer)?;
        for byte in buffer {
            // 248 = 4 × 62: bytes above it would favour the first characters.
            if byte < 248 && password.len() < PASSWORD_LENGTH {
                password.push(ALPHABET[usize::from(byte) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(password)
}

/// The key of the replication Secret that holds the secret.
pub const REPLICATION_SECRET_KEY: &str = "secret";

/// Creates `<cluster>-root` when the cluster uses generated credentials and it is missing;
/// returns whether it created it.
pub async fn ensure_root(
    client: &Client,
    cluster: &ValidatedCluster,
) -> Result<bool, GeneratedSecretError> {
    if !cluster.generated_root_secret {
        return Ok(false);
    }
    let password = generate_password().map_err(GeneratedSecretError::Entropy)?;
    let meta = ObjectMeta {
        name: Some(cluster.auth.root_secret.clone()),
        namespace: Some(cluster.names.namespace.clone()),
        labels: Some(cluster.names.labels("credentials")),
        ..ObjectMeta::default()
    };
    create_once(
        client,
        meta,
        BTreeMap::from([
            (
                cluster.auth.username_key.clone(),
                GENERATED_USERNAME.to_string(),
            ),
            (cluster.auth.password_key.clone(), password),
        ]),
    )
    .await
}

/// Creates `<cluster>-replication` when it is missing; returns whether it created it.
pub async fn ensure_replication(
    client: &Client,
    cluster: &ValidatedCluster,
) -> Result<bool, GeneratedSecretError> {
    let secret = generate_password().map_err(GeneratedSecretError::Entropy)?;
    let meta = child_meta(
        cluster,
        &cluster.names.replication_secret(),
        "replication-secret",
    );
    create_once(
        client,
        meta,
        BTreeMap::from([(REPLICATION_SECRET_KEY.to_string(), secret)]),
    )
    .await
}

/// Creates the Secret `meta` names with `data` unless it exists; returns whether it created it.
async fn create_once(
    client: &Client,
    meta: ObjectMeta,
    data: BTreeMap<String, String>,
) -> Result<bool, GeneratedSecretError> {
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let existing =
        secrets
            .get_metadata_opt(&name)
            .await
            .map_err(|source| GeneratedSecretError::Read {
                name: name.clone(),
                source,
            })?;
    if existing.is_some() {
        return Ok(false);
    }
    let secret = Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another reconcile (or a user) made it meanwhile: theirs stands.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(source) => Err(GeneratedSecretError::Create { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let a = generate_password().expect("entropy");
        let b = generate_password().expect("entropy");
        assert_eq!(a.len(), PASSWORD_LENGTH);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
