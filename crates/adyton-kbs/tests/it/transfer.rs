//! Transfers: the key is released only to evidence that binds the presented public key and
//! satisfies the key's policy; every refusal is a named error and an audit decision.

use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{AttestError, Collateral, TeeKind};
use adyton_envelope::wrap::{ModulusOrder, TeeKeyPair, TransferKeyKind, HPKE_WRAPPED_SWK_LEN};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker, TransferRequest, NONCE_LIFETIME_SECS};
use adyton_kbs::KbsError;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const MODEL_KEY: [u8; 32] = [0x5A; 32];
const MEASUREMENT: [u8; 48] = [0x4D; 48];

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
    key_id: String,
    attester: SimAttester,
    tee_key: TeeKeyPair,
}

fn fixture_with_policy(tee: TeeKind, table: serde_json::Value) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let policy = broker.create_policy(tee, table, NOW).unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    Fixture {
        _dir: dir,
        broker,
        key_id: key.id,
        attester: SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap(),
        tee_key: TeeKeyPair::generate(3072).unwrap(),
    }
}

fn fixture() -> Fixture {
    fixture_with_policy(
        TeeKind::Sim,
        json!({ "measurement": [hex::encode(MEASUREMENT)] }),
    )
}

impl Fixture {
    fn request(
        &self,
        user_data: Vec<u8>,
        nonce: Option<Vec<u8>>,
        bound: [u8; 64],
    ) -> TransferRequest {
        TransferRequest {
            attestation_type: "SIM".into(),
            quote: self
                .attester
                .evidence(&bound)
                .unwrap()
                .to_json()
                .into_bytes(),
            user_data,
            nonce,
            collateral: None,
        }
    }

    fn spki(&self) -> Vec<u8> {
        self.tee_key.public_key().unwrap().spki_der().to_vec()
    }

    fn honest(&self) -> TransferRequest {
        let user_data = self.spki();
        let bound = expected_report_data(&user_data, None);
        self.request(user_data, None, bound)
    }

    fn refused(&self, request: &TransferRequest) -> KbsError {
        let (outcome, decision) = self.broker.transfer(&self.key_id, request, NOW);
        assert!(!decision.allowed);
        assert!(decision.reason.is_some());
        match outcome {
            Ok(_) => panic!("the key was released"),
            Err(e) => e,
        }
    }
}

#[test]
fn the_registered_key_reaches_the_tee_that_proves_itself() {
    let f = fixture();
    let (outcome, decision) = f.broker.transfer(&f.key_id, &f.honest(), NOW);
    let (wrapped, claims) = outcome.unwrap();
    assert_eq!(
        f.tee_key.unwrap_transfer(&wrapped).unwrap().expose_secret(),
        &MODEL_KEY
    );
    assert_eq!(claims.tee, TeeKind::Sim);
    assert!(decision.allowed);
    assert_eq!(
        decision.measurement.as_deref(),
        Some(hex::encode(MEASUREMENT).as_str())
    );
    let line = serde_json::to_string(&decision).unwrap();
    assert!(!line.contains(&hex::encode(MODEL_KEY)), "{line}");
}

#[test]
fn the_raw_exponent_modulus_form_works_too() {
    let f = fixture();
    let raw = f
        .tee_key
        .public_key()
        .unwrap()
        .to_raw(ModulusOrder::BigEndian)
        .unwrap();
    let bound = expected_report_data(&raw, None);
    let request = f.request(raw, None, bound);
    let (wrapped, _) = f.broker.transfer(&f.key_id, &request, NOW).0.unwrap();
    assert_eq!(
        f.tee_key.unwrap_transfer(&wrapped).unwrap().expose_secret(),
        &MODEL_KEY
    );
}

/// The audit decision names the transfer key's type: P-384 for HPKE, RSA as SPKI, RSA in Intel's
/// raw form (little-endian under SGX); none when `user_data` cannot be read.
#[test]
fn the_audit_decision_names_the_transfer_key_type() {
    let f = fixture();
    let rsa = f.tee_key.public_key().unwrap();
    let p384 = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
    let p384_spki = p384.public_key().unwrap().spki_der().to_vec();
    let raw_be = rsa.to_raw(ModulusOrder::BigEndian).unwrap();
    for (user_data, expected) in [
        (
            p384_spki,
            json!({"algorithm": "EC P-384", "encoding": "spki", "wrapping": "hpke"}),
        ),
        (
            f.spki(),
            json!({"algorithm": "RSA-3072", "encoding": "spki", "wrapping": "rsa-oaep-sha256"}),
        ),
        (
            raw_be,
            json!({"algorithm": "RSA-3072", "encoding": "intel-raw-be", "wrapping": "rsa-oaep-sha256"}),
        ),
    ] {
        let bound = expected_report_data(&user_data, None);
        let (outcome, decision) =
            f.broker
                .transfer(&f.key_id, &f.request(user_data, None, bound), NOW);
        outcome.unwrap();
        let line = serde_json::to_value(&decision).unwrap();
        assert_eq!(line["transfer_key"], expected, "{line}");
    }

    // SGX's raw form has a little-endian modulus; the key type is recorded even when the
    // transfer is then refused (here: SIM evidence for an SGX policy).
    let sgx = fixture_with_policy(TeeKind::Sgx, json!({ "mrsigner": ["11".repeat(32)] }));
    let raw_le = rsa.to_raw(ModulusOrder::LittleEndian).unwrap();
    let mut request = sgx.request(raw_le.clone(), None, expected_report_data(&raw_le, None));
    request.attestation_type = "SGX".into();
    let (outcome, decision) = sgx.broker.transfer(&sgx.key_id, &request, NOW);
    assert!(outcome.is_err());
    let line = serde_json::to_value(&decision).unwrap();
    assert_eq!(
        line["transfer_key"],
        json!({"algorithm": "RSA-3072", "encoding": "intel-raw-le", "wrapping": "rsa-oaep-sha256"}),
        "{line}"
    );

    // Unreadable `user_data`: no key type in the line.
    let request = f.request(vec![0x30, 0x00], None, [0; 64]);
    let (outcome, decision) = f.broker.transfer(&f.key_id, &request, NOW);
    assert!(matches!(outcome, Err(KbsError::BadRequest { .. })));
    assert_eq!(decision.transfer_key, None);
    let line = serde_json::to_value(&decision).unwrap();
    assert!(line.get("transfer_key").is_none(), "{line}");
}

/// A P-384 `user_data`: the SWK comes back sealed with HPKE to it, with the nonce binding too.
#[test]
fn a_p384_key_receives_the_key_sealed_with_hpke() {
    let mut f = fixture();
    f.tee_key = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
    let user_data = f.spki();
    let nonce = f.broker.nonce(NOW).unwrap();
    let bound = expected_report_data(&user_data, Some(&nonce));
    let request = f.request(user_data, Some(nonce), bound);
    let (outcome, decision) = f.broker.transfer(&f.key_id, &request, NOW);
    let (wrapped, _) = outcome.unwrap();
    assert!(decision.allowed);
    assert_eq!(wrapped.wrapped_swk.len(), HPKE_WRAPPED_SWK_LEN);
    assert_eq!(
        f.tee_key.unwrap_transfer(&wrapped).unwrap().expose_secret(),
        &MODEL_KEY
    );
    // Another P-384 key pair cannot open the answer.
    let other = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
    assert!(other.unwrap_transfer(&wrapped).is_err());

    // Evidence over another P-384 key does not release the key to this one.
    let other_spki = other.public_key().unwrap().spki_der().to_vec();
    let request = f.request(f.spki(), None, expected_report_data(&other_spki, None));
    assert!(matches!(f.refused(&request), KbsError::ReportDataMismatch));
}

/// Keys of other curves and algorithms, and malformed points, are bad requests that say why.
#[test]
fn other_curves_and_algorithms_are_bad_requests() {
    use aws_lc_rs::agreement::{PrivateKey, ECDH_P256, X25519};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let f = fixture();
    let spki_of = |algorithm| {
        let private = PrivateKey::generate(algorithm).unwrap();
        AsDer::<PublicKeyX509Der>::as_der(&private.compute_public_key().unwrap())
            .unwrap()
            .as_ref()
            .to_vec()
    };
    let mut off_curve = TeeKeyPair::generate_kind(TransferKeyKind::P384)
        .unwrap()
        .public_key()
        .unwrap()
        .spki_der()
        .to_vec();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    for (user_data, expected) in [
        (spki_of(&ECDH_P256), "P-256 is not supported"),
        (spki_of(&X25519), "algorithm 1.3.101.110 is not supported"),
        (off_curve, "not on the P-384 curve"),
    ] {
        let bound = expected_report_data(&user_data, None);
        match f.refused(&f.request(user_data, None, bound)) {
            KbsError::BadRequest { reason } => {
                assert!(reason.starts_with("user_data: "), "{reason}");
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected a bad request, got {other:?}"),
        }
    }
}

#[test]
fn a_nonce_is_bound_once_and_expires() {
    let f = fixture();
    let user_data = f.spki();
    let nonce = f.broker.nonce(NOW).unwrap();
    let bound = expected_report_data(&user_data, Some(&nonce));
    let request = f.request(user_data.clone(), Some(nonce.clone()), bound);
    f.broker.transfer(&f.key_id, &request, NOW).0.unwrap();

    // Replayed.
    assert!(matches!(f.refused(&request), KbsError::BadNonce { .. }));

    // Expired.
    let late = f.broker.nonce(NOW).unwrap();
    let bound = expected_report_data(&user_data, Some(&late));
    let request = f.request(user_data.clone(), Some(late), bound);
    let (outcome, _) = f
        .broker
        .transfer(&f.key_id, &request, NOW + NONCE_LIFETIME_SECS + 1);
    assert!(matches!(outcome, Err(KbsError::BadNonce { .. })));

    // Forged.
    let mut forged = f.broker.nonce(NOW).unwrap();
    forged[0] ^= 1;
    let bound = expected_report_data(&user_data, Some(&forged));
    assert!(matches!(
        f.refused(&f.request(user_data.clone(), Some(forged), bound)),
        KbsError::BadNonce { .. }
    ));

    // Evidence over the key alone does not satisfy a request that presents a nonce.
    let nonce = f.broker.nonce(NOW).unwrap();
    let bound = expected_report_data(&user_data, None);
    assert!(matches!(
        f.refused(&f.request(user_data, Some(nonce), bound)),
        KbsError::ReportDataMismatch
    ));
}

#[test]
fn report_data_that_does_not_bind_user_data_is_refused() {
    let f = fixture();
    let other = TeeKeyPair::generate(2048)
        .unwrap()
        .public_key()
        .unwrap()
        .spki_der()
        .to_vec();
    // Evidence made for another key, presented with this one.
    let request = f.request(f.spki(), None, expected_report_data(&other, None));
    assert!(matches!(f.refused(&request), KbsError::ReportDataMismatch));
}

#[test]
fn the_wrong_measurement_is_refused_by_the_policy() {
    let f = fixture_with_policy(
        TeeKind::Sim,
        json!({ "measurement": [hex::encode([0x4E; 48])] }),
    );
    assert!(matches!(
        f.refused(&f.honest()),
        KbsError::Attestation(AttestError::PolicyDenied { field, .. }) if field == "sim.measurement"
    ));
}

#[test]
fn the_wrong_attestation_type_is_refused() {
    let f = fixture();
    let mut request = f.honest();
    request.attestation_type = "TDX".into();
    assert!(matches!(
        f.refused(&request),
        KbsError::AttestationTypeMismatch { .. }
    ));
    request.attestation_type = "CCA".into();
    assert!(matches!(f.refused(&request), KbsError::BadRequest { .. }));
}

#[test]
fn sim_evidence_for_a_tdx_policy_is_refused() {
    let f = fixture_with_policy(TeeKind::Tdx, json!({}));
    // Claimed as SIM: the policy wants TDX.
    assert!(matches!(
        f.refused(&f.honest()),
        KbsError::AttestationTypeMismatch { .. }
    ));
    // Claimed as TDX, carrying SIM evidence JSON.
    let mut request = f.honest();
    request.attestation_type = "TDX".into();
    assert!(matches!(
        f.refused(&request),
        KbsError::AttestationTypeMismatch { .. }
    ));
    // Claimed as TDX, carrying the raw SIM report: it is no DCAP quote.
    let evidence = adyton_attest::Evidence::from_json(&request.quote).unwrap();
    request.quote = evidence.quote;
    assert!(matches!(f.refused(&request), KbsError::Attestation(_)));
}

#[test]
fn unknown_keys_and_malformed_inputs_are_refused() {
    let f = fixture();
    let (outcome, decision) = f.broker.transfer("no-such-key", &f.honest(), NOW);
    assert!(matches!(outcome, Err(KbsError::UnknownKey { .. })));
    assert!(!decision.allowed);

    let mut request = f.honest();
    request.user_data = b"not a key".to_vec();
    assert!(matches!(f.refused(&request), KbsError::BadRequest { .. }));

    let mut request = f.honest();
    request.quote = b"{ not evidence".to_vec();
    assert!(matches!(
        f.refused(&request),
        KbsError::Attestation(AttestError::MalformedEvidence { .. })
    ));

    let mut request = f.honest();
    request.quote = vec![0; 10];
    assert!(matches!(f.refused(&request), KbsError::Attestation(_)));
}

#[test]
fn policies_are_checked_when_created_and_keys_when_imported() {
    let f = fixture();
    assert!(matches!(
        f.broker
            .create_policy(TeeKind::Tdx, json!({ "mrtd": ["abcd"] }), NOW),
        Err(KbsError::BadRequest { .. })
    ));
    assert!(matches!(
        f.broker
            .create_policy(TeeKind::Tdx, json!({ "mrdt": [] }), NOW),
        Err(KbsError::BadRequest { .. })
    ));
    let policy = f
        .broker
        .create_policy(TeeKind::Sim, json!({}), NOW)
        .unwrap();
    assert!(matches!(
        f.broker.create_key(&policy.id, Some(&[1; 16]), NOW),
        Err(KbsError::BadRequest { .. })
    ));
    assert!(matches!(
        f.broker.create_key("no-such-policy", None, NOW),
        Err(KbsError::UnknownPolicy { .. })
    ));
    let generated = f.broker.create_key(&policy.id, None, NOW).unwrap();
    assert!(!format!("{generated:?}").contains("sealed_key: ["));
}
