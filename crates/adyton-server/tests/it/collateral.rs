//! `GET /adyton/v1/collateral`: the collateral of the server's own evidence, fetched from its
//! platform's source (here the local imitation of Intel's PCS serving the recorded collateral of
//! the SGX and TDX samples), for clients that have none of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_attest::{Collateral, Evidence, TeeKind};
use adyton_server::http::{router, ServerState, Settings};
use adyton_server::repository::Repository;
use adyton_server::runtime::tract::TractEngine;
use adyton_server::service::{EvidenceCollateral, OwnCollateral};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::pcs_imitation::{Reply, Sample, Server};

const PATH: &str = "/adyton/v1/collateral";

/// 2025-07-01T00:00:00Z: inside the validity of both recorded DCAP collaterals.
const FIXED_TIME: u64 = 1_751_328_000;

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

fn provider(pcs: &Server) -> Arc<CollateralProvider> {
    let config = ProviderConfig::new()
        .with_pccs_url(pcs.url())
        .with_fetch_options(
            FetchOptions::default()
                .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
                // The imitation's collateral is old; the server serves it, the client judges it.
                .with_max_age(None),
        );
    Arc::new(CollateralProvider::new(config).unwrap())
}

fn app(collateral: Option<Arc<dyn OwnCollateral>>) -> Router {
    let mut state = ServerState::new(
        Arc::new(TractEngine::new()),
        Arc::new(Repository::new(1)),
        Settings::default(),
        None,
        None,
    );
    if let Some(collateral) = collateral {
        state = state.with_collateral(collateral);
    }
    router(Arc::new(state))
}

async fn get(app: &Router) -> (StatusCode, Option<String>, Vec<u8>) {
    let request = Request::builder().uri(PATH).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body.to_vec())
}

fn error_message(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).unwrap();
    json["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_serves_the_collateral_that_verifies_its_own_evidence() {
    let mut routes = Sample::sgx().routes();
    routes.extend(Sample::tdx().routes());
    let pcs = Server::start(routes);
    let provider = provider(&pcs);
    for sample in [Sample::sgx(), Sample::tdx()] {
        let evidence = evidence(&sample);
        let own = Arc::new(EvidenceCollateral::new(
            Arc::clone(&provider),
            evidence.clone(),
        ));
        own.fetch_now().unwrap().unwrap();
        let asked = pcs.requests().len();
        let app = app(Some(own));
        let (status, content_type, body) = get(&app).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(content_type.as_deref(), Some("application/json"));
        // Served from what was fetched at start: the PCS is not asked per request.
        get(&app).await;
        assert_eq!(pcs.requests().len(), asked);

        let served = Collateral::from_bundle_json(&body).unwrap();
        assert_eq!(
            served.dcap.as_ref(),
            Some(&sample.recorded),
            "{}",
            sample.tee
        );
        let verifier = CollateralProvider::from_collateral(served, "served");
        let (claims, _) = verifier.verify(&evidence, FIXED_TIME).unwrap();
        assert_eq!(claims.tee, evidence.tee);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_collateral_to_serve_answers_404() {
    // No source configured.
    let (status, _, body) = get(&app(None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error_message(&body).contains("serves no collateral"),
        "{}",
        error_message(&body)
    );

    // SIM evidence needs none, even with a source.
    let pcs = Server::start(HashMap::new());
    let sim = Evidence {
        tee: TeeKind::Sim,
        quote: vec![0; 16],
        certificates: None,
        gpus: Vec::new(),
    };
    let own = Arc::new(EvidenceCollateral::new(provider(&pcs), sim));
    assert_eq!(own.fetch_now().unwrap(), None);
    let (status, _, body) = get(&app(Some(own))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_message(&body).contains("serves no collateral"));
    assert!(pcs.requests().is_empty(), "{:?}", pcs.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_fails_with_nothing_cached_is_503_without_its_details() {
    let sample = Sample::sgx();
    let pcs = Server::start(HashMap::new());
    for path in sample.paths() {
        pcs.set(&path, Reply::Status(500));
    }
    let own = Arc::new(EvidenceCollateral::new(provider(&pcs), evidence(&sample)));
    let failure = own.fetch_now().unwrap_err();
    assert!(failure.contains("500"), "{failure}");
    let app = app(Some(own));
    let (status, _, body) = get(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let message = error_message(&body);
    assert!(message.contains("cannot be fetched now"), "{message}");
    assert!(
        !message.contains("127.0.0.1"),
        "the PCCS's address leaked: {message}"
    );
    // A failure is remembered for a while: anonymous requests do not make the server hammer
    // its source.
    let asked = pcs.requests().len();
    get(&app).await;
    assert_eq!(pcs.requests().len(), asked);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_keeps_serving_the_bundle_it_had() {
    let sample = Sample::sgx();
    let pcs = Server::start(sample.routes());
    // No stale copies from the provider's cache: its failures reach the endpoint.
    let config = ProviderConfig::new()
        .with_pccs_url(pcs.url())
        .with_fetch_options(
            FetchOptions::default()
                .with_timeouts(Duration::from_secs(2), Duration::from_secs(2))
                .with_max_age(Some(Duration::ZERO))
                .with_stale_on_error(false),
        );
    let provider = Arc::new(CollateralProvider::new(config).unwrap());
    let own = Arc::new(
        EvidenceCollateral::new(provider, evidence(&sample))
            .with_intervals(Duration::ZERO, Duration::ZERO),
    );
    let first = own.fetch_now().unwrap().unwrap();
    let app = app(Some(own));

    for path in sample.paths() {
        pcs.set(&path, Reply::Status(500));
    }
    let asked = pcs.requests().len();
    let (status, _, body) = get(&app).await;
    assert!(
        pcs.requests().len() > asked,
        "the source was not asked again"
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, first.to_vec());

    // A source that fails from the start has nothing to fall back on.
    let down = Server::start(HashMap::new());
    let config = ProviderConfig::new()
        .with_pccs_url(down.url())
        .with_fetch_options(FetchOptions::default().with_stale_on_error(false));
    let never = EvidenceCollateral::new(
        Arc::new(CollateralProvider::new(config).unwrap()),
        evidence(&sample),
    )
    .with_intervals(Duration::ZERO, Duration::ZERO);
    assert!(never.bundle().is_err());
    assert!(never.bundle().is_err());
    assert!(down.requests().len() >= 2, "{:?}", down.requests());
}
