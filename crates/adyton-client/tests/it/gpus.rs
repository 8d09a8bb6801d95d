//! Composite CPU+GPU evidence in attested TLS: a policy with `[nvidia_gpu]` makes the client
//! verify every GPU attached to the server's evidence, each with its nonce derived from the CPU
//! evidence's report data; GPUs signed by the fake GPU attester, trusted through the GPU
//! verifier's test roots.

use std::sync::Arc;

use adyton_attest::attested_tls::{report_data_for_key, report_data_for_nonce};
use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::gpu::attester::{FakeGpuAttester, FakeRimSigner, GpuAttester};
use adyton_attest::gpu::{gpu_nonce, GpuVerifier};
use adyton_attest::provider::CollateralProvider;
use adyton_attest::{AttestError, Collateral, Evidence, Policy};
use adyton_client::attested_tls::{
    check_fresh_evidence_with_gpus, AttestationFailure, AttestedServerVerifier,
};
use adyton_client::ClientError;
use rcgen::{KeyPair, PublicKeyData};

use crate::attested_tls::{certificate, failure_of, ping, plain_server_config, serve_once};

const MEASUREMENT: [u8; 48] = [0x4D; 48];
/// The RIM test root's validity covers this time.
const NOW: u64 = 1_800_000_000;

/// Two fake GPUs and a verifier that trusts them, with the driver RIM of their measurements.
struct Gpus {
    attester: FakeGpuAttester,
    verifier: Arc<GpuVerifier>,
}

fn gpus() -> Gpus {
    let values: Vec<[u8; 48]> = (0u8..8).map(|i| [i; 48]).collect();
    let attester = FakeGpuAttester::new(2, values.clone()).unwrap();
    let signer = FakeRimSigner::new().unwrap();
    let rim = signer
        .rim("GH100", attester.driver_version(), &[(2, values[2])])
        .unwrap();
    let verifier =
        GpuVerifier::with_test_roots(attester.root_pem().as_bytes(), signer.root_pem().as_bytes())
            .unwrap()
            .with_rims([rim])
            .unwrap();
    Gpus {
        attester,
        verifier: Arc::new(verifier),
    }
}

fn policy(gpu_table: &str) -> Policy {
    Policy::from_toml(&format!(
        "[sim]\nmeasurement = [\"{}\"]\n{gpu_table}",
        hex::encode(MEASUREMENT)
    ))
    .unwrap()
}

/// SIM evidence over `report_data` with `count` GPUs, each answering the nonce `nonce_of` gives
/// for its index.
fn composite(
    report_data: &[u8; 64],
    gpus: &Gpus,
    count: u32,
    nonce_of: impl Fn(u32) -> [u8; 32],
) -> Evidence {
    let mut evidence = SimAttester::with_measurement([9; 32], MEASUREMENT)
        .unwrap()
        .evidence(report_data)
        .unwrap();
    for i in 0..count {
        evidence
            .gpus
            .push(gpus.attester.evidence(i, &nonce_of(i)).unwrap());
    }
    evidence
}

/// One handshake with a server presenting `evidence` (made for `key`), verified under `policy`
/// with the GPU verifier of `gpus`.
fn handshake(
    key: &KeyPair,
    evidence: &Evidence,
    policy: Policy,
    gpus: &Gpus,
) -> (Arc<AttestedServerVerifier>, std::io::Result<String>) {
    let config = plain_server_config(vec![certificate(key, Some(evidence))], key);
    let (addr, server) = serve_once(config);
    let verifier = Arc::new(
        AttestedServerVerifier::new(policy, Collateral::none())
            .with_gpu_verifier(Arc::clone(&gpus.verifier))
            .at_time(NOW),
    );
    let answer = ping(addr, &verifier);
    server.join().unwrap();
    (verifier, answer)
}

#[test]
fn a_server_with_verified_gpus_is_accepted_and_their_claims_are_kept() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let report_data = report_data_for_key(&key.subject_public_key_info());
    let evidence = composite(&report_data, &gpus, 2, |i| gpu_nonce(&report_data, i));
    let (verifier, answer) = handshake(
        &key,
        &evidence,
        policy("[nvidia_gpu]\nrequired = true\ncount = 2\nmin_driver_version = \"550\"\n"),
        &gpus,
    );
    assert_eq!(answer.unwrap(), "pong");
    let server = verifier.verified().unwrap();
    assert_eq!(server.gpus.len(), 2);
    assert_eq!(server.gpus[1].driver_version, "550.144.03");
    assert_eq!(server.gpus[1].nonce, gpu_nonce(&report_data, 1));
}

#[test]
fn a_policy_without_the_gpu_table_ignores_gpus() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let report_data = report_data_for_key(&key.subject_public_key_info());
    // GPUs that would fail (wrong nonces) are not even verified without `[nvidia_gpu]`.
    let evidence = composite(&report_data, &gpus, 1, |_| [0xAA; 32]);
    let (verifier, answer) = handshake(&key, &evidence, policy(""), &gpus);
    assert_eq!(answer.unwrap(), "pong");
    assert!(verifier.verified().unwrap().gpus.is_empty());
}

#[test]
fn a_policy_requiring_gpus_refuses_a_server_without_them() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let report_data = report_data_for_key(&key.subject_public_key_info());
    let evidence = composite(&report_data, &gpus, 0, |i| gpu_nonce(&report_data, i));
    let (verifier, answer) = handshake(
        &key,
        &evidence,
        policy("[nvidia_gpu]\nrequired = true\n"),
        &gpus,
    );
    let err = answer.unwrap_err();
    assert!(verifier.verified().is_none());
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Gpus(AttestError::PolicyDenied { field, .. })
                if field == "nvidia_gpu.required"
        ),
        "{failure}"
    );
    // Callers of ServerClient see a policy refusal.
    assert!(
        matches!(ClientError::from(failure), ClientError::Policy { .. }),
        "{failure}"
    );

    // One GPU where the policy counts two.
    let evidence = composite(&report_data, &gpus, 1, |i| gpu_nonce(&report_data, i));
    let (_, answer) = handshake(&key, &evidence, policy("[nvidia_gpu]\ncount = 2\n"), &gpus);
    let err = answer.unwrap_err();
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Gpus(AttestError::PolicyDenied { field, .. })
                if field == "nvidia_gpu.count"
        ),
        "{failure}"
    );
}

#[test]
fn a_gpu_with_the_wrong_nonce_is_refused() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let report_data = report_data_for_key(&key.subject_public_key_info());
    let gpu_policy = "[nvidia_gpu]\n";

    // GPU 1 answers GPU 0's nonce.
    let evidence = composite(&report_data, &gpus, 2, |_| gpu_nonce(&report_data, 0));
    let (verifier, answer) = handshake(&key, &evidence, policy(gpu_policy), &gpus);
    let err = answer.unwrap_err();
    assert!(verifier.verified().is_none());
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Gpus(AttestError::ReportDataMismatch { .. })
        ),
        "{failure}"
    );
    assert!(
        matches!(ClientError::from(failure), ClientError::Attestation { .. }),
        "{failure}"
    );

    // GPUs answering the nonces of other CPU evidence (replayed from another server).
    let other = [0x11; 64];
    let evidence = composite(&report_data, &gpus, 2, |i| gpu_nonce(&other, i));
    let (_, answer) = handshake(&key, &evidence, policy(gpu_policy), &gpus);
    let failure_text = failure_of(&answer.unwrap_err()).to_string();
    assert!(failure_text.contains("GPUs are refused"), "{failure_text}");
}

#[test]
fn gpus_signed_under_another_root_are_refused() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let report_data = report_data_for_key(&key.subject_public_key_info());
    let evidence = composite(&report_data, &gpus, 1, |i| gpu_nonce(&report_data, i));
    // NVIDIA's pinned roots (the default GPU verifier) do not know the fake GPU's root.
    let config = plain_server_config(vec![certificate(&key, Some(&evidence))], &key);
    let (addr, server) = serve_once(config);
    let verifier = Arc::new(
        AttestedServerVerifier::new(policy("[nvidia_gpu]\n"), Collateral::none()).at_time(NOW),
    );
    let err = ping(addr, &verifier).unwrap_err();
    server.join().unwrap();
    let failure = failure_of(&err);
    assert!(
        matches!(
            failure,
            AttestationFailure::Gpus(AttestError::CertificateChain { .. })
        ),
        "{failure}"
    );
}

#[test]
fn fresh_evidence_checks_the_gpus_against_the_fresh_report_data() {
    let gpus = gpus();
    let key = KeyPair::generate().unwrap();
    let spki = key.subject_public_key_info();
    let nonce = [0x5A; 32];
    let report_data = report_data_for_nonce(&spki, &nonce).unwrap();
    let provider = CollateralProvider::none();
    let policy = policy("[nvidia_gpu]\nrequired = true\n");

    let evidence = composite(&report_data, &gpus, 2, |i| gpu_nonce(&report_data, i));
    let (_, gpu_claims) = check_fresh_evidence_with_gpus(
        &evidence,
        &spki,
        &nonce,
        &policy,
        &provider,
        None,
        Some(&gpus.verifier),
        NOW,
    )
    .unwrap();
    assert_eq!(gpu_claims.len(), 2);

    // GPUs bound to the certificate's report data, not to this nonce: replayed, refused.
    let stale = report_data_for_key(&spki);
    let evidence = composite(&report_data, &gpus, 2, |i| gpu_nonce(&stale, i));
    let refused = check_fresh_evidence_with_gpus(
        &evidence,
        &spki,
        &nonce,
        &policy,
        &provider,
        None,
        Some(&gpus.verifier),
        NOW,
    );
    assert!(
        matches!(
            refused,
            Err(AttestationFailure::Gpus(
                AttestError::ReportDataMismatch { .. }
            ))
        ),
        "{refused:?}"
    );
}
