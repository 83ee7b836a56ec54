//! What can go wrong talking to an object store, classified so that logs, metrics and the
//! broker's health name a cause an operator can act on.

/// A failed object-store request. Messages name the store and key, never credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} does not exist in {store}")]
    NotFound { store: String, key: String },
    #[error("bucket of {store} does not exist")]
    NoBucket { store: String },
    #[error("access to {store} denied (check the credentials): {detail}")]
    Denied { store: String, detail: String },
    #[error("{store} unreachable: {detail}")]
    Unreachable { store: String, detail: String },
    #[error("{store} answered HTTP {status} for {key}: {detail}")]
    Failed {
        store: String,
        key: String,
        status: u16,
        detail: String,
    },
    #[error("object {key} in {store} is damaged: {reason}")]
    Corrupt {
        store: String,
        key: String,
        reason: String,
    },
    #[error("I/O error on {path}: {detail}")]
    Io { path: String, detail: String },
}

impl StoreError {
    /// Worth trying again later: the store may come back, credentials may be fixed. A missing
    /// object or a damaged one will not heal by waiting.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            StoreError::NotFound { .. } | StoreError::Corrupt { .. }
        )
    }

    /// A short label for metrics and health (`unreachable`, `denied`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::NoBucket { .. } => "no_bucket",
            StoreError::Denied { .. } => "denied",
            StoreError::Unreachable { .. } => "unreachable",
            StoreError::Failed { .. } => "failed",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Io { .. } => "io",
        }
    }
}
