//! SGX and TDX verification through Intel DCAP, with the pure-Rust `dcap-qvl`.

use crate::claims::Claims;
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};
use crate::verifier::Verifier;

/// Verifies DCAP quotes (SGX v3, TDX v4 and v5) against Intel's root CA.
#[derive(Debug)]
pub struct DcapVerifier {
    tee: TeeKind,
}

impl DcapVerifier {
    /// A verifier for `tee` (SGX or TDX) with Intel's production root.
    pub fn new(tee: TeeKind) -> Self {
        Self { tee }
    }
}

impl Verifier for DcapVerifier {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn verify(&self, _evidence: &Evidence, _collateral: &Collateral, _now: u64) -> Result<Claims> {
        Err(AttestError::VerificationFailed {
            tee: self.tee,
            reason: "not implemented yet".into(),
        })
    }
}
