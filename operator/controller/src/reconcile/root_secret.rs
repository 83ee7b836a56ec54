//! Root credentials a user can find. Without `spec.auth` the operator generates them once into
//! the Secret `<cluster>-root` (keys `username`, `password`) and points the brokers at it by
//! reference, as with a user's Secret. The Secret is created and never rewritten: the brokers'
//! data already holds the root user, so a changed password would lock everyone out. It has no
//! owner, for the same reason it outlives the cluster with the retained volumes: a cluster
//! recreated on those volumes must find the password its root user was created with.
//! The value is generated here, written to the API, and never logged or put in status.

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
pub enum RootSecretError {
    #[error("reading Secret {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("creating Secret {name}: {source}")]
    Create { name: String, source: kube::Error },
    #[error("generating a root password: reading /dev/urandom: {0}")]
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

/// Creates `<cluster>-root` when the cluster uses generated credentials and it is missing;
/// returns whether it created it.
pub async fn ensure(client: &Client, cluster: &ValidatedCluster) -> Result<bool, RootSecretError> {
    if !cluster.generated_root_secret {
        return Ok(false);
    }
    let name = cluster.auth.root_secret.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cluster.names.namespace);
    let existing =
        secrets
            .get_metadata_opt(&name)
            .await
            .map_err(|source| RootSecretError::Read {
                name: name.clone(),
                source,
            })?;
    if existing.is_some() {
        return Ok(false);
    }
    let password = generate_password().map_err(RootSecretError::Entropy)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(cluster.names.namespace.clone()),
            labels: Some(cluster.names.labels("credentials")),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (
                cluster.auth.username_key.clone(),
                GENERATED_USERNAME.to_string(),
            ),
            (cluster.auth.password_key.clone(), password),
        ])),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another reconcile (or a user) made it meanwhile: theirs stands.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(source) => Err(RootSecretError::Create { name, source }),
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
