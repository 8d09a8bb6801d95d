//! Policies: parsing, strictness, and a decision that names the field.

use adyton_attest::claims::{SgxClaims, SnpClaims, SnpTcb, TdxClaims};
use adyton_attest::{AttestError, Claims, Policy, TcbStatus, TeeClaims, TeeKind};

fn tdx_claims() -> Claims {
    Claims {
        tee: TeeKind::Tdx,
        insecure: false,
        report_data: [0; 64],
        tcb_status: TcbStatus::UpToDate,
        advisory_ids: vec!["INTEL-SA-00837".into()],
        debug: false,
        collateral_expires_at: Some(2_000),
        collateral_issued_at: Some(1_000),
        collateral_grace_secs: None,
        details: TeeClaims::Tdx(TdxClaims {
            mrtd: [0xAA; 48],
            rtmr: [[1; 48], [2; 48], [3; 48], [4; 48]],
            mrseam: [0xBB; 48],
            mrconfigid: [0xC1; 48],
            mrowner: [0xC2; 48],
            mrownerconfig: [0xC3; 48],
            seamsvn: 3,
            td_attributes: 0,
        }),
    }
}

fn denied_field(result: Result<(), AttestError>) -> String {
    match result {
        Err(AttestError::PolicyDenied { field, .. }) => field,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn toml_and_json_give_the_same_policy() {
    let toml = format!(
        "[tdx]\nmrtd = [\"{}\"]\nrtmr3 = [\"{}\"]\nmin_seamsvn = 2\nenforce_tcb_upto_date = false\n",
        "aa".repeat(48),
        "04".repeat(48)
    );
    let json = format!(
        r#"{{"tdx": {{"mrtd": ["{}"], "rtmr3": ["{}"], "min_seamsvn": 2, "enforce_tcb_upto_date": false}}}}"#,
        "aa".repeat(48),
        "04".repeat(48)
    );
    let a = Policy::from_toml(&toml).unwrap();
    let b = Policy::from_json(&json).unwrap();
    assert_eq!(a, b);
    a.evaluate(&tdx_claims(), 1_000).unwrap();
}

#[test]
fn misspelt_or_malformed_fields_are_errors_not_ignored() {
    for bad in [
        "[tdx]\nmrdt = []\n",
        "[tdx]\nmrtd = [\"abcd\"]\n",
        "[tdx]\nmrtd = [\"zz\"]\n",
        "[tpm]\n",
        "[sgx]\nmin_isvsvn = -1\n",
        "[snp]\nmin_tcb = { bootlader = 1 }\n",
        "not toml at all [",
    ] {
        assert!(
            matches!(Policy::from_toml(bad), Err(AttestError::BadPolicy { .. })),
            "{bad}"
        );
    }
}

#[test]
fn each_tdx_field_is_enforced_by_name() {
    let claims = tdx_claims();
    let hex = |b: u8| format!("[\"{}\"]", hex::encode([b; 48]));
    let cases = [
        (format!("mrtd = {}", hex(0xAB)), "tdx.mrtd"),
        (format!("rtmr0 = {}", hex(9)), "tdx.rtmr0"),
        (format!("rtmr2 = {}", hex(9)), "tdx.rtmr2"),
        (format!("mrseam = {}", hex(9)), "tdx.mrseam"),
        ("min_seamsvn = 4".to_string(), "tdx.min_seamsvn"),
        (
            "allowed_advisory_ids = []".to_string(),
            "allowed_advisory_ids",
        ),
        (
            "max_collateral_age_secs = 10".to_string(),
            "max_collateral_age_secs",
        ),
    ];
    for (line, field) in cases {
        let policy = Policy::from_toml(&format!("[tdx]\n{line}\n")).unwrap();
        assert_eq!(
            denied_field(policy.evaluate(&claims, 1_500)),
            field,
            "{line}"
        );
    }
    // The same fields with matching values allow.
    let policy = Policy::from_toml(&format!(
        "[tdx]\nmrtd = {}\nmin_seamsvn = 3\nallowed_advisory_ids = [\"INTEL-SA-00837\"]\nmax_collateral_age_secs = 600\n",
        hex(0xAA)
    ))
    .unwrap();
    policy.evaluate(&claims, 1_500).unwrap();
}

#[test]
fn out_of_date_tcb_is_refused_only_when_enforced() {
    let mut claims = tdx_claims();
    claims.tcb_status = TcbStatus::OutOfDate;
    let strict = Policy::from_toml("[tdx]\n").unwrap();
    assert!(matches!(
        strict.evaluate(&claims, 0),
        Err(AttestError::TcbOutOfDate { status }) if status == "OutOfDate"
    ));
    let lenient = Policy::from_toml("[tdx]\nenforce_tcb_upto_date = false\n").unwrap();
    lenient.evaluate(&claims, 0).unwrap();
}

#[test]
fn debug_is_always_refused() {
    let mut claims = tdx_claims();
    claims.debug = true;
    let lenient = Policy::from_toml("[tdx]\nenforce_tcb_upto_date = false\n").unwrap();
    assert!(matches!(
        lenient.evaluate(&claims, 0),
        Err(AttestError::DebugEnabled)
    ));
}

#[test]
fn a_tee_without_a_table_is_refused() {
    let policy = Policy::from_toml("[sgx]\n[snp]\n[sim]\n").unwrap();
    assert!(matches!(
        policy.evaluate(&tdx_claims(), 0),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Tdx })
    ));
}

#[test]
fn sgx_and_snp_fields_are_enforced_by_name() {
    let sgx = Claims {
        tee: TeeKind::Sgx,
        details: TeeClaims::Sgx(SgxClaims {
            mrenclave: [1; 32],
            mrsigner: [2; 32],
            isvprodid: 5,
            isvsvn: 7,
        }),
        ..tdx_claims()
    };
    for (line, field) in [
        (
            format!("mrenclave = [\"{}\"]", "03".repeat(32)),
            "sgx.mrenclave",
        ),
        (
            format!("mrsigner = [\"{}\"]", "03".repeat(32)),
            "sgx.mrsigner",
        ),
        ("isvprodid = [1, 2]".into(), "sgx.isvprodid"),
        ("min_isvsvn = 8".into(), "sgx.min_isvsvn"),
    ] {
        let policy = Policy::from_toml(&format!("[sgx]\n{line}\n")).unwrap();
        assert_eq!(denied_field(policy.evaluate(&sgx, 0)), field);
    }

    let snp = Claims {
        tee: TeeKind::Snp,
        details: TeeClaims::Snp(SnpClaims {
            measurement: [9; 48],
            host_data: [8; 32],
            reported_tcb: SnpTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
            },
            policy: 0x30000,
            chip_id: vec![1; 64],
            vmpl: 1,
        }),
        ..tdx_claims()
    };
    for (line, field) in [
        (
            format!("measurement = [\"{}\"]", "03".repeat(48)),
            "snp.measurement",
        ),
        (
            format!("host_data = \"{}\"", "03".repeat(32)),
            "snp.host_data",
        ),
        ("min_tcb = { snp = 9 }".into(), "snp.min_tcb.snp"),
        (
            "min_tcb = { microcode = 200 }".into(),
            "snp.min_tcb.microcode",
        ),
        ("vmpl = [0]".into(), "snp.vmpl"),
    ] {
        let policy = Policy::from_toml(&format!("[snp]\n{line}\n")).unwrap();
        assert_eq!(denied_field(policy.evaluate(&snp, 0)), field);
    }
    let ok = Policy::from_toml(
        "[snp]\nmin_tcb = { bootloader = 3, snp = 8, microcode = 115 }\nvmpl = [0, 1]\n",
    )
    .unwrap();
    ok.evaluate(&snp, 0).unwrap();
}
