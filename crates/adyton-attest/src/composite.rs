//! Composite evidence: a CPU TEE's evidence with the evidence of the NVIDIA GPUs it drives.
//!
//! Binding: GPU `i`'s SPDM nonce is [`gpu_nonce`]`(report_data, i)`, derived from the CPU
//! evidence's verified report data, so every GPU report answers the same 64 bytes that bind the
//! CPU evidence (to a key broker's nonce and a TEE key) and cannot be replayed under other CPU
//! evidence or at another index.
//!
//! Policy: a policy without `[nvidia_gpu]` ignores GPU evidence (it is not even verified); with
//! it, every attached GPU must verify, and the table's requirements (count, versions, RIM ids)
//! must hold.

use std::sync::Arc;

use serde::Serialize;

use crate::attester::Attester;
use crate::claims::Claims;
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_GPUS, REPORT_DATA_LEN};
use crate::gpu::attester::GpuAttester;
use crate::gpu::{gpu_nonce, GpuClaims, GpuEvidence, GpuVerifier};
use crate::policy::Policy;

/// A CPU TEE's attester with the GPUs it drives: its evidence is the CPU's over the report data,
/// with every GPU's report over the nonce [`gpu_nonce`] derives from that report data for the
/// GPU's index. A GPU that cannot attest fails the whole evidence: evidence never leaves out a
/// GPU the machine has.
#[derive(Debug)]
pub struct CompositeAttester {
    cpu: Arc<dyn Attester>,
    gpus: Arc<dyn GpuAttester>,
}

impl CompositeAttester {
    /// `cpu`'s evidence with `gpus`' reports attached.
    pub fn new(cpu: Arc<dyn Attester>, gpus: Arc<dyn GpuAttester>) -> Self {
        Self { cpu, gpus }
    }
}

impl Attester for CompositeAttester {
    fn tee(&self) -> TeeKind {
        self.cpu.tee()
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence> {
        let count = self.gpus.count()?;
        if usize::try_from(count).map_or(true, |n| n > MAX_GPUS) {
            return Err(AttestError::TeeUnavailable {
                tee: self.cpu.tee(),
                reason: format!(
                    "{count} GPUs: evidence carries at most {MAX_GPUS} (docs/evidence.md)"
                ),
            });
        }
        let mut evidence = self.cpu.evidence(report_data)?;
        evidence.gpus = (0..count)
            .map(|index| self.gpus.evidence(index, &gpu_nonce(report_data, index)))
            .collect::<Result<_>>()?;
        Ok(evidence)
    }
}

/// One GPU's outcome, for audit lines: what it proved, or why it was refused. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuOutcome {
    /// The GPU's index in the evidence.
    pub index: u32,
    /// Whether it verified.
    pub verified: bool,
    /// Its driver version, when it verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// Its VBIOS version, when it verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vbios_version: Option<String>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What composite evidence proves: the CPU's claims and every GPU's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CompositeClaims {
    /// The CPU TEE's claims.
    pub cpu: Claims,
    /// The GPUs' claims, in index order (empty when the policy has no `[nvidia_gpu]`).
    pub gpus: Vec<GpuClaims>,
}

/// Verifies every GPU of `gpus` against the CPU's verified `cpu` claims, each with its derived
/// nonce, then `policy`'s `[nvidia_gpu]` table. Returns the GPU claims (empty without the table)
/// and one outcome per GPU for the audit line; the result is an error when any GPU fails.
pub fn verify_gpus(
    cpu: &Claims,
    gpus: &[GpuEvidence],
    verifier: &GpuVerifier,
    policy: &Policy,
    now: u64,
) -> (Result<Vec<GpuClaims>>, Vec<GpuOutcome>) {
    let Some(gpu_policy) = &policy.nvidia_gpu else {
        return (Ok(Vec::new()), Vec::new());
    };
    let mut outcomes = Vec::with_capacity(gpus.len());
    let mut claims = Vec::with_capacity(gpus.len());
    let mut first_error: Option<AttestError> = None;
    for (index, evidence) in (0u32..).zip(gpus) {
        let nonce = gpu_nonce(&cpu.report_data, index);
        match verifier.verify(evidence, &nonce, now) {
            Ok(c) => {
                outcomes.push(GpuOutcome {
                    index,
                    verified: true,
                    driver_version: Some(c.driver_version.clone()),
                    vbios_version: Some(c.vbios_version.clone()),
                    reason: None,
                });
                claims.push(c);
            }
            Err(e) => {
                outcomes.push(GpuOutcome {
                    index,
                    verified: false,
                    driver_version: None,
                    vbios_version: None,
                    reason: Some(e.to_string()),
                });
                first_error.get_or_insert(GpuFailed::wrap(index, e));
            }
        }
    }
    if let Some(e) = first_error {
        return (Err(e), outcomes);
    }
    match gpu_policy.evaluate(&claims) {
        Ok(()) => (Ok(claims), outcomes),
        Err(e) => (Err(e), outcomes),
    }
}

/// Names the GPU in a verification error, keeping the error's kind.
struct GpuFailed;

impl GpuFailed {
    fn wrap(index: u32, error: AttestError) -> AttestError {
        match error {
            AttestError::MalformedEvidence { reason } => AttestError::MalformedEvidence {
                reason: format!("GPU {index}: {reason}"),
            },
            AttestError::BadSignature { what } => AttestError::BadSignature {
                what: format!("GPU {index}: {what}"),
            },
            AttestError::CertificateChain { reason } => AttestError::CertificateChain {
                reason: format!("GPU {index}: {reason}"),
            },
            AttestError::CollateralMissing { what } => AttestError::CollateralMissing {
                what: format!("GPU {index}: {what}"),
            },
            AttestError::CollateralExpired { what } => AttestError::CollateralExpired {
                what: format!("GPU {index}: {what}"),
            },
            AttestError::GpuMeasurementMismatch { indices } => {
                AttestError::GpuMeasurementMismatch {
                    indices: format!("{indices} (GPU {index})"),
                }
            }
            other => other,
        }
    }
}

/// Verifies composite evidence: the CPU evidence as [`crate::verifier::verify`] does, its report
/// data against `expected_report_data`, then every GPU with its derived nonce, then the whole
/// `policy` (the CPU's table and `[nvidia_gpu]`).
pub fn verify_composite(
    evidence: &Evidence,
    collateral: &Collateral,
    gpus: &GpuVerifier,
    policy: &Policy,
    expected_report_data: &[u8; crate::REPORT_DATA_LEN],
    now: u64,
) -> Result<CompositeClaims> {
    let cpu = crate::verifier::verify(evidence, collateral, now)?;
    cpu.expect_report_data(expected_report_data)?;
    policy.evaluate(&cpu, now)?;
    let (gpu_claims, _) = verify_gpus(&cpu, &evidence.gpus, gpus, policy, now);
    Ok(CompositeClaims {
        gpus: gpu_claims?,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attester::sim::SimAttester;
    use crate::attester::Attester;
    use crate::gpu::attester::{FakeGpuAttester, FakeRimSigner, GpuAttester};

    #[test]
    fn the_gpu_nonce_is_pinned() {
        // Python: hashlib.sha512(b"adyton gpu nonce v1" + bytes(range(64)) + (3).to_bytes(4, "big"))
        let mut report_data = [0u8; 64];
        for (i, b) in report_data.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            hex::encode(gpu_nonce(&report_data, 3)),
            "c73d88ce6421be85959e62c6653b6c65b08ccc6584e050cedd4394b199087342"
        );
        assert_ne!(gpu_nonce(&report_data, 0), gpu_nonce(&report_data, 1));
    }

    fn policy(gpu: &str) -> Result<Policy> {
        Policy::from_toml(&format!(
            "[sim]\nmeasurement = [\"{}\"]\n{gpu}",
            hex::encode([0x4D; 48])
        ))
    }

    #[test]
    fn policy_versions_are_checked_when_read() {
        assert!(policy("[nvidia_gpu]\nmin_driver_version = \"550.144.03\"").is_ok());
        assert!(policy("[nvidia_gpu]\nmin_vbios_version = \"96.00.5E.00.01\"").is_ok());
        assert!(policy("[nvidia_gpu]\nmin_driver_version = \"5x0\"").is_err());
        assert!(policy("[nvidia_gpu]\nmin_vbios_version = \"96..5E\"").is_err());
        assert!(policy("[nvidia_gpu]\ncc = true").is_err());
        let p = policy("[nvidia_gpu]").and_then(|p| p.nvidia_gpu.ok_or(AttestError::NoTeeDetected));
        assert!(p.is_ok_and(|g| g.cc_mode && !g.required && g.count.is_none()));
    }

    #[test]
    fn composite_evidence_verifies_end_to_end() -> Result<()> {
        let values: Vec<[u8; 48]> = (0u8..8).map(|i| [i; 48]).collect();
        let gpus = FakeGpuAttester::new(2, values.clone())?;
        let signer = FakeRimSigner::new()?;
        let rim = signer.rim("GH100", gpus.driver_version(), &[(2, values[2])])?;
        let verifier =
            GpuVerifier::with_test_roots(gpus.root_pem().as_bytes(), signer.root_pem().as_bytes())?
                .with_rims([rim])?;
        let report_data = [7u8; 64];
        let cpu = Arc::new(SimAttester::with_measurement([3; 32], [0x4D; 48])?);
        let composite = CompositeAttester::new(cpu, Arc::new(gpus));
        assert_eq!(composite.tee(), TeeKind::Sim);
        let mut evidence = composite.evidence(&report_data)?;
        assert_eq!(evidence.gpus.len(), 2);
        let policy = policy("[nvidia_gpu]\ncount = 2\nmin_driver_version = \"550\"")?;
        let claims = verify_composite(
            &evidence,
            &Collateral::none(),
            &verifier,
            &policy,
            &report_data,
            1_800_000_000,
        )?;
        assert_eq!(claims.gpus.len(), 2);

        // Swapped GPUs answer each other's nonces.
        evidence.gpus.swap(0, 1);
        let swapped = verify_composite(
            &evidence,
            &Collateral::none(),
            &verifier,
            &policy,
            &report_data,
            1_800_000_000,
        );
        assert!(
            matches!(swapped, Err(AttestError::ReportDataMismatch { .. })),
            "{swapped:?}"
        );
        // Other CPU report data: every GPU nonce differs.
        evidence.gpus.swap(0, 1);
        let other = verify_composite(
            &evidence,
            &Collateral::none(),
            &verifier,
            &policy,
            &[8u8; 64],
            1_800_000_000,
        );
        assert!(other.is_err());
        Ok(())
    }

    /// GPUs that attest with errors, or too many of them.
    #[derive(Debug)]
    struct BrokenGpus {
        count: u32,
    }

    impl GpuAttester for BrokenGpus {
        fn count(&self) -> Result<u32> {
            Ok(self.count)
        }

        fn evidence(&self, index: u32, _nonce: &[u8; 32]) -> Result<GpuEvidence> {
            Err(AttestError::TeeUnavailable {
                tee: TeeKind::Sim,
                reason: format!("NVIDIA GPU: GPU {index}: not in CC mode"),
            })
        }
    }

    #[test]
    fn a_gpu_that_cannot_attest_fails_the_evidence() -> Result<()> {
        let cpu: Arc<dyn Attester> = Arc::new(SimAttester::with_measurement([3; 32], [0x4D; 48])?);
        let broken = CompositeAttester::new(Arc::clone(&cpu), Arc::new(BrokenGpus { count: 1 }));
        match broken.evidence(&[1; 64]) {
            Err(AttestError::TeeUnavailable { reason, .. }) => {
                assert!(reason.contains("GPU 0"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let too_many = CompositeAttester::new(
            Arc::clone(&cpu),
            Arc::new(BrokenGpus {
                count: MAX_GPUS as u32 + 1,
            }),
        );
        match too_many.evidence(&[1; 64]) {
            Err(AttestError::TeeUnavailable { reason, .. }) => {
                assert!(reason.contains("at most 8"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // No GPUs: the CPU's evidence alone.
        let none = CompositeAttester::new(cpu, Arc::new(BrokenGpus { count: 0 }));
        assert!(none.evidence(&[1; 64])?.gpus.is_empty());
        Ok(())
    }
}
