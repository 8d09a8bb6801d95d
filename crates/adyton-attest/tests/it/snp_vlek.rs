//! SEV-SNP with a VLEK: a real report recorded on AWS EC2 (`testdata/snp/README.md`) verifies with
//! only its VLEK, through the ASVK built into the verifier, at a fixed date; and every chain that
//! is not ARK → ASVK → VLEK is refused.

use adyton_attest::collateral::SnpCollateral;
use adyton_attest::verifier::snp::{SnpVerifier, REPORT_LEN};
use adyton_attest::verifier::Verifier;
use adyton_attest::TeeKind;
use adyton_attest::{AttestError, Claims, Collateral, Evidence, Result, TcbStatus, TeeClaims};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/snp/");

/// 2024-01-01T00:00:00Z, inside the VLEK's validity.
const NOW: u64 = 1_704_067_200;
/// The VLEK's notBefore, 2023-07-19T08:29:28Z.
const VLEK_NOT_BEFORE: u64 = 1_689_755_368;
/// The VLEK's notAfter, 2024-07-19T08:29:28Z.
const VLEK_NOT_AFTER: u64 = 1_721_377_768;

/// The report data: the digest of the attestation key of the guest that made the report.
const REPORT_DATA: &str = "032635613c8e331fa29e096371910fe6a1f69383dda02c9461400a70b66d87a3\
                           da5dd863002522be43afc34f2c233989bd6e401e351d10d7cc800d6f5dfcf019";
const MEASUREMENT: &str = "25ac810f5c4750890fb1a158f097962e04d4d7fb640d1d08a99829cf4a70543a\
                           47cc6fb192bbe90aa713142361a66155";

const KEY_INFO_OFFSET: usize = 0x48;
const REPORT_DATA_OFFSET: usize = 0x50;
const MEASUREMENT_OFFSET: usize = 0x90;
const SIGNATURE_S_OFFSET: usize = 0x2A0 + 72;

/// Certificate table GUIDs in RFC 4122 byte order (GHCB specification).
const GUID_ASK: &str = "4ab7b379bbac4fe4a02f05aef327c782";
const GUID_VLEK: &str = "a8074bc2a25a483eaae639c045a0b8a1";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

/// The report as the source stores it: base64 text.
fn vlek_report() -> Vec<u8> {
    let text = String::from_utf8(read("report_aws_vlek_milan.b64")).unwrap();
    let report = BASE64.decode(text.trim()).unwrap();
    assert_eq!(report.len(), REPORT_LEN);
    report
}

fn vlek_pem() -> Vec<u8> {
    read("vlek_aws_milan.pem")
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    BASE64.decode(body).unwrap()
}

fn vlek_der() -> Vec<u8> {
    pem_to_der(&vlek_pem())
}

/// The first certificate (the ASK) of one of the `cert_chain_*` files, DER.
fn ask_der(chain: &str) -> Vec<u8> {
    let text = String::from_utf8(read(chain)).unwrap();
    let first = text.split("-----END CERTIFICATE-----").next().unwrap();
    pem_to_der(first.as_bytes())
}

fn with_vek(vek: Vec<u8>) -> Collateral {
    Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: None,
            vcek: Some(vek),
        }),
    }
}

fn verify_with(
    quote: Vec<u8>,
    certificates: Option<Vec<u8>>,
    collateral: &Collateral,
    now: u64,
) -> Result<Claims> {
    let evidence = Evidence {
        tee: TeeKind::Snp,
        quote,
        certificates,
        gpus: Vec::new(),
    };
    SnpVerifier::new().verify(&evidence, collateral, now)
}

fn verify(quote: Vec<u8>, collateral: &Collateral, now: u64) -> Result<Claims> {
    verify_with(quote, None, collateral, now)
}

/// A certificate table as configfs-tsm's `auxblob` carries it.
fn cert_table(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut offset = 24 * (entries.len() + 1);
    let mut table = Vec::new();
    let mut data = Vec::new();
    for (guid, cert) in entries {
        table.extend(hex::decode(guid).unwrap());
        table.extend(u32::try_from(offset).unwrap().to_le_bytes());
        table.extend(u32::try_from(cert.len()).unwrap().to_le_bytes());
        offset += cert.len();
        data.extend_from_slice(cert);
    }
    table.extend([0; 24]);
    table.extend(data);
    table
}

fn flipped(mut bytes: Vec<u8>, at: usize, mask: u8) -> Vec<u8> {
    bytes[at] ^= mask;
    bytes
}

#[track_caller]
fn chain_refusal(result: Result<Claims>) -> String {
    match result {
        Err(AttestError::CertificateChain { reason }) => reason,
        other => panic!("expected CertificateChain, got {other:?}"),
    }
}

#[track_caller]
fn assert_bad_signature(result: Result<Claims>) {
    match result {
        Err(AttestError::BadSignature { .. }) => {}
        other => panic!("expected BadSignature, got {other:?}"),
    }
}

#[track_caller]
fn assert_expired(result: Result<Claims>) {
    match result {
        Err(AttestError::CollateralExpired { what }) => assert!(what.contains("VLEK"), "{what}"),
        other => panic!("expected CollateralExpired, got {other:?}"),
    }
}

#[test]
fn the_aws_report_says_it_is_signed_with_a_vlek() {
    let report = vlek_report();
    // KEY_INFO.SIGNING_KEY (bits 2 to 4) is 1, the VLEK; the chip id is masked.
    assert_eq!(report[KEY_INFO_OFFSET], 1 << 2);
    assert!(report[0x1A0..0x1E0].iter().all(|&b| b == 0));
}

#[test]
fn a_vlek_report_verifies_with_only_its_vlek() {
    for vek in [vlek_pem(), vlek_der()] {
        let claims = verify(vlek_report(), &with_vek(vek), NOW).unwrap();
        assert_eq!(claims.tee, TeeKind::Snp);
        assert!(!claims.insecure);
        assert!(!claims.debug);
        assert_eq!(claims.tcb_status, TcbStatus::UpToDate);
        assert_eq!(hex::encode(claims.report_data), REPORT_DATA);
        assert_eq!(claims.collateral_issued_at, Some(VLEK_NOT_BEFORE));
        assert_eq!(claims.collateral_expires_at, Some(VLEK_NOT_AFTER));
        let TeeClaims::Snp(snp) = &claims.details else {
            panic!("not SNP claims: {:?}", claims.details)
        };
        assert_eq!(hex::encode(snp.measurement), MEASUREMENT);
        assert_eq!(snp.policy, 0x3_0000);
        assert_eq!(
            (
                snp.reported_tcb.bootloader,
                snp.reported_tcb.tee,
                snp.reported_tcb.snp,
                snp.reported_tcb.microcode
            ),
            (3, 0, 10, 115)
        );
        assert_eq!(snp.chip_id, vec![0; 64]);
        assert_eq!(snp.vmpl, 0);
    }
}

#[test]
fn the_vlek_may_come_from_the_evidence_certificate_table() {
    let vlek = vlek_der();
    let table = cert_table(&[(GUID_VLEK, &vlek)]);
    let claims = verify_with(vlek_report(), Some(table), &Collateral::none(), NOW).unwrap();
    assert_eq!(hex::encode(claims.report_data), REPORT_DATA);

    // A host's ASVK is tried first, and it does not have to be good: one that the ARK does not
    // sign (a flipped signature byte) is passed over for the built-in one.
    let asvk = ask_der_of_built_in_asvk();
    let bad_asvk = flipped(asvk.clone(), asvk.len() - 1, 0x01);
    for host_asvk in [asvk, bad_asvk] {
        let table = cert_table(&[(GUID_ASK, &host_asvk), (GUID_VLEK, &vlek)]);
        verify_with(vlek_report(), Some(table), &Collateral::none(), NOW).unwrap();
    }
}

/// The Milan ASVK, DER, as a host would carry it in its table: the built-in certificate.
fn ask_der_of_built_in_asvk() -> Vec<u8> {
    pem_to_der(include_bytes!("../../src/verifier/snp_asvk/milan.pem"))
}

#[test]
fn a_flipped_byte_in_the_signed_report_breaks_the_signature() {
    for at in [
        REPORT_DATA_OFFSET,
        MEASUREMENT_OFFSET + 47,
        SIGNATURE_S_OFFSET,
    ] {
        assert_bad_signature(verify(
            flipped(vlek_report(), at, 0x01),
            &with_vek(vlek_pem()),
            NOW,
        ));
    }
}

#[test]
fn a_vlek_report_marked_as_vcek_signed_is_refused() {
    // KEY_INFO says VCEK: the built-in ASK does not sign the VLEK, so no chain verifies (and the
    // byte is signed, so the report's signature would fail next).
    let report = flipped(vlek_report(), KEY_INFO_OFFSET, 1 << 2);
    let reason = chain_refusal(verify(report, &with_vek(vlek_pem()), NOW));
    assert!(reason.contains("through an ASK to the VCEK"), "{reason}");
}

#[test]
fn a_vlek_report_with_a_vcek_style_chain_is_refused() {
    // A real VCEK, signed by the real Milan ASK, which the real ARK signs: every signature in
    // ARK -> ASK -> VCEK holds, but the report names a VLEK.
    let vcek = read("vcek_milan.der");
    let reason = chain_refusal(verify(vlek_report(), &with_vek(vcek.clone()), NOW));
    assert!(reason.contains("through an ASVK to the VLEK"), "{reason}");

    // The host supplies the ASK as well, so the chain of signatures is complete.
    let table = cert_table(&[(GUID_ASK, &ask_der("cert_chain_milan")), (GUID_VLEK, &vcek)]);
    let reason = chain_refusal(verify_with(
        vlek_report(),
        Some(table),
        &Collateral::none(),
        NOW,
    ));
    assert!(reason.contains("only an ASVK"), "{reason}");
    assert!(reason.contains("CN=SEV-Milan"), "{reason}");
}

#[test]
fn a_vlek_the_asvk_did_not_sign_is_refused() {
    let vlek = vlek_der();
    // The P-384 point (inside the TBS the ASVK signed): `04` then X and Y, after the curve OID.
    let point_at = vlek
        .windows(3)
        .position(|w| w == [0x03, 0x62, 0x00])
        .unwrap()
        + 3;
    assert_eq!(vlek[point_at], 0x04);
    for at in [point_at + 10, vlek.len() - 1] {
        let reason = chain_refusal(verify(
            vlek_report(),
            &with_vek(flipped(vlek.clone(), at, 0x01)),
            NOW,
        ));
        assert!(reason.contains("through an ASVK to the VLEK"), "{reason}");
    }
    // And the host cannot vouch for it with an ASVK of its own: the ARK must sign that.
    let tampered = flipped(vlek.clone(), vlek.len() - 1, 0x01);
    let bad_asvk = flipped(ask_der_of_built_in_asvk(), 40, 0x01);
    let table = cert_table(&[(GUID_ASK, &bad_asvk), (GUID_VLEK, &tampered)]);
    chain_refusal(verify_with(
        vlek_report(),
        Some(table),
        &Collateral::none(),
        NOW,
    ));
}

#[test]
fn an_ask_in_the_collateral_replaces_the_built_in_asvk() {
    // An explicit ASK in the collateral is the only intermediate tried: the Milan ASK does not
    // sign a VLEK.
    let collateral = Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: Some(ask_der("cert_chain_milan")),
            vcek: Some(vlek_der()),
        }),
    };
    chain_refusal(verify(vlek_report(), &collateral, NOW));
    // The ASVK given there explicitly works as the built-in one does.
    let collateral = Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: Some(ask_der_of_built_in_asvk()),
            vcek: Some(vlek_der()),
        }),
    };
    verify(vlek_report(), &collateral, NOW).unwrap();
}

#[test]
fn an_expired_or_not_yet_valid_vlek_is_refused() {
    verify(vlek_report(), &with_vek(vlek_pem()), VLEK_NOT_BEFORE).unwrap();
    verify(vlek_report(), &with_vek(vlek_pem()), VLEK_NOT_AFTER).unwrap();
    assert_expired(verify(
        vlek_report(),
        &with_vek(vlek_pem()),
        VLEK_NOT_BEFORE - 1,
    ));
    assert_expired(verify(
        vlek_report(),
        &with_vek(vlek_pem()),
        VLEK_NOT_AFTER + 1,
    ));
}

/// Replaces `old` (which must occur once) by `new`, of the same length.
fn substitute(der: &mut [u8], old: &[u8], new: &[u8]) {
    assert_eq!(old.len(), new.len());
    let at = der.windows(old.len()).position(|w| w == old).unwrap();
    assert!(der[at + 1..].windows(old.len()).all(|w| w != old));
    der[at..at + old.len()].copy_from_slice(new);
}

/// Re-signs a certificate whose TBS starts at byte 4 and whose last 512 bytes are an RSA-4096
/// signature, as AMD's are, with `key` (RSA-PSS with SHA-384, salt 48, as AMD signs).
fn re_sign(der: &mut [u8], key: &aws_lc_rs::signature::RsaKeyPair) {
    let tbs_len = usize::from(u16::from_be_bytes([der[6], der[7]])) + 4;
    let tbs = der[4..4 + tbs_len].to_vec();
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PSS_SHA384,
        &aws_lc_rs::rand::SystemRandom::new(),
        &tbs,
        &mut signature,
    )
    .unwrap();
    let at = der.len() - signature.len();
    der[at..].copy_from_slice(&signature);
}

/// An attacker mints the whole chain: an "ASVK" with the real one's name, extensions and dates
/// but an RSA-4096 key of its own, a "VLEK" with the real one's fields but a P-384 key of its
/// own, signed by that ASVK with RSA-PSS as AMD signs, and the AWS report re-signed with the
/// VLEK's key. Every signature in it holds except the ARK's over the ASVK, so it is refused only
/// because it does not end at AMD's root.
#[test]
fn a_chain_minted_under_another_rsa_key_is_refused() {
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    use sev::certs::snp::{Certificate, Verifiable};

    let rsa = RsaKeyPair::generate(KeySize::Rsa4096).unwrap();
    let modulus = rsa.public_key().modulus();
    let modulus = modulus.big_endian_without_leading_zero();
    assert_eq!(modulus.len(), 512);

    let real_asvk = ask_der_of_built_in_asvk();
    let real_modulus_at = real_asvk
        .windows(5)
        .position(|w| w == [0x02, 0x82, 0x02, 0x01, 0x00])
        .unwrap()
        + 5;
    let mut fake_asvk = real_asvk.clone();
    substitute(
        &mut fake_asvk,
        &real_asvk[real_modulus_at..real_modulus_at + 512],
        modulus,
    );
    re_sign(&mut fake_asvk, &rsa);

    let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let real_vlek = vlek_der();
    let point_at = real_vlek
        .windows(4)
        .position(|w| w == [0x03, 0x62, 0x00, 0x04])
        .unwrap()
        + 3;
    let mut fake_vlek = real_vlek.clone();
    substitute(
        &mut fake_vlek,
        &real_vlek[point_at..point_at + 97],
        p384.public_key().as_ref(),
    );
    re_sign(&mut fake_vlek, &rsa);

    let mut report = vlek_report();
    let signature = p384
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &report[..0x2A0])
        .unwrap();
    let (r, s) = signature.as_ref().split_at(48);
    for (at, scalar) in [(0x2A0, r), (0x2A0 + 72, s)] {
        let little_endian: Vec<u8> = scalar.iter().rev().copied().collect();
        report[at..at + 48].copy_from_slice(&little_endian);
    }

    // The minted chain is internally sound: the fake ASVK signs the fake VLEK...
    let fake_asvk_cert = Certificate::from_der(&fake_asvk).unwrap();
    let fake_vlek_cert = Certificate::from_der(&fake_vlek).unwrap();
    (&fake_asvk_cert, &fake_vlek_cert).verify().unwrap();
    // ...but the real ASVK does not, nor does the ARK sign the fake ASVK.
    let real_asvk_cert = Certificate::from_der(&real_asvk).unwrap();
    assert!((&real_asvk_cert, &fake_vlek_cert).verify().is_err());

    for table in [
        cert_table(&[(GUID_VLEK, &fake_vlek)]),
        cert_table(&[(GUID_ASK, &fake_asvk), (GUID_VLEK, &fake_vlek)]),
    ] {
        let reason = chain_refusal(verify_with(
            report.clone(),
            Some(table),
            &Collateral::none(),
            NOW,
        ));
        assert!(reason.contains("through an ASVK to the VLEK"), "{reason}");
    }
    // Given as the collateral's ASK, the fake ASVK is the only one tried, and the ARK refuses it.
    let collateral = Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: Some(fake_asvk),
            vcek: Some(fake_vlek),
        }),
    };
    chain_refusal(verify(report, &collateral, NOW));
}
