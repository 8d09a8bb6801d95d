//! Recorded NVIDIA evidence (testdata/nvidia-gpu, from NVIDIA/attestation-sdk) at fixed times,
//! and reports and RIMs signed under test roots.

use super::attester::{FakeGpuAttester, FakeRimSigner, GpuAttester};
use super::*;

/// 2025-06-01T00:00:00Z: every recorded device certificate (2020..9999) and the RIM signer
/// (2024-12-30..2026-12-30) are valid.
const RECORDED_AT: u64 = 1_748_736_000;

macro_rules! data {
    ($name:literal) => {
        include_bytes!(concat!("../../../../testdata/nvidia-gpu/", $name)).as_slice()
    };
}

fn hex_report(text: &[u8]) -> Vec<u8> {
    hex::decode(String::from_utf8_lossy(text).trim()).unwrap_or_default()
}

fn nonce_of(report: &[u8]) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&report[4..36]);
    nonce
}

/// Checks the chain and the signature of a recorded report: everything up to the RIMs, which
/// the recorded reports have no matching driver RIM for (the recorded RIMs are for other
/// driver versions), so the result is the missing-RIM error.
fn verify_recorded(report: &[u8], chain: &[u8], now: u64) -> Result<GpuClaims> {
    let verifier = GpuVerifier::new()?;
    let report = hex_report(report);
    let evidence = GpuEvidence {
        report: report.clone(),
        certificates: chain.to_vec(),
        rims: Vec::new(),
    };
    verifier.verify(&evidence, &nonce_of(&report), now)
}

fn assert_reaches_rims(result: Result<GpuClaims>) {
    match result {
        Err(AttestError::CollateralMissing { what }) => {
            assert!(what.contains("driver RIM"), "{what}")
        }
        other => panic!("expected the missing driver RIM, got {other:?}"),
    }
}

#[test]
fn the_pinned_roots_are_the_recorded_chains_last_certificates() -> Result<()> {
    let root = read_certificates(NVIDIA_DEVICE_ROOT_PEM.as_bytes())?;
    for chain in [
        data!("hopperCertChain.txt"),
        data!("blackwellCertChain.txt"),
    ] {
        let certs = read_certificates(chain)?;
        assert_eq!(certs.last().map(|c| &c.der), Some(&root[0].der));
    }
    let rim_root = read_certificates(NVIDIA_RIM_ROOT_PEM.as_bytes())?;
    assert_eq!(
        read_certificates(data!("rim_root.crt"))?[0].der,
        rim_root[0].der
    );
    for (pem, fingerprint) in [
        (
            NVIDIA_DEVICE_ROOT_PEM,
            "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
        ),
        (
            NVIDIA_RIM_ROOT_PEM,
            "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
        ),
    ] {
        let der = &read_certificates(pem.as_bytes())?[0].der;
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        assert_eq!(hex::encode(sha), fingerprint);
    }
    Ok(())
}

#[test]
fn the_hopper_report_verifies_up_to_the_rims() {
    assert_reaches_rims(verify_recorded(
        data!("hopperAttestationReport.txt"),
        data!("hopperCertChain.txt"),
        RECORDED_AT,
    ));
}

#[test]
fn the_blackwell_report_verifies_up_to_the_rims() {
    assert_reaches_rims(verify_recorded(
        data!("blackwellAttestationReport.txt"),
        data!("blackwellCertChain.txt"),
        RECORDED_AT,
    ));
}

#[test]
fn the_expired_sample_verifies_at_its_own_time() {
    // NVIDIA's "expired" sample: its certificates run to 9999, so what expired for NVIDIA's SDK
    // is outside the chain (its OCSP status). Its chain and signature are sound.
    assert_reaches_rims(verify_recorded(
        data!("hopperAttestationReportExpired.txt"),
        data!("hopperCertChainExpired.txt"),
        RECORDED_AT,
    ));
}

#[test]
fn a_recorded_chain_is_refused_before_it_is_valid() {
    // 2020-01-01: before the device certificates' notBefore (2020-10-17).
    let result = verify_recorded(
        data!("hopperAttestationReport.txt"),
        data!("hopperCertChain.txt"),
        1_577_836_800,
    );
    assert!(
        matches!(result, Err(AttestError::CollateralExpired { .. })),
        "{result:?}"
    );
}

#[test]
fn the_bad_signature_sample_is_refused() {
    let result = verify_recorded(
        data!("hopperAttestationReportInvalidSignature.txt"),
        data!("hopperCertChain.txt"),
        RECORDED_AT,
    );
    assert!(
        matches!(result, Err(AttestError::BadSignature { .. })),
        "{result:?}"
    );
}

#[test]
fn a_report_with_another_devices_chain_is_refused() {
    // The expired sample's chain is a different GPU's: its key did not sign this report.
    let result = verify_recorded(
        data!("hopperAttestationReport.txt"),
        data!("hopperCertChainExpired.txt"),
        RECORDED_AT,
    );
    assert!(
        matches!(result, Err(AttestError::BadSignature { .. })),
        "{result:?}"
    );
}

#[test]
fn a_flipped_byte_anywhere_in_the_signed_part_is_refused() -> Result<()> {
    let report = hex_report(data!("hopperAttestationReport.txt"));
    let verifier = GpuVerifier::new()?;
    // The nonce, a measurement, the opaque data (driver version) and the signature.
    for position in [10, 37 + 8 + 55 + 20, report.len() - 200, report.len() - 1] {
        let mut changed = report.clone();
        changed[position] ^= 0x01;
        let evidence = GpuEvidence {
            report: changed,
            certificates: data!("hopperCertChain.txt").to_vec(),
            rims: Vec::new(),
        };
        let result = verifier.verify(&evidence, &nonce_of(&report), RECORDED_AT);
        assert!(
            matches!(
                result,
                Err(AttestError::BadSignature { .. } | AttestError::MalformedEvidence { .. })
            ),
            "byte {position}: {result:?}"
        );
    }
    Ok(())
}

#[test]
fn a_chain_under_another_root_is_refused() -> Result<()> {
    let fake = FakeGpuAttester::new(1, vec![[7; 48]; 4])?;
    let nonce = [3u8; 32];
    let evidence = fake.evidence(0, &nonce)?;
    // NVIDIA's root does not sign the fake device certificate.
    let result = GpuVerifier::new()?.verify(&evidence, &nonce, RECORDED_AT);
    assert!(
        matches!(result, Err(AttestError::CertificateChain { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn a_nonce_mismatch_is_refused() {
    let report = hex_report(data!("hopperAttestationReport.txt"));
    let evidence = GpuEvidence {
        report,
        certificates: data!("hopperCertChain.txt").to_vec(),
        rims: Vec::new(),
    };
    let result = GpuVerifier::new().and_then(|v| v.verify(&evidence, &[0u8; 32], RECORDED_AT));
    assert!(
        matches!(result, Err(AttestError::ReportDataMismatch { .. })),
        "{result:?}"
    );
}

// RIMs.

fn rim_roots() -> Vec<ChainCert> {
    read_certificates(NVIDIA_RIM_ROOT_PEM.as_bytes()).unwrap_or_default()
}

#[test]
fn the_recorded_driver_rim_verifies() -> Result<()> {
    let rim = Rim::verify(
        data!("NV_GPU_DRIVER_GH100_550.144.03.xml"),
        &rim_roots(),
        RECORDED_AT,
    )?;
    assert_eq!(rim.version, "550.144.03");
    assert_eq!(rim.product, "GH100");
    assert_eq!(rim.measurements.len(), 64);
    let active: Vec<u8> = rim
        .measurements
        .iter()
        .filter(|m| m.active)
        .map(|m| m.index)
        .collect();
    assert!(active.contains(&7));
    Ok(())
}

#[test]
fn the_rim_with_an_incorrect_signature_is_refused() {
    let result = Rim::verify(
        data!("incorrect_signature_driver_rim.xml"),
        &rim_roots(),
        RECORDED_AT,
    );
    assert!(
        matches!(result, Err(AttestError::BadSignature { .. })),
        "{result:?}"
    );
}

#[test]
fn a_changed_reference_value_is_refused() {
    let text = String::from_utf8_lossy(data!("NV_GPU_DRIVER_GH100_550.144.03.xml"))
        .replacen("4a5e4b3d", "4a5e4b3e", 1);
    let result = Rim::verify(text.as_bytes(), &rim_roots(), RECORDED_AT);
    assert!(
        matches!(result, Err(AttestError::BadSignature { .. })),
        "{result:?}"
    );
}

#[test]
fn the_rim_signer_expires() {
    // 2027-01-01: after the signing certificate's notAfter (2026-12-30).
    let result = Rim::verify(
        data!("NV_GPU_DRIVER_GH100_550.144.03.xml"),
        &rim_roots(),
        1_798_761_600,
    );
    assert!(
        matches!(result, Err(AttestError::CollateralExpired { .. })),
        "{result:?}"
    );
}

#[test]
fn a_rim_under_another_root_is_refused() -> Result<()> {
    let signer = FakeRimSigner::new()?;
    let rim = signer.rim("GH100", "550.144.03", &[(1, [1; 48])])?;
    let result = Rim::verify(&rim, &rim_roots(), RECORDED_AT);
    assert!(
        matches!(result, Err(AttestError::CertificateChain { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn the_measurement_mismatch_rim_refuses_the_hopper_report() -> Result<()> {
    // NVIDIA's sample RIM for the Hopper report's driver (535.86.09): its reference values were
    // changed after signing, so it is refused at its digest before any comparison. The
    // comparison itself is tested with the same values re-signed under a test root below.
    let report = hex_report(data!("hopperAttestationReport.txt"));
    let evidence = GpuEvidence {
        report: report.clone(),
        certificates: data!("hopperCertChain.txt").to_vec(),
        rims: vec![data!("NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml").to_vec()],
    };
    let result = GpuVerifier::new()?.verify(&evidence, &nonce_of(&report), RECORDED_AT);
    assert!(
        matches!(
            result,
            Err(AttestError::BadSignature { ref what }) if what.contains("digest")
        ),
        "{result:?}"
    );
    Ok(())
}

// Reports and RIMs under test roots.

fn measurements() -> Vec<[u8; 48]> {
    (0u8..64)
        .map(|i| [i.wrapping_mul(3).wrapping_add(1); 48])
        .collect()
}

/// A fake GPU, a driver RIM for indices 1..=9 and a VBIOS RIM for 20..=29 (RIM index i is
/// block i + 1), and a verifier trusting both test roots.
fn fake_setup(
    change: impl Fn(&mut Vec<(u8, [u8; 48])>, &mut Vec<(u8, [u8; 48])>),
) -> Result<(FakeGpuAttester, GpuVerifier)> {
    let values = measurements();
    let signer = FakeRimSigner::new()?;
    // RIM index i compares block i + 1, which the fake fills with values[i].
    let mut driver: Vec<(u8, [u8; 48])> = (1u8..10).map(|i| (i, values[usize::from(i)])).collect();
    let mut vbios: Vec<(u8, [u8; 48])> = (20u8..30).map(|i| (i, values[usize::from(i)])).collect();
    change(&mut driver, &mut vbios);
    let fake = FakeGpuAttester::new(2, values)?;
    let rims = vec![
        signer.rim("GH100", fake.driver_version(), &driver)?,
        signer.rim("GH100", "96.00.5E.00.01", &vbios)?,
    ];
    let verifier =
        GpuVerifier::with_test_roots(fake.root_pem().as_bytes(), signer.root_pem().as_bytes())?
            .with_rims(rims)?;
    Ok((fake, verifier))
}

#[test]
fn a_fake_report_with_matching_rims_verifies() -> Result<()> {
    let (fake, verifier) = fake_setup(|_, _| {})?;
    let nonce = [9u8; 32];
    let claims = verifier.verify(&fake.evidence(1, &nonce)?, &nonce, RECORDED_AT)?;
    assert_eq!(claims.arch, GpuArch::Hopper);
    assert!(claims.cc_mode);
    assert_eq!(claims.driver_version, "550.144.03");
    assert_eq!(claims.vbios_version, "96.00.5E.00.01");
    assert_eq!(claims.nonce, nonce);
    assert!(claims.vbios_rim_checked);
    assert_eq!(claims.measurements.len(), 19);
    assert!(claims.measurements.iter().all(|m| m.matches));
    assert_eq!(
        claims.rim_ids,
        [
            "NV_GPU_DRIVER_GH100_550.144.03",
            "NV_GPU_VBIOS_1010_0200_882_96005E0001"
        ]
    );
    Ok(())
}

#[test]
fn a_changed_driver_measurement_is_refused() -> Result<()> {
    let (fake, verifier) = fake_setup(|driver, _| driver[3].1[0] ^= 1)?;
    let nonce = [9u8; 32];
    let result = verifier.verify(&fake.evidence(0, &nonce)?, &nonce, RECORDED_AT);
    match result {
        Err(AttestError::GpuMeasurementMismatch { indices }) => assert_eq!(indices, "4"),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn a_changed_vbios_measurement_is_refused() -> Result<()> {
    let (fake, verifier) = fake_setup(|_, vbios| vbios[0].1[47] ^= 1)?;
    let nonce = [9u8; 32];
    let result = verifier.verify(&fake.evidence(0, &nonce)?, &nonce, RECORDED_AT);
    match result {
        Err(AttestError::GpuMeasurementMismatch { indices }) => assert_eq!(indices, "20"),
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn rims_that_overlap_are_refused() -> Result<()> {
    let (fake, verifier) = fake_setup(|driver, vbios| vbios.push(driver[0]))?;
    let nonce = [9u8; 32];
    let result = verifier.verify(&fake.evidence(0, &nonce)?, &nonce, RECORDED_AT);
    assert!(
        matches!(result, Err(AttestError::MalformedEvidence { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn index_35_is_skipped_when_nvdec0_is_disabled() -> Result<()> {
    // The fake reports NVDEC0 disabled; a wrong reference at index 35 is then not compared.
    let (fake, verifier) = fake_setup(|_, vbios| vbios.push((35, [0xEE; 48])))?;
    let nonce = [9u8; 32];
    let claims = verifier.verify(&fake.evidence(0, &nonce)?, &nonce, RECORDED_AT)?;
    assert!(claims.measurements.iter().all(|m| m.index != 35));
    Ok(())
}

#[test]
fn a_missing_vbios_rim_is_reported_not_refused() -> Result<()> {
    let values = measurements();
    let signer = FakeRimSigner::new()?;
    let fake = FakeGpuAttester::new(1, values.clone())?;
    let driver = signer.rim("GH100", fake.driver_version(), &[(1, values[1])])?;
    let verifier =
        GpuVerifier::with_test_roots(fake.root_pem().as_bytes(), signer.root_pem().as_bytes())?;
    let nonce = [5u8; 32];
    let evidence = fake.evidence(0, &nonce)?;
    let evidence = GpuEvidence {
        rims: vec![driver],
        ..evidence
    };
    let claims = verifier.verify(&evidence, &nonce, RECORDED_AT)?;
    assert!(!claims.vbios_rim_checked);
    assert_eq!(claims.rim_ids, ["NV_GPU_DRIVER_GH100_550.144.03"]);
    Ok(())
}

#[test]
fn an_expired_device_certificate_is_refused_and_valid_before() -> Result<()> {
    let fake = FakeGpuAttester::with_validity(1, measurements(), Some((2020, 2024)))?;
    let signer = FakeRimSigner::new()?;
    let rim = signer.rim("GH100", fake.driver_version(), &[(1, measurements()[1])])?;
    let verifier =
        GpuVerifier::with_test_roots(fake.root_pem().as_bytes(), signer.root_pem().as_bytes())?
            .with_rims([rim])?;
    let nonce = [1u8; 32];
    let evidence = fake.evidence(0, &nonce)?;
    let result = verifier.verify(&evidence, &nonce, RECORDED_AT);
    assert!(
        matches!(result, Err(AttestError::CollateralExpired { .. })),
        "{result:?}"
    );
    // 2023-01-01: inside the device certificate's validity.
    verifier.verify(&evidence, &nonce, 1_672_531_200)?;
    Ok(())
}

#[test]
fn a_tampered_fake_rim_is_refused() -> Result<()> {
    let (fake, _) = fake_setup(|_, _| {})?;
    let signer = FakeRimSigner::new()?;
    let rim = signer.rim("GH100", fake.driver_version(), &[(1, [1; 48])])?;
    let text = String::from_utf8_lossy(&rim).replacen("active=\"False\"", "active=\"True\"", 1);
    let result = Rim::verify(
        text.as_bytes(),
        &read_certificates(signer.root_pem().as_bytes())?,
        RECORDED_AT,
    );
    assert!(
        matches!(result, Err(AttestError::BadSignature { .. })),
        "{result:?}"
    );
    Ok(())
}

/// The recorded Hopper report (NVIDIA's chain and signature) against a driver RIM signed under a
/// test root: with the report's own values at the mismatch RIM's active indices it verifies;
/// with the mismatch RIM's values it is refused at those indices.
#[test]
fn the_recorded_hopper_report_against_test_signed_rims() -> Result<()> {
    let report = hex_report(data!("hopperAttestationReport.txt"));
    let parsed = spdm::parse_report(&report)?;
    let mismatch = xml::parse(data!(
        "NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"
    ))?;
    let scope = mismatch.scope(&xml::Scope::new());
    let payload = mismatch
        .elements()
        .find(|e| e.local_name() == "Payload")
        .ok_or_else(|| AttestError::malformed("no Payload"))?;
    let ps = payload.scope(&scope);
    let mut theirs = Vec::new();
    let mut ours = Vec::new();
    for resource in payload.elements() {
        let rs = resource.scope(&ps);
        if resource.attribute(&rs, None, "active") != Some("True") {
            continue;
        }
        let index: u8 = resource
            .attribute(&rs, None, "index")
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let hash = resource
            .attribute(
                &rs,
                Some("http://www.w3.org/2001/04/xmlenc#sha384"),
                "Hash0",
            )
            .unwrap_or_default();
        let mut value = [0u8; 48];
        hex::decode_to_slice(hash, &mut value).map_err(|_| AttestError::malformed("hash"))?;
        theirs.push((index, value));
        let mut actual = [0u8; 48];
        actual.copy_from_slice(parsed.measurement(index + 1).unwrap_or(&[0; 48]));
        ours.push((index, actual));
    }
    assert!(theirs.len() > 5);
    let signer = FakeRimSigner::new()?;
    let verifier = |rim: Vec<u8>| {
        GpuVerifier::with_test_roots(
            NVIDIA_DEVICE_ROOT_PEM.as_bytes(),
            signer.root_pem().as_bytes(),
        )
        .and_then(|v| v.with_rims([rim]))
    };
    let evidence = GpuEvidence {
        report: report.clone(),
        certificates: data!("hopperCertChain.txt").to_vec(),
        rims: Vec::new(),
    };
    let claims = verifier(signer.rim("GH100", "535.86.09", &ours)?)?.verify(
        &evidence,
        &nonce_of(&report),
        RECORDED_AT,
    )?;
    assert_eq!(claims.driver_version, "535.86.09");
    assert_eq!(claims.vbios_version, "96.00.5E.00.01");
    assert!(claims.measurements.iter().all(|m| m.matches));

    let result = verifier(signer.rim("GH100", "535.86.09", &theirs)?)?.verify(
        &evidence,
        &nonce_of(&report),
        RECORDED_AT,
    );
    assert!(
        matches!(result, Err(AttestError::GpuMeasurementMismatch { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn rims_are_read_from_a_directory() -> Result<()> {
    let values = measurements();
    let signer = FakeRimSigner::new()?;
    let fake = FakeGpuAttester::new(1, values.clone())?;
    let dir = tempfile::tempdir().map_err(|e| AttestError::io("tempdir", e))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.path().join(name), bytes).map_err(|e| AttestError::io(name, e))
    };
    write(
        "driver.xml",
        &signer.rim("GH100", fake.driver_version(), &[(1, values[1])])?,
    )?;
    write(
        "vbios.swidtag",
        &signer.rim("GH100", "96.00.5E.00.01", &[(20, values[20])])?,
    )?;
    write("notes.txt", b"not a RIM")?;
    let verifier =
        GpuVerifier::with_test_roots(fake.root_pem().as_bytes(), signer.root_pem().as_bytes())?
            .with_rim_dir(dir.path())?;
    let nonce = [4u8; 32];
    let claims = verifier.verify(&fake.evidence(0, &nonce)?, &nonce, RECORDED_AT)?;
    assert!(claims.vbios_rim_checked);
    assert_eq!(claims.measurements.len(), 2);
    // A directory that does not exist is an error, not an empty set.
    assert!(GpuVerifier::new()?
        .with_rim_dir(&dir.path().join("missing"))
        .is_err());
    Ok(())
}

/// The recorded Blackwell report, fully verified against a driver RIM of its own non-zero
/// measurements signed under a test root (no recorded RIM matches driver 575.32).
#[test]
fn the_recorded_blackwell_report_verifies_against_a_test_signed_rim() -> Result<()> {
    let report = hex_report(data!("blackwellAttestationReport.txt"));
    let parsed = spdm::parse_report(&report)?;
    let own: Vec<(u8, [u8; 48])> = (0u8..63)
        .filter_map(|i| {
            let value: [u8; 48] = parsed.measurement(i + 1)?.try_into().ok()?;
            (value != [0; 48]).then_some((i, value))
        })
        .collect();
    assert!(!own.is_empty());
    let signer = FakeRimSigner::new()?;
    let verifier = GpuVerifier::with_test_roots(
        NVIDIA_DEVICE_ROOT_PEM.as_bytes(),
        signer.root_pem().as_bytes(),
    )?
    .with_rims([signer.rim("GB100", "575.32", &own)?])?;
    let evidence = GpuEvidence {
        report: report.clone(),
        certificates: data!("blackwellCertChain.txt").to_vec(),
        rims: Vec::new(),
    };
    let claims = verifier.verify(&evidence, &nonce_of(&report), RECORDED_AT)?;
    assert_eq!(claims.arch, GpuArch::Blackwell);
    assert_eq!(claims.product, "GB100");
    assert_eq!(claims.driver_version, "575.32");
    assert_eq!(claims.vbios_version, "97.00.88.00.0F");
    // This GPU reports NVDEC0 disabled, so index 35 is not compared.
    assert!(own.iter().any(|(i, _)| *i == 35));
    assert_eq!(claims.measurements.len(), own.len() - 1);
    assert!(claims
        .measurements
        .iter()
        .all(|m| m.index != 35 && m.matches));
    Ok(())
}
