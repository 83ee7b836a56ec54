//! Configured settings that shape the replicated state, held by the catalog.
//!
//! Most of the configuration is a node's own business (addresses, fsync, budgets). A few
//! settings decide what applying an operation does: where a partition's segments roll, what a
//! topic created without limits gets as its message expiry and size, how many tokens a user may
//! hold. If each replica read them from its own file, replicas whose files differ — every
//! member for the length of a rolling config edit — would apply the same log differently:
//! segment boundaries that differ make peer repair (which fetches byte-identical segments)
//! refuse, and a topic's limits or a token that differ part the replicas' states for good.
//!
//! So these settings are state: the catalog holds the ones in force, the operation
//! `SetStateSettings` changes them, and a broker whose configuration differs from them commits
//! its own (a single node at boot; on a replicated broker the primary, so the settings of the
//! member leading are the ones every replica applies). A catalog that holds none — a new
//! cluster in the moment before its primary's first commit, or data written before settings
//! were state — is applied with each node's own configuration, as before. That is right while
//! the members' configurations agree, as every pod of a new cluster's template does; members
//! configured differently from their very start would part in that moment (a first test did
//! so; the built-in defaults instead would give every new cluster's first second settings
//! nobody configured). Closing it needs client operations held back until the settings commit
//! (docs/broker.md).

use crate::config::Config;
use serde::{Deserialize, Serialize};

/// What applying operations depends on besides the operations themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSettings {
    /// Bytes at which a partition's active segment rolls (`Config::segment_size`: with L2 off,
    /// bounded for whole-segment uploads).
    pub segment_size: u64,
    /// The message expiry of a topic created or updated without one, µs (`u64::MAX`: never).
    pub message_expiry: u64,
    /// The size limit of a topic created or updated without one, bytes (`u64::MAX`: none).
    pub max_topic_size: u64,
    /// Most personal access tokens one user may hold.
    pub max_tokens_per_user: u32,
}

impl StateSettings {
    /// The settings `config` asks for.
    pub fn configured(config: &Config) -> Self {
        let retention = &config.retention;
        Self {
            segment_size: config.segment_size(),
            message_expiry: retention
                .message_expiry
                .0
                .map_or(u64::MAX, |d| d.0.as_micros() as u64),
            max_topic_size: retention.max_topic_size.0.map_or(u64::MAX, |s| s.0),
            max_tokens_per_user: config.personal_access_token.max_tokens_per_user,
        }
    }

    /// The settings in force: `held` (the catalog's), or `config`'s while it holds none.
    pub fn in_force(held: Option<StateSettings>, config: &Config) -> Self {
        held.unwrap_or_else(|| Self::configured(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_settings_resolve_the_unlimited_sentinels() {
        let config = Config::load(None, std::iter::empty()).unwrap();
        let settings = StateSettings::configured(&config);
        assert_eq!(settings.segment_size, config.segment_size());
        assert_eq!(settings.message_expiry, u64::MAX, "default expiry: never");
        assert_eq!(settings.max_topic_size, u64::MAX, "default size: unlimited");
        assert_eq!(
            settings.max_tokens_per_user,
            config.personal_access_token.max_tokens_per_user
        );
        let env = [
            ("IGGY_RETENTION_MESSAGE_EXPIRY", "90s"),
            ("IGGY_RETENTION_MAX_TOPIC_SIZE", "1 GiB"),
            ("IGGY_STORAGE_SEGMENT_SIZE", "64 KiB"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::load(None, env).unwrap();
        let settings = StateSettings::configured(&config);
        assert_eq!(settings.message_expiry, 90_000_000);
        assert_eq!(settings.max_topic_size, 1 << 30);
        assert_eq!(settings.segment_size, 64 << 10);
        assert_eq!(StateSettings::in_force(Some(settings), &config), settings);
        assert_ne!(
            StateSettings::in_force(None, &Config::load(None, std::iter::empty()).unwrap()),
            settings
        );
    }
}
