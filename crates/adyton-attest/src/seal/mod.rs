//! Sealing: 32-byte keys bound to this TEE's identity, so that what an offline device stores
//! (flow D: its model keys) opens again after a restart with no network, and is useless on any
//! other machine or with any other code.
//!
//! One trait, one module per TEE, as for the attesters:
//!
//! - [`gramine`]: SGX sealing keys exposed by Gramine under `/dev/attestation/keys/`.
//! - [`snp`]: the SEV-SNP firmware's derived key (`SNP_GET_DERIVED_KEY` through `/dev/sev-guest`).
//! - [`sim`]: the insecure SIM TEE, from its key file's seed.
//!
//! TDX has no sealing key in hardware, so [`sealer_for`] refuses it.
//!
//! Every backend's secret goes through HKDF-SHA256 together with the TEE, the policy and the
//! caller's context, so that keys for different purposes never coincide.

pub mod gramine;
pub mod sim;
pub mod snp;

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::attester::{self, AttesterPaths, TeeChoice};
use crate::error::{AttestError, Result};
use crate::evidence::TeeKind;

/// Length of a sealing key in bytes.
pub const SEALING_KEY_LEN: usize = 32;

/// The HKDF salt of every sealing key: it versions the derivation.
const HKDF_SALT: &[u8] = b"adyton/sealing/v1";

/// Which identity a sealing key is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SealingPolicy {
    /// This exact build: SGX MRENCLAVE, the SNP launch measurement, the SIM measurement. An
    /// update of the code cannot open what the previous build sealed.
    ExactBuild,
    /// Any build of the same signer: SGX MRSIGNER, the SNP family and image ids of the ID block.
    /// SIM builds are unsigned: under this policy every build on the same SIM device gets the key.
    Signer,
}

impl SealingPolicy {
    /// Both policies.
    pub const ALL: [SealingPolicy; 2] = [SealingPolicy::ExactBuild, SealingPolicy::Signer];

    /// The name in files and on the command line: `exact-build` or `signer`.
    pub fn as_str(self) -> &'static str {
        match self {
            SealingPolicy::ExactBuild => "exact-build",
            SealingPolicy::Signer => "signer",
        }
    }
}

impl fmt::Display for SealingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SealingPolicy {
    type Err = AttestError;

    fn from_str(name: &str) -> Result<Self> {
        SealingPolicy::ALL
            .into_iter()
            .find(|policy| policy.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| AttestError::UnknownSealingPolicy {
                name: name.chars().take(32).collect(),
            })
    }
}

/// A 32-byte key bound to a TEE identity. It is zeroized when dropped, and its `Debug` output
/// is redacted.
pub struct SealingKey(Zeroizing<[u8; SEALING_KEY_LEN]>);

impl SealingKey {
    /// Takes key bytes, for [`Sealer`] implementations outside this crate (test doubles).
    pub fn new(bytes: Zeroizing<[u8; SEALING_KEY_LEN]>) -> Self {
        Self(bytes)
    }

    /// The key bytes. Never log or store them.
    pub fn as_bytes(&self) -> &[u8; SEALING_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

/// Derives sealing keys from the TEE this code runs in.
pub trait Sealer: Send + Sync + fmt::Debug {
    /// The TEE whose identity the keys are bound to.
    fn tee(&self) -> TeeKind;

    /// A 32-byte key bound to this TEE's identity under `policy`; `context` (domain separation,
    /// e.g. `b"adyton/model-key/v1"`) is mixed in through HKDF-SHA256.
    fn sealing_key(&self, policy: SealingPolicy, context: &[u8]) -> Result<SealingKey>;
}

/// The sealer of `choice`. `Auto` detects the TEE like [`attester::attester_for`] and never
/// falls back to SIM; TDX is refused, because it has no sealing key in hardware.
pub fn sealer_for(choice: TeeChoice, paths: &AttesterPaths) -> Result<Box<dyn Sealer>> {
    let kind = match choice {
        TeeChoice::Auto => attester::detect(paths).ok_or(AttestError::NoTeeDetected)?,
        TeeChoice::Kind(kind) => kind,
        // A pod reaches its TEE only through the attestation agent, which gives evidence, not
        // sealing keys.
        TeeChoice::Coco => {
            return Err(AttestError::AttestationAgent {
                url: paths.coco.url.clone(),
                reason: "the agent gives evidence, not sealing keys: offline mode is not \
                         available in a Confidential Containers pod; use online key release \
                         (--pull)"
                    .into(),
            })
        }
    };
    Ok(match kind {
        TeeKind::Sgx => Box::new(gramine::GramineSealer::open(&paths.gramine)?),
        TeeKind::Snp => Box::new(snp::SnpSealer::open(&paths.sev_guest)?),
        TeeKind::Sim => {
            let attester = attester::sim::SimAttester::from_key_file(&paths.sim_key)?;
            Box::new(sim::SimSealer::new(&attester))
        }
        TeeKind::Tdx | TeeKind::Nitro => return Err(AttestError::SealingUnsupported { tee: kind }),
        // The vTPM could seal, but its keys are the paravisor's, not the hardware's.
        tee @ (TeeKind::AzureSnp | TeeKind::AzureTdx) => {
            return Err(AttestError::SealingUnsupported { tee })
        }
    })
}

/// HKDF-SHA256 of a TEE secret: the info names the TEE and the policy, then the identity
/// `binding` the backend mixes in itself (the SIM measurement) and the caller's `context`, each
/// length-prefixed so that no two inputs share an encoding.
fn derive_key(
    tee: TeeKind,
    policy: SealingPolicy,
    secret: &[u8],
    binding: &[u8],
    context: &[u8],
) -> Result<SealingKey> {
    let mut info = Vec::with_capacity(64 + binding.len() + context.len());
    for part in [
        tee.as_str().as_bytes(),
        policy.as_str().as_bytes(),
        binding,
        context,
    ] {
        let len = u32::try_from(part.len())
            .map_err(|_| AttestError::Crypto("sealing context longer than 4 GiB"))?;
        info.extend_from_slice(&len.to_be_bytes());
        info.extend_from_slice(part);
    }
    let mut key = Zeroizing::new([0u8; SEALING_KEY_LEN]);
    Salt::new(HKDF_SHA256, HKDF_SALT)
        .extract(secret)
        .expand(&[&info], HKDF_SHA256)
        .and_then(|okm| okm.fill(key.as_mut_slice()))
        .map_err(|_| AttestError::Crypto("HKDF-SHA256 refused a 32-byte output"))?;
    Ok(SealingKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for policy in SealingPolicy::ALL {
            assert_eq!(policy.to_string().parse::<SealingPolicy>().unwrap(), policy);
        }
        assert_eq!(
            " Exact-Build ".parse::<SealingPolicy>().unwrap(),
            SealingPolicy::ExactBuild
        );
        let err = "mrenclave".parse::<SealingPolicy>().unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("exact-build") && message.contains("signer"),
            "{message}"
        );
        assert_eq!(
            serde_json::to_string(&SealingPolicy::ExactBuild).unwrap(),
            "\"exact-build\""
        );
        assert_eq!(
            serde_json::from_str::<SealingPolicy>("\"signer\"").unwrap(),
            SealingPolicy::Signer
        );
    }

    #[test]
    fn derivation_separates_every_input() {
        let base = || {
            derive_key(
                TeeKind::Sim,
                SealingPolicy::ExactBuild,
                &[1; 32],
                b"m",
                b"c",
            )
            .unwrap()
        };
        let reference = *base().as_bytes();
        assert_eq!(reference, *base().as_bytes(), "derivation is deterministic");
        let variants = [
            derive_key(
                TeeKind::Snp,
                SealingPolicy::ExactBuild,
                &[1; 32],
                b"m",
                b"c",
            ),
            derive_key(TeeKind::Sim, SealingPolicy::Signer, &[1; 32], b"m", b"c"),
            derive_key(
                TeeKind::Sim,
                SealingPolicy::ExactBuild,
                &[2; 32],
                b"m",
                b"c",
            ),
            derive_key(
                TeeKind::Sim,
                SealingPolicy::ExactBuild,
                &[1; 32],
                b"n",
                b"c",
            ),
            derive_key(
                TeeKind::Sim,
                SealingPolicy::ExactBuild,
                &[1; 32],
                b"m",
                b"d",
            ),
            // The length prefixes keep `binding | context` from sliding into each other.
            derive_key(
                TeeKind::Sim,
                SealingPolicy::ExactBuild,
                &[1; 32],
                b"mc",
                b"",
            ),
        ];
        for variant in variants {
            assert_ne!(*variant.unwrap().as_bytes(), reference);
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = SealingKey::new(Zeroizing::new([0x41; 32]));
        let shown = format!("{key:?}");
        assert_eq!(shown, "SealingKey(<redacted>)");
    }
}
