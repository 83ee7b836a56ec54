//! The broker's configuration defaults, as a TOML document. It is the reference for every key
//! and its type: the broker parses environment overrides by it, and the operator checks the
//! keys of `IggyCluster.spec.config` against it before a bad key can crash-loop a pod.

pub const BROKER_DEFAULTS: &str = include_str!("../defaults.toml");

/// Where the broker's configuration file sits in a pod.
pub const POD_CONFIG_DIR: &str = "/etc/iggy";
pub const POD_CONFIG_FILE: &str = "/etc/iggy/broker.toml";
/// Where the ring ConfigMap is mounted in a broker's pod, and the file the broker reads its
/// ring from at start.
pub const POD_RING_DIR: &str = "/etc/iggy-ring";
pub const POD_RING_FILE: &str = "/etc/iggy-ring/ring.json";
/// Where the client port's TLS Secret (`spec.tls.secretName`) is mounted in a broker's pod, as
/// a whole directory: a Secret mounted by `subPath` would never see a renewal.
pub const POD_TLS_DIR: &str = "/etc/iggy-tls";
/// The data volume's mount path in a pod.
pub const POD_DATA_PATH: &str = "/data";

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_are_toml_with_sections_of_keys() {
        let table: toml::Table = super::BROKER_DEFAULTS.parse().expect("valid TOML");
        for section in ["system", "tcp", "http", "storage", "root"] {
            assert!(table[section].is_table(), "[{section}] missing");
        }
        assert_eq!(
            table["tcp"]["address"].as_str(),
            Some(crate::ports::DEFAULT_CLIENT_ADDRESS)
        );
        assert_eq!(
            table["http"]["address"].as_str(),
            Some(crate::ports::DEFAULT_HTTP_ADDRESS)
        );
    }
}
