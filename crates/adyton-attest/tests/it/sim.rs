//! The SIM TEE: its evidence verifies, says SIM everywhere, and is accepted only under a policy that
//! names SIM.

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::verifier::{self, sim::SimVerifier, Verifier};
use adyton_attest::{AttestError, Collateral, Evidence, Policy, TeeClaims, TeeKind};

const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn attester() -> SimAttester {
    SimAttester::with_measurement([7; 32], MEASUREMENT).unwrap()
}

fn evidence() -> Evidence {
    attester().evidence(&[0x11; 64]).unwrap()
}

#[test]
fn sim_evidence_verifies_and_says_sim_everywhere() {
    let evidence = evidence();
    assert!(evidence.quote.starts_with(b"ADYTON-SIM-INSECURE"));
    assert!(evidence.to_json().contains("INSECURE"));
    let claims = verifier::verify(&evidence, &Collateral::none(), 0).unwrap();
    assert_eq!(claims.tee, TeeKind::Sim);
    assert!(claims.insecure);
    assert_eq!(claims.report_data, [0x11; 64]);
    let TeeClaims::Sim(sim) = &claims.details else {
        panic!("not SIM claims")
    };
    assert_eq!(sim.measurement, MEASUREMENT);
    assert_eq!(sim.signer, attester().public_key());
    let json = serde_json::to_string(&claims).unwrap();
    assert!(json.contains("\"insecure\":true"), "{json}");
}

#[test]
fn sim_is_refused_unless_the_policy_names_it() {
    let claims = verifier::verify(&evidence(), &Collateral::none(), 0).unwrap();
    let hardware_only = Policy::from_toml("[tdx]\n[sgx]\n[snp]\n").unwrap();
    assert!(matches!(
        hardware_only.evaluate(&claims, 0),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Sim })
    ));
    assert!(matches!(
        Policy::default().evaluate(&claims, 0),
        Err(AttestError::TeeNotInPolicy { tee: TeeKind::Sim })
    ));
    Policy::sim_only(&[MEASUREMENT])
        .evaluate(&claims, 0)
        .unwrap();
    Policy::from_toml("[sim]\n")
        .unwrap()
        .evaluate(&claims, 0)
        .unwrap();
}

#[test]
fn sim_policy_pins_the_build_and_the_signer() {
    let claims = verifier::verify(&evidence(), &Collateral::none(), 0).unwrap();
    let other_build = Policy::sim_only(&[[0x4E; 48]]);
    match other_build.evaluate(&claims, 0) {
        Err(AttestError::PolicyDenied {
            field,
            expected,
            found,
        }) => {
            assert_eq!(field, "sim.measurement");
            assert!(expected.contains(&"4e".repeat(48)));
            assert_eq!(found, "4d".repeat(48));
        }
        other => panic!("{other:?}"),
    }
    let signer = hex::encode(attester().public_key());
    let pinned = Policy::from_toml(&format!("[sim]\nsigner = [\"{signer}\"]\n")).unwrap();
    pinned.evaluate(&claims, 0).unwrap();
    let other_signer =
        Policy::from_toml(&format!("[sim]\nsigner = [\"{}\"]\n", "00".repeat(32))).unwrap();
    assert!(matches!(
        other_signer.evaluate(&claims, 0),
        Err(AttestError::PolicyDenied { field, .. }) if field == "sim.signer"
    ));
}

#[test]
fn tampered_sim_evidence_is_refused() {
    let good = evidence();
    // Report data, measurement, timestamp, public key and signature: each byte matters.
    for at in [30, 80, 140, 150, 200] {
        let mut bad = good.clone();
        bad.quote[at] ^= 1;
        let err = SimVerifier
            .verify(&bad, &Collateral::none(), 0)
            .unwrap_err();
        assert!(
            matches!(err, AttestError::BadSignature { .. }),
            "byte {at}: {err}"
        );
    }
    let mut bad = good.clone();
    bad.quote[0] = b'X';
    assert!(matches!(
        SimVerifier.verify(&bad, &Collateral::none(), 0),
        Err(AttestError::MalformedEvidence { .. })
    ));
    for len in [0, 10, 239, 241] {
        let mut bad = good.clone();
        bad.quote.resize(len, 0);
        assert!(matches!(
            SimVerifier.verify(&bad, &Collateral::none(), 0),
            Err(AttestError::MalformedEvidence { .. })
        ));
    }
    let mut relabelled = good;
    relabelled.tee = TeeKind::Tdx;
    assert!(SimVerifier
        .verify(&relabelled, &Collateral::none(), 0)
        .is_err());
    assert!(verifier::verify(&relabelled, &Collateral::none(), 0).is_err());
}

#[test]
fn sim_key_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/sim.key");
    let first = SimAttester::from_key_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = SimAttester::from_key_file(&path).unwrap();
    assert_eq!(first.public_key(), second.public_key());
    assert!(!format!("{first:?}").contains(&hex::encode(first.secret_seed())));

    std::fs::write(dir.path().join("bad.key"), [1u8; 5]).unwrap();
    assert!(SimAttester::from_key_file(&dir.path().join("bad.key")).is_err());

    // A key that others can read is refused, not used.
    let shared = dir.path().join("shared.key");
    std::fs::write(&shared, [1u8; 32]).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SimAttester::from_key_file(&shared).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
    SimAttester::from_key_file(&shared).unwrap();

    // No temporary file is left beside a created key.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("sim.key")]);
}
