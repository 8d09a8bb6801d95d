//! Collateral: what a verifier needs besides the evidence (Intel TCB info, QE identity, CRLs and
//! PCK chain; AMD's ARK, ASK and VCEK or VLEK).
//!
//! A bundle file carries it for offline sites:
//!
//! ```json
//! { "dcap": { ...the JSON of dcap-qvl's QuoteCollateralV3, as in its sample/ folder... },
//!   "snp":  { "ark": "<PEM or base64 DER>", "ask": "...", "vcek": "..." } }
//! ```

use serde::Deserialize;

use crate::error::{AttestError, Result};

/// Largest collateral file accepted.
pub const MAX_COLLATERAL_LEN: usize = 4 * 1024 * 1024;

/// AMD certificates for SNP verification. Each is PEM or DER.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpCollateral {
    /// AMD Root Key certificate; the built-in one for the report's processor is used when absent.
    #[serde(default, with = "opt_cert")]
    pub ark: Option<Vec<u8>>,
    /// AMD SEV Key certificate; the built-in one is used when absent.
    #[serde(default, with = "opt_cert")]
    pub ask: Option<Vec<u8>>,
    /// The chip's VCEK (or VLEK) certificate.
    #[serde(default, with = "opt_cert")]
    pub vcek: Option<Vec<u8>>,
}

/// Collateral for any TEE; each verifier takes the part it needs.
#[derive(Clone, Debug, Default)]
pub struct Collateral {
    /// Intel DCAP collateral for SGX and TDX.
    pub dcap: Option<dcap_qvl::QuoteCollateralV3>,
    /// AMD certificates for SNP.
    pub snp: Option<SnpCollateral>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    #[serde(default)]
    dcap: Option<dcap_qvl::QuoteCollateralV3>,
    #[serde(default)]
    snp: Option<SnpCollateral>,
}

impl Collateral {
    /// No collateral (enough for SIM).
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads a bundle file's bytes.
    pub fn from_bundle_json(bytes: &[u8]) -> Result<Self> {
        check_len(bytes)?;
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| AttestError::CollateralMissing {
                what: format!("collateral bundle unreadable: {e}"),
            })?;
        Ok(Self {
            dcap: bundle.dcap,
            snp: bundle.snp,
        })
    }

    /// Reads DCAP collateral JSON as dcap-qvl writes it (its `sample/*_collateral.json`).
    pub fn from_dcap_json(bytes: &[u8]) -> Result<Self> {
        check_len(bytes)?;
        let dcap = serde_json::from_slice(bytes).map_err(|e| AttestError::CollateralMissing {
            what: format!("DCAP collateral JSON unreadable: {e}"),
        })?;
        Ok(Self {
            dcap: Some(dcap),
            snp: None,
        })
    }

    /// Reads either form: a bundle (with `dcap` or `snp` keys) or bare DCAP collateral.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Self::from_bundle_json(bytes)
            .or_else(|bundle_err| Self::from_dcap_json(bytes).map_err(|_| bundle_err))
    }
}

fn check_len(bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_COLLATERAL_LEN {
        return Err(AttestError::CollateralMissing {
            what: format!(
                "collateral of {} bytes exceeds the {MAX_COLLATERAL_LEN}-byte limit",
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// Certificates in JSON: PEM text as is, or base64 of DER.
mod opt_cert {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            if t.trim_start().starts_with("-----BEGIN") {
                Ok(t.into_bytes())
            } else {
                BASE64.decode(t.trim()).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "certificate is neither PEM nor base64 DER: {e}"
                    ))
                })
            }
        })
        .transpose()
    }
}
