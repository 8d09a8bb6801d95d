//! X.509 chains of NVIDIA's devices and RIM signers: ECDSA with SHA-384 (P-384) or SHA-256
//! (P-256), checked link by link up to a pinned root.
//!
//! What is checked: every certificate parses, each is issued (issuer name equal to the next's
//! subject) and signed by the next, every issuer is a CA (basicConstraints cA), the chain ends
//! with a certificate byte for byte equal to a trusted root (or one that a trusted root signs,
//! in which case the root completes it), and every certificate, the root included, is within its
//! validity period at `now`. Revocation is not checked here: NVIDIA publishes it through OCSP,
//! which is network ([`super::RevocationCheck`] is the hook).

use aws_lc_rs::signature::{
    UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

use crate::error::{AttestError, Result};

/// Most certificates accepted in one chain.
pub const MAX_CHAIN_LEN: usize = 8;
/// Largest PEM text accepted for a chain.
pub const MAX_CHAIN_TEXT: usize = 64 * 1024;

const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// A certificate with its DER.
#[derive(Clone, Debug)]
pub struct ChainCert {
    /// The DER encoding, as received.
    pub der: Vec<u8>,
    /// The parsed certificate.
    pub cert: Certificate,
}

impl ChainCert {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = Certificate::from_der(der).map_err(|e| AttestError::CertificateChain {
            reason: format!("a certificate is not DER X.509: {e}"),
        })?;
        Ok(Self {
            der: der.to_vec(),
            cert,
        })
    }

    /// The subject's common name, or the whole subject when it has none.
    pub fn subject_text(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// The subject public key's bits (an uncompressed EC point for NVIDIA's keys).
    pub fn public_key(&self) -> &[u8] {
        self.cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
    }

    fn is_ca(&self) -> bool {
        let Some(extensions) = self.cert.tbs_certificate().extensions() else {
            return false;
        };
        extensions
            .iter()
            .find(|ext| ext.extn_id == BASIC_CONSTRAINTS)
            .and_then(|ext| {
                x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes()).ok()
            })
            .is_some_and(|bc| bc.ca)
    }

    fn validity(&self) -> (u64, u64) {
        let validity = self.cert.tbs_certificate().validity();
        (
            validity.not_before.to_unix_duration().as_secs(),
            validity.not_after.to_unix_duration().as_secs(),
        )
    }

    /// The earliest unix time after which this certificate is no longer valid.
    pub fn not_after(&self) -> u64 {
        self.validity().1
    }

    /// Whether `issuer`'s key signed this certificate.
    fn signed_by(&self, issuer: &ChainCert) -> Result<()> {
        let algorithm: &dyn VerificationAlgorithm = match self.cert.signature_algorithm().oid {
            ECDSA_WITH_SHA384 => &ECDSA_P384_SHA384_ASN1,
            ECDSA_WITH_SHA256 => &ECDSA_P256_SHA256_ASN1,
            other => {
                return Err(AttestError::CertificateChain {
                    reason: format!(
                        "`{}` is signed with {other}, not ECDSA with SHA-384 or SHA-256",
                        self.subject_text()
                    ),
                })
            }
        };
        // The signature covers the TBS bytes as received: a re-encoding may differ (NVIDIA's
        // RIM CAs write dates before 2050 as GeneralizedTime, which `der` re-encodes as UTCTime).
        let tbs = raw_tbs(&self.der).ok_or_else(|| AttestError::CertificateChain {
            reason: format!("`{}` has no readable TBS certificate", self.subject_text()),
        })?;
        let signature =
            self.cert
                .signature()
                .as_bytes()
                .ok_or_else(|| AttestError::CertificateChain {
                    reason: format!(
                        "`{}` has a signature of unaligned bits",
                        self.subject_text()
                    ),
                })?;
        UnparsedPublicKey::new(algorithm, issuer.public_key())
            .verify(tbs, signature)
            .map_err(|_| AttestError::CertificateChain {
                reason: format!(
                    "`{}` is not signed by `{}`",
                    self.subject_text(),
                    issuer.subject_text()
                ),
            })
    }
}

/// Reads certificates from PEM text (any number of `CERTIFICATE` blocks) or, when the bytes are
/// not PEM, from concatenated DER.
pub fn read_certificates(bytes: &[u8]) -> Result<Vec<ChainCert>> {
    if bytes.len() > MAX_CHAIN_TEXT {
        return Err(AttestError::CertificateChain {
            reason: format!(
                "{} bytes of certificates, at most {MAX_CHAIN_TEXT} are accepted",
                bytes.len()
            ),
        });
    }
    let certs = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => read_pem(text)?,
        _ => read_der_sequence(bytes)?,
    };
    if certs.is_empty() || certs.len() > MAX_CHAIN_LEN {
        return Err(AttestError::CertificateChain {
            reason: format!(
                "{} certificates, expected 1 to {MAX_CHAIN_LEN}",
                certs.len()
            ),
        });
    }
    Ok(certs)
}

fn read_pem(text: &str) -> Result<Vec<ChainCert>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = body
            .find(END)
            .ok_or_else(|| AttestError::CertificateChain {
                reason: "a PEM certificate has no END line".into(),
            })?;
        let b64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = BASE64
            .decode(b64)
            .map_err(|e| AttestError::CertificateChain {
                reason: format!("a PEM certificate is not base64: {e}"),
            })?;
        certs.push(ChainCert::from_der(&der)?);
        if certs.len() > MAX_CHAIN_LEN {
            break;
        }
        rest = &body[end + END.len()..];
    }
    Ok(certs)
}

fn read_der_sequence(mut bytes: &[u8]) -> Result<Vec<ChainCert>> {
    let mut certs = Vec::new();
    while !bytes.is_empty() && certs.len() <= MAX_CHAIN_LEN {
        let len = der_length(bytes).ok_or_else(|| AttestError::CertificateChain {
            reason: "certificates are neither PEM nor DER".into(),
        })?;
        certs.push(ChainCert::from_der(&bytes[..len])?);
        bytes = &bytes[len..];
    }
    Ok(certs)
}

/// The TBS certificate's bytes inside a certificate's DER: the first element of the outer
/// SEQUENCE.
fn raw_tbs(der: &[u8]) -> Option<&[u8]> {
    let total = der_length(der)?;
    let header = match der.get(1)? {
        n if *n < 0x80 => 2,
        n => 2 + usize::from(n & 0x7F),
    };
    let inner = der.get(header..total)?;
    let len = der_length(inner)?;
    inner.get(..len)
}

/// The total length of the DER SEQUENCE at the start of `bytes`, if it fits.
fn der_length(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 2 || bytes[0] != 0x30 {
        return None;
    }
    let first = usize::from(bytes[1]);
    let (header, content) = if first < 0x80 {
        (2, first)
    } else {
        let n = first & 0x7F;
        if n == 0 || n > 3 || bytes.len() < 2 + n {
            return None;
        }
        let content = bytes[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (2 + n, content)
    };
    let total = header.checked_add(content)?;
    (total <= bytes.len()).then_some(total)
}

/// Verifies `chain` (leaf first) up to one of `roots` at `now`, and returns the leaf.
///
/// `what` names the chain in errors ("GPU device", "RIM signer").
pub fn verify_chain<'c>(
    what: &str,
    chain: &'c [ChainCert],
    roots: &[ChainCert],
    now: u64,
) -> Result<&'c ChainCert> {
    let leaf = chain.first().ok_or_else(|| AttestError::CertificateChain {
        reason: format!("the {what} chain is empty"),
    })?;
    let last = chain.last().unwrap_or(leaf);
    // The chain either ends with a trusted root itself, or with a certificate a root signs.
    let root = match roots.iter().find(|root| root.der == last.der) {
        Some(root) => root,
        None => roots
            .iter()
            .find(|root| {
                last.cert.tbs_certificate().issuer() == root.cert.tbs_certificate().subject()
                    && last.signed_by(root).is_ok()
            })
            .ok_or_else(|| AttestError::CertificateChain {
                reason: format!(
                    "the {what} chain ends with `{}`, which is not signed by a trusted root",
                    last.subject_text()
                ),
            })?,
    };

    let mut links: Vec<&ChainCert> = chain.iter().collect();
    if root.der != last.der {
        links.push(root);
    }
    for pair in links.windows(2) {
        let (child, issuer) = (pair[0], pair[1]);
        if child.cert.tbs_certificate().issuer() != issuer.cert.tbs_certificate().subject() {
            return Err(AttestError::CertificateChain {
                reason: format!(
                    "`{}` names issuer `{}`, but the next certificate is `{}`",
                    child.subject_text(),
                    child.cert.tbs_certificate().issuer(),
                    issuer.subject_text()
                ),
            });
        }
        if !issuer.is_ca() {
            return Err(AttestError::CertificateChain {
                reason: format!(
                    "`{}` issues certificates but is not a CA",
                    issuer.subject_text()
                ),
            });
        }
        child.signed_by(issuer)?;
    }
    for cert in &links {
        let (not_before, not_after) = cert.validity();
        if now < not_before || now > not_after {
            return Err(AttestError::CollateralExpired {
                what: format!(
                    "the {what} certificate `{}` is valid from unix {not_before} to {not_after}, \
                     and the verification time is unix {now}",
                    cert.subject_text()
                ),
            });
        }
    }
    Ok(leaf)
}
