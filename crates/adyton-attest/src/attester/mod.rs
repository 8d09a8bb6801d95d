//! Attesters: evidence over 64 bytes of report data, from the TEE this code runs in.
//!
//! One trait, one module per interface. The interfaces' root paths are parameters, so that tests
//! point them at directories that imitate Gramine's `/dev/attestation` and configfs-tsm.

pub mod azure;
pub mod coco;
pub mod gramine;
pub mod nitro;
mod opening;
pub mod sim;
pub mod tsm;

use std::path::PathBuf;

pub use opening::OpeningAttester;

use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};

/// Produces evidence inside a TEE.
pub trait Attester: Send + Sync + std::fmt::Debug {
    /// The TEE this attester speaks for.
    fn tee(&self) -> TeeKind;

    /// Evidence whose report data is `report_data`.
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence>;
}

/// Where the TEE interfaces live. The defaults are the real paths.
#[derive(Clone, Debug)]
pub struct AttesterPaths {
    /// Gramine's pseudo-filesystem.
    pub gramine: PathBuf,
    /// configfs-tsm's report directory.
    pub tsm_report: PathBuf,
    /// The SIM attester's key file (32-byte Ed25519 seed, created on first use).
    pub sim_key: PathBuf,
    /// The SEV-SNP guest device, whose derived keys seal on SNP (`SNP_GET_DERIVED_KEY`).
    pub sev_guest: PathBuf,
    /// The TPM device (the kernel's resource manager), whose vTPM attests Azure confidential VMs.
    pub tpm: PathBuf,
    /// The AWS Nitro Secure Module's device file.
    pub nsm: PathBuf,
    /// The Confidential Containers attestation agent's REST API, for `TeeChoice::Coco`.
    pub coco: coco::CocoOptions,
}

impl Default for AttesterPaths {
    fn default() -> Self {
        Self {
            gramine: PathBuf::from("/dev/attestation"),
            tsm_report: PathBuf::from("/sys/kernel/config/tsm/report"),
            sim_key: sim::default_key_path(),
            sev_guest: PathBuf::from("/dev/sev-guest"),
            tpm: PathBuf::from("/dev/tpmrm0"),
            nsm: PathBuf::from("/dev/nsm"),
            coco: coco::CocoOptions::default(),
        }
    }
}

/// Which TEE to attest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeeChoice {
    /// Detect the TEE of this machine; never falls back to SIM.
    Auto,
    /// This TEE, or an error if it is not available.
    Kind(TeeKind),
    /// TDX or SNP evidence through the Confidential Containers attestation agent
    /// ([`coco::CocoAttester`]), whose answer names the TEE. Never chosen by `auto`, which does
    /// not probe the network.
    Coco,
}

impl std::str::FromStr for TeeChoice {
    type Err = AttestError;

    fn from_str(text: &str) -> Result<Self> {
        if text.eq_ignore_ascii_case("auto") {
            Ok(TeeChoice::Auto)
        } else if text.eq_ignore_ascii_case("coco") {
            Ok(TeeChoice::Coco)
        } else {
            text.parse().map(TeeChoice::Kind)
        }
    }
}

/// Detects the hardware TEE of this machine: Gramine SGX first, then configfs-tsm (TDX or SNP),
/// then an Azure confidential VM's vTPM (a TPM whose HCL report NV index holds an SNP report or a
/// TD report), then an AWS Nitro Secure Module.
pub fn detect(paths: &AttesterPaths) -> Option<TeeKind> {
    if gramine::GramineAttester::probe(&paths.gramine).is_ok() {
        return Some(TeeKind::Sgx);
    }
    if let Ok(kind) = tsm::TsmAttester::probe(&paths.tsm_report) {
        return Some(kind);
    }
    if let Ok(kind) = azure::AzureAttester::probe(&paths.tpm) {
        return Some(kind);
    }
    if nitro::NitroAttester::probe(&paths.nsm).is_ok() {
        return Some(TeeKind::Nitro);
    }
    None
}

/// The attester for `choice`.
pub fn attester_for(choice: TeeChoice, paths: &AttesterPaths) -> Result<Box<dyn Attester>> {
    let kind = match choice {
        TeeChoice::Auto => detect(paths).ok_or(AttestError::NoTeeDetected)?,
        TeeChoice::Kind(kind) => kind,
        TeeChoice::Coco => return Ok(Box::new(coco::CocoAttester::open(&paths.coco)?)),
    };
    Ok(match kind {
        TeeKind::Sgx => Box::new(gramine::GramineAttester::open(&paths.gramine)?),
        TeeKind::Tdx | TeeKind::Snp => Box::new(tsm::TsmAttester::open(&paths.tsm_report, kind)?),
        TeeKind::Sim => Box::new(sim::SimAttester::from_key_file(&paths.sim_key)?),
        TeeKind::AzureSnp | TeeKind::AzureTdx => {
            Box::new(azure::AzureAttester::open(&paths.tpm, kind)?)
        }
        TeeKind::Nitro => Box::new(nitro::NitroAttester::open(&paths.nsm)?),
    })
}
