//! The reconcile pipeline, Stackable style: dereference (reads) → validate (pure) → build
//! (pure) → apply (server-side apply, orphan cleanup) → status. Each step is its own module
//! with its own error type; this module runs them in order and turns their outcome into
//! conditions, events and metrics.

pub mod apply;
pub mod bucket;
pub mod build;
pub mod dereference;
pub mod generated_secrets;
pub mod rollout;
pub mod scaling;
pub mod status;
pub mod validate;

use crate::certificate;
use crate::crd::{IggyCluster, IggyClusterStatus};
use crate::metrics::Metrics;
use crate::names::ClusterNames;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use status::Outcome;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// One recorder for the process: it remembers recent events, so a repeat becomes a
    /// series on the existing Event instead of a new object.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dereference(#[from] dereference::DereferenceError),
    #[error("observing the brokers: {0}")]
    Observe(kube::Error),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error("writing status: {0}")]
    Status(kube::Error),
    #[error("updating the finalizer: {0}")]
    Finalizer(kube::Error),
    #[error("deleting the cluster's S3 data: {0}")]
    Cleanup(String),
    #[error(transparent)]
    GeneratedSecret(#[from] generated_secrets::GeneratedSecretError),
    #[error("rolling restart: {0}")]
    Rollout(kube::Error),
}

impl ReconcileError {
    /// The metric label and event reason for this failure.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Dereference(_) => "dereference",
            ReconcileError::Observe(_) => "observe",
            ReconcileError::Apply(_) => "apply",
            ReconcileError::Status(_) => "status",
            ReconcileError::Finalizer(_) => "finalizer",
            ReconcileError::Cleanup(_) => "cleanup",
            ReconcileError::GeneratedSecret(_) => "generated_secret",
            ReconcileError::Rollout(_) => "rollout",
        }
    }
}

/// How often a healthy cluster is looked at again even without a change (safety net).
const RESYNC: Duration = Duration::from_secs(300);
/// How often a rolling restart is looked at while it runs: pod changes trigger reconciles by
/// themselves, this covers the step-down grace period, which no pod change marks.
const ROLLOUT_RECHECK: Duration = Duration::from_secs(5);
/// How soon a cluster waiting on something outside its spec (a Secret) is looked at again.
const RECHECK: Duration = Duration::from_secs(15);

pub fn now() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::now().to_string())
}

async fn publish(
    ctx: &Context,
    cluster: &IggyCluster,
    kind: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: kind,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}

/// One pass over one cluster. Its span (and its children's: dereference, apply, bucket,
/// observe, write_status) is what the operator exports over OTLP.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        cluster = %cluster.name_any(),
        namespace = %cluster.namespace().unwrap_or_default(),
        generation = cluster.metadata.generation.unwrap_or_default(),
        outcome = tracing::field::Empty,
    )
)]
pub async fn reconcile(
    cluster: Arc<IggyCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.category(),
    };
    tracing::Span::current().record("outcome", outcome);
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::category),
    );
    result
}

async fn reconcile_inner(cluster: &IggyCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    let client = &ctx.client;
    let names = ClusterNames::new(
        &cluster.name_any(),
        &cluster.namespace().unwrap_or_default(),
    );
    if cluster.meta().deletion_timestamp.is_some() {
        // Children go by ownerReference garbage collection; PVCs and local PVs stay.
        return finalize(cluster, ctx).await;
    }
    let refs = dereference::dereference(client, cluster).await?;
    let mut validated = match validate::validate(cluster, &refs) {
        Ok(validated) => validated,
        Err(error) => {
            let observed = status::observe(client, &names)
                .await
                .map_err(ReconcileError::Observe)?;
            let new_status = status::compute(cluster, &Outcome::Invalid(&error), &observed, &now());
            let previous_message = cluster
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .map(|c| c.message.clone());
            if previous_message.as_deref() != Some(error.to_string().as_str()) {
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    error.reason(),
                    error.to_string(),
                )
                .await;
            }
            tracing::warn!(cluster = %names.cluster, namespace = %names.namespace, %error, "invalid spec; children left as they are");
            status::write(client, cluster, cluster.resource_version(), &new_status)
                .await
                .map_err(ReconcileError::Status)?;
            // A Secret is not watched (reading Secrets is all the operator may do with them),
            // so one that is missing or holds no certificate is looked at again soon.
            return Ok(Action::requeue(
                if matches!(error.reason(), "SecretMissing" | "CertificateInvalid") {
                    RECHECK
                } else {
                    RESYNC
                },
            ));
        }
    };
    // Scaling needs what the brokers report (their sidecars' annotations) before the children
    // are built: the ring to publish and the pods to run follow from it.
    let before = status::observe(client, &names)
        .await
        .map_err(ReconcileError::Observe)?;
    let running_pods = before
        .statefulset
        .as_ref()
        .and_then(|set| set.spec.as_ref()?.replicas)
        .and_then(|n| iggy_contract::Position::try_from(n).ok());
    let reports = scaling::reports(&before, &names);
    let newly_formed = !validated.ring.bootstrapped && scaling::formed(&validated.ring, &reports);
    validated.ring.bootstrapped |= newly_formed;
    let scale = scaling::plan(
        &names,
        &validated.ring,
        validated.wanted,
        &reports,
        running_pods,
    );
    validated.ring = scale.ring;
    validated.replicas = scale.pods;
    validated.scaling = scale.phase;
    if generated_secrets::ensure_root(client, &validated).await? {
        let note = format!(
            "generated root credentials in Secret {} (keys {} and {})",
            validated.auth.root_secret, validated.auth.username_key, validated.auth.password_key
        );
        publish(ctx, cluster, EventType::Normal, "RootSecretCreated", note).await;
    }
    if generated_secrets::ensure_replication(client, &validated).await? {
        let note = format!(
            "generated the replication secret in Secret {} (key {})",
            names.replication_secret(),
            generated_secrets::REPLICATION_SECRET_KEY
        );
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "ReplicationSecretCreated",
            note,
        )
        .await;
    }
    let children = build::build_all(&validated);
    let report = match apply::apply_all(client, &validated, &children).await {
        Ok(report) => report,
        Err(error) => {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "ApplyFailed",
                error.to_string(),
            )
            .await;
            if let Ok(observed) = status::observe(client, &names).await {
                let failed = status::compute(
                    cluster,
                    &Outcome::ApplyFailed(&validated, error.to_string()),
                    &observed,
                    &now(),
                );
                let version = cluster.resource_version();
                let _ = status::write(client, cluster, version, &failed).await;
            }
            return Err(error.into());
        }
    };
    if newly_formed {
        let note = format!(
            "a quorum of members runs ring epoch {}: a member that restarts on an empty disk \
             now rebuilds from its peers before it votes",
            validated.ring.epoch
        );
        publish(ctx, cluster, EventType::Normal, "ClusterFormed", note).await;
    }
    if let Some((reason, note)) = scale.event {
        publish(ctx, cluster, EventType::Normal, reason, note).await;
    }
    if let scaling::Phase::Blocked(why) = &validated.scaling {
        let already_said = cluster
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ScaleDownBlocked"))
            .is_some_and(|c| c.status == "True" && c.message == *why);
        if !already_said {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "ScaleDownBlocked",
                why.clone(),
            )
            .await;
        }
    }
    let previous_epoch = refs.current_ring.as_ref().map(|ring| ring.epoch);
    if previous_epoch != Some(validated.ring.epoch) {
        let note = format!(
            "ring epoch {} with {} member(s)",
            validated.ring.epoch,
            validated.ring.members.len()
        );
        publish(ctx, cluster, EventType::Normal, "RingChanged", note).await;
    }
    if !report.applied.is_empty() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "Applied",
            format!("applied {}", report.applied.join(", ")),
        )
        .await;
    }
    if !report.deleted.is_empty() {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "Deleted",
            format!("deleted {}", report.deleted.join(", ")),
        )
        .await;
    }
    tracing::info!(cluster = %names.cluster, namespace = %names.namespace, applied = report.applied.len(), unchanged = report.unchanged, deleted = report.deleted.len(), "reconciled");
    // Metadata writes below move the resourceVersion the status write must carry.
    let mut version = cluster.resource_version();
    let wants_finalizer = bucket::wants_finalizer(validated.tiering.as_ref());
    if let Some(newer) = bucket::set_finalizer(client, cluster, wants_finalizer)
        .await
        .map_err(ReconcileError::Finalizer)?
    {
        version = Some(newer);
    }
    let observed = status::observe(client, &names)
        .await
        .map_err(ReconcileError::Observe)?;
    let stamp = now();
    let mut new_status = status::compute(cluster, &Outcome::Applied(&validated), &observed, &stamp);
    let mut requeue = RESYNC;
    if validated.scaling != scaling::Phase::Steady {
        // Sidecar reports move a scale change on (pod annotations trigger reconciles); this
        // covers a report missed.
        requeue = ROLLOUT_RECHECK;
    } else {
        let step = rollout::plan(&observed, validated.ring.members.len(), Timestamp::now());
        if step != rollout::Step::Idle {
            requeue = ROLLOUT_RECHECK;
        }
        roll(ctx, cluster, &names, &step, &stamp).await?;
        let stale = rollout::stale_step_down_requests(&observed);
        if !stale.is_empty() {
            rollout::withdraw_step_downs(&ctx.client, &names.namespace, &stale)
                .await
                .map_err(ReconcileError::Rollout)?;
            tracing::info!(cluster = %names.cluster, pods = ?stale, "withdrew step-down requests of a superseded rollout");
        }
    }
    if let Some(served) = &validated.served_certificate {
        certificate_events(ctx, cluster, &new_status).await;
        // Renewals are seen at the next reconcile (the Secret is not watched); the verdict's
        // changes by time alone (entering the warning window, expiring) are waited for.
        let now = Timestamp::now().as_second();
        if let Some(seconds) = certificate::next_change(served, now) {
            let at = Duration::from_secs(u64::try_from(seconds).unwrap_or(0) + 1);
            requeue = requeue.min(at);
        }
    }
    match &validated.tiering {
        None => new_status.bucket = None,
        Some(tiering) => {
            let outcome = bucket::ensure(tiering).await;
            if let Err(problem) = &outcome {
                let previous = cluster
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "BucketReady"));
                if previous.map(|c| c.message.as_str()) != Some(problem.to_string().as_str()) {
                    publish(
                        ctx,
                        cluster,
                        EventType::Warning,
                        problem.reason(),
                        problem.to_string(),
                    )
                    .await;
                }
                tracing::warn!(cluster = %names.cluster, reason = problem.reason(), %problem, "bucket not ready; retrying");
                requeue = RECHECK;
            } else if matches!(outcome, Ok(ready) if ready.created) {
                if let Some(newer) = bucket::mark_created(client, cluster, &tiering.s3.bucket)
                    .await
                    .map_err(ReconcileError::Finalizer)?
                {
                    version = Some(newer);
                }
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "BucketCreated",
                    format!("created bucket {}", tiering.s3.bucket),
                )
                .await;
            }
            let created_before =
                bucket::created_bucket(cluster) == Some(tiering.s3.bucket.as_str());
            bucket::record(
                &mut new_status,
                cluster.status.as_ref(),
                tiering,
                &outcome,
                created_before,
                &stamp,
                cluster.metadata.generation,
            );
        }
    }
    status::write(client, cluster, version, &new_status)
        .await
        .map_err(ReconcileError::Status)?;
    Ok(Action::requeue(requeue))
}

/// A Warning Event when the client port's certificate turned one that clients refuse or soon
/// will, or changed what is wrong with it; said once per change, not at every reconcile.
async fn certificate_events(ctx: &Context, cluster: &IggyCluster, status: &IggyClusterStatus) {
    let find = |status: Option<&IggyClusterStatus>| {
        status?
            .conditions
            .iter()
            .find(|c| c.type_ == status::CERTIFICATE_CONDITION)
            .cloned()
    };
    let Some(now) = find(Some(status)) else {
        return;
    };
    if now.reason == "Valid" {
        return;
    }
    let before = find(cluster.status.as_ref());
    if before.is_some_and(|b| b.reason == now.reason && b.message == now.message) {
        return;
    }
    publish(ctx, cluster, EventType::Warning, &now.reason, now.message).await;
}

/// Carries out one step of a rolling restart and says so in an Event.
async fn roll(
    ctx: &Context,
    cluster: &IggyCluster,
    names: &ClusterNames,
    step: &rollout::Step,
    stamp: &str,
) -> Result<(), ReconcileError> {
    let (kind, reason, note) = match step {
        rollout::Step::Idle | rollout::Step::Waiting { .. } => return Ok(()),
        rollout::Step::StepDown { pod, revision, .. } => (
            EventType::Normal,
            "PrimaryStepDown",
            format!(
                "asked the primary {pod} to step down before restarting it on revision {revision}"
            ),
        ),
        rollout::Step::Restart {
            pod,
            role,
            forced: true,
            ..
        } => (
            EventType::Warning,
            "PrimaryRestarted",
            format!(
                "restarting {pod} ({role}): it did not step down within {:?}",
                rollout::STEP_DOWN_GRACE
            ),
        ),
        rollout::Step::Restart {
            pod,
            role,
            outdated,
            total,
            ..
        } => (
            EventType::Normal,
            "RestartingPod",
            format!(
                "restarting {pod} ({role}) on the current template; {} of {total} brokers run it",
                total - outdated
            ),
        ),
    };
    rollout::execute(&ctx.client, &names.namespace, step, stamp)
        .await
        .map_err(ReconcileError::Rollout)?;
    tracing::info!(cluster = %names.cluster, namespace = %names.namespace, reason, %note, "rolling restart");
    publish(ctx, cluster, kind, reason, note).await;
    Ok(())
}

/// A cluster being deleted: with `deletionPolicy: Delete`, remove its S3 data, then release
/// the finalizer. Failures keep the finalizer and retry; nothing else blocks deletion.
async fn finalize(cluster: &IggyCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    if !cluster.finalizers().iter().any(|f| f == bucket::FINALIZER) {
        return Ok(Action::await_change());
    }
    let refs = dereference::dereference(&ctx.client, cluster).await?;
    let tiering = validate::validate(cluster, &refs)
        .ok()
        .and_then(|v| v.tiering);
    let Some(tiering) = tiering else {
        let note = "cannot delete the cluster's S3 data: its tieredStorage settings or credentials are missing; restore them, or remove the finalizer iggy.rs/s3-data to keep the data".to_string();
        publish(
            ctx,
            cluster,
            EventType::Warning,
            "CleanupBlocked",
            note.clone(),
        )
        .await;
        return Err(ReconcileError::Cleanup(note));
    };
    let created = bucket::created_bucket(cluster) == Some(tiering.s3.bucket.as_str());
    match bucket::delete_data(&tiering, created).await {
        Ok(deleted) => {
            let what = match (created, deleted.bucket) {
                (true, true) => format!(" and bucket {}", tiering.s3.bucket),
                (true, false) => format!(
                    "; kept bucket {}, which holds other data",
                    tiering.s3.bucket
                ),
                _ => String::new(),
            };
            let note = format!(
                "deleted {} object(s) under {}{what}",
                deleted.objects, tiering.cluster_prefix
            );
            publish(ctx, cluster, EventType::Normal, "DataDeleted", note).await;
            bucket::set_finalizer(&ctx.client, cluster, false)
                .await
                .map_err(ReconcileError::Finalizer)?;
            Ok(Action::await_change())
        }
        Err(problem) => {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "CleanupFailed",
                problem.to_string(),
            )
            .await;
            Err(ReconcileError::Cleanup(problem.to_string()))
        }
    }
}

/// Transient failures are retried soon; the controller's own backoff spaces repeats.
pub fn error_policy(
    cluster: Arc<IggyCluster>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), category = error.category(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
