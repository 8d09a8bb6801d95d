//! The inference server: it runs inside the TEE, loads ONNX models from bytes in memory and serves
//! them over the Open Inference Protocol (KServe v2).
//!
//! - [`runtime`]: the inference engine trait, tensors, model signatures and input checks, and the
//!   engines (tract, and ONNX Runtime loaded at run time).
//! - [`pull`]: flow B, an encrypted model pulled from the registry with its key released by the
//!   key broker to this TEE.
//! - [`blob`]: an encrypted model blob opened into memory, for [`pull`] and [`device`].
//! - [`device`]: flow D, an offline device's state: models provisioned once by file, their keys
//!   sealed to this TEE, served after a restart with no network.
//! - [`protocol`]: infer request and response bodies (JSON and binary tensors).
//! - [`repository`]: the models being served, with versions, loading states and settings.
//! - [`batching`]: dynamic batching: requests to one model concatenated along the batch axis,
//!   run once and split back by rows.
//! - [`metrics`]: Prometheus metrics under Triton's names.
//! - [`service`]: [`Server`], the use cases (inference, upload, pull, delete, evidence,
//!   readiness), each returning a typed result or a [`ServerError`] ([`error`]); no HTTP.
//! - [`http`]: the Open Inference Protocol and Adyton's own endpoints (axum); the only module
//!   that knows axum.
//! - [`config`]: `server.toml` and the serve flags, merged and checked into a `ServerConfig`.
//! - [`tls`]: the attested TLS identity: a key made in the TEE, its certificate carrying evidence.

#![forbid(unsafe_code)]

pub mod batching;
pub mod blob;
pub mod config;
pub mod device;
pub mod error;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod pull;
pub mod repository;
pub mod runtime;
pub mod service;
pub mod tls;

pub use error::ServerError;
pub use service::Server;
