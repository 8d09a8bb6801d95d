//! Tests: the PCCS and KDS client against the local imitation of the PCS and KDS
//! (`pcs_imitation`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use adyton_attest::collateral::{Collateral, MAX_COLLATERAL_LEN};
use adyton_attest::pccs::{self, FetchOptions, KdsClient, PccsClient, PckCa, SnpProduct};
use adyton_attest::{AttestError, TeeKind};
use dcap_qvl::QuoteCollateralV3;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::pcs_imitation::{kds_routes, milan_report, testdata, Reply, Sample, Server};

/// 2025-07-01T00:00:00Z: inside the validity of every item of both recorded collaterals (TCB
/// info and QE identity 2025-06-19 to 2025-07-19, PCK CRLs 2025-06-19 to 2025-07-19, root CA CRL
/// 2025-03-20 to 2026-04-03).
const FIXED_TIME: u64 = 1_751_328_000;
/// 2025-07-20T00:00:00Z: after the TCB info's and PCK CRL's nextUpdate.
const AFTER_NEXT_UPDATE: u64 = 1_752_969_600;

fn assert_same_collateral(fetched: &QuoteCollateralV3, recorded: &QuoteCollateralV3) {
    assert_eq!(fetched.pck_crl_issuer_chain, recorded.pck_crl_issuer_chain);
    assert_eq!(fetched.root_ca_crl, recorded.root_ca_crl);
    assert_eq!(fetched.pck_crl, recorded.pck_crl);
    assert_eq!(
        fetched.tcb_info_issuer_chain,
        recorded.tcb_info_issuer_chain
    );
    assert_eq!(fetched.tcb_info, recorded.tcb_info);
    assert_eq!(fetched.tcb_info_signature, recorded.tcb_info_signature);
    assert_eq!(
        fetched.qe_identity_issuer_chain,
        recorded.qe_identity_issuer_chain
    );
    assert_eq!(fetched.qe_identity, recorded.qe_identity);
    assert_eq!(
        fetched.qe_identity_signature,
        recorded.qe_identity_signature
    );
    assert_eq!(
        fetched.pck_certificate_chain,
        recorded.pck_certificate_chain
    );
    assert_eq!(fetched, recorded);
}

fn missing_what(err: AttestError) -> String {
    match err {
        AttestError::CollateralMissing { what } => what,
        other => panic!("expected CollateralMissing, got {other:?}"),
    }
}

fn unreachable_what(err: AttestError) -> String {
    match err {
        AttestError::CollateralUnavailable { what } => what,
        other => panic!("expected CollateralUnavailable, got {other:?}"),
    }
}

/// Options for tests that must fail fast.
fn quick() -> FetchOptions {
    FetchOptions::default().with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------------
// DCAP.

#[test]
fn sgx_and_tdx_collateral_equals_the_recorded_and_verifies() {
    for sample in [Sample::sgx(), Sample::tdx()] {
        let server = Server::start(sample.routes());
        // The TDX client is given the URL as Intel's sgx_default_qcnl.conf writes it.
        let base = if sample.tee == "tdx" {
            format!("{}/sgx/certification/v4/", server.url())
        } else {
            server.url()
        };
        let client = PccsClient::new(&base, quick()).unwrap();
        let fetched = client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap();

        assert_same_collateral(&fetched, &sample.recorded);
        assert_eq!(server.requests(), sample.paths(), "{}", sample.tee);
        let report = dcap_qvl::verify::verify(&sample.quote, &fetched, FIXED_TIME)
            .unwrap_or_else(|e| panic!("{}: {e:#}", sample.tee));
        assert!(!report.status.is_empty());
    }
}

#[test]
fn second_fetch_comes_from_memory_and_the_disk_cache_survives_a_restart() {
    let sample = Sample::sgx();
    let cache = tempfile::tempdir().unwrap();
    let options = quick().with_cache_dir(cache.path());
    let server = Server::start(sample.routes());
    let client = PccsClient::new(&server.url(), options.clone()).unwrap();

    let first = client
        .dcap_collateral_at(&sample.quote, FIXED_TIME)
        .unwrap();
    assert_eq!(server.requests().len(), 4);
    let second = client
        .dcap_collateral_at(&sample.quote, FIXED_TIME + 3600)
        .unwrap();
    assert_eq!(
        server.requests().len(),
        4,
        "the second fetch went to the server"
    );
    assert_eq!(first, second);
    // One file per URL, and no temporary file left behind.
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files
        .iter()
        .all(|name| name.ends_with(".json") && !name.starts_with('.')));

    let url = server.url();
    drop(server);
    let restarted = PccsClient::new(&url, options).unwrap();
    let offline = restarted
        .dcap_collateral_at(&sample.quote, FIXED_TIME + 7200)
        .unwrap();
    assert_same_collateral(&offline, &sample.recorded);
    dcap_qvl::verify::verify(&sample.quote, &offline, FIXED_TIME).unwrap();

    // Without the cache directory, the stopped server is an error that names the URL.
    let uncached = PccsClient::new(&url, quick()).unwrap();
    let what = unreachable_what(
        uncached
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(
        what.contains(&format!("{url}{}", sample.pck_crl_path())),
        "{what}"
    );
}

#[test]
fn stale_entries_are_refetched_and_used_only_when_the_refresh_fails_and_that_is_allowed() {
    let sample = Sample::sgx();
    let cache = tempfile::tempdir().unwrap();
    let server = Server::start(sample.routes());
    let url = server.url();
    let options = quick().with_cache_dir(cache.path());
    let client = PccsClient::new(&url, options.clone()).unwrap();
    client
        .dcap_collateral_at(&sample.quote, FIXED_TIME)
        .unwrap();
    assert_eq!(server.requests().len(), 4);

    // Past nextUpdate (and past the default one-day max age), everything is fetched again.
    client
        .dcap_collateral_at(&sample.quote, AFTER_NEXT_UPDATE)
        .unwrap();
    assert_eq!(server.requests().len(), 8);

    // Within nextUpdate but past the max age, too.
    let capped =
        PccsClient::new(&url, quick().with_max_age(Some(Duration::from_secs(60)))).unwrap();
    capped
        .dcap_collateral_at(&sample.quote, FIXED_TIME)
        .unwrap();
    capped
        .dcap_collateral_at(&sample.quote, FIXED_TIME + 61)
        .unwrap();
    assert_eq!(server.requests().len(), 16);
    drop(server);

    // Offline and stale: the last collateral is used (the verifier then judges its dates)...
    let offline = PccsClient::new(&url, options.clone()).unwrap();
    let stale = offline
        .dcap_collateral_at(&sample.quote, AFTER_NEXT_UPDATE + 86_400 * 2)
        .unwrap();
    assert_same_collateral(&stale, &sample.recorded);
    assert!(
        dcap_qvl::verify::verify(&sample.quote, &stale, AFTER_NEXT_UPDATE + 86_400 * 2).is_err(),
        "expired collateral must not verify"
    );
    // ...unless that is turned off.
    let strict = PccsClient::new(&url, options.with_stale_on_error(false)).unwrap();
    let what = unreachable_what(
        strict
            .dcap_collateral_at(&sample.quote, AFTER_NEXT_UPDATE + 86_400 * 2)
            .unwrap_err(),
    );
    assert!(what.contains(&url), "{what}");
}

#[test]
fn http_404_names_the_url_and_the_status_and_is_not_cached() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    routes.insert(sample.tcb_path(), Reply::Status(404));
    let server = Server::start(routes);
    let client = PccsClient::new(&server.url(), quick()).unwrap();

    let what = missing_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    let tcb_url = format!("{}{}", server.url(), sample.tcb_path());
    assert!(what.contains(&tcb_url), "{what}");
    assert!(what.contains("404"), "{what}");

    // Once the PCCS has it, the next fetch succeeds: the failure was not cached.
    server.set(
        &sample.tcb_path(),
        sample.routes()[&sample.tcb_path()].clone(),
    );
    let fetched = client
        .dcap_collateral_at(&sample.quote, FIXED_TIME)
        .unwrap();
    assert_same_collateral(&fetched, &sample.recorded);
}

#[test]
fn server_errors_and_rate_limits_are_an_unreachable_source_other_statuses_its_answer() {
    let sample = Sample::sgx();
    for (status, unreachable) in [
        (500, true),
        (503, true),
        (429, true),
        (400, false),
        (404, false),
    ] {
        let mut routes = sample.routes();
        routes.insert(sample.tcb_path(), Reply::Status(status));
        let server = Server::start(routes);
        let client = PccsClient::new(&server.url(), quick()).unwrap();
        let err = client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err();
        let what = if unreachable {
            unreachable_what(err)
        } else {
            missing_what(err)
        };
        assert!(what.contains(&status.to_string()), "{what}");
    }
}

#[test]
fn a_server_that_closes_the_connection_is_a_clear_error() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    routes.insert(sample.pck_crl_path(), Reply::Close);
    let server = Server::start(routes);
    let client = PccsClient::new(&server.url(), quick()).unwrap();

    let what = unreachable_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.starts_with("GET "), "{what}");
    assert!(
        what.contains(&format!("{}{}", server.url(), sample.pck_crl_path())),
        "{what}"
    );
}

#[test]
fn a_body_over_the_size_limit_is_refused() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    let huge = vec![b'0'; MAX_COLLATERAL_LEN + 1];
    routes.insert(
        sample.pck_crl_path(),
        Reply::Ok(vec![("SGX-PCK-CRL-Issuer-Chain".into(), "x".into())], huge),
    );
    let server = Server::start(routes);
    let client = PccsClient::new(&server.url(), quick()).unwrap();

    let what = missing_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.contains(&sample.pck_crl_path()), "{what}");
    assert!(
        what.contains(&format!("exceeds the {MAX_COLLATERAL_LEN}-byte limit")),
        "{what}"
    );
}

#[test]
fn tcb_info_that_is_not_json_is_refused() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    let chain = urlencoding::encode(&sample.recorded.tcb_info_issuer_chain).into_owned();
    routes.insert(
        sample.tcb_path(),
        Reply::Ok(
            vec![("TCB-Info-Issuer-Chain".into(), chain)],
            b"<html>PCCS is starting</html>".to_vec(),
        ),
    );
    let server = Server::start(routes);
    let client = PccsClient::new(&server.url(), quick()).unwrap();

    let what = missing_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.contains("TCB info"), "{what}");
    assert!(what.contains("is not JSON"), "{what}");
    assert!(what.contains(&sample.tcb_path()), "{what}");
}

#[test]
fn a_missing_issuer_chain_header_is_refused() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    let Reply::Ok(_, body) = routes[&sample.tcb_path()].clone() else {
        unreachable!()
    };
    routes.insert(sample.tcb_path(), Reply::Ok(Vec::new(), body));
    let server = Server::start(routes);
    let client = PccsClient::new(&server.url(), quick()).unwrap();

    let what = missing_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.contains("TCB-Info-Issuer-Chain"), "{what}");
    assert!(what.contains(&sample.tcb_path()), "{what}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let sample = Sample::sgx();
    let mut routes = sample.routes();
    routes.insert(sample.pck_crl_path(), Reply::Hang);
    let server = Server::start(routes);
    let options =
        FetchOptions::default().with_timeouts(Duration::from_secs(2), Duration::from_millis(300));
    let client = PccsClient::new(&server.url(), options).unwrap();

    let started = Instant::now();
    let what = unreachable_what(
        client
            .dcap_collateral_at(&sample.quote, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.to_lowercase().contains("timeout"), "{what}");
    assert!(what.contains(&sample.pck_crl_path()), "{what}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_quote_that_is_not_a_quote_is_malformed_evidence() {
    let client = PccsClient::new("http://127.0.0.1:9", quick()).unwrap();
    let err = client
        .dcap_collateral_at(b"not a quote", FIXED_TIME)
        .unwrap_err();
    assert!(
        matches!(err, AttestError::MalformedEvidence { .. }),
        "{err}"
    );
}

#[test]
fn the_platform_of_each_sample_is_read_from_its_pck_certificate() {
    for (sample, tee, ca) in [
        (Sample::sgx(), TeeKind::Sgx, PckCa::Processor),
        (Sample::tdx(), TeeKind::Tdx, PckCa::Platform),
    ] {
        let platform = pccs::quote_platform(&pccs::parse_quote(&sample.quote).unwrap()).unwrap();
        assert_eq!(platform.tee, tee);
        assert_eq!(platform.ca, ca);
        // The FMSPC the recorded TCB info was issued for.
        assert_eq!(platform.fmspc_hex(), sample.fmspc());
        assert_eq!(
            platform.to_string(),
            format!("{}/{}", sample.fmspc(), ca.as_str())
        );
    }
}

#[test]
fn a_quote_whose_pck_certificate_is_damaged_has_no_platform() {
    let mut quote = Sample::sgx().quote;
    let begin = b"-----BEGIN CERTIFICATE-----\n";
    let at = quote.windows(begin.len()).position(|w| w == begin).unwrap();
    // The leaf certificate's first base64 characters: its DER no longer parses.
    quote[at + begin.len()..at + begin.len() + 8].copy_from_slice(b"AAAAAAAA");
    let err = pccs::quote_platform(&pccs::parse_quote(&quote).unwrap()).unwrap_err();
    assert!(
        matches!(err, AttestError::MalformedEvidence { .. }),
        "{err}"
    );
    assert!(
        pccs::parse_quote(b"not a quote").is_err(),
        "a quote that is not one"
    );
}

// ---------------------------------------------------------------------------------------------
// KDS.

fn pem_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect()
}

#[test]
fn kds_serves_the_milan_vcek_for_the_reports_chip_and_tcb() {
    let report = milan_report();
    let chip_id = hex::encode(&report[0x1A0..0x1E0]);
    // REPORTED_TCB of this report: 03 00 00 00 00 00 08 73.
    let vcek_path = format!("/vcek/v1/Milan/{chip_id}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115");
    let server = Server::start(kds_routes(
        "Milan",
        &vcek_path,
        "vcek_milan.der",
        "cert_chain_milan",
    ));
    let client = KdsClient::new(&server.url(), quick()).unwrap();

    let snp = client
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME)
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests[0], vcek_path);
    assert!(requests[0].contains(&chip_id));
    assert_eq!(requests[1], "/vcek/v1/Milan/cert_chain");

    let chain = pem_ders(&testdata("cert_chain_milan"));
    assert_eq!(snp.vcek.as_deref(), Some(&testdata("vcek_milan.der")[..]));
    assert_eq!(
        snp.ask.as_ref(),
        Some(&chain[0]),
        "the ASK comes first in cert_chain"
    );
    assert_eq!(
        snp.ark.as_ref(),
        Some(&chain[1]),
        "the ARK is the self-signed one"
    );

    // Cached: no second request.
    client
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME + 60)
        .unwrap();
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn kds_turin_urls_carry_fmc_and_an_eight_byte_hardware_id() {
    let mut report = vec![0u8; pccs::SNP_REPORT_LEN];
    // Turin TCB_VERSION: fmc, bootloader, tee, snp, 3 reserved, microcode.
    report[0x180..0x188].copy_from_slice(&[1, 2, 3, 24, 0, 0, 0, 0x48]);
    // KDS names a Turin chip by the first 8 bytes of CHIP_ID; the rest is zero.
    report[0x1A0..0x1A8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x23, 0x45, 0x67]);
    let vcek_path =
        "/vcek/v1/Turin/deadbeef01234567?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=24&ucodeSPL=72";
    let server = Server::start(kds_routes(
        "Turin",
        vcek_path,
        "vcek_turin.der",
        "cert_chain_turin",
    ));
    let client = KdsClient::new(&server.url(), quick()).unwrap();

    let snp = client
        .snp_collateral_at(&report, SnpProduct::Turin, FIXED_TIME)
        .unwrap();
    assert_eq!(server.requests()[0], vcek_path);
    assert_eq!(snp.vcek.as_deref(), Some(&testdata("vcek_turin.der")[..]));
    let chain = pem_ders(&testdata("cert_chain_turin"));
    assert_eq!(snp.ask.as_ref(), Some(&chain[0]));
    assert_eq!(snp.ark.as_ref(), Some(&chain[1]));
}

#[test]
fn kds_refuses_masked_chip_ids_and_bad_reports_without_a_request() {
    let server = Server::start(HashMap::new());
    let client = KdsClient::new(&server.url(), quick()).unwrap();

    let mut masked = milan_report();
    masked[0x1A0..0x1E0].fill(0);
    let what = missing_what(
        client
            .snp_collateral_at(&masked, SnpProduct::Milan, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.contains("CHIP_ID is zero"), "{what}");

    let err = client
        .snp_collateral_at(&milan_report()[..1000], SnpProduct::Milan, FIXED_TIME)
        .unwrap_err();
    assert!(
        matches!(err, AttestError::MalformedEvidence { .. }),
        "{err}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn kds_ttl_expiry_refetches_and_offline_falls_back_to_the_disk_cache() {
    let report = milan_report();
    let cache = tempfile::tempdir().unwrap();
    let options = quick()
        .with_cache_dir(cache.path())
        .with_ttl(Duration::from_secs(3600));
    let server = Server::start(HashMap::new());
    let client = KdsClient::new(&server.url(), options.clone()).unwrap();
    let vcek_path = client
        .vcek_url(&report, SnpProduct::Milan)
        .unwrap()
        .strip_prefix(&server.url())
        .unwrap()
        .to_owned();
    for (path, reply) in kds_routes("Milan", &vcek_path, "vcek_milan.der", "cert_chain_milan") {
        server.set(&path, reply);
    }

    let fetched = client
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME)
        .unwrap();
    client
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME + 3599)
        .unwrap();
    assert_eq!(server.requests().len(), 2);
    client
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME + 3600)
        .unwrap();
    assert_eq!(
        server.requests().len(),
        4,
        "entries past the TTL are fetched again"
    );

    // KDS fails: the stale entries are used, and the refresh is retried a minute later, not on
    // every call.
    for (path, _) in kds_routes("Milan", &vcek_path, "vcek_milan.der", "cert_chain_milan") {
        server.set(&path, Reply::Status(503));
    }
    let later = FIXED_TIME + 86_400;
    for (now, requests) in [(later, 6), (later + 59, 6), (later + 60, 8)] {
        let stale = client
            .snp_collateral_at(&report, SnpProduct::Milan, now)
            .unwrap();
        assert_eq!(stale, fetched);
        assert_eq!(server.requests().len(), requests, "at {now}");
    }

    let url = server.url();
    drop(server);
    let offline = KdsClient::new(&url, options).unwrap();
    let stale = offline
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME + 86_400)
        .unwrap();
    assert_eq!(stale, fetched);
}

// ---------------------------------------------------------------------------------------------
// TLS and bundles.

#[test]
fn https_checks_the_server_certificate() {
    let report = milan_report();
    let server = Server::start_tls(HashMap::new());
    // Mozilla's roots do not include the test CA: the handshake must fail.
    let default_roots = KdsClient::new(&server.url(), quick()).unwrap();
    let vcek_path = default_roots
        .vcek_url(&report, SnpProduct::Milan)
        .unwrap()
        .strip_prefix(&server.url())
        .unwrap()
        .to_owned();
    for (path, reply) in kds_routes("Milan", &vcek_path, "vcek_milan.der", "cert_chain_milan") {
        server.set(&path, reply);
    }
    let what = unreachable_what(
        default_roots
            .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME)
            .unwrap_err(),
    );
    assert!(what.to_lowercase().contains("certificate"), "{what}");
    assert!(
        server.requests().is_empty(),
        "no request may pass an untrusted TLS handshake"
    );

    // A PCCS or KDS mirror with a private CA works once that CA is configured.
    let with_ca = KdsClient::new(
        &server.url(),
        quick().with_ca_certificates_pem(testdata("tls/ca.pem")),
    )
    .unwrap();
    let snp = with_ca
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME)
        .unwrap();
    assert_eq!(snp.vcek.as_deref(), Some(&testdata("vcek_milan.der")[..]));
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn fetched_collateral_written_as_a_bundle_reads_back() {
    let sample = Sample::tdx();
    let pccs_server = Server::start(sample.routes());
    let dcap = PccsClient::new(&pccs_server.url(), quick())
        .unwrap()
        .dcap_collateral_at(&sample.quote, FIXED_TIME)
        .unwrap();

    let report = milan_report();
    let kds_server = Server::start(HashMap::new());
    let kds = KdsClient::new(&kds_server.url(), quick()).unwrap();
    let vcek_path = kds
        .vcek_url(&report, SnpProduct::Milan)
        .unwrap()
        .strip_prefix(&kds_server.url())
        .unwrap()
        .to_owned();
    for (path, reply) in kds_routes("Milan", &vcek_path, "vcek_milan.der", "cert_chain_milan") {
        kds_server.set(&path, reply);
    }
    let snp = kds
        .snp_collateral_at(&report, SnpProduct::Milan, FIXED_TIME)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collateral.json");
    let collateral = Collateral {
        dcap: Some(dcap.clone()),
        snp: Some(snp.clone()),
    };
    pccs::write_bundle(&path, &collateral).unwrap();
    let read = Collateral::from_bundle_json(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(read.dcap.as_ref(), Some(&dcap));
    assert_eq!(read.snp.as_ref(), Some(&snp));
    dcap_qvl::verify::verify(&sample.quote, read.dcap.as_ref().unwrap(), FIXED_TIME).unwrap();
    // Only the bundle is in the directory: the temporary file was renamed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
