//! AWS Nitro Enclaves verification: the Nitro Secure Module's attestation document.
//!
//! The document is a COSE_Sign1 structure (RFC 9052, section 4.2) in CBOR, whose payload is a CBOR
//! map (AWS, "Verifying the root of trust", in the Nitro Enclaves user guide, and the NSM API's
//! `AttestationDoc`). What is checked, in this order:
//!
//! 1. The evidence is NITRO evidence, at most [`MAX_DOCUMENT_LEN`] bytes, without a separate
//!    `certificates` field (the chain travels inside the document), else
//!    [`AttestError::MalformedEvidence`].
//! 2. The document parses ([`parse_document`]): a COSE_Sign1 array (tagged with 18 or not) whose
//!    protected header names ES384 and whose payload is present and holds every mandatory field
//!    with the type and size AWS specifies, with `digest` `SHA384` and PCR0 to PCR15 of 48 bytes
//!    each. Anything else is [`AttestError::MalformedEvidence`].
//! 3. Every certificate (the leaf in `certificate`, each one in `cabundle`, and the pinned root)
//!    is within its validity period at `now`, else [`AttestError::CollateralExpired`].
//! 4. The leaf chains through `cabundle` to the pinned AWS Nitro root (webpki: signatures, issuer
//!    names, basic constraints, path length; any extended key usage is accepted, since the leaf
//!    signs documents, not TLS handshakes), else [`AttestError::CertificateChain`].
//! 5. The COSE signature (ECDSA P-384 with SHA-384, `r || s`, over the Sig_structure with empty
//!    external data) verifies under the leaf's key, else [`AttestError::BadSignature`].
//! 6. The document's `timestamp` is at most [`MAX_CLOCK_SKEW_SECS`] after `now` and at most
//!    [`MAX_DOCUMENT_AGE_SECS`] before it, else [`AttestError::EvidenceTime`].
//! 7. `user_data` is exactly 64 bytes, which become the claims' report data (Adyton's attester
//!    puts the report data there), else [`AttestError::MalformedEvidence`].
//!
//! [`NitroVerifier::verify_document`] makes checks 2 to 6 alone, for documents that other
//! software made (AWS's recorded samples carry no 64-byte `user_data`).
//!
//! # Trust anchor
//!
//! The only root in production is AWS's Nitro root below, pinned in the source. The root that the
//! document carries as `cabundle[0]` comes from the enclave and is not trusted: the chain must end
//! at the pinned certificate, whatever the bundle says.
//!
//! # Claims
//!
//! - `report_data` is `user_data`. The document's `public_key` and `nonce` fields are reported in
//!   [`NitroClaims`] as they are, and not interpreted: Adyton binds keys and nonces through the
//!   report data, as on every other TEE.
//! - `debug` is true when PCR0, PCR1 and PCR2 are all zero, which is what the NSM reports for an
//!   enclave started in debug mode; every policy refuses such evidence.
//! - `tcb_status` is [`TcbStatus::NotApplicable`]: a document states no TCB.
//! - `collateral_issued_at` is the leaf certificate's notBefore and `collateral_expires_at` the
//!   earliest notAfter of the chain: the leaf's, a few hours after it was issued.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use coset::cbor::value::Value;
use coset::{
    iana, CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_cert::der::Decode;
use x509_cert::Certificate as X509Certificate;

use crate::claims::{Claims, NitroClaims, TcbStatus, TeeClaims};
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, REPORT_DATA_LEN};
use crate::verifier::Verifier;

/// Largest document accepted. A real document is about 4.5 KiB: the payload with its chain of
/// five certificates, and a 96-byte signature.
pub const MAX_DOCUMENT_LEN: usize = 16 * 1024;

/// How far the document's timestamp may be after the verification time: the two clocks differ.
pub const MAX_CLOCK_SKEW_SECS: u64 = 120;

/// How old a document may be at the verification time. The NSM signs each document with a fresh
/// leaf certificate valid for about three hours, so an older document would be refused for its
/// certificate anyway; this bound says why in words of the document itself.
pub const MAX_DOCUMENT_AGE_SECS: u64 = 3 * 60 * 60;

/// Number of PCRs every document must carry: the NSM reports PCR0 to PCR15.
pub const REQUIRED_PCRS: usize = 16;

/// The most PCRs the NSM API allows in a document.
const MAX_PCRS: usize = 32;

/// Length of a PCR under the SHA-384 bank.
const PCR_LEN: usize = 48;

/// Largest certificate in `certificate` or `cabundle` (AWS: 1 to 1024 bytes).
const MAX_CERTIFICATE_LEN: usize = 1024;

/// Most certificates in `cabundle`: AWS's chains have four (root, regional, zonal, instance).
const MAX_CABUNDLE_LEN: usize = 8;

/// Largest `public_key` (AWS: 1 to 1024 bytes).
const MAX_PUBLIC_KEY_LEN: usize = 1024;

/// Largest `user_data` and `nonce` (AWS: 0 to 512 bytes).
const MAX_USER_DATA_LEN: usize = 512;

/// Longest `module_id` accepted; real ones are `i-` and 17 hex digits, `-enc` and 16 more.
const MAX_MODULE_ID_LEN: usize = 128;

/// AWS's Nitro Enclaves root certificate, "AWS_NitroEnclaves_Root-G1" (CN=aws.nitro-enclaves,
/// O=Amazon, valid 2019-10-28 to 2049-10-28, ECDSA P-384). Copied from `testdata/nitro/nitro.pem`
/// (evervault/attestation-doc-validation @ 084ba280, `src/nitro.pem`); SHA-256 of the DER:
/// `641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b`, the fingerprint AWS
/// publishes for this root in the Nitro Enclaves user guide ("Verifying the root of trust"). A
/// unit test checks it.
pub const AWS_NITRO_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// The SHA-256 fingerprint of [`AWS_NITRO_ROOT_PEM`]'s DER.
pub const AWS_NITRO_ROOT_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// A parsed attestation document. Nothing in it is verified yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The NSM's id.
    pub module_id: String,
    /// The PCR bank's digest algorithm (`SHA384`).
    pub digest: String,
    /// Milliseconds since the unix epoch.
    pub timestamp_ms: u64,
    /// PCR0, PCR1, ... in order.
    pub pcrs: Vec<[u8; PCR_LEN]>,
    /// The leaf certificate (DER), whose key signs the document.
    pub certificate: Vec<u8>,
    /// The issuers (DER), root first, as the NSM lists them.
    pub cabundle: Vec<Vec<u8>>,
    /// The requester's public key, when set.
    pub public_key: Option<Vec<u8>>,
    /// The requester's user data, when set.
    pub user_data: Option<Vec<u8>>,
    /// The requester's nonce, when set.
    pub nonce: Option<Vec<u8>>,
}

impl Document {
    /// Whether the enclave runs in debug mode: the NSM zeroes PCR0 to PCR2 then.
    pub fn debug_mode(&self) -> bool {
        self.pcrs.len() >= 3 && self.pcrs[..3].iter().all(|pcr| pcr.iter().all(|&b| b == 0))
    }
}

/// A document and the COSE structure it came in.
struct SignedDocument {
    sign1: CoseSign1,
    document: Document,
}

/// Verifies AWS Nitro Enclaves attestation documents against AWS's Nitro root.
#[derive(Debug)]
pub struct NitroVerifier {
    /// DER of the trusted roots: the pinned AWS root, and in tests the test roots.
    roots: Vec<Vec<u8>>,
}

impl Default for NitroVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl NitroVerifier {
    /// A verifier whose only root is AWS's pinned Nitro root.
    pub fn new() -> Self {
        Self {
            roots: pem_to_der(AWS_NITRO_ROOT_PEM).into_iter().collect(),
        }
    }

    /// A verifier that also trusts `extra_roots` (DER), for tests that sign their own documents.
    /// Production code never calls it: [`crate::verifier::verifier_for`] uses [`Self::new`].
    pub fn with_test_roots(extra_roots: Vec<Vec<u8>>) -> Self {
        let mut verifier = Self::new();
        verifier.roots.extend(extra_roots);
        verifier
    }
}

impl Verifier for NitroVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Nitro
    }

    fn verify(&self, evidence: &Evidence, _collateral: &Collateral, now: u64) -> Result<Claims> {
        if evidence.tee != TeeKind::Nitro {
            return Err(AttestError::WrongTee {
                expected: TeeKind::Nitro,
                found: evidence.tee,
            });
        }
        if evidence.certificates.is_some() {
            return Err(AttestError::malformed(
                "NITRO evidence carries its certificates inside the document; the evidence's \
                 certificates field must be absent",
            ));
        }
        let VerifiedDocument {
            document,
            chain_not_before,
            chain_not_after,
        } = self.verify_document(&evidence.quote, now)?;
        let report_data = report_data(&document)?;
        let debug = document.debug_mode();
        Ok(Claims {
            tee: TeeKind::Nitro,
            insecure: false,
            report_data,
            tcb_status: TcbStatus::NotApplicable,
            advisory_ids: Vec::new(),
            debug,
            collateral_expires_at: Some(chain_not_after),
            collateral_issued_at: Some(chain_not_before),
            collateral_grace_secs: None,
            details: TeeClaims::Nitro(NitroClaims {
                module_id: document.module_id,
                digest: document.digest,
                timestamp_ms: document.timestamp_ms,
                pcrs: document.pcrs,
                debug_mode: debug,
                public_key: document.public_key,
                nonce: document.nonce,
            }),
        })
    }
}

/// A document whose signature, chain and time verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedDocument {
    /// The document.
    pub document: Document,
    /// The leaf certificate's notBefore (unix seconds).
    pub chain_not_before: u64,
    /// The earliest notAfter of the chain (unix seconds): the leaf's.
    pub chain_not_after: u64,
}

impl NitroVerifier {
    /// Checks steps 2 to 6 (module documentation): the document is genuine and current as of
    /// `now`. It does not require the 64 bytes of report data that [`Verifier::verify`] needs,
    /// so that documents made by other software can be checked too.
    pub fn verify_document(&self, bytes: &[u8], now: u64) -> Result<VerifiedDocument> {
        let SignedDocument { sign1, document } = parse_signed(bytes)?;

        let leaf = CertDates::read("leaf", &document.certificate)?;
        let mut dates = vec![leaf.clone()];
        for (i, der) in document.cabundle.iter().enumerate() {
            dates.push(CertDates::read(&format!("cabundle[{i}]"), der)?);
        }
        for root in &self.roots {
            dates.push(CertDates::read("AWS Nitro root", root)?);
        }
        for cert in &dates {
            cert.check_validity(now)?;
        }
        self.verify_chain(&document, now)?;
        verify_signature(&sign1, &document.certificate)?;
        check_timestamp(document.timestamp_ms, now)?;
        Ok(VerifiedDocument {
            document,
            chain_not_before: leaf.not_before,
            chain_not_after: dates.iter().map(|d| d.not_after).min().unwrap_or(0),
        })
    }

    /// Checks that the leaf chains through the bundle to one of the roots.
    fn verify_chain(&self, document: &Document, now: u64) -> Result<()> {
        let chain_error = |reason: String| AttestError::CertificateChain { reason };
        let root_ders: Vec<CertificateDer<'_>> = self
            .roots
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let anchors = root_ders
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map_err(|_| AttestError::Crypto("a pinned Nitro root does not parse"))
            })
            .collect::<Result<Vec<_>>>()?;
        if anchors.is_empty() {
            return Err(AttestError::Crypto("no Nitro root is pinned"));
        }
        let leaf_der = CertificateDer::from(document.certificate.as_slice());
        let leaf = EndEntityCert::try_from(&leaf_der)
            .map_err(|e| chain_error(format!("the leaf certificate is unreadable: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> = document
            .cabundle
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        leaf.verify_for_usage(
            &[webpki::aws_lc_rs::ECDSA_P384_SHA384],
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
            AnyExtendedKeyUsage,
            None,
            None,
        )
        .map_err(|e| {
            chain_error(format!(
                "the document's certificate does not chain to the AWS Nitro root: {e}"
            ))
        })?;
        Ok(())
    }
}

/// Accepts any extended key usage: the leaf signs attestation documents, and AWS marks it for TLS
/// server and client use, which says nothing about that.
struct AnyExtendedKeyUsage;

impl ExtendedKeyUsageValidator for AnyExtendedKeyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> std::result::Result<(), webpki::Error> {
        // A malformed extension is still refused.
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// Parses an attestation document without verifying anything: the COSE_Sign1 envelope, its
/// algorithm, and the payload's fields with their types and sizes.
pub fn parse_document(bytes: &[u8]) -> Result<Document> {
    parse_signed(bytes).map(|signed| signed.document)
}

fn parse_signed(bytes: &[u8]) -> Result<SignedDocument> {
    if bytes.len() > MAX_DOCUMENT_LEN {
        return Err(AttestError::malformed(format!(
            "a Nitro attestation document is at most {MAX_DOCUMENT_LEN} bytes, this one is {}",
            bytes.len()
        )));
    }
    // COSE_Sign1 is CBOR tag 18 when tagged; the NSM sends it untagged.
    let parsed = if bytes.first() == Some(&0xD2) {
        CoseSign1::from_tagged_slice(bytes)
    } else {
        CoseSign1::from_slice(bytes)
    };
    let sign1 =
        parsed.map_err(|e| AttestError::malformed(format!("not a COSE_Sign1 document: {e}")))?;
    let es384 = RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384);
    if sign1.protected.header.alg.as_ref() != Some(&es384) {
        return Err(AttestError::malformed(format!(
            "the document's algorithm is {:?}, expected ES384",
            sign1.protected.header.alg
        )));
    }
    let Some(payload) = sign1.payload.as_deref() else {
        return Err(AttestError::malformed("the document has no payload"));
    };
    let document = parse_payload(payload)?;
    Ok(SignedDocument { sign1, document })
}

fn parse_payload(mut payload: &[u8]) -> Result<Document> {
    let value: Value = coset::cbor::de::from_reader(&mut payload)
        .map_err(|e| AttestError::malformed(format!("the document's payload is not CBOR: {e}")))?;
    if !payload.is_empty() {
        return Err(AttestError::malformed(
            "the document's payload has bytes after its CBOR map",
        ));
    }
    let Value::Map(entries) = value else {
        return Err(AttestError::malformed(
            "the document's payload is not a map",
        ));
    };
    let mut fields = Fields::default();
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(AttestError::malformed(
                "the document's payload has a key that is not text",
            ));
        };
        let slot = match key.as_str() {
            "module_id" => &mut fields.module_id,
            "digest" => &mut fields.digest,
            "timestamp" => &mut fields.timestamp,
            "pcrs" => &mut fields.pcrs,
            "certificate" => &mut fields.certificate,
            "cabundle" => &mut fields.cabundle,
            "public_key" => &mut fields.public_key,
            "user_data" => &mut fields.user_data,
            "nonce" => &mut fields.nonce,
            // Fields that later NSM versions may add are signed, but mean nothing to Adyton.
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(AttestError::malformed(format!(
                "the document's payload has `{key}` twice"
            )));
        }
    }

    let module_id = text(fields.module_id, "module_id", MAX_MODULE_ID_LEN)?;
    if module_id.is_empty() {
        return Err(AttestError::malformed("the document's module_id is empty"));
    }
    let digest = text(fields.digest, "digest", 16)?;
    if digest != "SHA384" {
        return Err(AttestError::malformed(format!(
            "the document's digest is `{digest}`, expected SHA384"
        )));
    }
    let timestamp_ms = match fields.timestamp {
        Some(Value::Integer(t)) => u64::try_from(t).ok().filter(|&t| t > 0),
        _ => None,
    }
    .ok_or_else(|| {
        AttestError::malformed("the document's timestamp is missing or not a positive integer")
    })?;
    let pcrs = pcrs(fields.pcrs)?;
    let certificate = bytes(fields.certificate, "certificate", 1, MAX_CERTIFICATE_LEN)?;
    let cabundle = match fields.cabundle {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_CABUNDLE_LEN => items
            .into_iter()
            .map(|item| bytes(Some(item), "cabundle entry", 1, MAX_CERTIFICATE_LEN))
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(AttestError::malformed(format!(
                "the document's cabundle is missing or not an array of 1 to {MAX_CABUNDLE_LEN} \
                 certificates"
            )))
        }
    };
    Ok(Document {
        module_id,
        digest,
        timestamp_ms,
        pcrs,
        certificate,
        cabundle,
        public_key: optional_bytes(fields.public_key, "public_key", 1, MAX_PUBLIC_KEY_LEN)?,
        user_data: optional_bytes(fields.user_data, "user_data", 0, MAX_USER_DATA_LEN)?,
        nonce: optional_bytes(fields.nonce, "nonce", 0, MAX_USER_DATA_LEN)?,
    })
}

/// The payload's known fields, each seen at most once.
#[derive(Default)]
struct Fields {
    module_id: Option<Value>,
    digest: Option<Value>,
    timestamp: Option<Value>,
    pcrs: Option<Value>,
    certificate: Option<Value>,
    cabundle: Option<Value>,
    public_key: Option<Value>,
    user_data: Option<Value>,
    nonce: Option<Value>,
}

fn text(value: Option<Value>, name: &str, max: usize) -> Result<String> {
    match value {
        Some(Value::Text(text)) if text.len() <= max => Ok(text),
        _ => Err(AttestError::malformed(format!(
            "the document's {name} is missing or not text of at most {max} bytes"
        ))),
    }
}

fn bytes(value: Option<Value>, name: &str, min: usize, max: usize) -> Result<Vec<u8>> {
    match value {
        Some(Value::Bytes(bytes)) if (min..=max).contains(&bytes.len()) => Ok(bytes),
        _ => Err(AttestError::malformed(format!(
            "the document's {name} is missing or not {min} to {max} bytes"
        ))),
    }
}

fn optional_bytes(
    value: Option<Value>,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        some => bytes(some, name, min, max).map(Some),
    }
}

/// Reads the PCR map: keys 0 to n-1 for some n from 16 to 32, each value 48 bytes.
fn pcrs(value: Option<Value>) -> Result<Vec<[u8; PCR_LEN]>> {
    let Some(Value::Map(entries)) = value else {
        return Err(AttestError::malformed(
            "the document's pcrs is missing or not a map",
        ));
    };
    if !(REQUIRED_PCRS..=MAX_PCRS).contains(&entries.len()) {
        return Err(AttestError::malformed(format!(
            "the document has {} PCRs, expected {REQUIRED_PCRS} to {MAX_PCRS}",
            entries.len()
        )));
    }
    let mut pcrs: Vec<Option<[u8; PCR_LEN]>> = vec![None; entries.len()];
    for (key, value) in entries {
        let index = match key {
            Value::Integer(i) => usize::try_from(i).ok(),
            _ => None,
        }
        .filter(|&i| i < pcrs.len())
        .ok_or_else(|| {
            AttestError::malformed("the document's PCR indices are not 0, 1, 2... in a row")
        })?;
        let Value::Bytes(bytes) = value else {
            return Err(AttestError::malformed(format!(
                "the document's PCR{index} is not bytes"
            )));
        };
        let pcr: [u8; PCR_LEN] = bytes.as_slice().try_into().map_err(|_| {
            AttestError::malformed(format!(
                "the document's PCR{index} is {} bytes, expected {PCR_LEN} (SHA-384)",
                bytes.len()
            ))
        })?;
        if pcrs[index].replace(pcr).is_some() {
            return Err(AttestError::malformed(format!(
                "the document has PCR{index} twice"
            )));
        }
    }
    // n distinct indices below n: every one of 0..n is present.
    Ok(pcrs.into_iter().flatten().collect())
}

/// Verifies the COSE signature under the leaf certificate's key.
fn verify_signature(sign1: &CoseSign1, leaf_der: &[u8]) -> Result<()> {
    let leaf = X509Certificate::from_der(leaf_der).map_err(|e| AttestError::CertificateChain {
        reason: format!("the leaf certificate is unreadable: {e}"),
    })?;
    let point = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| AttestError::CertificateChain {
            reason: "the leaf certificate's public key is not a whole number of bytes".into(),
        })?
        .to_vec();
    sign1.verify_signature(b"", |signature, signed| {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &point)
            .verify(signed, signature)
            .map_err(|_| AttestError::BadSignature {
                what: "the Nitro attestation document's ES384 signature does not verify under \
                       its leaf certificate"
                    .into(),
            })
    })
}

/// Refuses a document from the future (beyond the skew) or older than the bound.
fn check_timestamp(timestamp_ms: u64, now: u64) -> Result<()> {
    let signed_at = timestamp_ms / 1000;
    if signed_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(AttestError::EvidenceTime {
            what: format!(
                "the document was signed at unix {signed_at}, {} s after the verification time \
                 (unix {now}); at most {MAX_CLOCK_SKEW_SECS} s of clock skew is allowed",
                signed_at - now
            ),
        });
    }
    let age = now.saturating_sub(signed_at);
    if age > MAX_DOCUMENT_AGE_SECS {
        return Err(AttestError::EvidenceTime {
            what: format!(
                "the document was signed at unix {signed_at}, {age} s before the verification \
                 time (unix {now}); documents older than {MAX_DOCUMENT_AGE_SECS} s are refused"
            ),
        });
    }
    Ok(())
}

/// The report data: `user_data`, which must be exactly 64 bytes.
fn report_data(document: &Document) -> Result<[u8; REPORT_DATA_LEN]> {
    let Some(user_data) = &document.user_data else {
        return Err(AttestError::malformed(
            "the document has no user_data, where Adyton's attester puts the report data",
        ));
    };
    user_data.as_slice().try_into().map_err(|_| {
        AttestError::malformed(format!(
            "the document's user_data is {} bytes; Adyton's report data is {REPORT_DATA_LEN}",
            user_data.len()
        ))
    })
}

/// A certificate's name and validity, for the date checks and the claims.
#[derive(Clone, Debug)]
struct CertDates {
    name: String,
    not_before: u64,
    not_after: u64,
}

impl CertDates {
    fn read(name: &str, der: &[u8]) -> Result<Self> {
        let cert = X509Certificate::from_der(der).map_err(|e| AttestError::CertificateChain {
            reason: format!("the {name} certificate is unreadable: {e}"),
        })?;
        let tbs = cert.tbs_certificate();
        let subject = tbs.subject().to_string();
        let validity = tbs.validity();
        Ok(Self {
            name: format!("{name} ({})", subject.chars().take(160).collect::<String>()),
            not_before: validity.not_before.to_unix_duration().as_secs(),
            not_after: validity.not_after.to_unix_duration().as_secs(),
        })
    }

    fn check_validity(&self, now: u64) -> Result<()> {
        if now < self.not_before || now > self.not_after {
            return Err(AttestError::CollateralExpired {
                what: format!(
                    "the {} certificate is valid from unix {} to unix {}, and the verification \
                     time is unix {now}",
                    self.name, self.not_before, self.not_after
                ),
            });
        }
        Ok(())
    }
}

/// Decodes the first certificate of a PEM text; `None` if there is none.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END CERTIFICATE-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_root_has_the_published_fingerprint() {
        let der = pem_to_der(AWS_NITRO_ROOT_PEM).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        assert_eq!(hex::encode(digest), AWS_NITRO_ROOT_SHA256);
        assert_eq!(NitroVerifier::new().roots, vec![der]);
    }

    #[test]
    fn timestamps_are_bounded_both_ways() {
        let now = 1_700_000_000;
        assert!(check_timestamp(now * 1000, now).is_ok());
        assert!(check_timestamp((now + MAX_CLOCK_SKEW_SECS) * 1000, now).is_ok());
        assert!(matches!(
            check_timestamp((now + MAX_CLOCK_SKEW_SECS + 1) * 1000, now),
            Err(AttestError::EvidenceTime { .. })
        ));
        assert!(check_timestamp((now - MAX_DOCUMENT_AGE_SECS) * 1000, now).is_ok());
        assert!(matches!(
            check_timestamp((now - MAX_DOCUMENT_AGE_SECS - 1) * 1000, now),
            Err(AttestError::EvidenceTime { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [
            &[][..],
            &[0x84][..],
            &[0xD2, 0x84][..],
            &[0x84, 0x40, 0xA0, 0xF6, 0x40][..],
            &[0xFF; 64][..],
            &[0x9F; 10_000][..],
            b"not cbor at all",
        ] {
            assert!(matches!(
                parse_document(bytes),
                Err(AttestError::MalformedEvidence { .. })
            ));
        }
    }
}
