//! Tests: the collateral provider against the local imitation of the PCS and KDS
//! (`pcs_imitation`), with the recorded SGX, TDX and SNP samples at fixed times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adyton_attest::collateral::Collateral;
use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralOrigin, CollateralProvider, ProviderConfig};
use adyton_attest::{AttestError, Evidence, TeeKind};

use crate::pcs_imitation::{kds_routes, milan_report, testdata, Reply, Sample, Server};

/// 2025-07-01T00:00:00Z: inside the validity of both recorded DCAP collaterals.
const FIXED_TIME: u64 = 1_751_328_000;
/// The TCB info, QE identity and PCK CRL of the SGX sample expire at 2025-07-19T10:01:18Z at the
/// earliest; this is a day later.
const A_DAY_AFTER_EXPIRY: u64 = 1_752_919_278 + 86_400;
/// Inside the Milan VCEK's validity (2023-04-03 to 2030-04-03): 2025-01-01.
const SNP_TIME: u64 = 1_735_689_600;

fn evidence(sample: &Sample) -> Evidence {
    let tee = if sample.tee == "sgx" {
        TeeKind::Sgx
    } else {
        TeeKind::Tdx
    };
    Evidence {
        tee,
        quote: sample.quote.clone(),
        certificates: None,
        gpus: Vec::new(),
    }
}

fn options() -> FetchOptions {
    FetchOptions::default().with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
}

/// A provider whose one source is the PCCS at `server`.
fn pccs_provider(server: &Server) -> CollateralProvider {
    CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(options()),
    )
    .unwrap()
}

fn both_samples_routes() -> HashMap<String, Reply> {
    let mut routes = Sample::sgx().routes();
    routes.extend(Sample::tdx().routes());
    routes
}

#[test]
fn sgx_and_tdx_collateral_comes_from_one_pccs_keyed_by_fmspc_then_from_the_cache() {
    let server = Server::start(both_samples_routes());
    let provider = pccs_provider(&server);

    for (sample, fmspc) in [
        (Sample::sgx(), "00A067110000/processor"),
        (Sample::tdx(), "B0C06F000000/platform"),
    ] {
        let (claims, used) = provider.verify(&evidence(&sample), FIXED_TIME).unwrap();
        let key = used.key.clone().unwrap();
        assert_eq!(key.platform, fmspc);
        assert_eq!(key.tee, claims.tee);
        assert_eq!(used.origin, CollateralOrigin::Network);
        assert_eq!(used.source, server.url());
        assert_eq!(used.fetched_at, Some(FIXED_TIME));
        assert_eq!(used.issued_at, claims.collateral_issued_at);
        assert_eq!(used.expires_at, claims.collateral_expires_at);
        assert!(used.issued_at.is_some() && used.expires_at.is_some());
        assert_eq!(claims.collateral_grace_secs, None);

        let (_, again) = provider
            .verify(&evidence(&sample), FIXED_TIME + 60)
            .unwrap();
        assert_eq!(again.origin, CollateralOrigin::Cache);
        assert_eq!(again.fetched_at, Some(FIXED_TIME));
    }
    // The root CA CRL is shared; everything else once per platform.
    assert_eq!(server.requests().len(), 7, "{:?}", server.requests());
    let stats = provider.stats();
    assert_eq!((stats.network, stats.cache, stats.failures), (2, 2, 0));
}

#[test]
fn concurrent_verifications_of_one_platform_fetch_once() {
    let sample = Sample::sgx();
    let server = Server::start(sample.routes());
    // Slow enough that all threads ask while the first fetch is still under way.
    server.slow_down(Duration::from_millis(150));
    let provider = Arc::new(
        CollateralProvider::new(
            ProviderConfig::new()
                .with_pccs_url(server.url())
                .with_fetch_options(options()),
        )
        .unwrap(),
    );
    let evidence = Arc::new(evidence(&sample));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (provider, evidence) = (provider.clone(), evidence.clone());
            std::thread::spawn(move || provider.verify(&evidence, FIXED_TIME).map(|_| ()))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    for path in sample.paths() {
        assert_eq!(server.count(&path), 1, "{path}: {:?}", server.requests());
    }
    let stats = provider.stats();
    assert_eq!(stats.network + stats.cache, 8);
    assert_eq!(stats.network, 1);
}

#[test]
fn a_pccs_that_never_answers_fails_the_verification_within_the_timeout() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    routes.insert(sample.tcb_path(), Reply::Hang);
    let server = Server::start(routes);
    let provider = CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(
                FetchOptions::default()
                    .with_timeouts(Duration::from_secs(1), Duration::from_millis(300)),
            ),
    )
    .unwrap();

    let started = Instant::now();
    let err = provider.verify(&evidence(&sample), FIXED_TIME).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // No verdict on the evidence: the source is unreachable and nothing is cached.
    let AttestError::CollateralUnavailable { what } = err else {
        panic!("expected CollateralUnavailable, got {err:?}");
    };
    assert!(what.contains("00A067110000"), "{what}");
    assert!(what.contains("none cached"), "{what}");
    assert!(what.to_lowercase().contains("timeout"), "{what}");
    assert_eq!(provider.stats().failures, 1);
}

#[test]
fn a_stopped_pccs_leaves_the_cached_copy_in_use_while_valid_and_refused_after() {
    let sample = Sample::sgx();
    let cache = tempfile::tempdir().unwrap();
    let server = Server::start(sample.routes());
    let url = server.url();
    let config = ProviderConfig::new()
        .with_pccs_url(&url)
        .with_fetch_options(options().with_cache_dir(cache.path()));
    let provider = CollateralProvider::new(config.clone()).unwrap();
    provider.verify(&evidence(&sample), FIXED_TIME).unwrap();
    drop(server);

    // Two days later the entries are past their one-day maximum age: the refresh fails, and
    // the still valid copy is used.
    let later = FIXED_TIME + 2 * 86_400;
    let (claims, used) = provider.verify(&evidence(&sample), later).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Stale);
    assert_eq!(claims.collateral_grace_secs, None);
    // So does a restarted provider, from the cache directory.
    let restarted = CollateralProvider::new(config.clone()).unwrap();
    let (_, used) = restarted.verify(&evidence(&sample), later).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Stale);

    // Once it has expired, it is refused, and the reason says so and where it came from. The
    // source being down, that is no verdict on the evidence: the source is unreachable, with no
    // valid copy cached.
    let err = provider
        .verify(&evidence(&sample), A_DAY_AFTER_EXPIRY)
        .unwrap_err();
    let AttestError::CollateralUnavailable { what } = err else {
        panic!("expected CollateralUnavailable, got {err:?}");
    };
    assert!(what.contains(&url), "{what}");
    assert!(what.contains("00A067110000"), "{what}");
    assert!(what.contains("no valid collateral cached"), "{what}");
    assert!(what.contains("expired"), "{what}");

    // With a grace period the operator set, it is accepted within it, and the claims say so.
    let lenient =
        CollateralProvider::new(config.with_grace_period(Some(Duration::from_secs(2 * 86_400))))
            .unwrap();
    let (claims, used) = lenient
        .verify(&evidence(&sample), A_DAY_AFTER_EXPIRY)
        .unwrap();
    assert_eq!(claims.collateral_grace_secs, Some(86_400));
    assert_eq!(used.grace_secs, Some(86_400));
    assert_eq!(lenient.stats().grace, 1);
    // Beyond it, refused.
    let err = lenient
        .verify(&evidence(&sample), A_DAY_AFTER_EXPIRY + 2 * 86_400)
        .unwrap_err();
    let AttestError::CollateralUnavailable { what } = err else {
        panic!("expected CollateralUnavailable, got {err:?}");
    };
    assert!(what.contains("beyond the grace period"), "{what}");
}

#[test]
fn expired_collateral_from_a_source_that_answers_or_from_a_bundle_is_a_verdict() {
    let sample = Sample::sgx();
    let server = Server::start(sample.routes());
    let from_source = pccs_provider(&server);
    let bundle = Collateral::from_json(&testdata("sgx_quote_collateral.json")).unwrap();
    let from_bundle = CollateralProvider::from_collateral(bundle, "sgx.json");
    for provider in [from_source, from_bundle] {
        let err = provider
            .verify(&evidence(&sample), A_DAY_AFTER_EXPIRY)
            .unwrap_err();
        assert!(
            matches!(err, AttestError::CollateralExpired { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn a_bundle_alone_works_as_before_and_is_the_fallback_when_the_pccs_fails() {
    let sample = Sample::tdx();
    let bundle = Collateral::from_json(&testdata("tdx_quote_collateral.json")).unwrap();
    let provider = CollateralProvider::from_collateral(bundle.clone(), "tdx.json");
    let (_, used) = provider.verify(&evidence(&sample), FIXED_TIME).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Bundle);
    assert_eq!(used.source, "tdx.json");
    assert_eq!(used.key.unwrap().platform, "B0C06F000000/platform");

    let mut routes = sample.routes();
    routes.insert(sample.tcb_path(), Reply::Status(503));
    let server = Server::start(routes);
    let both = CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_bundle(bundle, "tdx.json")
            .with_fetch_options(options()),
    )
    .unwrap();
    let (_, used) = both.verify(&evidence(&sample), FIXED_TIME).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Bundle);

    // No source at all: refused with what is missing.
    let err = CollateralProvider::none()
        .verify(&evidence(&sample), FIXED_TIME)
        .unwrap_err();
    assert!(
        matches!(err, AttestError::CollateralMissing { .. }),
        "{err:?}"
    );
}

#[test]
fn snp_vceks_come_from_kds_by_chip_and_tcb_unless_the_evidence_carries_one() {
    let report = milan_report();
    let chip_id = hex::encode(&report[0x1A0..0x1E0]);
    let vcek_path = format!("/vcek/v1/Milan/{chip_id}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115");
    let server = Server::start(kds_routes(
        "Milan",
        &vcek_path,
        "vcek_milan.der",
        "cert_chain_milan",
    ));
    let provider = CollateralProvider::new(
        ProviderConfig::new()
            .with_kds_url(server.url())
            .with_fetch_options(options()),
    )
    .unwrap();
    let snp = Evidence {
        tee: TeeKind::Snp,
        quote: report.clone(),
        certificates: None,
        gpus: Vec::new(),
    };
    let (claims, used) = provider.verify(&snp, SNP_TIME).unwrap();
    assert_eq!(claims.tee, TeeKind::Snp);
    assert_eq!(used.origin, CollateralOrigin::Network);
    assert_eq!(
        used.key.unwrap().platform,
        format!("{chip_id}/0300000000000873")
    );
    assert_eq!(server.requests().len(), 2);

    // Evidence with its VCEK in the certificate table needs no KDS.
    let carried = Evidence {
        certificates: Some(crate::snp::cert_table(&[(
            crate::snp::GUID_VCEK,
            &testdata("vcek_milan.der"),
        )])),
        ..snp
    };
    let (_, used) = provider.verify(&carried, SNP_TIME).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Evidence);
    assert_eq!(server.requests().len(), 2);

    // A KDS that does not know the chip: refused, naming the chip.
    let empty = Server::start(HashMap::new());
    let unknown = CollateralProvider::new(
        ProviderConfig::new()
            .with_kds_url(empty.url())
            .with_fetch_options(options()),
    )
    .unwrap();
    let err = unknown
        .verify(
            &Evidence {
                tee: TeeKind::Snp,
                quote: report,
                certificates: None,
                gpus: Vec::new(),
            },
            SNP_TIME,
        )
        .unwrap_err();
    let AttestError::CollateralMissing { what } = err else {
        panic!("expected CollateralMissing, got {err:?}");
    };
    assert!(what.contains(&chip_id) && what.contains("404"), "{what}");
}

#[test]
fn https_with_a_private_ca_serves_the_provider() {
    let sample = Sample::sgx();
    let server = Server::start_tls(sample.routes());
    let provider = CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(options().with_ca_certificates_pem(testdata("tls/ca.pem"))),
    )
    .unwrap();
    let (_, used) = provider.verify(&evidence(&sample), FIXED_TIME).unwrap();
    assert_eq!(used.origin, CollateralOrigin::Network);
    assert!(used.source.starts_with("https://"));
}
