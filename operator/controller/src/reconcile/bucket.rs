//! The tiered-storage bucket: check or create it on every reconcile (reporting `BucketReady`),
//! keep the data-removal finalizer exactly when `deletionPolicy: Delete`, and on deletion
//! remove the cluster's prefix (and the bucket, if the operator created it) before letting go.

use super::validate::Tiering;
use crate::crd::{BucketStatus, Condition, DeletionPolicy, IggyCluster, IggyClusterStatus};
use crate::s3::{self, BucketProblem, BucketReady};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Present only on clusters whose S3 data is to be deleted with them.
pub const FINALIZER: &str = "iggy.rs/s3-data";
/// Names the bucket the operator created for the cluster.
pub const CREATED_ANNOTATION: &str = "iggy.rs/bucket-created";

#[tracing::instrument(name = "bucket", skip_all, fields(bucket = %tiering.s3.bucket))]
pub async fn ensure(tiering: &Tiering) -> Result<BucketReady, BucketProblem> {
    s3::ensure_bucket(&tiering.s3, &tiering.credentials).await
}

pub fn wants_finalizer(tiering: Option<&Tiering>) -> bool {
    tiering.is_some_and(|t| t.s3.deletion_policy == DeletionPolicy::Delete)
}

/// Adds or removes our finalizer; the resourceVersion makes the write a compare-and-swap, so
/// a concurrent edit of the finalizer list is retried rather than lost.
/// Returns the cluster's new resourceVersion when it wrote.
pub async fn set_finalizer(
    client: &Client,
    cluster: &IggyCluster,
    present: bool,
) -> Result<Option<String>, kube::Error> {
    let mut finalizers = cluster.finalizers().to_vec();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(None);
    }
    if present {
        finalizers.push(FINALIZER.to_string());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": cluster.resource_version()}});
    patch_metadata(client, cluster, patch).await
}

/// Merge-patches the cluster's metadata; returns its new resourceVersion.
async fn patch_metadata(
    client: &Client,
    cluster: &IggyCluster,
    patch: serde_json::Value,
) -> Result<Option<String>, kube::Error> {
    let api: Api<IggyCluster> =
        Api::namespaced(client.clone(), &cluster.namespace().unwrap_or_default());
    let updated = api
        .patch(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(updated.resource_version())
}

/// Records on the cluster itself, in an annotation, that the operator created `bucket`.
/// Status is rebuilt on every reconcile and a write computed from a stale copy can be dropped;
/// the fact that decides whether deletion may remove a bucket must not be lost that way. An
/// annotation merge touches no other key, so it needs no resourceVersion and cannot lose a
/// concurrent edit. Returns the cluster's new resourceVersion.
pub async fn mark_created(
    client: &Client,
    cluster: &IggyCluster,
    bucket: &str,
) -> Result<Option<String>, kube::Error> {
    let patch = json!({"metadata": {"annotations": {CREATED_ANNOTATION: bucket}}});
    patch_metadata(client, cluster, patch).await
}

/// The bucket the operator created for this cluster, if any.
pub fn created_bucket(cluster: &IggyCluster) -> Option<&str> {
    cluster
        .annotations()
        .get(CREATED_ANNOTATION)
        .map(String::as_str)
}

/// Removes the cluster's objects, and the bucket when the operator created it.
pub async fn delete_data(
    tiering: &Tiering,
    created_by_operator: bool,
) -> Result<s3::Deleted, BucketProblem> {
    s3::delete_data(
        &tiering.s3,
        &tiering.credentials,
        &tiering.cluster_prefix,
        created_by_operator,
    )
    .await
}

/// Adds `BucketReady` and `status.bucket` for a cluster with tiered storage.
/// `created_before` is whether the cluster's annotation says the operator created this bucket.
pub fn record(
    status: &mut IggyClusterStatus,
    previous: Option<&IggyClusterStatus>,
    tiering: &Tiering,
    outcome: &Result<BucketReady, BucketProblem>,
    created_before: bool,
    now: &str,
    generation: Option<i64>,
) {
    let (ok, reason, message) = match outcome {
        Ok(ready) if ready.created => (
            true,
            "BucketCreated",
            format!("created bucket {}", tiering.s3.bucket),
        ),
        Ok(_) => (
            true,
            "BucketExists",
            format!("bucket {} is reachable", tiering.s3.bucket),
        ),
        Err(problem) => (false, problem.reason(), problem.to_string()),
    };
    let status_text = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|p| {
            p.conditions
                .iter()
                .find(|c| c.type_ == "BucketReady" && c.status == status_text)
        })
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    // A bucket created on an earlier reconcile reads as "exists" now; keep saying created.
    let reason = if ok && created_before {
        "BucketCreated"
    } else {
        reason
    };
    status.conditions.push(Condition {
        type_: "BucketReady".into(),
        status: status_text,
        reason: reason.into(),
        message: if ok && created_before {
            format!("created bucket {}", tiering.s3.bucket)
        } else {
            message
        },
        last_transition_time,
        observed_generation: generation,
    });
    status.bucket = Some(BucketStatus {
        name: tiering.s3.bucket.clone(),
        created_by_operator: created_before || matches!(outcome, Ok(ready) if ready.created),
    });
}
