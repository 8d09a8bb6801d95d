//! Typed clients of Adyton's services, over HTTP only: this crate never links a service crate.
//!
//! So far: [`KbsClient`], the key broker's admin API (`docs/kbs.md`, "Admin API"), and
//! [`RegistryClient`], the model registry (`docs/registry.md`), whose downloads resume after a
//! dropped connection ([`ResumingReader`]). The clients are blocking (`ureq` on rustls with
//! aws-lc-rs, Mozilla's roots compiled in), so callers need no async runtime.
//!
//! [`attested_tls`] holds the rustls verifier that accepts an inference server only on attestation
//! evidence bound to its TLS key, and [`ServerClient`] is the inference server's client built on
//! it: it verifies the server (and, optionally, fresh evidence over its own nonce) before it sends
//! anything, then speaks the Open Inference Protocol only to the key it verified (`reqwest`'s
//! blocking client on that rustls configuration).
//!
//! [`offline`] holds the files of offline provisioning: a device's [`ProvisionRequest`] and the
//! key broker's [`ProvisionResponse`], which [`KbsClient::offline_transfer`] obtains.

#![forbid(unsafe_code)]

pub mod attested_tls;
mod error;
mod http;
pub mod kbs;
pub mod offline;
pub mod registry;
pub mod server;
mod tensor;

pub use error::ClientError;
pub use kbs::{KbsClient, KeyInfo, KeyInformation, PolicyInfo, Token, TransferAnswer};
pub use offline::{ProvisionRequest, ProvisionResponse};
pub use registry::{BlobSummary, ModelInfo, RegistryClient, ResumingReader, RetryPolicy};
pub use server::{
    fetch_served_collateral, ConnectOptions, InferTensor, ModelMetadata, ServerClient,
    TensorMetadata,
};
