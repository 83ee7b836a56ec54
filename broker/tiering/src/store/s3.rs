//! The S3 store, through the official SDK: path-style addressing for S3-compatible servers,
//! multipart upload for large segments (one part in memory at a time), ranged GETs, and every
//! failure classified (`StoreError`). The SDK retries transient failures itself (standard mode,
//! three attempts with backoff); the broker's uploader retries whole segments on top.

use super::{join_key, read_file_part, S3Settings, MULTIPART_THRESHOLD, PART_SIZE};
use crate::StoreError;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Store {
    pub fn new(settings: S3Settings, prefix: &str) -> Self {
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(settings.region.clone()))
            .force_path_style(settings.force_path_style)
            .timeout_config(timeouts)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(3));
        if !settings.access_key_id.is_empty() {
            config = config.credentials_provider(Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.clone(),
                None,
                None,
                "iggy-broker",
            ));
        }
        if !settings.endpoint.is_empty() {
            config = config.endpoint_url(settings.endpoint.clone());
        }
        Self {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket,
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: if settings.endpoint.is_empty() {
                format!("s3.{}.amazonaws.com", settings.region)
            } else {
                settings.endpoint
            },
        }
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    fn key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn classify<E>(
        &self,
        key: &str,
        error: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let store = self.describe();
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.code().map(str::to_owned);
        let detail = aws_smithy_types::error::display::DisplayErrorContext(&error).to_string();
        match (&error, status, code.as_deref()) {
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) => {
                StoreError::Unreachable { store, detail }
            }
            (_, _, Some("NoSuchBucket")) => StoreError::NoBucket { store },
            (_, _, Some("NoSuchKey")) | (_, Some(404), None) => StoreError::NotFound {
                store,
                key: key.to_owned(),
            },
            (_, Some(401 | 403), _) => StoreError::Denied { store, detail },
            (_, Some(404), _) => StoreError::NotFound {
                store,
                key: key.to_owned(),
            },
            (_, status, _) => StoreError::Failed {
                store,
                key: key.to_owned(),
                status: status.unwrap_or(0),
                detail,
            },
        }
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .body(ByteStream::from(body))
            // See `upload_parts`: the CRC32 the SDK sends guards the bytes; SHA-256 is not
            // hashed over the body.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        Ok(())
    }

    pub async fn put_file(&self, key: &str, path: &Path, len: u64) -> Result<u64, StoreError> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        if len <= MULTIPART_THRESHOLD {
            let bytes = read_file_part(path, 0, len).await?;
            hasher.update(&bytes);
            self.put(key, Bytes::from(bytes)).await?;
            return Ok(hasher.digest());
        }
        let full_key = self.key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StoreError::Failed {
                store: self.describe(),
                key: key.to_owned(),
                status: 200,
                detail: "CreateMultipartUpload answered without an upload id".into(),
            });
        };
        match self
            .upload_parts(key, &full_key, &upload_id, path, len, &mut hasher)
            .await
        {
            Ok(()) => Ok(hasher.digest()),
            Err(error) => {
                // Parts of an abandoned upload cost storage until aborted.
                let aborted = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full_key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(e) = aborted {
                    tracing::warn!(key, error = %self.classify(key, e), "could not abort a failed multipart upload");
                }
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        full_key: &str,
        upload_id: &str,
        path: &Path,
        len: u64,
        hasher: &mut xxhash_rust::xxh3::Xxh3,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let mut at = 0u64;
        let mut number = 1i32;
        while at < len {
            let size = PART_SIZE.min(len - at);
            let bytes = read_file_part(path, at, size).await?;
            hasher.update(&bytes);
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(bytes))
                // SigV4 would hash every uploaded byte with SHA-256 to sign it (~2 s of CPU
                // per GB here, beside the producers); the request still carries the CRC32 the
                // SDK computes, which S3 checks before it stores the part, so the bytes stay
                // guarded while the headers stay signed.
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.classify(key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            at += size;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await;
        match answer {
            Ok(output) => Ok(Some(self.collect(key, output.body).await?)),
            Err(e) => match self.classify(key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        self.collect(key, output.body).await
    }

    /// The body of a GET. The SDK validates the checksum S3 stored with the object while it
    /// streams the body, so a damaged object fails here — as damage, not as an outage.
    async fn collect(&self, key: &str, body: ByteStream) -> Result<Bytes, StoreError> {
        body.collect()
            .await
            .map(|data| data.into_bytes())
            .map_err(|e| {
                let detail = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
                if detail.to_ascii_lowercase().contains("checksum mismatch") {
                    StoreError::Corrupt {
                        store: self.describe(),
                        key: key.to_owned(),
                        reason: detail,
                    }
                } else {
                    StoreError::Unreachable {
                        store: self.describe(),
                        detail: format!("reading {key}: {detail}"),
                    }
                }
            })
    }

    pub async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        // DeleteObjects takes at most 1,000 keys.
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .filter_map(|key| ObjectIdentifier::builder().key(self.key(key)).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Failed {
                    store: self.describe(),
                    key: batch[0].clone(),
                    status: 0,
                    detail: e.to_string(),
                })?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.classify(&batch[0], e))?;
            if let Some(failed) = answer.errors().first() {
                return Err(StoreError::Failed {
                    store: self.describe(),
                    key: failed.key().unwrap_or_default().to_owned(),
                    status: 0,
                    detail: failed.message().unwrap_or("delete refused").to_owned(),
                });
            }
        }
        Ok(())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.classify(prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key())
                    .filter_map(|key| key.get(strip..).map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }
}
