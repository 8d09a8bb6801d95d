//! The one error type of the attestation crate.

use std::io;
use std::path::PathBuf;

use crate::evidence::TeeKind;

/// Everything that can go wrong while producing, verifying or judging evidence.
///
/// Each security outcome is a variant of its own, so that tests can assert it and logs can name it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// Evidence bytes or their serialisation could not be read.
    #[error("malformed evidence: {reason}")]
    MalformedEvidence {
        /// What is wrong.
        reason: String,
    },

    /// A TEE name that is not one of the TEE kinds.
    #[error("unknown TEE `{name}`: expected sgx, tdx, snp, sim, azure-snp, azure-tdx or nitro")]
    UnknownTee {
        /// The name given.
        name: String,
    },

    /// Evidence of one TEE was handed to a verifier or policy of another.
    #[error("wrong TEE: expected {expected}, the evidence is {found}")]
    WrongTee {
        /// The TEE that was expected.
        expected: TeeKind,
        /// The TEE of the evidence.
        found: TeeKind,
    },

    /// The requested TEE interface is not present or does not work on this machine.
    #[error("{tee} is not available here: {reason}")]
    TeeUnavailable {
        /// The TEE that was asked for.
        tee: TeeKind,
        /// Why it cannot be used.
        reason: String,
    },

    /// A sealing policy name that is not `exact-build` or `signer`.
    #[error("unknown sealing policy `{name}`: expected exact-build or signer")]
    UnknownSealingPolicy {
        /// The name given.
        name: String,
    },

    /// The TEE has no sealing key in hardware, so it cannot keep a key across an offline restart.
    #[error("{tee} has no sealing key in hardware: offline provisioning needs SGX or SEV-SNP; a {tee} server keeps using online key release (--pull)")]
    SealingUnsupported {
        /// The TEE asked for.
        tee: TeeKind,
    },

    /// `auto` found no TEE. Adyton never falls back to SIM on its own.
    #[error("no TEE detected on this machine (looked for Gramine's /dev/attestation, configfs-tsm, an Azure vTPM's HCL report on /dev/tpmrm0 and AWS Nitro's /dev/nsm); name the TEE with --tee, or use --tee sim explicitly for the insecure simulator")]
    NoTeeDetected,

    /// configfs-tsm's `generation` changed while the report was made: another writer interfered,
    /// so the report may not be over our report data.
    #[error(
        "configfs-tsm report entry was changed concurrently (generation {before} became {after})"
    )]
    GenerationChanged {
        /// Generation after writing inblob.
        before: u64,
        /// Generation after reading outblob.
        after: u64,
    },

    /// Reading or writing a TEE interface file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },

    /// A signature over the evidence did not verify.
    #[error("bad signature: {what}")]
    BadSignature {
        /// Which signature.
        what: String,
    },

    /// A certificate chain did not lead to the vendor's root.
    #[error("certificate chain rejected: {reason}")]
    CertificateChain {
        /// Why.
        reason: String,
    },

    /// Collateral needed for verification is missing.
    #[error("collateral missing: {what}")]
    CollateralMissing {
        /// What is missing.
        what: String,
    },

    /// The collateral source (PCCS, PCS, KDS) could not be reached or answered with a server
    /// error, and nothing valid was cached: no verdict on the evidence, which may be sent again
    /// once the source is back.
    #[error("collateral source unreachable: {what}")]
    CollateralUnavailable {
        /// The source, the platform and the failure.
        what: String,
    },

    /// Collateral is outside its validity period at the verification time.
    #[error("collateral expired or not yet valid: {what}")]
    CollateralExpired {
        /// Which item, with its dates.
        what: String,
    },

    /// The vendor verification library refused the evidence for a reason without its own variant.
    #[error("{tee} verification failed: {reason}")]
    VerificationFailed {
        /// The TEE.
        tee: TeeKind,
        /// The library's reason.
        reason: String,
    },

    /// The evidence's report data is not the value the caller expected.
    #[error("report data mismatch: expected {expected}, the evidence carries {found}")]
    ReportDataMismatch {
        /// Hex of the expected value.
        expected: String,
        /// Hex of the value in the evidence.
        found: String,
    },

    /// Azure: the hardware report's report data is not the hash of the HCL report's runtime data,
    /// so the attestation key in that runtime data is not the one the hardware vouches for.
    #[error("runtime data mismatch: its hash is {expected}, the hardware report carries {found}")]
    RuntimeDataMismatch {
        /// Hex of the runtime data's hash, zero-padded to 64 bytes.
        expected: String,
        /// Hex of the hardware report's report data.
        found: String,
    },

    /// A TPM quote's PCR digest is not the digest of the PCR values given with it.
    #[error("PCR digest mismatch: the quote carries {expected}, the PCR values hash to {found}")]
    PcrDigestMismatch {
        /// Hex of the digest in the signed quote.
        expected: String,
        /// Hex of the digest of the PCR values.
        found: String,
    },

    /// The policy refused the evidence; `field` names the reference value that differs.
    #[error("policy denied: {field} is {found}, the policy requires {expected}")]
    PolicyDenied {
        /// The policy field.
        field: String,
        /// What the policy requires.
        expected: String,
        /// What the evidence shows.
        found: String,
    },

    /// A GPU's measurements differ from its reference integrity manifests at these indices.
    #[error("GPU measurements do not match the RIM at indices {indices}")]
    GpuMeasurementMismatch {
        /// The mismatched RIM indices, comma-separated.
        indices: String,
    },

    /// The TCB is not up to date and the policy enforces it.
    #[error("TCB out of date: status {status}, and the policy enforces an up-to-date TCB")]
    TcbOutOfDate {
        /// The TCB status.
        status: String,
    },

    /// The TEE runs in debug mode, whose memory the host can read.
    #[error("debug mode is enabled: the host can read this TEE's memory")]
    DebugEnabled,

    /// The policy has no table for this TEE.
    #[error("the policy does not name {tee}, so {tee} evidence is refused")]
    TeeNotInPolicy {
        /// The TEE of the evidence.
        tee: TeeKind,
    },

    /// A policy file could not be read.
    #[error("bad policy: {reason}")]
    BadPolicy {
        /// Why.
        reason: String,
    },

    /// The evidence was made too long before the verification time, or claims a time after it
    /// beyond the allowed clock skew (an AWS Nitro document's `timestamp`).
    #[error("evidence time refused: {what}")]
    EvidenceTime {
        /// The evidence's time, the verification time and the bound.
        what: String,
    },
    /// The Confidential Containers attestation agent (its REST API) gave no usable evidence:
    /// unreachable, an HTTP error, too slow, too large, or not the agent's evidence JSON.
    #[error("attestation agent at {url}: {reason}")]
    AttestationAgent {
        /// The agent's base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },

    /// The crypto library failed in a way no input explains.
    #[error("crypto library failure: {0}")]
    Crypto(&'static str),
}

impl AttestError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        AttestError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        AttestError::MalformedEvidence {
            reason: reason.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = AttestError> = std::result::Result<T, E>;
