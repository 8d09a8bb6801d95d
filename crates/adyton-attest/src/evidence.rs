//! Typed evidence and its serialisation (`docs/evidence.md`).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{AttestError, Result};
use crate::gpu::GpuEvidence;

/// Length of the report data every TEE binds into its evidence.
pub const REPORT_DATA_LEN: usize = 64;

/// Largest serialised evidence accepted: a DCAP quote with its certification data is a few KiB,
/// an SNP certificate table a few KiB more.
pub const MAX_EVIDENCE_LEN: usize = 256 * 1024;

/// Most GPUs whose evidence is attached to one CPU evidence.
pub const MAX_GPUS: usize = 8;

/// Largest evidence of one GPU (report, certificate chain and carried RIMs together): a report
/// is about 4 KiB, a chain 5 KiB, a RIM 20 KiB.
pub const MAX_GPU_EVIDENCE_LEN: usize = 128 * 1024;

/// Largest evidence JSON accepted: the CPU evidence and every GPU's, in base64.
const MAX_EVIDENCE_JSON_LEN: usize = (MAX_EVIDENCE_LEN + MAX_GPUS * MAX_GPU_EVIDENCE_LEN) * 2;

/// The kinds of trusted execution environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TeeKind {
    /// Intel SGX (DCAP quote v3), under Gramine.
    Sgx,
    /// Intel TDX (DCAP quote v4 or v5).
    Tdx,
    /// AMD SEV-SNP (attestation report).
    Snp,
    /// Adyton's simulated TEE: INSECURE, for development and tests only.
    Sim,
    /// An Azure confidential VM on SEV-SNP: the HCL report (SNP report and runtime data) and a
    /// vTPM quote (`crate::verifier::azure`).
    #[serde(rename = "AZURE-SNP")]
    AzureSnp,
    /// An Azure confidential VM on TDX: the HCL report (TD report and runtime data), the TD quote
    /// and a vTPM quote (`crate::verifier::azure`).
    #[serde(rename = "AZURE-TDX")]
    AzureTdx,
    /// AWS Nitro Enclaves (the Nitro Secure Module's COSE_Sign1 attestation document).
    #[serde(rename = "NITRO")]
    Nitro,
}

impl TeeKind {
    /// All kinds.
    pub const ALL: [TeeKind; 7] = [
        TeeKind::Sgx,
        TeeKind::Tdx,
        TeeKind::Snp,
        TeeKind::Sim,
        TeeKind::AzureSnp,
        TeeKind::AzureTdx,
        TeeKind::Nitro,
    ];

    /// The name used in HTTP headers (`Attestation-Type`) and files: `SGX`, `TDX`, `SNP`, `SIM`.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sgx => "SGX",
            TeeKind::Tdx => "TDX",
            TeeKind::Snp => "SNP",
            TeeKind::Sim => "SIM",
            TeeKind::AzureSnp => "AZURE-SNP",
            TeeKind::AzureTdx => "AZURE-TDX",
            TeeKind::Nitro => "NITRO",
        }
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TeeKind {
    type Err = AttestError;

    fn from_str(name: &str) -> Result<Self> {
        TeeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| AttestError::UnknownTee {
                name: name.chars().take(32).collect(),
            })
    }
}

/// Evidence from a TEE: the raw quote or report, and optional certificates.
///
/// - SGX and TDX: `quote` is the raw DCAP quote.
/// - SNP: `quote` is the 1184-byte attestation report; `certificates` may hold the certificate
///   table from configfs-tsm's `auxblob` (VCEK or VLEK, and possibly ASK and ARK).
/// - SIM: `quote` is a SIM report (`crate::sim`), which says INSECURE in its first bytes.
/// - AZURE-SNP and AZURE-TDX: `quote` is the JSON container of `crate::verifier::azure` (the HCL
///   report, the vTPM quote with its signature and PCR values, the report data, and for TDX the TD
///   quote); `certificates` may hold the VCEK chain as PEM (AZURE-SNP).
/// - NITRO: `quote` is the Nitro Secure Module's attestation document (COSE_Sign1, CBOR), which
///   carries its own certificate chain; `certificates` is absent.
///
/// `gpus` holds the evidence of the confidential GPUs this TEE drives (composite evidence,
/// `crate::composite`), each bound to this evidence's report data; it is empty for a CPU alone.
#[derive(Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Which TEE produced it.
    pub tee: TeeKind,
    /// The raw quote or report.
    pub quote: Vec<u8>,
    /// Certificates shipped with the evidence, when the TEE provides them.
    pub certificates: Option<Vec<u8>>,
    /// The evidence of the GPUs attached to this TEE, in GPU index order.
    pub gpus: Vec<GpuEvidence>,
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evidence")
            .field("tee", &self.tee)
            .field("quote_len", &self.quote.len())
            .field(
                "certificates_len",
                &self.certificates.as_ref().map(Vec::len),
            )
            .field("gpus", &self.gpus.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceJson {
    format: String,
    tee: TeeKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    warning: Option<String>,
    quote: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    certificates: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    gpus: Vec<GpuEvidenceJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuEvidenceJson {
    report: String,
    certificates: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    rims: Vec<String>,
}

const FORMAT: &str = "adyton-evidence-v1";
const SIM_WARNING: &str = "INSECURE: simulated TEE, for development and tests only";

impl Evidence {
    /// Serialises to the documented JSON form, with binary fields in standard base64.
    pub fn to_json(&self) -> String {
        let doc = EvidenceJson {
            format: FORMAT.into(),
            tee: self.tee,
            warning: (self.tee == TeeKind::Sim).then(|| SIM_WARNING.into()),
            quote: BASE64.encode(&self.quote),
            certificates: self.certificates.as_ref().map(|c| BASE64.encode(c)),
            gpus: self
                .gpus
                .iter()
                .map(|gpu| GpuEvidenceJson {
                    report: BASE64.encode(&gpu.report),
                    certificates: BASE64.encode(&gpu.certificates),
                    rims: gpu.rims.iter().map(|r| BASE64.encode(r)).collect(),
                })
                .collect(),
        };
        // A struct of strings always serialises.
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Reads the JSON form, refusing unknown fields and oversized input.
    pub fn from_json(text: &[u8]) -> Result<Self> {
        if text.len() > MAX_EVIDENCE_JSON_LEN {
            return Err(AttestError::malformed(format!(
                "{} bytes of evidence JSON, at most {MAX_EVIDENCE_JSON_LEN} are accepted",
                text.len(),
            )));
        }
        let doc: EvidenceJson = serde_json::from_slice(text)
            .map_err(|e| AttestError::malformed(format!("not evidence JSON: {e}")))?;
        if doc.format != FORMAT {
            return Err(AttestError::malformed(format!(
                "format `{}`, expected `{FORMAT}`",
                doc.format.chars().take(64).collect::<String>()
            )));
        }
        let decode = |field: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| AttestError::malformed(format!("{field} is not base64: {e}")))
        };
        let evidence = Evidence {
            tee: doc.tee,
            quote: decode("quote", &doc.quote)?,
            certificates: doc
                .certificates
                .as_deref()
                .map(|c| decode("certificates", c))
                .transpose()?,
            gpus: Vec::new(),
        };
        if evidence.quote.len() > MAX_EVIDENCE_LEN {
            return Err(AttestError::malformed("quote too large"));
        }
        if doc.gpus.len() > MAX_GPUS {
            return Err(AttestError::malformed(format!(
                "evidence of {} GPUs, at most {MAX_GPUS} are accepted",
                doc.gpus.len()
            )));
        }
        let mut evidence = evidence;
        for (i, gpu) in doc.gpus.iter().enumerate() {
            let gpu = GpuEvidence {
                report: decode(&format!("gpus[{i}].report"), &gpu.report)?,
                certificates: decode(&format!("gpus[{i}].certificates"), &gpu.certificates)?,
                rims: gpu
                    .rims
                    .iter()
                    .enumerate()
                    .map(|(j, r)| decode(&format!("gpus[{i}].rims[{j}]"), r))
                    .collect::<Result<_>>()?,
            };
            let size = gpu.report.len()
                + gpu.certificates.len()
                + gpu.rims.iter().map(Vec::len).sum::<usize>();
            if size > MAX_GPU_EVIDENCE_LEN {
                return Err(AttestError::malformed(format!(
                    "GPU {i}'s evidence has {size} bytes, at most {MAX_GPU_EVIDENCE_LEN}"
                )));
            }
            evidence.gpus.push(gpu);
        }
        Ok(evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_sim_warning() {
        let evidence = Evidence {
            tee: TeeKind::Sim,
            quote: vec![1, 2, 3],
            certificates: None,
            gpus: Vec::new(),
        };
        let json = evidence.to_json();
        assert!(json.contains("INSECURE"));
        assert_eq!(Evidence::from_json(json.as_bytes()).unwrap(), evidence);

        let tdx = Evidence {
            tee: TeeKind::Tdx,
            quote: vec![9; 10],
            certificates: Some(vec![4]),
            gpus: Vec::new(),
        };
        let json = tdx.to_json();
        assert!(!json.contains("INSECURE"));
        assert_eq!(Evidence::from_json(json.as_bytes()).unwrap(), tdx);
    }

    #[test]
    fn gpus_round_trip_and_old_json_still_reads() {
        let composite = Evidence {
            tee: TeeKind::Snp,
            quote: vec![1; 8],
            certificates: None,
            gpus: vec![
                GpuEvidence {
                    report: vec![2; 5],
                    certificates: b"pem".to_vec(),
                    rims: vec![b"<a/>".to_vec()],
                },
                GpuEvidence {
                    report: vec![3; 5],
                    certificates: b"pem".to_vec(),
                    rims: Vec::new(),
                },
            ],
        };
        let json = composite.to_json();
        assert!(json.contains("\"gpus\""));
        assert_eq!(Evidence::from_json(json.as_bytes()).unwrap(), composite);
        let old = br#"{"format":"adyton-evidence-v1","tee":"SGX","quote":"AQI="}"#;
        let read = Evidence::from_json(old).unwrap();
        assert!(read.gpus.is_empty());
        assert!(!read.to_json().contains("gpus"));
    }

    #[test]
    fn too_many_gpus_or_unknown_gpu_fields_are_refused() {
        let gpu = r#"{"report":"AQ==","certificates":"AQ=="}"#;
        let many = format!(
            r#"{{"format":"adyton-evidence-v1","tee":"SNP","quote":"AQ==","gpus":[{}]}}"#,
            [gpu; MAX_GPUS + 1].join(",")
        );
        assert!(Evidence::from_json(many.as_bytes()).is_err());
        let extra = br#"{"format":"adyton-evidence-v1","tee":"SNP","quote":"AQ==","gpus":[{"report":"AQ==","certificates":"AQ==","nonce":"AQ=="}]}"#;
        assert!(Evidence::from_json(extra).is_err());
    }

    #[test]
    fn bad_json_is_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"format":"other","tee":"SGX","quote":""}"#,
            br#"{"format":"adyton-evidence-v1","tee":"XYZ","quote":""}"#,
            br#"{"format":"adyton-evidence-v1","tee":"SGX","quote":"%%%"}"#,
            br#"{"format":"adyton-evidence-v1","tee":"SGX","quote":"","extra":1}"#,
        ] {
            assert!(matches!(
                Evidence::from_json(bad),
                Err(AttestError::MalformedEvidence { .. })
            ));
        }
    }

    #[test]
    fn tee_names_parse_case_insensitively() {
        assert_eq!("tdx".parse::<TeeKind>().unwrap(), TeeKind::Tdx);
        assert_eq!("SNP".parse::<TeeKind>().unwrap(), TeeKind::Snp);
        assert_eq!("nitro".parse::<TeeKind>().unwrap(), TeeKind::Nitro);
        assert!("nitr0".parse::<TeeKind>().is_err());
        assert_eq!(serde_json::to_string(&TeeKind::Nitro).unwrap(), "\"NITRO\"");
    }
}
