//! The SIM verifier: checks a SIM report's signature. It proves nothing about hardware, and its
//! claims say so (`insecure: true`).

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};

use crate::claims::{Claims, SimClaims, TcbStatus, TeeClaims};
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};
use crate::sim::SimReport;
use crate::verifier::Verifier;

/// Verifies SIM reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimVerifier;

impl Verifier for SimVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn verify(&self, evidence: &Evidence, _collateral: &Collateral, _now: u64) -> Result<Claims> {
        if evidence.tee != TeeKind::Sim {
            return Err(AttestError::WrongTee {
                expected: TeeKind::Sim,
                found: evidence.tee,
            });
        }
        let report = SimReport::parse(&evidence.quote)?;
        UnparsedPublicKey::new(&ED25519, report.public_key)
            .verify(&report.signed_bytes(), &report.signature)
            .map_err(|_| AttestError::BadSignature {
                what: "SIM report signature".into(),
            })?;
        Ok(Claims {
            tee: TeeKind::Sim,
            insecure: true,
            report_data: report.report_data,
            tcb_status: TcbStatus::NotApplicable,
            advisory_ids: Vec::new(),
            debug: false,
            collateral_expires_at: None,
            collateral_issued_at: None,
            collateral_grace_secs: None,
            details: TeeClaims::Sim(SimClaims {
                measurement: report.measurement,
                signer: report.public_key.to_vec(),
            }),
        })
    }
}
