//! Attested TLS binding: the report-data formulas (known answers computed with Python's hashlib)
//! and the certificate extension, with one test per way a certificate can be wrong.

use adyton_attest::attested_tls::{
    evidence_extension_value, evidence_from_certificate, report_data_for_key,
    report_data_for_nonce, AttestedTlsError, EVIDENCE_EXTENSION_OID_ARCS, KEY_BINDING_PREFIX,
    NONCE_BINDING_PREFIX,
};
use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{Evidence, TeeKind};
use rcgen::{CertificateParams, CustomExtension, KeyPair, PublicKeyData};

#[test]
fn key_binding_matches_the_documented_formula() {
    assert_eq!(KEY_BINDING_PREFIX, b"adyton-attested-tls-v1\0");
    // python3 -c "import hashlib; print(hashlib.sha512(b'adyton-attested-tls-v1\0spki').hexdigest())"
    assert_eq!(
        hex::encode(report_data_for_key(b"spki")),
        "322ec81f17af876e8735f748d987d4696e456ae8bf45b140f08205edb789a28f\
         d412fec7bce6578204836345270242b1a899df514fd94fb7a7d07195c2431a5d"
    );
}

#[test]
fn nonce_binding_matches_the_documented_formula() {
    assert_eq!(NONCE_BINDING_PREFIX, b"adyton-attested-tls-nonce-v1\0");
    // SHA-512(prefix || u32be(4) || "spki" || u32be(16) || 0x11 * 16)
    assert_eq!(
        hex::encode(report_data_for_nonce(b"spki", &[0x11; 16]).unwrap()),
        "61b03dfb7afef090500f340a2342d9c1e9e168d89526d4e3625d927c44d7a000\
         10b371f7cba49608e357dfe76d0d7f7421dee2f395d0ffa4481edbaebe9bc2ab"
    );
}

#[test]
fn nonce_lengths_outside_16_to_64_are_refused() {
    for len in [0, 1, 15, 65, 1000] {
        match report_data_for_nonce(b"spki", &vec![7; len]) {
            Err(AttestedTlsError::NonceLength { len: found }) => assert_eq!(found, len),
            other => panic!("{len}: {other:?}"),
        }
    }
    for len in [16, 32, 64] {
        report_data_for_nonce(b"spki", &vec![7; len]).unwrap();
    }
    let err = report_data_for_nonce(b"spki", &[0; 8]).unwrap_err();
    assert!(err.to_string().contains("16 to 64"), "{err}");
}

#[test]
fn bindings_are_unambiguous() {
    let spki = b"some key".as_slice();
    let nonce = [0x42; 32];
    assert_ne!(
        report_data_for_key(spki),
        report_data_for_nonce(spki, &nonce).unwrap()
    );
    assert_ne!(
        report_data_for_nonce(spki, &nonce).unwrap(),
        report_data_for_nonce(spki, &[0x43; 32]).unwrap()
    );
    // Moving a byte from the key to the nonce changes the hash.
    assert_ne!(
        report_data_for_nonce(b"some key", &[0x42; 32]).unwrap(),
        report_data_for_nonce(b"some ke", &{
            let mut n = vec![b'y'];
            n.extend_from_slice(&[0x42; 32]);
            n
        })
        .unwrap()
    );
    assert_ne!(report_data_for_key(b"a"), report_data_for_key(b"b"));
}

fn sim_evidence(report_data: &[u8; 64]) -> Evidence {
    SimAttester::with_measurement([3; 32], [0x4D; 48])
        .unwrap()
        .evidence(report_data)
        .unwrap()
}

/// A self-signed certificate with these extension values under the evidence OID.
fn certificate_with(key: &KeyPair, values: Vec<Vec<u8>>) -> Vec<u8> {
    let mut params = CertificateParams::new(vec!["adyton.invalid".into()]).unwrap();
    for value in values {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                EVIDENCE_EXTENSION_OID_ARCS,
                value,
            ));
    }
    params.self_signed(key).unwrap().der().to_vec()
}

#[test]
fn evidence_and_key_round_trip_through_a_certificate() {
    let key = KeyPair::generate().unwrap();
    let spki = key.subject_public_key_info();
    let evidence = sim_evidence(&report_data_for_key(&spki));
    let cert = certificate_with(&key, vec![evidence_extension_value(&evidence).unwrap()]);
    let (found, found_spki) = evidence_from_certificate(&cert).unwrap();
    assert_eq!(found, evidence);
    assert_eq!(found.tee, TeeKind::Sim);
    assert_eq!(found_spki, spki);
}

#[test]
fn extension_value_is_one_octet_string_of_json() {
    let evidence = sim_evidence(&[0; 64]);
    let value = evidence_extension_value(&evidence).unwrap();
    let json = evidence.to_json();
    // 04 82 LL LL: OCTET STRING, two length bytes for a SIM evidence of a few hundred bytes.
    assert_eq!(value[0], 0x04);
    assert_eq!(value[1], 0x82);
    assert_eq!(
        usize::from(u16::from_be_bytes([value[2], value[3]])),
        json.len()
    );
    assert_eq!(&value[4..], json.as_bytes());
}

#[test]
fn a_certificate_without_the_extension_is_refused() {
    let key = KeyPair::generate().unwrap();
    let cert = certificate_with(&key, vec![]);
    assert!(matches!(
        evidence_from_certificate(&cert),
        Err(AttestedTlsError::NoEvidenceExtension)
    ));
}

#[test]
fn a_certificate_with_the_extension_twice_is_refused() {
    let key = KeyPair::generate().unwrap();
    let value = evidence_extension_value(&sim_evidence(&[0; 64])).unwrap();
    let cert = certificate_with(&key, vec![value.clone(), value]);
    assert!(matches!(
        evidence_from_certificate(&cert),
        Err(AttestedTlsError::DuplicateEvidenceExtension { count: 2 })
    ));
}

#[test]
fn a_malformed_extension_is_refused() {
    let key = KeyPair::generate().unwrap();
    // The JSON without its OCTET STRING.
    let raw = sim_evidence(&[0; 64]).to_json().into_bytes();
    let cert = certificate_with(&key, vec![raw]);
    assert!(matches!(
        evidence_from_certificate(&cert),
        Err(AttestedTlsError::MalformedExtension { .. })
    ));
    // An OCTET STRING followed by trailing bytes.
    let mut trailing = evidence_extension_value(&sim_evidence(&[0; 64])).unwrap();
    trailing.push(0);
    let cert = certificate_with(&key, vec![trailing]);
    assert!(matches!(
        evidence_from_certificate(&cert),
        Err(AttestedTlsError::MalformedExtension { .. })
    ));
}

#[test]
fn an_extension_without_evidence_is_refused() {
    let key = KeyPair::generate().unwrap();
    let not_evidence = vec![
        0x04, 0x09, b'n', b'o', b't', b' ', b'j', b's', b'o', b'n', b'!',
    ];
    let cert = certificate_with(&key, vec![not_evidence]);
    assert!(matches!(
        evidence_from_certificate(&cert),
        Err(AttestedTlsError::BadEvidence(_))
    ));
}

#[test]
fn bytes_that_are_not_a_certificate_are_refused() {
    let key = KeyPair::generate().unwrap();
    let value = evidence_extension_value(&sim_evidence(&[0; 64])).unwrap();
    let cert = certificate_with(&key, vec![value]);
    let mut trailing = cert.clone();
    trailing.push(0);
    for bad in [
        Vec::new(),
        b"-----BEGIN CERTIFICATE-----".to_vec(),
        cert[..cert.len() - 1].to_vec(),
        cert[..cert.len() / 2].to_vec(),
        trailing,
        vec![0x30, 0x00],
        key.subject_public_key_info(),
    ] {
        assert!(
            matches!(
                evidence_from_certificate(&bad),
                Err(AttestedTlsError::NotACertificate { .. })
            ),
            "{} bytes accepted",
            bad.len()
        );
    }
}
