//! Azure confidential VMs (SEV-SNP and TDX): the HCL report and a vTPM quote.
//!
//! On an Azure confidential VM the guest cannot ask the hardware for a report over data of its own
//! choosing: the paravisor (HCL) requests it at boot, with report data that is the hash of its
//! *runtime data*, a JSON document that holds the vTPM's attestation key (AK) as a JWK named
//! `HCLAkPub`. The guest reads this HCL report from the vTPM's NV index `0x01400001` and proves
//! freshness with a TPM quote, signed by that AK, over the PCRs and a nonce.
//!
//! # Evidence
//!
//! [`Evidence::quote`] holds a JSON container ([`AzureEvidence`], `docs/evidence.md`): the HCL
//! report, the caller's 64 bytes of report data, the TPM quote (`TPMS_ATTEST` message, RSA
//! signature, PCR values) and, for TDX, the TD quote of the HCL report's TD report (Azure's IMDS
//! turns a TD report into a quote; the HCL report holds only the TD report, which only the same
//! machine could check). For AZURE-SNP, [`Evidence::certificates`] may hold the VCEK chain as PEM
//! (VCEK first, then ASK and ARK, as Azure's THIM endpoint serves it); the collateral's VCEK wins
//! when both are present.
//!
//! # Checks, in order
//!
//! 1. The container and the HCL report parse ([`HclReport::parse`]): signature `HCLA`, the
//!    hardware report type (2 = SNP, 4 = TDX) matching the TEE kind, the runtime data within the
//!    report, else [`AttestError::MalformedEvidence`].
//! 2. The hardware report verifies as plain SNP or TDX evidence does: the SNP report under the VCEK
//!    chain to AMD's ARK ([`super::snp`]), or the TD quote through DCAP ([`super::dcap`]). The SNP
//!    report must come from VMPL 0, the paravisor's level: the guest OS runs at a lower level and
//!    could otherwise bind runtime data of its own making. For TDX,
//!    the TD quote must be of the HCL report's TD report: the report data, MRTD, RTMRs, MRSEAM
//!    and TD attributes equal, else [`AttestError::VerificationFailed`].
//! 3. The hardware report's report data is the runtime data's hash (SHA-256, -384 or -512 as the
//!    HCL report says, zero-padded to 64 bytes), else [`AttestError::RuntimeDataMismatch`].
//! 4. The AK is the runtime data's `HCLAkPub` (RSA); the TPM quote's signature (RSASSA-PKCS1-v1_5
//!    with SHA-256) verifies under it, else [`AttestError::BadSignature`].
//! 5. The quote is a TPM-generated quote (`TPM_GENERATED_VALUE`, `TPM_ST_ATTEST_QUOTE`) over one
//!    SHA-256 PCR bank; the PCR values given are exactly the selected ones, and their SHA-256 in
//!    index order is the quote's PCR digest, else [`AttestError::PcrDigestMismatch`].
//! 6. The quote's qualifying data (`extraData`) is the SHA-256 of the container's report data,
//!    else [`AttestError::ReportDataMismatch`]. [`Claims::report_data`] is then that report data,
//!    which the caller compares with what it expects ([`Claims::expect_report_data`]).
//!
//! The nonce is the report data's SHA-256 rather than the report data itself because a TPM
//! accepts qualifying data only up to the size of its largest digest, which is 48 bytes on TPMs
//! without SHA-512; 32 bytes fit every TPM.

use std::collections::{BTreeMap, BTreeSet};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as BASE64};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use x509_cert::der::{Decode, Encode};

use crate::claims::{AzureSnpClaims, AzureTdxClaims, Claims, TeeClaims, VtpmClaims};
use crate::collateral::{Collateral, SnpCollateral};
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};
use crate::verifier::{dcap::DcapVerifier, snp::SnpVerifier, Verifier};

/// The container's format name.
pub const FORMAT: &str = "adyton-azure-vtpm-v1";

/// The vTPM NV index that holds the HCL report.
pub const HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;

/// The persistent handle of the vTPM's attestation key.
pub const AK_HANDLE: u32 = 0x8100_0003;

/// Largest HCL report accepted (Azure's are 2 KiB for SNP and 2.6 KiB for TDX).
pub const MAX_HCL_REPORT_LEN: usize = 16 * 1024;

/// Largest `TPMS_ATTEST` accepted: a quote of every PCR of four banks is about 200 bytes.
const MAX_QUOTE_MESSAGE_LEN: usize = 1024;

/// Largest quote signature accepted: an RSA-8192 signature.
const MAX_QUOTE_SIGNATURE_LEN: usize = 1024;

/// Largest TD quote accepted, with its certification data.
const MAX_TD_QUOTE_LEN: usize = 64 * 1024;

/// The HCL report's header: signature, version, report size, request type, status, 3 reserved
/// words (little-endian `u32`s).
const HCL_HEADER_LEN: usize = 32;
const HCL_SIGNATURE: &[u8; 4] = b"HCLA";
/// The hardware report area that follows the header: as large as an SNP report; a TD report
/// (1024 bytes) fills its start.
const HW_REPORT_AREA_LEN: usize = 1184;
/// The runtime data's header after the hardware report area: data size, version, report type,
/// hash type, variable data size.
const RUNTIME_HEADER_LEN: usize = 20;
const RUNTIME_HEADER_OFFSET: usize = HCL_HEADER_LEN + HW_REPORT_AREA_LEN;
const RUNTIME_DATA_OFFSET: usize = RUNTIME_HEADER_OFFSET + RUNTIME_HEADER_LEN;
const REPORT_TYPE_SNP: u32 = 2;
const REPORT_TYPE_TDX: u32 = 4;

/// Length of a TD report (`TDREPORT_STRUCT`).
pub const TD_REPORT_LEN: usize = 1024;
/// Offset of the report data in an SNP report.
const SNP_REPORT_DATA_OFFSET: usize = 0x50;
/// Offset of the report data in a TD report (`REPORTMACSTRUCT.REPORTDATA`).
const TD_REPORT_DATA_OFFSET: usize = 128;

/// `TPM_GENERATED_VALUE`: only the TPM writes this magic into what it signs, so a restricted key
/// never signs data that merely looks like a quote.
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
const TPM_ALG_SHA256: u16 = 0x000b;
/// The `kid` of the attestation key in the runtime data.
const AK_KEY_ID: &str = "HCLAkPub";

/// Base64url as JWKs use it, with or without padding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The JSON container in [`Evidence::quote`] for AZURE-SNP and AZURE-TDX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureEvidence {
    /// Always [`FORMAT`].
    pub format: String,
    /// The HCL report as read from NV index `0x01400001` (base64).
    #[serde(with = "base64_bytes")]
    pub hcl_report: Vec<u8>,
    /// The caller's report data; the quote's qualifying data is its SHA-256 (hex).
    #[serde(with = "hex::serde")]
    pub report_data: [u8; REPORT_DATA_LEN],
    /// The vTPM quote.
    pub tpm_quote: TpmQuote,
    /// TDX only: the TD quote of the HCL report's TD report (base64).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_base64_bytes"
    )]
    pub td_quote: Option<Vec<u8>>,
}

/// A TPM2 quote with the PCR values it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmQuote {
    /// The marshalled `TPMS_ATTEST` the TPM signed (base64).
    #[serde(with = "base64_bytes")]
    pub message: Vec<u8>,
    /// The RSASSA-PKCS1-v1_5 signature over it, the bare signature of `TPMT_SIGNATURE` (base64).
    #[serde(with = "base64_bytes")]
    pub signature: Vec<u8>,
    /// The SHA-256 PCR values, by index (`"0"` to `"23"`, hex).
    #[serde(with = "hex_pcr_map")]
    pub pcrs: BTreeMap<u8, [u8; 32]>,
}

impl AzureEvidence {
    /// Serialises to the container JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, maps and fixed arrays always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the container JSON, refusing unknown fields, another format and oversized parts.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(AttestError::malformed(format!(
                "Azure vTPM container of {} bytes, at most {MAX_EVIDENCE_LEN} are accepted",
                bytes.len()
            )));
        }
        let doc: AzureEvidence = serde_json::from_slice(bytes)
            .map_err(|e| AttestError::malformed(format!("not an Azure vTPM container: {e}")))?;
        if doc.format != FORMAT {
            return Err(AttestError::malformed(format!(
                "Azure vTPM container format `{}`, expected `{FORMAT}`",
                doc.format.chars().take(64).collect::<String>()
            )));
        }
        for (what, len, max) in [
            ("HCL report", doc.hcl_report.len(), MAX_HCL_REPORT_LEN),
            (
                "TPM quote message",
                doc.tpm_quote.message.len(),
                MAX_QUOTE_MESSAGE_LEN,
            ),
            (
                "TPM quote signature",
                doc.tpm_quote.signature.len(),
                MAX_QUOTE_SIGNATURE_LEN,
            ),
            (
                "TD quote",
                doc.td_quote.as_ref().map_or(0, Vec::len),
                MAX_TD_QUOTE_LEN,
            ),
        ] {
            if len > max {
                return Err(AttestError::malformed(format!(
                    "{what} of {len} bytes, at most {max} are accepted"
                )));
            }
        }
        Ok(doc)
    }
}

/// The hardware report type inside an HCL report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareReportType {
    /// An SEV-SNP attestation report (1184 bytes).
    Snp,
    /// A TDX TD report (1024 bytes).
    Tdx,
}

/// A parsed HCL report. Nothing in it is verified by parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HclReport<'a> {
    /// Which hardware report it carries.
    pub report_type: HardwareReportType,
    /// The hardware report: the SNP report or the TD report.
    pub hardware_report: &'a [u8],
    /// The runtime data (JSON), whose hash is the hardware report's report data.
    pub runtime_data: &'a [u8],
    hash: &'static digest::Algorithm,
}

impl<'a> HclReport<'a> {
    /// Parses an HCL report as read from the vTPM's NV index (trailing zero bytes allowed).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let bad = |reason: String| AttestError::malformed(format!("HCL report: {reason}"));
        if bytes.len() > MAX_HCL_REPORT_LEN {
            return Err(bad(format!(
                "{} bytes, at most {MAX_HCL_REPORT_LEN} are accepted",
                bytes.len()
            )));
        }
        if bytes.len() < RUNTIME_DATA_OFFSET {
            return Err(bad(format!(
                "{} bytes, shorter than its {RUNTIME_DATA_OFFSET}-byte headers",
                bytes.len()
            )));
        }
        if &bytes[..4] != HCL_SIGNATURE {
            return Err(bad(format!(
                "signature {}, expected `HCLA`",
                hex::encode(&bytes[..4])
            )));
        }
        let word = |offset: usize| {
            let mut le = [0u8; 4];
            le.copy_from_slice(&bytes[offset..offset + 4]);
            u32::from_le_bytes(le)
        };
        let report_type = match word(RUNTIME_HEADER_OFFSET + 8) {
            REPORT_TYPE_SNP => HardwareReportType::Snp,
            REPORT_TYPE_TDX => HardwareReportType::Tdx,
            other => {
                return Err(bad(format!(
                    "hardware report type {other}, expected 2 (SNP) or 4 (TDX)"
                )))
            }
        };
        let hash = match word(RUNTIME_HEADER_OFFSET + 12) {
            1 => &digest::SHA256,
            2 => &digest::SHA384,
            3 => &digest::SHA512,
            other => {
                return Err(bad(format!(
                    "runtime data hash type {other}, expected 1, 2 or 3 (SHA-256, -384, -512)"
                )))
            }
        };
        let runtime_len = word(RUNTIME_HEADER_OFFSET + 16) as usize;
        let runtime_data = bytes
            .get(RUNTIME_DATA_OFFSET..RUNTIME_DATA_OFFSET.saturating_add(runtime_len))
            .ok_or_else(|| {
                bad(format!(
                    "runtime data of {runtime_len} bytes runs past the report's {} bytes",
                    bytes.len()
                ))
            })?;
        let hw_len = match report_type {
            HardwareReportType::Snp => HW_REPORT_AREA_LEN,
            HardwareReportType::Tdx => TD_REPORT_LEN,
        };
        Ok(Self {
            report_type,
            hardware_report: &bytes[HCL_HEADER_LEN..HCL_HEADER_LEN + hw_len],
            runtime_data,
            hash,
        })
    }

    /// The report data the hardware report must carry: the runtime data's hash, zero-padded.
    pub fn runtime_data_hash(&self) -> [u8; REPORT_DATA_LEN] {
        let mut out = [0u8; REPORT_DATA_LEN];
        let hash = digest::digest(self.hash, self.runtime_data);
        out[..hash.as_ref().len()].copy_from_slice(hash.as_ref());
        out
    }

    /// The report data written in the hardware report (not verified by this call).
    pub fn hardware_report_data(&self) -> [u8; REPORT_DATA_LEN] {
        let offset = match self.report_type {
            HardwareReportType::Snp => SNP_REPORT_DATA_OFFSET,
            HardwareReportType::Tdx => TD_REPORT_DATA_OFFSET,
        };
        let mut out = [0u8; REPORT_DATA_LEN];
        out.copy_from_slice(&self.hardware_report[offset..offset + REPORT_DATA_LEN]);
        out
    }

    /// The attestation key: the runtime data's `HCLAkPub` JWK.
    pub fn attestation_key(&self) -> Result<RsaKey> {
        attestation_key(self.runtime_data)
    }
}

/// Checks that `report_data` (proven by the hardware) is the hash of the HCL report's runtime
/// data.
pub fn check_runtime_data(hcl: &HclReport<'_>, report_data: &[u8; REPORT_DATA_LEN]) -> Result<()> {
    let expected = hcl.runtime_data_hash();
    if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, report_data).is_err() {
        return Err(AttestError::RuntimeDataMismatch {
            expected: hex::encode(expected),
            found: hex::encode(report_data),
        });
    }
    Ok(())
}

/// An RSA public key (big-endian modulus and exponent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaKey {
    /// The modulus.
    pub n: Vec<u8>,
    /// The public exponent.
    pub e: Vec<u8>,
}

#[derive(Deserialize)]
struct RuntimeKeys {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Reads the `HCLAkPub` RSA key from runtime data JSON. Microsoft's runtime data carries more
/// fields (`vm-configuration`, `user-data`), which are not ours to refuse.
pub fn attestation_key(runtime_data: &[u8]) -> Result<RsaKey> {
    let bad = |reason: String| AttestError::malformed(format!("runtime data: {reason}"));
    let doc: RuntimeKeys = serde_json::from_slice(runtime_data)
        .map_err(|e| bad(format!("not JSON with `keys`: {e}")))?;
    let mut found = doc
        .keys
        .into_iter()
        .filter(|key| key.kid.as_deref() == Some(AK_KEY_ID));
    let key = found
        .next()
        .ok_or_else(|| bad(format!("no key with kid `{AK_KEY_ID}`")))?;
    if found.next().is_some() {
        return Err(bad(format!("more than one key with kid `{AK_KEY_ID}`")));
    }
    if key.kty.as_deref() != Some("RSA") {
        return Err(bad(format!(
            "{AK_KEY_ID} has kty {:?}, expected RSA",
            key.kty
                .unwrap_or_default()
                .chars()
                .take(16)
                .collect::<String>()
        )));
    }
    let decode = |name: &str, value: Option<String>| {
        let value = value.ok_or_else(|| bad(format!("{AK_KEY_ID} has no `{name}`")))?;
        BASE64URL
            .decode(value.as_bytes())
            .map_err(|e| bad(format!("{AK_KEY_ID}.{name} is not base64url: {e}")))
    };
    Ok(RsaKey {
        n: decode("n", key.n)?,
        e: decode("e", key.e)?,
    })
}

/// What a verified TPM quote proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// The qualifying data (`extraData`).
    pub nonce: Vec<u8>,
    /// The PCR values, which the quote's digest covers.
    pub pcrs: BTreeMap<u8, [u8; 32]>,
}

/// The parts of `TPMS_ATTEST` a verifier needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The qualifying data (`extraData`).
    pub nonce: Vec<u8>,
    /// The selected PCR indices of the SHA-256 bank, ascending.
    pub selected: BTreeSet<u8>,
    /// The digest of the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

/// Big-endian reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(AttestError::malformed(format!(
                "{} is truncated",
                self.what
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*`: a 16-bit size and that many bytes, at most `max`.
    fn sized(&mut self, max: usize) -> Result<&'a [u8]> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(AttestError::malformed(format!(
                "{}: a field of {len} bytes, at most {max} are allowed",
                self.what
            )));
        }
        self.take(len)
    }
}

/// Parses a marshalled `TPMS_ATTEST` (TPM 2.0 Library Part 2, 10.12.12) that must be a quote
/// over one SHA-256 PCR bank. Nothing is verified.
pub fn parse_quote_message(message: &[u8]) -> Result<QuoteInfo> {
    let mut r = Reader {
        bytes: message,
        what: "TPM quote message (TPMS_ATTEST)",
    };
    let bad = |reason: String| AttestError::malformed(format!("TPM quote message: {reason}"));
    let magic = r.u32()?;
    if magic != TPM_GENERATED_VALUE {
        return Err(bad(format!(
            "magic {magic:#010x}, expected TPM_GENERATED_VALUE {TPM_GENERATED_VALUE:#010x}"
        )));
    }
    let kind = r.u16()?;
    if kind != TPM_ST_ATTEST_QUOTE {
        return Err(bad(format!(
            "type {kind:#06x}, expected TPM_ST_ATTEST_QUOTE {TPM_ST_ATTEST_QUOTE:#06x}"
        )));
    }
    let _qualified_signer = r.sized(2 + 64)?;
    let nonce = r.sized(64)?.to_vec();
    // clockInfo (clock, resetCount, restartCount, safe) and firmwareVersion: not used.
    r.take(8 + 4 + 4 + 1 + 8)?;
    let banks = r.u32()?;
    if banks != 1 {
        return Err(bad(format!(
            "{banks} PCR banks selected, expected exactly one (SHA-256)"
        )));
    }
    let hash = r.u16()?;
    if hash != TPM_ALG_SHA256 {
        return Err(bad(format!(
            "PCR bank {hash:#06x} selected, expected SHA-256 ({TPM_ALG_SHA256:#06x})"
        )));
    }
    let select_len = usize::from(r.u8()?);
    if select_len > 4 {
        return Err(bad(format!(
            "PCR selection of {select_len} bytes, at most 4 (32 PCRs) are allowed"
        )));
    }
    let select = r.take(select_len)?;
    let selected: BTreeSet<u8> = (0u8..32)
        .filter(|&i| {
            select
                .get(usize::from(i / 8))
                .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
        })
        .collect();
    let pcr_digest = r.sized(64)?.to_vec();
    if !r.bytes.is_empty() {
        return Err(bad(format!("{} bytes after the quote", r.bytes.len())));
    }
    Ok(QuoteInfo {
        nonce,
        selected,
        pcr_digest,
    })
}

/// The digest a quote over `pcrs` carries: SHA-256 of the values in ascending index order (one
/// bank, so the TPM's selection order is the index order).
pub fn pcr_digest(pcrs: &BTreeMap<u8, [u8; 32]>) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for value in pcrs.values() {
        ctx.update(value);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verifies a TPM quote: its signature under `ak`, its form, and that `quote.pcrs` are exactly
/// the PCRs it covers with the digest it carries. The nonce is returned for the caller to judge.
pub fn verify_tpm_quote(quote: &TpmQuote, ak: &RsaKey) -> Result<VerifiedQuote> {
    RsaPublicKeyComponents {
        n: ak.n.as_slice(),
        e: ak.e.as_slice(),
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        &quote.message,
        &quote.signature,
    )
    .map_err(|_| AttestError::BadSignature {
        what: "vTPM quote: the signature does not verify under the HCL report's attestation key \
               (RSASSA-PKCS1-v1_5, SHA-256, 2048 to 8192 bits)"
            .into(),
    })?;
    let info = parse_quote_message(&quote.message)?;
    let given: BTreeSet<u8> = quote.pcrs.keys().copied().collect();
    if given != info.selected {
        return Err(AttestError::malformed(format!(
            "the PCR values given are for PCRs {given:?}, the quote selects {:?}",
            info.selected
        )));
    }
    let digest = pcr_digest(&quote.pcrs);
    if aws_lc_rs::constant_time::verify_slices_are_equal(&digest, &info.pcr_digest).is_err() {
        return Err(AttestError::PcrDigestMismatch {
            expected: hex::encode(&info.pcr_digest),
            found: hex::encode(digest),
        });
    }
    Ok(VerifiedQuote {
        nonce: info.nonce,
        pcrs: quote.pcrs.clone(),
    })
}

/// The qualifying data a quote over `report_data` carries: its SHA-256.
pub fn quote_nonce(report_data: &[u8; REPORT_DATA_LEN]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, report_data).as_ref());
    out
}

/// The fields of a TD report that its TD quote repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReportFields {
    /// `REPORTMACSTRUCT.REPORTDATA`.
    pub report_data: [u8; REPORT_DATA_LEN],
    /// `TEE_TCB_INFO.MRSEAM`.
    pub mrseam: [u8; 48],
    /// `TDINFO.ATTRIBUTES`.
    pub td_attributes: u64,
    /// `TDINFO.MRTD`.
    pub mrtd: [u8; 48],
    /// `TDINFO.MRCONFIGID`.
    pub mrconfigid: [u8; 48],
    /// `TDINFO.MROWNER`.
    pub mrowner: [u8; 48],
    /// `TDINFO.MROWNERCONFIG`.
    pub mrownerconfig: [u8; 48],
    /// `TDINFO.RTMR[0..4]`.
    pub rtmr: [[u8; 48]; 4],
}

impl TdReportFields {
    /// Reads a 1024-byte TD report (Intel TDX module ABI, `TDREPORT_STRUCT`: `REPORTMACSTRUCT`
    /// at 0, `TEE_TCB_INFO` at 256, `TDINFO` at 512).
    pub fn parse(report: &[u8]) -> Result<Self> {
        if report.len() != TD_REPORT_LEN {
            return Err(AttestError::malformed(format!(
                "TD report of {} bytes, expected {TD_REPORT_LEN}",
                report.len()
            )));
        }
        let array48 = |offset: usize| {
            let mut out = [0u8; 48];
            out.copy_from_slice(&report[offset..offset + 48]);
            out
        };
        let mut report_data = [0u8; REPORT_DATA_LEN];
        report_data.copy_from_slice(&report[TD_REPORT_DATA_OFFSET..TD_REPORT_DATA_OFFSET + 64]);
        let mut attributes = [0u8; 8];
        attributes.copy_from_slice(&report[512..520]);
        Ok(Self {
            report_data,
            mrseam: array48(256 + 8 + 16),
            td_attributes: u64::from_le_bytes(attributes),
            mrtd: array48(528),
            mrconfigid: array48(576),
            mrowner: array48(624),
            mrownerconfig: array48(672),
            rtmr: [array48(720), array48(768), array48(816), array48(864)],
        })
    }
}

/// Checks that a verified TD quote's claims are those of the HCL report's TD report.
pub fn check_td_quote_matches(td_report: &TdReportFields, quote: &Claims) -> Result<()> {
    let TeeClaims::Tdx(tdx) = &quote.details else {
        return Err(AttestError::WrongTee {
            expected: TeeKind::Tdx,
            found: quote.tee,
        });
    };
    let differs = [
        (
            "report data",
            td_report.report_data[..] != quote.report_data[..],
        ),
        ("MRTD", td_report.mrtd != tdx.mrtd),
        ("RTMRs", td_report.rtmr != tdx.rtmr),
        ("MRSEAM", td_report.mrseam != tdx.mrseam),
        ("MRCONFIGID", td_report.mrconfigid != tdx.mrconfigid),
        ("MROWNER", td_report.mrowner != tdx.mrowner),
        (
            "MROWNERCONFIG",
            td_report.mrownerconfig != tdx.mrownerconfig,
        ),
        (
            "TD attributes",
            td_report.td_attributes != tdx.td_attributes,
        ),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(name, _)| name)
    .collect::<Vec<_>>();
    if !differs.is_empty() {
        return Err(AttestError::VerificationFailed {
            tee: TeeKind::AzureTdx,
            reason: format!(
                "the TD quote is not of the HCL report's TD report: {} differ",
                differs.join(", ")
            ),
        });
    }
    Ok(())
}

/// Verifies Azure confidential VM evidence (AZURE-SNP or AZURE-TDX).
#[derive(Debug)]
pub struct AzureVerifier {
    tee: TeeKind,
    hardware: Box<dyn Verifier>,
}

impl AzureVerifier {
    /// An AZURE-SNP verifier with AMD's built-in ARKs.
    pub fn snp() -> Self {
        Self {
            tee: TeeKind::AzureSnp,
            hardware: Box::new(SnpVerifier::new()),
        }
    }

    /// An AZURE-TDX verifier with Intel's production root CA.
    pub fn tdx() -> Self {
        Self {
            tee: TeeKind::AzureTdx,
            hardware: Box::new(DcapVerifier::new(TeeKind::Tdx)),
        }
    }

    /// A verifier whose hardware report is checked by `hardware` instead of the production SNP or
    /// DCAP verifier: for unit tests, whose synthetic SNP reports no AMD key signed.
    #[cfg(test)]
    pub(crate) fn with_hardware_verifier(tee: TeeKind, hardware: Box<dyn Verifier>) -> Self {
        Self { tee, hardware }
    }
}

impl Verifier for AzureVerifier {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn verify(&self, evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims> {
        if evidence.tee != self.tee {
            return Err(AttestError::WrongTee {
                expected: self.tee,
                found: evidence.tee,
            });
        }
        let container = AzureEvidence::from_json(&evidence.quote)?;
        let hcl = HclReport::parse(&container.hcl_report)?;
        let expected_type = match self.tee {
            TeeKind::AzureTdx => HardwareReportType::Tdx,
            _ => HardwareReportType::Snp,
        };
        if hcl.report_type != expected_type {
            return Err(AttestError::malformed(format!(
                "{} evidence whose HCL report carries a {:?} report",
                self.tee, hcl.report_type
            )));
        }

        let hardware_claims = match hcl.report_type {
            HardwareReportType::Snp => {
                let hardware_evidence = Evidence {
                    tee: TeeKind::Snp,
                    quote: hcl.hardware_report.to_vec(),
                    certificates: None,
                    gpus: Vec::new(),
                };
                let collateral = snp_collateral(collateral, evidence.certificates.as_deref())?;
                let claims = self.hardware.verify(&hardware_evidence, &collateral, now)?;
                check_paravisor_vmpl(&claims)?;
                claims
            }
            HardwareReportType::Tdx => {
                let td_report = TdReportFields::parse(hcl.hardware_report)?;
                let td_quote = container.td_quote.clone().ok_or_else(|| {
                    AttestError::malformed(
                        "AZURE-TDX evidence without a TD quote: the HCL report's TD report is \
                         not verifiable off the machine",
                    )
                })?;
                let hardware_evidence = Evidence {
                    tee: TeeKind::Tdx,
                    quote: td_quote,
                    certificates: None,
                    gpus: Vec::new(),
                };
                let claims = self.hardware.verify(&hardware_evidence, collateral, now)?;
                check_td_quote_matches(&td_report, &claims)?;
                claims
            }
        };
        check_runtime_data(&hcl, &hardware_claims.report_data)?;

        let ak = hcl.attestation_key()?;
        let quote = verify_tpm_quote(&container.tpm_quote, &ak)?;
        let expected_nonce = quote_nonce(&container.report_data);
        if aws_lc_rs::constant_time::verify_slices_are_equal(&quote.nonce, &expected_nonce).is_err()
        {
            return Err(AttestError::ReportDataMismatch {
                expected: format!(
                    "SHA-256 of the report data: {}",
                    hex::encode(expected_nonce)
                ),
                found: format!("the vTPM quote's nonce: {}", hex::encode(&quote.nonce)),
            });
        }

        let vtpm = VtpmClaims {
            pcrs: quote.pcrs,
            ak_modulus: ak.n,
            ak_exponent: ak.e,
            runtime_data: hcl.runtime_data.to_vec(),
        };
        let details = match hardware_claims.details {
            TeeClaims::Snp(snp) => TeeClaims::AzureSnp(AzureSnpClaims { snp, vtpm }),
            TeeClaims::Tdx(tdx) => TeeClaims::AzureTdx(AzureTdxClaims { tdx, vtpm }),
            _ => {
                return Err(AttestError::WrongTee {
                    expected: self.tee,
                    found: hardware_claims.tee,
                })
            }
        };
        Ok(Claims {
            tee: self.tee,
            insecure: false,
            report_data: container.report_data,
            details,
            ..hardware_claims
        })
    }
}

/// Only the paravisor, at VMPL 0, writes the runtime data with the vTPM's key. The guest OS runs
/// at a less privileged VMPL and can ask the firmware for SNP reports over report data of its own
/// choosing, so a report from any other VMPL could bind a runtime data document it made up.
fn check_paravisor_vmpl(claims: &Claims) -> Result<()> {
    match &claims.details {
        TeeClaims::Snp(snp) if snp.vmpl == 0 => Ok(()),
        TeeClaims::Snp(snp) => Err(AttestError::VerificationFailed {
            tee: TeeKind::AzureSnp,
            reason: format!(
                "the SNP report was requested at VMPL {}, not by the paravisor at VMPL 0",
                snp.vmpl
            ),
        }),
        _ => Err(AttestError::WrongTee {
            expected: TeeKind::Snp,
            found: claims.tee,
        }),
    }
}

/// The hardware evidence inside Azure evidence: the SNP report, or the TD quote. Nothing is
/// verified; the collateral provider uses it to fetch that evidence's collateral.
pub fn hardware_evidence(evidence: &Evidence) -> Result<Evidence> {
    let container = AzureEvidence::from_json(&evidence.quote)?;
    let hcl = HclReport::parse(&container.hcl_report)?;
    Ok(match hcl.report_type {
        HardwareReportType::Snp => Evidence {
            tee: TeeKind::Snp,
            quote: hcl.hardware_report.to_vec(),
            certificates: None,
            gpus: Vec::new(),
        },
        HardwareReportType::Tdx => Evidence {
            tee: TeeKind::Tdx,
            quote: container
                .td_quote
                .ok_or_else(|| AttestError::malformed("AZURE-TDX evidence without a TD quote"))?,
            certificates: None,
            gpus: Vec::new(),
        },
    })
}

/// The SNP collateral: the caller's VCEK when it has one, else the PEM chain that came with the
/// evidence (VCEK, then ASK and ARK). The SNP verifier uses an ARK only when it is AMD's built-in
/// one, and an ASK only when that ARK signs it.
fn snp_collateral(collateral: &Collateral, pem_chain: Option<&[u8]>) -> Result<Collateral> {
    let has_vcek = collateral
        .snp
        .as_ref()
        .is_some_and(|snp| snp.vcek.is_some());
    let Some(pem) = pem_chain.filter(|_| !has_vcek) else {
        return Ok(collateral.clone());
    };
    let certs = x509_cert::Certificate::load_pem_chain(pem).map_err(|e| {
        AttestError::malformed(format!(
            "the evidence's VCEK chain is not PEM certificates: {e}"
        ))
    })?;
    let mut ders = Vec::with_capacity(certs.len());
    for cert in &certs {
        ders.push(cert.to_der().map_err(|e| {
            AttestError::malformed(format!(
                "a certificate of the VCEK chain does not encode: {e}"
            ))
        })?);
    }
    if ders.len() > 3 {
        return Err(AttestError::malformed(format!(
            "the evidence's VCEK chain has {} certificates, at most 3 (VCEK, ASK, ARK)",
            ders.len()
        )));
    }
    // Decoding again checks each DER round-trips as one certificate.
    for der in &ders {
        x509_cert::Certificate::from_der(der)
            .map_err(|e| AttestError::malformed(format!("VCEK chain: {e}")))?;
    }
    let mut ders = ders.into_iter();
    let vcek = ders.next();
    let ask = ders.next();
    let ark = ders.next();
    let given = collateral.snp.clone().unwrap_or_default();
    Ok(Collateral {
        dcap: collateral.dcap.clone(),
        snp: Some(SnpCollateral {
            ark: given.ark.or(ark),
            ask: given.ask.or(ask),
            vcek,
        }),
    })
}

mod base64_bytes {
    use super::BASE64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

mod opt_base64_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        super::base64_bytes::deserialize(d).map(Some)
    }
}

mod hex_pcr_map {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    /// At most 32 PCRs (four selection bytes).
    const MAX_PCRS: usize = 32;

    pub fn serialize<S: Serializer>(
        pcrs: &BTreeMap<u8, [u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(pcrs.len()))?;
        for (index, value) in pcrs {
            map.serialize_entry(&index.to_string(), &hex::encode(value))?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u8, [u8; 32]>, D::Error> {
        let text: BTreeMap<String, String> = BTreeMap::deserialize(d)?;
        if text.len() > MAX_PCRS {
            return Err(D::Error::custom(format!(
                "{} PCR values, at most {MAX_PCRS}",
                text.len()
            )));
        }
        let mut out = BTreeMap::new();
        for (index, value) in text {
            let parsed: u8 = index
                .parse()
                .ok()
                .filter(|&i: &u8| usize::from(i) < MAX_PCRS)
                .ok_or_else(|| D::Error::custom(format!("PCR index `{index}` is not 0 to 31")))?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&value, &mut bytes).map_err(|_| {
                D::Error::custom(format!("PCR {index} is not 64 hex digits (SHA-256)"))
            })?;
            out.insert(parsed, bytes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! End to end with a synthetic HCL report: the recorded SNP report's bytes with report data
    //! over a runtime data document that holds a key generated here, so that the vTPM quote can
    //! be signed. No AMD key signs such a report, so its hardware check is a parse only
    //! ([`ParseOnlySnp`]); the real SNP check runs on the recorded report in `tests/it/azure.rs`.

    use std::sync::{Arc, Mutex};

    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};

    use super::*;
    use crate::attester::azure::{AzureAttester, RawQuote, Vtpm};
    use crate::attester::Attester;
    use crate::policy::Policy;

    const RECORDED_SNP_HCL: &[u8] =
        include_bytes!("../../../../testdata/azure-vtpm/hcl-report-snp.bin");

    #[derive(Debug)]
    struct ParseOnlySnp;

    impl Verifier for ParseOnlySnp {
        fn tee(&self) -> TeeKind {
            TeeKind::Snp
        }

        fn verify(&self, evidence: &Evidence, _: &Collateral, _: u64) -> Result<Claims> {
            crate::verifier::snp::claims_for(&crate::verifier::snp::parse_report(&evidence.quote)?)
        }
    }

    fn verifier() -> AzureVerifier {
        AzureVerifier::with_hardware_verifier(TeeKind::AzureSnp, Box::new(ParseOnlySnp))
    }

    fn runtime_data(key: &KeyPair) -> Vec<u8> {
        let public = key.public_key();
        let n = BASE64URL.encode(public.modulus().big_endian_without_leading_zero());
        let e = BASE64URL.encode(public.exponent().big_endian_without_leading_zero());
        serde_json::json!({
            "keys": [{ "kid": AK_KEY_ID, "key_ops": ["sign"], "kty": "RSA", "e": e, "n": n }],
            "vm-configuration": { "secure-boot": true, "tpm-enabled": true },
        })
        .to_string()
        .into_bytes()
    }

    /// The recorded HCL report with `runtime` as its runtime data and the SNP report's report
    /// data set to its SHA-256.
    fn hcl_report(runtime: &[u8]) -> Vec<u8> {
        hcl_report_from(RECORDED_SNP_HCL, SNP_REPORT_DATA_OFFSET, runtime)
    }

    fn hcl_report_from(recorded: &[u8], report_data_offset: usize, runtime: &[u8]) -> Vec<u8> {
        let mut out = recorded[..RUNTIME_DATA_OFFSET].to_vec();
        out[RUNTIME_HEADER_OFFSET + 16..RUNTIME_HEADER_OFFSET + 20]
            .copy_from_slice(&(runtime.len() as u32).to_le_bytes());
        out.extend_from_slice(runtime);
        let hash = digest::digest(&digest::SHA256, runtime);
        let at = HCL_HEADER_LEN + report_data_offset;
        out[at..at + 64].fill(0);
        out[at..at + 32].copy_from_slice(hash.as_ref());
        out
    }

    fn pcrs(fill: u8) -> BTreeMap<u8, [u8; 32]> {
        (0u8..24).map(|i| (i, [fill.wrapping_add(i); 32])).collect()
    }

    /// A `TPMS_ATTEST` of a quote over `pcrs` (SHA-256 bank) with `nonce`.
    fn attest(nonce: &[u8], pcrs: &BTreeMap<u8, [u8; 32]>, kind: u16) -> Vec<u8> {
        let mut select = [0u8; 3];
        for &i in pcrs.keys() {
            select[usize::from(i / 8)] |= 1 << (i % 8);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&34u16.to_be_bytes());
        m.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        m.extend_from_slice(&[0x5a; 32]);
        m.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        m.extend_from_slice(nonce);
        m.extend_from_slice(&[0; 17]);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        m.push(3);
        m.extend_from_slice(&select);
        m.extend_from_slice(&32u16.to_be_bytes());
        m.extend_from_slice(&pcr_digest(pcrs));
        m
    }

    fn sign(key: &KeyPair, message: &[u8]) -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut signature = vec![0u8; key.public_modulus_len()];
        key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
            .unwrap();
        signature
    }

    /// A fake vTPM: the synthetic HCL report, quotes signed by the AK, PCRs that may move.
    #[derive(Debug)]
    struct FakeVtpm {
        hcl: Vec<u8>,
        key: Arc<KeyPair>,
        pcrs: Mutex<BTreeMap<u8, [u8; 32]>>,
        /// Extend PCR 10 after every quote, as if an IMA measurement came in between.
        moving: bool,
    }

    impl Vtpm for FakeVtpm {
        fn read_nv(&self, index: u32) -> Result<Vec<u8>> {
            assert_eq!(index, HCL_REPORT_NV_INDEX);
            Ok(self.hcl.clone())
        }

        fn quote(&self, ak: u32, nonce: &[u8], selected: &[u8]) -> Result<RawQuote> {
            assert_eq!(ak, AK_HANDLE);
            let mut pcrs = self.pcrs.lock().unwrap();
            let covered = pcrs
                .iter()
                .filter(|(i, _)| selected.contains(i))
                .map(|(i, v)| (*i, *v))
                .collect();
            let message = attest(nonce, &covered, TPM_ST_ATTEST_QUOTE);
            if self.moving {
                pcrs.entry(10).and_modify(|v| v[0] = v[0].wrapping_add(1));
            }
            Ok(RawQuote {
                signature: sign(&self.key, &message),
                message,
            })
        }

        fn read_pcrs(&self, selected: &[u8]) -> Result<BTreeMap<u8, [u8; 32]>> {
            let pcrs = self.pcrs.lock().unwrap();
            Ok(pcrs
                .iter()
                .filter(|(i, _)| selected.contains(i))
                .map(|(i, v)| (*i, *v))
                .collect())
        }
    }

    fn fake_vtpm(moving: bool) -> FakeVtpm {
        let key = Arc::new(KeyPair::generate(KeySize::Rsa2048).unwrap());
        let hcl = hcl_report(&runtime_data(&key));
        FakeVtpm {
            hcl,
            key,
            pcrs: Mutex::new(pcrs(0x10)),
            moving,
        }
    }

    fn container(evidence: &Evidence) -> AzureEvidence {
        AzureEvidence::from_json(&evidence.quote).unwrap()
    }

    fn with_container(evidence: &Evidence, change: impl FnOnce(&mut AzureEvidence)) -> Evidence {
        let mut doc = container(evidence);
        change(&mut doc);
        Evidence {
            quote: doc.to_json(),
            ..evidence.clone()
        }
    }

    #[test]
    fn attester_evidence_verifies_and_binds_the_report_data() {
        let attester =
            AzureAttester::new(TeeKind::AzureSnp, Box::new(fake_vtpm(false)), None).unwrap();
        let report_data = [0x42; REPORT_DATA_LEN];
        let evidence = attester.evidence(&report_data).unwrap();
        assert_eq!(evidence.tee, TeeKind::AzureSnp);
        let claims = verifier()
            .verify(&evidence, &Collateral::none(), 0)
            .unwrap();
        claims.expect_report_data(&report_data).unwrap();
        assert!(claims.expect_report_data(&[0x43; 64]).is_err());
        let TeeClaims::AzureSnp(azure) = &claims.details else {
            panic!("{claims:?}")
        };
        assert_eq!(azure.vtpm.pcrs, pcrs(0x10));
        assert_eq!(azure.vtpm.ak_exponent, vec![1, 0, 1]);
        assert_eq!(azure.snp.vmpl, 0);
        assert_eq!(
            claims.primary_measurement(),
            hex::encode(azure.snp.measurement)
        );

        // The policy pins PCRs; a wrong value and a pin of an unquoted PCR are refused.
        let pin = |index: u8, value: [u8; 32]| {
            Policy::from_toml(&format!(
                "[azure_snp]\nenforce_tcb_upto_date = false\n[azure_snp.pcrs]\n{index} = [\"{}\"]\n",
                hex::encode(value)
            ))
            .unwrap()
        };
        pin(4, pcrs(0x10)[&4]).evaluate(&claims, 0).unwrap();
        match pin(4, [0; 32]).evaluate(&claims, 0) {
            Err(AttestError::PolicyDenied { field, .. }) => assert_eq!(field, "azure_snp.pcrs.4"),
            other => panic!("{other:?}"),
        }
        let mut fewer = claims.clone();
        if let TeeClaims::AzureSnp(c) = &mut fewer.details {
            c.vtpm.pcrs.remove(&4);
        }
        assert!(matches!(
            pin(4, pcrs(0x10)[&4]).evaluate(&fewer, 0),
            Err(AttestError::PolicyDenied { .. })
        ));
        // Plain SNP tables do not admit Azure evidence.
        let snp_only = Policy::from_toml("[snp]\nenforce_tcb_upto_date = false\n").unwrap();
        assert!(matches!(
            snp_only.evaluate(&claims, 0),
            Err(AttestError::TeeNotInPolicy { .. })
        ));
    }

    #[test]
    fn moving_pcrs_are_quoted_again_then_refused() {
        let attester =
            AzureAttester::new(TeeKind::AzureSnp, Box::new(fake_vtpm(true)), None).unwrap();
        assert!(matches!(
            attester.evidence(&[1; 64]),
            Err(AttestError::TeeUnavailable { .. })
        ));
        assert!(AzureAttester::new(TeeKind::AzureTdx, Box::new(fake_vtpm(false)), None).is_err());
    }

    #[test]
    fn every_tampering_is_refused() {
        let vtpm = fake_vtpm(false);
        let other_key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let attester = AzureAttester::new(
            TeeKind::AzureSnp,
            Box::new(FakeVtpm {
                hcl: vtpm.hcl.clone(),
                key: Arc::clone(&vtpm.key),
                pcrs: Mutex::new(pcrs(0x10)),
                moving: false,
            }),
            None,
        )
        .unwrap();
        let report_data = [7; REPORT_DATA_LEN];
        let good = attester.evidence(&report_data).unwrap();
        let verify = |evidence: &Evidence| verifier().verify(evidence, &Collateral::none(), 0);
        verify(&good).unwrap();

        // The quote is over other report data (the nonce is not the expected one).
        let replay = with_container(&good, |doc| doc.report_data = [8; REPORT_DATA_LEN]);
        assert!(matches!(
            verify(&replay),
            Err(AttestError::ReportDataMismatch { .. })
        ));
        // A quote signed by another key than the runtime data's AK.
        let foreign = with_container(&good, |doc| {
            doc.tpm_quote.signature = sign(&other_key, &doc.tpm_quote.message)
        });
        assert!(matches!(
            verify(&foreign),
            Err(AttestError::BadSignature { .. })
        ));
        // A flipped byte in the message (the nonce) and in the signature.
        for at in [0usize, 40, 100] {
            let flipped = with_container(&good, |doc| doc.tpm_quote.message[at] ^= 1);
            assert!(
                matches!(verify(&flipped), Err(AttestError::BadSignature { .. })),
                "message byte {at}"
            );
        }
        let flipped = with_container(&good, |doc| doc.tpm_quote.signature[17] ^= 1);
        assert!(matches!(
            verify(&flipped),
            Err(AttestError::BadSignature { .. })
        ));
        // A PCR value changed, one dropped.
        let changed = with_container(&good, |doc| {
            doc.tpm_quote.pcrs.insert(7, [0xee; 32]);
        });
        assert!(matches!(
            verify(&changed),
            Err(AttestError::PcrDigestMismatch { .. })
        ));
        let dropped = with_container(&good, |doc| {
            doc.tpm_quote.pcrs.remove(&23);
        });
        assert!(matches!(
            verify(&dropped),
            Err(AttestError::MalformedEvidence { .. })
        ));
        // The runtime data changed: its hash is no longer the report's report data.
        let runtime = with_container(&good, |doc| {
            let last = doc.hcl_report.len() - 2;
            doc.hcl_report[last] ^= 0x20;
        });
        assert!(matches!(
            verify(&runtime),
            Err(AttestError::RuntimeDataMismatch { .. })
        ));
        // A signed message that is not a quote, or not TPM-generated.
        let not_quote = with_container(&good, |doc| {
            doc.tpm_quote.message = attest(&quote_nonce(&report_data), &pcrs(0x10), 0x8017);
            doc.tpm_quote.signature = sign(&vtpm.key, &doc.tpm_quote.message);
        });
        assert!(matches!(
            verify(&not_quote),
            Err(AttestError::MalformedEvidence { .. })
        ));
        let forged = with_container(&good, |doc| {
            doc.tpm_quote.message[0] = 0;
            doc.tpm_quote.signature = sign(&vtpm.key, &doc.tpm_quote.message);
        });
        assert!(matches!(
            verify(&forged),
            Err(AttestError::MalformedEvidence { .. })
        ));
        // An SNP report from VMPL 2, where the guest OS runs, over runtime data of its making.
        let guest_level = with_container(&good, |doc| doc.hcl_report[HCL_HEADER_LEN + 0x30] = 2);
        match verify(&guest_level) {
            Err(AttestError::VerificationFailed { reason, .. }) => {
                assert!(reason.contains("VMPL 2"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Other evidence kinds and a TDX verifier are refused.
        let as_tdx = Evidence {
            tee: TeeKind::AzureTdx,
            ..good.clone()
        };
        assert!(matches!(verify(&as_tdx), Err(AttestError::WrongTee { .. })));
        assert!(matches!(
            AzureVerifier::tdx().verify(&as_tdx, &Collateral::none(), 0),
            Err(AttestError::MalformedEvidence { .. })
        ));
    }

    const RECORDED_TDX_HCL: &[u8] =
        include_bytes!("../../../../testdata/azure-vtpm/hcl-report-tdx.bin");

    /// Stands in for DCAP: the "TD quote" is a TD report, whose fields it returns as claims.
    #[derive(Debug)]
    struct TdReportAsQuote;

    impl Verifier for TdReportAsQuote {
        fn tee(&self) -> TeeKind {
            TeeKind::Tdx
        }

        fn verify(&self, evidence: &Evidence, _: &Collateral, _: u64) -> Result<Claims> {
            let td = TdReportFields::parse(&evidence.quote)?;
            Ok(Claims {
                tee: TeeKind::Tdx,
                insecure: false,
                report_data: td.report_data,
                tcb_status: crate::claims::TcbStatus::UpToDate,
                advisory_ids: Vec::new(),
                debug: false,
                collateral_expires_at: None,
                collateral_issued_at: None,
                collateral_grace_secs: None,
                details: TeeClaims::Tdx(crate::claims::TdxClaims {
                    mrtd: td.mrtd,
                    rtmr: td.rtmr,
                    mrseam: td.mrseam,
                    mrconfigid: td.mrconfigid,
                    mrowner: td.mrowner,
                    mrownerconfig: td.mrownerconfig,
                    seamsvn: 0,
                    td_attributes: td.td_attributes,
                }),
            })
        }
    }

    /// Returns the TD report itself as its quote, or a copy with one byte flipped.
    #[derive(Debug)]
    struct EchoTdQuote {
        flip: Option<usize>,
    }

    impl crate::attester::azure::TdQuoteSource for EchoTdQuote {
        fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>> {
            let mut quote = td_report.to_vec();
            if let Some(at) = self.flip {
                quote[at] ^= 1;
            }
            Ok(quote)
        }
    }

    #[test]
    fn auto_detection_names_the_tee_of_the_hcl_report() {
        let snp = fake_vtpm(false);
        assert_eq!(AzureAttester::probe_vtpm(&snp).unwrap(), TeeKind::AzureSnp);
        let key = Arc::new(KeyPair::generate(KeySize::Rsa2048).unwrap());
        let tdx = FakeVtpm {
            hcl: hcl_report_from(RECORDED_TDX_HCL, TD_REPORT_DATA_OFFSET, &runtime_data(&key)),
            key,
            pcrs: Mutex::new(pcrs(0x30)),
            moving: false,
        };
        assert_eq!(AzureAttester::probe_vtpm(&tdx).unwrap(), TeeKind::AzureTdx);
        // An NV index holding something else is no Azure vTPM.
        let other = FakeVtpm {
            hcl: vec![0x5a; 600],
            ..fake_vtpm(false)
        };
        assert!(matches!(
            AzureAttester::probe_vtpm(&other),
            Err(AttestError::MalformedEvidence { .. })
        ));
        // No TPM device, or a file that answers no TPM command: nothing detected, no hang.
        let dir = tempfile::tempdir().unwrap();
        assert!(AzureAttester::probe(&dir.path().join("no-tpm")).is_err());
        std::fs::write(dir.path().join("tpm"), b"").unwrap();
        assert!(AzureAttester::probe(&dir.path().join("tpm")).is_err());
    }

    #[test]
    fn azure_tdx_binds_the_td_quote_to_the_hcl_reports_td_report() {
        let attester = |flip: Option<usize>| {
            let key = Arc::new(KeyPair::generate(KeySize::Rsa2048).unwrap());
            let hcl = hcl_report_from(RECORDED_TDX_HCL, TD_REPORT_DATA_OFFSET, &runtime_data(&key));
            let vtpm = FakeVtpm {
                hcl,
                key,
                pcrs: Mutex::new(pcrs(0x30)),
                moving: false,
            };
            AzureAttester::new(
                TeeKind::AzureTdx,
                Box::new(vtpm),
                Some(Box::new(EchoTdQuote { flip })),
            )
            .unwrap()
        };
        let verifier =
            AzureVerifier::with_hardware_verifier(TeeKind::AzureTdx, Box::new(TdReportAsQuote));
        let report_data = [9; REPORT_DATA_LEN];
        let evidence = attester(None).evidence(&report_data).unwrap();
        let claims = verifier.verify(&evidence, &Collateral::none(), 0).unwrap();
        claims.expect_report_data(&report_data).unwrap();
        let TeeClaims::AzureTdx(tdx) = &claims.details else {
            panic!("{claims:?}")
        };
        assert_eq!(tdx.vtpm.pcrs, pcrs(0x30));
        let policy = format!(
            "[azure_tdx]\nmrtd = [\"{}\"]\n[azure_tdx.pcrs]\n0 = [\"{}\"]\n",
            hex::encode(tdx.tdx.mrtd),
            hex::encode(pcrs(0x30)[&0])
        );
        Policy::from_toml(&policy)
            .unwrap()
            .evaluate(&claims, 0)
            .unwrap();

        // A TD quote of another TD: MRTD (byte 528), an RTMR (byte 800), the report data (130).
        for (at, field) in [(528, "MRTD"), (800, "RTMRs"), (130, "report data")] {
            let evidence = attester(Some(at)).evidence(&report_data).unwrap();
            match verifier.verify(&evidence, &Collateral::none(), 0) {
                Err(AttestError::VerificationFailed { reason, .. }) => {
                    assert!(reason.contains(field), "{reason}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // The runtime data changed.
        let tampered = with_container(&evidence, |doc| {
            let last = doc.hcl_report.len() - 3;
            doc.hcl_report[last] ^= 0x20;
        });
        assert!(matches!(
            verifier.verify(&tampered, &Collateral::none(), 0),
            Err(AttestError::RuntimeDataMismatch { .. })
        ));
        // No TD quote.
        let bare = with_container(&evidence, |doc| doc.td_quote = None);
        assert!(matches!(
            verifier.verify(&bare, &Collateral::none(), 0),
            Err(AttestError::MalformedEvidence { .. })
        ));
    }

    #[test]
    fn containers_are_read_strictly() {
        let vtpm = fake_vtpm(false);
        let attester = AzureAttester::new(TeeKind::AzureSnp, Box::new(vtpm), None).unwrap();
        let good = attester.evidence(&[1; 64]).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&good.quote).unwrap();
        json["extra"] = serde_json::json!(1);
        assert!(AzureEvidence::from_json(json.to_string().as_bytes()).is_err());
        let mut json: serde_json::Value = serde_json::from_slice(&good.quote).unwrap();
        json["format"] = serde_json::json!("other");
        assert!(AzureEvidence::from_json(json.to_string().as_bytes()).is_err());
        let mut json: serde_json::Value = serde_json::from_slice(&good.quote).unwrap();
        json["tpm_quote"]["pcrs"]["99"] = serde_json::json!(hex::encode([0; 32]));
        assert!(AzureEvidence::from_json(json.to_string().as_bytes()).is_err());
        let mut json: serde_json::Value = serde_json::from_slice(&good.quote).unwrap();
        json["hcl_report"] = serde_json::json!(BASE64.encode(vec![0; MAX_HCL_REPORT_LEN + 1]));
        assert!(AzureEvidence::from_json(json.to_string().as_bytes()).is_err());
        let mut padded = good.quote.clone();
        padded.resize(MAX_EVIDENCE_LEN + 1, b' ');
        assert!(AzureEvidence::from_json(&padded).is_err());
        padded.truncate(MAX_EVIDENCE_LEN);
        AzureEvidence::from_json(&padded).unwrap();
        // Truncated and oversized HCL reports, and a wrong signature.
        assert!(HclReport::parse(&RECORDED_SNP_HCL[..100]).is_err());
        let mut bad = RECORDED_SNP_HCL.to_vec();
        bad[0] = b'X';
        assert!(HclReport::parse(&bad).is_err());
        let mut long = RECORDED_SNP_HCL.to_vec();
        long[RUNTIME_HEADER_OFFSET + 16..RUNTIME_HEADER_OFFSET + 20]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HclReport::parse(&long).is_err());
        for (i, byte) in [0u8, 1, 5].into_iter().enumerate() {
            let mut typed = RECORDED_SNP_HCL.to_vec();
            typed[RUNTIME_HEADER_OFFSET + 8 + 4 * (i % 2)] = byte + 5;
            assert!(HclReport::parse(&typed).is_err());
        }
    }
}
