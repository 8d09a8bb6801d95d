//! Adyton's model registry (`docs/registry.md`): model info in CNAP's schema and encrypted blobs,
//! stored as they are, on the local filesystem or in S3-compatible object storage.
//!
//! - [`blob`]: the one [`blob::BlobStore`] trait, with [`blob::fs`] and [`blob::s3`];
//! - [`registry`]: the service (info records, immutable blobs, their size and SHA-256);
//! - [`range`]: the `Range` header, for resumable downloads;
//! - [`http`]: the axum router, the only module that knows HTTP.
//!
//! The registry never sees a key or a plaintext: blobs are encrypted before they arrive, and their
//! keys live in the key broker.

#![forbid(unsafe_code)]

pub mod blob;
pub mod error;
pub mod http;
pub mod range;
pub mod registry;

pub use error::{BlobError, RegistryError};
pub use registry::{BlobSummary, ModelInfo, Registry};
