//! Adyton's wire contracts, written once for both sides of each exchange (`design.md`, "Layers":
//! the formats layer). Serde types and pure checks; no I/O, no HTTP, no attestation.
//!
//! - [`transfer`]: the key broker's transfer request body and its answer (CNAP's and Intel's
//!   KBS's JSON), and [`transfer_report_data`], the SHA-512 binding of a TEE's public key (and a
//!   nonce) that evidence must carry.
//! - [`model_info`]: [`ModelInfo`], the registry's model info in CNAP's schema.
//! - [`provision`]: the files of offline provisioning, [`ProvisionRequest`] and
//!   [`ProvisionResponse`], with their `format` constants.
//! - [`id`]: the syntax of model ids and of provisioning ids.
//! - [`token`]: [`BearerToken`], the constant-time check of a service's bearer token.
//!
//! What needs attestation (the evidence inside a provisioning request, the TEE kinds) is checked
//! by the crates above this one; here a TEE is a name and evidence is bytes.

#![forbid(unsafe_code)]

mod error;
pub mod id;
pub mod model_info;
pub mod provision;
pub mod token;
pub mod transfer;

pub use error::ProtoError;
pub use model_info::ModelInfo;
pub use provision::{ProvisionRequest, ProvisionResponse};
pub use token::BearerToken;
pub use transfer::{transfer_report_data, TransferAnswer, TransferBody, REPORT_DATA_LEN};
