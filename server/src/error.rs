//! Store errors: what went wrong, as a value that maps one-to-one onto a gRPC status.
//!
//! Every message names the offending field or object (app, shuffle, partition, map, file) so that an
//! operator or a client author can act on it without reading server logs.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A request field is malformed or out of range. `field` is the protobuf field path.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },

    /// The app or shuffle does not exist (never registered, unregistered, or its lease expired).
    #[error("{0}")]
    NotFound(String),

    /// The request contradicts the current state (conflicting registration, wrong commit counts, ...).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The server is over a limit that frees up by itself; retry after the hint.
    #[error("{message} (retry after {retry_after_ms} ms)")]
    Overloaded {
        message: String,
        retry_after_ms: u32,
    },

    /// A disk has no room left for this data.
    #[error("no space left: {0}")]
    NoSpace(String),

    /// An app is over its stored-bytes quota.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),

    /// The server's in-memory metadata (block index, commit records) is at `metadata_bytes_max`.
    #[error("metadata full: {0}")]
    MetadataFull(String),

    /// Stored data failed its checksum or is missing: it is never served.
    #[error("DATA_CORRUPTED: {0}")]
    DataCorrupted(String),

    /// The data lives on a disk that failed, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),

    /// An I/O error that is not the client's fault.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The same error again, for each of several requests that one failed operation answers (an
    /// I/O error keeps its kind and message).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::InvalidArgument { field, message } => StoreError::InvalidArgument {
                field,
                message: message.clone(),
            },
            StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
            StoreError::FailedPrecondition(m) => StoreError::FailedPrecondition(m.clone()),
            StoreError::Overloaded {
                message,
                retry_after_ms,
            } => StoreError::Overloaded {
                message: message.clone(),
                retry_after_ms: *retry_after_ms,
            },
            StoreError::NoSpace(m) => StoreError::NoSpace(m.clone()),
            StoreError::QuotaExceeded(m) => StoreError::QuotaExceeded(m.clone()),
            StoreError::MetadataFull(m) => StoreError::MetadataFull(m.clone()),
            StoreError::DataCorrupted(m) => StoreError::DataCorrupted(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return StoreError::NoSpace(format!("{}: {}", path.display(), source));
        }
        StoreError::Io { path, source }
    }

    /// A short label for metrics (`reason` label values).
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::InvalidArgument { .. } => "invalid_argument",
            StoreError::NotFound(_) => "not_found",
            StoreError::FailedPrecondition(_) => "failed_precondition",
            StoreError::Overloaded { .. } => "memory",
            StoreError::NoSpace(_) => "no_space",
            StoreError::QuotaExceeded(_) => "quota",
            StoreError::MetadataFull(_) => "metadata",
            StoreError::DataCorrupted(_) => "data_corrupted",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Io { .. } => "io",
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            StoreError::NotFound(_) => tonic::Status::not_found(message),
            StoreError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            StoreError::Overloaded { .. } => tonic::Status::resource_exhausted(message),
            StoreError::NoSpace(_) => tonic::Status::resource_exhausted(message),
            StoreError::QuotaExceeded(_) => tonic::Status::resource_exhausted(message),
            StoreError::MetadataFull(_) => tonic::Status::resource_exhausted(message),
            StoreError::DataCorrupted(_) => tonic::Status::data_loss(message),
            StoreError::Unavailable(_) => tonic::Status::unavailable(message),
            StoreError::Io { .. } => tonic::Status::unavailable(message),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
