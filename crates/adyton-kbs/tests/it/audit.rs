//! The audit log fails closed: a transfer, a login or an admin change whose record cannot be
//! written is refused with 503 and leaves nothing behind (no key released, no token, no new key).
//! The file log writes whole lines, repairs a half line at open and rotates by size; records that
//! anyone can cause without a token are rate-limited into a summary; `quote: null` and policies
//! with `require_nonce`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{Collateral, TeeKind};
use adyton_envelope::wrap::TeeKeyPair;
use adyton_kbs::admin::{AdminAction, AdminAuth, AdminEvent, AdminUsers};
use adyton_kbs::audit::{
    AuditError, AuditSink, FileAudit, MemoryAudit, RateLimit, RateLimitedAudit, Rotation,
};
use adyton_kbs::http::{router_with_admin, KbsState};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker, TransferDecision};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const NOW: u64 = 1_800_000_000;
const MEASUREMENT: [u8; 48] = [0x4D; 48];
const PASSWORD: &str = "trial password, not a real one";

fn fixed_clock() -> u64 {
    NOW
}

/// A sink that fails (as a full disk does) while `failing` is set, and keeps records otherwise.
#[derive(Default)]
struct SwitchableAudit {
    failing: AtomicBool,
    kept: MemoryAudit,
}

impl SwitchableAudit {
    fn check(&self) -> Result<(), AuditError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28).into())
        } else {
            Ok(())
        }
    }
}

impl AuditSink for SwitchableAudit {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        self.check()?;
        self.kept.record(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        self.check()?;
        self.kept.record_admin(event)
    }

    fn record_value(&self, value: &Value) -> Result<(), AuditError> {
        self.check()?;
        self.kept.record_value(value)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    audit: Arc<SwitchableAudit>,
    key_id: String,
    policy_id: String,
}

fn fixture(require_nonce: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let mut table = json!({ "measurement": [hex::encode(MEASUREMENT)] });
    if require_nonce {
        table["require_nonce"] = json!(true);
    }
    let policy = broker.create_policy(TeeKind::Sim, table, NOW).unwrap();
    let key = broker.create_key(&policy.id, None, NOW).unwrap();
    let audit = Arc::new(SwitchableAudit::default());
    let state = Arc::new(KbsState::new(broker, audit.clone(), fixed_clock));
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let app = router_with_admin(state, Arc::new(AdminAuth::new(users)));
    Fixture {
        _dir: dir,
        app,
        audit,
        key_id: key.id,
        policy_id: policy.id,
    }
}

struct Reply {
    status: StatusCode,
    json: Value,
    retry_after: Option<String>,
}

impl Fixture {
    async fn call(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let answer = crate::answer::read(response).await;
        Reply {
            status: answer.status,
            json: answer.json,
            retry_after: answer.retry_after,
        }
    }

    async fn transfer(&self, body: Value) -> Reply {
        let request = Request::post(format!("/kbs/v1/keys/{}/transfer", self.key_id))
            .header("Attestation-Type", "SIM")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(request).await
    }

    /// An honest SIM transfer body, bound to `nonce` if given.
    fn honest_body(&self, nonce: Option<&[u8]>) -> Value {
        let attester = SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap();
        let key = TeeKeyPair::generate(2048).unwrap();
        let spki = key.public_key().unwrap().spki_der().to_vec();
        let evidence = attester
            .evidence(&expected_report_data(&spki, nonce))
            .unwrap();
        let mut body = json!({
            "quote": BASE64.encode(evidence.to_json()),
            "user_data": BASE64.encode(&spki),
        });
        if let Some(nonce) = nonce {
            body["nonce"] = json!(BASE64.encode(nonce));
        }
        body
    }

    async fn login(&self) -> Reply {
        let body = json!({ "username": "admin", "password": PASSWORD });
        let request = Request::post("/kbs/v1/token")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(request).await
    }

    async fn admin_post(&self, token: &str, path: &str, body: Value) -> Reply {
        let request = Request::post(path)
            .header("Authorization", format!("Bearer {token}"))
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(request).await
    }

    async fn admin_get(&self, token: &str, path: &str) -> Reply {
        let request = Request::get(path)
            .header("Authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.call(request).await
    }

    fn fail_audit(&self, failing: bool) {
        self.audit.failing.store(failing, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_transfer_whose_audit_record_cannot_be_written_is_503_and_releases_nothing() {
    let f = fixture(false);
    f.fail_audit(true);
    let reply = f.transfer(f.honest_body(None)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    assert!(reply.json.get("wrapped_key").is_none());
    assert!(reply.json.get("wrapped_swk").is_none());
    assert!(reply.json["error"].as_str().unwrap().contains("audit"));
    assert_eq!(reply.retry_after.as_deref(), Some("5"));
    assert!(f.audit.kept.decisions().is_empty());

    // Once the log can be written again, the same transfer is answered and recorded.
    f.fail_audit(false);
    let reply = f.transfer(f.honest_body(None)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert!(reply.json["wrapped_key"].is_string());
    assert_eq!(f.audit.kept.decisions().len(), 1);
}

#[tokio::test]
async fn a_login_whose_audit_record_cannot_be_written_gets_no_token() {
    let f = fixture(false);
    f.fail_audit(true);
    let reply = f.login().await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    assert!(reply.json.get("token").is_none());
    f.fail_audit(false);
    let reply = f.login().await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let events = f.audit.kept.admin_events();
    assert_eq!(events.len(), 1);
    assert!(events[0].allowed && events[0].action == AdminAction::Login);
}

#[tokio::test]
async fn an_admin_change_whose_audit_record_cannot_be_written_is_undone() {
    let f = fixture(false);
    let token = f.login().await.json["token"].as_str().unwrap().to_owned();
    f.fail_audit(true);
    let body = json!({
        "key_information": { "algorithm": "AES", "key_length": 256 },
        "transfer_policy_id": f.policy_id,
    });
    let reply = f.admin_post(&token, "/kbs/v1/keys", body).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    let policy = json!({ "attestation_type": "SIM", "sim": { "measurement": [] } });
    let reply = f
        .admin_post(&token, "/kbs/v1/key-transfer-policies", policy)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    f.fail_audit(false);
    // Neither the key nor the policy was kept: only the fixture's own are there.
    let keys = f.admin_get(&token, "/kbs/v1/keys").await.json;
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    let policies = f
        .admin_get(&token, "/kbs/v1/key-transfer-policies")
        .await
        .json;
    assert_eq!(policies.as_array().unwrap().len(), 1, "{policies}");
}

#[tokio::test]
async fn a_null_quote_is_400_not_a_nonce_request() {
    let f = fixture(false);
    for body in [
        json!({ "quote": null }),
        json!({ "quote": null, "user_data": "AAAA" }),
        json!({ "user_data": null }),
        json!({ "nonce": null }),
    ] {
        let reply = f.transfer(body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.json
        );
        assert!(reply.json["error"].as_str().unwrap().contains("null"));
    }
    // A body without `quote` is still the nonce request.
    let reply = f.transfer(json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json["nonce"].is_string());
}

#[tokio::test]
async fn a_policy_that_requires_a_nonce_refuses_nonce_less_transfers() {
    let f = fixture(true);
    let reply = f.transfer(f.honest_body(None)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.json);
    assert!(reply.json["error"]
        .as_str()
        .unwrap()
        .contains("requires a nonce"));
    let decisions = f.audit.kept.decisions();
    assert!(!decisions[0].allowed);

    // With a nonce from the broker, the same evidence flow is answered.
    let nonce = f.transfer(json!({})).await.json["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let nonce = BASE64.decode(nonce).unwrap();
    let reply = f.transfer(f.honest_body(Some(&nonce))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);

    // The setting shows at the policy's top level, and is refused inside the TEE's table.
    let token = f.login().await.json["token"].as_str().unwrap().to_owned();
    let policy = f
        .admin_get(
            &token,
            &format!("/kbs/v1/key-transfer-policies/{}", f.policy_id),
        )
        .await
        .json;
    assert_eq!(policy["require_nonce"], json!(true));
    assert!(policy["sim"].get("require_nonce").is_none(), "{policy}");
    let misplaced = json!({ "attestation_type": "SIM", "sim": { "require_nonce": true } });
    let reply = f
        .admin_post(&token, "/kbs/v1/key-transfer-policies", misplaced)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.json);
    let created = json!({
        "attestation_type": "SIM",
        "require_nonce": true,
        "sim": { "measurement": [hex::encode(MEASUREMENT)] },
    });
    let reply = f
        .admin_post(&token, "/kbs/v1/key-transfer-policies", created)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.json["require_nonce"], json!(true));
}

fn decision(allowed: bool, n: u64) -> TransferDecision {
    TransferDecision {
        time: NOW + n,
        key_id: format!("key-{n}"),
        tee: "SIM".into(),
        measurement: None,
        allowed,
        reason: (!allowed).then(|| "unknown key".into()),
        offline: None,
        collateral: None,
        collateral_unreachable: false,
        transfer_key: None,
        gpus: Vec::new(),
    }
}

#[test]
fn the_file_log_writes_whole_lines_and_cuts_off_a_half_line_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"{\"whole\":1}\n{\"half\":").unwrap();
    let log = FileAudit::open(&path, Rotation::default()).unwrap();
    log.record(&decision(true, 1)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "{\"whole\":1}");
    let record: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(record["key_id"], json!("key-1"));
    // A log it creates is the operator's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let fresh = dir.path().join("fresh.jsonl");
        FileAudit::open(&fresh, Rotation::default()).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn the_file_log_rotates_by_size_and_keeps_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rotation = Rotation {
        max_file_bytes: 400,
        max_files: 3,
    };
    let log = FileAudit::open(&path, rotation).unwrap();
    for n in 0..100 {
        log.record(&decision(true, n)).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    let mut all = Vec::new();
    for name in ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.len() <= 400, "{name}: {} bytes", text.len());
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            all.push(record["time"].as_u64().unwrap());
        }
    }
    // The newest records, in order, with none missing between them.
    assert_eq!(*all.last().unwrap(), NOW + 99);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
}

#[test]
fn unauthenticated_failures_are_rate_limited_into_a_summary_and_the_rest_always_written() {
    let inner = Arc::new(MemoryAudit::default());
    let limit = RateLimit {
        per_second: 1.0,
        burst: 3,
    };
    let audit = RateLimitedAudit::new(inner.clone(), limit, fixed_clock);
    for _ in 0..50 {
        audit.record(&decision(false, 0)).unwrap();
    }
    // Three of the fifty denials fit the burst; the rest are counted.
    assert_eq!(inner.decisions().len(), 3);
    assert!(inner.other_records().is_empty());
    // An allowed transfer is always written, after a summary of what was left out.
    audit.record(&decision(true, 0)).unwrap();
    let decisions = inner.decisions();
    assert_eq!(decisions.len(), 4);
    assert!(decisions[3].allowed);
    let summaries = inner.other_records();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["event"], json!("audit_records_suppressed"));
    assert_eq!(summaries[0]["suppressed"], json!(47));
    // Failed logins count as unauthenticated too; an operator's admin change never does.
    for _ in 0..10 {
        let event = AdminEvent::new(NOW, "mallory", AdminAction::Login);
        audit.record_admin(&event).unwrap();
    }
    assert_eq!(inner.admin_events().len(), 0);
    let mut change = AdminEvent::new(NOW, "admin", AdminAction::CreateKey);
    change.allowed = true;
    audit.record_admin(&change).unwrap();
    assert_eq!(inner.admin_events().len(), 1);
    assert_eq!(inner.other_records()[1]["suppressed"], json!(10));
}
