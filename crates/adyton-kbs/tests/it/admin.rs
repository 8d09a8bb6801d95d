//! The admin API, in process: logins, tokens and their expiry, the failed-login limit, policy and
//! key management without key bytes in any answer, the audit of admin changes, and an end-to-end
//! run where a key imported over HTTP is released by a SIM transfer on the same router.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::Collateral;
use adyton_envelope::wrap::{TeeKeyPair, WrappedKey};
use adyton_kbs::admin::{
    AdminAction, AdminAuth, AdminError, AdminUsers, LoginLimits, PasswordPool,
};
use adyton_kbs::http::{
    router, router_with_admin, router_with_admin_pool, AuditSink, Clock, JsonLinesAudit, KbsState,
    MemoryAudit,
};
use adyton_kbs::master_key::MasterKey;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::{expected_report_data, Broker};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const NOW: u64 = 1_800_000_000;
const PASSWORD: &str = "trial password, not a real one";
const IMPORTED_KEY: [u8; 32] = [0xA7; 32];
const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn fixed_clock() -> u64 {
    NOW
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    audit: Arc<MemoryAudit>,
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
    retry_after: Option<String>,
}

fn state(dir: &tempfile::TempDir, audit: Arc<MemoryAudit>, clock: Clock) -> Arc<KbsState> {
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    Arc::new(KbsState::new(broker, audit, clock))
}

fn fixture_with_clock(clock: Clock) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let app = router_with_admin(
        state(&dir, audit.clone(), clock),
        Arc::new(AdminAuth::new(users)),
    );
    Fixture {
        _dir: dir,
        app,
        audit,
    }
}

fn fixture() -> Fixture {
    fixture_with_clock(fixed_clock)
}

fn sim_policy() -> Value {
    json!({
        "attestation_type": "SIM",
        "sim": { "measurement": [hex::encode(MEASUREMENT)] },
    })
}

impl Fixture {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        self.call_from(None, method, path, token, body).await
    }

    async fn call_from(
        &self,
        client: Option<IpAddr>,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(ip) = client {
            // What `into_make_service_with_connect_info` adds for a real connection.
            request = request.extension(ConnectInfo(SocketAddr::new(ip, 40000)));
        }
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, Body::from);
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let answer = crate::answer::read(response).await;
        Reply {
            status: answer.status,
            text: answer.text,
            json: answer.json,
            retry_after: answer.retry_after,
        }
    }

    async fn login_from(&self, client: IpAddr, username: &str, password: &str) -> Reply {
        let body = json!({ "username": username, "password": password });
        self.call_from(
            Some(client),
            Method::POST,
            "/kbs/v1/token",
            None,
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    async fn login_as(&self, username: &str, password: &str) -> Reply {
        let body = json!({ "username": username, "password": password });
        self.call(
            Method::POST,
            "/kbs/v1/token",
            None,
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    async fn token(&self) -> String {
        let reply = self.login_as("admin", PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json["token"].as_str().unwrap().to_owned()
    }

    async fn post(&self, token: &str, path: &str, body: &Value) -> Reply {
        let body = serde_json::to_vec(body).unwrap();
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn get(&self, token: &str, path: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn delete(&self, token: &str, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    async fn create_policy(&self, token: &str) -> String {
        let reply = self
            .post(token, "/kbs/v1/key-transfer-policies", &sim_policy())
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.json["id"].as_str().unwrap().to_owned()
    }

    async fn create_key(&self, token: &str, policy_id: &str, key: Option<&[u8]>) -> Reply {
        let mut info = json!({ "algorithm": "AES", "key_length": 256 });
        if let Some(key) = key {
            info["key_data"] = json!(BASE64.encode(key));
        }
        let body = json!({ "key_information": info, "transfer_policy_id": policy_id });
        self.post(token, "/kbs/v1/keys", &body).await
    }
}

fn assert_error(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert!(reply.json["error"].is_string(), "{}", reply.text);
}

/// No answer may carry the imported key, in any encoding a client would recognise.
fn assert_no_key_bytes(text: &str) {
    for encoded in [
        BASE64.encode(IMPORTED_KEY),
        BASE64URL.encode(IMPORTED_KEY),
        hex::encode(IMPORTED_KEY),
        hex::encode_upper(IMPORTED_KEY),
    ] {
        assert!(!text.contains(&encoded), "{text}");
    }
}

#[tokio::test]
async fn a_login_returns_a_token_that_opens_the_admin_api() {
    let f = fixture();
    let reply = f.login_as("admin", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["expires_in"], json!(900));
    let token = reply.json["token"].as_str().unwrap();
    assert_eq!(BASE64URL.decode(token).unwrap().len(), 32);

    let reply = f.get(token, "/kbs/v1/keys").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!([]));

    // Two logins, two different tokens.
    assert_ne!(f.token().await, token);

    let events = f.audit.admin_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].action, AdminAction::Login);
    assert!(events[0].allowed);
    assert_eq!(events[0].user, "admin");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401() {
    let f = fixture();
    let wrong_password = f.login_as("admin", "not the password").await;
    let unknown_user = f.login_as("mallory", PASSWORD).await;
    assert_error(&wrong_password, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong_password.json,
        json!({ "error": "invalid credentials" })
    );
    assert_eq!(wrong_password.text, unknown_user.text);
    assert_eq!(wrong_password.status, unknown_user.status);

    // Both failures are audited, without the passwords.
    let events = f.audit.admin_events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| !e.allowed && e.reason.is_some()));
    let log = format!("{events:?}");
    assert!(!log.contains(PASSWORD) && !log.contains("not the password"));
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_and_never_lock_the_operator_out_from_elsewhere() {
    static CLOCK: AtomicU64 = AtomicU64::new(NOW);
    fn clock() -> u64 {
        CLOCK.load(Ordering::SeqCst)
    }
    let f = fixture_with_clock(clock);
    let attacker: IpAddr = "192.0.2.66".parse().unwrap();
    let operator: IpAddr = "198.51.100.7".parse().unwrap();
    for _ in 0..5 {
        assert_error(
            &f.login_from(attacker, "admin", "guess").await,
            StatusCode::UNAUTHORIZED,
        );
    }
    // The sixth failure is counted, and the address must then wait, with Retry-After.
    assert_error(
        &f.login_from(attacker, "admin", "guess").await,
        StatusCode::UNAUTHORIZED,
    );
    let reply = f.login_from(attacker, "admin", PASSWORD).await;
    assert_error(&reply, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    // The operator, from another address, logs in as `admin` at once.
    let reply = f.login_from(operator, "admin", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // The attacker's waits double: 1 s, then 2 s, then 4 s.
    CLOCK.store(NOW + 1, Ordering::SeqCst);
    assert_error(
        &f.login_from(attacker, "admin", "guess").await,
        StatusCode::UNAUTHORIZED,
    );
    let reply = f.login_from(attacker, "admin", "guess").await;
    assert_error(&reply, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.retry_after.as_deref(), Some("2"));
    CLOCK.store(NOW + 3, Ordering::SeqCst);
    assert_error(
        &f.login_from(attacker, "admin", "guess").await,
        StatusCode::UNAUTHORIZED,
    );
    let reply = f.login_from(attacker, "admin", "guess").await;
    assert_eq!(reply.retry_after.as_deref(), Some("4"));

    // An IPv6 client is limited by its /64: another address of the same /64 waits too.
    let v6_a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
    let v6_b: IpAddr = "2001:db8:1:2::b".parse().unwrap();
    for _ in 0..6 {
        f.login_from(v6_a, "admin", "guess").await;
    }
    assert_error(
        &f.login_from(v6_b, "admin", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
    );

    // Once the wait is over, the right password from the attacker's address works again, and
    // forgives its failures.
    CLOCK.store(NOW + 10, Ordering::SeqCst);
    let reply = f.login_from(attacker, "admin", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[test]
fn above_the_global_limit_only_addresses_with_a_recent_login_may_try() {
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let limits = LoginLimits {
        global_failures_per_minute: 10,
        ..LoginLimits::default()
    };
    let auth = AdminAuth::with_limits(users, limits);
    let operator: IpAddr = "198.51.100.7".parse().unwrap();
    auth.login(operator, "admin", PASSWORD, NOW).unwrap();
    // Ten addresses fail once each: the global limit is reached.
    for n in 0..10u8 {
        let from = IpAddr::from([203, 0, 113, n]);
        assert!(matches!(
            auth.login(from, "admin", "guess", NOW),
            Err(AdminError::InvalidCredentials)
        ));
    }
    let stranger = IpAddr::from([203, 0, 113, 200]);
    assert!(matches!(
        auth.login(stranger, "admin", PASSWORD, NOW + 5),
        Err(AdminError::TooManyAttempts { retry_after: 55 })
    ));
    // The operator's address logged in successfully before: it still may.
    auth.login(operator, "admin", PASSWORD, NOW + 5).unwrap();
    // A minute later, everyone may try again.
    auth.login(stranger, "admin", PASSWORD, NOW + 60).unwrap();
}

#[tokio::test]
async fn logins_beyond_the_password_pool_are_503_with_retry_after_and_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let auth = Arc::new(AdminAuth::new(users));
    // One thread and one waiting check: the rest of a burst finds the pool full.
    let app = router_with_admin_pool(
        state(&dir, audit.clone(), fixed_clock),
        auth,
        PasswordPool::new(1, 1),
    );
    let f = Fixture {
        _dir: dir,
        app,
        audit,
    };
    let from: IpAddr = "192.0.2.1".parse().unwrap();
    let logins = (0..16).map(|_| f.login_from(from, "admin", "guess"));
    let replies = futures_join_all(logins).await;
    let busy: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!busy.is_empty(), "16 concurrent logins on a pool of one");
    for reply in &busy {
        assert_error(reply, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.retry_after.as_deref(), Some("1"));
    }
    // Busy refusals were never checked, so they do not count against the address: at most
    // the checked ones did.
    let checked = replies.len() - busy.len();
    assert!(checked >= 1);
    if checked <= 5 {
        let reply = f.login_from(from, "admin", PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
}

#[tokio::test]
async fn an_operator_who_logged_in_before_gets_through_a_flood_that_fills_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(MemoryAudit::default());
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let app = router_with_admin_pool(
        state(&dir, audit.clone(), fixed_clock),
        Arc::new(AdminAuth::new(users)),
        PasswordPool::new(1, 1),
    );
    let f = Fixture {
        _dir: dir,
        app,
        audit,
    };
    let operator: IpAddr = "198.51.100.7".parse().unwrap();
    let reply = f.login_from(operator, "admin", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // Sixteen new addresses at once fill the pool's lane for them; the operator's address, which
    // logged in before, has a lane of its own and is checked next.
    let flood = (0..16u8).map(|n| f.login_from(IpAddr::from([203, 0, 113, n]), "admin", "guess"));
    let operator_login = f.login_from(operator, "admin", PASSWORD);
    let all = futures_join_all(
        flood
            .map(|login| {
                Box::pin(login)
                    as std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>>
            })
            .chain(std::iter::once(Box::pin(operator_login) as _)),
    )
    .await;
    let (operator_reply, flood_replies) = all.split_last().unwrap();
    assert!(flood_replies
        .iter()
        .any(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        operator_reply.status,
        StatusCode::OK,
        "{}",
        operator_reply.text
    );
}

/// Runs the futures concurrently on the current task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs = Vec::with_capacity(set.len());
    // Poll all of them until each completes: a tiny join_all without another dependency.
    let mut pending: Vec<Option<_>> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.extend(results.into_iter().flatten());
    outputs
}

fn admin_routes() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/kbs/v1/keys"),
        (Method::POST, "/kbs/v1/keys"),
        (Method::GET, "/kbs/v1/keys/some-id"),
        (Method::DELETE, "/kbs/v1/keys/some-id"),
        (Method::GET, "/kbs/v1/key-transfer-policies"),
        (Method::POST, "/kbs/v1/key-transfer-policies"),
        (Method::GET, "/kbs/v1/key-transfer-policies/some-id"),
        (Method::DELETE, "/kbs/v1/key-transfer-policies/some-id"),
    ]
}

#[tokio::test]
async fn admin_requests_without_a_live_token_are_401() {
    let f = fixture();
    let real = f.token().await;
    let body = serde_json::to_vec(&sim_policy()).unwrap();
    for (method, path) in admin_routes() {
        let reply = f.call(method.clone(), path, None, Some(body.clone())).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED);
        let wrong = BASE64URL.encode([0u8; 32]);
        let reply = f
            .call(method.clone(), path, Some(&wrong), Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED);
        // One character off the real token.
        let mut tampered = real.clone();
        let last = if tampered.ends_with('A') { "B" } else { "A" };
        tampered.replace_range(tampered.len() - 1.., last);
        let reply = f
            .call(method, path, Some(&tampered), Some(body.clone()))
            .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED);
    }
    // A token under another scheme is not a bearer token.
    let request = Request::get("/kbs/v1/keys")
        .header("Authorization", format!("Basic {real}"))
        .body(Body::empty())
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Nothing was created by the refused POSTs.
    assert_eq!(
        f.get(&real, "/kbs/v1/key-transfer-policies").await.json,
        json!([])
    );
}

#[tokio::test]
async fn an_expired_token_is_401() {
    static CLOCK: AtomicU64 = AtomicU64::new(NOW);
    fn clock() -> u64 {
        CLOCK.load(Ordering::SeqCst)
    }
    let f = fixture_with_clock(clock);
    let token = f.token().await;
    CLOCK.store(NOW + 899, Ordering::SeqCst);
    assert_eq!(f.get(&token, "/kbs/v1/keys").await.status, StatusCode::OK);
    CLOCK.store(NOW + 900, Ordering::SeqCst);
    assert_error(
        &f.get(&token, "/kbs/v1/keys").await,
        StatusCode::UNAUTHORIZED,
    );
    // It stays dead when the clock steps back.
    CLOCK.store(NOW, Ordering::SeqCst);
    assert_error(
        &f.get(&token, "/kbs/v1/keys").await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn a_router_without_operators_refuses_every_admin_request() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir, Arc::new(MemoryAudit::default()), fixed_clock));
    let f = Fixture {
        _dir: dir,
        app,
        audit: Arc::new(MemoryAudit::default()),
    };
    assert_error(
        &f.login_as("admin", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    );
    for (method, path) in admin_routes() {
        assert_error(
            &f.call(method, path, Some("anything"), None).await,
            StatusCode::UNAUTHORIZED,
        );
    }
}

#[tokio::test]
async fn policies_are_created_read_listed_and_deleted() {
    let f = fixture();
    let token = f.token().await;
    let reply = f
        .post(&token, "/kbs/v1/key-transfer-policies", &sim_policy())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.json["attestation_type"], json!("SIM"));
    assert_eq!(reply.json["created_at"], json!(NOW));
    assert_eq!(reply.json["sim"], sim_policy()["sim"]);

    let path = format!("/kbs/v1/key-transfer-policies/{id}");
    let got = f.get(&token, &path).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json, reply.json);

    let second = f.create_policy(&token).await;
    let list = f.get(&token, "/kbs/v1/key-transfer-policies").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let mut ids: Vec<&str> = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![id.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    assert_eq!(f.delete(&token, &path).await.status, StatusCode::NO_CONTENT);
    assert_error(&f.get(&token, &path).await, StatusCode::NOT_FOUND);
    assert_error(&f.delete(&token, &path).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_generated_or_imported_are_answered_without_key_bytes() {
    let f = fixture();
    let token = f.token().await;
    let policy = f.create_policy(&token).await;

    let generated = f.create_key(&token, &policy, None).await;
    assert_eq!(generated.status, StatusCode::CREATED, "{}", generated.text);
    let imported = f.create_key(&token, &policy, Some(&IMPORTED_KEY)).await;
    assert_eq!(imported.status, StatusCode::CREATED, "{}", imported.text);
    assert_no_key_bytes(&imported.text);
    for reply in [&generated, &imported] {
        assert_eq!(reply.json["transfer_policy_id"], json!(policy));
        assert_eq!(
            reply.json["key_information"],
            json!({ "algorithm": "AES", "key_length": 256 })
        );
        assert!(reply.json.get("key_data").is_none(), "{}", reply.text);
        assert!(
            reply.json["key_information"].get("key_data").is_none(),
            "{}",
            reply.text
        );
    }
    let id = imported.json["id"].as_str().unwrap();
    let path = format!("/kbs/v1/keys/{id}");

    let got = f.get(&token, &path).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json, imported.json);
    assert_no_key_bytes(&got.text);

    let list = f.get(&token, "/kbs/v1/keys").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.json.as_array().unwrap().len(), 2);
    assert_no_key_bytes(&list.text);

    assert_eq!(f.delete(&token, &path).await.status, StatusCode::NO_CONTENT);
    assert_error(&f.get(&token, &path).await, StatusCode::NOT_FOUND);
    assert_error(&f.delete(&token, &path).await, StatusCode::NOT_FOUND);
    assert_eq!(
        f.get(&token, "/kbs/v1/keys")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_no_key_bytes(&format!("{:?}", f.audit.admin_events()));
}

#[tokio::test]
async fn a_policy_in_use_cannot_be_deleted() {
    let f = fixture();
    let token = f.token().await;
    let policy = f.create_policy(&token).await;
    let key = f.create_key(&token, &policy, None).await;
    let key_id = key.json["id"].as_str().unwrap();
    let path = format!("/kbs/v1/key-transfer-policies/{policy}");

    assert_error(&f.delete(&token, &path).await, StatusCode::CONFLICT);
    assert_eq!(f.get(&token, &path).await.status, StatusCode::OK);

    let key_path = format!("/kbs/v1/keys/{key_id}");
    assert_eq!(
        f.delete(&token, &key_path).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(f.delete(&token, &path).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn malformed_admin_bodies_are_400() {
    let f = fixture();
    let token = f.token().await;
    let measurement = json!({ "measurement": [hex::encode(MEASUREMENT)] });
    for body in [
        // The table sits under another TEE's name than the attestation type.
        json!({ "attestation_type": "SIM", "tdx": measurement }),
        json!({ "attestation_type": "SIM", "sim": measurement, "tdx": measurement }),
        json!({ "attestation_type": "CCA", "cca": measurement }),
        json!({ "attestation_type": "SIM" }),
        json!({ "sim": measurement }),
        json!({ "attestation_type": "SIM", "sim": [1, 2] }),
        json!([1, 2]),
    ] {
        let reply = f.post(&token, "/kbs/v1/key-transfer-policies", &body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    let reply = f
        .call(
            Method::POST,
            "/kbs/v1/key-transfer-policies",
            Some(&token),
            Some(b"{ not json".to_vec()),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST);

    let policy = f.create_policy(&token).await;
    for body in [
        json!({ "key_information": { "algorithm": "RSA", "key_length": 256 }, "transfer_policy_id": policy }),
        json!({ "key_information": { "algorithm": "AES", "key_length": 128 }, "transfer_policy_id": policy }),
        json!({ "key_information": { "algorithm": "AES", "key_length": 256, "key_data": "not base64!" }, "transfer_policy_id": policy }),
        json!({ "key_information": { "algorithm": "AES", "key_length": 256, "key_data": BASE64.encode([1u8; 16]) }, "transfer_policy_id": policy }),
        json!({ "key_information": { "algorithm": "AES", "key_length": 256 } }),
        json!({ "transfer_policy_id": policy }),
    ] {
        let reply = f.post(&token, "/kbs/v1/keys", &body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    // An unknown policy is not found.
    let reply = f.create_key(&token, "no-such-policy", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND);
    // Nothing was created by the refused requests.
    assert_eq!(f.get(&token, "/kbs/v1/keys").await.json, json!([]));
    let policies = f.get(&token, "/kbs/v1/key-transfer-policies").await;
    assert_eq!(policies.json.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_changes_are_audited_without_secrets() {
    let f = fixture();
    let token = f.token().await;
    let policy = f.create_policy(&token).await;
    let key = f.create_key(&token, &policy, Some(&IMPORTED_KEY)).await;
    let key_id = key.json["id"].as_str().unwrap().to_owned();
    let policy_path = format!("/kbs/v1/key-transfer-policies/{policy}");
    f.delete(&token, &policy_path).await;
    f.delete(&token, &format!("/kbs/v1/keys/{key_id}")).await;
    f.delete(&token, &policy_path).await;

    let events = f.audit.admin_events();
    let summary: Vec<(AdminAction, Option<&str>, bool)> = events
        .iter()
        .map(|e| (e.action, e.target.as_deref(), e.allowed))
        .collect();
    assert_eq!(
        summary,
        vec![
            (AdminAction::Login, None, true),
            (AdminAction::CreatePolicy, Some(policy.as_str()), true),
            (AdminAction::CreateKey, Some(key_id.as_str()), true),
            (AdminAction::DeletePolicy, Some(policy.as_str()), false),
            (AdminAction::DeleteKey, Some(key_id.as_str()), true),
            (AdminAction::DeletePolicy, Some(policy.as_str()), true),
        ]
    );
    assert!(events.iter().all(|e| e.user == "admin" && e.time == NOW));

    // The JSON-lines sink writes one line per event, with no password, token or key.
    let sink = JsonLinesAudit::new(Vec::new());
    for event in &events {
        sink.record_admin(event).unwrap();
    }
    let log = String::from_utf8(sink.into_inner()).unwrap();
    assert_eq!(log.lines().count(), events.len());
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["action"], json!("login"));
    assert!(!log.contains(PASSWORD) && !log.contains(&token), "{log}");
    assert_no_key_bytes(&log);
}

#[tokio::test]
async fn a_key_imported_over_http_is_released_by_a_sim_transfer_on_the_same_router() {
    let f = fixture();
    let token = f.token().await;
    let policy = f.create_policy(&token).await;
    let key = f.create_key(&token, &policy, Some(&IMPORTED_KEY)).await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let key_id = key.json["id"].as_str().unwrap();

    let attester = SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap();
    let tee_key = TeeKeyPair::generate(2048).unwrap();
    let user_data = tee_key.public_key().unwrap().spki_der().to_vec();
    let evidence = attester
        .evidence(&expected_report_data(&user_data, None))
        .unwrap()
        .to_json();
    let body = json!({
        "quote": BASE64.encode(evidence),
        "user_data": BASE64.encode(&user_data),
    });
    let request = Request::post(format!("/kbs/v1/keys/{key_id}/transfer"))
        .header("Attestation-Type", "SIM")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let reply: Value = serde_json::from_slice(&bytes).unwrap();
    let field = |name: &str| BASE64.decode(reply[name].as_str().unwrap()).unwrap();
    let wrapped = WrappedKey {
        wrapped_key: field("wrapped_key"),
        wrapped_swk: field("wrapped_swk"),
    };
    let released = tee_key.unwrap_transfer(&wrapped).unwrap();
    assert_eq!(*released.expose_secret(), IMPORTED_KEY);

    let decisions = f.audit.decisions();
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0].allowed);
    assert_eq!(decisions[0].key_id, key_id);
}

/// The collateral counters, for operators only.
#[tokio::test]
async fn metrics_are_prometheus_text_for_operators_only() {
    let f = fixture();
    let anonymous = f.call(Method::GET, "/kbs/v1/metrics", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let token = f.token().await;
    let reply = f
        .call(Method::GET, "/kbs/v1/metrics", Some(&token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    for line in [
        "# TYPE adyton_kbs_collateral_total counter",
        "adyton_kbs_collateral_total{origin=\"network\"} 0",
        "adyton_kbs_collateral_total{origin=\"stale\"} 0",
        "adyton_kbs_collateral_failures_total 0",
        "adyton_kbs_collateral_grace_total 0",
    ] {
        assert!(
            reply.text.lines().any(|l| l == line),
            "{line}: {}",
            reply.text
        );
    }
}
