//! What a verifier proves about evidence: typed claims, independent of the vendor format.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::evidence::{TeeKind, REPORT_DATA_LEN};

/// TCB status as Intel's DCAP reports it; SNP and SIM map onto it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TcbStatus {
    /// The platform is patched.
    UpToDate,
    /// Patched, but software mitigations are needed.
    SWHardeningNeeded,
    /// Patched, but the platform's configuration needs changes.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// The platform lacks security updates.
    OutOfDate,
    /// Out of date and misconfigured.
    OutOfDateConfigurationNeeded,
    /// The platform's keys are revoked.
    Revoked,
    /// TDX: the TD should be relaunched to pick up a TDX module update.
    TDRelaunchAdvised,
    /// TDX: relaunch advised, and the platform's configuration needs changes.
    TDRelaunchAdvisedConfigurationNeeded,
    /// The TEE has no TCB to judge: the simulated TEE, and AWS Nitro, whose document states none.
    NotApplicable,
    /// A status this build does not know.
    Other(String),
}

impl TcbStatus {
    /// Parses DCAP's status strings.
    pub fn from_dcap(status: &str) -> Self {
        match status {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SWHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            "TDRelaunchAdvised" => TcbStatus::TDRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
            other => TcbStatus::Other(other.chars().take(64).collect()),
        }
    }

    /// Whether the status counts as up to date for `enforce_tcb_upto_date`.
    pub fn is_up_to_date(&self) -> bool {
        matches!(self, TcbStatus::UpToDate | TcbStatus::NotApplicable)
    }

    /// The status's name.
    pub fn name(&self) -> String {
        match self {
            TcbStatus::Other(name) => name.clone(),
            other => format!("{other:?}"),
        }
    }
}

/// Claims proven about SGX evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SgxClaims {
    /// Enclave measurement.
    #[serde(with = "hex::serde")]
    pub mrenclave: [u8; 32],
    /// Hash of the enclave signer's key.
    #[serde(with = "hex::serde")]
    pub mrsigner: [u8; 32],
    /// Product id.
    pub isvprodid: u16,
    /// Security version.
    pub isvsvn: u16,
}

/// Claims proven about TDX evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdxClaims {
    /// Measurement of the initial TD contents.
    #[serde(with = "hex::serde")]
    pub mrtd: [u8; 48],
    /// Runtime measurement registers 0 to 3.
    #[serde(with = "hex_array4")]
    pub rtmr: [[u8; 48]; 4],
    /// Measurement of the TDX module.
    #[serde(with = "hex::serde")]
    pub mrseam: [u8; 48],
    /// MRCONFIGID: 48 bytes the host or the TD's owner set at TD creation (software-defined,
    /// for example the hash of a configuration the TD must run with); zero when unused.
    #[serde(with = "hex::serde")]
    pub mrconfigid: [u8; 48],
    /// MROWNER: 48 bytes naming the TD's owner, set at TD creation; zero when unused.
    #[serde(with = "hex::serde")]
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG: 48 bytes of the owner's configuration, set at TD creation; zero when
    /// unused.
    #[serde(with = "hex::serde")]
    pub mrownerconfig: [u8; 48],
    /// SVN of the TDX module (`tee_tcb_svn[0]`, the SEAM minor SVN, and `[1]`, the major).
    pub seamsvn: u16,
    /// TD attributes (bit 0: debug).
    pub td_attributes: u64,
}

/// A SEV-SNP TCB version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SnpTcb {
    /// Boot loader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

/// Claims proven about SEV-SNP evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnpClaims {
    /// Launch measurement.
    #[serde(with = "hex::serde")]
    pub measurement: [u8; 48],
    /// Data the host supplied at launch.
    #[serde(with = "hex::serde")]
    pub host_data: [u8; 32],
    /// The TCB the report was signed at.
    pub reported_tcb: SnpTcb,
    /// Guest policy (bit 19: debug allowed).
    pub policy: u64,
    /// Chip id.
    #[serde(with = "hex::serde")]
    pub chip_id: Vec<u8>,
    /// The virtual machine privilege level that requested the report (0 is the most privileged).
    pub vmpl: u32,
}

/// Claims proven about SIM evidence. SIM proves nothing about hardware.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimClaims {
    /// SHA-384 of the executable that made the report.
    #[serde(with = "hex::serde")]
    pub measurement: [u8; 48],
    /// The SIM attester's public key (Ed25519).
    #[serde(with = "hex::serde")]
    pub signer: Vec<u8>,
}

/// What an Azure vTPM quote proved: the PCR values it covers, and the attestation key that signed
/// it (the `HCLAkPub` of the HCL report's runtime data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VtpmClaims {
    /// SHA-256 PCR values the quote covers, by PCR index.
    #[serde(serialize_with = "hex_pcrs")]
    pub pcrs: BTreeMap<u8, [u8; 32]>,
    /// The attestation key's RSA modulus (big-endian).
    #[serde(with = "hex::serde")]
    pub ak_modulus: Vec<u8>,
    /// The attestation key's RSA public exponent (big-endian).
    #[serde(with = "hex::serde")]
    pub ak_exponent: Vec<u8>,
    /// The HCL report's runtime data (JSON), whose hash is the hardware report's report data.
    #[serde(skip)]
    pub runtime_data: Vec<u8>,
}

/// Claims proven about an Azure confidential VM on SEV-SNP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AzureSnpClaims {
    /// The SNP report inside the HCL report (its report data is the runtime data's hash, not the
    /// caller's report data, which the vTPM quote carries).
    pub snp: SnpClaims,
    /// The vTPM quote.
    pub vtpm: VtpmClaims,
}

/// Claims proven about an Azure confidential VM on TDX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AzureTdxClaims {
    /// The TD quote of the HCL report's TD report.
    pub tdx: TdxClaims,
    /// The vTPM quote.
    pub vtpm: VtpmClaims,
}

/// Claims proven about an AWS Nitro Enclaves attestation document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NitroClaims {
    /// The Nitro Secure Module's id (`i-<instance>-enc<enclave>`).
    pub module_id: String,
    /// The PCR bank's digest algorithm; always `SHA384` (others are refused).
    pub digest: String,
    /// When the NSM signed the document, milliseconds since the unix epoch.
    pub timestamp_ms: u64,
    /// PCR0, PCR1, ... in order (at least 16 registers, 48 bytes each). PCR0 measures the enclave
    /// image, PCR1 the kernel and boot ramfs, PCR2 the application, PCR3 the parent instance's IAM
    /// role, PCR4 the parent instance id, PCR8 the image's signing certificate.
    #[serde(with = "hex_list")]
    pub pcrs: Vec<[u8; 48]>,
    /// Whether the enclave runs in debug mode: PCR0, PCR1 and PCR2 are all zero, which the NSM
    /// reports for an enclave started with `--debug-mode` (the parent can read its console).
    pub debug_mode: bool,
    /// The document's `public_key` field, when the requester set one.
    #[serde(with = "hex_option", skip_serializing_if = "Option::is_none")]
    pub public_key: Option<Vec<u8>>,
    /// The document's `nonce` field, when the requester set one.
    #[serde(with = "hex_option", skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Vec<u8>>,
}

/// The TEE-specific part of the claims.
// The TDX claims (nine 48-byte registers) are several times the size of the others. Claims are
// made once per verification and moved a few times, so boxing them would save nothing that
// counts, and would change how every verifier and test builds them.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeClaims {
    /// SGX.
    Sgx(SgxClaims),
    /// TDX.
    Tdx(TdxClaims),
    /// SNP.
    Snp(SnpClaims),
    /// SIM.
    Sim(SimClaims),
    /// An Azure confidential VM on SEV-SNP.
    #[serde(rename = "azure-snp")]
    AzureSnp(AzureSnpClaims),
    /// An Azure confidential VM on TDX.
    #[serde(rename = "azure-tdx")]
    AzureTdx(AzureTdxClaims),
    /// AWS Nitro Enclaves.
    Nitro(NitroClaims),
}

/// Everything a verifier proved about a piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// The TEE kind.
    pub tee: TeeKind,
    /// True for SIM evidence: nothing about hardware was proven.
    pub insecure: bool,
    /// The 64 bytes the evidence binds.
    #[serde(with = "hex::serde")]
    pub report_data: [u8; REPORT_DATA_LEN],
    /// The platform's TCB status.
    pub tcb_status: TcbStatus,
    /// Security advisories that apply to the platform.
    pub advisory_ids: Vec<String>,
    /// Whether the TEE runs in debug mode.
    pub debug: bool,
    /// Earliest expiry (unix seconds) of the collateral used, when there was any.
    pub collateral_expires_at: Option<u64>,
    /// Earliest issue date (unix seconds) of the collateral used, when there was any.
    pub collateral_issued_at: Option<u64>,
    /// How long (seconds) the collateral had expired when it was accepted anyway, under a grace
    /// period the operator set ([`crate::provider::ProviderConfig::grace_period`]); absent when
    /// the collateral was valid, which is the only case without such a setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral_grace_secs: Option<u64>,
    /// The TEE-specific claims.
    pub details: TeeClaims,
}

impl Claims {
    /// The measurement a person compares first, as hex: MRENCLAVE, MRTD, the launch measurement,
    /// or a Nitro enclave image's PCR0.
    pub fn primary_measurement(&self) -> String {
        match &self.details {
            TeeClaims::Sgx(c) => hex::encode(c.mrenclave),
            TeeClaims::Tdx(c) => hex::encode(c.mrtd),
            TeeClaims::Snp(c) => hex::encode(c.measurement),
            TeeClaims::Sim(c) => hex::encode(c.measurement),
            TeeClaims::AzureSnp(c) => hex::encode(c.snp.measurement),
            TeeClaims::AzureTdx(c) => hex::encode(c.tdx.mrtd),
            TeeClaims::Nitro(c) => c.pcrs.first().map(hex::encode).unwrap_or_default(),
        }
    }

    /// Checks that the evidence binds `expected` report data (constant time).
    pub fn expect_report_data(&self, expected: &[u8; REPORT_DATA_LEN]) -> crate::Result<()> {
        if aws_lc_rs::constant_time::verify_slices_are_equal(&self.report_data, expected).is_err() {
            return Err(crate::AttestError::ReportDataMismatch {
                expected: hex::encode(expected),
                found: hex::encode(self.report_data),
            });
        }
        Ok(())
    }
}

fn hex_pcrs<S: serde::Serializer>(
    pcrs: &BTreeMap<u8, [u8; 32]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pcrs.len()))?;
    for (index, value) in pcrs {
        map.serialize_entry(&index.to_string(), &hex::encode(value))?;
    }
    map.end()
}

mod hex_array4 {
    use serde::ser::SerializeSeq;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        value: &[[u8; 48]; 4],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(4))?;
        for register in value {
            seq.serialize_element(&hex::encode(register))?;
        }
        seq.end()
    }
}

mod hex_list {
    use serde::ser::SerializeSeq;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &[[u8; 48]], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for register in value {
            seq.serialize_element(&hex::encode(register))?;
        }
        seq.end()
    }
}

mod hex_option {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        value: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcap_statuses_parse_and_only_up_to_date_counts() {
        for name in [
            "UpToDate",
            "SWHardeningNeeded",
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDate",
            "OutOfDateConfigurationNeeded",
            "Revoked",
            "TDRelaunchAdvised",
            "TDRelaunchAdvisedConfigurationNeeded",
        ] {
            let status = TcbStatus::from_dcap(name);
            assert_eq!(status.name(), name);
            assert!(!matches!(status, TcbStatus::Other(_)), "{name}");
            assert_eq!(status.is_up_to_date(), name == "UpToDate");
        }
        assert_eq!(
            TcbStatus::from_dcap("Novel"),
            TcbStatus::Other("Novel".into())
        );
        assert!(!TcbStatus::from_dcap("Novel").is_up_to_date());
    }
}
