//! SEV-SNP: a real Milan attestation report (from the `sev` crate's tests, `testdata/snp/`)
//! verifies at a fixed date, and every check the verifier makes is shown to fail when it should.

use adyton_attest::claims::SnpClaims;
use adyton_attest::collateral::SnpCollateral;
use adyton_attest::verifier::snp::{debug_allowed, parse_report, SnpVerifier, REPORT_LEN};
use adyton_attest::verifier::{self, Verifier};
use adyton_attest::{AttestError, Claims, Collateral, Evidence, Policy, TcbStatus, TeeClaims};
use adyton_attest::{Result, TeeKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/snp/");

/// 2025-01-01T00:00:00Z, inside the Milan VCEK's validity (`testdata/snp/README.md`).
const NOW: u64 = 1_735_689_600;
/// The Milan VCEK's notBefore, 2023-04-03T19:23:43Z.
const VCEK_NOT_BEFORE: u64 = 1_680_549_823;
/// The Milan VCEK's notAfter, 2030-04-03T19:23:43Z.
const VCEK_NOT_AFTER: u64 = 1_901_474_623;

const MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d\
                           3e1a0dc39b2c60bd95b9c480cd81841f";
const REPORT_DATA: &str = "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c64581\
                           0b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd";
const CHIP_ID: &str = "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc\
                       15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6";
/// SMT allowed (bit 16) and the reserved bit 17, which must be one; debug (bit 19) not allowed.
const GUEST_POLICY: u64 = 0x3_0000;

/// Offsets in the report (SEV-SNP ABI, table "ATTESTATION_REPORT").
const POLICY_OFFSET: usize = 0x08;
const RESERVED_OFFSET: usize = 0x4C;
const REPORT_DATA_OFFSET: usize = 0x50;
const MEASUREMENT_OFFSET: usize = 0x90;
const CURRENT_TCB_OFFSET: usize = 0x38;
const REPORTED_TCB_OFFSET: usize = 0x180;
const COMMITTED_TCB_OFFSET: usize = 0x1E0;
const LAUNCH_TCB_OFFSET: usize = 0x1F0;
const CHIP_ID_OFFSET: usize = 0x1A0;
const SIGNATURE_R_OFFSET: usize = 0x2A0;
const SIGNATURE_S_OFFSET: usize = 0x2A0 + 72;

/// Certificate table GUIDs in RFC 4122 byte order.
const GUID_ARK: &str = "c0b406a4a803495297433fb6014cd0ae";
const GUID_ASK: &str = "4ab7b379bbac4fe4a02f05aef327c782";
pub(crate) const GUID_VCEK: &str = "63da758de6644564adc5f4b93be8accd";
const GUID_CRL: &str = "92f81bc358114d3d97ffd19f88dc67ea";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn milan_report() -> Vec<u8> {
    let text = String::from_utf8(read("report_milan.hex")).unwrap();
    let report = hex::decode(text.trim()).unwrap();
    assert_eq!(report.len(), REPORT_LEN);
    report
}

fn milan_vcek() -> Vec<u8> {
    read("vcek_milan.der")
}

fn turin_vcek() -> Vec<u8> {
    read("vcek_turin.der")
}

/// The (ARK, ASK) PEM blocks of a `cert_chain_*` file, which holds the ASK first, then the ARK.
fn chain_pem(name: &str) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(read(name)).unwrap();
    const END: &str = "-----END CERTIFICATE-----";
    let blocks: Vec<String> = text
        .split_inclusive(END)
        .filter(|block| block.contains(END))
        .map(|block| format!("{}\n", block.trim()))
        .collect();
    assert_eq!(blocks.len(), 2, "{name}");
    (
        blocks[1].clone().into_bytes(),
        blocks[0].clone().into_bytes(),
    )
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    BASE64.decode(body).unwrap()
}

fn der_to_pem(der: &[u8]) -> Vec<u8> {
    let body = BASE64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

fn evidence(quote: Vec<u8>) -> Evidence {
    Evidence {
        tee: TeeKind::Snp,
        quote,
        certificates: None,
        gpus: Vec::new(),
    }
}

fn collateral(ark: Option<Vec<u8>>, ask: Option<Vec<u8>>, vcek: Option<Vec<u8>>) -> Collateral {
    Collateral {
        dcap: None,
        snp: Some(SnpCollateral { ark, ask, vcek }),
    }
}

fn with_vcek(vcek: Vec<u8>) -> Collateral {
    collateral(None, None, Some(vcek))
}

fn verify(quote: Vec<u8>, collateral: &Collateral, now: u64) -> Result<Claims> {
    SnpVerifier::new().verify(&evidence(quote), collateral, now)
}

fn snp(claims: &Claims) -> &SnpClaims {
    match &claims.details {
        TeeClaims::Snp(snp) => snp,
        other => panic!("not SNP claims: {other:?}"),
    }
}

fn verified_claims() -> Claims {
    verify(milan_report(), &with_vcek(milan_vcek()), NOW).unwrap()
}

/// A certificate table as configfs-tsm's `auxblob` carries it.
pub(crate) fn cert_table(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut offset = 24 * (entries.len() + 1);
    let mut table = Vec::new();
    let mut data = Vec::new();
    for (guid, cert) in entries {
        table.extend(hex::decode(guid.replace(' ', "")).unwrap());
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
fn assert_bad_signature(result: Result<Claims>) {
    match result {
        Err(AttestError::BadSignature { .. }) => {}
        other => panic!("expected BadSignature, got {other:?}"),
    }
}

#[track_caller]
fn assert_chain_rejected(result: Result<Claims>) {
    match result {
        Err(AttestError::CertificateChain { .. }) => {}
        other => panic!("expected CertificateChain, got {other:?}"),
    }
}

#[track_caller]
fn assert_malformed(result: Result<Claims>) {
    match result {
        Err(AttestError::MalformedEvidence { .. }) => {}
        other => panic!("expected MalformedEvidence, got {other:?}"),
    }
}

#[track_caller]
fn assert_denied(result: Result<()>, expected_field: &str) {
    match result {
        Err(AttestError::PolicyDenied { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected PolicyDenied on {expected_field}, got {other:?}"),
    }
}

#[test]
fn milan_report_verifies_with_built_in_roots() {
    let claims = verified_claims();
    assert_eq!(claims.tee, TeeKind::Snp);
    assert!(!claims.insecure);
    assert_eq!(hex::encode(claims.report_data), REPORT_DATA);
    assert_eq!(claims.tcb_status, TcbStatus::UpToDate);
    assert!(claims.advisory_ids.is_empty());
    assert!(!claims.debug);
    assert_eq!(claims.collateral_expires_at, Some(VCEK_NOT_AFTER));
    assert_eq!(claims.collateral_issued_at, Some(VCEK_NOT_BEFORE));
    assert_eq!(claims.primary_measurement(), MEASUREMENT);

    let snp = snp(&claims);
    assert_eq!(hex::encode(snp.measurement), MEASUREMENT);
    assert_eq!(snp.host_data, [0; 32]);
    assert_eq!(
        (
            snp.reported_tcb.bootloader,
            snp.reported_tcb.tee,
            snp.reported_tcb.snp,
            snp.reported_tcb.microcode
        ),
        (3, 0, 8, 115)
    );
    assert_eq!(snp.policy, GUEST_POLICY);
    assert_eq!(hex::encode(&snp.chip_id), CHIP_ID);

    // The registry of verifiers picks the SNP verifier for SNP evidence.
    let via_registry =
        verifier::verify(&evidence(milan_report()), &with_vcek(milan_vcek()), NOW).unwrap();
    assert_eq!(via_registry, claims);
}

#[test]
fn milan_report_verifies_with_the_chain_from_collateral() {
    let (ark, ask) = chain_pem("cert_chain_milan");
    let expected = verified_claims();

    // PEM chain, DER VCEK.
    let pem_chain = collateral(Some(ark.clone()), Some(ask.clone()), Some(milan_vcek()));
    assert_eq!(verify(milan_report(), &pem_chain, NOW).unwrap(), expected);

    // DER chain, PEM VCEK.
    let der_chain = collateral(
        Some(pem_to_der(&ark)),
        Some(pem_to_der(&ask)),
        Some(der_to_pem(&milan_vcek())),
    );
    assert_eq!(verify(milan_report(), &der_chain, NOW).unwrap(), expected);

    // Only the ASK given: the built-in ARK anchors it.
    let ask_only = collateral(None, Some(ask.clone()), Some(milan_vcek()));
    assert_eq!(verify(milan_report(), &ask_only, NOW).unwrap(), expected);

    // A collateral bundle file, as an offline site would ship it.
    let bundle = serde_json::json!({
        "snp": {
            "ark": String::from_utf8(ark).unwrap(),
            "ask": String::from_utf8(ask).unwrap(),
            "vcek": BASE64.encode(milan_vcek()),
        }
    });
    let from_file = Collateral::from_bundle_json(bundle.to_string().as_bytes()).unwrap();
    assert_eq!(verify(milan_report(), &from_file, NOW).unwrap(), expected);
}

#[test]
fn the_vcek_may_come_from_the_evidence_certificate_table() {
    let (ark, ask) = chain_pem("cert_chain_milan");
    let expected = verified_claims();
    let vcek = milan_vcek();
    let tables = [
        cert_table(&[(GUID_VCEK, &vcek)]),
        cert_table(&[(GUID_VCEK, &der_to_pem(&vcek))]),
        cert_table(&[
            (GUID_ASK, &pem_to_der(&ask)),
            (GUID_ARK, &pem_to_der(&ark)),
            (GUID_CRL, b"not a CRL, and ignored"),
            (GUID_VCEK, &vcek),
        ]),
        // A host's wrong ASK is tried, fails, and the built-in one is used.
        cert_table(&[(GUID_VCEK, &vcek), (GUID_ASK, b"not a certificate")]),
        cert_table(&[(GUID_VCEK, &vcek), (GUID_ASK, &turin_vcek())]),
    ];
    for table in tables {
        let evidence = Evidence {
            tee: TeeKind::Snp,
            quote: milan_report(),
            certificates: Some(table),
            gpus: Vec::new(),
        };
        for collateral in [Collateral::none(), collateral(None, None, None)] {
            let claims = SnpVerifier::new()
                .verify(&evidence, &collateral, NOW)
                .unwrap();
            assert_eq!(claims, expected);
        }
    }

    // The collateral's VCEK comes first: a wrong one there is not rescued by the table.
    let evidence = Evidence {
        tee: TeeKind::Snp,
        quote: milan_report(),
        certificates: Some(cert_table(&[(GUID_VCEK, &vcek)])),
        gpus: Vec::new(),
    };
    assert_bad_signature(SnpVerifier::new().verify(&evidence, &with_vcek(turin_vcek()), NOW));
}

#[test]
fn malformed_certificate_tables_are_refused() {
    let vcek = milan_vcek();
    let good = cert_table(&[(GUID_VCEK, &vcek)]);
    let mut offset_past_end = good.clone();
    offset_past_end[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut length_past_end = good.clone();
    length_past_end[20..24].copy_from_slice(&(u32::try_from(good.len()).unwrap()).to_le_bytes());
    let duplicate = cert_table(&[(GUID_VCEK, &vcek), (GUID_VCEK, &vcek)]);
    let not_a_certificate = cert_table(&[(GUID_VCEK, b"garbage")]);
    let many_entries = vec![0x11; 24 * 100];
    for table in [
        Vec::new(),
        vec![0; 23],
        good[..24].to_vec(),
        offset_past_end,
        length_past_end,
        duplicate,
        not_a_certificate,
        many_entries,
    ] {
        let evidence = Evidence {
            tee: TeeKind::Snp,
            quote: milan_report(),
            certificates: Some(table),
            gpus: Vec::new(),
        };
        assert_malformed(SnpVerifier::new().verify(&evidence, &Collateral::none(), NOW));
    }
}

#[test]
fn no_vcek_anywhere_is_collateral_missing() {
    let (ark, ask) = chain_pem("cert_chain_milan");
    let table_without_vcek = cert_table(&[(GUID_ASK, &pem_to_der(&ask))]);
    for (certificates, collateral) in [
        (None, Collateral::none()),
        (None, collateral(Some(ark.clone()), Some(ask.clone()), None)),
        (Some(table_without_vcek), Collateral::none()),
        (Some(cert_table(&[])), Collateral::none()),
    ] {
        let evidence = Evidence {
            tee: TeeKind::Snp,
            quote: milan_report(),
            certificates,
            gpus: Vec::new(),
        };
        match SnpVerifier::new().verify(&evidence, &collateral, NOW) {
            Err(AttestError::CollateralMissing { what }) => {
                assert!(what.contains("VCEK"), "{what}")
            }
            other => panic!("expected CollateralMissing, got {other:?}"),
        }
    }
}

#[test]
fn a_flipped_report_data_byte_breaks_the_signature() {
    let collateral = with_vcek(milan_vcek());
    for at in [REPORT_DATA_OFFSET, REPORT_DATA_OFFSET + 63] {
        assert_bad_signature(verify(flipped(milan_report(), at, 0x01), &collateral, NOW));
    }
    // The measurement and the reported TCB are signed too.
    assert_bad_signature(verify(
        flipped(milan_report(), MEASUREMENT_OFFSET + 5, 0x80),
        &collateral,
        NOW,
    ));
    assert_bad_signature(verify(
        flipped(milan_report(), REPORTED_TCB_OFFSET + 7, 0x01),
        &collateral,
        NOW,
    ));
}

#[test]
fn altered_signature_bytes_are_refused() {
    let collateral = with_vcek(milan_vcek());
    for at in [
        SIGNATURE_R_OFFSET,
        SIGNATURE_R_OFFSET + 47,
        SIGNATURE_S_OFFSET,
        SIGNATURE_S_OFFSET + 20,
        // The upper 24 bytes of R and S are zero padding that `sev` does not read; the verifier
        // still refuses a change there.
        SIGNATURE_R_OFFSET + 60,
        SIGNATURE_S_OFFSET + 71,
        // Reserved bytes after the signature.
        SIGNATURE_S_OFFSET + 72,
        REPORT_LEN - 1,
    ] {
        assert_bad_signature(verify(flipped(milan_report(), at, 0x04), &collateral, NOW));
    }
    let mut zero_signature = milan_report();
    zero_signature[SIGNATURE_R_OFFSET..].fill(0);
    assert_bad_signature(verify(zero_signature, &collateral, NOW));
}

#[test]
fn reserved_bytes_in_the_signed_part_are_refused() {
    let collateral = with_vcek(milan_vcek());
    // `sev` refuses most non-zero reserved bytes while parsing.
    assert_malformed(verify(
        flipped(milan_report(), RESERVED_OFFSET, 0xFF),
        &collateral,
        NOW,
    ));
    // Bytes 2 to 5 of a Milan TCB version are reserved; `sev` drops them while parsing. The
    // signature is checked over the bytes received, so such a change breaks it (and a report
    // signed with them non-zero is refused too: the unit test
    // `a_parsed_report_must_re_encode_to_the_signed_bytes` in `verifier/snp.rs`).
    for tcb in [
        CURRENT_TCB_OFFSET,
        REPORTED_TCB_OFFSET,
        COMMITTED_TCB_OFFSET,
        LAUNCH_TCB_OFFSET,
    ] {
        assert_bad_signature(verify(
            flipped(milan_report(), tcb + 3, 0x01),
            &collateral,
            NOW,
        ));
    }
}

#[test]
fn no_single_flipped_byte_verifies() {
    let collateral = with_vcek(milan_vcek());
    for at in (0..REPORT_LEN).step_by(47) {
        let result = verify(flipped(milan_report(), at, 0x10), &collateral, NOW);
        assert!(
            matches!(
                result,
                Err(AttestError::BadSignature { .. } | AttestError::MalformedEvidence { .. })
            ),
            "byte {at:#x}: {result:?}"
        );
    }
}

#[test]
fn an_expired_or_not_yet_valid_vcek_is_refused() {
    let collateral = with_vcek(milan_vcek());
    for now in [VCEK_NOT_BEFORE, VCEK_NOT_AFTER] {
        verify(milan_report(), &collateral, now).unwrap();
    }
    for now in [VCEK_NOT_AFTER + 1, VCEK_NOT_BEFORE - 1, u64::MAX, 0] {
        match verify(milan_report(), &collateral, now) {
            Err(AttestError::CollateralExpired { what }) => {
                assert!(what.contains("VCEK"), "{what}");
                assert!(what.contains("2030-04-03T19:23:43Z"), "{what}");
            }
            other => panic!("expected CollateralExpired at {now}, got {other:?}"),
        }
    }
}

#[test]
fn a_vcek_of_another_chip_is_refused() {
    // With the built-in roots, the Turin VCEK's chain verifies, but it did not sign the report.
    assert_bad_signature(verify(milan_report(), &with_vcek(turin_vcek()), NOW));

    // With the Milan chain given, the Turin VCEK is not signed by the Milan ASK.
    let (ark, ask) = chain_pem("cert_chain_milan");
    let milan_chain = collateral(Some(ark), Some(ask), Some(turin_vcek()));
    assert_chain_rejected(verify(milan_report(), &milan_chain, NOW));

    // With the Turin chain given, the chain is fine and the signature is not.
    let (ark, ask) = chain_pem("cert_chain_turin");
    let turin_chain = collateral(Some(ark), Some(ask), Some(turin_vcek()));
    assert_bad_signature(verify(milan_report(), &turin_chain, NOW));
}

#[test]
fn a_tampered_vcek_is_refused() {
    let vcek = milan_vcek();
    let last = vcek.len() - 1;
    // A byte of its signature.
    assert_chain_rejected(verify(
        milan_report(),
        &with_vcek(flipped(vcek.clone(), last, 0x01)),
        NOW,
    ));
    // A byte of its hwID extension, inside the signed part.
    let hw_id = vcek
        .windows(8)
        .position(|w| w == hex::decode(&CHIP_ID[..16]).unwrap())
        .unwrap();
    assert_chain_rejected(verify(
        milan_report(),
        &with_vcek(flipped(vcek.clone(), hw_id, 0x01)),
        NOW,
    ));
    // Not a certificate at all.
    assert_chain_rejected(verify(milan_report(), &with_vcek(b"garbage".to_vec()), NOW));
    assert_chain_rejected(verify(
        milan_report(),
        &with_vcek(vcek[..100].to_vec()),
        NOW,
    ));
}

#[test]
fn only_amd_roots_anchor_the_chain() {
    let (milan_ark, milan_ask) = chain_pem("cert_chain_milan");
    let (turin_ark, turin_ask) = chain_pem("cert_chain_turin");

    // An ARK that is not byte for byte AMD's (here: one byte of its signature changed).
    let ark_der = pem_to_der(&milan_ark);
    let fake_ark = flipped(ark_der.clone(), ark_der.len() - 1, 0x01);
    let fake = collateral(Some(fake_ark), Some(milan_ask.clone()), Some(milan_vcek()));
    assert_chain_rejected(verify(milan_report(), &fake, NOW));

    // Real AMD certificates that do not chain.
    for (ark, ask) in [
        (Some(turin_ark.clone()), Some(milan_ask.clone())),
        (Some(milan_ark.clone()), Some(turin_ask.clone())),
        (None, Some(turin_ask.clone())),
        (Some(milan_ark.clone()), Some(milan_vcek())),
    ] {
        let wrong = collateral(ark, ask, Some(milan_vcek()));
        assert_chain_rejected(verify(milan_report(), &wrong, NOW));
    }

    // An ASK that is not a certificate.
    let garbage_ask = collateral(None, Some(b"garbage".to_vec()), Some(milan_vcek()));
    assert_chain_rejected(verify(milan_report(), &garbage_ask, NOW));
}

#[test]
fn the_debug_bit_is_signed_mapped_and_refused_by_policy() {
    // Policy bit 19 is bit 3 of the policy's third byte.
    let debug_report = flipped(milan_report(), POLICY_OFFSET + 2, 0x08);
    assert_bad_signature(verify(debug_report.clone(), &with_vcek(milan_vcek()), NOW));

    assert!(!debug_allowed(&parse_report(&milan_report()).unwrap()));
    assert!(debug_allowed(&parse_report(&debug_report).unwrap()));

    let mut claims = verified_claims();
    let policy = Policy::from_toml(&format!("[snp]\nmeasurement = [\"{MEASUREMENT}\"]\n")).unwrap();
    policy.evaluate(&claims, NOW).unwrap();
    claims.debug = true;
    assert!(matches!(
        policy.evaluate(&claims, NOW),
        Err(AttestError::DebugEnabled)
    ));
}

#[test]
fn the_policy_judges_measurement_host_data_and_tcb() {
    let claims = verified_claims();
    let zeros = "00".repeat(32);
    let accept = Policy::from_toml(&format!(
        "[snp]\nmeasurement = [\"{MEASUREMENT}\"]\nhost_data = \"{zeros}\"\n\
         min_tcb = {{ bootloader = 3, tee = 0, snp = 8, microcode = 115 }}\n"
    ))
    .unwrap();
    accept.evaluate(&claims, NOW).unwrap();

    let other_measurement = "7b".repeat(48);
    let policy =
        Policy::from_toml(&format!("[snp]\nmeasurement = [\"{other_measurement}\"]\n")).unwrap();
    assert_denied(policy.evaluate(&claims, NOW), "snp.measurement");

    let policy =
        Policy::from_toml(&format!("[snp]\nhost_data = \"{}\"\n", "01".repeat(32))).unwrap();
    assert_denied(policy.evaluate(&claims, NOW), "snp.host_data");

    for (component, above) in [
        ("bootloader", 4),
        ("tee", 1),
        ("snp", 9),
        ("microcode", 116),
    ] {
        let policy =
            Policy::from_toml(&format!("[snp]\nmin_tcb = {{ {component} = {above} }}\n")).unwrap();
        assert_denied(
            policy.evaluate(&claims, NOW),
            &format!("snp.min_tcb.{component}"),
        );
    }
}

#[test]
fn the_wrong_tee_is_refused() {
    // SNP evidence labelled TDX goes to the DCAP verifier, which must fail cleanly.
    let as_tdx = Evidence {
        tee: TeeKind::Tdx,
        quote: milan_report(),
        certificates: None,
        gpus: Vec::new(),
    };
    assert!(verifier::verify(&as_tdx, &with_vcek(milan_vcek()), NOW).is_err());

    // The SNP verifier refuses evidence of another TEE.
    for tee in [TeeKind::Tdx, TeeKind::Sgx, TeeKind::Sim] {
        let other = Evidence {
            tee,
            quote: milan_report(),
            certificates: None,
            gpus: Vec::new(),
        };
        assert!(matches!(
            SnpVerifier::new().verify(&other, &with_vcek(milan_vcek()), NOW),
            Err(AttestError::WrongTee {
                expected: TeeKind::Snp,
                found
            }) if found == tee
        ));
    }

    // SNP claims against a policy that names only TDX.
    let tdx_only = Policy::from_toml("[tdx]\n").unwrap();
    assert!(matches!(
        tdx_only.evaluate(&verified_claims(), NOW),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Snp })
    ));
}

#[test]
fn truncated_or_extended_reports_are_malformed() {
    let collateral = with_vcek(milan_vcek());
    let report = milan_report();
    for len in [0, 1, 4, 64, 0x2A0, REPORT_LEN - 1] {
        assert_malformed(verify(report[..len].to_vec(), &collateral, NOW));
    }
    let mut longer = report.clone();
    longer.push(0);
    assert_malformed(verify(longer, &collateral, NOW));
    let mut twice = report.clone();
    twice.extend_from_slice(&report);
    assert_malformed(verify(twice, &collateral, NOW));
}

#[test]
fn unsupported_versions_and_processors_are_malformed() {
    let collateral = with_vcek(milan_vcek());
    for version in [0u32, 1] {
        let mut report = milan_report();
        report[..4].copy_from_slice(&version.to_le_bytes());
        assert_malformed(verify(report, &collateral, NOW));
    }
    // Version 3 names the processor by CPUID family and model (bytes 0x188 and 0x189).
    let mut unknown_cpu = milan_report();
    unknown_cpu[..4].copy_from_slice(&3u32.to_le_bytes());
    unknown_cpu[0x188] = 0x17;
    assert_malformed(verify(unknown_cpu, &collateral, NOW));
    // Version 2 with a masked (all-zero) chip id is read, as AWS's VLEK-signed reports need
    // (`snp_vlek.rs`); these zeros are not what this chip signed.
    let mut masked = milan_report();
    masked[CHIP_ID_OFFSET..CHIP_ID_OFFSET + 64].fill(0);
    assert_bad_signature(verify(masked, &collateral, NOW));
}

#[test]
fn random_bytes_are_malformed_and_never_panic() {
    let collateral = with_vcek(milan_vcek());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[3]
            })
            .collect()
    };
    for len in (0..3000)
        .step_by(37)
        .chain([REPORT_LEN - 1, REPORT_LEN + 1])
    {
        assert_malformed(verify(random(len), &collateral, NOW));
    }
    // Random reports of the right length: almost all fail to parse; whatever parses fails later.
    for _ in 0..200 {
        let result = verify(random(REPORT_LEN), &collateral, NOW);
        assert!(result.is_err());
    }
    // Random certificate tables never panic.
    for len in (0..600).step_by(7) {
        let evidence = Evidence {
            tee: TeeKind::Snp,
            quote: milan_report(),
            certificates: Some(random(len)),
            gpus: Vec::new(),
        };
        assert!(SnpVerifier::new()
            .verify(&evidence, &Collateral::none(), NOW)
            .is_err());
    }
}
