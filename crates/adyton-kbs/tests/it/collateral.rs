//! Collateral from the network: a broker configured with a local HTTPS imitation of Intel's PCS
//! (and of AMD's KDS) alone, no collateral file, verifies the recorded SGX, TDX and SNP samples
//! at their fixed times; keeps using its cached copy while the source is down and the copy is
//! valid; and refuses, with the reason, once the copy has expired.
//!
//! The recorded quotes bind report data of their own, which no transfer request can match, so
//! the furthest a transfer of them can get is the report data check, which comes right after
//! verification: a refusal with `ReportDataMismatch` and the verified measurement in the audit
//! decision is a verification that succeeded. The same transfer without collateral is refused
//! before it, with `CollateralMissing`.

use std::sync::Arc;
use std::time::Duration;

use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralOrigin, CollateralProvider, ProviderConfig};
use adyton_attest::{AttestError, Collateral, TeeKind};
use adyton_envelope::wrap::{TeeKeyPair, TransferKeyKind};
use adyton_kbs::audit::MemoryAudit;
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::service::KbsState;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{Broker, TransferDecision, TransferRequest};
use adyton_kbs::KbsError;
use serde_json::json;

use crate::pcs_imitation::{kds_routes, milan_report, testdata, Reply, Sample, Server};

/// 2025-07-01T00:00:00Z: inside the validity of both recorded DCAP collaterals.
const DCAP_TIME: u64 = 1_751_328_000;
/// A day after the SGX collateral's earliest expiry (2025-07-19T10:01:18Z).
const A_DAY_AFTER_SGX_EXPIRY: u64 = 1_752_919_278 + 86_400;
/// Inside the Milan VCEK's validity: 2025-01-01.
const SNP_TIME: u64 = 1_735_689_600;
/// The platforms of the SGX and TDX samples: FMSPC and PCK CA.
const SGX_FMSPC: &str = "00A067110000/processor";
const TDX_FMSPC: &str = "B0C06F000000/platform";

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Broker,
    keys: Vec<(TeeKind, String)>,
}

fn fixture(provider: CollateralProvider) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::with_provider(Arc::new(store), master, Arc::new(provider)).unwrap();
    let keys = [
        (TeeKind::Sgx, json!({ "mrsigner": ["11".repeat(32)] })),
        (TeeKind::Tdx, json!({ "mrtd": ["22".repeat(48)] })),
        (TeeKind::Snp, json!({ "measurement": ["33".repeat(48)] })),
    ]
    .into_iter()
    .map(|(tee, table)| {
        let policy = broker.create_policy(tee, table, DCAP_TIME).unwrap();
        let key = broker.create_key(&policy.id, None, DCAP_TIME).unwrap();
        (tee, key.id)
    })
    .collect();
    Fixture {
        _dir: dir,
        broker,
        keys,
    }
}

impl Fixture {
    fn key(&self, tee: TeeKind) -> &str {
        &self.keys.iter().find(|(t, _)| *t == tee).unwrap().1
    }

    fn transfer(&self, tee: TeeKind, quote: &[u8], now: u64) -> (KbsError, TransferDecision) {
        let (outcome, decision) = self
            .broker
            .transfer(self.key(tee), &request(tee, quote), now);
        assert!(!decision.allowed);
        (outcome.err().unwrap(), decision)
    }
}

fn request(tee: TeeKind, quote: &[u8]) -> TransferRequest {
    let key = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
    TransferRequest {
        attestation_type: tee.to_string(),
        quote: quote.to_vec(),
        user_data: key.public_key().unwrap().spki_der().to_vec(),
        nonce: None,
        collateral: None,
    }
}

fn options() -> FetchOptions {
    FetchOptions::default()
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
        .with_ca_certificates_pem(testdata("tls/ca.pem"))
}

fn pccs_provider(server: &Server, options: FetchOptions) -> CollateralProvider {
    CollateralProvider::new(
        ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(options),
    )
    .unwrap()
}

/// The transfer got past verification: refused only for the recorded quote's report data.
fn assert_verified(error: &KbsError, decision: &TransferDecision) {
    assert!(
        matches!(error, KbsError::ReportDataMismatch),
        "{error:?}: {:?}",
        decision.reason
    );
    assert!(decision.measurement.is_some(), "{decision:?}");
}

fn tee_of(sample: &Sample) -> TeeKind {
    if sample.tee == "sgx" {
        TeeKind::Sgx
    } else {
        TeeKind::Tdx
    }
}

#[test]
fn a_broker_with_only_a_pccs_verifies_sgx_and_tdx_of_two_fmspcs_and_audits_the_collateral() {
    let mut routes = Sample::sgx().routes();
    routes.extend(Sample::tdx().routes());
    let server = Server::start_tls(routes);
    let f = fixture(pccs_provider(&server, options()));
    let keys = f.keys.clone();
    let audit = Arc::new(MemoryAudit::default());
    let state = KbsState::new(f.broker, audit.clone(), || DCAP_TIME);
    let key = |tee: TeeKind| keys.iter().find(|(t, _)| *t == tee).unwrap().1.clone();

    for (sample, fmspc) in [(Sample::sgx(), SGX_FMSPC), (Sample::tdx(), TDX_FMSPC)] {
        let tee = tee_of(&sample);
        let err = state
            .transfer(&key(tee), &request(tee, &sample.quote))
            .unwrap_err();
        let decision = audit.decisions().pop().unwrap();
        assert!(err.to_string().contains("report data"), "{err}");
        assert!(decision.measurement.is_some(), "{decision:?}");
        let used = decision.collateral.clone().unwrap();
        assert_eq!(used.key.as_ref().unwrap().platform, fmspc);
        assert_eq!(used.origin, CollateralOrigin::Network);
        assert_eq!(used.source, server.url());
        assert!(used.source.starts_with("https://"));
        assert!(used.issued_at.is_some() && used.expires_at.is_some());

        // The audit line names the collateral, its source and its dates.
        let line = serde_json::to_value(&decision).unwrap();
        assert_eq!(line["collateral"]["key"]["platform"], fmspc);
        assert_eq!(line["collateral"]["origin"], "network");
        assert_eq!(line["collateral"]["issued_at"], used.issued_at.unwrap());
    }
    // The second transfer of a platform is served from the cache.
    let sgx = Sample::sgx();
    let _ = state.transfer(&key(TeeKind::Sgx), &request(TeeKind::Sgx, &sgx.quote));
    let decision = audit.decisions().pop().unwrap();
    assert_eq!(decision.collateral.unwrap().origin, CollateralOrigin::Cache);
    let stats = state.broker.collateral().stats();
    assert_eq!((stats.network, stats.cache), (2, 1));
}

#[test]
fn without_collateral_the_same_transfers_are_refused_before_verification() {
    let f = fixture(CollateralProvider::new(ProviderConfig::new()).unwrap());
    for sample in [Sample::sgx(), Sample::tdx()] {
        let (err, decision) = f.transfer(tee_of(&sample), &sample.quote, DCAP_TIME);
        assert!(
            matches!(
                err,
                KbsError::Attestation(AttestError::CollateralMissing { .. })
            ),
            "{err:?}"
        );
        assert_eq!(decision.measurement, None);
        assert_eq!(decision.collateral.unwrap().origin, CollateralOrigin::None);
    }
}

#[test]
fn the_pccs_stopped_mid_run_leaves_the_cached_copy_in_use_while_it_is_valid() {
    let sample = Sample::sgx();
    let server = Server::start_tls(sample.routes());
    let f = fixture(pccs_provider(&server, options()));
    let (err, decision) = f.transfer(TeeKind::Sgx, &sample.quote, DCAP_TIME);
    assert_verified(&err, &decision);
    drop(server);

    // Two days on, past the cache's one-day maximum age: the refresh fails, the copy is used.
    let (err, decision) = f.transfer(TeeKind::Sgx, &sample.quote, DCAP_TIME + 2 * 86_400);
    assert_verified(&err, &decision);
    assert_eq!(decision.collateral.unwrap().origin, CollateralOrigin::Stale);

    // The TDX platform, never fetched, has no copy: no verdict, the source is unreachable; the
    // error names the platform, and the audit decision says so.
    let tdx = Sample::tdx();
    let (err, decision) = f.transfer(TeeKind::Tdx, &tdx.quote, DCAP_TIME);
    assert!(err.is_collateral_unreachable(), "{err:?}");
    let KbsError::Attestation(AttestError::CollateralUnavailable { what }) = err else {
        panic!("expected CollateralUnavailable, got {err:?}");
    };
    assert!(what.contains("B0C06F000000"), "{what}");
    assert!(decision.collateral_unreachable, "{decision:?}");
    let line = serde_json::to_value(&decision).unwrap();
    assert_eq!(line["collateral_unreachable"], true);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("collateral source unreachable: "),
        "{line}"
    );

    // Once the SGX copy has expired too, the outage refuses it the same way: no valid copy.
    let (err, decision) = f.transfer(TeeKind::Sgx, &sample.quote, A_DAY_AFTER_SGX_EXPIRY);
    assert!(err.is_collateral_unreachable(), "{err:?}");
    assert!(decision.collateral_unreachable);
}

#[test]
fn collateral_expiring_between_two_transfers_refuses_the_second_with_the_reason() {
    let sample = Sample::sgx();
    // The PCS keeps serving the recorded collateral, which expires on 2025-07-19.
    let server = Server::start_tls(sample.routes());
    let f = fixture(pccs_provider(&server, options()));
    let (err, decision) = f.transfer(TeeKind::Sgx, &sample.quote, DCAP_TIME);
    assert_verified(&err, &decision);

    let (err, decision) = f.transfer(TeeKind::Sgx, &sample.quote, A_DAY_AFTER_SGX_EXPIRY);
    let KbsError::Attestation(AttestError::CollateralExpired { what }) = &err else {
        panic!("expected CollateralExpired, got {err:?}");
    };
    assert!(what.contains("00A067110000"), "{what}");
    assert!(what.contains(&server.url()), "{what}");
    let reason = decision.reason.clone().unwrap();
    assert!(reason.contains("collateral expired"), "{reason}");
    assert_eq!(decision.measurement, None);
    // A verdict, not an outage: the source answered with collateral that has expired.
    assert!(!decision.collateral_unreachable);
    assert!(serde_json::to_value(&decision)
        .unwrap()
        .get("collateral_unreachable")
        .is_none());

    // With a grace period set by the operator, the same transfer gets past verification, and
    // the grace is in the audit decision.
    let lenient = fixture(
        CollateralProvider::new(
            ProviderConfig::new()
                .with_pccs_url(server.url())
                .with_fetch_options(options())
                .with_grace_period(Some(Duration::from_secs(2 * 86_400))),
        )
        .unwrap(),
    );
    let (err, decision) = lenient.transfer(TeeKind::Sgx, &sample.quote, A_DAY_AFTER_SGX_EXPIRY);
    assert_verified(&err, &decision);
    assert_eq!(decision.collateral.unwrap().grace_secs, Some(86_400));
}

#[test]
fn the_snp_sample_verifies_through_a_kds_imitation() {
    let report = milan_report();
    let chip_id = hex::encode(&report[0x1A0..0x1E0]);
    let vcek_path = format!("/vcek/v1/Milan/{chip_id}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115");
    let server = Server::start_tls(kds_routes(
        "Milan",
        &vcek_path,
        "vcek_milan.der",
        "cert_chain_milan",
    ));
    let f = fixture(
        CollateralProvider::new(
            ProviderConfig::new()
                .with_kds_url(server.url())
                .with_fetch_options(options()),
        )
        .unwrap(),
    );
    let (err, decision) = f.transfer(TeeKind::Snp, &report, SNP_TIME);
    assert_verified(&err, &decision);
    let used = decision.collateral.unwrap();
    assert_eq!(used.origin, CollateralOrigin::Network);
    assert!(used.key.unwrap().platform.starts_with(&chip_id));
    assert_eq!(server.requests().len(), 2);

    // The KDS answering 404 for this chip: refused before verification.
    server.set(&vcek_path, Reply::Status(404));
    let fresh = fixture(
        CollateralProvider::new(
            ProviderConfig::new()
                .with_kds_url(server.url())
                .with_fetch_options(options()),
        )
        .unwrap(),
    );
    let (err, _) = fresh.transfer(TeeKind::Snp, &report, SNP_TIME);
    assert!(
        matches!(
            err,
            KbsError::Attestation(AttestError::CollateralMissing { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_bundle_given_as_before_still_verifies() {
    let sample = Sample::tdx();
    let bundle = Collateral::from_json(&testdata("tdx_quote_collateral.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, bundle).unwrap();
    let policy = broker
        .create_policy(
            TeeKind::Tdx,
            json!({ "mrtd": ["22".repeat(48)] }),
            DCAP_TIME,
        )
        .unwrap();
    let key = broker.create_key(&policy.id, None, DCAP_TIME).unwrap();
    let (outcome, decision) =
        broker.transfer(&key.id, &request(TeeKind::Tdx, &sample.quote), DCAP_TIME);
    assert_verified(&outcome.err().unwrap(), &decision);
    assert_eq!(
        decision.collateral.unwrap().origin,
        CollateralOrigin::Bundle
    );
}

fn with_collateral(tee: TeeKind, quote: &[u8], collateral: Vec<u8>) -> TransferRequest {
    TransferRequest {
        collateral: Some(collateral),
        ..request(tee, quote)
    }
}

#[test]
fn collateral_sent_with_the_evidence_serves_a_broker_that_has_none() {
    let f = fixture(CollateralProvider::new(ProviderConfig::new()).unwrap());
    for (sample, file) in [
        (Sample::sgx(), "sgx_quote_collateral.json"),
        (Sample::tdx(), "tdx_quote_collateral.json"),
    ] {
        let tee = tee_of(&sample);
        let request = with_collateral(tee, &sample.quote, testdata(file));
        let (outcome, decision) = f.broker.transfer(f.key(tee), &request, DCAP_TIME);
        assert_verified(&outcome.err().unwrap(), &decision);
        let used = decision.collateral.unwrap();
        assert_eq!(used.origin, CollateralOrigin::Carried);
        assert!(used.issued_at.is_some());
    }
    assert_eq!(f.broker.collateral().stats().carried, 2);

    // It adds no trust: collateral whose signed TCB info was altered is refused...
    let sgx = Sample::sgx();
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&testdata("sgx_quote_collateral.json")).unwrap();
    let tcb_info =
        tampered["tcb_info"]
            .as_str()
            .unwrap()
            .replacen("\"tcbLevels\"", "\"tcbLevels\" ", 1);
    tampered["tcb_info"] = tcb_info.into();
    let request = with_collateral(
        TeeKind::Sgx,
        &sgx.quote,
        serde_json::to_vec(&tampered).unwrap(),
    );
    let (outcome, decision) = f.broker.transfer(f.key(TeeKind::Sgx), &request, DCAP_TIME);
    let err = outcome.err().unwrap();
    assert!(!matches!(err, KbsError::ReportDataMismatch), "{err:?}");
    assert!(matches!(err, KbsError::Attestation(_)), "{err:?}");
    assert_eq!(decision.measurement, None);
    // ...so is the other platform's (the TDX collateral for the SGX quote)...
    let request = with_collateral(
        TeeKind::Sgx,
        &sgx.quote,
        testdata("tdx_quote_collateral.json"),
    );
    let (outcome, _) = f.broker.transfer(f.key(TeeKind::Sgx), &request, DCAP_TIME);
    assert!(matches!(outcome, Err(KbsError::Attestation(_))));
    // ...expired collateral...
    let request = with_collateral(
        TeeKind::Sgx,
        &sgx.quote,
        testdata("sgx_quote_collateral.json"),
    );
    let (outcome, _) = f
        .broker
        .transfer(f.key(TeeKind::Sgx), &request, A_DAY_AFTER_SGX_EXPIRY);
    assert!(
        matches!(
            outcome,
            Err(KbsError::Attestation(AttestError::CollateralExpired { .. }))
        ),
        "{outcome:?}"
    );
    // ...and a field that is not collateral is the client's error.
    let request = with_collateral(TeeKind::Sgx, &sgx.quote, b"not json".to_vec());
    let (outcome, _) = f.broker.transfer(f.key(TeeKind::Sgx), &request, DCAP_TIME);
    assert!(
        matches!(&outcome, Err(KbsError::BadRequest { reason }) if reason.starts_with("collateral:")),
        "{outcome:?}"
    );
}

#[test]
fn a_broker_with_its_own_source_ignores_collateral_sent_with_the_evidence() {
    let sample = Sample::sgx();
    let server = Server::start_tls(sample.routes());
    let f = fixture(pccs_provider(&server, options()));
    // The TDX collateral would not verify the SGX quote: that it verifies shows it was unused.
    let request = with_collateral(
        TeeKind::Sgx,
        &sample.quote,
        testdata("tdx_quote_collateral.json"),
    );
    let (outcome, decision) = f.broker.transfer(f.key(TeeKind::Sgx), &request, DCAP_TIME);
    assert_verified(&outcome.err().unwrap(), &decision);
    assert_eq!(
        decision.collateral.unwrap().origin,
        CollateralOrigin::Network
    );

    // Its source down with nothing cached: the sent collateral is used.
    drop(server);
    let fresh = fixture(pccs_provider(
        &Server::start_tls(std::collections::HashMap::new()),
        options(),
    ));
    let request = with_collateral(
        TeeKind::Sgx,
        &sample.quote,
        testdata("sgx_quote_collateral.json"),
    );
    let (outcome, decision) = fresh
        .broker
        .transfer(fresh.key(TeeKind::Sgx), &request, DCAP_TIME);
    assert_verified(&outcome.err().unwrap(), &decision);
    assert_eq!(
        decision.collateral.unwrap().origin,
        CollateralOrigin::Carried
    );

    // A grace period for the broker's own sources does not extend to sent collateral.
    let lenient = fixture(
        CollateralProvider::new(
            ProviderConfig::new()
                .with_fetch_options(options())
                .with_grace_period(Some(Duration::from_secs(2 * 86_400))),
        )
        .unwrap(),
    );
    let (outcome, _) =
        lenient
            .broker
            .transfer(lenient.key(TeeKind::Sgx), &request, A_DAY_AFTER_SGX_EXPIRY);
    assert!(
        matches!(
            outcome,
            Err(KbsError::Attestation(AttestError::CollateralExpired { .. }))
        ),
        "{outcome:?}"
    );
}

/// `POST`s a transfer of `quote` to `app` and returns the status, the `Retry-After` header and
/// the `error` message.
async fn http_transfer(
    app: axum::Router,
    key_id: &str,
    tee: TeeKind,
    quote: &[u8],
) -> (axum::http::StatusCode, Option<String>, String) {
    use axum::body::Body;
    use base64::Engine as _;
    use tower::ServiceExt as _;

    let request = request(tee, quote);
    let base64 = base64::engine::general_purpose::STANDARD;
    let body = json!({
        "quote": base64.encode(&request.quote),
        "user_data": base64.encode(&request.user_data),
    });
    let response = app
        .oneshot(
            axum::http::Request::post(format!("/kbs/v1/keys/{key_id}/transfer"))
                .header("Attestation-Type", tee.to_string())
                .header("Content-Type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    let answer = crate::answer::read(response).await;
    let error = answer.json["error"].as_str().unwrap().to_owned();
    (answer.status, answer.retry_after, error)
}

fn app_of(f: Fixture, clock: adyton_kbs::service::Clock) -> (axum::Router, Arc<MemoryAudit>) {
    let audit = Arc::new(MemoryAudit::default());
    let state = KbsState::new(f.broker, audit.clone(), clock);
    (adyton_kbs::http::router(Arc::new(state)), audit)
}

#[tokio::test]
async fn an_unreachable_source_with_nothing_cached_is_503_with_retry_after_not_403() {
    let sample = Sample::sgx();
    // A source that is not there: a port that was bound, then released.
    let server = Server::start_tls(sample.routes());
    let provider = pccs_provider(&server, options());
    drop(server);
    let f = fixture(provider);
    let key = f.key(TeeKind::Sgx).to_owned();
    let (app, audit) = app_of(f, || DCAP_TIME);

    let (status, retry_after, error) = http_transfer(app, &key, TeeKind::Sgx, &sample.quote).await;
    assert_eq!(
        status,
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "{error}"
    );
    assert_eq!(retry_after.as_deref(), Some("30"));
    assert!(
        error.starts_with("collateral source unreachable: "),
        "{error}"
    );
    assert!(error.contains("retry"), "{error}");
    // The source's URL stays with the operator: in the audit line, not in the answer.
    assert!(!error.contains("127.0.0.1"), "{error}");
    let decision = audit.decisions().pop().unwrap();
    assert!(!decision.allowed);
    assert!(decision.collateral_unreachable);
    assert!(decision.reason.unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn expired_collateral_from_a_source_that_answers_is_still_403() {
    let sample = Sample::sgx();
    let server = Server::start_tls(sample.routes());
    let f = fixture(pccs_provider(&server, options()));
    let key = f.key(TeeKind::Sgx).to_owned();
    let (app, audit) = app_of(f, || A_DAY_AFTER_SGX_EXPIRY);

    let (status, retry_after, error) = http_transfer(app, &key, TeeKind::Sgx, &sample.quote).await;
    assert_eq!(status, axum::http::StatusCode::FORBIDDEN, "{error}");
    assert_eq!(retry_after, None);
    assert!(error.contains("collateral expired"), "{error}");
    assert!(!audit.decisions().pop().unwrap().collateral_unreachable);
}
