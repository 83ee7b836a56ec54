//! Iggy's snapshot command (GetSnapshotFile): a ZIP of diagnostics for whoever debugs a broker
//! through a client (`iggy snapshot`), without a shell on its host.
//!
//! Iggy's server fills the archive by running `ls`, `ps`, `top` and `cat` on its host. This
//! broker runs no programs: its container image has none, it runs as a user that should not
//! spawn them, and what they would print is in `/proc` and the data directory, which it reads
//! itself. The entries keep Iggy's names, so tools and habits carry over; what each holds is
//! this broker's (docs/broker.md, "Diagnostic snapshots"):
//!
//! | code | entry | holds |
//! |---|---|---|
//! | 1 | `filesystem_overview.txt` | the data directory's files, sizes, times; the filesystem's room |
//! | 2 | `process_list.txt` | the processes this broker can see (in a pod: its own container's) |
//! | 3 | `resource_usage.txt` | this process's memory, descriptors, budgets, per-thread CPU, and `/admin/status` |
//! | 4 | `test.txt` | `test` |
//! | 5 | `server_logs.txt` | the last console lines (a bounded tail kept in memory) |
//! | 6 | `server_config.txt` | the configuration in force, secrets redacted |
//!
//! Code 100 asks for every entry but the test one, as in Iggy.

mod sections;
mod time;
pub mod zip;

use crate::broker::Broker;
use crate::error::BrokerError;
use std::path::PathBuf;
use std::time::SystemTime;

/// Console lines a broker keeps for `server_logs.txt`.
pub const RECENT_LOG_BYTES: usize = 1 << 20;

/// One entry of the archive, by the SDK's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    FilesystemOverview = 1,
    ProcessList = 2,
    ResourceUsage = 3,
    Test = 4,
    ServerLogs = 5,
    ServerConfig = 6,
}

/// The code that asks for every section but [`Section::Test`].
const ALL: u8 = 100;

impl Section {
    const EVERY: [Section; 5] = [
        Section::FilesystemOverview,
        Section::ProcessList,
        Section::ResourceUsage,
        Section::ServerLogs,
        Section::ServerConfig,
    ];

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Section::FilesystemOverview,
            2 => Section::ProcessList,
            3 => Section::ResourceUsage,
            4 => Section::Test,
            5 => Section::ServerLogs,
            6 => Section::ServerConfig,
            _ => return None,
        })
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Section::FilesystemOverview => "filesystem_overview.txt",
            Section::ProcessList => "process_list.txt",
            Section::ResourceUsage => "resource_usage.txt",
            Section::Test => "test.txt",
            Section::ServerLogs => "server_logs.txt",
            Section::ServerConfig => "server_config.txt",
        }
    }
}

/// What a snapshot request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: zip::Method,
    pub sections: Vec<Section>,
}

impl Request {
    /// Reads the SDK's codes. Compression 1 (stored) and 2 (deflated, the CLI's default) are
    /// made here; bzip2, zstd, LZMA and XZ (3–6) are valid requests this broker does not
    /// serve. Unknown codes, and "all" beside other kinds, are invalid, as in Iggy.
    pub fn parse(compression: u8, kinds: &[u8]) -> Result<Self, BrokerError> {
        let method = match compression {
            1 => zip::Method::Stored,
            2 => zip::Method::Deflated,
            3..=6 => return Err(BrokerError::SnapshotCompressionUnavailable(compression)),
            other => {
                return Err(BrokerError::InvalidSnapshotRequest(format!(
                    "unknown compression code {other}"
                )))
            }
        };
        let sections = if kinds.contains(&ALL) {
            if kinds.len() > 1 {
                return Err(BrokerError::InvalidSnapshotRequest(
                    "'all' cannot be combined with other snapshot types".into(),
                ));
            }
            Section::EVERY.to_vec()
        } else {
            let mut sections = Vec::with_capacity(kinds.len());
            for &code in kinds {
                let section = Section::from_code(code).ok_or_else(|| {
                    BrokerError::InvalidSnapshotRequest(format!("unknown snapshot type {code}"))
                })?;
                // A kind named twice is one entry: two entries of one name confuse unzip.
                if !sections.contains(&section) {
                    sections.push(section);
                }
            }
            sections
        };
        Ok(Self { method, sections })
    }
}

/// What the archive needs of the broker, copied out at once, so that the slow part (reading
/// `/proc`, walking the data directory, compressing) can run on a blocking thread of its own.
#[derive(Debug, Clone)]
pub struct Facts {
    pub data: PathBuf,
    /// Microseconds since the epoch when the broker started.
    pub started_at: u64,
    pub config: String,
    pub logs: Option<iggy_telemetry::recent::Tail>,
    /// Request memory reserved, and the budget.
    pub memory: (u64, u64),
    pub clients: usize,
    /// What `GET /admin/status` answers (role, view, commit, caught up), as JSON.
    pub status: String,
}

impl Facts {
    pub fn of(broker: &Broker) -> Self {
        Self {
            data: broker.config.system.path.clone(),
            started_at: broker.started_at,
            config: broker.config.effective_redacted(),
            logs: broker.recent_logs.get().map(|recent| recent.tail()),
            memory: broker.memory.usage(),
            clients: broker.clients.count(),
            status: serde_json::to_string_pretty(&broker.admin_status())
                .unwrap_or_else(|e| format!("cannot be shown: {e}")),
        }
    }
}

/// Builds the archive. Blocking: run it off the runtime's workers.
pub fn archive(facts: &Facts, request: &Request) -> Result<Vec<u8>, BrokerError> {
    let mut zip = zip::ZipWriter::new(SystemTime::now());
    for &section in &request.sections {
        let text = match section {
            Section::FilesystemOverview => sections::filesystem_overview(&facts.data),
            Section::ProcessList => sections::process_list(),
            Section::ResourceUsage => sections::resource_usage(facts),
            Section::Test => "test\n".to_owned(),
            Section::ServerLogs => sections::server_logs(facts.logs.as_ref()),
            Section::ServerConfig => facts.config.clone(),
        };
        zip.add(section.file_name(), text.as_bytes(), request.method)
            .map_err(|e| BrokerError::SnapshotFailed(e.to_string()))?;
    }
    zip.finish()
        .map_err(|e| BrokerError::SnapshotFailed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_means_every_section_but_the_test() {
        let request = Request::parse(2, &[ALL]).unwrap();
        assert_eq!(request.method, zip::Method::Deflated);
        assert_eq!(request.sections, Section::EVERY.to_vec());
    }

    #[test]
    fn kinds_keep_their_order_once_each() {
        let request = Request::parse(1, &[6, 4, 6, 1]).unwrap();
        assert_eq!(request.method, zip::Method::Stored);
        assert_eq!(
            request.sections,
            vec![
                Section::ServerConfig,
                Section::Test,
                Section::FilesystemOverview
            ]
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let code = |compression, kinds: &[u8]| Request::parse(compression, kinds).unwrap_err();
        assert!(matches!(
            code(4, &[1]),
            BrokerError::SnapshotCompressionUnavailable(4)
        ));
        assert!(matches!(
            code(0, &[1]),
            BrokerError::InvalidSnapshotRequest(_)
        ));
        assert!(matches!(
            code(7, &[1]),
            BrokerError::InvalidSnapshotRequest(_)
        ));
        assert!(matches!(
            code(2, &[7]),
            BrokerError::InvalidSnapshotRequest(_)
        ));
        assert!(matches!(
            code(2, &[ALL, 1]),
            BrokerError::InvalidSnapshotRequest(_)
        ));
    }
}
