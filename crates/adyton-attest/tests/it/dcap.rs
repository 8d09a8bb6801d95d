//! DCAP verification (SGX and TDX) on real quotes and collateral recorded on real machines, at
//! fixed dates inside the collateral's validity (`testdata/dcap/README.md`).

use std::path::PathBuf;

use adyton_attest::claims::{SgxClaims, TdxClaims};
use adyton_attest::verifier::dcap::DcapVerifier;
use adyton_attest::verifier::{self, Verifier};
use adyton_attest::{
    AttestError, Claims, Collateral, Evidence, Policy, TcbStatus, TeeClaims, TeeKind,
};

/// A recorded quote, its collateral, and a verification time inside the collateral's validity.
#[derive(Clone, Copy, Debug)]
struct Sample {
    quote: &'static str,
    collateral: &'static str,
    tee: TeeKind,
    /// The fixed verification time.
    now: u64,
    /// The first second the quote verifies: the later issueDate of the TCB info and the QE
    /// identity. (A CRL's thisUpdate is not checked; the certificates are older.)
    valid_from: u64,
    /// The earliest nextUpdate (TCB info, QE identity, CRLs) or notAfter (certificates).
    valid_until: u64,
}

/// SGX quote v3 (report data "Hello, world!"), PCK certificate from the Processor CA.
const SGX: Sample = Sample {
    quote: "sgx_quote",
    collateral: "sgx_quote_collateral.json",
    tee: TeeKind::Sgx,
    now: 1_751_328_000,         // 2025-07-01T00:00:00Z
    valid_from: 1_750_330_571,  // 2025-06-19T10:56:11Z, TCB info issueDate
    valid_until: 1_752_919_278, // 2025-07-19T10:01:18Z, QE identity nextUpdate
};

/// TDX quote v4 with a TD 1.0 report.
const TDX: Sample = Sample {
    quote: "tdx_quote",
    collateral: "tdx_quote_collateral.json",
    tee: TeeKind::Tdx,
    now: 1_751_328_000,         // 2025-07-01T00:00:00Z
    valid_from: 1_750_329_147,  // 2025-06-19T10:32:27Z, QE identity issueDate
    valid_until: 1_752_919_235, // 2025-07-19T10:00:35Z, PCK CRL nextUpdate
};

/// TDX quote v5 with a TD 1.5ex report (body type 4); its collateral carries the PCK chain.
const TD15EX: Sample = Sample {
    quote: "tdx_quote_td15ex",
    collateral: "tdx_quote_td15ex_collateral.json",
    tee: TeeKind::Tdx,
    now: 1_792_454_400,         // 2026-10-20T00:00:00Z
    valid_from: 1_791_418_186,  // 2026-10-08T00:09:46Z, TCB info issueDate
    valid_until: 1_794_008_711, // 2026-11-06T23:45:11Z, QE identity nextUpdate
};

/// TDX quote v5 with a TD 1.5 report from a platform whose TCB is below every level of its
/// TCB info.
const OUTDATED: Sample = Sample {
    quote: "tdx_quote_outdated",
    collateral: "tdx_quote_outdated_collateral.json",
    tee: TeeKind::Tdx,
    now: 1_772_323_200,         // 2026-03-01T00:00:00Z
    valid_from: 1_771_412_331,  // 2026-02-18T10:58:51Z, TCB info issueDate
    valid_until: 1_774_003_275, // 2026-03-20T10:41:15Z, PCK CRL nextUpdate
};

/// The samples that verify.
const VERIFIED: [Sample; 3] = [SGX, TDX, TD15EX];

fn testdata(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/dcap")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Sample {
    fn quote(self) -> Vec<u8> {
        testdata(self.quote)
    }

    fn evidence(self) -> Evidence {
        self.evidence_with(self.quote())
    }

    fn evidence_with(self, quote: Vec<u8>) -> Evidence {
        Evidence {
            tee: self.tee,
            quote,
            certificates: None,
            gpus: Vec::new(),
        }
    }

    fn collateral(self) -> Collateral {
        Collateral::from_dcap_json(&testdata(self.collateral)).unwrap()
    }

    fn verify(self) -> Result<Claims, AttestError> {
        verifier::verify(&self.evidence(), &self.collateral(), self.now)
    }

    fn verify_quote(self, quote: Vec<u8>) -> Result<Claims, AttestError> {
        verifier::verify(&self.evidence_with(quote), &self.collateral(), self.now)
    }
}

/// Offsets in a DCAP quote (Intel's `sgx_quote_3.h`, `sgx_quote_4.h`, `sgx_quote_5.h`).
struct Layout {
    /// Where the report body starts: after the 48-byte header, and for v5 the 6-byte body
    /// descriptor.
    body: usize,
    /// Where the signed part ends and the 4-byte auth data length starts.
    signed_end: usize,
    /// Where the report data sits.
    report_data: usize,
    /// Where the auth data ends.
    auth_end: usize,
    /// Where the QE report starts.
    qe_report: usize,
}

impl Layout {
    fn of(quote: &[u8]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([quote[at], quote[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(quote[at..at + 4].try_into().unwrap());
        let version = u16_at(0);
        let sgx = u32_at(4) == 0;
        let (body, body_len) = match version {
            5 => (54, u32_at(50) as usize),
            _ if sgx => (48, 384),
            _ => (48, 584),
        };
        // REPORT_DATA is at 320 in an SGX report body and at 520 in every TD report.
        let report_data = body + if sgx { 320 } else { 520 };
        let signed_end = body + body_len;
        let auth = signed_end + 4;
        // v3 auth data: signature, attestation key, QE report. v4 and v5 put the QE report in a
        // certification data entry of type 6, after its 2-byte type and 4-byte size.
        let qe_report = auth + 128 + if version == 3 { 0 } else { 6 };
        Layout {
            body,
            signed_end,
            report_data,
            auth_end: auth + u32_at(signed_end) as usize,
            qe_report,
        }
    }
}

fn flipped(mut quote: Vec<u8>, offset: usize) -> Vec<u8> {
    quote[offset] ^= 0x01;
    quote
}

fn tdx_claims(claims: &Claims) -> &TdxClaims {
    match &claims.details {
        TeeClaims::Tdx(tdx) => tdx,
        other => panic!("expected TDX claims, got {other:?}"),
    }
}

fn sgx_claims(claims: &Claims) -> &SgxClaims {
    match &claims.details {
        TeeClaims::Sgx(sgx) => sgx,
        other => panic!("expected SGX claims, got {other:?}"),
    }
}

fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap()
}

// Positive: each sample verifies at its fixed time, with the values it was recorded with.

#[test]
fn sgx_v3_sample_verifies_with_its_measurements() {
    let claims = SGX.verify().unwrap();
    assert_eq!(claims.tee, TeeKind::Sgx);
    assert!(!claims.insecure);
    assert!(!claims.debug);
    let mut report_data = [0u8; 64];
    report_data[..13].copy_from_slice(b"Hello, world!");
    assert_eq!(claims.report_data, report_data);
    // The platform is patched but needs configuration changes and software mitigations; dcap-qvl
    // does not refuse that, the policy decides.
    assert_eq!(
        claims.tcb_status,
        TcbStatus::ConfigurationAndSWHardeningNeeded
    );
    assert_eq!(claims.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    let sgx = sgx_claims(&claims);
    assert_eq!(
        hex::encode(sgx.mrenclave),
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        hex::encode(sgx.mrsigner),
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!((sgx.isvprodid, sgx.isvsvn), (0, 0));
    assert_eq!(claims.primary_measurement(), hex::encode(sgx.mrenclave));
    // Expiry: the QE identity's nextUpdate, the earliest of all collateral dates. Issue: the
    // QE identity's issueDate, the earlier of the TCB info and QE identity issueDates.
    assert_eq!(claims.collateral_expires_at, Some(SGX.valid_until));
    assert_eq!(claims.collateral_issued_at, Some(1_750_327_278)); // 2025-06-19T10:01:18Z
}

#[test]
fn tdx_v4_sample_verifies_with_its_measurements() {
    let claims = TDX.verify().unwrap();
    assert_eq!(claims.tee, TeeKind::Tdx);
    assert!(!claims.insecure);
    assert!(!claims.debug);
    assert_eq!(claims.tcb_status, TcbStatus::UpToDate);
    assert!(claims.advisory_ids.is_empty());
    assert_eq!(
        hex::encode(claims.report_data),
        "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9\
         eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
    );
    let tdx = tdx_claims(&claims);
    assert_eq!(
        hex::encode(tdx.mrtd),
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407\
         de03ae6dc5f87f27428b2538873118b7"
    );
    assert_eq!(
        tdx.rtmr.map(hex::encode),
        [
            "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c\
             48aca29b220b80b6a540cf994b9bc9c0",
            "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7\
             aea8c323c173019b3093d54e579e9378",
            "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3\
             ba80b70870d7330733642e01d48c3132",
            "00".repeat(48).as_str(),
        ]
    );
    assert_eq!(
        hex::encode(tdx.mrseam),
        "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c43\
         6489d6c8e4f92f160b7cad34207b00c1"
    );
    // TEE_TCB_SVN starts 06 01: TDX module 1.x, SVN 6.
    assert_eq!(tdx.seamsvn, 0x0106);
    // Only SEPT_VE_DISABLE (bit 28); DEBUG (bit 0) is clear.
    assert_eq!(tdx.td_attributes, 1 << 28);
    // Expiry: the PCK CRL's nextUpdate, 15 minutes before the TCB info's.
    assert_eq!(claims.collateral_expires_at, Some(TDX.valid_until));
    assert_eq!(claims.collateral_issued_at, Some(1_750_328_163)); // 2025-06-19T10:16:03Z
}

#[test]
fn tdx_v5_td15ex_sample_verifies_with_its_measurements() {
    let quote = TD15EX.quote();
    // Quote v5, body type 4 (TD 1.5ex report) of 885 bytes.
    assert_eq!(&quote[..2], &[5, 0]);
    assert_eq!(&quote[48..54], &[4, 0, 0x75, 0x03, 0, 0]);
    let claims = TD15EX.verify().unwrap();
    assert_eq!(claims.tee, TeeKind::Tdx);
    assert!(!claims.debug);
    assert_eq!(claims.tcb_status, TcbStatus::UpToDate);
    assert!(claims.advisory_ids.is_empty());
    let tdx = tdx_claims(&claims);
    assert_eq!(
        hex::encode(tdx.mrtd),
        "2a674327c50218dba880066b349b8d559d749ed68dce33fd651c184a877d084b\
         07a9e583767a7ad5da13ed91deec2b70"
    );
    assert_eq!(
        hex::encode(tdx.rtmr[3]),
        "556d4986cae57e7e3756b6471e4951be6f5f1b4e70942c72325223d6af239da9\
         0f1484eeb627727e6d2c0755393b5fdf"
    );
    assert_eq!(
        hex::encode(tdx.mrseam),
        "ab62561a173acbd18ee50ff37750db44184c6cf5e886df74247cc575e163b04c\
         34b9e18374757c235affa614d4127f6b"
    );
    // TEE_TCB_SVN starts 0f 01: TDX module 1.x, SVN 15.
    assert_eq!(tdx.seamsvn, 0x010F);
    assert_eq!(tdx.td_attributes, 1 << 28);
    assert_eq!(claims.collateral_expires_at, Some(TD15EX.valid_until));
    assert_eq!(claims.collateral_issued_at, Some(1_791_416_711)); // 2026-10-07T23:45:11Z
}

/// Where MRCONFIGID, MROWNER and MROWNERCONFIG sit in a TD report body (Intel TDX DCAP Quoting
/// Library API, "TD Quote Body": after TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, SEAMATTRIBUTES,
/// TDATTRIBUTES, XFAM and MRTD), each 48 bytes.
const TD_MRCONFIGID: usize = 184;
const TD_MROWNER: usize = 232;
const TD_MROWNERCONFIG: usize = 280;

#[test]
fn tdx_mrconfigid_mrowner_and_mrownerconfig_are_the_quotes() {
    for (sample, mrconfigid) in [
        // The TD 1.0 sample's host set no MRCONFIGID.
        (TDX, "00".repeat(48)),
        // The TD 1.5ex sample's host did: a type byte 01 and a SHA-256, zero-padded.
        (
            TD15EX,
            "0151ed70bddb5f12574176b37e3f53bbfc4ba15c33cbddc2d03d90b6de14596c\
             c0000000000000000000000000000000"
                .to_owned(),
        ),
    ] {
        let quote = sample.quote();
        let body = Layout::of(&quote).body;
        let at = |offset: usize| hex::encode(&quote[body + offset..body + offset + 48]);
        let claims = sample.verify().unwrap();
        let tdx = tdx_claims(&claims);
        println!(
            "{}: mrconfigid {}, mrowner {}, mrownerconfig {}",
            sample.quote,
            hex::encode(tdx.mrconfigid),
            hex::encode(tdx.mrowner),
            hex::encode(tdx.mrownerconfig)
        );
        assert_eq!(hex::encode(tdx.mrconfigid), mrconfigid);
        assert_eq!(hex::encode(tdx.mrconfigid), at(TD_MRCONFIGID));
        assert_eq!(hex::encode(tdx.mrowner), at(TD_MROWNER));
        assert_eq!(hex::encode(tdx.mrownerconfig), at(TD_MROWNERCONFIG));
        assert_eq!(hex::encode(tdx.mrowner), "00".repeat(48));
        assert_eq!(hex::encode(tdx.mrownerconfig), "00".repeat(48));
        // The same offsets find MRTD's neighbour: the layout is the one the claims come from.
        assert_eq!(hex::encode(tdx.mrtd), at(TD_MRCONFIGID - 48));

        // Each is signed: one flipped bit breaks the quote's signature.
        for offset in [TD_MRCONFIGID, TD_MROWNER, TD_MROWNERCONFIG] {
            assert!(
                matches!(
                    sample.verify_quote(flipped(quote.clone(), body + offset)),
                    Err(AttestError::BadSignature { .. })
                ),
                "{} byte {offset}",
                sample.quote
            );
        }

        // A policy pinning the sample's values accepts it; one pinning another refuses it,
        // naming the field and both values.
        let pinned = format!(
            "[tdx]\nmrconfigid = [\"{}\"]\nmrowner = [\"{}\"]\nmrownerconfig = [\"{}\"]\n",
            hex::encode(tdx.mrconfigid),
            hex::encode(tdx.mrowner),
            hex::encode(tdx.mrownerconfig)
        );
        policy(&pinned).evaluate(&claims, sample.now).unwrap();
        let other = "ab".repeat(48);
        for (field, found) in [
            ("mrconfigid", tdx.mrconfigid),
            ("mrowner", tdx.mrowner),
            ("mrownerconfig", tdx.mrownerconfig),
        ] {
            let toml = format!("[tdx]\n{field} = [\"{other}\"]\n");
            match policy(&toml).evaluate(&claims, sample.now) {
                Err(AttestError::PolicyDenied {
                    field: denied,
                    expected,
                    found: shown,
                }) => {
                    assert_eq!(denied, format!("tdx.{field}"));
                    assert!(expected.contains(&other), "{expected}");
                    assert_eq!(shown, hex::encode(found));
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}

#[test]
fn report_data_in_the_claims_is_the_quotes() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        let claims = sample.verify().unwrap();
        assert_eq!(
            &claims.report_data[..],
            &quote[layout.report_data..layout.report_data + 64],
            "{}",
            sample.quote
        );
    }
}

#[test]
fn outdated_tdx_sample_is_refused_for_want_of_a_tcb_level() {
    // Its PCK certificate's CPUSVN has 3 in component 8; every TCB level of its TCB info asks for
    // 5 or more, so no level matches. dcap-qvl (like Intel's QVL, "TCB not supported") refuses
    // such a quote instead of reporting OutOfDate.
    match OUTDATED.verify() {
        Err(AttestError::VerificationFailed { tee, reason }) => {
            assert_eq!(tee, TeeKind::Tdx);
            assert!(reason.contains("No matching TCB level"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn verification_time_must_lie_inside_the_collateral_validity() {
    for sample in VERIFIED {
        let evidence = sample.evidence();
        let collateral = sample.collateral();
        assert!(sample.valid_from < sample.now && sample.now < sample.valid_until);
        // A CRL is valid until just before its nextUpdate, a TCB info or QE identity until its
        // nextUpdate inclusive; `valid_until - 1` is inside both.
        for inside in [sample.valid_from, sample.valid_until - 1] {
            verifier::verify(&evidence, &collateral, inside)
                .unwrap_or_else(|e| panic!("{} at {inside}: {e}", sample.quote));
        }
        for outside in [
            sample.valid_from - 1,
            sample.valid_until + 1,
            sample.valid_until + 400 * 86_400,
            0,
        ] {
            let result = verifier::verify(&evidence, &collateral, outside);
            assert!(
                matches!(result, Err(AttestError::CollateralExpired { .. })),
                "{} at {outside}: {result:?}",
                sample.quote
            );
        }
    }
}

// Negative: tampering, wrong TEE, policy, truncation, random bytes, missing collateral.

#[test]
fn flipped_report_data_byte_breaks_the_quote_signature() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        for offset in [layout.report_data, layout.report_data + 63] {
            match sample.verify_quote(flipped(quote.clone(), offset)) {
                Err(AttestError::BadSignature { what }) => {
                    assert!(what.contains("ISV enclave report signature"), "{what}");
                }
                other => panic!("{} byte {offset}: {other:?}", sample.quote),
            }
        }
    }
}

#[test]
fn flipped_measurement_or_header_byte_breaks_the_quote_signature() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        // A header byte the parser does not check (QE SVN), and the first measurement byte:
        // MRENCLAVE at 64 in an SGX body, MRTD at 136 in a TD body.
        let measurement = layout.body + if sample.tee == TeeKind::Sgx { 64 } else { 136 };
        for offset in [8, measurement] {
            assert!(
                matches!(
                    sample.verify_quote(flipped(quote.clone(), offset)),
                    Err(AttestError::BadSignature { .. })
                ),
                "{} byte {offset}",
                sample.quote
            );
        }
    }
}

#[test]
fn altered_attestation_and_qe_signatures_are_bad_signatures() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        let quote_signature = layout.signed_end + 4;
        let qe_report_signature = layout.qe_report + 384;
        for (offset, what) in [
            (quote_signature, "ISV enclave report signature"),
            (quote_signature + 63, "ISV enclave report signature"),
            (qe_report_signature, "qe_report"),
            (qe_report_signature + 63, "qe_report"),
        ] {
            match sample.verify_quote(flipped(quote.clone(), offset)) {
                Err(AttestError::BadSignature { what: reason }) => {
                    assert!(reason.contains(what), "{reason}");
                }
                other => panic!("{} byte {offset}: {other:?}", sample.quote),
            }
        }
    }
}

#[test]
fn altered_qe_report_is_a_bad_signature() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        // QE ISVSVN, inside the QE report the PCK key signs.
        let offset = layout.qe_report + 258;
        assert!(
            matches!(
                sample.verify_quote(flipped(quote.clone(), offset)),
                Err(AttestError::BadSignature { .. })
            ),
            "{}",
            sample.quote
        );
    }
}

#[test]
fn altered_pck_certificate_in_the_quote_breaks_the_chain() {
    // The TD 1.5ex sample's collateral carries the PCK chain, which dcap-qvl prefers to the copy
    // in the quote, so only the other two are tested here.
    for sample in [SGX, TDX] {
        let mut quote = sample.quote();
        let pem = quote
            .windows(27)
            .position(|w| w == b"-----BEGIN CERTIFICATE-----")
            .unwrap();
        // A base64 character well inside the PCK leaf certificate's body, replaced by another
        // base64 character, so that the PEM still parses and the DER changes.
        let offset = pem + 27 + 300;
        assert!(quote[offset].is_ascii_alphanumeric());
        quote[offset] = if quote[offset] == b'A' { b'B' } else { b'A' };
        let result = sample.verify_quote(quote);
        assert!(
            matches!(result, Err(AttestError::CertificateChain { .. })),
            "{}: {result:?}",
            sample.quote
        );
    }
}

#[test]
fn collateral_expired_after_next_update() {
    for sample in VERIFIED {
        match verifier::verify(
            &sample.evidence(),
            &sample.collateral(),
            sample.valid_until + 1,
        ) {
            Err(AttestError::CollateralExpired { what }) => {
                assert!(
                    what.contains("expired") || what.contains("Expired"),
                    "{what}"
                );
            }
            other => panic!("{}: {other:?}", sample.quote),
        }
    }
    // A year on, the root CA's CRL has lapsed too.
    match verifier::verify(&SGX.evidence(), &SGX.collateral(), SGX.now + 365 * 86_400) {
        Err(AttestError::CollateralExpired { what }) => {
            assert!(what.contains("CrlExpired"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn collateral_not_yet_valid_before_issue_date() {
    match verifier::verify(&TDX.evidence(), &TDX.collateral(), TDX.now - 30 * 86_400) {
        Err(AttestError::CollateralExpired { what }) => {
            assert!(what.contains("issue date is in the future"), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tampered_collateral_signature_is_a_bad_signature() {
    let mut collateral = SGX.collateral();
    let dcap = collateral.dcap.as_mut().unwrap();
    dcap.tcb_info_signature[10] ^= 1;
    assert!(matches!(
        verifier::verify(&SGX.evidence(), &collateral, SGX.now),
        Err(AttestError::BadSignature { .. })
    ));

    // A TCB info edited to say UpToDate no longer matches Intel's signature.
    let mut collateral = SGX.collateral();
    let dcap = collateral.dcap.as_mut().unwrap();
    dcap.tcb_info = dcap
        .tcb_info
        .replace("ConfigurationAndSWHardeningNeeded", "UpToDate");
    assert!(matches!(
        verifier::verify(&SGX.evidence(), &collateral, SGX.now),
        Err(AttestError::BadSignature { .. })
    ));
}

#[test]
fn collateral_of_another_tee_or_platform_is_refused() {
    // TDX collateral for an SGX quote: its QE identity is the TD quoting enclave's.
    match verifier::verify(&SGX.evidence(), &TDX.collateral(), SGX.now) {
        Err(AttestError::CollateralMissing { what }) => {
            assert!(what.contains("QE Identity"), "{what}")
        }
        other => panic!("{other:?}"),
    }
    // SGX collateral for a TDX quote.
    match verifier::verify(&TDX.evidence(), &SGX.collateral(), TDX.now) {
        Err(AttestError::CollateralMissing { what }) => {
            assert!(what.contains("QE Identity"), "{what}")
        }
        other => panic!("{other:?}"),
    }
    // The TD 1.5ex collateral carries another machine's PCK chain, which dcap-qvl prefers to the
    // quote's own: that PCK key did not sign this quote's QE report.
    match verifier::verify(&TDX.evidence(), &TD15EX.collateral(), TD15EX.now) {
        Err(AttestError::BadSignature { what }) => assert!(what.contains("qe_report"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_date_tcb_passes_the_verifier_and_fails_the_policy() {
    // The only TDX sample whose TCB is not up to date has no TCB level at all and is refused by
    // the verifier (see above), so the SGX sample (ConfigurationAndSWHardeningNeeded) is the
    // real evidence of a TCB that is not up to date. TDX is checked with the same policy shape.
    let claims = SGX.verify().unwrap();
    let mrenclave = hex::encode(sgx_claims(&claims).mrenclave);
    let enforcing = policy(&format!("[sgx]\nmrenclave = [\"{mrenclave}\"]\n"));
    match enforcing.evaluate(&claims, SGX.now) {
        Err(AttestError::TcbOutOfDate { status }) => {
            assert_eq!(status, "ConfigurationAndSWHardeningNeeded");
        }
        other => panic!("{other:?}"),
    }
    let lenient = policy(&format!(
        "[sgx]\nmrenclave = [\"{mrenclave}\"]\nenforce_tcb_upto_date = false\n"
    ));
    lenient.evaluate(&claims, SGX.now).unwrap();

    // A TDX policy with enforce_tcb_upto_date accepts the up-to-date TDX samples...
    for sample in [TDX, TD15EX] {
        let claims = sample.verify().unwrap();
        let tdx = tdx_claims(&claims);
        let enforcing = policy(&format!(
            "[tdx]\nmrtd = [\"{}\"]\nmrseam = [\"{}\"]\nenforce_tcb_upto_date = true\n",
            hex::encode(tdx.mrtd),
            hex::encode(tdx.mrseam)
        ));
        enforcing.evaluate(&claims, sample.now).unwrap();
        // ...and refuses the same claims once their status is not up to date.
        let out_of_date = Claims {
            tcb_status: TcbStatus::OutOfDate,
            ..claims
        };
        assert!(matches!(
            enforcing.evaluate(&out_of_date, sample.now),
            Err(AttestError::TcbOutOfDate { status }) if status == "OutOfDate"
        ));
    }
}

#[test]
fn wrong_measurement_is_denied_by_field_name() {
    let other = "ab".repeat(48);
    let claims = TDX.verify().unwrap();
    for (line, field) in [
        (format!("mrtd = [\"{other}\"]"), "tdx.mrtd"),
        (format!("rtmr0 = [\"{other}\"]"), "tdx.rtmr0"),
        (format!("mrseam = [\"{other}\"]"), "tdx.mrseam"),
        ("min_seamsvn = 263".to_string(), "tdx.min_seamsvn"),
    ] {
        match policy(&format!("[tdx]\n{line}\n")).evaluate(&claims, TDX.now) {
            Err(AttestError::PolicyDenied {
                field: denied,
                found,
                ..
            }) => {
                assert_eq!(denied, field);
                assert!(!found.is_empty());
            }
            other => panic!("{line}: {other:?}"),
        }
    }
    match policy(&format!("[tdx]\nmrtd = [\"{other}\"]\n")).evaluate(&claims, TDX.now) {
        Err(AttestError::PolicyDenied { found, .. }) => {
            assert_eq!(found, hex::encode(tdx_claims(&claims).mrtd));
        }
        other => panic!("{other:?}"),
    }

    let claims = SGX.verify().unwrap();
    let other = "cd".repeat(32);
    for (line, field) in [
        (format!("mrenclave = [\"{other}\"]"), "sgx.mrenclave"),
        (format!("mrsigner = [\"{other}\"]"), "sgx.mrsigner"),
        ("min_isvsvn = 1".to_string(), "sgx.min_isvsvn"),
    ] {
        let toml = format!("[sgx]\n{line}\nenforce_tcb_upto_date = false\n");
        match policy(&toml).evaluate(&claims, SGX.now) {
            Err(AttestError::PolicyDenied { field: denied, .. }) => assert_eq!(denied, field),
            other => panic!("{line}: {other:?}"),
        }
    }
}

#[test]
fn sgx_quote_as_tdx_evidence_is_the_wrong_tee() {
    let sgx_as_tdx = Evidence {
        tee: TeeKind::Tdx,
        ..SGX.evidence()
    };
    for collateral in [SGX.collateral(), TDX.collateral(), Collateral::none()] {
        assert!(matches!(
            verifier::verify(&sgx_as_tdx, &collateral, SGX.now),
            Err(AttestError::WrongTee {
                expected: TeeKind::Tdx,
                found: TeeKind::Sgx
            })
        ));
    }
    let tdx_as_sgx = Evidence {
        tee: TeeKind::Sgx,
        ..TDX.evidence()
    };
    assert!(matches!(
        verifier::verify(&tdx_as_sgx, &TDX.collateral(), TDX.now),
        Err(AttestError::WrongTee {
            expected: TeeKind::Sgx,
            found: TeeKind::Tdx
        })
    ));
}

#[test]
fn verifier_of_one_tee_refuses_evidence_of_another() {
    let sgx_verifier = DcapVerifier::new(TeeKind::Sgx);
    assert_eq!(sgx_verifier.tee(), TeeKind::Sgx);
    assert!(matches!(
        sgx_verifier.verify(&TDX.evidence(), &TDX.collateral(), TDX.now),
        Err(AttestError::WrongTee {
            expected: TeeKind::Sgx,
            found: TeeKind::Tdx
        })
    ));
    let tdx_verifier = DcapVerifier::new(TeeKind::Tdx);
    for tee in [TeeKind::Sgx, TeeKind::Snp, TeeKind::Sim] {
        let evidence = Evidence {
            tee,
            ..TDX.evidence()
        };
        assert!(matches!(
            tdx_verifier.verify(&evidence, &TDX.collateral(), TDX.now),
            Err(AttestError::WrongTee { expected: TeeKind::Tdx, found }) if found == tee
        ));
    }
    // The verifier itself, without the dispatch of `verifier::verify`, gives the same claims.
    assert_eq!(
        tdx_verifier
            .verify(&TDX.evidence(), &TDX.collateral(), TDX.now)
            .unwrap(),
        TDX.verify().unwrap()
    );
}

#[test]
fn policy_without_the_tee_refuses_it() {
    let claims = TDX.verify().unwrap();
    let sgx_only = policy(&format!("[sgx]\nmrenclave = [\"{}\"]\n", "00".repeat(32)));
    assert!(matches!(
        sgx_only.evaluate(&claims, TDX.now),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Tdx })
    ));
    let claims = SGX.verify().unwrap();
    let tdx_only = policy("[tdx]\n");
    assert!(matches!(
        tdx_only.evaluate(&claims, SGX.now),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Sgx })
    ));
}

#[test]
fn debug_claims_are_refused_by_the_policy() {
    // No debug quote can be made from the samples without breaking their signatures; the debug
    // bit extraction is unit-tested in `verifier::dcap` on constructed reports. Here: the real
    // samples report no debug, and debug claims are refused before anything else.
    for sample in VERIFIED {
        let claims = sample.verify().unwrap();
        assert!(!claims.debug, "{}", sample.quote);
        if let TeeClaims::Tdx(tdx) = &claims.details {
            assert_eq!(tdx.td_attributes & 0xFF, 0);
        }
        let debug = Claims {
            debug: true,
            ..claims
        };
        let permissive = policy("[sgx]\nenforce_tcb_upto_date = false\n[tdx]\n");
        assert!(matches!(
            permissive.evaluate(&debug, sample.now),
            Err(AttestError::DebugEnabled)
        ));
    }
}

#[test]
fn truncated_quote_is_malformed_evidence() {
    for sample in VERIFIED {
        let quote = sample.quote();
        let layout = Layout::of(&quote);
        let mut cuts = vec![
            0,
            1,
            47,
            48,
            layout.body + 1,
            layout.report_data + 10,
            layout.signed_end - 1,
            layout.signed_end,
            layout.signed_end + 2,
            layout.signed_end + 4,
            layout.qe_report + 100,
            layout.auth_end - 1,
        ];
        cuts.extend((0..layout.auth_end).step_by(97));
        for cut in cuts {
            match sample.verify_quote(quote[..cut].to_vec()) {
                Err(AttestError::MalformedEvidence { .. }) => {}
                other => panic!("{} cut at {cut}: {other:?}", sample.quote),
            }
        }
    }
}

#[test]
fn bytes_after_the_quote_are_ignored() {
    // The v4 TDX sample is 70 zero bytes longer than its quote (the buffer the quote was read
    // into); dcap-qvl reads the structure and ignores what follows, as do we.
    let quote = TDX.quote();
    let layout = Layout::of(&quote);
    assert_eq!(quote.len() - layout.auth_end, 70);
    assert!(quote[layout.auth_end..].iter().all(|&b| b == 0));
    let trimmed = TDX.verify_quote(quote[..layout.auth_end].to_vec()).unwrap();
    assert_eq!(trimmed, TDX.verify().unwrap());
}

/// xorshift64*: deterministic bytes for the never-panic tests.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_are_an_error_never_a_panic() {
    let mut prng = Prng(0x5EED_1234_ABCD_0001);
    for sample in [SGX, TDX, TD15EX] {
        let collateral = sample.collateral();
        let real = sample.quote();
        let header_len = Layout::of(&real).body;
        for round in 0..120 {
            let len = (prng.next() % 2000) as usize;
            let mut quote = prng.bytes(len);
            // Half the inputs keep the sample's header (and v5 body descriptor), so that they
            // reach dcap-qvl's parser instead of stopping at the header check.
            if round % 2 == 1 && len >= header_len {
                quote[..header_len].copy_from_slice(&real[..header_len]);
            }
            let evidence = sample.evidence_with(quote);
            assert!(
                verifier::verify(&evidence, &collateral, sample.now).is_err(),
                "{} round {round}",
                sample.quote
            );
        }
        // Random bytes written over a stretch of the real quote.
        for round in 0..40 {
            let mut quote = real.clone();
            let start = (prng.next() as usize) % quote.len();
            let len = 1 + (prng.next() as usize) % 64;
            let end = (start + len).min(Layout::of(&real).auth_end);
            if start >= end {
                continue;
            }
            let noise = prng.bytes(end - start);
            if noise == quote[start..end] {
                continue;
            }
            quote[start..end].copy_from_slice(&noise);
            // Anything may fail; what matters is that nothing panics, and that whatever still
            // verifies (certificate bytes dcap-qvl does not use) claims the same as the original.
            if let Ok(claims) =
                verifier::verify(&sample.evidence_with(quote), &collateral, sample.now)
            {
                assert_eq!(
                    claims,
                    sample.verify().unwrap(),
                    "{} round {round}",
                    sample.quote
                );
            }
        }
    }
}

#[test]
fn missing_collateral_is_collateral_missing() {
    for sample in VERIFIED {
        assert!(matches!(
            verifier::verify(&sample.evidence(), &Collateral::none(), sample.now),
            Err(AttestError::CollateralMissing { .. })
        ));
    }
    // A bundle with only AMD certificates has nothing for DCAP.
    let snp_only = Collateral::from_bundle_json(br#"{"snp": {}}"#).unwrap();
    assert!(matches!(
        verifier::verify(&TDX.evidence(), &snp_only, TDX.now),
        Err(AttestError::CollateralMissing { .. })
    ));
}

#[test]
fn bundle_and_bare_collateral_verify_alike() {
    let bare = testdata(TDX.collateral);
    let bundle = format!(
        r#"{{"dcap": {}}}"#,
        String::from_utf8(bare.clone()).unwrap()
    );
    for collateral in [
        Collateral::from_json(&bare).unwrap(),
        Collateral::from_json(bundle.as_bytes()).unwrap(),
    ] {
        assert_eq!(
            verifier::verify(&TDX.evidence(), &collateral, TDX.now).unwrap(),
            TDX.verify().unwrap()
        );
    }
}

#[test]
fn evidence_json_round_trip_verifies() {
    let json = TD15EX.evidence().to_json();
    let evidence = Evidence::from_json(json.as_bytes()).unwrap();
    assert_eq!(
        verifier::verify(&evidence, &TD15EX.collateral(), TD15EX.now).unwrap(),
        TD15EX.verify().unwrap()
    );
}

/// Collateral signatures are memoised between verifications (`verifier::dcap_cache`); the quote's
/// own signatures never are, and the memo never turns a refusal into an acceptance.
#[test]
fn memoised_collateral_never_hides_a_bad_quote_or_bad_collateral() {
    for round in 0..3 {
        for sample in VERIFIED {
            sample
                .verify_quote(sample.quote())
                .unwrap_or_else(|e| panic!("round {round}, {}: {e}", sample.quote));
            let quote = sample.quote();
            let layout = Layout::of(&quote);
            assert!(
                matches!(
                    sample.verify_quote(flipped(quote, layout.report_data)),
                    Err(AttestError::BadSignature { .. })
                ),
                "round {round}, {}",
                sample.quote
            );
        }
        let mut collateral = SGX.collateral();
        collateral.dcap.as_mut().unwrap().tcb_info_signature[10] ^= 1;
        assert!(matches!(
            verifier::verify(&SGX.evidence(), &collateral, SGX.now),
            Err(AttestError::BadSignature { .. })
        ));
    }
}
