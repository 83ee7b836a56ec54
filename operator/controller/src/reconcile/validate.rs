//! Validate: the pure step between what the user wrote and what the builders use. Everything
//! that can be wrong with a spec is found here, before any child is touched, so an invalid
//! spec yields a condition and an event, never half-built children.

use super::dereference::Dereferenced;
use crate::broker_config::{self, ConfigError};
use crate::certificate::{CertificateProblem, ServedCertificate};
use crate::crd::{
    AuthSpec, CollectorSpec, IggyCluster, LocalVolume, OtlpTransport, PodTemplateOverrides, S3Spec,
    TlsSpec,
};
use crate::names::ClusterNames;
use crate::ring;
use crate::s3::{BucketProblem, S3Credentials};
use iggy_contract::Ring;
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;

/// A cluster whose spec has been checked and resolved; builders take only this.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedCluster {
    pub names: ClusterNames,
    pub owner: OwnerReference,
    pub replicas: iggy_contract::Position,
    pub image: String,
    pub sidecar_image: String,
    pub resources: Option<ResourceRequirements>,
    pub storage_size: String,
    /// The class the volume claims use: the operator's local class, the user's, or the
    /// cluster default (None).
    pub storage_class: Option<String>,
    pub local_volumes: Vec<LocalVolume>,
    /// The claim each existing local PV is bound or pre-bound to (see `build::storage`).
    pub volume_claims: std::collections::BTreeMap<String, String>,
    pub broker_toml: String,
    pub config_hash: String,
    /// Where the root credentials are: the user's Secret, or the one the operator generates.
    pub auth: AuthSpec,
    /// True when `auth` names `<cluster>-root`, which the operator creates if missing.
    pub generated_root_secret: bool,
    /// The member count `spec.replicas` asks for; `replicas` (the pods) and `ring` say where
    /// the cluster is on its way there (see `scaling`).
    pub wanted: iggy_contract::Position,
    /// Where a change of `wanted` stands (set by the scaling step after validation).
    pub scaling: super::scaling::Phase,
    pub pod_template: PodTemplateOverrides,
    pub affinity: Option<Affinity>,
    pub ring: Ring,
    pub tiering: Option<Tiering>,
    pub telemetry: Option<Telemetry>,
    /// The Secret holding the client port's certificate, when it has TLS.
    pub tls: Option<TlsSpec>,
    /// The certificate that Secret holds now (read for status, never for the pods: brokers
    /// read the mounted Secret themselves, so a renewal changes no pod template).
    pub served_certificate: Option<ServedCertificate>,
}

/// The keys of a `kubernetes.io/tls` Secret: the certificate chain and its private key.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// Telemetry, resolved: the one endpoint brokers and sidecars export to.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    pub endpoint: String,
    pub transport: OtlpTransport,
    pub service_name: String,
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// Set when the operator deploys the collector.
    pub collector: Option<CollectorSpec>,
}

/// Tiered storage, resolved: where the cluster's objects go and with which credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct Tiering {
    pub s3: S3Spec,
    pub credentials: S3Credentials,
    /// `<prefix>/<cluster id>/`: everything this cluster stores, and all `Delete` removes.
    pub cluster_prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    #[error("the IggyCluster has no namespace or uid yet")]
    NotPersisted,
    #[error("spec.replicas is {0}; it must be at least 1 and at most {max}", max = iggy_contract::ring::MAX_MEMBERS)]
    Replicas(i32),
    #[error("spec.image must not be empty")]
    EmptyImage,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("spec.storage.size {0:?} is not a Kubernetes quantity such as 100Gi")]
    StorageSize(String),
    #[error("spec.storage.localVolumes lists {given} volumes; {needed} replicas need one each")]
    TooFewLocalVolumes { needed: u32, given: usize },
    #[error("spec.storage.localVolumes lists node {node:?} path {path:?} twice")]
    DuplicateLocalVolume { node: String, path: String },
    #[error("root credentials Secret {0:?} (spec.auth.rootSecret) does not exist")]
    RootSecretMissing(String),
    #[error("root credentials Secret {secret:?} has no key {key:?}")]
    RootSecretKeyMissing { secret: String, key: String },
    #[error("TLS Secret {0:?} (spec.tls.secretName) does not exist")]
    TlsSecretMissing(String),
    #[error("TLS Secret {secret:?} has no key {key:?} (a kubernetes.io/tls Secret holds tls.crt and tls.key)")]
    TlsSecretKeyMissing { secret: String, key: String },
    #[error("TLS Secret {secret:?}: tls.crt {problem}; brokers could not serve it")]
    TlsCertificateInvalid {
        secret: String,
        problem: CertificateProblem,
    },
    #[error("tiered storage: {0}")]
    Tiering(BucketProblem),
    #[error("spec.tieredStorage.s3.{field} must not be empty")]
    TieringField { field: &'static str },
    #[error("spec.tieredStorage.s3.localRetention {value:?}: {reason}")]
    LocalRetention { value: String, reason: String },
    #[error("spec.telemetry needs otlp.endpoint or collector.deploy: true")]
    TelemetryTarget,
    #[error("spec.telemetry.otlp.endpoint {0:?} is not an http:// or https:// URL")]
    TelemetryEndpoint(String),
    #[error("spec.telemetry.collector.image must not be empty")]
    CollectorImage,
}

impl ValidationError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::RootSecretMissing(_)
            | ValidationError::RootSecretKeyMissing { .. }
            | ValidationError::TlsSecretMissing(_)
            | ValidationError::TlsSecretKeyMissing { .. }
            | ValidationError::Tiering(_) => "SecretMissing",
            ValidationError::TlsCertificateInvalid { .. } => "CertificateInvalid",
            _ => "InvalidSpec",
        }
    }
}

fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| text.strip_suffix(suffix))
        .unwrap_or(text);
    !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.parse::<f64>().is_ok_and(|n| n > 0.0)
}

/// FNV-1a of the rendered configuration: short, stable across builds and platforms.
pub fn stable_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub fn validate(
    cluster: &IggyCluster,
    refs: &Dereferenced,
) -> Result<ValidatedCluster, ValidationError> {
    let spec = &cluster.spec;
    let namespace = cluster.namespace().ok_or(ValidationError::NotPersisted)?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(ValidationError::NotPersisted)?;
    let uid = cluster.uid().ok_or(ValidationError::NotPersisted)?;
    let replicas = u8::try_from(spec.replicas)
        .ok()
        .filter(|r| *r >= 1 && usize::from(*r) <= iggy_contract::ring::MAX_MEMBERS)
        .ok_or(ValidationError::Replicas(spec.replicas))?;
    if spec.image.trim().is_empty() {
        return Err(ValidationError::EmptyImage);
    }
    let broker_toml = broker_config::render(&spec.config)?;
    if !is_quantity(&spec.storage.size) {
        return Err(ValidationError::StorageSize(spec.storage.size.clone()));
    }
    let names = ClusterNames::new(&cluster.name_any(), &namespace);
    let local_volumes = spec.storage.local_volumes.clone();
    let storage_class = if local_volumes.is_empty() {
        spec.storage.storage_class_name.clone()
    } else {
        if local_volumes.len() < usize::from(replicas) {
            return Err(ValidationError::TooFewLocalVolumes {
                needed: replicas.into(),
                given: local_volumes.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for volume in &local_volumes {
            if !seen.insert((&volume.node, &volume.path)) {
                return Err(ValidationError::DuplicateLocalVolume {
                    node: volume.node.clone(),
                    path: volume.path.clone(),
                });
            }
        }
        Some(names.storage_class())
    };
    if let Some(auth) = &spec.auth {
        match &refs.root_secret_keys {
            None => return Err(ValidationError::RootSecretMissing(auth.root_secret.clone())),
            Some(keys) => {
                for key in [&auth.username_key, &auth.password_key] {
                    if !keys.contains(key) {
                        return Err(ValidationError::RootSecretKeyMissing {
                            secret: auth.root_secret.clone(),
                            key: key.clone(),
                        });
                    }
                }
            }
        }
    }
    let mut served_certificate = None;
    if let Some(tls) = &spec.tls {
        let keys = refs
            .tls_secret_keys
            .as_ref()
            .ok_or_else(|| ValidationError::TlsSecretMissing(tls.secret_name.clone()))?;
        for key in [TLS_CERT_KEY, TLS_KEY_KEY] {
            if !keys.contains(key) {
                return Err(ValidationError::TlsSecretKeyMissing {
                    secret: tls.secret_name.clone(),
                    key: key.to_string(),
                });
            }
        }
        let invalid = |problem: &CertificateProblem| ValidationError::TlsCertificateInvalid {
            secret: tls.secret_name.clone(),
            problem: problem.clone(),
        };
        served_certificate = Some(match &refs.tls_certificate {
            Some(Ok(served)) => served.clone(),
            Some(Err(problem)) => return Err(invalid(problem)),
            None => return Err(invalid(&CertificateProblem::NoCertificate)),
        });
    }
    let tiering = match &spec.tiered_storage {
        None => None,
        Some(tiering) => {
            let s3 = &tiering.s3;
            for (field, value) in [
                ("bucket", &s3.bucket),
                ("credentialsSecret", &s3.credentials_secret),
                ("region", &s3.region),
            ] {
                if value.trim().is_empty() {
                    return Err(ValidationError::TieringField { field });
                }
            }
            if let Some(retention) = &s3.local_retention {
                iggy_contract::duration::parse_duration(retention).map_err(|reason| {
                    ValidationError::LocalRetention {
                        value: retention.clone(),
                        reason,
                    }
                })?;
            }
            let credentials = match &refs.s3_credentials {
                Some(Ok(credentials)) => credentials.clone(),
                Some(Err(problem)) => return Err(ValidationError::Tiering(problem.clone())),
                None => {
                    return Err(ValidationError::Tiering(BucketProblem::SecretMissing(
                        s3.credentials_secret.clone(),
                    )))
                }
            };
            Some(Tiering {
                cluster_prefix: format!("{}/{uid}/", s3.prefix.trim_matches('/')),
                s3: s3.clone(),
                credentials,
            })
        }
    };
    let telemetry = match &spec.telemetry {
        None => None,
        Some(telemetry) => Some(resolve_telemetry(telemetry, &names)?),
    };
    // The running ring of this cluster stays as published: changing its members is the
    // scaling step's business (`scaling`), which needs the brokers' reports. A first ring, or
    // one of another cluster (a recreated one), is planned here.
    let wanted = replicas;
    let ring = match refs.current_ring.as_ref() {
        Some(current) if current.cluster_id == uid => current.clone(),
        current => ring::plan(&names, &uid, replicas, current),
    };
    let replicas = u8::try_from(ring.members.len() + ring.standbys.len()).unwrap_or(replicas);
    let auth = spec.auth.clone().unwrap_or_else(|| AuthSpec {
        root_secret: names.root_secret(),
        username_key: "username".into(),
        password_key: "password".into(),
    });
    Ok(ValidatedCluster {
        config_hash: stable_hash(&broker_toml),
        names,
        owner,
        replicas,
        image: spec.image.clone(),
        sidecar_image: spec.sidecar_image.clone(),
        resources: spec.resources.clone(),
        storage_size: spec.storage.size.clone(),
        storage_class,
        local_volumes,
        volume_claims: refs.volume_claims.clone(),
        broker_toml,
        generated_root_secret: spec.auth.is_none(),
        wanted,
        scaling: super::scaling::Phase::Steady,
        auth,
        pod_template: spec.pod_template.clone().unwrap_or_default(),
        affinity: spec.affinity.clone(),
        ring,
        tiering,
        telemetry,
        tls: spec.tls.clone(),
        served_certificate,
    })
}

fn resolve_telemetry(
    spec: &crate::crd::TelemetrySpec,
    names: &ClusterNames,
) -> Result<Telemetry, ValidationError> {
    let deployed = spec.collector.as_ref().filter(|c| c.deploy);
    let (endpoint, transport) = match (deployed, &spec.otlp) {
        (Some(collector), _) => {
            if collector.image.trim().is_empty() {
                return Err(ValidationError::CollectorImage);
            }
            (
                format!("http://{}.{}.svc:4317", names.collector(), names.namespace),
                OtlpTransport::Grpc,
            )
        }
        (None, Some(otlp)) => {
            let endpoint = otlp.endpoint.trim();
            let host = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .unwrap_or_default();
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(ValidationError::TelemetryEndpoint(otlp.endpoint.clone()));
            }
            (endpoint.to_string(), otlp.transport)
        }
        (None, None) => return Err(ValidationError::TelemetryTarget),
    };
    Ok(Telemetry {
        endpoint,
        transport,
        service_name: spec.service_name.clone(),
        resource_attributes: spec.resource_attributes.clone(),
        collector: deployed.cloned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn cluster(spec: serde_json::Value) -> IggyCluster {
        serde_json::from_value(json!({
            "apiVersion": "iggy.rs/v1alpha1", "kind": "IggyCluster",
            "metadata": {"name": "events", "namespace": "prod", "uid": "u-1", "generation": 1},
            "spec": spec,
        }))
        .expect("valid IggyCluster")
    }

    #[test]
    fn a_local_retention_the_broker_would_refuse_is_refused_here() {
        let refs = Dereferenced {
            s3_credentials: Some(Ok(crate::s3::S3Credentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
            })),
            ..Dereferenced::default()
        };
        let spec = |retention: &str| json!({"replicas": 1, "tieredStorage": {"s3": {"bucket": "b", "credentialsSecret": "c", "localRetention": retention}}});
        assert!(validate(&cluster(spec("7d")), &refs).is_ok());
        let error = validate(&cluster(spec("a week")), &refs).unwrap_err();
        assert_eq!(error.reason(), "InvalidSpec");
        assert!(error.to_string().contains("localRetention"), "{error}");
    }

    #[test]
    fn accepts_a_minimal_spec_with_defaults() {
        let valid =
            validate(&cluster(json!({"replicas": 3})), &Dereferenced::default()).expect("valid");
        assert_eq!(valid.replicas, 3);
        assert_eq!(valid.storage_size, "10Gi");
        assert_eq!(valid.storage_class, None);
        assert_eq!(valid.ring.members.len(), 3);
        assert_eq!(valid.owner.uid, "u-1");
    }

    #[test]
    fn a_changed_replica_count_keeps_the_running_ring_for_the_scaling_step() {
        let first =
            validate(&cluster(json!({"replicas": 3})), &Dereferenced::default()).expect("valid");
        let refs = Dereferenced {
            current_ring: Some(first.ring.clone()),
            ..Dereferenced::default()
        };
        let scaled = validate(&cluster(json!({"replicas": 5})), &refs).expect("valid");
        assert_eq!((scaled.replicas, scaled.wanted), (3, 5));
        assert_eq!(scaled.ring, first.ring);
        // A ring of another cluster (a recreated one) is replaced by a first ring.
        let mut foreign = first.ring.clone();
        foreign.cluster_id = "u-0".into();
        let refs = Dereferenced {
            current_ring: Some(foreign),
            ..Dereferenced::default()
        };
        let recreated = validate(&cluster(json!({"replicas": 5})), &refs).expect("valid");
        assert_eq!((recreated.replicas, recreated.ring.epoch), (5, 2));
    }

    #[test]
    fn local_volumes_get_the_operator_class_and_must_cover_every_replica() {
        let spec = json!({"replicas": 2, "storage": {"localVolumes": [{"node": "a", "path": "/mnt/nvme0"}, {"node": "b", "path": "/mnt/nvme0"}]}});
        let valid = validate(&cluster(spec), &Dereferenced::default()).expect("valid");
        assert_eq!(
            valid.storage_class.as_deref(),
            Some("iggy-local-prod-events")
        );
        let short =
            json!({"replicas": 3, "storage": {"localVolumes": [{"node": "a", "path": "/x"}]}});
        assert_eq!(
            validate(&cluster(short), &Dereferenced::default()),
            Err(ValidationError::TooFewLocalVolumes {
                needed: 3,
                given: 1
            })
        );
        let twice = json!({"replicas": 2, "storage": {"localVolumes": [{"node": "a", "path": "/x"}, {"node": "a", "path": "/x"}]}});
        assert!(matches!(
            validate(&cluster(twice), &Dereferenced::default()),
            Err(ValidationError::DuplicateLocalVolume { .. })
        ));
    }

    #[test]
    fn rejects_bad_values_with_precise_errors() {
        let refs = Dereferenced::default();
        assert_eq!(
            validate(&cluster(json!({"replicas": 0})), &refs),
            Err(ValidationError::Replicas(0))
        );
        assert_eq!(
            validate(
                &cluster(json!({"replicas": 1, "storage": {"size": "lots"}})),
                &refs
            ),
            Err(ValidationError::StorageSize("lots".into()))
        );
        assert!(matches!(
            validate(
                &cluster(json!({"replicas": 1, "config": {"nope.key": "1"}})),
                &refs
            ),
            Err(ValidationError::Config(_))
        ));
        let with_auth = cluster(json!({"replicas": 1, "auth": {"rootSecret": "root"}}));
        assert_eq!(
            validate(&with_auth, &refs),
            Err(ValidationError::RootSecretMissing("root".into()))
        );
        let partial = Dereferenced {
            root_secret_keys: Some(BTreeSet::from(["username".to_string()])),
            ..Dereferenced::default()
        };
        assert!(matches!(
            validate(&with_auth, &partial),
            Err(ValidationError::RootSecretKeyMissing { .. })
        ));
    }

    #[test]
    fn tls_needs_its_secret_with_a_chain_and_a_key_and_owns_the_tls_keys() {
        let with_tls = cluster(json!({"replicas": 1, "tls": {"secretName": "events-tls"}}));
        let missing = validate(&with_tls, &Dereferenced::default());
        assert_eq!(
            missing,
            Err(ValidationError::TlsSecretMissing("events-tls".into()))
        );
        assert_eq!(missing.unwrap_err().reason(), "SecretMissing");
        let without_key = Dereferenced {
            tls_secret_keys: Some(BTreeSet::from(["tls.crt".to_string()])),
            ..Dereferenced::default()
        };
        assert_eq!(
            validate(&with_tls, &without_key),
            Err(ValidationError::TlsSecretKeyMissing {
                secret: "events-tls".into(),
                key: "tls.key".into()
            })
        );
        let keys_only = Dereferenced {
            tls_secret_keys: Some(BTreeSet::from(["tls.crt".into(), "tls.key".into()])),
            ..Dereferenced::default()
        };
        // A chain that is no certificate would stop every broker that loads it.
        for problem in [
            CertificateProblem::NoCertificate,
            CertificateProblem::Malformed,
        ] {
            let broken = Dereferenced {
                tls_certificate: Some(Err(problem.clone())),
                ..keys_only.clone()
            };
            let refused = validate(&with_tls, &broken).unwrap_err();
            assert_eq!(
                refused,
                ValidationError::TlsCertificateInvalid {
                    secret: "events-tls".into(),
                    problem
                }
            );
            assert_eq!(refused.reason(), "CertificateInvalid");
        }
        let served = ServedCertificate {
            not_after: 1_893_456_000,
            names: vec!["events.prod.svc".into()],
        };
        let complete = Dereferenced {
            tls_certificate: Some(Ok(served.clone())),
            ..keys_only
        };
        let valid = validate(&with_tls, &complete).expect("valid");
        assert_eq!(valid.served_certificate, Some(served));
        assert_eq!(valid.tls.expect("tls").secret_name, "events-tls");
        // The broker's TLS keys are the operator's to set, from spec.tls.
        let by_config = cluster(json!({"replicas": 1, "config": {"tcp.tls.enabled": "true"}}));
        assert!(matches!(
            validate(&by_config, &complete),
            Err(ValidationError::Config(ConfigError::ReservedKey { .. }))
        ));
    }

    #[test]
    fn telemetry_needs_a_target_and_a_url() {
        let refs = Dereferenced::default();
        assert_eq!(
            validate(&cluster(json!({"replicas": 1, "telemetry": {}})), &refs),
            Err(ValidationError::TelemetryTarget)
        );
        assert!(matches!(
            validate(
                &cluster(
                    json!({"replicas": 1, "telemetry": {"otlp": {"endpoint": "collector:4317"}}})
                ),
                &refs
            ),
            Err(ValidationError::TelemetryEndpoint(_))
        ));
        let given = validate(&cluster(json!({"replicas": 1, "telemetry": {"otlp": {"endpoint": "http://otel.observability:4318", "transport": "http"}}})), &refs).expect("valid");
        let telemetry = given.telemetry.expect("telemetry");
        assert_eq!(telemetry.transport, OtlpTransport::Http);
        assert!(telemetry.collector.is_none());
        let deployed = validate(&cluster(json!({"replicas": 1, "telemetry": {"collector": {"deploy": true}, "otlp": {"endpoint": "http://ignored:4317"}}})), &refs).expect("valid");
        assert_eq!(
            deployed.telemetry.expect("telemetry").endpoint,
            "http://events-otel-collector.prod.svc:4317"
        );
    }

    #[test]
    fn quantities() {
        for good in ["10Gi", "1", "1.5Ti", "500M"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Gi", "ten", "-1Gi", "1.2.3Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
