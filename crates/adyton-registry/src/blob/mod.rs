//! Where blobs and model info records live: one [`BlobStore`] trait, one module per backend.
//!
//! - [`fs::FsStore`]: a directory on the local filesystem (the default);
//! - [`s3::S3Store`]: an S3-compatible bucket, through the `object_store` crate.
//!
//! Keys are `/`-separated paths of segments made of `[A-Za-z0-9._-]`, none starting with `.` (so
//! that no key names a temporary file, `.` or `..`). Every write is atomic: a reader sees the old
//! object, no object, or the whole new one, never a part. Objects are stored and returned as they
//! are; the store never interprets their bytes.

pub mod fs;
pub mod s3;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::error::BlobError;

/// A stream of an object's bytes, or of a request body on its way to the store.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// An object being read: `total` is the object's whole length, whatever range `stream` holds.
pub struct BlobRead {
    /// The whole object's length in bytes.
    pub total: u64,
    /// The bytes asked for.
    pub stream: ByteStream,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The object's key.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
}

/// Blob storage. Both backends are async, so the trait is too; it is object-safe, and the
/// registry holds an `Arc<dyn BlobStore>` without knowing which backend it has.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Writes `data` under `key`, atomically, and returns the length written. An error from the
    /// stream (an interrupted upload, a size limit) aborts the write and is returned as is; nothing
    /// is stored then. With `overwrite` false an existing object is [`BlobError::AlreadyExists`].
    async fn put(&self, key: &str, data: ByteStream, overwrite: bool) -> Result<u64, BlobError>;

    /// Reads `key`, whole or the bytes `range` (already checked to lie within the object).
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobRead, BlobError>;

    /// The length of `key`, or [`BlobError::NotFound`].
    async fn head(&self, key: &str) -> Result<u64, BlobError>;

    /// Removes `key`; `false` if there was nothing to remove (S3 cannot tell, and says `true`).
    async fn delete(&self, key: &str) -> Result<bool, BlobError>;

    /// The objects directly under the directory `prefix` (no trailing `/`), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError>;

    /// Writes a small object held in memory.
    async fn put_bytes(&self, key: &str, bytes: Bytes, overwrite: bool) -> Result<u64, BlobError> {
        let stream = futures_util::stream::once(async move { Ok(bytes) }).boxed();
        self.put(key, stream, overwrite).await
    }

    /// Reads a small object into memory, refusing one over `limit` bytes.
    async fn get_bytes(&self, key: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let read = self.get(key, None).await?;
        if read.total > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let mut out = Vec::with_capacity(usize::try_from(read.total).unwrap_or(0));
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > limit {
                return Err(BlobError::TooLarge { limit });
            }
        }
        Ok(out)
    }
}

/// Which store to open (the `[store]` table of `registry.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory on the local filesystem.
    Fs {
        /// The directory; made (mode 0700) if missing.
        data_dir: std::path::PathBuf,
    },
    /// An S3-compatible bucket. Credentials come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` if set), never from a file.
    S3(s3::S3Config),
}

/// Opens the configured store.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn BlobStore>, BlobError> {
    Ok(match config {
        StoreConfig::Fs { data_dir } => Arc::new(fs::FsStore::open(data_dir)?),
        StoreConfig::S3(s3) => Arc::new(s3::S3Store::open(s3)?),
    })
}

/// Checks a key's syntax: see the module's documentation.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty() && key.len() <= 512 && key.split('/').all(segment_ok);
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey {
            key: key.escape_debug().to_string(),
        })
    }
}

fn segment_ok(segment: &str) -> bool {
    !segment.is_empty()
        && !segment.starts_with('.')
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["blobs/a", "info/m-1.json", "x", "a/b/c_d.e"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".a", "a/.tmp", "a/..", "a/b c", "a\\b", "é",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
