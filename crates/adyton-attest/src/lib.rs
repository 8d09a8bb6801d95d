//! Attestation for Adyton: evidence from TEEs, verification against vendor roots, and policies.
//!
//! - [`attested_tls`]: the binding of a TLS key to evidence, and its certificate extension.
//! - [`attester`]: evidence over 64 bytes of report data, from Gramine SGX, configfs-tsm (TDX,
//!   SNP) or the insecure SIM TEE.
//! - [`verifier`]: evidence, collateral and a time in; typed [`Claims`] out.
//! - [`composite`]: CPU evidence with the NVIDIA GPUs it drives, each bound to its report data.
//! - [`gpu`]: NVIDIA confidential GPUs' SPDM reports, checked against NVIDIA's signed RIMs.
//! - [`policy`]: reference values per TEE, and the decision.
//! - [`collateral`]: Intel and AMD collateral from a bundle file.
//! - [`pccs`]: collateral over HTTP from a PCCS, Intel's PCS or AMD's KDS, cached.
//! - [`provider`]: the one way every verifier gets collateral for evidence, from those sources.
//! - [`seal`]: sealing keys bound to this TEE's identity (Gramine SGX, SEV-SNP, SIM), for
//!   offline devices.
//!
//! Verification takes the current time as a parameter, so that recorded real evidence is tested at
//! a fixed date.

#![forbid(unsafe_code)]

pub mod attested_tls;
pub mod attester;
pub mod claims;
pub mod collateral;
pub mod composite;
mod error;
pub mod evidence;
pub mod gpu;
pub mod pccs;
pub mod policy;
pub mod provider;
pub mod seal;
pub mod sim;
pub mod verifier;

pub use claims::{Claims, TcbStatus, TeeClaims};
pub use collateral::Collateral;
pub use error::{AttestError, Result};
pub use evidence::{Evidence, TeeKind, REPORT_DATA_LEN};
pub use policy::Policy;
pub use provider::{CollateralProvider, ProviderConfig};
pub use seal::{sealer_for, Sealer, SealingKey, SealingPolicy};
