//! Talking to S3 for tiered storage: check the bucket, create it when asked, and remove a
//! cluster's data on `deletionPolicy: Delete`. Every failure is classified into a reason a
//! user can act on (credentials, access, reachability, region), which becomes the
//! `BucketReady` condition.

use crate::crd::S3Spec;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Delete, ObjectIdentifier,
};
use aws_sdk_s3::Client;
use std::fmt;
use std::time::Duration;

/// Keys of the credentials Secret.
pub const ACCESS_KEY_ID: &str = "accessKeyId";
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";

/// Credentials read from the referenced Secret. Debug output never shows them.
#[derive(Clone, PartialEq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials { .. }")
    }
}

/// Why the bucket is not usable, as a condition reason and a message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BucketProblem {
    #[error("credentials Secret {0:?} does not exist")]
    SecretMissing(String),
    #[error("credentials Secret {secret:?} has no key {key:?}")]
    SecretKeyMissing { secret: String, key: String },
    #[error("access to bucket {bucket:?} denied: {detail}")]
    AccessDenied { bucket: String, detail: String },
    #[error("S3 endpoint {endpoint} unreachable: {detail}")]
    EndpointUnreachable { endpoint: String, detail: String },
    #[error("bucket {0:?} does not exist and spec.tieredStorage.s3.createBucket is false")]
    BucketMissing(String),
    #[error("bucket {bucket:?} is in another region than {region:?}")]
    WrongRegion { bucket: String, region: String },
    #[error("S3 request for bucket {bucket:?} failed: {detail}")]
    Failed { bucket: String, detail: String },
}

impl BucketProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            BucketProblem::SecretMissing(_) | BucketProblem::SecretKeyMissing { .. } => {
                "SecretMissing"
            }
            BucketProblem::AccessDenied { .. } => "AccessDenied",
            BucketProblem::EndpointUnreachable { .. } => "EndpointUnreachable",
            BucketProblem::BucketMissing(_) => "BucketMissing",
            BucketProblem::WrongRegion { .. } => "WrongRegion",
            BucketProblem::Failed { .. } => "S3Error",
        }
    }
}

/// The bucket is usable; `created` when this call created it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketReady {
    pub created: bool,
}

fn endpoint_name(spec: &S3Spec) -> String {
    spec.endpoint
        .clone()
        .unwrap_or_else(|| format!("s3.{}.amazonaws.com", spec.region))
}

pub fn client(spec: &S3Spec, credentials: &S3Credentials) -> Client {
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(20))
        .build();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(spec.region.clone()))
        .credentials_provider(Credentials::new(
            credentials.access_key_id.clone(),
            credentials.secret_access_key.clone(),
            None,
            None,
            "iggy-operator",
        ))
        .force_path_style(spec.force_path_style)
        .timeout_config(timeouts)
        // One retry: the reconcile loop retries with backoff anyway, and an unreachable
        // endpoint should turn into a condition quickly.
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &spec.endpoint {
        config = config.endpoint_url(endpoint.clone());
    }
    Client::from_conf(config.build())
}

/// Maps an SDK failure to what the user should fix.
fn classify<E, R>(spec: &S3Spec, error: &SdkError<E, R>, status: Option<u16>) -> BucketProblem
where
    E: std::error::Error + 'static,
    R: fmt::Debug,
{
    let detail = aws_smithy_types::error::display::DisplayErrorContext(error).to_string();
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            BucketProblem::EndpointUnreachable {
                endpoint: endpoint_name(spec),
                detail,
            }
        }
        _ => match status {
            Some(401 | 403) => BucketProblem::AccessDenied {
                bucket: spec.bucket.clone(),
                detail,
            },
            Some(301) => BucketProblem::WrongRegion {
                bucket: spec.bucket.clone(),
                region: spec.region.clone(),
            },
            _ => BucketProblem::Failed {
                bucket: spec.bucket.clone(),
                detail,
            },
        },
    }
}

fn status_of<E>(error: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    error
        .raw_response()
        .map(|response| response.status().as_u16())
}

/// Checks the bucket and creates it when it is missing and `createBucket` is set.
pub async fn ensure_bucket(
    spec: &S3Spec,
    credentials: &S3Credentials,
) -> Result<BucketReady, BucketProblem> {
    let client = client(spec, credentials);
    let head = client.head_bucket().bucket(&spec.bucket).send().await;
    let error = match head {
        Ok(_) => return Ok(BucketReady { created: false }),
        Err(error) => error,
    };
    let status = status_of(&error);
    if status != Some(404) {
        return Err(classify(spec, &error, status));
    }
    if !spec.create_bucket {
        return Err(BucketProblem::BucketMissing(spec.bucket.clone()));
    }
    let mut create = client.create_bucket().bucket(&spec.bucket);
    // us-east-1 is the one region that must not be named as a location constraint.
    if spec.region != "us-east-1" {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(spec.region.as_str()))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => Ok(BucketReady { created: true }),
        Err(error) => {
            let status = status_of(&error);
            // Someone else created it between our check and our create: it exists.
            if status == Some(409) {
                return Ok(BucketReady { created: false });
            }
            Err(classify(spec, &error, status))
        }
    }
}

/// What `delete_data` removed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deleted {
    pub objects: usize,
    /// False when the bucket was not ours to delete, or still held data outside the prefix.
    pub bucket: bool,
}

/// Deletes every object under `prefix` and, if `delete_bucket`, the bucket itself — unless it
/// still holds other data, which is never ours to remove.
pub async fn delete_data(
    spec: &S3Spec,
    credentials: &S3Credentials,
    prefix: &str,
    delete_bucket: bool,
) -> Result<Deleted, BucketProblem> {
    let client = client(spec, credentials);
    let mut deleted = 0;
    loop {
        let listed = client
            .list_objects_v2()
            .bucket(&spec.bucket)
            .prefix(prefix)
            .send()
            .await;
        let listed = match listed {
            Ok(listed) => listed,
            Err(error) => {
                let status = status_of(&error);
                if status == Some(404) {
                    return Ok(Deleted {
                        objects: deleted,
                        bucket: false,
                    });
                }
                return Err(classify(spec, &error, status));
            }
        };
        let keys: Vec<ObjectIdentifier> = listed
            .contents()
            .iter()
            .filter_map(|object| ObjectIdentifier::builder().key(object.key()?).build().ok())
            .collect();
        if keys.is_empty() {
            break;
        }
        let count = keys.len();
        let batch = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|error| BucketProblem::Failed {
                bucket: spec.bucket.clone(),
                detail: error.to_string(),
            })?;
        client
            .delete_objects()
            .bucket(&spec.bucket)
            .delete(batch)
            .send()
            .await
            .map_err(|error| {
                let status = status_of(&error);
                classify(spec, &error, status)
            })?;
        deleted += count;
    }
    if !delete_bucket {
        return Ok(Deleted {
            objects: deleted,
            bucket: false,
        });
    }
    match client.delete_bucket().bucket(&spec.bucket).send().await {
        Ok(_) => Ok(Deleted {
            objects: deleted,
            bucket: true,
        }),
        Err(error) => match status_of(&error) {
            Some(404) => Ok(Deleted {
                objects: deleted,
                bucket: true,
            }),
            // BucketNotEmpty: someone else keeps data there; leave the bucket.
            Some(409) => Ok(Deleted {
                objects: deleted,
                bucket: false,
            }),
            status => Err(classify(spec, &error, status)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug_output() {
        let credentials = S3Credentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("AKIA") && !shown.contains("very-secret"),
            "{shown}"
        );
    }

    #[test]
    fn problems_have_actionable_reasons() {
        assert_eq!(
            BucketProblem::SecretMissing("s".into()).reason(),
            "SecretMissing"
        );
        assert_eq!(
            BucketProblem::EndpointUnreachable {
                endpoint: "e".into(),
                detail: "d".into()
            }
            .reason(),
            "EndpointUnreachable"
        );
        assert_eq!(
            BucketProblem::BucketMissing("b".into()).reason(),
            "BucketMissing"
        );
    }
}
