//! Renders `spec.config` into the broker's TOML configuration file.
//!
//! The broker's own defaults document (from the contract crate) is compiled in: it names
//! every key and its type, so a misspelt key or a value of the wrong type is reported on the
//! IggyCluster instead of crash-looping a broker pod.

use std::collections::BTreeMap;
use toml::{Table, Value};

use iggy_contract::defaults::BROKER_DEFAULTS;
use iggy_contract::ports::{all_interfaces, CLIENT_PORT, HTTP_PORT};

/// Keys the operator sets itself, and why a user may not.
const RESERVED: [(&str, &str); 14] = [
    (
        "system.path",
        "the data path is the broker's persistent volume",
    ),
    (
        "tcp.address",
        "the operator binds the client port on all interfaces",
    ),
    (
        "http.address",
        "the operator binds the HTTP port for probes and metrics",
    ),
    (
        "cluster.ring_file",
        "the operator mounts the ring ConfigMap and points brokers at it",
    ),
    (
        "cluster.member_id",
        "each broker finds itself in the ring by its pod's ordinal",
    ),
    (
        "cluster.position",
        "each broker's position is its pod's ordinal",
    ),
    (
        "replication.address",
        "the operator binds the replication port on all interfaces",
    ),
    (
        "replication.secret",
        "the operator generates it into the Secret <cluster>-replication (a value here would \
         sit in a ConfigMap in plain text)",
    ),
    (
        "tcp.tls.enabled",
        "TLS on the client port comes from spec.tls",
    ),
    (
        "tcp.tls.cert_file",
        "TLS on the client port comes from spec.tls",
    ),
    (
        "tcp.tls.key_file",
        "TLS on the client port comes from spec.tls",
    ),
    (
        "tcp.tls.self_signed",
        "TLS on the client port comes from spec.tls",
    ),
    (
        "root.username",
        "root credentials come from spec.auth.rootSecret",
    ),
    (
        "root.password",
        "root credentials come from spec.auth.rootSecret",
    ),
];

pub use iggy_contract::defaults::POD_DATA_PATH as DATA_PATH;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("spec.config key {key:?} is not a broker setting (expected section.key, e.g. storage.fsync)")]
    UnknownKey { key: String },
    #[error("spec.config key {key:?} is set by the operator: {reason}")]
    ReservedKey { key: String, reason: &'static str },
    #[error("spec.config {key:?} = {value:?} is not a valid {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
}

fn defaults() -> Table {
    // The file is part of this repository and parsed by the broker's own tests.
    BROKER_DEFAULTS
        .parse()
        .expect("the contract crate tests that its defaults.toml is valid TOML")
}

/// The broker.toml for these overrides: the operator's fixed settings plus each override,
/// typed like the broker's default for that key.
pub fn render(overrides: &BTreeMap<String, String>) -> Result<String, ConfigError> {
    let defaults = defaults();
    let mut table = Table::new();
    set(
        &mut table,
        &["system", "path"],
        Value::String(DATA_PATH.into()),
    );
    set(
        &mut table,
        &["tcp", "address"],
        Value::String(all_interfaces(CLIENT_PORT)),
    );
    set(
        &mut table,
        &["http", "address"],
        Value::String(all_interfaces(HTTP_PORT)),
    );
    // Pods talk to each other across nodes, over networks the cluster's owner may not trust:
    // replication is encrypted unless spec.config says `replication.tls: "false"` (a CNI that
    // encrypts pod traffic already, and the CPU it would save). The broker's own default is
    // off, for a ring on one machine's loopback (`make run-cluster`, benchmarks).
    set(&mut table, &["replication", "tls"], Value::Boolean(true));
    for (dotted, text) in overrides {
        if let Some((_, reason)) = RESERVED.iter().find(|(key, _)| key == dotted) {
            return Err(ConfigError::ReservedKey {
                key: dotted.clone(),
                reason,
            });
        }
        let unknown = || ConfigError::UnknownKey {
            key: dotted.clone(),
        };
        // `section.key`, or `section.sub.key` for nested sections such as [telemetry.logs].
        let path: Vec<&str> = dotted.split('.').collect();
        if path.len() < 2 {
            return Err(unknown());
        }
        let default = path[1..]
            .iter()
            .try_fold(defaults.get(path[0]), |value, key| {
                value.and_then(Value::as_table).map(|t| t.get(*key))
            })
            .flatten()
            .filter(|value| !value.is_table())
            .ok_or_else(unknown)?;
        let bad = |expected| ConfigError::BadValue {
            key: dotted.clone(),
            value: text.clone(),
            expected,
        };
        let value = match default {
            Value::Integer(_) => Value::Integer(text.trim().parse().map_err(|_| bad("integer"))?),
            Value::Boolean(_) => Value::Boolean(text.trim().parse().map_err(|_| bad("boolean"))?),
            Value::Float(_) => Value::Float(text.trim().parse().map_err(|_| bad("number"))?),
            _ => Value::String(text.clone()),
        };
        set(&mut table, &path, value);
    }
    Ok(toml::to_string(&table).expect("a TOML table always serializes"))
}

/// Sets `path` (sections, then the key) in `table`, creating the sections it names.
fn set(table: &mut Table, path: &[&str], value: Value) {
    let Some((key, sections)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(key.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replication_is_encrypted_unless_the_spec_turns_it_off() {
        let table: Table = render(&BTreeMap::new()).unwrap().parse().unwrap();
        assert_eq!(table["replication"]["tls"].as_bool(), Some(true));
        let off = render(&overrides(&[("replication.tls", "false")])).unwrap();
        let table: Table = off.parse().unwrap();
        assert_eq!(table["replication"]["tls"].as_bool(), Some(false));
        assert!(matches!(
            render(&overrides(&[("replication.tls", "sometimes")])),
            Err(ConfigError::BadValue { .. })
        ));
    }

    #[test]
    fn renders_typed_overrides_and_fixed_addresses() {
        let rendered = render(&overrides(&[
            ("storage.fsync", "always"),
            ("personal_access_token.max_tokens_per_user", "7"),
            ("telemetry.traces.transport", "http"),
        ]))
        .expect("valid");
        let table: Table = rendered.parse().expect("TOML");
        assert_eq!(table["storage"]["fsync"].as_str(), Some("always"));
        assert_eq!(
            table["personal_access_token"]["max_tokens_per_user"].as_integer(),
            Some(7)
        );
        assert_eq!(
            table["telemetry"]["traces"]["transport"].as_str(),
            Some("http")
        );
        assert_eq!(table["system"]["path"].as_str(), Some("/data"));
        assert_eq!(table["tcp"]["address"].as_str(), Some("0.0.0.0:8090"));
    }

    #[test]
    fn rejects_unknown_reserved_and_mistyped_keys() {
        assert!(matches!(
            render(&overrides(&[("storage.fsnyc", "always")])),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(matches!(
            render(&overrides(&[("fsync", "always")])),
            Err(ConfigError::UnknownKey { .. })
        ));
        // A section is not a value.
        assert!(matches!(
            render(&overrides(&[("telemetry.logs", "grpc")])),
            Err(ConfigError::UnknownKey { .. })
        ));
        for secret in ["root.password", "replication.secret"] {
            assert!(matches!(
                render(&overrides(&[(secret, "x")])),
                Err(ConfigError::ReservedKey { .. })
            ));
        }
        assert!(matches!(
            render(&overrides(&[(
                "personal_access_token.max_tokens_per_user",
                "many"
            )])),
            Err(ConfigError::BadValue {
                expected: "integer",
                ..
            })
        ));
    }
}
