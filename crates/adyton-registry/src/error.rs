//! The registry's errors: the blob stores' and the registry's own.

/// What a [`crate::blob::BlobStore`] call failed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// A key outside the store's key syntax.
    #[error("`{key}` is not a valid object key")]
    InvalidKey { key: String },

    /// No object under the key.
    #[error("no object `{key}`")]
    NotFound { key: String },

    /// An object exists and the write may not replace it.
    #[error("object `{key}` already exists")]
    AlreadyExists { key: String },

    /// The data went over a size limit; nothing was stored.
    #[error("the data exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },

    /// The data stream failed (the client went away mid-upload); nothing was stored.
    #[error("the upload was interrupted: {reason}")]
    Interrupted { reason: String },

    /// The local filesystem failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The object store (S3) failed.
    #[error("object store: {source}")]
    ObjectStore {
        #[source]
        source: object_store::Error,
    },

    /// The store's configuration is unusable.
    #[error("invalid store configuration: {reason}")]
    Config { reason: String },
}

impl BlobError {
    /// Whether the store's disk (or its owner's quota) is full: `ENOSPC` or `EDQUOT`.
    pub fn is_storage_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match self {
            Self::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
            }
            _ => false,
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// What a registry operation failed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A model id outside `[A-Za-z0-9._-]{1,128}`, or starting with `.`.
    #[error("`{id}` is not a model id (1 to 128 of letters, digits, `.`, `_`, `-`, not starting with `.`)")]
    InvalidId { id: String },

    /// Model info that is not acceptable.
    #[error("invalid model info: {reason}")]
    InvalidInfo { reason: String },

    /// No such model or blob.
    #[error("no {what} `{id}`")]
    NotFound { what: &'static str, id: String },

    /// The blob exists already: blobs are immutable (delete the model first).
    #[error("blob `{id}` already exists; blobs are immutable: delete the model to replace it")]
    BlobExists { id: String },

    /// The model info names no URL and no blob was uploaded under its id.
    #[error("model `{id}` has no `url` and no blob was uploaded under its id")]
    NoBlob { id: String },

    /// An upload over the size limit; nothing was stored.
    #[error("the blob exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },

    /// A range outside the blob.
    #[error("the range lies outside the blob ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },

    /// The client went away mid-upload; nothing was stored.
    #[error("the upload was interrupted: {reason}")]
    Interrupted { reason: String },

    /// The store's disk is full: nothing was stored, and the same request may succeed once space
    /// is freed (no restart needed).
    #[error("storage full: {source}")]
    StorageFull {
        #[source]
        source: BlobError,
    },

    /// The store failed.
    #[error("storage failed: {source}")]
    Storage {
        #[source]
        source: BlobError,
    },

    /// A stored record does not parse.
    #[error("the stored record of `{id}` is corrupt: {reason}")]
    CorruptRecord { id: String, reason: String },
}

impl From<BlobError> for RegistryError {
    fn from(source: BlobError) -> Self {
        match source {
            BlobError::TooLarge { limit } => Self::TooLarge { limit },
            BlobError::Interrupted { reason } => Self::Interrupted { reason },
            source if source.is_storage_full() => Self::StorageFull { source },
            source => Self::Storage { source },
        }
    }
}
