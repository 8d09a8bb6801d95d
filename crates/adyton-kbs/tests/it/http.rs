//! The HTTP transfer endpoint, in process: status codes, `{"error": ...}` bodies, the nonce flow,
//! and one audit decision per transfer that reached the broker.

use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{Collateral, TeeKind};
use adyton_envelope::wrap::{TeeKeyPair, TransferKeyKind, WrappedKey};
use adyton_kbs::http::{router, AuditSink, JsonLinesAudit, KbsState, MemoryAudit};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const NOW: u64 = 1_800_000_000;
const MODEL_KEY: [u8; 32] = [0x5A; 32];
const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn fixed_clock() -> u64 {
    NOW
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    audit: Arc<MemoryAudit>,
    key_id: String,
    attester: SimAttester,
    tee_key: TeeKeyPair,
}

fn fixture_pinned_to(measurement: [u8; 48]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let policy = broker
        .create_policy(
            TeeKind::Sim,
            json!({ "measurement": [hex::encode(measurement)] }),
            NOW,
        )
        .unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let state = KbsState {
        broker,
        audit: audit.clone(),
        clock: fixed_clock,
    };
    Fixture {
        _dir: dir,
        app: router(Arc::new(state)),
        audit,
        key_id: key.id,
        attester: SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap(),
        tee_key: TeeKeyPair::generate(2048).unwrap(),
    }
}

fn fixture() -> Fixture {
    fixture_pinned_to(MEASUREMENT)
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
}

impl Fixture {
    fn spki(&self) -> Vec<u8> {
        self.tee_key.public_key().unwrap().spki_der().to_vec()
    }

    /// A transfer body whose evidence binds `bound`, presenting `user_data` and `nonce`.
    fn body(&self, user_data: &[u8], nonce: Option<&[u8]>, bound: [u8; 64]) -> Vec<u8> {
        let evidence = self.attester.evidence(&bound).unwrap().to_json();
        let mut body = json!({
            "quote": BASE64.encode(evidence),
            "user_data": BASE64.encode(user_data),
            "extra_field": "ignored",
        });
        if let Some(nonce) = nonce {
            body["nonce"] = json!(BASE64.encode(nonce));
        }
        serde_json::to_vec(&body).unwrap()
    }

    fn honest_body(&self) -> Vec<u8> {
        let user_data = self.spki();
        self.body(&user_data, None, expected_report_data(&user_data, None))
    }

    async fn send(&self, key_id: &str, tee: &str, body: Vec<u8>, content_type: bool) -> Reply {
        let mut request = Request::post(format!("/kbs/v1/keys/{key_id}/transfer"));
        if !tee.is_empty() {
            request = request.header("Attestation-Type", tee);
        }
        if content_type {
            request = request.header("Content-Type", "application/json");
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, text, json }
    }

    async fn transfer(&self, body: Vec<u8>) -> Reply {
        self.send(&self.key_id, "SIM", body, true).await
    }

    fn unwrap_reply(&self, reply: &Reply) -> [u8; 32] {
        let field = |name: &str| BASE64.decode(reply.json[name].as_str().unwrap()).unwrap();
        let wrapped = WrappedKey {
            wrapped_key: field("wrapped_key"),
            wrapped_swk: field("wrapped_swk"),
        };
        *self
            .tee_key
            .unwrap_transfer(&wrapped)
            .unwrap()
            .expose_secret()
    }

    /// The reply is an error with `status`, carries no key, and (when the broker was reached) the
    /// last audit decision is a denial.
    fn assert_denied(&self, reply: &Reply, status: StatusCode, audited: bool) {
        assert_eq!(reply.status, status, "{}", reply.text);
        assert!(reply.json["error"].is_string(), "{}", reply.text);
        assert!(reply.json.get("wrapped_key").is_none(), "{}", reply.text);
        assert!(!reply.text.contains(&BASE64.encode(MODEL_KEY)));
        assert!(!reply.text.contains(&hex::encode(MODEL_KEY)));
        let decisions = self.audit.decisions();
        if audited {
            let last = decisions.last().unwrap();
            assert!(!last.allowed);
            assert!(last.reason.is_some());
        } else {
            assert!(decisions.is_empty(), "{decisions:?}");
        }
    }
}

#[tokio::test]
async fn the_honest_transfer_releases_the_key_and_is_audited() {
    let f = fixture();
    let reply = f.transfer(f.honest_body()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(f.unwrap_reply(&reply), MODEL_KEY);

    let decisions = f.audit.decisions();
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0].allowed);
    assert_eq!(decisions[0].key_id, f.key_id);
    assert_eq!(decisions[0].time, NOW);
    assert_eq!(
        decisions[0].measurement.as_deref(),
        Some(hex::encode(MEASUREMENT).as_str())
    );

    // The JSON-lines sink writes that decision as one line without any secret.
    let sink = JsonLinesAudit::new(Vec::new());
    sink.record(&decisions[0]).unwrap();
    let log = String::from_utf8(sink.into_inner()).unwrap();
    assert_eq!(log.lines().count(), 1);
    assert!(log.ends_with('\n'));
    let line: Value = serde_json::from_str(log.trim_end()).unwrap();
    assert_eq!(line["allowed"], json!(true));
    assert_eq!(line["key_id"], json!(f.key_id));
    for secret in [
        hex::encode(MODEL_KEY),
        BASE64.encode(MODEL_KEY),
        BASE64.encode(f.spki()),
    ] {
        assert!(!log.contains(&secret), "{log}");
    }
}

/// A P-384 `user_data` gets its answer over HTTP as an RSA one does; a P-256 one is a 400 that
/// names the curve, audited as a denial.
#[tokio::test]
async fn a_p384_key_is_served_and_a_p256_key_is_a_bad_request() {
    let mut f = fixture();
    f.tee_key = TeeKeyPair::generate_kind(TransferKeyKind::P384).unwrap();
    let reply = f.transfer(f.honest_body()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(f.unwrap_reply(&reply), MODEL_KEY);
    assert_eq!(
        BASE64
            .decode(reply.json["wrapped_swk"].as_str().unwrap())
            .unwrap()
            .len(),
        97 + 32 + 16
    );

    let p256 = aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256)
        .unwrap()
        .compute_public_key()
        .unwrap();
    let p256 = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(&p256)
        .unwrap()
        .as_ref()
        .to_vec();
    let body = f.body(&p256, None, expected_report_data(&p256, None));
    let reply = f.transfer(body).await;
    f.assert_denied(&reply, StatusCode::BAD_REQUEST, true);
    assert!(
        reply.text.contains("P-256 is not supported"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_body_without_content_type_still_works() {
    let f = fixture();
    let reply = f.send(&f.key_id, "SIM", f.honest_body(), false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(f.unwrap_reply(&reply), MODEL_KEY);
}

#[tokio::test]
async fn a_nonce_is_issued_bound_once_and_refused_on_replay() {
    let f = fixture();
    for empty in [b"{}".to_vec(), Vec::new()] {
        let reply = f.send(&f.key_id, "", empty, false).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert!(reply.json["nonce"].is_string(), "{}", reply.text);
    }
    let reply = f.transfer(b"{}".to_vec()).await;
    let nonce = BASE64
        .decode(reply.json["nonce"].as_str().unwrap())
        .unwrap();
    // Asking for a nonce is not a transfer attempt.
    assert!(f.audit.decisions().is_empty());

    let user_data = f.spki();
    let bound = expected_report_data(&user_data, Some(&nonce));
    let body = f.body(&user_data, Some(&nonce), bound);
    let reply = f.transfer(body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(f.unwrap_reply(&reply), MODEL_KEY);

    let replay = f.transfer(body).await;
    f.assert_denied(&replay, StatusCode::FORBIDDEN, true);
    assert!(replay.text.contains("nonce"), "{}", replay.text);
    assert_eq!(f.audit.decisions().len(), 2);
}

#[tokio::test]
async fn report_data_not_binding_user_data_is_forbidden() {
    let f = fixture();
    let other = TeeKeyPair::generate(2048)
        .unwrap()
        .public_key()
        .unwrap()
        .spki_der()
        .to_vec();
    let body = f.body(&f.spki(), None, expected_report_data(&other, None));
    f.assert_denied(&f.transfer(body).await, StatusCode::FORBIDDEN, true);
}

#[tokio::test]
async fn the_wrong_measurement_is_forbidden() {
    let f = fixture_pinned_to([0x4E; 48]);
    let reply = f.transfer(f.honest_body()).await;
    f.assert_denied(&reply, StatusCode::FORBIDDEN, true);
    assert!(reply.text.contains("policy denied"), "{}", reply.text);
}

#[tokio::test]
async fn the_wrong_attestation_type_is_forbidden_and_an_unknown_one_is_bad() {
    let f = fixture();
    let reply = f.send(&f.key_id, "TDX", f.honest_body(), true).await;
    f.assert_denied(&reply, StatusCode::FORBIDDEN, true);

    let reply = f.send(&f.key_id, "CCA", f.honest_body(), true).await;
    f.assert_denied(&reply, StatusCode::BAD_REQUEST, true);

    let reply = f.send(&f.key_id, "", f.honest_body(), true).await;
    f.assert_denied(&reply, StatusCode::BAD_REQUEST, true);
    assert_eq!(f.audit.decisions().len(), 3);
}

#[tokio::test]
async fn an_unknown_key_is_not_found() {
    let f = fixture();
    let reply = f.send("no-such-key", "SIM", f.honest_body(), true).await;
    f.assert_denied(&reply, StatusCode::NOT_FOUND, true);
    assert_eq!(f.audit.decisions()[0].key_id, "no-such-key");
}

#[tokio::test]
async fn malformed_base64_and_json_are_bad_requests_that_never_reach_the_broker() {
    let f = fixture();
    let mut body: Value = serde_json::from_slice(&f.honest_body()).unwrap();
    body["user_data"] = json!("not base64!");
    let reply = f.transfer(serde_json::to_vec(&body).unwrap()).await;
    f.assert_denied(&reply, StatusCode::BAD_REQUEST, false);
    assert!(reply.text.contains("user_data"), "{}", reply.text);

    for bad in [&b"{ not json"[..], b"[1, 2]", b"{\"quote\": 5}"] {
        let reply = f.transfer(bad.to_vec()).await;
        f.assert_denied(&reply, StatusCode::BAD_REQUEST, false);
    }

    // A quote without user_data.
    let reply = f.transfer(br#"{"quote": "AAAA"}"#.to_vec()).await;
    f.assert_denied(&reply, StatusCode::BAD_REQUEST, false);
}

#[tokio::test]
async fn a_body_over_the_limit_is_too_large() {
    let f = fixture();
    let mut body = f.honest_body();
    body.resize(adyton_kbs::http::TRANSFER_BODY_LIMIT + 1, b' ');
    let reply = f.transfer(body).await;
    f.assert_denied(&reply, StatusCode::PAYLOAD_TOO_LARGE, false);
}
