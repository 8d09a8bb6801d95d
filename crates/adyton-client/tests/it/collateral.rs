//! The client's collateral from the network: the recorded SGX and TDX quotes, checked as a
//! server's fresh evidence would be, with collateral from the local imitation of Intel's PCS.
//!
//! A recorded quote binds report data of its own, so the check ends at the key binding, which
//! comes right after verification: `KeyBinding` means the evidence verified. Without collateral
//! the same check ends before it, at `Evidence` (collateral missing).

use std::time::Duration;

use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_attest::{AttestError, Evidence, Policy, TeeKind};
use adyton_client::attested_tls::{check_fresh_evidence_with, AttestationFailure};

use crate::pcs_imitation::{testdata, Sample, Server};

/// 2025-07-01T00:00:00Z: inside the validity of both recorded DCAP collaterals.
const FIXED_TIME: u64 = 1_751_328_000;

fn check(sample: &Sample, provider: &CollateralProvider) -> AttestationFailure {
    let (tee, policy) = if sample.tee == "sgx" {
        (TeeKind::Sgx, "[sgx]\n")
    } else {
        (TeeKind::Tdx, "[tdx]\n")
    };
    let evidence = Evidence {
        tee,
        quote: sample.quote.clone(),
        certificates: None,
    };
    let policy = Policy::from_toml(policy).unwrap();
    check_fresh_evidence_with(
        &evidence,
        b"a server's SubjectPublicKeyInfo",
        &[7; 32],
        &policy,
        provider,
        FIXED_TIME,
    )
    .unwrap_err()
}

#[test]
fn a_client_with_a_pccs_url_verifies_sgx_and_tdx_evidence_and_caches_the_collateral() {
    let mut routes = Sample::sgx().routes();
    routes.extend(Sample::tdx().routes());
    let server = Server::start_tls(routes);
    let provider = CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(
                FetchOptions::default()
                    .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
                    .with_ca_certificates_pem(testdata("tls/ca.pem")),
            ),
    )
    .unwrap();
    for sample in [Sample::sgx(), Sample::tdx()] {
        let failure = check(&sample, &provider);
        assert!(
            matches!(
                failure,
                AttestationFailure::KeyBinding(AttestError::ReportDataMismatch { .. })
            ),
            "{}: {failure:?}",
            sample.tee
        );
        let requests = server.requests().len();
        // A second connection to the same platform asks the PCS nothing.
        check(&sample, &provider);
        assert_eq!(server.requests().len(), requests);
    }

    let none = CollateralProvider::none();
    let failure = check(&Sample::sgx(), &none);
    assert!(
        matches!(
            failure,
            AttestationFailure::Evidence(AttestError::CollateralMissing { .. })
        ),
        "{failure:?}"
    );
}
