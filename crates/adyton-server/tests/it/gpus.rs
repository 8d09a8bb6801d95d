//! A server with GPUs: its attester is the TEE's with the GPUs' (`CompositeAttester`, as `serve`
//! makes it for `gpus = "nvml"`), so the certificate's evidence and fresh evidence carry one
//! report per GPU, each over the nonce derived from that evidence's report data. GPUs signed by
//! the fake GPU attester, trusted through the GPU verifier's test roots.

use std::sync::Arc;

use adyton_attest::attested_tls::{
    evidence_from_certificate, report_data_for_key, report_data_for_nonce,
};
use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::composite::{verify_composite, CompositeAttester};
use adyton_attest::gpu::attester::{FakeGpuAttester, FakeRimSigner};
use adyton_attest::gpu::GpuVerifier;
use adyton_attest::{AttestError, Collateral, Policy};
use adyton_server::tls::AttestedIdentity;

const MEASUREMENT: [u8; 48] = [0x4D; 48];
/// Inside the fake GPU and RIM roots' validity.
const NOW: u64 = 1_800_000_000;

#[test]
fn the_servers_evidence_carries_every_gpus_report_bound_to_it() {
    let values: Vec<[u8; 48]> = (0u8..8).map(|i| [i; 48]).collect();
    let gpus = FakeGpuAttester::new(2, values.clone()).unwrap();
    let signer = FakeRimSigner::new().unwrap();
    let rim = signer
        .rim("GH100", gpus.driver_version(), &[(2, values[2])])
        .unwrap();
    let verifier =
        GpuVerifier::with_test_roots(gpus.root_pem().as_bytes(), signer.root_pem().as_bytes())
            .unwrap()
            .with_rims([rim])
            .unwrap();
    let cpu = Arc::new(SimAttester::with_measurement([9; 32], MEASUREMENT).unwrap());
    let attester = CompositeAttester::new(cpu, Arc::new(gpus));
    let policy = |gpu_table: &str| {
        Policy::from_toml(&format!(
            "[sim]\nmeasurement = [\"{}\"]\n[nvidia_gpu]\n{gpu_table}",
            hex::encode(MEASUREMENT)
        ))
        .unwrap()
    };

    // The certificate's evidence: over the certificate's key, with both GPUs.
    let identity = AttestedIdentity::generate(&attester).unwrap();
    let (evidence, spki) = evidence_from_certificate(identity.certificate_der()).unwrap();
    assert_eq!(evidence.gpus.len(), 2);
    let claims = verify_composite(
        &evidence,
        &Collateral::none(),
        &verifier,
        &policy("required = true\ncount = 2\n"),
        &report_data_for_key(&spki),
        NOW,
    )
    .unwrap();
    assert_eq!(claims.gpus.len(), 2);
    // The policy's count decides: these two GPUs are not the three it asks for.
    assert!(matches!(
        verify_composite(
            &evidence,
            &Collateral::none(),
            &verifier,
            &policy("count = 3\n"),
            &report_data_for_key(&spki),
            NOW,
        ),
        Err(AttestError::PolicyDenied { .. })
    ));

    // Fresh evidence over a client's nonce: the GPUs answer nonces derived from it, so the
    // certificate's GPU reports do not pass for fresh ones.
    let nonce = [0x5a; 32];
    let fresh = identity.fresh_evidence(&attester, &nonce).unwrap();
    let expected = report_data_for_nonce(&spki, &nonce).unwrap();
    verify_composite(
        &fresh,
        &Collateral::none(),
        &verifier,
        &policy("count = 2\n"),
        &expected,
        NOW,
    )
    .unwrap();
    let mut replayed = fresh.clone();
    replayed.gpus = evidence.gpus.clone();
    assert!(verify_composite(
        &replayed,
        &Collateral::none(),
        &verifier,
        &policy("count = 2\n"),
        &expected,
        NOW,
    )
    .is_err());
    assert_eq!(attester.tee(), adyton_attest::TeeKind::Sim);
}
