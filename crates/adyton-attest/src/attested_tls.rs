//! Attested TLS: the binding between a TLS key and TEE evidence, shared by the server that makes
//! it and the client that checks it (`docs/attested-tls.md`).
//!
//! - The server's self-signed certificate carries evidence in a non-critical X.509 extension
//!   ([`EVIDENCE_EXTENSION_OID`]), whose report data is [`report_data_for_key`] of the
//!   certificate's SubjectPublicKeyInfo.
//! - Fresh evidence for a client's nonce binds the same key and the nonce
//!   ([`report_data_for_nonce`]), with another domain prefix, so that neither kind of evidence
//!   can stand in for the other.
//!
//! This module only encodes and decodes. Verifying the evidence and judging it against a policy
//! are the caller's job (`crate::verifier`, `crate::policy`).

use aws_lc_rs::digest::{Context, SHA512};
use x509_cert::certificate::Rfc5280;
use x509_cert::der::asn1::{BitStringRef, OctetStringRef};
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader, Tag, TagNumber};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

use crate::error::AttestError;
use crate::evidence::{Evidence, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};

/// The UUID this project generated once to name its evidence extension.
pub const EVIDENCE_EXTENSION_UUID: &str = "ecc4d70f-cf2f-431b-8baa-364ef843181d";

/// The OID of the evidence extension, in dotted form.
///
/// It is derived from [`EVIDENCE_EXTENSION_UUID`] under `1.2.840.113556.1.8000.2554`, the arc
/// Microsoft reserves for OIDs made from GUIDs without registration: the UUID's hex digits,
/// grouped 4-4-4-4-4-6-6, become seven arcs. The equally unregistered X.667 form (`2.25.` and the
/// UUID as one 128-bit integer) is not used because many X.509 stacks refuse arcs that large:
/// `const-oid` (and so `x509-cert`) stops at 32 bits and `rcgen` at 64, and Go's `crypto/x509`
/// refuses the whole certificate, which would keep even certificate-pinning clients out.
pub const EVIDENCE_EXTENSION_OID: &str =
    "1.2.840.113556.1.8000.2554.60612.55055.53039.17179.35754.3559160.4397085";

/// The arcs of [`EVIDENCE_EXTENSION_OID`].
pub const EVIDENCE_EXTENSION_OID_ARCS: &[u64] = &[
    1, 2, 840, 113_556, 1, 8000, 2554, 60612, 55055, 53039, 17179, 35754, 3_559_160, 4_397_085,
];

/// The DER content octets of [`EVIDENCE_EXTENSION_OID`] (without the `06 22` tag and length).
pub const EVIDENCE_EXTENSION_OID_DER: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x14, 0x01, 0xbe, 0x40, 0x93, 0x7a, 0x83, 0xd9, 0x44, 0x83, 0xae,
    0x0f, 0x83, 0x9e, 0x2f, 0x81, 0x86, 0x1b, 0x82, 0x97, 0x2a, 0x81, 0xd9, 0x9d, 0x78, 0x82, 0x8c,
    0xb0, 0x1d,
];

/// Domain prefix of the key binding: ASCII `adyton-attested-tls-v1` and one zero byte.
pub const KEY_BINDING_PREFIX: &[u8] = b"adyton-attested-tls-v1\0";

/// Domain prefix of the nonce binding: ASCII `adyton-attested-tls-nonce-v1` and one zero byte.
pub const NONCE_BINDING_PREFIX: &[u8] = b"adyton-attested-tls-nonce-v1\0";

/// Shortest nonce accepted: 128 bits, so that a nonce cannot be guessed in advance.
pub const MIN_NONCE_LEN: usize = 16;

/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 64;

/// Largest certificate read: the evidence JSON and a few hundred bytes of certificate.
pub const MAX_CERTIFICATE_LEN: usize = 2 * MAX_EVIDENCE_LEN + 16 * 1024;

/// What can be wrong with an attested-TLS certificate or nonce, before any evidence is verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestedTlsError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not an X.509 certificate: {reason}")]
    NotACertificate {
        /// What is wrong.
        reason: String,
    },

    /// The certificate has no evidence extension: it was not made by an attested server.
    #[error(
        "the certificate carries no attestation evidence (no extension {EVIDENCE_EXTENSION_OID})"
    )]
    NoEvidenceExtension,

    /// The evidence extension appears more than once; which one counts would be ambiguous.
    #[error(
        "the certificate carries the evidence extension {count} times; exactly one is allowed"
    )]
    DuplicateEvidenceExtension {
        /// How many times it appears.
        count: usize,
    },

    /// The extension is there but its value is not one DER OCTET STRING of evidence JSON.
    #[error("the evidence extension is malformed: {reason}")]
    MalformedExtension {
        /// What is wrong.
        reason: String,
    },

    /// The extension holds bytes that are not Adyton evidence.
    #[error("the evidence extension does not hold Adyton evidence: {0}")]
    BadEvidence(#[source] AttestError),

    /// A nonce outside `MIN_NONCE_LEN..=MAX_NONCE_LEN` bytes.
    #[error("a nonce is {MIN_NONCE_LEN} to {MAX_NONCE_LEN} bytes, this one is {len}")]
    NonceLength {
        /// The nonce's length.
        len: usize,
    },
}

/// The report data that binds a TLS key: SHA-512(`KEY_BINDING_PREFIX` || `spki_der`).
pub fn report_data_for_key(spki_der: &[u8]) -> [u8; REPORT_DATA_LEN] {
    let mut hasher = Context::new(&SHA512);
    hasher.update(KEY_BINDING_PREFIX);
    hasher.update(spki_der);
    finish(hasher)
}

/// The report data that binds a TLS key and a client's nonce:
/// SHA-512(`NONCE_BINDING_PREFIX` || u32be(len(spki)) || spki || u32be(len(nonce)) || nonce).
///
/// Both lengths are written, so that no (key, nonce) pair hashes the bytes of another.
pub fn report_data_for_nonce(
    spki_der: &[u8],
    nonce: &[u8],
) -> Result<[u8; REPORT_DATA_LEN], AttestedTlsError> {
    check_nonce(nonce)?;
    // A SubjectPublicKeyInfo is far below 4 GiB; a longer one cannot be bound.
    let spki_len =
        u32::try_from(spki_der.len()).map_err(|_| AttestedTlsError::NotACertificate {
            reason: "SubjectPublicKeyInfo longer than 4 GiB".into(),
        })?;
    let mut hasher = Context::new(&SHA512);
    hasher.update(NONCE_BINDING_PREFIX);
    hasher.update(&spki_len.to_be_bytes());
    hasher.update(spki_der);
    // The nonce length was checked above, so it fits.
    hasher.update(&(nonce.len() as u32).to_be_bytes());
    hasher.update(nonce);
    Ok(finish(hasher))
}

/// Checks a nonce's length.
pub fn check_nonce(nonce: &[u8]) -> Result<(), AttestedTlsError> {
    if (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(AttestedTlsError::NonceLength { len: nonce.len() })
    }
}

fn finish(hasher: Context) -> [u8; REPORT_DATA_LEN] {
    let mut out = [0u8; REPORT_DATA_LEN];
    out.copy_from_slice(hasher.finish().as_ref());
    out
}

/// The extension's `extnValue` content: the DER encoding of one OCTET STRING whose contents are
/// the evidence JSON (`Evidence::to_json`).
pub fn evidence_extension_value(evidence: &Evidence) -> Result<Vec<u8>, AttestedTlsError> {
    let json = evidence.to_json();
    OctetStringRef::new(json.as_bytes())
        .and_then(|octets| octets.to_der())
        .map_err(|e| AttestedTlsError::MalformedExtension {
            reason: format!("cannot encode {} bytes of evidence: {e}", json.len()),
        })
}

/// Reads the evidence and the SubjectPublicKeyInfo (DER) from a certificate.
///
/// The certificate must be one DER X.509 v3 certificate with exactly one evidence extension,
/// whose value is one OCTET STRING of evidence JSON. Nothing is verified here: not the
/// certificate's signature or dates (an attested client ignores them), and not the evidence.
pub fn evidence_from_certificate(cert_der: &[u8]) -> Result<(Evidence, Vec<u8>), AttestedTlsError> {
    if cert_der.len() > MAX_CERTIFICATE_LEN {
        return Err(AttestedTlsError::NotACertificate {
            reason: format!(
                "{} bytes, at most {MAX_CERTIFICATE_LEN} are accepted",
                cert_der.len()
            ),
        });
    }
    let parts = split_certificate(cert_der).map_err(|e| AttestedTlsError::NotACertificate {
        reason: e.to_string(),
    })?;
    let ours: Vec<&RawExtension<'_>> = parts
        .extensions
        .iter()
        .filter(|ext| ext.oid == EVIDENCE_EXTENSION_OID_DER)
        .collect();
    let extension = match ours.as_slice() {
        [] => return Err(AttestedTlsError::NoEvidenceExtension),
        [one] => one,
        more => return Err(AttestedTlsError::DuplicateEvidenceExtension { count: more.len() }),
    };
    let json = <&OctetStringRef>::from_der(extension.value).map_err(|e| {
        AttestedTlsError::MalformedExtension {
            reason: format!("extnValue is not one DER OCTET STRING: {e}"),
        }
    })?;
    let evidence = Evidence::from_json(json.as_bytes()).map_err(AttestedTlsError::BadEvidence)?;
    Ok((evidence, parts.spki.to_vec()))
}

/// The SubjectPublicKeyInfo (DER) of a certificate, whether or not it carries evidence.
pub fn spki_from_certificate(cert_der: &[u8]) -> Result<Vec<u8>, AttestedTlsError> {
    split_certificate(cert_der)
        .map(|parts| parts.spki.to_vec())
        .map_err(|e| AttestedTlsError::NotACertificate {
            reason: e.to_string(),
        })
}

struct RawExtension<'a> {
    oid: &'a [u8],
    value: &'a [u8],
}

struct CertificateParts<'a> {
    spki: &'a [u8],
    extensions: Vec<RawExtension<'a>>,
}

/// Splits a certificate into the parts this module reads.
///
/// `x509-cert`'s `Certificate` is not used because it refuses any certificate with an OID arc
/// above 32 bits anywhere, including in an extension nobody reads; here extension OIDs stay raw
/// bytes. Every other field is decoded with its `x509-cert` type, so that the input is checked
/// to be a DER certificate.
fn split_certificate(cert_der: &[u8]) -> x509_cert::der::Result<CertificateParts<'_>> {
    let mut reader = SliceReader::new(cert_der)?;
    let tbs = reader.sequence(|cert| {
        let tbs = cert.tlv_bytes()?;
        AlgorithmIdentifierRef::decode(cert)?;
        BitStringRef::decode(cert)?;
        Ok::<_, x509_cert::der::Error>(tbs)
    })?;
    reader.finish()?;

    let mut reader = SliceReader::new(tbs)?;
    let parts = reader.sequence(|tbs| {
        let version = match Tag::peek(tbs)? {
            Tag::ContextSpecific {
                constructed: true,
                number: TagNumber(0),
            } => {
                Header::decode(tbs)?;
                u8::decode(tbs)?
            }
            _ => 0,
        };
        if version != 2 {
            return Err(tbs.error(Tag::Integer.value_error()));
        }
        SerialNumber::<Rfc5280>::decode(tbs)?;
        AlgorithmIdentifierRef::decode(tbs)?;
        Name::decode(tbs)?;
        Validity::<Rfc5280>::decode(tbs)?;
        Name::decode(tbs)?;
        let spki = tbs.tlv_bytes()?;
        SubjectPublicKeyInfoRef::from_der(spki)?;
        // issuerUniqueID [1] and subjectUniqueID [2] are skipped; extensions are [3].
        let mut extensions = Vec::new();
        while !tbs.is_finished() {
            let header = Header::decode(tbs)?;
            match header.tag() {
                Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber(3),
                } => {
                    let body = tbs.read_slice(header.length())?;
                    extensions = split_extensions(body)?;
                }
                Tag::ContextSpecific {
                    number: TagNumber(1 | 2),
                    ..
                } => {
                    tbs.read_slice(header.length())?;
                }
                other => return Err(tbs.error(other.unexpected_error(None))),
            }
        }
        Ok::<_, x509_cert::der::Error>(CertificateParts { spki, extensions })
    })?;
    reader.finish()?;
    Ok(parts)
}

/// Reads `Extensions ::= SEQUENCE OF Extension`, keeping each OID as raw content octets.
fn split_extensions(body: &[u8]) -> x509_cert::der::Result<Vec<RawExtension<'_>>> {
    let mut reader = SliceReader::new(body)?;
    let extensions = reader.sequence(|list| {
        let mut out = Vec::new();
        while !list.is_finished() {
            out.push(list.sequence(|ext| {
                let header = Header::decode(ext)?;
                header.tag().assert_eq(Tag::ObjectIdentifier)?;
                let oid = ext.read_slice(header.length())?;
                if Tag::peek(ext)? == Tag::Boolean {
                    bool::decode(ext)?;
                }
                let value = <&OctetStringRef>::decode(ext)?.as_bytes();
                Ok::<_, x509_cert::der::Error>(RawExtension { oid, value })
            })?);
        }
        Ok::<_, x509_cert::der::Error>(out)
    })?;
    reader.finish()?;
    Ok(extensions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_cert::der::asn1::ObjectIdentifier;

    #[test]
    fn oid_constants_agree() {
        let oid = ObjectIdentifier::new(EVIDENCE_EXTENSION_OID).unwrap();
        assert_eq!(oid.as_bytes(), EVIDENCE_EXTENSION_OID_DER);
        let arcs: Vec<u64> = oid.arcs().map(u64::from).collect();
        assert_eq!(arcs, EVIDENCE_EXTENSION_OID_ARCS);
        // The last seven arcs are the UUID's hex digits, grouped 4-4-4-4-4-6-6.
        let hex: String = EVIDENCE_EXTENSION_UUID.split('-').collect();
        let mut at = 0;
        for (arc, width) in arcs[7..].iter().zip([4, 4, 4, 4, 4, 6, 6]) {
            assert_eq!(*arc, u64::from_str_radix(&hex[at..at + width], 16).unwrap());
            at += width;
        }
        assert_eq!(at, 32);
    }
}
