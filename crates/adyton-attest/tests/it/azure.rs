//! Azure confidential VMs: recorded HCL reports (SEV-SNP and TDX) and a recorded vTPM quote from
//! `az-cvm-vtpm`'s test data (`testdata/azure-vtpm/`), verified at a fixed date, and every check
//! shown to fail when it should.
//!
//! The samples come from different VMs, so no recorded evidence passes the whole verifier:
//! - the quote was signed by an attestation key (`akpub.pem`) that is neither HCL report's
//!   `HCLAkPub`; it verifies for real under `akpub.pem`;
//! - the VCEK in `certs.pem` chains to AMD's Milan ARK but is another chip's than the recorded
//!   SNP report's, so that report's signature cannot be checked; the SNP checks of the Azure
//!   verifier run for real on `testdata/snp/`'s Milan report, set into the HCL report;
//! - no TD quote of the recorded TD report was recorded;
//! - both HCL reports' runtime data bindings verify for real.
//!
//! The accepting path end to end runs in the verifier's unit tests, over a fake vTPM.

use std::collections::BTreeMap;

use adyton_attest::collateral::SnpCollateral;
use adyton_attest::verifier::azure::{
    self, AzureEvidence, AzureVerifier, HardwareReportType, HclReport, RsaKey, TdReportFields,
    TpmQuote,
};
use adyton_attest::verifier::snp::SnpVerifier;
use adyton_attest::verifier::{self, Verifier};
use adyton_attest::{AttestError, Collateral, Evidence, Policy, TeeKind};
use x509_cert::der::{Decode, DecodePem, Encode, Reader, SliceReader};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");

/// 2023-11-14T22:13:20Z, inside the validity of the VCEK in `certs.pem`
/// (`testdata/azure-vtpm/README.md`).
const NOW: u64 = 1_700_000_000;
/// Inside the validity of `testdata/dcap/tdx_quote`'s collateral.
const DCAP_NOW: u64 = 1_751_328_000;

const SNP_MEASUREMENT: &str = "5a71e4ba7e0b83e44c8e853130a65557db0a7782cdb2d906c54b0bf587820280\
                               5ab159bfe0cf7d5749aa6f62b7094508";
const TDX_MRTD: &str = "75f3acc2e1dfc3acf404d7eaa69a2eefcd0475a0dd6516ef5ba3cb83399c61b4\
                        aa1c638e3622bb650a514bfc6e858886";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

/// `quote.bin` is `az-cvm-vtpm`'s `Quote` serialised with bincode: the signature, the message
/// and the PCR values, each a little-endian `u64` length then the items.
fn recorded_quote() -> TpmQuote {
    let bytes = read("azure-vtpm/quote.bin");
    let mut at = 0usize;
    let mut len = || {
        let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        n
    };
    let signature_len = len();
    let signature = bytes[at..at + signature_len].to_vec();
    at += signature_len;
    let mut len = || {
        let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        n
    };
    let message_len = len();
    let message = bytes[at..at + message_len].to_vec();
    at += message_len;
    let pcr_count = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    at += 8;
    let pcrs: BTreeMap<u8, [u8; 32]> = (0..pcr_count)
        .map(|i| {
            let start = at + 32 * i;
            (i as u8, bytes[start..start + 32].try_into().unwrap())
        })
        .collect();
    assert_eq!(at + 32 * pcr_count, bytes.len());
    TpmQuote {
        message,
        signature,
        pcrs,
    }
}

/// The attestation key of `akpub.pem` (`tpm2_readpublic -c 0x81000003`).
fn recorded_ak() -> RsaKey {
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_pem(read("azure-vtpm/akpub.pem")).unwrap();
    let rsa = spki.subject_public_key.raw_bytes();
    let mut reader = SliceReader::new(rsa).unwrap();
    let (n, e) = reader
        .sequence(|r| {
            let n = x509_cert::der::asn1::UintRef::decode(r)?;
            let e = x509_cert::der::asn1::UintRef::decode(r)?;
            Ok::<_, x509_cert::der::Error>((n.as_bytes().to_vec(), e.as_bytes().to_vec()))
        })
        .unwrap();
    RsaKey { n, e }
}

fn snp_hcl() -> Vec<u8> {
    read("azure-vtpm/hcl-report-snp.bin")
}

fn tdx_hcl() -> Vec<u8> {
    read("azure-vtpm/hcl-report-tdx.bin")
}

fn azure_evidence(tee: TeeKind, hcl: Vec<u8>, td_quote: Option<Vec<u8>>) -> Evidence {
    let container = AzureEvidence {
        format: azure::FORMAT.into(),
        hcl_report: hcl,
        report_data: [0; 64],
        tpm_quote: recorded_quote(),
        td_quote,
    };
    Evidence {
        tee,
        quote: container.to_json(),
        certificates: (tee == TeeKind::AzureSnp).then(|| read("azure-vtpm/certs.pem")),
        gpus: Vec::new(),
    }
}

fn vcek_der() -> Vec<u8> {
    let chain = x509_cert::Certificate::load_pem_chain(&read("azure-vtpm/certs.pem")).unwrap();
    chain[0].to_der().unwrap()
}

#[test]
fn recorded_hcl_reports_parse_and_bind_their_runtime_data() {
    for (bytes, kind) in [
        (snp_hcl(), HardwareReportType::Snp),
        (tdx_hcl(), HardwareReportType::Tdx),
    ] {
        let hcl = HclReport::parse(&bytes).unwrap();
        assert_eq!(hcl.report_type, kind);
        // SHA-256 in the first 32 bytes, the rest zero.
        let hash = hcl.runtime_data_hash();
        assert_eq!(hash[32..], [0; 32]);
        assert_eq!(hcl.hardware_report_data(), hash);
        azure::check_runtime_data(&hcl, &hcl.hardware_report_data()).unwrap();
        let ak = hcl.attestation_key().unwrap();
        assert_eq!((ak.n.len(), ak.e.as_slice()), (256, &[1u8, 0, 1][..]));

        // One flipped byte of the runtime data breaks the binding.
        let mut tampered = bytes.clone();
        let last = 1236 + hcl.runtime_data.len() - 2;
        tampered[last] ^= 1;
        let hcl = HclReport::parse(&tampered).unwrap();
        assert!(matches!(
            azure::check_runtime_data(&hcl, &hcl.hardware_report_data()),
            Err(AttestError::RuntimeDataMismatch { .. })
        ));
    }
    // `var-data.bin` is the runtime data of neither recorded report.
    let var_data = read("azure-vtpm/var-data.bin");
    for bytes in [snp_hcl(), tdx_hcl()] {
        assert_ne!(
            HclReport::parse(&bytes).unwrap().runtime_data,
            &var_data[..]
        );
    }
    let td = TdReportFields::parse(HclReport::parse(&tdx_hcl()).unwrap().hardware_report).unwrap();
    assert_eq!(hex::encode(td.mrtd), TDX_MRTD);
    assert_eq!(td.td_attributes, 0);
}

#[test]
fn recorded_quote_verifies_under_its_attestation_key() {
    let quote = recorded_quote();
    let verified = azure::verify_tpm_quote(&quote, &recorded_ak()).unwrap();
    assert_eq!(verified.nonce, b"challenge");
    assert_eq!(verified.pcrs.len(), 24);
    assert_eq!(verified.pcrs[&17], [0xff; 32]);

    let refused = |quote: &TpmQuote, ak: &RsaKey| azure::verify_tpm_quote(quote, ak).unwrap_err();
    // A flipped byte in the message: in the nonce, in the PCR digest.
    for at in [0x2f, quote.message.len() - 1] {
        let mut flipped = quote.clone();
        flipped.message[at] ^= 1;
        assert!(matches!(
            refused(&flipped, &recorded_ak()),
            AttestError::BadSignature { .. }
        ));
    }
    // A flipped byte in the signature.
    let mut flipped = quote.clone();
    flipped.signature[100] ^= 1;
    assert!(matches!(
        refused(&flipped, &recorded_ak()),
        AttestError::BadSignature { .. }
    ));
    // A PCR value changed: the digest no longer matches.
    let mut changed = quote.clone();
    changed.pcrs.insert(4, [0; 32]);
    assert!(matches!(
        refused(&changed, &recorded_ak()),
        AttestError::PcrDigestMismatch { .. }
    ));
    // A PCR value missing.
    let mut missing = quote.clone();
    missing.pcrs.remove(&0);
    assert!(matches!(
        refused(&missing, &recorded_ak()),
        AttestError::MalformedEvidence { .. }
    ));
    // Another attestation key: the one in the recorded SNP HCL report.
    let other = HclReport::parse(&snp_hcl())
        .unwrap()
        .attestation_key()
        .unwrap();
    assert!(matches!(
        refused(&quote, &other),
        AttestError::BadSignature { .. }
    ));
}

/// The recorded quote with a recorded HCL report: its key is not the HCL report's AK, and its
/// nonce is not the SHA-256 of any report data.
#[test]
fn recorded_quote_is_refused_with_another_vms_hcl_report() {
    let bytes = tdx_hcl();
    let ak = HclReport::parse(&bytes).unwrap().attestation_key().unwrap();
    assert!(matches!(
        azure::verify_tpm_quote(&recorded_quote(), &ak),
        Err(AttestError::BadSignature { .. })
    ));
    // Under its own key the nonce is "challenge", not the SHA-256 of 64 bytes of report data.
    let verified = azure::verify_tpm_quote(&recorded_quote(), &recorded_ak()).unwrap();
    assert_ne!(verified.nonce, azure::quote_nonce(&[0; 64]));
}

#[test]
fn recorded_vcek_chain_is_amds_but_not_the_recorded_reports_chip() {
    // The chain in certs.pem verifies to AMD's built-in Milan ARK.
    let chain = x509_cert::Certificate::load_pem_chain(&read("azure-vtpm/certs.pem")).unwrap();
    let der = |i: usize| chain[i].to_der().unwrap();
    let sev_cert = |bytes: Vec<u8>| sev::certs::snp::Certificate::from_der(&bytes).unwrap();
    let full = sev::certs::snp::Chain {
        ca: sev::certs::snp::ca::Chain {
            ark: sev::certs::snp::builtin::milan::ark().unwrap(),
            ask: sev_cert(der(1)),
        },
        vek: sev_cert(der(0)),
    };
    use sev::certs::snp::Verifiable;
    (&full).verify().unwrap();
    assert_eq!(
        der(2),
        sev::certs::snp::builtin::milan::ark()
            .unwrap()
            .to_der()
            .unwrap()
    );

    // But its VCEK is another chip's: the recorded SNP report's signature does not verify
    // under it, and no VCEK of that chip was recorded.
    let bytes = snp_hcl();
    let hcl = HclReport::parse(&bytes).unwrap();
    let evidence = Evidence {
        tee: TeeKind::Snp,
        quote: hcl.hardware_report.to_vec(),
        certificates: None,
        gpus: Vec::new(),
    };
    assert!(matches!(
        SnpVerifier::new().verify(&evidence, &vcek_collateral(der(0)), NOW),
        Err(AttestError::BadSignature { .. })
    ));
    match verifier::verify(
        &azure_evidence(TeeKind::AzureSnp, snp_hcl(), None),
        &Collateral::none(),
        NOW,
    ) {
        Err(AttestError::BadSignature { what }) => {
            assert!(what.contains("SNP attestation report"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

fn vcek_collateral(vcek: Vec<u8>) -> Collateral {
    Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: None,
            vcek: Some(vcek),
        }),
    }
}

/// 2025-01-01T00:00:00Z, inside the validity of `testdata/snp/vcek_milan.der`.
const MILAN_NOW: u64 = 1_735_689_600;
/// That VCEK's notAfter, 2030-04-03T19:23:43Z.
const MILAN_VCEK_NOT_AFTER: u64 = 1_901_474_623;

/// The recorded SNP HCL report with its SNP report replaced by the real Milan report of
/// `testdata/snp/`, whose VCEK we have: the SNP checks run on real signatures through the Azure
/// verifier, and the runtime data binding then fails, as it must, because that report's report
/// data is not the hash of this runtime data.
fn hcl_around_milan_report() -> Vec<u8> {
    let text = String::from_utf8(read("snp/report_milan.hex")).unwrap();
    let report = hex::decode(text.trim()).unwrap();
    let mut hcl = snp_hcl();
    hcl[32..32 + 1184].copy_from_slice(&report);
    hcl
}

#[test]
fn azure_snp_verifies_the_snp_report_for_real_then_the_runtime_data() {
    let verify = |hcl: Vec<u8>, collateral: &Collateral, now: u64| {
        let evidence = Evidence {
            certificates: None,
            ..azure_evidence(TeeKind::AzureSnp, hcl, None)
        };
        AzureVerifier::snp()
            .verify(&evidence, collateral, now)
            .unwrap_err()
    };
    let milan = vcek_collateral(read("snp/vcek_milan.der"));
    // The real report and VCEK pass; the binding to this runtime data does not.
    assert!(matches!(
        verify(hcl_around_milan_report(), &milan, MILAN_NOW),
        AttestError::RuntimeDataMismatch { .. }
    ));
    // A flipped byte in the SNP report's measurement.
    let mut hcl = hcl_around_milan_report();
    hcl[32 + 0x90] ^= 1;
    assert!(matches!(
        verify(hcl, &milan, MILAN_NOW),
        AttestError::BadSignature { .. }
    ));
    // After the VCEK expired.
    assert!(matches!(
        verify(hcl_around_milan_report(), &milan, MILAN_VCEK_NOT_AFTER + 1),
        AttestError::CollateralExpired { .. }
    ));
    // Another chip's VCEK (the Azure sample's).
    assert!(matches!(
        verify(
            hcl_around_milan_report(),
            &vcek_collateral(vcek_der()),
            MILAN_NOW
        ),
        AttestError::BadSignature { .. } | AttestError::VerificationFailed { .. }
    ));
    // A wrong chain in the evidence: the right VCEK under AMD's Turin ASK and ARK.
    let vcek_pem = x509_cert::der::pem::encode_string(
        "CERTIFICATE",
        x509_cert::der::pem::LineEnding::LF,
        &read("snp/vcek_milan.der"),
    )
    .unwrap();
    let mut pem = vcek_pem.clone().into_bytes();
    pem.extend_from_slice(&read("snp/cert_chain_turin"));
    let evidence = Evidence {
        certificates: Some(pem),
        ..azure_evidence(TeeKind::AzureSnp, hcl_around_milan_report(), None)
    };
    assert!(matches!(
        AzureVerifier::snp().verify(&evidence, &Collateral::none(), MILAN_NOW),
        Err(AttestError::CertificateChain { .. })
    ));
    // The right VCEK alone in the evidence's PEM gets as far as the runtime data.
    let evidence = Evidence {
        certificates: Some(vcek_pem.into_bytes()),
        ..evidence
    };
    assert!(matches!(
        AzureVerifier::snp().verify(&evidence, &Collateral::none(), MILAN_NOW),
        Err(AttestError::RuntimeDataMismatch { .. })
    ));
    // The evidence's chain is not PEM.
    let garbage = Evidence {
        certificates: Some(b"not a certificate".to_vec()),
        ..evidence
    };
    assert!(matches!(
        AzureVerifier::snp().verify(&garbage, &Collateral::none(), MILAN_NOW),
        Err(AttestError::MalformedEvidence { .. })
    ));
    // Without any VCEK the hardware check cannot start.
    assert!(matches!(
        verify(hcl_around_milan_report(), &Collateral::none(), MILAN_NOW),
        AttestError::CollateralMissing { .. }
    ));
    // A TDX HCL report as AZURE-SNP evidence, and SNP as AZURE-TDX.
    assert!(matches!(
        verify(tdx_hcl(), &milan, MILAN_NOW),
        AttestError::MalformedEvidence { .. }
    ));
    assert!(matches!(
        AzureVerifier::tdx()
            .verify(
                &azure_evidence(TeeKind::AzureTdx, snp_hcl(), None),
                &Collateral::none(),
                NOW
            )
            .unwrap_err(),
        AttestError::MalformedEvidence { .. }
    ));
}

#[test]
fn recorded_tdx_hcl_report_needs_its_own_td_quote() {
    // Without a TD quote the TD report cannot be verified off the machine.
    let evidence = azure_evidence(TeeKind::AzureTdx, tdx_hcl(), None);
    assert!(matches!(
        verifier::verify(&evidence, &Collateral::none(), NOW),
        Err(AttestError::MalformedEvidence { .. })
    ));
    // A real TD quote (dcap-qvl's sample) verifies through DCAP, but it is of another TD.
    let collateral = Collateral::from_dcap_json(&read("dcap/tdx_quote_collateral.json")).unwrap();
    let evidence = azure_evidence(TeeKind::AzureTdx, tdx_hcl(), Some(read("dcap/tdx_quote")));
    match verifier::verify(&evidence, &collateral, DCAP_NOW) {
        Err(AttestError::VerificationFailed { tee, reason }) => {
            assert_eq!(tee, TeeKind::AzureTdx);
            assert!(
                reason.contains("report data") && reason.contains("MRTD"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A flipped byte in the TD quote fails DCAP first.
    let mut quote = read("dcap/tdx_quote");
    quote[48 + 200] ^= 1;
    let evidence = azure_evidence(TeeKind::AzureTdx, tdx_hcl(), Some(quote));
    assert!(verifier::verify(&evidence, &collateral, DCAP_NOW).is_err());
}

#[test]
fn azure_policies_read_from_toml_and_json_and_refuse_unknown_fields() {
    let pcr = "11".repeat(32);
    let toml = format!(
        "[azure_snp]\nmeasurement = [\"{SNP_MEASUREMENT}\"]\nvmpl = [0]\n\
         [azure_snp.min_tcb]\nsnp = 8\n[azure_snp.pcrs]\n4 = [\"{pcr}\"]\n7 = []\n\
         [azure_tdx]\nmrtd = [\"{TDX_MRTD}\"]\n[azure_tdx.pcrs]\n\"11\" = [\"{pcr}\"]\n"
    );
    let from_toml = Policy::from_toml(&toml).unwrap();
    let json = format!(
        r#"{{"azure_snp": {{"measurement": ["{SNP_MEASUREMENT}"], "vmpl": [0],
             "min_tcb": {{"snp": 8}}, "pcrs": {{"4": ["{pcr}"], "7": []}}}},
            "azure_tdx": {{"mrtd": ["{TDX_MRTD}"], "pcrs": {{"11": ["{pcr}"]}}}}}}"#
    );
    assert_eq!(Policy::from_json(&json).unwrap(), from_toml);
    let pins = &from_toml.azure_snp.as_ref().unwrap().pcrs;
    assert_eq!(pins.len(), 2);

    for bad in [
        "[azure_snp]\nmrtd = []\n".to_string(),
        "[azure_snp.pcrs]\n24 = []\n".to_string(),
        "[azure_snp.pcrs]\nfour = []\n".to_string(),
        "[azure_tdx.pcrs]\n4 = [\"abcd\"]\n".to_string(),
        "[azure_tdx]\nmeasurement = []\n".to_string(),
    ] {
        assert!(
            matches!(Policy::from_toml(&bad), Err(AttestError::BadPolicy { .. })),
            "{bad}"
        );
    }
}

#[test]
fn the_collateral_provider_serves_the_hardware_report_inside_azure_evidence() {
    use adyton_attest::provider::CollateralOrigin;
    use adyton_attest::CollateralProvider;

    let bundle = CollateralProvider::from_collateral(
        vcek_collateral(read("snp/vcek_milan.der")),
        "bundle.json",
    );
    assert!(bundle.serves(TeeKind::AzureSnp));
    assert!(!CollateralProvider::none().serves(TeeKind::AzureTdx));
    // Without a chain in the evidence, the bundle's VCEK: the SNP checks pass, the runtime data
    // binding is the refusal.
    let evidence = Evidence {
        certificates: None,
        ..azure_evidence(TeeKind::AzureSnp, hcl_around_milan_report(), None)
    };
    let (collateral, used) = bundle.collateral_for(&evidence, MILAN_NOW).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Bundle);
    assert!(collateral.snp.unwrap().vcek.is_some());
    assert!(matches!(
        bundle.verify(&evidence, MILAN_NOW),
        Err(AttestError::RuntimeDataMismatch { .. })
    ));
    // With a chain in the evidence, that chain: the bundle's VCEK is left out.
    let with_chain = azure_evidence(TeeKind::AzureSnp, hcl_around_milan_report(), None);
    let (collateral, used) = bundle.collateral_for(&with_chain, MILAN_NOW).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Evidence);
    assert!(collateral.snp.unwrap().vcek.is_none());
    // A container that does not parse is refused before any fetch.
    let broken = Evidence {
        quote: b"{}".to_vec(),
        ..evidence
    };
    assert!(matches!(
        bundle.collateral_for(&broken, MILAN_NOW),
        Err(AttestError::MalformedEvidence { .. })
    ));
}
