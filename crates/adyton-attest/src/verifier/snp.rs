//! SEV-SNP verification with the `sev` crate (pure-Rust crypto).

use crate::claims::Claims;
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};
use crate::verifier::Verifier;

/// Verifies SNP attestation reports against AMD's ARK.
#[derive(Debug, Default)]
pub struct SnpVerifier;

impl SnpVerifier {
    /// A verifier with AMD's built-in roots.
    pub fn new() -> Self {
        Self
    }
}

impl Verifier for SnpVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn verify(&self, _evidence: &Evidence, _collateral: &Collateral, _now: u64) -> Result<Claims> {
        Err(AttestError::VerificationFailed {
            tee: TeeKind::Snp,
            reason: "not implemented yet".into(),
        })
    }
}
