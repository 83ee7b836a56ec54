//! iggy-operator: reconciles `IggyCluster` resources into brokers on Kubernetes.
//! See docs/operator.md for the resources, the reconcile steps and the status model.

pub mod broker_config;
pub mod certificate;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod reconcile;
pub mod ring;
pub mod s3;

// Shared with the sidecar binary (operator/runtime); re-exported so callers keep one path.
pub use iggy_operator_runtime::{install_crypto_provider, shutdown_signal, telemetry};

use crd::IggyCluster;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use leader::{LeaderElector, LeaseSettings};
use metrics::Metrics;
use reconcile::Context;
use std::future::Future;
use std::sync::Arc;

/// How one operator process runs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch one namespace only; None watches all.
    pub namespace: Option<String>,
    /// Take part in leader election; None acts unconditionally (one replica, or tests).
    pub lease: Option<LeaseSettings>,
    /// Event reporter instance, e.g. the pod name.
    pub instance: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("lost the leader lease; exiting so that only one replica acts")]
    LeadershipLost,
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Applies the IggyCluster CRD this operator was built with (server-side, forced). Helm never
/// upgrades CRDs it installed from a chart's crds/ directory; an operator that installs its
/// own keeps the CRD in step with the code that reads it.
pub async fn install_crd(client: &Client) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    use kube::CustomResourceExt;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = IggyCluster::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    Ok(())
}

/// Runs the controller until `shutdown` completes (Ok) or leadership is lost (Err).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let elector = settings
        .lease
        .clone()
        .map(|lease| LeaderElector::new(client.clone(), lease));
    tokio::pin!(shutdown);
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = &mut shutdown => return Ok(()),
        }
        tracing::info!("leader election: acquired the lease");
    }
    metrics.set_leader(true);
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: names::FIELD_MANAGER.into(),
                instance: settings.instance.clone(),
            },
        ),
        metrics: metrics.clone(),
    });
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        names::MANAGED_BY_LABEL,
        names::FIELD_MANAGER
    ));
    let brokers =
        watcher::Config::default().labels(&format!("{}={}", names::NAME_LABEL, names::APP_NAME));
    let controller = Controller::new(
        api::<IggyCluster>(&client, &settings.namespace),
        watcher::Config::default(),
    )
    .owns(
        api::<StatefulSet>(&client, &settings.namespace),
        managed.clone(),
    )
    .owns(
        api::<ConfigMap>(&client, &settings.namespace),
        managed.clone(),
    )
    .owns(api::<Service>(&client, &settings.namespace), managed)
    // Pods belong to the StatefulSet, not the cluster; their labels name the cluster.
    .watches(api::<Pod>(&client, &settings.namespace), brokers, |pod| {
        let cluster = pod.labels().get(names::INSTANCE_LABEL)?.clone();
        Some(ObjectRef::<IggyCluster>::new(&cluster).within(&pod.namespace()?))
    })
    .run(reconcile::reconcile, reconcile::error_policy, context)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "controller event");
        }
    });
    let lost = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = controller => Ok(()),
        _ = lost => Err(RunError::LeadershipLost),
        _ = &mut shutdown => Ok(()),
    };
    metrics.set_leader(false);
    outcome
}
