//! Verifiers: from evidence, collateral and a time to typed claims.
//!
//! One trait, one module per TEE. A verifier proves that evidence is genuine and current (signatures,
//! certificate chains, revocation, collateral dates, TCB level); it does not judge measurements,
//! which is the policy's job (`crate::policy`).

pub mod azure;
pub mod dcap;
mod dcap_cache;
pub mod nitro;
pub mod sim;
pub mod snp;

use crate::claims::Claims;
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};

/// Verifies one TEE's evidence.
pub trait Verifier: Send + Sync + std::fmt::Debug {
    /// The TEE this verifier reads.
    fn tee(&self) -> TeeKind;

    /// Verifies `evidence` with `collateral` as of `now` (unix seconds), and returns what it proves.
    fn verify(&self, evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims>;
}

/// The verifier for a TEE kind, with the vendors' production roots.
pub fn verifier_for(tee: TeeKind) -> Box<dyn Verifier> {
    match tee {
        TeeKind::Sgx | TeeKind::Tdx => Box::new(dcap::DcapVerifier::new(tee)),
        TeeKind::Snp => Box::new(snp::SnpVerifier::new()),
        TeeKind::Sim => Box::new(sim::SimVerifier),
        TeeKind::AzureSnp => Box::new(azure::AzureVerifier::snp()),
        TeeKind::AzureTdx => Box::new(azure::AzureVerifier::tdx()),
        TeeKind::Nitro => Box::new(nitro::NitroVerifier::new()),
    }
}

/// Verifies evidence with the verifier its TEE kind calls for.
pub fn verify(evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims> {
    let verifier = verifier_for(evidence.tee);
    let claims = verifier.verify(evidence, collateral, now)?;
    if claims.tee != evidence.tee {
        return Err(AttestError::WrongTee {
            expected: evidence.tee,
            found: claims.tee,
        });
    }
    Ok(claims)
}
