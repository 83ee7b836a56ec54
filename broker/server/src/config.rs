//! Broker configuration: defaults, then the TOML file given with `--config`, then environment
//! variables `IGGY_<SECTION>_<KEY>`, which win. Everything is validated before the broker opens
//! its data directory or a socket, so a bad setting fails fast with exit code 2.

use crate::storage::dedup::DeduplicationSettings;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults, as a TOML document: it doubles as the reference for every key and type, which
/// is what lets an environment variable's text be parsed as the type its key expects. It lives
/// in the contract crate because the operator checks `IggyCluster.spec.config` against it too.
pub use iggy_contract::defaults::BROKER_DEFAULTS as DEFAULT_CONFIG;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub system: SystemConfig,
    pub tcp: TcpConfig,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub root: RootConfig,
    pub retention: RetentionConfig,
    pub personal_access_token: TokenConfig,
    pub consumer_group: ConsumerGroupConfig,
    pub message_deduplication: DeduplicationConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub replication: ReplicationConfig,
    pub logging: LoggingConfig,
    pub telemetry: TelemetryConfig,
    pub tiering: TieringConfig,
    pub data_maintenance: DataMaintenanceConfig,
    /// Every key as loaded (defaults, file, environment), for the diagnostic snapshot; read it
    /// through [`Config::effective_redacted`], never print it whole.
    #[serde(skip)]
    effective: Effective,
}

/// The loaded keys; `Debug` does not print them, as they hold secrets.
#[derive(Clone, Default)]
struct Effective(toml::Table);

impl fmt::Debug for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} sections>", self.0.len())
    }
}

/// Tiered storage (`[tiering]`, docs/tiering.md); [`Config::tier_target`] resolves where L3 is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TieringConfig {
    pub interval: HumanDuration,
    pub l1: L1Config,
    pub l2: L2Config,
    pub l3: L3Config,
}

/// L1: the newest batches of all partitions in memory (`storage::l1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Config {
    /// The process's budget; 0 turns L1 off.
    pub size: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Config {
    pub enabled: bool,
    pub local_retention: Limit<HumanDuration>,
    pub local_max_size: Limit<ByteSize>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L3Config {
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub prefix: String,
    pub force_path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub directory: PathBuf,
    pub upload_concurrency: u32,
    pub cache_size: ByteSize,
    pub read_ahead: ByteSize,
    /// Seals an active segment this long after its first message, so it can be uploaded
    /// (default with L2 off: [`Config::OBJECTS_ONLY_SEAL_AFTER`]).
    pub seal_after: Limit<HumanDuration>,
}

impl fmt::Debug for L3Config {
    /// Never print the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("directory", &self.directory)
            .field("secret_access_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The seed's `[data_maintenance.archiver]`, another way to set L3.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMaintenanceConfig {
    pub archiver: ArchiverConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiverConfig {
    pub enabled: bool,
    pub kind: ArchiverKind,
    pub disk: ArchiverDisk,
    pub s3: ArchiverS3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiverKind {
    Disk,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiverDisk {
    pub path: PathBuf,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiverS3 {
    pub key_id: String,
    pub key_secret: String,
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
}

impl fmt::Debug for ArchiverS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiverS3")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("key_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Where sealed segments go (L3), resolved from `[tiering.l3]` or the archiver alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierTarget {
    S3 {
        settings: iggy_tiering::S3Settings,
        prefix: String,
    },
    Directory {
        path: PathBuf,
        prefix: String,
    },
}

/// OTLP export (`[telemetry]`); the `OTEL_*` environment overlays it (`iggy_telemetry::settings`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub enabled: bool,
    pub service_name: String,
    pub logs: TelemetrySignal,
    pub traces: TelemetrySignal,
    pub metrics: TelemetrySignal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySignal {
    pub transport: Transport,
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Grpc,
    Http,
}

impl TelemetryConfig {
    /// The section in the shape the telemetry crate reads.
    pub fn file_config(&self) -> iggy_telemetry::FileConfig {
        let signal = |s: &TelemetrySignal| iggy_telemetry::SignalConfig {
            transport: match s.transport {
                Transport::Grpc => iggy_telemetry::Protocol::Grpc,
                Transport::Http => iggy_telemetry::Protocol::HttpProtobuf,
            },
            endpoint: s.endpoint.clone(),
        };
        iggy_telemetry::FileConfig {
            enabled: self.enabled,
            service_name: self.service_name.clone(),
            logs: signal(&self.logs),
            traces: signal(&self.traces),
            metrics: signal(&self.metrics),
        }
    }
}

/// Which ring this broker belongs to (`[cluster]`); an empty `ring_file` is a single node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub ring_file: PathBuf,
    pub member_id: u32,
    /// This node's ring position; names the node when `member_id` is 0 (-1 = unset).
    pub position: i64,
}

impl ClusterConfig {
    pub fn is_replicated(&self) -> bool {
        !self.ring_file.as_os_str().is_empty()
    }
}

/// The replication listener and how prepares travel (`[replication]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    pub address: SocketAddr,
    pub route: RouteSetting,
    pub advertise_leader: bool,
    pub request_timeout: HumanDuration,
    pub forget_members_after: HumanDuration,
    /// Bytes of peers' prepares that may wait for the replica thread (`replication::inbound`).
    pub inbound_budget: ByteSize,
    /// What replicas prove to each other before they talk (`replication::peer_auth`).
    pub secret: Secret,
    /// Whether this member opens its replication connections over TLS (`replication::peer_tls`).
    pub tls: bool,
    /// Room kept on every member's data filesystem: the primary refuses sends that would leave
    /// less on any member, and other operations that add state below a quarter of it
    /// (`replication::machine`, `admit`).
    pub min_free_space: ByteSize,
}

/// A string that is never printed, not even in debug logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSetting {
    Ring,
    Star,
}

/// Bounds on password hashing (see `security::hashing`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Threads hashing at once; 0 = half the cores, at least one.
    pub hash_workers: u32,
    pub hash_queue: u32,
    pub hash_wait: HumanDuration,
    pub throttle_after: u32,
    pub throttle_base: HumanDuration,
    pub throttle_max: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub message_expiry: Limit<HumanDuration>,
    pub max_topic_size: Limit<ByteSize>,
    pub cleaner_interval: HumanDuration,
}

/// A value, or "none"/"unlimited" for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Limit<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        if let toml::Value::String(text) = &value {
            if matches!(text.trim(), "none" | "unlimited" | "never") {
                return Ok(Limit(None));
            }
        }
        T::deserialize(value)
            .map(|v| Limit(Some(v)))
            .map_err(serde::de::Error::custom)
    }
}

/// A duration written as "500ms", "45s", "30m", "12h" or "7d".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

use iggy_contract::duration::parse_duration;

/// Cooperative rebalancing of consumer groups (`[consumer_group]`, `state::groups`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupConfig {
    /// Longest a partition waits for its holder to store what it polled before it moves.
    pub rebalancing_timeout: HumanDuration,
    /// How often the broker looks for moves that are due besides when offsets are stored.
    pub rebalancing_check_interval: HumanDuration,
}

/// Message deduplication (`[message_deduplication]`, `storage::dedup`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeduplicationConfig {
    pub enabled: bool,
    /// How many of a partition's newest messages a new message's id is compared with.
    pub max_entries: u32,
    /// How old a message may be and still count; "none": any age.
    pub expiry: Limit<HumanDuration>,
}

impl DeduplicationConfig {
    /// Upper bound of `max_entries`: a partition's window is read back from its log when
    /// needed, and this many ids is what a broker holds per partition.
    pub const MAX_ENTRIES: u32 = 1_000_000;

    /// The settings to put in force, `None` when off.
    pub fn settings(&self) -> Option<DeduplicationSettings> {
        self.enabled.then(|| DeduplicationSettings {
            max_entries: self.max_entries,
            expiry: self.expiry.0.map_or(0, |d| d.0.as_micros() as u64),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub max_tokens_per_user: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub address: SocketAddr,
    pub max_send_bytes: ByteSize,
    pub max_connections: u32,
    pub login_timeout: HumanDuration,
    pub request_timeout: HumanDuration,
    pub memory_budget: ByteSize,
    pub tls: TlsConfig,
}

/// `[tcp.tls]`: TLS on the client port (`net::tls`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub self_signed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub fsync: FsyncPolicy,
    pub segment_size: ByteSize,
    pub max_poll_bytes: ByteSize,
    pub scrub_rate: ByteSize,
    pub checkpoint_interval: HumanDuration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootConfig {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RootConfig {
    /// Never print the password, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    pub level: String,
}

/// When appended bytes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Never,
    Interval(Duration),
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let millis = text
                    .strip_suffix("ms")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!(
                            "fsync must be 'always', 'never' or '<N>ms' with N > 0, got '{text}'"
                        )
                    })?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(millis)))
            }
        }
    }
}

/// A byte count written as an integer or as text with a unit ("64 MiB", "1GB", "512 B").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => parse_byte_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as '64 MiB'"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size '{text}' overflows"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}='{value}': {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// With L2 off, how long a segment stays open at most unless `tiering.l3.seal_after` says.
    /// Every seal is an object pair and a manifest entry (and the manifest is uploaded again on
    /// each change), so seconds would cost a trickle partition thousands of objects a day and
    /// a manifest that grows with them; half a minute keeps that in hand (docs/tiering.md).
    pub const OBJECTS_ONLY_SEAL_AFTER: Duration = Duration::from_secs(30);
    /// With L2 off, the largest segment: what the store receives in one upload, and what local
    /// disk holds per partition while it fills.
    pub const OBJECTS_ONLY_SEGMENT_SIZE: u64 = 16 << 20;

    /// The segment size partitions roll at: `storage.segment_size`, bounded by
    /// [`Self::OBJECTS_ONLY_SEGMENT_SIZE`] when L2 is off (segments go to the store whole).
    pub fn segment_size(&self) -> u64 {
        match self.tiering.l2.enabled {
            true => self.storage.segment_size.0,
            false => self
                .storage
                .segment_size
                .0
                .min(Self::OBJECTS_ONLY_SEGMENT_SIZE),
        }
    }

    /// How long an active segment may hold data before it is sealed for the object store.
    pub fn seal_after(&self) -> Option<Duration> {
        let set = self.tiering.l3.seal_after.0.map(|d| d.0);
        match self.tiering.l2.enabled {
            true => set,
            false => Some(set.unwrap_or(Self::OBJECTS_ONLY_SEAL_AFTER)),
        }
    }

    /// Defaults, overlaid with the file (if any), overlaid with `env`, then validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = DEFAULT_CONFIG
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("built-in defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let overlay: toml::Table = text.parse().map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
            merge(&mut table, overlay);
        }
        apply_env(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        config.effective = Effective(table);
        Ok(config)
    }

    /// The configuration in force as TOML, every password and secret replaced by
    /// `<redacted>` (an empty one stays empty: that it is unset is worth seeing).
    pub fn effective_redacted(&self) -> String {
        fn redact(table: &mut toml::Table) {
            for (key, value) in table.iter_mut() {
                match value {
                    toml::Value::Table(inner) => redact(inner),
                    toml::Value::String(text) if is_secret_key(key) && !text.is_empty() => {
                        *text = "<redacted>".into();
                    }
                    _ => {}
                }
            }
        }
        let mut table = self.effective.0.clone();
        redact(&mut table);
        toml::to_string(&table)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let segment = self.storage.segment_size.0;
        // Index positions are u32, so a segment plus its last batch must stay below 4 GiB.
        if !(4096..=(1 << 30)).contains(&segment) {
            return Err(ConfigError::Invalid(format!(
                "storage.segment_size must be between 4 KiB and 1 GiB, got {segment} bytes"
            )));
        }
        if self.tcp.max_send_bytes.0 > (2 << 30) || self.tcp.max_send_bytes.0 < 1024 {
            return Err(ConfigError::Invalid(
                "tcp.max_send_bytes must be between 1 KiB and 2 GiB".into(),
            ));
        }
        if self.tcp.memory_budget.0 < (1 << 20) {
            return Err(ConfigError::Invalid(
                "tcp.memory_budget must be at least 1 MiB".into(),
            ));
        }
        if self.replication.inbound_budget.0 < (1 << 20) {
            return Err(ConfigError::Invalid(
                "replication.inbound_budget must be at least 1 MiB".into(),
            ));
        }
        if self.tcp.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "tcp.max_connections must be at least 1".into(),
            ));
        }
        if self.storage.max_poll_bytes.0 < 1024 {
            return Err(ConfigError::Invalid(
                "storage.max_poll_bytes must be at least 1 KiB".into(),
            ));
        }
        if self.root.username.is_empty() || self.root.username.len() > 50 {
            return Err(ConfigError::Invalid(
                "root.username must be 1-50 bytes".into(),
            ));
        }
        if self.root.password.len() > 100 {
            return Err(ConfigError::Invalid(
                "root.password must be at most 100 bytes".into(),
            ));
        }
        if self.system.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("system.path must not be empty".into()));
        }
        let dedup = &self.message_deduplication;
        if !(1..=DeduplicationConfig::MAX_ENTRIES).contains(&dedup.max_entries) {
            return Err(ConfigError::Invalid(format!(
                "message_deduplication.max_entries must be 1-{}",
                DeduplicationConfig::MAX_ENTRIES
            )));
        }
        if dedup.expiry.0.is_some_and(|d| d.0.is_zero()) {
            return Err(ConfigError::Invalid(
                "message_deduplication.expiry must be above zero, or \"none\"".into(),
            ));
        }
        if self.consumer_group.rebalancing_check_interval.0.is_zero() {
            return Err(ConfigError::Invalid(
                "consumer_group.rebalancing_check_interval must be above zero".into(),
            ));
        }
        self.validate_tiering()
    }

    fn validate_tiering(&self) -> Result<(), ConfigError> {
        let target = self.tier_target()?;
        if matches!(target, Some(TierTarget::S3 { .. })) && !cfg!(feature = "s3") {
            return Err(ConfigError::Invalid(
                "tiering to S3 needs a broker built with the `s3` feature".into(),
            ));
        }
        let l2 = &self.tiering.l2;
        let l3 = &self.tiering.l3;
        if !l2.enabled && target.is_none() {
            return Err(ConfigError::Invalid(
                "tiering.l2.enabled = false leaves no tier that can hold data: set an L3 bucket \
                 (tiering.l3.bucket) or directory, or keep L2 on"
                    .into(),
            ));
        }
        if !l2.enabled && (l2.local_retention.0.is_some() || l2.local_max_size.0.is_some()) {
            return Err(ConfigError::Invalid(
                "tiering.l2.local_retention and local_max_size bound local copies, but \
                 tiering.l2.enabled = false keeps none: remove them, or keep L2 on"
                    .into(),
            ));
        }
        if l3.seal_after.0.is_some() && target.is_none() {
            return Err(ConfigError::Invalid(
                "tiering.l3.seal_after seals segments for the object store, but no L3 is \
                 configured (tiering.l3.bucket or directory)"
                    .into(),
            ));
        }
        if target.is_none() && (l2.local_retention.0.is_some() || l2.local_max_size.0.is_some()) {
            return Err(ConfigError::Invalid(
                "tiering.l2.local_retention and local_max_size evict segments that L3 holds, but \
                 no L3 is configured (tiering.l3.bucket or directory)"
                    .into(),
            ));
        }
        if l3.upload_concurrency == 0 || l3.upload_concurrency > 64 {
            return Err(ConfigError::Invalid(
                "tiering.l3.upload_concurrency must be between 1 and 64".into(),
            ));
        }
        if l3.read_ahead.0 > l3.cache_size.0 {
            return Err(ConfigError::Invalid(
                "tiering.l3.read_ahead must not exceed tiering.l3.cache_size".into(),
            ));
        }
        Ok(())
    }

    /// Where L3 is, if anywhere: `[tiering.l3]` (a bucket, or a directory) or the seed's
    /// `[data_maintenance.archiver]` — not both.
    pub fn tier_target(&self) -> Result<Option<TierTarget>, ConfigError> {
        let l3 = &self.tiering.l3;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if l3.prefix.split('/').any(|part| part == "..") {
            return invalid("tiering.l3.prefix must not contain '..'");
        }
        let archiver = &self.data_maintenance.archiver;
        let from_l3 = match (l3.bucket.is_empty(), l3.directory.as_os_str().is_empty()) {
            (true, true) => None,
            (false, false) => {
                return invalid("set tiering.l3.bucket or tiering.l3.directory, not both")
            }
            (false, true) => {
                if l3.access_key_id.is_empty() != l3.secret_access_key.is_empty() {
                    return invalid(
                        "tiering.l3.access_key_id and secret_access_key must be set together",
                    );
                }
                if l3.region.is_empty() {
                    return invalid("tiering.l3.region must not be empty");
                }
                Some(TierTarget::S3 {
                    settings: iggy_tiering::S3Settings {
                        bucket: l3.bucket.clone(),
                        region: l3.region.clone(),
                        endpoint: l3.endpoint.clone(),
                        force_path_style: l3.force_path_style,
                        access_key_id: l3.access_key_id.clone(),
                        secret_access_key: l3.secret_access_key.clone(),
                    },
                    prefix: l3.prefix.clone(),
                })
            }
            (true, false) => Some(TierTarget::Directory {
                path: l3.directory.clone(),
                prefix: l3.prefix.clone(),
            }),
        };
        if !archiver.enabled {
            return Ok(from_l3);
        }
        if from_l3.is_some() {
            return invalid(
                "data_maintenance.archiver and tiering.l3 both configure the object store: use one",
            );
        }
        match archiver.kind {
            ArchiverKind::Disk if archiver.disk.path.as_os_str().is_empty() => {
                invalid("data_maintenance.archiver.kind = \"disk\" needs disk.path")
            }
            ArchiverKind::Disk => Ok(Some(TierTarget::Directory {
                path: archiver.disk.path.clone(),
                prefix: l3.prefix.clone(),
            })),
            ArchiverKind::S3 if archiver.s3.bucket.is_empty() => {
                invalid("data_maintenance.archiver.kind = \"s3\" needs s3.bucket")
            }
            ArchiverKind::S3 => {
                let s3 = &archiver.s3;
                Ok(Some(TierTarget::S3 {
                    settings: iggy_tiering::S3Settings {
                        bucket: s3.bucket.clone(),
                        region: if s3.region.is_empty() {
                            "us-east-1".into()
                        } else {
                            s3.region.clone()
                        },
                        endpoint: s3.endpoint.clone(),
                        // The seed's archiver has no such key; servers reached at a custom
                        // endpoint (MinIO and the like) mostly need path-style addressing.
                        force_path_style: !s3.endpoint.is_empty(),
                        access_key_id: s3.key_id.clone(),
                        secret_access_key: s3.key_secret.clone(),
                    },
                    prefix: l3.prefix.clone(),
                }))
            }
        }
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `IGGY_<SECTION>_<KEY>` variables. A variable naming a known section but an unknown
/// key is an error (a typo would otherwise be silently ignored); other `IGGY_*` variables belong
/// to someone else and are left alone.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let name = iggy_contract::env::canonical_broker_variable(&name).into_owned();
        let Some(rest) = name.strip_prefix("IGGY_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section_name, key)) = table.keys().find_map(|s| {
            lower
                .strip_prefix(&format!("{s}_"))
                .map(|k| (s.clone(), k.to_owned()))
        }) else {
            continue;
        };
        let Some(toml::Value::Table(section)) = table.get_mut(&section_name) else {
            continue;
        };
        // A key of a nested section (`IGGY_TELEMETRY_LOGS_ENDPOINT` → [telemetry.logs]
        // endpoint) when the section has no key of that name itself.
        let nested = match section.get(&key) {
            Some(_) => None,
            None => nested_key(section, &key),
        };
        let (section, key, section_name) = match nested {
            Some((sub, rest)) => match section.get_mut(&sub) {
                Some(toml::Value::Table(inner)) => (inner, rest, format!("{section_name}.{sub}")),
                _ => continue,
            },
            None => (section, key, section_name),
        };
        let env_error = |reason: String| ConfigError::Env {
            name: name.clone(),
            value: if is_secret_key(&key) {
                "<redacted>".into()
            } else {
                value.clone()
            },
            reason,
        };
        let typed = match section.get(&key) {
            None | Some(toml::Value::Table(_)) => {
                return Err(env_error(format!(
                    "no key '{key}' in section [{section_name}]"
                )))
            }
            Some(toml::Value::Integer(_)) => toml::Value::Integer(
                value
                    .trim()
                    .parse()
                    .map_err(|_| env_error("expected an integer".into()))?,
            ),
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                value
                    .trim()
                    .parse()
                    .map_err(|_| env_error("expected true or false".into()))?,
            ),
            Some(_) => toml::Value::String(value.clone()),
        };
        section.insert(key, typed);
    }
    Ok(())
}

/// Whether a key's value is never shown: passwords, secret keys, the cluster's secret.
fn is_secret_key(key: &str) -> bool {
    key.contains("password") || key.contains("secret")
}

/// The nested section `key` starts with (`logs_endpoint` → `logs`, `endpoint`), if any.
fn nested_key(section: &toml::Table, key: &str) -> Option<(String, String)> {
    section.iter().find_map(|(name, value)| {
        let rest = key.strip_prefix(name.as_str())?.strip_prefix('_')?;
        value.is_table().then(|| (name.clone(), rest.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_a_local_single_node() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config.tcp.address.to_string(), "127.0.0.1:8090");
        assert_eq!(config.http.address.to_string(), "127.0.0.1:3000");
        assert_eq!(config.system.path, PathBuf::from("local_data"));
        assert_eq!(config.storage.fsync, FsyncPolicy::Never);
        assert_eq!(config.storage.segment_size, ByteSize(1 << 30));
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "[storage]\nfsync = \"always\"\nsegment_size = 8192\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("IGGY_STORAGE_FSYNC", "250ms"),
                ("IGGY_TCP_ADDRESS", "0.0.0.0:9000"),
                ("IGGY_SYSTEM_PATH", "/data"),
                ("IGGY_ROOT_PASSWORD", "s3cret"),
                ("IGGY_UNRELATED_THING", "ignored"),
                ("IGGY_TELEMETRY_ENABLED", "true"),
                ("IGGY_TELEMETRY_TRACES_TRANSPORT", "http"),
                ("IGGY_TELEMETRY_METRICS_ENDPOINT", "http://collector:4317"),
            ]),
        )
        .unwrap();
        assert!(config.telemetry.enabled);
        assert_eq!(config.telemetry.traces.transport, Transport::Http);
        assert_eq!(config.telemetry.logs.transport, Transport::Grpc);
        assert_eq!(config.telemetry.metrics.endpoint, "http://collector:4317");
        let unknown = Config::load(None, env(&[("IGGY_TELEMETRY_LOGS_ENDPIONT", "x")]));
        assert!(
            matches!(unknown, Err(ConfigError::Env { ref reason, .. }) if reason.contains("[telemetry.logs]")),
            "{unknown:?}"
        );
        assert_eq!(
            config.storage.fsync,
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert_eq!(config.storage.segment_size, ByteSize(8192));
        assert_eq!(config.tcp.address.port(), 9000);
        assert_eq!(config.system.path, PathBuf::from("/data"));
        assert_eq!(config.root.password, "s3cret");
    }

    #[test]
    fn bad_values_name_what_is_wrong() {
        let err = Config::load(None, env(&[("IGGY_STORAGE_FSYNC", "sometimes")])).unwrap_err();
        assert!(err.to_string().contains("fsync must be"), "{err}");
        let err = Config::load(None, env(&[("IGGY_STORAGE_FSYNCC", "always")])).unwrap_err();
        assert!(err.to_string().contains("IGGY_STORAGE_FSYNCC"), "{err}");
        let err = Config::load(None, env(&[("IGGY_TCP_ADDRESS", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
        let err =
            Config::load(None, env(&[("IGGY_STORAGE_SEGMENT_SIZE", "3 parsecs")])).unwrap_err();
        assert!(err.to_string().contains("parsecs"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(&file, "[storage]\nfsink = \"always\"\n").unwrap();
        let err = Config::load(Some(&file), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("fsink"), "{err}");
    }

    #[test]
    fn passwords_are_never_printed() {
        let err = Config::load(None, env(&[("IGGY_ROOT_PASSWORDX", "hunter2")])).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let config = Config::load(None, env(&[("IGGY_ROOT_PASSWORD", "hunter2")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn the_effective_configuration_shows_every_key_but_no_secret() {
        let config = Config::load(
            None,
            env(&[
                ("IGGY_ROOT_PASSWORD", "hunter2"),
                ("IGGY_REPLICATION_SECRET", "ring-secret"),
                ("IGGY_TIERING_L3_SECRET_ACCESS_KEY", "s3-secret"),
                ("IGGY_TIERING_L3_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("IGGY_TCP_ADDRESS", "127.0.0.1:9100"),
            ]),
        )
        .unwrap();
        let text = config.effective_redacted();
        for secret in ["hunter2", "ring-secret", "s3-secret"] {
            assert!(!text.contains(secret), "{secret} printed in:\n{text}");
        }
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["tcp"]["address"].as_str(), Some("127.0.0.1:9100"));
        assert_eq!(table["root"]["password"].as_str(), Some("<redacted>"));
        assert_eq!(
            table["tiering"]["l3"]["access_key_id"].as_str(),
            Some("AKIDEXAMPLE")
        );
        // Every section of the defaults is there, not only those that were set.
        let defaults: toml::Table = DEFAULT_CONFIG.parse().unwrap();
        for section in defaults.keys() {
            assert!(table.contains_key(section), "[{section}] missing");
        }
    }

    #[test]
    fn retention_limits_parse() {
        let config = Config::load(
            None,
            env(&[
                ("IGGY_RETENTION_MESSAGE_EXPIRY", "7d"),
                ("IGGY_RETENTION_MAX_TOPIC_SIZE", "10 GiB"),
                ("IGGY_RETENTION_CLEANER_INTERVAL", "500ms"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.retention.message_expiry,
            Limit(Some(HumanDuration(Duration::from_secs(7 * 86400))))
        );
        assert_eq!(
            config.retention.max_topic_size,
            Limit(Some(ByteSize(10 << 30)))
        );
        assert_eq!(
            config.retention.cleaner_interval,
            HumanDuration(Duration::from_millis(500))
        );
        let defaults = Config::load(None, Vec::new()).unwrap();
        assert_eq!(defaults.retention.message_expiry, Limit(None));
        assert_eq!(defaults.retention.max_topic_size, Limit(None));
        assert!(Config::load(None, env(&[("IGGY_RETENTION_MESSAGE_EXPIRY", "soon")])).is_err());
    }

    #[test]
    fn tiering_reads_the_operators_variables_and_the_archiver_alias() {
        let config = Config::load(
            None,
            env(&[
                ("IGGY_TIERING_S3_BUCKET", "segments"),
                ("IGGY_TIERING_S3_ENDPOINT", "http://s3:9000"),
                ("IGGY_TIERING_S3_FORCE_PATH_STYLE", "true"),
                ("IGGY_TIERING_S3_PREFIX", "iggy/u-1/"),
                ("IGGY_TIERING_S3_ACCESS_KEY_ID", "AKIA"),
                ("IGGY_TIERING_S3_SECRET_ACCESS_KEY", "hunter2"),
                ("IGGY_TIERING_LOCAL_RETENTION", "30s"),
                ("IGGY_TIERING_L2_ENABLED", "true"),
            ]),
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let Some(TierTarget::S3 { settings, prefix }) = config.tier_target().unwrap() else {
            panic!("S3 expected");
        };
        assert_eq!(settings.bucket, "segments");
        assert!(settings.force_path_style);
        assert_eq!(prefix, "iggy/u-1/");
        assert_eq!(
            config.tiering.l2.local_retention,
            Limit(Some(HumanDuration(Duration::from_secs(30))))
        );
        let bad = Config::load(
            None,
            env(&[("IGGY_TIERING_S3_SECRET_ACCESS_KEYS", "hunter2")]),
        )
        .unwrap_err();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "[data_maintenance.archiver]\nenabled = true\nkind = \"disk\"\n\
             [data_maintenance.archiver.disk]\npath = \"/archive\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), Vec::new()).unwrap();
        assert_eq!(
            config.tier_target().unwrap(),
            Some(TierTarget::Directory {
                path: "/archive".into(),
                prefix: String::new()
            })
        );
        let both = Config::load(Some(&file), env(&[("IGGY_TIERING_S3_BUCKET", "b")]));
        assert!(both.unwrap_err().to_string().contains("use one"));
    }

    #[test]
    fn objects_only_bounds_segments_and_seals_by_time_by_default() {
        let on = Config::load(None, env(&[])).unwrap();
        assert_eq!(on.segment_size(), on.storage.segment_size.0);
        assert_eq!(on.seal_after(), None);
        assert_eq!(on.tiering.l1.size, ByteSize(64 << 20));
        let l1 = Config::load(None, env(&[("IGGY_TIERING_L1_SIZE", "0")])).unwrap();
        assert_eq!(l1.tiering.l1.size, ByteSize(0));

        let off = [
            ("IGGY_TIERING_L2_ENABLED", "false"),
            ("IGGY_TIERING_S3_BUCKET", "b"),
        ];
        let objects_only = Config::load(None, env(&off)).unwrap();
        assert_eq!(
            objects_only.segment_size(),
            Config::OBJECTS_ONLY_SEGMENT_SIZE
        );
        assert_eq!(
            objects_only.seal_after(),
            Some(Config::OBJECTS_ONLY_SEAL_AFTER)
        );
        let mut vars = off.to_vec();
        vars.push(("IGGY_TIERING_L3_SEAL_AFTER", "2s"));
        vars.push(("IGGY_STORAGE_SEGMENT_SIZE", "65536"));
        let set = Config::load(None, env(&vars)).unwrap();
        assert_eq!(set.seal_after(), Some(Duration::from_secs(2)));
        assert_eq!(set.segment_size(), 65536);
    }

    #[test]
    fn tier_combinations_that_cannot_hold_data_are_refused() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("IGGY_TIERING_L2_ENABLED", "false")],
                "no tier that can hold data",
            ),
            (
                &[
                    ("IGGY_TIERING_L2_ENABLED", "false"),
                    ("IGGY_TIERING_S3_BUCKET", "b"),
                    ("IGGY_TIERING_LOCAL_RETENTION", "1d"),
                ],
                "keeps none",
            ),
            (
                &[
                    ("IGGY_TIERING_S3_BUCKET", "b"),
                    ("IGGY_TIERING_L3_SEAL_AFTER", "0s"),
                ],
                "must be positive",
            ),
            (
                &[("IGGY_TIERING_L3_SEAL_AFTER", "10s")],
                "no L3 is configured",
            ),
            (
                &[("IGGY_TIERING_LOCAL_RETENTION", "1d")],
                "no L3 is configured",
            ),
            (
                &[
                    ("IGGY_TIERING_S3_BUCKET", "b"),
                    ("IGGY_TIERING_S3_ACCESS_KEY_ID", "a"),
                ],
                "set together",
            ),
            (
                &[
                    ("IGGY_TIERING_S3_BUCKET", "b"),
                    ("IGGY_TIERING_L3_DIRECTORY", "/x"),
                ],
                "not both",
            ),
            (&[("IGGY_TIERING_S3_PREFIX", "a/../b")], "'..'"),
        ];
        for (vars, expected) in cases {
            let err = Config::load(None, env(vars)).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn byte_sizes_parse_units() {
        assert_eq!(parse_byte_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert!(parse_byte_size("MiB").is_err());
    }
}
