//! `POST /kbs/v1/keys/{id}/offline-transfer`, in process: an operator's answer to an offline
//! device's provisioning request. Admin authentication, the body's checks, TDX refused, the
//! broker's decision without a nonce, and the audit line marked offline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{Collateral, Evidence, TeeKind};
use adyton_envelope::wrap::{ModulusOrder, TeeKeyPair, TransferKeyKind, WrappedKey};
use adyton_kbs::admin::{AdminAuth, AdminUsers};
use adyton_kbs::http::{
    router_with_admin, AuditSink, Clock, JsonLinesAudit, KbsState, MemoryAudit,
};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker, TransferRequest};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const NOW: u64 = 1_800_000_000;
const PASSWORD: &str = "trial password for the offline tests";
const MODEL_KEY: [u8; 32] = [0x6B; 32];
const MEASUREMENT: [u8; 48] = [0x4D; 48];
const REQUEST_ID: &str = "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b";
const MODEL: &str = "resnet-50";
const TDX_REFUSAL: &str = "TDX has no sealing key: offline provisioning needs SGX or SEV-SNP";

fn fixed_clock() -> u64 {
    NOW
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    audit: Arc<MemoryAudit>,
    key_id: String,
    attester: SimAttester,
    device_key: TeeKeyPair,
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
}

fn fixture_with_clock(clock: Clock) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let policy = broker
        .create_policy(
            TeeKind::Sim,
            json!({ "measurement": [hex::encode(MEASUREMENT)] }),
            NOW,
        )
        .unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let state = Arc::new(KbsState::new(broker, audit.clone(), clock));
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    Fixture {
        _dir: dir,
        app: router_with_admin(state, Arc::new(AdminAuth::new(users))),
        audit,
        key_id: key.id,
        attester: SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap(),
        device_key: TeeKeyPair::generate(3072).unwrap(),
    }
}

fn fixture() -> Fixture {
    fixture_with_clock(fixed_clock)
}

impl Fixture {
    fn spki(&self) -> Vec<u8> {
        self.device_key.public_key().unwrap().spki_der().to_vec()
    }

    /// A provisioning request as a device writes it, with `attester`'s evidence over `bound`.
    fn request_with(&self, attester: &SimAttester, bound: [u8; 64]) -> Value {
        let evidence = attester.evidence(&bound).unwrap().to_json();
        json!({
            "format": "adyton-provision-request/1",
            "request_id": REQUEST_ID,
            "model": MODEL,
            "key_id": self.key_id,
            "tee": "SIM",
            "sealing_policy": "exact-build",
            "public_key": BASE64.encode(self.spki()),
            "evidence": BASE64.encode(evidence),
            "created_at": NOW - 60,
        })
    }

    /// The honest request: evidence over SHA-512 of the DER public key.
    fn request(&self) -> Value {
        self.request_with(&self.attester, expected_report_data(&self.spki(), None))
    }

    async fn call(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = Request::builder().method(Method::POST).uri(path);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
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

    async fn token(&self) -> String {
        let body = json!({ "username": "admin", "password": PASSWORD });
        let reply = self
            .call("/kbs/v1/token", None, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json["token"].as_str().unwrap().to_owned()
    }

    async fn offline_raw(&self, key_id: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let path = format!("/kbs/v1/keys/{key_id}/offline-transfer");
        self.call(&path, token, body).await
    }

    async fn offline(&self, token: &str, request: &Value) -> Reply {
        self.offline_raw(
            &self.key_id,
            Some(token),
            serde_json::to_vec(request).unwrap(),
        )
        .await
    }

    fn unwrap_reply(&self, reply: &Reply) -> [u8; 32] {
        let field = |name: &str| BASE64.decode(reply.json[name].as_str().unwrap()).unwrap();
        let wrapped = WrappedKey {
            wrapped_key: field("wrapped_key"),
            wrapped_swk: field("wrapped_swk"),
        };
        *self
            .device_key
            .unwrap_transfer(&wrapped)
            .unwrap()
            .expose_secret()
    }

    /// The reply is an error with `status` and carries no key; `audited` decisions were recorded
    /// in all, the last of them (if any) a denial marked offline.
    fn assert_refused(&self, reply: &Reply, status: StatusCode, audited: usize) {
        assert_eq!(reply.status, status, "{}", reply.text);
        assert!(reply.json["error"].is_string(), "{}", reply.text);
        assert!(reply.json.get("wrapped_key").is_none(), "{}", reply.text);
        assert!(!reply.text.contains(&BASE64.encode(MODEL_KEY)));
        let decisions = self.audit.decisions();
        assert_eq!(decisions.len(), audited, "{decisions:?}");
        if let Some(last) = decisions.last() {
            assert!(!last.allowed, "{last:?}");
            assert!(last.reason.is_some(), "{last:?}");
            let offline = last.offline.as_ref().unwrap();
            assert_eq!(offline.request_id, REQUEST_ID);
            assert_eq!(offline.model, MODEL);
            assert_eq!(offline.operator, "admin");
        }
    }
}

#[tokio::test]
async fn an_offline_request_is_answered_with_the_key_and_audited_as_offline() {
    let f = fixture();
    let token = f.token().await;
    let reply = f.offline(&token, &f.request()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json.as_object().unwrap().len(),
        2,
        "only the wrapped key: {}",
        reply.text
    );
    assert_eq!(f.unwrap_reply(&reply), MODEL_KEY);

    let decisions = f.audit.decisions();
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0];
    assert!(decision.allowed);
    assert_eq!(decision.key_id, f.key_id);
    assert_eq!(decision.tee, "SIM");
    assert_eq!(
        decision.measurement.as_deref(),
        Some(hex::encode(MEASUREMENT).as_str())
    );

    // The audit line names the request, the model and the operator, and holds no secret.
    let sink = JsonLinesAudit::new(Vec::new());
    sink.record(decision).unwrap();
    let log = String::from_utf8(sink.into_inner()).unwrap();
    let line: Value = serde_json::from_str(log.trim_end()).unwrap();
    assert_eq!(
        line["offline"],
        json!({ "request_id": REQUEST_ID, "model": MODEL, "operator": "admin" })
    );
    assert_eq!(line["allowed"], json!(true));
    for secret in [
        hex::encode(MODEL_KEY),
        BASE64.encode(MODEL_KEY),
        BASE64.encode(f.spki()),
        token.clone(),
        PASSWORD.to_owned(),
    ] {
        assert!(!log.contains(&secret), "{log}");
    }

    // A second answer to the same request (no nonce to spend) wraps the same key afresh.
    let again = f.offline(&token, &f.request()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_ne!(again.json["wrapped_swk"], reply.json["wrapped_swk"]);
    assert_eq!(f.unwrap_reply(&again), MODEL_KEY);
}

#[tokio::test]
async fn an_online_audit_line_is_unchanged() {
    let f = fixture();
    let spki = f.spki();
    let evidence = f
        .attester
        .evidence(&expected_report_data(&spki, None))
        .unwrap();
    let reply = f
        .call(
            &format!("/kbs/v1/keys/{}/transfer", f.key_id),
            None,
            serde_json::to_vec(&json!({
                "quote": BASE64.encode(evidence.to_json()),
                "user_data": BASE64.encode(&spki),
            }))
            .unwrap(),
        )
        .await;
    // No Attestation-Type: refused by the broker, and audited as an online decision.
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let decision = f.audit.decisions().pop().unwrap();
    assert!(decision.offline.is_none());
    let line = serde_json::to_value(&decision).unwrap();
    let mut keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["allowed", "key_id", "measurement", "reason", "tee", "time"]
    );
}

#[tokio::test]
async fn without_a_valid_token_it_is_401_before_the_body_is_read() {
    let f = fixture();
    let body = serde_json::to_vec(&f.request()).unwrap();
    let reply = f.offline_raw(&f.key_id, None, body.clone()).await;
    f.assert_refused(&reply, StatusCode::UNAUTHORIZED, 0);
    let reply = f
        .offline_raw(&f.key_id, Some("not-a-real-token"), body.clone())
        .await;
    f.assert_refused(&reply, StatusCode::UNAUTHORIZED, 0);
    // Even a malformed body is refused for the missing token first.
    let reply = f.offline_raw(&f.key_id, None, b"{".to_vec()).await;
    f.assert_refused(&reply, StatusCode::UNAUTHORIZED, 0);
    // A token is not a password, nor a Basic credential.
    let request = Request::post(format!("/kbs/v1/keys/{}/offline-transfer", f.key_id))
        .header("Authorization", format!("Basic {PASSWORD}"))
        .body(Body::from(body))
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(f.audit.decisions().is_empty());
}

#[tokio::test]
async fn an_expired_token_is_401() {
    static CLOCK: AtomicU64 = AtomicU64::new(NOW);
    fn clock() -> u64 {
        CLOCK.load(Ordering::SeqCst)
    }
    let f = fixture_with_clock(clock);
    let token = f.token().await;
    CLOCK.store(NOW + 900, Ordering::SeqCst);
    let reply = f.offline(&token, &f.request()).await;
    f.assert_refused(&reply, StatusCode::UNAUTHORIZED, 0);
}

#[tokio::test]
async fn evidence_for_another_public_key_is_403_and_audited() {
    let f = fixture();
    let token = f.token().await;
    let other = TeeKeyPair::generate(3072).unwrap();
    let other_spki = other.public_key().unwrap().spki_der().to_vec();
    let request = f.request_with(&f.attester, expected_report_data(&other_spki, None));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::FORBIDDEN, 1);
    assert!(reply.text.contains("report data"), "{}", reply.text);
    // Evidence bound with a nonce (the online form) does not pass offline either.
    let request = f.request_with(&f.attester, expected_report_data(&f.spki(), Some(&[7; 56])));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::FORBIDDEN, 2);
}

#[tokio::test]
async fn a_measurement_not_in_the_policy_is_403_and_audited() {
    let f = fixture();
    let token = f.token().await;
    let stranger = SimAttester::with_measurement([3; 32], [0x11; 48]).unwrap();
    let request = f.request_with(&stranger, expected_report_data(&f.spki(), None));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::FORBIDDEN, 1);
    let decision = f.audit.decisions().pop().unwrap();
    assert_eq!(
        decision.measurement.as_deref(),
        Some(hex::encode([0x11; 48]).as_str())
    );
}

#[tokio::test]
async fn a_tee_other_than_the_policys_is_403_and_audited() {
    let f = fixture();
    let token = f.token().await;
    let mut request = f.request();
    request["tee"] = json!("SGX");
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::FORBIDDEN, 1);
}

#[tokio::test]
async fn tdx_is_refused_with_400_and_audited() {
    let f = fixture();
    let token = f.token().await;
    let mut request = f.request();
    request["tee"] = json!("TDX");
    let evidence = Evidence {
        tee: TeeKind::Tdx,
        quote: vec![0; 64],
        certificates: None,
        gpus: Vec::new(),
    };
    request["evidence"] = json!(BASE64.encode(evidence.to_json()));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 1);
    assert_eq!(reply.json["error"], json!(TDX_REFUSAL));
    let decision = f.audit.decisions().pop().unwrap();
    assert_eq!(decision.tee, "TDX");
    assert_eq!(decision.reason.as_deref(), Some(TDX_REFUSAL));
}

#[tokio::test]
async fn a_key_id_other_than_the_paths_is_400() {
    let f = fixture();
    let token = f.token().await;
    let mut request = f.request();
    request["key_id"] = json!("another-key");
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 0);
    assert!(reply.text.contains("named in the path"), "{}", reply.text);
    // And the other way round: the body names the key, the path another.
    let reply = f
        .offline_raw(
            "another-key",
            Some(&token),
            serde_json::to_vec(&f.request()).unwrap(),
        )
        .await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 0);
}

#[tokio::test]
async fn an_unknown_key_is_404_and_audited() {
    let f = fixture();
    let token = f.token().await;
    let mut request = f.request();
    request["key_id"] = json!("no-such-key");
    let reply = f
        .offline_raw(
            "no-such-key",
            Some(&token),
            serde_json::to_vec(&request).unwrap(),
        )
        .await;
    f.assert_refused(&reply, StatusCode::NOT_FOUND, 1);
}

#[tokio::test]
async fn malformed_requests_are_400_and_never_reach_the_broker() {
    let f = fixture();
    let token = f.token().await;
    let cases: Vec<(&str, Value)> = vec![
        ("format", json!("adyton-provision-request/2")),
        ("request_id", json!("a/b")),
        ("request_id", json!("")),
        ("model", json!("x".repeat(129))),
        ("sealing_policy", json!("mrenclave")),
        ("public_key", json!("not base64!")),
        ("evidence", json!("%%%")),
        ("created_at", json!(-1)),
        ("created_at", json!("yesterday")),
    ];
    for (field, value) in cases {
        let mut request = f.request();
        request[field] = value;
        let reply = f.offline(&token, &request).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{field}: {}",
            reply.text
        );
        assert!(reply.json["error"].is_string(), "{}", reply.text);
    }
    let mut request = f.request();
    request["unexpected"] = json!("x");
    let reply = f.offline(&token, &request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(reply.text.contains("unexpected"), "{}", reply.text);
    let mut request = f.request();
    request.as_object_mut().unwrap().remove("evidence");
    let reply = f.offline(&token, &request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    for body in [&b""[..], b"{", b"[]", b"null"] {
        let reply = f.offline_raw(&f.key_id, Some(&token), body.to_vec()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    }
    assert!(f.audit.decisions().is_empty());
}

#[tokio::test]
async fn unreadable_keys_and_evidence_are_400_and_audited() {
    let f = fixture();
    let token = f.token().await;
    // Intel's raw form is accepted online, but the provisioning file carries DER.
    let raw = f
        .device_key
        .public_key()
        .unwrap()
        .to_raw(ModulusOrder::BigEndian)
        .unwrap();
    let mut request = f.request();
    request["public_key"] = json!(BASE64.encode(raw));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 1);
    assert!(reply.text.contains("public_key"), "{}", reply.text);
    let mut request = f.request();
    request["evidence"] = json!(BASE64.encode(b"{\"format\": \"nonsense\"}"));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 2);
    let mut request = f.request();
    request["tee"] = json!("XYZ");
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 3);
    // A P-384 key, even with evidence over it: the provisioning file carries an RSA key.
    let p384 = TeeKeyPair::generate_kind(TransferKeyKind::P384)
        .unwrap()
        .public_key()
        .unwrap()
        .spki_der()
        .to_vec();
    let mut request = f.request_with(&f.attester, expected_report_data(&p384, None));
    request["public_key"] = json!(BASE64.encode(&p384));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::BAD_REQUEST, 4);
    assert!(
        reply.text.contains("an offline transfer takes an RSA key"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let f = fixture();
    let token = f.token().await;
    let mut request = f.request();
    request["evidence"] = json!(BASE64.encode(vec![b'{'; 1 << 20]));
    let reply = f.offline(&token, &request).await;
    f.assert_refused(&reply, StatusCode::PAYLOAD_TOO_LARGE, 0);
}

/// The broker's own entry point, without HTTP: the same decision as the online transfer with no
/// nonce.
#[test]
fn the_broker_decides_offline_as_online_without_a_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let policy = broker
        .create_policy(
            TeeKind::Sim,
            json!({ "measurement": [hex::encode(MEASUREMENT)] }),
            NOW,
        )
        .unwrap();
    let key = broker
        .create_key(&policy.id, Some(&MODEL_KEY), NOW)
        .unwrap();
    let device = TeeKeyPair::generate(2048).unwrap();
    let spki = device.public_key().unwrap().spki_der().to_vec();
    let attester = SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap();
    let evidence = attester
        .evidence(&expected_report_data(&spki, None))
        .unwrap()
        .to_json()
        .into_bytes();
    let offline = adyton_kbs::transfer::OfflineTransferRequest {
        request_id: REQUEST_ID.into(),
        model: MODEL.into(),
        tee: "SIM".into(),
        public_key: spki.clone(),
        evidence: evidence.clone(),
    };
    let (outcome, decision) = broker.offline_transfer(&key.id, &offline, "alice", NOW);
    let (wrapped, _) = outcome.unwrap();
    assert_eq!(
        device.unwrap_transfer(&wrapped).unwrap().expose_secret(),
        &MODEL_KEY
    );
    assert!(decision.allowed);
    assert_eq!(decision.offline.unwrap().operator, "alice");
    let online = TransferRequest {
        attestation_type: "SIM".into(),
        quote: evidence,
        user_data: spki,
        nonce: None,
        collateral: None,
    };
    let (outcome, decision) = broker.transfer(&key.id, &online, NOW);
    assert!(outcome.is_ok());
    assert!(decision.offline.is_none());
}
