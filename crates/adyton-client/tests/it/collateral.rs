//! The client's collateral from the network: the recorded SGX and TDX quotes, checked as a
//! server's fresh evidence would be, with collateral from the local imitation of Intel's PCS.
//!
//! A recorded quote binds report data of its own, so the check ends at the key binding, which
//! comes right after verification: `KeyBinding` means the evidence verified. Without collateral
//! the same check ends before it, at `Evidence` (collateral missing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use adyton_attest::attested_tls::{evidence_extension_value, EVIDENCE_EXTENSION_OID_ARCS};
use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_attest::{AttestError, Collateral, Evidence, Policy, TeeKind};
use adyton_client::attested_tls::{
    check_fresh_evidence_served, check_fresh_evidence_with, AttestationFailure, ServedCollateral,
};
use adyton_client::{fetch_served_collateral, ClientError, ConnectOptions, ServerClient};
use dcap_qvl::QuoteCollateralV3;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::PrivateKeyDer;

use crate::pcs_imitation::{testdata, Reply, Sample, Server};

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
        gpus: Vec::new(),
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

// ---------------------------------------------------------------------------------------------
// Collateral served by the server (`GET /adyton/v1/collateral`), for clients with none of their
// own. The imitation stands in for the server: it serves the bundle over HTTPS with a
// certificate the client does not verify (nothing from that connection is trusted).

const COLLATERAL_PATH: &str = "/adyton/v1/collateral";

fn bundle(collateral: &QuoteCollateralV3) -> Vec<u8> {
    adyton_attest::pccs::bundle_json(&Collateral {
        dcap: Some(collateral.clone()),
        snp: None,
    })
    .unwrap()
}

fn serving(body: Vec<u8>) -> Server {
    Server::start_tls(HashMap::from([(
        COLLATERAL_PATH.to_owned(),
        Reply::Ok(Vec::new(), body),
    )]))
}

fn check_served(
    sample: &Sample,
    provider: &CollateralProvider,
    served: &ServedCollateral,
) -> AttestationFailure {
    let policy = Policy::from_toml(&format!("[{}]\n", sample.tee)).unwrap();
    check_fresh_evidence_served(
        &evidence(sample),
        b"a server's SubjectPublicKeyInfo",
        &[7; 32],
        &policy,
        provider,
        Some(served),
        FIXED_TIME,
    )
    .unwrap_err()
}

fn evidence(sample: &Sample) -> Evidence {
    Evidence {
        tee: if sample.tee == "sgx" {
            TeeKind::Sgx
        } else {
            TeeKind::Tdx
        },
        quote: sample.quote.clone(),
        certificates: None,
        gpus: Vec::new(),
    }
}

#[test]
fn collateral_served_by_the_server_lets_its_evidence_verify() {
    for sample in [Sample::sgx(), Sample::tdx()] {
        let server = serving(bundle(&sample.recorded));
        let served = fetch_served_collateral(&server.url(), Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(
            served.source_url,
            format!("{}{COLLATERAL_PATH}", server.url())
        );
        assert_eq!(server.requests(), vec![COLLATERAL_PATH.to_owned()]);
        let failure = check_served(&sample, &CollateralProvider::none(), &served);
        assert!(
            matches!(
                failure,
                AttestationFailure::KeyBinding(AttestError::ReportDataMismatch { .. })
            ),
            "{}: {failure:?}",
            sample.tee
        );
    }
}

#[test]
fn a_tampered_served_bundle_is_refused_naming_where_it_came_from() {
    let sample = Sample::sgx();
    let mut tampered = sample.recorded.clone();
    tampered.tcb_info = tampered
        .tcb_info
        .replacen("\"tcbLevels\"", "\"tcbLevels\" ", 1);
    assert_ne!(tampered.tcb_info, sample.recorded.tcb_info);
    let server = serving(bundle(&tampered));
    let served = fetch_served_collateral(&server.url(), Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let failure = check_served(&sample, &CollateralProvider::none(), &served);
    let AttestationFailure::ServedCollateral { source_url, .. } = &failure else {
        panic!("not refused as served collateral: {failure:?}");
    };
    assert_eq!(source_url, &served.source_url);
    assert!(
        failure.to_string().contains(&served.source_url),
        "{failure}"
    );

    // Collateral of the client's own comes first: the served bundle is not even used.
    let pcs = Server::start_tls(sample.routes());
    let own = CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(pcs.url())
            .with_fetch_options(
                FetchOptions::default()
                    .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
                    .with_ca_certificates_pem(testdata("tls/ca.pem")),
            ),
    )
    .unwrap();
    let failure = check_served(&sample, &own, &served);
    assert!(
        matches!(
            failure,
            AttestationFailure::KeyBinding(AttestError::ReportDataMismatch { .. })
        ),
        "{failure:?}"
    );
}

#[test]
fn what_the_server_serves_is_bounded_and_must_be_a_bundle() {
    let none = Server::start_tls(HashMap::from([(
        COLLATERAL_PATH.to_owned(),
        Reply::Status(404),
    )]));
    assert!(fetch_served_collateral(&none.url(), Duration::from_secs(5))
        .unwrap()
        .is_none());

    let not_a_bundle = serving(br#"{"dcap": 1, "extra": true}"#.to_vec());
    let e = fetch_served_collateral(&not_a_bundle.url(), Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidResponse { .. })
            && e.to_string().contains("not a collateral bundle"),
        "{e}"
    );

    let huge = serving(vec![
        b' ';
        adyton_attest::collateral::MAX_COLLATERAL_LEN + 1
    ]);
    let e = fetch_served_collateral(&huge.url(), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, ClientError::ResponseTooLarge { .. }), "{e}");

    let failing = Server::start_tls(HashMap::from([(
        COLLATERAL_PATH.to_owned(),
        Reply::Status(503),
    )]));
    let e = fetch_served_collateral(&failing.url(), Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");

    let hanging = Server::start_tls(HashMap::from([(COLLATERAL_PATH.to_owned(), Reply::Hang)]));
    let started = std::time::Instant::now();
    let e = fetch_served_collateral(&hanging.url(), Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// `ServerClient::connect` end to end, against a stand-in server whose attested TLS certificate
// carries the recorded SGX quote. The handshake checks the evidence as of now, when the
// recorded collateral has expired, so a connection never succeeds here; what the errors say
// shows which collateral each handshake had.

/// A TLS 1.3 server configuration whose certificate carries the recorded SGX quote.
fn sgx_certificate_config() -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["adyton.invalid".into()]).unwrap();
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            EVIDENCE_EXTENSION_OID_ARCS,
            evidence_extension_value(&evidence(&Sample::sgx())).unwrap(),
        ));
    let certificate = params.self_signed(&key).unwrap().der().clone();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certificate],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    )
}

fn connect_error(server: &Server, policy: &str, server_collateral: bool) -> String {
    let options = ConnectOptions {
        server_collateral,
        timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    };
    let e = ServerClient::connect(&server.url(), Policy::from_toml(policy).unwrap(), options)
        .unwrap_err();
    assert!(matches!(e, ClientError::Attestation { .. }), "{e}");
    e.to_string()
}

#[test]
fn a_client_without_collateral_fetches_the_servers_and_says_so_when_there_is_none() {
    let routes = HashMap::from([(COLLATERAL_PATH.to_owned(), Reply::Status(404))]);
    let server = Server::spawn(routes, Some(sgx_certificate_config()));
    let e = connect_error(&server, "[sgx]\n", true);
    assert!(e.contains("collateral missing"), "{e}");
    assert!(
        e.contains("the server serves no collateral for its SGX evidence"),
        "{e}"
    );
    assert_eq!(server.count(COLLATERAL_PATH), 1);

    // Turned off: not asked, and the error says so.
    let e = connect_error(&server, "[sgx]\n", false);
    assert!(e.contains("collateral missing"), "{e}");
    assert!(e.contains("not asked for"), "{e}");
    assert_eq!(server.count(COLLATERAL_PATH), 1);

    // A policy that does not name SGX needs no collateral for it: nothing is fetched.
    let e = connect_error(&server, "[sim]\n", true);
    assert!(!e.contains("collateral served"), "{e}");
    assert_eq!(server.count(COLLATERAL_PATH), 1);
}

#[test]
fn a_client_without_collateral_verifies_with_the_servers_own() {
    let routes = HashMap::from([(
        COLLATERAL_PATH.to_owned(),
        Reply::Ok(Vec::new(), bundle(&Sample::sgx().recorded)),
    )]);
    let server = Server::spawn(routes, Some(sgx_certificate_config()));
    let e = connect_error(&server, "[sgx]\n", true);
    // The second handshake verified with the served bundle: its refusal names it (the recorded
    // collateral has expired by now).
    assert!(
        e.contains(&format!(
            "collateral served by {}{COLLATERAL_PATH}",
            server.url()
        )),
        "{e}"
    );
    assert!(e.contains("expired"), "{e}");
    assert_eq!(server.count(COLLATERAL_PATH), 1);
}
