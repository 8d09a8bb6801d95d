//! NVIDIA confidential-computing GPUs (Hopper, Blackwell): SPDM measurement reports, verified
//! against NVIDIA's device identity root and NVIDIA's signed reference integrity manifests.
//!
//! A GPU is not a TEE kind of its own: its evidence ([`GpuEvidence`]) is attached to a CPU TEE's
//! evidence, and its nonce is derived from that evidence's report data.
//!
//! [`GpuVerifier::verify`] checks, in this order:
//! 1. the report parses ([`spdm`]): an SPDM 1.1 GET_MEASUREMENTS request that asks for a
//!    signature and its MEASUREMENTS response, else [`AttestError::MalformedEvidence`];
//! 2. the certificate chain (device certificate first) leads to the pinned device identity
//!    root and every certificate is valid at `now` ([`chain`]), else
//!    [`AttestError::CertificateChain`] or [`AttestError::CollateralExpired`];
//! 3. the report's signature: ECDSA P-384 over SHA-384 of the request and the response up to the
//!    signature, under the device certificate's key, else [`AttestError::BadSignature`];
//! 4. the request's nonce equals the expected nonce, else [`AttestError::ReportDataMismatch`];
//! 5. revocation, through the configured [`RevocationCheck`] (none by default: see there);
//! 6. the driver RIM (product and driver version of the report) and, when one is found, the
//!    VBIOS RIM (product and VBIOS version) verify ([`rim`]), from the RIMs carried with the
//!    evidence or the verifier's RIM directory; a driver RIM is required, else
//!    [`AttestError::CollateralMissing`];
//! 7. every active reference index matches the report's block of that index plus one (any
//!    alternative, equal size); index 35 is skipped when the report says NVDEC0 is disabled, as
//!    NVIDIA's verifier does; a mismatch is [`AttestError::GpuMeasurementMismatch`]. A driver and
//!    a VBIOS RIM that both make one index active are refused.
//!
//! # Claims and CC mode
//!
//! The report has no CC-mode field. NVIDIA's driver produces a signed GET_MEASUREMENTS report
//! through `nvmlDeviceGetConfComputeGpuAttestationReport` only when confidential computing is
//! on (CC or protected-PCIe mode); [`GpuClaims::cc_mode`] is therefore true for every verified
//! report, and the NVML attester refuses to report a GPU whose CC mode NVML says is off.

pub mod attester;
pub mod chain;
pub mod rim;
pub mod spdm;
pub mod xml;

use std::path::Path;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use serde::Serialize;

use crate::error::{AttestError, Result};
use chain::{read_certificates, verify_chain, ChainCert};
use rim::Rim;
use spdm::{SpdmReport, NONCE_LEN};

/// NVIDIA's device identity root ("NVIDIA Device Identity CA", O=NVIDIA; valid 2021-11-05 to
/// 9999-12-31; ECDSA P-384), the last certificate of the Hopper and Blackwell chains recorded in
/// NVIDIA/attestation-sdk (`testdata/nvidia-gpu/hopperCertChain.txt`, byte-identical in
/// `blackwellCertChain.txt`), which is also nvtrust's `verifier_device_root.pem`.
/// SHA-256 fingerprint of the DER:
/// 102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48.
pub const NVIDIA_DEVICE_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
-----END CERTIFICATE-----
";

/// NVIDIA's RIM signing root ("NVIDIA CoRIM signing Root CA", O=NVIDIA; valid 2023-03-16 to
/// 2053-03-08; ECDSA P-384), `rim_root.crt` of NVIDIA/attestation-sdk's test data
/// (`testdata/nvidia-gpu/rim_root.crt`), the last certificate of the recorded RIMs' chains.
/// SHA-256 fingerprint of the DER:
/// 12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1.
pub const NVIDIA_RIM_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICKTCCAbCgAwIBAgIQRdrjoA5QN73fh1N17LXicDAKBggqhkjOPQQDAzBFMQsw
CQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxOVklESUEgQ29S
SU0gc2lnbmluZyBSb290IENBMCAXDTIzMDMxNjE1MzczNFoYDzIwNTMwMzA4MTUz
NzM0WjBFMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxO
VklESUEgQ29SSU0gc2lnbmluZyBSb290IENBMHYwEAYHKoZIzj0CAQYFK4EEACID
YgAEuECyi9vNM+Iw2lfUzyBldHAwaC1HF7TCgp12QcEyUTm3Tagxwr48d55+K2VI
lWYIDk7NlAIQdcV/Ff7euGLI+Qauj93HsSI4WX298PpW54RTgz9tC+Q684caR/BX
WEeZo2MwYTAdBgNVHQ4EFgQUpaXrOPK4ZDAk08DBskn594zeZjAwHwYDVR0jBBgw
FoAUpaXrOPK4ZDAk08DBskn594zeZjAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwCgYIKoZIzj0EAwMDZwAwZAIwHGDyscDP6ihHqRvZlI3eqZ4YkvjE
1duaN84tAHRVgxVMvNrp5Tnom3idHYGW/dskAjATvjIx6VzHm/4e2GiZAyZEIUBD
OKPzp5ei/A0iUZpdvngenDwV8Qa/wGdiTmJ7Bp4=
-----END CERTIFICATE-----
";

/// The domain separator of [`gpu_nonce`].
const GPU_NONCE_DOMAIN: &[u8] = b"adyton gpu nonce v1";

/// GPU `index`'s SPDM nonce for CPU evidence with `report_data`: the first 32 bytes of
/// SHA-512("adyton gpu nonce v1" || report_data || index as u32 big-endian). Every GPU report is
/// so bound to the same 64 bytes as the CPU evidence, and to its place in the list.
pub fn gpu_nonce(report_data: &[u8; crate::REPORT_DATA_LEN], index: u32) -> [u8; NONCE_LEN] {
    let mut input = Vec::with_capacity(GPU_NONCE_DOMAIN.len() + report_data.len() + 4);
    input.extend_from_slice(GPU_NONCE_DOMAIN);
    input.extend_from_slice(report_data);
    input.extend_from_slice(&index.to_be_bytes());
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &input);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&hash.as_ref()[..NONCE_LEN]);
    nonce
}

/// Most RIMs carried with one GPU's evidence or read from a RIM directory.
pub const MAX_RIMS: usize = 64;

/// One GPU's evidence.
#[derive(Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The attestation report: the GET_MEASUREMENTS request and the signed response.
    pub report: Vec<u8>,
    /// The device certificate chain, device certificate first (PEM, or concatenated DER).
    pub certificates: Vec<u8>,
    /// RIMs carried with the evidence (signed XML); they add no trust, being verified like
    /// the verifier's own.
    pub rims: Vec<Vec<u8>>,
}

impl std::fmt::Debug for GpuEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEvidence")
            .field("report_len", &self.report.len())
            .field("certificates_len", &self.certificates.len())
            .field("rims", &self.rims.len())
            .finish()
    }
}

/// The GPU architecture, from the device certificate's subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GpuArch {
    /// GH100.
    Hopper,
    /// GB100 and GB20x.
    Blackwell,
}

/// One measurement index's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementResult {
    /// The RIM index (SPDM block index minus one).
    pub index: u8,
    /// Which RIM gave the reference: `driver` or `vbios`.
    pub source: &'static str,
    /// Whether the report's value is one of the reference's alternatives.
    pub matches: bool,
}

/// What a verified GPU report proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuClaims {
    /// The architecture.
    pub arch: GpuArch,
    /// The product, e.g. `GH100`.
    pub product: String,
    /// Confidential computing is on (see the module documentation: always true for a report
    /// that verified).
    pub cc_mode: bool,
    /// The driver version, e.g. `535.86.09`.
    pub driver_version: String,
    /// The VBIOS version, e.g. `96.00.5E.00.01`.
    pub vbios_version: String,
    /// The nonce the report is bound to.
    #[serde(with = "hex::serde")]
    pub nonce: [u8; NONCE_LEN],
    /// The results per compared index, in index order.
    pub measurements: Vec<MeasurementResult>,
    /// Whether a VBIOS RIM was found and compared.
    pub vbios_rim_checked: bool,
    /// The ids of the RIMs used: `NV_GPU_DRIVER_<product>_<version>` and
    /// `NV_GPU_VBIOS_<project>_<project sku>_<chip sku>_<version without dots>`, NVIDIA's RIM
    /// service names.
    pub rim_ids: Vec<String>,
}

/// Revocation of GPU device certificates. NVIDIA publishes revocation through its OCSP
/// responder, which is network: a verifier that can reach it (or a cache of its answers)
/// implements this hook. The default, [`NoRevocationCheck`], checks nothing, and
/// `docs/evidence.md` says so.
pub trait RevocationCheck: Send + Sync + std::fmt::Debug {
    /// Refuses the chain (device certificate first) if a certificate is revoked.
    fn check(&self, chain: &[ChainCert], now: u64) -> Result<()>;
}

/// No revocation check: the only implementation built in.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRevocationCheck;

impl RevocationCheck for NoRevocationCheck {
    fn check(&self, _chain: &[ChainCert], _now: u64) -> Result<()> {
        Ok(())
    }
}

/// Verifies GPU evidence against NVIDIA's pinned roots and a set of RIMs.
#[derive(Debug)]
pub struct GpuVerifier {
    device_roots: Vec<ChainCert>,
    rim_roots: Vec<ChainCert>,
    rims: Vec<Vec<u8>>,
    revocation: Box<dyn RevocationCheck>,
}

impl GpuVerifier {
    /// A verifier with NVIDIA's production roots and no RIMs of its own (RIMs then have to come
    /// with the evidence).
    pub fn new() -> Result<Self> {
        Ok(Self {
            device_roots: read_certificates(NVIDIA_DEVICE_ROOT_PEM.as_bytes())?,
            rim_roots: read_certificates(NVIDIA_RIM_ROOT_PEM.as_bytes())?,
            rims: Vec::new(),
            revocation: Box::new(NoRevocationCheck),
        })
    }

    /// A verifier that trusts `device_roots` and `rim_roots` (PEM) instead of NVIDIA's: for
    /// tests that sign their own reports and RIMs. Production code does not call it.
    pub fn with_test_roots(device_roots: &[u8], rim_roots: &[u8]) -> Result<Self> {
        Ok(Self {
            device_roots: read_certificates(device_roots)?,
            rim_roots: read_certificates(rim_roots)?,
            rims: Vec::new(),
            revocation: Box::new(NoRevocationCheck),
        })
    }

    /// Adds RIMs (signed XML) the verifier may use.
    pub fn with_rims(mut self, rims: impl IntoIterator<Item = Vec<u8>>) -> Result<Self> {
        self.rims.extend(rims);
        if self.rims.len() > MAX_RIMS {
            return Err(AttestError::BadPolicy {
                reason: format!("more than {MAX_RIMS} GPU RIMs"),
            });
        }
        Ok(self)
    }

    /// Adds every `*.xml` and `*.swidtag` file of `dir` as a RIM.
    pub fn with_rim_dir(self, dir: &Path) -> Result<Self> {
        let mut rims = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| AttestError::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| AttestError::io(dir, e))?.path();
            let is_rim = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "xml" || e == "swidtag");
            if is_rim {
                let size = std::fs::metadata(&path)
                    .map_err(|e| AttestError::io(&path, e))?
                    .len();
                if size > xml::MAX_XML_LEN as u64 {
                    continue;
                }
                rims.push(std::fs::read(&path).map_err(|e| AttestError::io(&path, e))?);
            }
        }
        self.with_rims(rims)
    }

    /// Uses `check` for revocation.
    pub fn with_revocation(mut self, check: Box<dyn RevocationCheck>) -> Self {
        self.revocation = check;
        self
    }

    /// Verifies one GPU's evidence, bound to `expected_nonce`, at `now` (unix seconds).
    pub fn verify(
        &self,
        evidence: &GpuEvidence,
        expected_nonce: &[u8; NONCE_LEN],
        now: u64,
    ) -> Result<GpuClaims> {
        let report = spdm::parse_report(&evidence.report)?;
        let chain = read_certificates(&evidence.certificates)?;
        let device = verify_chain("GPU device", &chain, &self.device_roots, now)?;
        verify_report_signature(&evidence.report, &report, device)?;
        if report.nonce != *expected_nonce {
            return Err(AttestError::ReportDataMismatch {
                expected: hex::encode(expected_nonce),
                found: hex::encode(report.nonce),
            });
        }
        self.revocation.check(&chain, now)?;

        let arch = arch_of(device)?;
        let product = product_of(device)?;
        let driver_version = report.driver_version()?;
        let vbios_version = report.vbios_version()?;
        if evidence.rims.len() > MAX_RIMS {
            return Err(AttestError::malformed(format!(
                "{} RIMs with one GPU's evidence, at most {MAX_RIMS}",
                evidence.rims.len()
            )));
        }

        let driver_rim = self
            .find_rim(&evidence.rims, &product, &driver_version, now)?
            .ok_or_else(|| AttestError::CollateralMissing {
                what: format!("the driver RIM for {product} driver {driver_version}"),
            })?;
        let vbios_rim = self.find_rim(&evidence.rims, &product, &vbios_version, now)?;

        let mut rim_ids = vec![format!("NV_GPU_DRIVER_{product}_{driver_version}")];
        if vbios_rim.is_some() {
            let part = |kind| report.opaque_string(kind).unwrap_or_default();
            rim_ids.push(format!(
                "NV_GPU_VBIOS_{}_{}_{}_{}",
                part(spdm::opaque::PROJECT),
                part(spdm::opaque::PROJECT_SKU),
                part(spdm::opaque::CHIP_SKU),
                vbios_version.replace('.', "")
            ));
        }
        let measurements = compare(&report, &driver_rim, vbios_rim.as_ref())?;
        Ok(GpuClaims {
            arch,
            product,
            cc_mode: true,
            driver_version,
            vbios_version,
            nonce: report.nonce,
            measurements,
            vbios_rim_checked: vbios_rim.is_some(),
            rim_ids,
        })
    }

    /// The first RIM for `product` and `version` among the evidence's and the verifier's, after
    /// verifying it. A RIM for them that fails verification is an error, not skipped: a RIM
    /// that claims to be the reference and is not signed is an attack or a fault to see.
    fn find_rim(
        &self,
        carried: &[Vec<u8>],
        product: &str,
        version: &str,
        now: u64,
    ) -> Result<Option<Rim>> {
        for text in carried.iter().chain(&self.rims) {
            let Some((rim_product, rim_version)) = peek_rim(text) else {
                continue;
            };
            if rim_product.eq_ignore_ascii_case(product)
                && rim_version.eq_ignore_ascii_case(version)
            {
                return Rim::verify(text, &self.rim_roots, now).map(Some);
            }
        }
        Ok(None)
    }
}

/// The product and version a RIM says it is for, read before its signature is checked (only to
/// pick the RIM; what is used is read again after verification).
fn peek_rim(text: &[u8]) -> Option<(String, String)> {
    let root = xml::parse(text).ok()?;
    let scope = root.scope(&xml::Scope::new());
    let meta = root.elements().find(|e| e.local_name() == "Meta")?;
    let ms = meta.scope(&scope);
    Some((
        meta.attribute(&ms, None, "product")?.to_owned(),
        meta.attribute(&ms, None, "colloquialVersion")?.to_owned(),
    ))
}

fn verify_report_signature(bytes: &[u8], report: &SpdmReport, device: &ChainCert) -> Result<()> {
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, device.public_key())
        .verify(&bytes[..report.signed_len], &report.signature)
        .map_err(|_| AttestError::BadSignature {
            what: "the GPU attestation report's signature".into(),
        })
}

fn common_name(cert: &ChainCert) -> String {
    let subject = cert.subject_text();
    subject
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
        .unwrap_or_default()
        .to_owned()
}

fn product_of(device: &ChainCert) -> Result<String> {
    // NVIDIA's device certificates are named "<product> A01 GSP FMC LF".
    let cn = common_name(device);
    let product = cn.split_whitespace().next().unwrap_or_default();
    if product.len() < 4 || !product.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(AttestError::CertificateChain {
            reason: format!("the GPU device certificate `{cn}` names no product"),
        });
    }
    Ok(product.to_owned())
}

fn arch_of(device: &ChainCert) -> Result<GpuArch> {
    let product = product_of(device)?;
    if product.starts_with("GH") {
        Ok(GpuArch::Hopper)
    } else if product.starts_with("GB") {
        Ok(GpuArch::Blackwell)
    } else {
        Err(AttestError::CertificateChain {
            reason: format!("GPU product `{product}` is neither Hopper nor Blackwell"),
        })
    }
}

/// Index 35 is NVDEC0's, compared only when NVDEC0 is enabled.
const NVDEC0_INDEX: u8 = 35;

fn compare(
    report: &SpdmReport,
    driver: &Rim,
    vbios: Option<&Rim>,
) -> Result<Vec<MeasurementResult>> {
    let nvdec_disabled = report
        .opaque
        .get(&spdm::opaque::NVDEC0_STATUS)
        .is_some_and(|v| v.first() == Some(&spdm::NVDEC0_DISABLED));
    let mut references: Vec<(&rim::ReferenceMeasurement, &'static str)> = driver
        .measurements
        .iter()
        .filter(|m| m.active)
        .map(|m| (m, "driver"))
        .collect();
    if let Some(vbios) = vbios {
        for m in vbios.measurements.iter().filter(|m| m.active) {
            if references.iter().any(|(r, _)| r.index == m.index) {
                return Err(AttestError::malformed(format!(
                    "the driver and VBIOS RIMs both set GPU measurement index {}",
                    m.index
                )));
            }
            references.push((m, "vbios"));
        }
    }
    references.sort_by_key(|(m, _)| m.index);

    let mut results = Vec::with_capacity(references.len());
    let mut mismatched = Vec::new();
    for (reference, source) in references {
        if reference.index == NVDEC0_INDEX && nvdec_disabled {
            continue;
        }
        let value = reference
            .index
            .checked_add(1)
            .and_then(|block| report.measurement(block));
        let matches = value.is_some_and(|v| reference.alternatives.iter().any(|a| a == v));
        if !matches {
            mismatched.push(reference.index);
        }
        results.push(MeasurementResult {
            index: reference.index,
            source,
            matches,
        });
    }
    if !mismatched.is_empty() {
        return Err(AttestError::GpuMeasurementMismatch {
            indices: mismatched
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests;
