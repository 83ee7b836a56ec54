//! Environment variables that cross a process boundary: the operator writes them into the pod
//! spec, the broker or the sidecar reads them. The broker also accepts `IGGY_<SECTION>_<KEY>` for
//! every configuration key; the ones named here are those another component relies on.

/// Broker settings the operator sets, each `IGGY_<SECTION>_<KEY>` of a key in defaults.toml
/// (checked by a test, so a renamed key cannot silently orphan the operator's variable).
pub const BROKER_SETTINGS: [&str; 15] = [
    SYSTEM_PATH,
    TCP_ADDRESS,
    TCP_TLS_ENABLED,
    TCP_TLS_CERT_FILE,
    TCP_TLS_KEY_FILE,
    TCP_TLS_SELF_SIGNED,
    HTTP_ADDRESS,
    STORAGE_FSYNC,
    ROOT_USERNAME,
    ROOT_PASSWORD,
    CLUSTER_RING_FILE,
    CLUSTER_MEMBER_ID,
    CLUSTER_POSITION,
    REPLICATION_ADDRESS,
    REPLICATION_SECRET,
];

pub const SYSTEM_PATH: &str = "IGGY_SYSTEM_PATH";
pub const TCP_ADDRESS: &str = "IGGY_TCP_ADDRESS";
pub const HTTP_ADDRESS: &str = "IGGY_HTTP_ADDRESS";
// TLS on the client port (`[tcp.tls]`), from the Secret the operator mounts at
// `defaults::POD_TLS_DIR`.
pub const TCP_TLS_ENABLED: &str = "IGGY_TCP_TLS_ENABLED";
pub const TCP_TLS_CERT_FILE: &str = "IGGY_TCP_TLS_CERT_FILE";
pub const TCP_TLS_KEY_FILE: &str = "IGGY_TCP_TLS_KEY_FILE";
pub const TCP_TLS_SELF_SIGNED: &str = "IGGY_TCP_TLS_SELF_SIGNED";
pub const STORAGE_FSYNC: &str = "IGGY_STORAGE_FSYNC";
pub const ROOT_USERNAME: &str = "IGGY_ROOT_USERNAME";
pub const ROOT_PASSWORD: &str = "IGGY_ROOT_PASSWORD";

// Replication: the ring file at start, this node's id in it, the replication listener.
pub const CLUSTER_RING_FILE: &str = "IGGY_CLUSTER_RING_FILE";
pub const CLUSTER_MEMBER_ID: &str = "IGGY_CLUSTER_MEMBER_ID";
/// This node's ring position, when its member id is not known (a pod's ordinal).
pub const CLUSTER_POSITION: &str = "IGGY_CLUSTER_POSITION";
pub const REPLICATION_ADDRESS: &str = "IGGY_REPLICATION_ADDRESS";
/// The secret replicas prove to each other (`replication.secret`); set from a Secret.
pub const REPLICATION_SECRET: &str = "IGGY_REPLICATION_SECRET";

// Tiered storage. L3 (S3) is on when a bucket is set.
pub const TIERING_S3_BUCKET: &str = "IGGY_TIERING_S3_BUCKET";
pub const TIERING_S3_REGION: &str = "IGGY_TIERING_S3_REGION";
pub const TIERING_S3_PREFIX: &str = "IGGY_TIERING_S3_PREFIX";
pub const TIERING_S3_ENDPOINT: &str = "IGGY_TIERING_S3_ENDPOINT";
pub const TIERING_S3_FORCE_PATH_STYLE: &str = "IGGY_TIERING_S3_FORCE_PATH_STYLE";
pub const TIERING_S3_ACCESS_KEY_ID: &str = "IGGY_TIERING_S3_ACCESS_KEY_ID";
pub const TIERING_S3_SECRET_ACCESS_KEY: &str = "IGGY_TIERING_S3_SECRET_ACCESS_KEY";
pub const TIERING_LOCAL_RETENTION: &str = "IGGY_TIERING_LOCAL_RETENTION";
pub const TIERING_L2_ENABLED: &str = "IGGY_TIERING_L2_ENABLED";
pub const TIERING_L1_SIZE: &str = "IGGY_TIERING_L1_SIZE";
/// The tiering variables above are the operator's names for keys of the broker's nested
/// `[tiering.l2]` / `[tiering.l3]` sections: the broker renames a variable starting with the
/// first string of a pair to start with the second before reading it.
pub const TIERING_ALIASES: [(&str, &str); 2] = [
    ("IGGY_TIERING_S3_", "IGGY_TIERING_L3_"),
    (
        "IGGY_TIERING_LOCAL_RETENTION",
        "IGGY_TIERING_L2_LOCAL_RETENTION",
    ),
];

/// `name` under the broker's own key names (see [`TIERING_ALIASES`]).
pub fn canonical_broker_variable(name: &str) -> std::borrow::Cow<'_, str> {
    for (alias, canonical) in TIERING_ALIASES {
        if let Some(rest) = name.strip_prefix(alias) {
            return format!("{canonical}{rest}").into();
        }
    }
    name.into()
}

// The pod's identity, from the downward API; both containers get them.
pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// The pod's StatefulSet ordinal, which is its ring position.
pub const RING_POSITION: &str = "RING_POSITION";

// The sidecar's own settings.
/// The IggyCluster the pod belongs to.
pub const SIDECAR_CLUSTER: &str = "IGGY_CLUSTER";
/// The ConfigMap holding `ring.json`.
pub const SIDECAR_RING_CONFIGMAP: &str = "IGGY_RING_CONFIGMAP";
/// Base URL of the broker's admin API (default [`crate::ports::local_admin_url`]).
pub const SIDECAR_BROKER_ADMIN_URL: &str = "IGGY_BROKER_ADMIN_URL";

// Standard OpenTelemetry variables the operator sets on every container it wires to a
// collector; the SDKs read them.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broker_setting_names_a_key_of_the_defaults() {
        let defaults: toml::Table = crate::defaults::BROKER_DEFAULTS.parse().expect("TOML");
        let mut keys = Vec::new();
        variables_of(&defaults, "IGGY", &mut keys);
        for variable in BROKER_SETTINGS {
            assert!(
                keys.iter().any(|key| key.eq_ignore_ascii_case(variable)),
                "{variable} names no key of defaults.toml"
            );
        }
    }

    /// The variable of every key under `table`, nested sections included (`[tcp.tls] enabled`
    /// is `IGGY_TCP_TLS_ENABLED`).
    fn variables_of(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let name = format!("{prefix}_{key}");
            match value.as_table() {
                Some(inner) => variables_of(inner, &name, out),
                None => out.push(name),
            }
        }
    }

    #[test]
    fn the_operators_tiering_variables_name_keys_of_the_nested_sections() {
        let defaults: toml::Table = crate::defaults::BROKER_DEFAULTS.parse().expect("TOML");
        let tiering = defaults["tiering"].as_table().expect("[tiering]");
        for variable in [
            TIERING_S3_BUCKET,
            TIERING_S3_REGION,
            TIERING_S3_PREFIX,
            TIERING_S3_ENDPOINT,
            TIERING_S3_FORCE_PATH_STYLE,
            TIERING_S3_ACCESS_KEY_ID,
            TIERING_S3_SECRET_ACCESS_KEY,
            TIERING_LOCAL_RETENTION,
            TIERING_L2_ENABLED,
        ] {
            let canonical = canonical_broker_variable(variable).to_ascii_lowercase();
            let rest = canonical.strip_prefix("iggy_tiering_").expect("tiering");
            let (level, key) = rest.split_at(2);
            let key = key.trim_start_matches('_');
            assert!(
                tiering[level]
                    .as_table()
                    .is_some_and(|t| t.contains_key(key)),
                "{variable} names no key of [tiering.{level}]"
            );
        }
    }
}
