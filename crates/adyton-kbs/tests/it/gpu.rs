//! Composite CPU+GPU transfers: SIM CPU evidence with NVIDIA GPU reports attached, each bound to
//! the CPU evidence's report data. The GPUs are fakes signing under a test root (recorded
//! reports cannot answer a nonce of the test's choosing); the broker trusts that root through
//! `GpuVerifier::with_test_roots`, which production code never calls.

use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::gpu::attester::{FakeGpuAttester, FakeRimSigner, GpuAttester};
use adyton_attest::gpu::{gpu_nonce, GpuEvidence, GpuVerifier};
use adyton_attest::{AttestError, Collateral, TeeKind};
use adyton_envelope::wrap::TeeKeyPair;
use adyton_kbs::http::ApiError;
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker, TransferDecision, TransferRequest};
use adyton_kbs::KbsError;
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const MODEL_KEY: [u8; 32] = [0x5A; 32];
const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn gpu_measurements() -> Vec<[u8; 48]> {
    (0u8..64).map(|i| [i ^ 0xA5; 48]).collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
    key_id: String,
    cpu: SimAttester,
    gpus: FakeGpuAttester,
    tee_key: TeeKeyPair,
}

/// A broker whose key's SIM policy carries `gpu_table` (none: no `nvidia_gpu`), trusting the
/// fake GPUs' root and a driver RIM (RIM index i = the fake's block i + 1) signed under a test
/// RIM root.
fn fixture(gpu_table: Option<Value>) -> Fixture {
    fixture_with(gpu_table, gpu_measurements())
}

/// As [`fixture`], with the fake GPUs reporting `measurements` (the RIM stays the same).
fn fixture_with(gpu_table: Option<Value>, measurements: Vec<[u8; 48]>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let gpus = FakeGpuAttester::new(2, measurements).unwrap();
    let signer = FakeRimSigner::new().unwrap();
    let values = gpu_measurements();
    let reference: Vec<(u8, [u8; 48])> = (1u8..12).map(|i| (i, values[usize::from(i)])).collect();
    let rim = signer
        .rim("GH100", gpus.driver_version(), &reference)
        .unwrap();
    let verifier =
        GpuVerifier::with_test_roots(gpus.root_pem().as_bytes(), signer.root_pem().as_bytes())
            .unwrap()
            .with_rims([rim])
            .unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none())
        .unwrap()
        .with_gpu_verifier(verifier);
    let mut table = json!({ "measurement": [hex::encode(MEASUREMENT)] });
    if let Some(gpu_table) = gpu_table {
        table["nvidia_gpu"] = gpu_table;
    }
    let policy = broker.create_policy(TeeKind::Sim, table, NOW).unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    Fixture {
        _dir: dir,
        broker,
        key_id: key.id,
        cpu: SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap(),
        gpus,
        tee_key: TeeKeyPair::generate(2048).unwrap(),
    }
}

impl Fixture {
    /// A request whose CPU evidence binds the TEE key, with `gpus(report_data)` attached.
    fn request(&self, gpus: impl Fn(&[u8; 64]) -> Vec<GpuEvidence>) -> TransferRequest {
        let user_data = self.tee_key.public_key().unwrap().spki_der().to_vec();
        let bound = expected_report_data(&user_data, None);
        let mut evidence = self.cpu.evidence(&bound).unwrap();
        evidence.gpus = gpus(&bound);
        TransferRequest {
            attestation_type: "SIM".into(),
            quote: evidence.to_json().into_bytes(),
            user_data,
            nonce: None,
            collateral: None,
        }
    }

    /// GPU i's evidence over its derived nonce, for i in 0..n.
    fn bound_gpus(&self, report_data: &[u8; 64], n: u32) -> Vec<GpuEvidence> {
        (0..n)
            .map(|i| self.gpus.evidence(i, &gpu_nonce(report_data, i)).unwrap())
            .collect()
    }

    fn refused(&self, request: &TransferRequest) -> (KbsError, TransferDecision) {
        let (outcome, decision) = self.broker.transfer(&self.key_id, request, NOW);
        assert!(!decision.allowed);
        match outcome {
            Ok(_) => panic!("the key was released"),
            Err(e) => (e, decision),
        }
    }
}

fn status(err: KbsError) -> u16 {
    ApiError::from(err).status().as_u16()
}

#[test]
fn cpu_and_gpus_that_all_pass_get_the_key() {
    let f = fixture(Some(json!({ "required": true, "count": 2 })));
    let request = f.request(|rd| f.bound_gpus(rd, 2));
    let (outcome, decision) = f.broker.transfer(&f.key_id, &request, NOW);
    let (wrapped, _) = outcome.unwrap();
    assert_eq!(
        f.tee_key.unwrap_transfer(&wrapped).unwrap().expose_secret(),
        &MODEL_KEY
    );
    assert!(decision.allowed);
    assert_eq!(decision.gpus.len(), 2);
    assert!(decision.gpus.iter().all(|g| g.verified));
    let line = serde_json::to_string(&decision).unwrap();
    assert!(
        line.contains("\"gpus\":[{\"index\":0,\"verified\":true,\"driver_version\":\"550.144.03\""),
        "{line}"
    );
    assert!(line.contains("\"index\":1,\"verified\":true"), "{line}");
}

#[test]
fn one_gpu_failing_refuses_the_key_with_403_and_the_audit_names_it() {
    let f = fixture(Some(json!({ "count": 2 })));
    // GPU 1 answers GPU 0's nonce: its report is genuine but bound to another place.
    let request = f.request(|rd| {
        let mut gpus = f.bound_gpus(rd, 2);
        gpus[1] = f.gpus.evidence(1, &gpu_nonce(rd, 0)).unwrap();
        gpus
    });
    let (err, decision) = f.refused(&request);
    assert!(
        matches!(
            err,
            KbsError::Attestation(AttestError::ReportDataMismatch { .. })
        ),
        "{err:?}"
    );
    assert_eq!(status(err), 403);
    assert!(decision.gpus[0].verified);
    assert!(!decision.gpus[1].verified);
    let line = serde_json::to_string(&decision).unwrap();
    assert!(
        line.contains("\"index\":1,\"verified\":false,\"reason\":\"report data mismatch"),
        "{line}"
    );
}

#[test]
fn a_gpu_whose_measurements_differ_from_the_rim_is_refused() {
    let mut changed = gpu_measurements();
    changed[5][0] ^= 1; // block 6, RIM index 5
    let f = fixture_with(Some(json!({})), changed);
    let (err, decision) = f.refused(&f.request(|rd| f.bound_gpus(rd, 2)));
    match &err {
        KbsError::Attestation(AttestError::GpuMeasurementMismatch { indices }) => {
            assert_eq!(indices, "5 (GPU 0)")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(err), 403);
    assert!(decision.gpus.iter().all(|g| !g.verified));
}

#[test]
fn a_gpu_under_another_root_is_refused() {
    let f = fixture(Some(json!({})));
    let other = FakeGpuAttester::new(1, gpu_measurements()).unwrap();
    let request = f.request(|rd| vec![other.evidence(0, &gpu_nonce(rd, 0)).unwrap()]);
    let (err, _) = f.refused(&request);
    assert!(
        matches!(
            err,
            KbsError::Attestation(AttestError::CertificateChain { .. })
        ),
        "{err:?}"
    );
    assert_eq!(status(err), 403);
}

#[test]
fn a_missing_gpu_is_refused_when_count_or_required_says_so() {
    let f = fixture(Some(json!({ "count": 2 })));
    let (err, _) = f.refused(&f.request(|rd| f.bound_gpus(rd, 1)));
    match &err {
        KbsError::Attestation(AttestError::PolicyDenied { field, .. }) => {
            assert_eq!(field, "nvidia_gpu.count")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(err), 403);

    let f = fixture(Some(json!({ "required": true })));
    let (err, _) = f.refused(&f.request(|_| Vec::new()));
    match &err {
        KbsError::Attestation(AttestError::PolicyDenied { field, .. }) => {
            assert_eq!(field, "nvidia_gpu.required")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_policy_versions_and_rim_ids_are_enforced() {
    for (table, field) in [
        (
            json!({ "min_driver_version": "550.145" }),
            "nvidia_gpu.min_driver_version (GPU 0)",
        ),
        (
            json!({ "min_vbios_version": "96.00.5F" }),
            "nvidia_gpu.min_vbios_version (GPU 0)",
        ),
        (
            json!({ "allowed_rim_ids": ["NV_GPU_DRIVER_GH100_535.86.09"] }),
            "nvidia_gpu.allowed_rim_ids (GPU 0)",
        ),
    ] {
        let f = fixture(Some(table));
        let (err, _) = f.refused(&f.request(|rd| f.bound_gpus(rd, 1)));
        match &err {
            KbsError::Attestation(AttestError::PolicyDenied { field: f, .. }) => {
                assert_eq!(f, field)
            }
            other => panic!("{other:?}"),
        }
    }
    // The same GPU passes lower minimums and its own RIM id.
    let f = fixture(Some(json!({
        "min_driver_version": "550.144.3",
        "min_vbios_version": "96.00.5E.00.01",
        "allowed_rim_ids": ["NV_GPU_DRIVER_GH100_550.144.03"],
    })));
    let (outcome, _) = f
        .broker
        .transfer(&f.key_id, &f.request(|rd| f.bound_gpus(rd, 1)), NOW);
    outcome.unwrap();
}

#[test]
fn a_recorded_hopper_report_cannot_bind_and_is_refused_at_its_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    // NVIDIA's production roots: the recorded chain and signature verify; the nonce cannot.
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let policy = broker
        .create_policy(
            TeeKind::Sim,
            json!({ "measurement": [hex::encode(MEASUREMENT)], "nvidia_gpu": { "required": true } }),
            NOW,
        )
        .unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    let testdata =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/nvidia-gpu");
    let report = hex::decode(
        std::fs::read_to_string(testdata.join("hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let recorded = GpuEvidence {
        report,
        certificates: std::fs::read(testdata.join("hopperCertChain.txt")).unwrap(),
        rims: Vec::new(),
    };
    let cpu = SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap();
    let tee_key = TeeKeyPair::generate(2048).unwrap();
    let user_data = tee_key.public_key().unwrap().spki_der().to_vec();
    let mut evidence = cpu
        .evidence(&expected_report_data(&user_data, None))
        .unwrap();
    evidence.gpus = vec![recorded];
    let request = TransferRequest {
        attestation_type: "SIM".into(),
        quote: evidence.to_json().into_bytes(),
        user_data,
        nonce: None,
        collateral: None,
    };
    // 1_800_000_000 is within the recorded chain's validity (to 9999).
    let (outcome, decision) = broker.transfer(&key.id, &request, NOW);
    let err = outcome.err().unwrap();
    assert!(
        matches!(
            err,
            KbsError::Attestation(AttestError::ReportDataMismatch { .. })
        ),
        "{err:?}"
    );
    assert!(!decision.allowed);
}

#[test]
fn without_an_nvidia_gpu_table_gpus_are_ignored() {
    let f = fixture(None);
    // A GPU bound to nothing in particular: it is not looked at.
    let request = f.request(|_| vec![f.gpus.evidence(0, &[0; 32]).unwrap()]);
    let (outcome, decision) = f.broker.transfer(&f.key_id, &request, NOW);
    outcome.unwrap();
    assert!(decision.gpus.is_empty());
    assert!(!serde_json::to_string(&decision).unwrap().contains("gpus"));
}
