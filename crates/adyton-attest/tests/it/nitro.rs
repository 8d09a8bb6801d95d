//! AWS Nitro Enclaves: real documents from AWS's NSM at their fixed times (testdata/nitro/), and
//! documents signed here under a test chain, one per check the verifier makes.

use std::path::PathBuf;

use adyton_attest::attester::nitro::{NitroAttester, NsmDevice};
use adyton_attest::attester::{self, Attester, AttesterPaths, TeeChoice};
use adyton_attest::claims::NitroClaims;
use adyton_attest::verifier::nitro::{
    parse_document, NitroVerifier, MAX_CLOCK_SKEW_SECS, MAX_DOCUMENT_AGE_SECS, MAX_DOCUMENT_LEN,
};
use adyton_attest::verifier::{self, Verifier};
use adyton_attest::{
    AttestError, Claims, Collateral, Evidence, Policy, TeeClaims, TeeKind, REPORT_DATA_LEN,
};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
};

fn testdata(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/nitro")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn valid_doc() -> Vec<u8> {
    testdata("valid-attestation-doc-bytes")
}

/// The valid document's time: signed at unix 1665651482 (2022-10-13T08:58:02Z), its leaf valid
/// from 1665651479 to 1665662282 (testdata/nitro/README.md).
const VALID_TIME: u64 = 1_665_651_600;
const VALID_LEAF_NOT_BEFORE: u64 = 1_665_651_479;
const VALID_LEAF_NOT_AFTER: u64 = 1_665_662_282;
/// The debug-mode document: signed at unix 1665582606 (2022-10-12T13:50:06Z).
const DEBUG_TIME: u64 = 1_665_582_700;
/// The base64 document (debug mode too): signed at unix 1695049410 (2023-09-18T15:03:30Z).
const BASE64_TIME: u64 = 1_695_049_500;

const VALID_PCR0: &str = "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b";
const VALID_PCR1: &str = "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f";
const VALID_PCR2: &str = "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a";
const VALID_PCR8: &str = "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb";

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x01;
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in document")
}

fn aws() -> NitroVerifier {
    NitroVerifier::new()
}

// ---------------------------------------------------------------------------------------------
// Real documents.

#[test]
fn the_real_document_verifies_at_its_time_with_its_pcrs() {
    let verified = aws().verify_document(&valid_doc(), VALID_TIME).unwrap();
    let doc = &verified.document;
    assert_eq!(doc.module_id, "i-020b6af9246d90e92-enc0183d09086c24190");
    assert_eq!(doc.digest, "SHA384");
    assert_eq!(doc.timestamp_ms, 1_665_651_482_136);
    assert_eq!(doc.pcrs.len(), 16);
    for (index, expected) in [
        (0, VALID_PCR0),
        (1, VALID_PCR1),
        (2, VALID_PCR2),
        (8, VALID_PCR8),
    ] {
        assert_eq!(hex::encode(doc.pcrs[index]), expected, "PCR{index}");
    }
    assert!(!doc.debug_mode());
    assert_eq!(doc.cabundle.len(), 4);
    assert_eq!(doc.nonce.as_ref().map(Vec::len), Some(256));
    assert_eq!(doc.user_data, None);
    assert_eq!(doc.public_key, None);
    assert_eq!(verified.chain_not_before, VALID_LEAF_NOT_BEFORE);
    assert_eq!(verified.chain_not_after, VALID_LEAF_NOT_AFTER);
    // cabundle[0] is the pinned root, byte for byte.
    assert_eq!(
        x509_der(&testdata("nitro.pem")),
        doc.cabundle[0],
        "the document's root is AWS's"
    );
}

#[test]
fn the_real_document_has_no_report_data_so_it_gives_no_claims() {
    // AWS's document carries a nonce but no user_data: genuine, but not Adyton evidence.
    let evidence = Evidence {
        tee: TeeKind::Nitro,
        quote: valid_doc(),
        certificates: None,
        gpus: Vec::new(),
    };
    let err = verifier::verify(&evidence, &Collateral::none(), VALID_TIME).unwrap_err();
    assert!(
        matches!(&err, AttestError::MalformedEvidence { reason } if reason.contains("user_data")),
        "{err}"
    );
}

#[test]
fn real_debug_documents_verify_and_say_debug() {
    for (name, time, user_data_len) in [
        ("debug-mode-attestation-doc-bytes", DEBUG_TIME, 13),
        ("valid-attestation-doc-base64", BASE64_TIME, 91),
    ] {
        let mut bytes = testdata(name);
        if name.ends_with("base64") {
            use base64::Engine;
            bytes = base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8(bytes).unwrap().trim())
                .unwrap();
        }
        let verified = aws().verify_document(&bytes, time).unwrap();
        assert!(verified.document.debug_mode(), "{name}");
        assert!(verified.document.pcrs[..3].iter().all(|p| p == &[0; 48]));
        assert_eq!(
            verified.document.user_data.as_ref().map(Vec::len),
            Some(user_data_len)
        );
        // Its user data is not 64 bytes, so it never becomes claims.
        let evidence = Evidence {
            tee: TeeKind::Nitro,
            quote: bytes,
            certificates: None,
            gpus: Vec::new(),
        };
        let err = aws()
            .verify(&evidence, &Collateral::none(), time)
            .unwrap_err();
        assert!(
            matches!(&err, AttestError::MalformedEvidence { reason } if reason.contains("user_data")),
            "{err}"
        );
    }
}

#[test]
fn a_flipped_byte_in_the_signed_payload_is_refused() {
    let doc = valid_doc();
    let pcr0 = hex::decode(VALID_PCR0).unwrap();
    let at = find(&doc, &pcr0) + 10;
    let err = aws()
        .verify_document(&flip(&doc, at), VALID_TIME)
        .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");

    // The module id, in the payload's first bytes.
    let at = find(&doc, b"i-020b6af9246d90e92") + 3;
    let err = aws()
        .verify_document(&flip(&doc, at), VALID_TIME)
        .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
}

#[test]
fn a_flipped_byte_in_the_signature_is_refused() {
    let doc = valid_doc();
    for at in [doc.len() - 1, doc.len() - 60] {
        let err = aws()
            .verify_document(&flip(&doc, at), VALID_TIME)
            .unwrap_err();
        assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
    }
}

#[test]
fn a_flipped_byte_in_a_certificate_is_refused() {
    use x509_cert::der::Decode;
    let doc = valid_doc();
    let parsed = parse_document(&doc).unwrap();
    let leaf = find(&doc, &parsed.certificate);
    let leaf_cert = x509_cert::Certificate::from_der(&parsed.certificate).unwrap();
    let leaf_key = leaf_cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let zonal = find(&doc, &parsed.cabundle[2]);
    let instance = find(&doc, &parsed.cabundle[3]);
    for (what, at) in [
        ("the leaf's signature", leaf + parsed.certificate.len() - 2),
        ("the leaf's public key", find(&doc, leaf_key) + 40),
        (
            "the zonal certificate's signature",
            zonal + parsed.cabundle[2].len() - 2,
        ),
        (
            "the instance certificate's signature",
            instance + parsed.cabundle[3].len() - 2,
        ),
    ] {
        let err = aws()
            .verify_document(&flip(&doc, at), VALID_TIME)
            .unwrap_err();
        assert!(
            matches!(err, AttestError::CertificateChain { .. }),
            "{what}: {err}"
        );
    }
    // The bundle's copy of the root is not the trust anchor, but it is signed payload.
    let root_copy = find(&doc, &parsed.cabundle[0]);
    let err = aws()
        .verify_document(
            &flip(&doc, root_copy + parsed.cabundle[0].len() - 2),
            VALID_TIME,
        )
        .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    for now in [VALID_LEAF_NOT_AFTER + 1, VALID_LEAF_NOT_BEFORE - 1] {
        let err = aws().verify_document(&valid_doc(), now).unwrap_err();
        assert!(
            matches!(&err, AttestError::CollateralExpired { what } if what.contains("leaf")),
            "{err}"
        );
    }
    // At the leaf's last second it still verifies (and the document is younger than the bound).
    const { assert!(VALID_LEAF_NOT_AFTER - 1_665_651_482 <= MAX_DOCUMENT_AGE_SECS) };
    aws()
        .verify_document(&valid_doc(), VALID_LEAF_NOT_AFTER)
        .unwrap();
}

#[test]
fn truncated_and_garbage_documents_are_refused_without_panic() {
    let doc = valid_doc();
    for len in (0..doc.len()).step_by(7).chain([doc.len() - 1]) {
        assert!(
            aws().verify_document(&doc[..len], VALID_TIME).is_err(),
            "{len}"
        );
    }
    let mut trailing = doc.clone();
    trailing.push(0);
    assert!(matches!(
        parse_document(&trailing),
        Err(AttestError::MalformedEvidence { .. })
    ));
    // Every single-byte flip of the first 300 bytes (the COSE envelope and the payload's start)
    // is refused one way or another, never accepted and never a panic.
    for at in 0..300 {
        assert!(aws().verify_document(&flip(&doc, at), VALID_TIME).is_err());
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let garbage: Vec<u8> = (0..(state % 5000) as usize)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(parse_document(&garbage).is_err());
    }
}

#[test]
fn an_oversized_document_is_refused() {
    let mut doc = valid_doc();
    doc.resize(MAX_DOCUMENT_LEN + 1, 0);
    let err = parse_document(&doc).unwrap_err();
    assert!(
        matches!(&err, AttestError::MalformedEvidence { reason } if reason.contains("at most")),
        "{err}"
    );
}

#[test]
fn nitro_evidence_with_a_certificates_field_or_of_another_tee_is_refused() {
    let mut evidence = Evidence {
        tee: TeeKind::Nitro,
        quote: valid_doc(),
        certificates: Some(vec![1]),
        gpus: Vec::new(),
    };
    assert!(matches!(
        aws().verify(&evidence, &Collateral::none(), VALID_TIME),
        Err(AttestError::MalformedEvidence { .. })
    ));
    evidence.certificates = None;
    evidence.tee = TeeKind::Snp;
    assert!(matches!(
        aws().verify(&evidence, &Collateral::none(), VALID_TIME),
        Err(AttestError::WrongTee { .. })
    ));
}

fn x509_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = String::from_utf8(pem.to_vec()).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Documents signed here, under a test chain that imitates AWS's: root, intermediate, leaf.

/// 2023-01-01T12:00:00Z, inside the test leaf's validity (2023-01-01 to 2023-01-02).
const TEST_NOW: u64 = 1_672_574_400;

struct TestNsm {
    root_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_key: EcdsaKeyPair,
}

impl std::fmt::Debug for TestNsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestNsm")
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2040, 1, 1);
    params
}

impl TestNsm {
    fn new() -> Self {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let root_params = ca_params("test.nitro-enclaves");
        let root_der = root_params.self_signed(&root_key).unwrap().der().to_vec();
        let root = Issuer::new(root_params, root_key);

        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let intermediate_params = ca_params("zonal.test.nitro-enclaves");
        let intermediate_der = intermediate_params
            .signed_by(&intermediate_key, &root)
            .unwrap()
            .der()
            .to_vec();
        let intermediate = Issuer::new(intermediate_params, intermediate_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params.distinguished_name.push(
            DnType::CommonName,
            "i-0123456789abcdef0-enc0123456789abcdef.test",
        );
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.not_before = date_time_ymd(2023, 1, 1);
        leaf_params.not_after = date_time_ymd(2023, 1, 2);
        let leaf_der = leaf_params
            .signed_by(&leaf_key, &intermediate)
            .unwrap()
            .der()
            .to_vec();
        let leaf_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &leaf_key.serialize_der())
                .unwrap();
        Self {
            root_der,
            intermediate_der,
            leaf_der,
            leaf_key,
        }
    }

    fn verifier(&self) -> NitroVerifier {
        NitroVerifier::with_test_roots(vec![self.root_der.clone()])
    }

    /// The payload's fields as an NSM writes them, over `user_data`, signed at `TEST_NOW`.
    fn fields(&self, user_data: &[u8]) -> Vec<(Value, Value)> {
        let pcrs = (0..16u8)
            .map(|i| (Value::from(u64::from(i)), Value::Bytes(vec![i + 1; 48])))
            .collect();
        vec![
            (
                "module_id".into(),
                "i-0123456789abcdef0-enc0123456789abcdef".into(),
            ),
            ("digest".into(), "SHA384".into()),
            ("timestamp".into(), Value::from(TEST_NOW * 1000 + 17)),
            ("pcrs".into(), Value::Map(pcrs)),
            ("certificate".into(), Value::Bytes(self.leaf_der.clone())),
            (
                "cabundle".into(),
                Value::Array(vec![
                    Value::Bytes(self.root_der.clone()),
                    Value::Bytes(self.intermediate_der.clone()),
                ]),
            ),
            ("public_key".into(), Value::Null),
            ("user_data".into(), Value::Bytes(user_data.to_vec())),
            ("nonce".into(), Value::Null),
        ]
    }

    fn sign(&self, fields: Vec<(Value, Value)>) -> Vec<u8> {
        let mut payload = Vec::new();
        coset::cbor::ser::into_writer(&Value::Map(fields), &mut payload).unwrap();
        CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::ES384)
                    .build(),
            )
            .payload(payload)
            .create_signature(b"", |tbs| {
                self.leaf_key
                    .sign(&SystemRandom::new(), tbs)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            })
            .build()
            .to_vec()
            .unwrap()
    }

    fn document(&self, user_data: &[u8]) -> Vec<u8> {
        self.sign(self.fields(user_data))
    }

    fn with(&self, user_data: &[u8], key: &str, value: Value) -> Vec<u8> {
        let mut fields = self.fields(user_data);
        for field in &mut fields {
            if field.0 == Value::from(key) {
                field.1 = value.clone();
            }
        }
        self.sign(fields)
    }
}

impl NsmDevice for TestNsm {
    fn attestation(&self, user_data: &[u8]) -> adyton_attest::Result<Vec<u8>> {
        Ok(self.document(user_data))
    }
}

fn evidence(quote: Vec<u8>) -> Evidence {
    Evidence {
        tee: TeeKind::Nitro,
        quote,
        certificates: None,
        gpus: Vec::new(),
    }
}

fn nitro_claims(claims: &Claims) -> &NitroClaims {
    match &claims.details {
        TeeClaims::Nitro(c) => c,
        other => panic!("not Nitro claims: {other:?}"),
    }
}

#[test]
fn a_test_document_verifies_under_its_test_root_and_carries_the_report_data() {
    let nsm = TestNsm::new();
    let report_data = [0x5a; REPORT_DATA_LEN];
    let claims = nsm
        .verifier()
        .verify(
            &evidence(nsm.document(&report_data)),
            &Collateral::none(),
            TEST_NOW,
        )
        .unwrap();
    assert_eq!(claims.tee, TeeKind::Nitro);
    assert!(!claims.insecure);
    assert!(!claims.debug);
    claims.expect_report_data(&report_data).unwrap();
    let nitro = nitro_claims(&claims);
    assert_eq!(nitro.pcrs.len(), 16);
    assert_eq!(nitro.pcrs[8], [9; 48]);
    assert_eq!(nitro.timestamp_ms, TEST_NOW * 1000 + 17);
    assert_eq!(claims.primary_measurement(), hex::encode([1u8; 48]));
    let json = serde_json::to_value(&claims).unwrap();
    assert_eq!(json["details"]["nitro"]["digest"], "SHA384");
    assert_eq!(json["details"]["nitro"]["pcrs"][0], hex::encode([1u8; 48]));
}

#[test]
fn a_chain_to_another_root_is_refused() {
    // The production verifier trusts only AWS's root.
    let nsm = TestNsm::new();
    let err = aws()
        .verify(
            &evidence(nsm.document(&[1; 64])),
            &Collateral::none(),
            TEST_NOW,
        )
        .unwrap_err();
    assert!(matches!(err, AttestError::CertificateChain { .. }), "{err}");
    // So is a chain under one test root checked against another.
    let other = TestNsm::new();
    let err = other
        .verifier()
        .verify(
            &evidence(nsm.document(&[1; 64])),
            &Collateral::none(),
            TEST_NOW,
        )
        .unwrap_err();
    assert!(matches!(err, AttestError::CertificateChain { .. }), "{err}");
    // Test roots are added beside AWS's root, never instead of it.
    nsm.verifier()
        .verify_document(&valid_doc(), VALID_TIME)
        .unwrap();
}

#[test]
fn a_document_signed_by_another_key_is_refused() {
    let nsm = TestNsm::new();
    let other = TestNsm::new();
    // Other's leaf signs, but the document names nsm's leaf and chain.
    let fields = nsm.fields(&[1; 64]);
    let forged = other.sign(fields);
    let err = nsm
        .verifier()
        .verify(&evidence(forged), &Collateral::none(), TEST_NOW)
        .unwrap_err();
    assert!(matches!(err, AttestError::BadSignature { .. }), "{err}");
}

#[test]
fn a_document_from_the_future_or_too_old_is_refused() {
    let nsm = TestNsm::new();
    let verifier = nsm.verifier();
    let at = |ms: u64| nsm.with(&[1; 64], "timestamp", Value::from(ms));
    let future = at((TEST_NOW + MAX_CLOCK_SKEW_SECS + 60) * 1000);
    let err = verifier
        .verify(&evidence(future), &Collateral::none(), TEST_NOW)
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::EvidenceTime { what } if what.contains("after")),
        "{err}"
    );
    let stale = at((TEST_NOW - MAX_DOCUMENT_AGE_SECS - 60) * 1000);
    let err = verifier
        .verify(&evidence(stale), &Collateral::none(), TEST_NOW)
        .unwrap_err();
    assert!(
        matches!(&err, AttestError::EvidenceTime { what } if what.contains("older")),
        "{err}"
    );
    // Within the skew, fine.
    let skewed = at((TEST_NOW + MAX_CLOCK_SKEW_SECS - 1) * 1000);
    verifier
        .verify(&evidence(skewed), &Collateral::none(), TEST_NOW)
        .unwrap();
}

#[test]
fn debug_mode_is_claimed_and_every_policy_refuses_it() {
    let nsm = TestNsm::new();
    let mut pcrs: Vec<(Value, Value)> = (0..16u64)
        .map(|i| (Value::from(i), Value::Bytes(vec![7; 48])))
        .collect();
    for pcr in &mut pcrs[..3] {
        pcr.1 = Value::Bytes(vec![0; 48]);
    }
    let doc = nsm.with(&[1; 64], "pcrs", Value::Map(pcrs));
    let claims = nsm
        .verifier()
        .verify(&evidence(doc), &Collateral::none(), TEST_NOW)
        .unwrap();
    assert!(claims.debug);
    assert!(nitro_claims(&claims).debug_mode);
    let policy = Policy::from_toml("[nitro]\n").unwrap();
    assert!(matches!(
        policy.evaluate(&claims, TEST_NOW),
        Err(AttestError::DebugEnabled)
    ));
}

#[test]
fn report_data_is_user_data_and_a_mismatch_is_refused() {
    let nsm = TestNsm::new();
    let claims = nsm
        .verifier()
        .verify(
            &evidence(nsm.document(&[2; 64])),
            &Collateral::none(),
            TEST_NOW,
        )
        .unwrap();
    assert!(matches!(
        claims.expect_report_data(&[3; 64]),
        Err(AttestError::ReportDataMismatch { .. })
    ));
    // user_data of any other length is not report data.
    for len in [0, 32, 63, 65] {
        let err = nsm
            .verifier()
            .verify(
                &evidence(nsm.document(&vec![2; len])),
                &Collateral::none(),
                TEST_NOW,
            )
            .unwrap_err();
        assert!(
            matches!(&err, AttestError::MalformedEvidence { reason } if reason.contains("user_data")),
            "{len}: {err}"
        );
    }
    // The nonce and public key are reported, not interpreted.
    let mut fields = nsm.fields(&[2; 64]);
    for field in &mut fields {
        if field.0 == Value::from("nonce") {
            field.1 = Value::Bytes(vec![4; 32]);
        }
        if field.0 == Value::from("public_key") {
            field.1 = Value::Bytes(vec![5; 97]);
        }
    }
    let claims = nsm
        .verifier()
        .verify(&evidence(nsm.sign(fields)), &Collateral::none(), TEST_NOW)
        .unwrap();
    assert_eq!(nitro_claims(&claims).nonce, Some(vec![4; 32]));
    assert_eq!(nitro_claims(&claims).public_key, Some(vec![5; 97]));
    claims.expect_report_data(&[2; 64]).unwrap();
}

#[test]
fn the_pcr_policy_names_the_register_that_differs() {
    let nsm = TestNsm::new();
    let claims = nsm
        .verifier()
        .verify(
            &evidence(nsm.document(&[1; 64])),
            &Collateral::none(),
            TEST_NOW,
        )
        .unwrap();
    let pcr = |byte: u8| hex::encode([byte; 48]);
    let allowed = format!(
        "[nitro]\npcr0 = [\"{}\", \"{}\"]\npcr1 = [\"{}\"]\npcr8 = [\"{}\"]\n",
        pcr(0xee),
        pcr(1),
        pcr(2),
        pcr(9)
    );
    Policy::from_toml(&allowed)
        .unwrap()
        .evaluate(&claims, TEST_NOW)
        .unwrap();
    let denied = format!(
        "[nitro]\npcr0 = [\"{}\"]\npcr8 = [\"{}\"]\n",
        pcr(1),
        pcr(0xee)
    );
    match Policy::from_toml(&denied)
        .unwrap()
        .evaluate(&claims, TEST_NOW)
    {
        Err(AttestError::PolicyDenied {
            field,
            expected,
            found,
        }) => {
            assert_eq!(field, "nitro.pcr8");
            assert!(expected.contains(&pcr(0xee)), "{expected}");
            assert_eq!(found, pcr(9));
        }
        other => panic!("{other:?}"),
    }
    // A policy without a [nitro] table refuses Nitro evidence; unknown fields are errors.
    assert!(matches!(
        Policy::from_toml("[sim]\n")
            .unwrap()
            .evaluate(&claims, TEST_NOW),
        Err(AttestError::TeeNotInPolicy {
            tee: TeeKind::Nitro
        })
    ));
    assert!(Policy::from_toml("[nitro]\npcr9 = []\n").is_err());
    assert!(Policy::from_toml("[nitro]\npcr0 = [\"abcd\"]\n").is_err());
}

#[test]
fn malformed_payload_fields_are_refused() {
    let nsm = TestNsm::new();
    let data = [1u8; 64];
    let short_pcrs: Vec<(Value, Value)> = (0..8u64)
        .map(|i| (Value::from(i), Value::Bytes(vec![1; 48])))
        .collect();
    let sha256_pcrs: Vec<(Value, Value)> = (0..16u64)
        .map(|i| (Value::from(i), Value::Bytes(vec![1; 32])))
        .collect();
    let gap_pcrs: Vec<(Value, Value)> = (0..16u64)
        .map(|i| {
            (
                Value::from(if i == 5 { 20 } else { i }),
                Value::Bytes(vec![1; 48]),
            )
        })
        .collect();
    for (field, value) in [
        ("digest", Value::from("SHA256")),
        ("module_id", Value::from("")),
        ("timestamp", Value::from(-5)),
        ("pcrs", Value::Map(short_pcrs)),
        ("pcrs", Value::Map(sha256_pcrs)),
        ("pcrs", Value::Map(gap_pcrs)),
        ("certificate", Value::Bytes(vec![0; 1025])),
        ("cabundle", Value::Array(Vec::new())),
        ("nonce", Value::Bytes(vec![0; 513])),
        ("public_key", Value::from("text")),
    ] {
        let doc = nsm.with(&data, field, value.clone());
        let err = nsm
            .verifier()
            .verify(&evidence(doc), &Collateral::none(), TEST_NOW)
            .unwrap_err();
        assert!(
            matches!(err, AttestError::MalformedEvidence { .. }),
            "{field} = {value:?}: {err}"
        );
    }
    // A field given twice.
    let mut fields = nsm.fields(&data);
    fields.push(("user_data".into(), Value::Bytes(vec![9; 64])));
    let err = parse_document(&nsm.sign(fields)).unwrap_err();
    assert!(
        matches!(&err, AttestError::MalformedEvidence { reason } if reason.contains("twice")),
        "{err}"
    );
    // Another COSE algorithm.
    let mut payload = Vec::new();
    coset::cbor::ser::into_writer(&Value::Map(nsm.fields(&data)), &mut payload).unwrap();
    let es256 = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES256)
                .build(),
        )
        .payload(payload)
        .signature(vec![0; 64])
        .build()
        .to_vec()
        .unwrap();
    assert!(matches!(
        parse_document(&es256),
        Err(AttestError::MalformedEvidence { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The attester, over a fake NSM.

#[test]
fn the_attester_puts_the_report_data_in_user_data() {
    let nsm = TestNsm::new();
    let verifier = nsm.verifier();
    let attester = NitroAttester::with_device(Box::new(nsm));
    assert_eq!(attester.tee(), TeeKind::Nitro);
    let report_data = [0xc3; REPORT_DATA_LEN];
    let evidence = attester.evidence(&report_data).unwrap();
    assert_eq!(evidence.tee, TeeKind::Nitro);
    assert_eq!(evidence.certificates, None);
    let claims = verifier
        .verify(&evidence, &Collateral::none(), TEST_NOW)
        .unwrap();
    claims.expect_report_data(&report_data).unwrap();
    // The JSON form names the TEE NITRO and round-trips.
    let json = evidence.to_json();
    assert!(json.contains("\"NITRO\""), "{json}");
    assert_eq!(Evidence::from_json(json.as_bytes()).unwrap(), evidence);
}

/// An NSM that answers with a document over other user data, or with garbage.
#[derive(Debug)]
struct LyingNsm {
    inner: TestNsm,
    garbage: bool,
}

impl NsmDevice for LyingNsm {
    fn attestation(&self, _user_data: &[u8]) -> adyton_attest::Result<Vec<u8>> {
        if self.garbage {
            return Ok(vec![0xA5; 100]);
        }
        Ok(self.inner.document(&[0xee; 64]))
    }
}

#[test]
fn the_attester_refuses_a_document_over_other_data_or_garbage() {
    let attester = NitroAttester::with_device(Box::new(LyingNsm {
        inner: TestNsm::new(),
        garbage: false,
    }));
    assert!(matches!(
        attester.evidence(&[1; 64]),
        Err(AttestError::ReportDataMismatch { .. })
    ));
    let attester = NitroAttester::with_device(Box::new(LyingNsm {
        inner: TestNsm::new(),
        garbage: true,
    }));
    assert!(matches!(
        attester.evidence(&[1; 64]),
        Err(AttestError::MalformedEvidence { .. })
    ));
}

#[test]
fn auto_detects_nitro_when_the_nsm_device_exists() {
    let dir = tempfile::tempdir().unwrap();
    let paths = AttesterPaths {
        gramine: dir.path().join("no-gramine"),
        tsm_report: dir.path().join("no-tsm"),
        sim_key: dir.path().join("sim.key"),
        sev_guest: dir.path().join("no-sev-guest"),
        nsm: dir.path().join("nsm"),
        tpm: dir.path().join("no-tpm"),
        coco: Default::default(),
    };
    assert_eq!(attester::detect(&paths), None);
    assert!(matches!(
        attester::attester_for(TeeChoice::Kind(TeeKind::Nitro), &paths),
        Err(AttestError::TeeUnavailable {
            tee: TeeKind::Nitro,
            ..
        })
    ));
    std::fs::write(dir.path().join("nsm"), b"").unwrap();
    assert_eq!(attester::detect(&paths), Some(TeeKind::Nitro));
    let chosen = attester::attester_for(TeeChoice::Auto, &paths).unwrap();
    assert_eq!(chosen.tee(), TeeKind::Nitro);
    // A plain file is not an NSM: the request fails cleanly.
    assert!(matches!(
        chosen.evidence(&[1; 64]),
        Err(AttestError::TeeUnavailable {
            tee: TeeKind::Nitro,
            ..
        })
    ));
}
