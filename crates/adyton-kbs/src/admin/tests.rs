//! The admin use cases without HTTP: each one's result and audit record, and its refusals (an
//! unknown policy or key, a malformed policy document, a policy the broker cannot evaluate, a
//! policy in use, a provisioning request for another key or for TDX, an audit log that cannot be
//! written). A missing or malformed bearer header is the HTTP layer's, and tested there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester as _;
use adyton_attest::Collateral;
use adyton_envelope::wrap::TeeKeyPair;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::*;
use crate::audit::{AuditSink, MemoryAudit};
use crate::master_key::MasterKey;
use crate::store::redb::RedbStore;
use crate::transfer::{expected_report_data, Broker, TransferDecision};

const NOW: u64 = 1_800_000_000;
const PASSWORD: &str = "service test password, not a real one";
const MEASUREMENT: [u8; 48] = [0x4D; 48];
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn clock() -> u64 {
    NOW
}

/// An audit sink that can be told to fail, recording into a [`MemoryAudit`] otherwise.
#[derive(Default)]
struct SwitchableAudit {
    memory: MemoryAudit,
    broken: std::sync::atomic::AtomicBool,
}

impl SwitchableAudit {
    fn check(&self) -> Result<(), AuditError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("the test broke the audit log").into());
        }
        Ok(())
    }

    fn break_it(&self) {
        self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl AuditSink for SwitchableAudit {
    fn record(&self, decision: &TransferDecision) -> Result<(), AuditError> {
        self.check()?;
        self.memory.record(decision)
    }

    fn record_admin(&self, event: &AdminEvent) -> Result<(), AuditError> {
        self.check()?;
        self.memory.record_admin(event)
    }

    fn record_value(&self, value: &Value) -> Result<(), AuditError> {
        self.check()?;
        self.memory.record_value(value)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    service: AdminService,
    auth: Arc<AdminAuth>,
    kbs: Arc<KbsState>,
    audit: Arc<SwitchableAudit>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("kbs.redb")).unwrap();
    let (master, _) = MasterKey::load_or_generate(dir.path()).unwrap();
    let broker = Broker::new(Arc::new(store), master, Collateral::none()).unwrap();
    let audit = Arc::new(SwitchableAudit::default());
    let kbs = Arc::new(KbsState::new(broker, audit.clone(), clock));
    let users = AdminUsers::with_password("admin", PASSWORD).unwrap();
    let auth = Arc::new(AdminAuth::new(users));
    let service = AdminService::new(kbs.clone(), auth.clone(), PasswordPool::new(1, 4));
    Fixture {
        _dir: dir,
        service,
        auth,
        kbs,
        audit,
    }
}

impl Fixture {
    /// An operator, logged in on the calling thread (not audited: the login is not under test).
    fn operator(&self) -> Operator {
        let issued = self.auth.login(CLIENT, "admin", PASSWORD, NOW).unwrap();
        self.service.authenticate(&issued.token).unwrap()
    }

    fn events(&self) -> Vec<AdminEvent> {
        self.audit.memory.admin_events()
    }

    fn policy(&self, operator: &Operator) -> PolicyRecord {
        self.service
            .create_policy(operator, new_policy(sim_document()))
            .unwrap()
    }

    /// A generated key under a new SIM policy.
    fn key(&self, operator: &Operator) -> KeyRecord {
        let policy = self.policy(operator);
        self.service
            .create_key(operator, aes_key(&policy.id))
            .unwrap()
    }
}

fn sim_document() -> Value {
    json!({
        "attestation_type": "SIM",
        "sim": { "measurement": [hex::encode(MEASUREMENT)] },
    })
}

fn document(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(fields) => fields,
        other => panic!("not an object: {other}"),
    }
}

fn new_policy(value: Value) -> NewPolicy {
    NewPolicy::from_document(document(value)).unwrap()
}

fn aes_key(policy_id: &str) -> NewKey {
    NewKey::new("AES", 256, policy_id.to_owned()).unwrap()
}

fn login(password: &str) -> Login {
    Login {
        username: "admin".into(),
        password: Zeroizing::new(password.into()),
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, ServiceError>, expected: &str) {
    match result {
        Err(ServiceError::InvalidRequest { reason }) => assert!(
            reason.contains(expected),
            "{reason:?} does not say {expected:?}"
        ),
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

/// The broker's refusal, audited, that `result` must be, checked by `expected`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, ServiceError>,
    expected: impl FnOnce(&KbsError) -> bool,
) {
    match result {
        Err(ServiceError::Broker(e)) => assert!(expected(&e), "unexpected refusal: {e:?}"),
        other => panic!("expected the broker's refusal, got {other:?}"),
    }
}

/// `result` must fail for want of its audit record.
fn assert_audit_failure<T: std::fmt::Debug>(result: Result<T, ServiceError>) {
    assert!(matches!(result, Err(ServiceError::Audit(_))), "{result:?}");
}

/// The one event recorded, checked against what it must say.
fn assert_one_event(f: &Fixture, action: AdminAction, allowed: bool) -> AdminEvent {
    let events = f.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events.into_iter().next().unwrap();
    assert_eq!(
        (event.action, event.allowed),
        (action, allowed),
        "{event:?}"
    );
    assert_eq!((event.user.as_str(), event.time), ("admin", NOW));
    assert_eq!(event.reason.is_none(), allowed, "{event:?}");
    event
}

#[tokio::test]
async fn a_login_issues_a_token_that_authenticates_its_operator_and_is_audited() {
    let f = fixture();
    let issued = f.service.login(CLIENT, login(PASSWORD)).await.unwrap();
    assert_eq!(issued.expires_in, TOKEN_LIFETIME_SECS);
    let operator = f.service.authenticate(&issued.token).unwrap();
    assert_eq!(operator.user(), "admin");
    let event = assert_one_event(&f, AdminAction::Login, true);
    assert_eq!(event.target, None);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_audited() {
    let f = fixture();
    let refused = f.service.login(CLIENT, login("not the password")).await;
    assert!(
        matches!(
            refused,
            Err(ServiceError::Admin(AdminError::InvalidCredentials))
        ),
        "{refused:?}"
    );
    let event = assert_one_event(&f, AdminAction::Login, false);
    assert_eq!(event.reason.as_deref(), Some("invalid credentials"));
}

#[tokio::test]
async fn a_login_whose_record_cannot_be_written_issues_no_token() {
    let f = fixture();
    f.audit.break_it();
    let refused = f.service.login(CLIENT, login(PASSWORD)).await;
    assert_audit_failure(refused);
    assert!(f.events().is_empty());
}

#[test]
fn an_unknown_token_authenticates_no_one() {
    let f = fixture();
    let refused = f.service.authenticate("not a token");
    assert!(
        matches!(
            refused,
            Err(ServiceError::Admin(AdminError::Unauthenticated))
        ),
        "{refused:?}"
    );
}

#[test]
fn a_created_policy_is_stored_audited_and_read_back_as_its_document() {
    let f = fixture();
    let operator = f.operator();
    let mut doc = sim_document();
    doc["require_nonce"] = json!(true);
    let record = f
        .service
        .create_policy(&operator, new_policy(doc.clone()))
        .unwrap();
    assert!(record.require_nonce());
    let event = assert_one_event(&f, AdminAction::CreatePolicy, true);
    assert_eq!(event.target.as_deref(), Some(record.id.as_str()));

    let read = f.service.policy(&operator, &record.id).unwrap();
    assert_eq!(read, record);
    assert_eq!(f.service.policies(&operator).unwrap(), vec![record.clone()]);
    doc["id"] = json!(record.id);
    doc["created_at"] = json!(NOW);
    assert_eq!(policy_document(&read), doc);
}

#[test]
fn malformed_policy_documents_are_refused_before_the_broker_sees_them() {
    let cases = [
        (json!({ "sim": {} }), "missing string `attestation_type`"),
        (
            json!({ "attestation_type": "QEMU", "qemu": {} }),
            "attestation_type:",
        ),
        (
            json!({ "attestation_type": "SIM", "sgx": {} }),
            "needs its table under `sim`",
        ),
        (
            json!({ "attestation_type": "SIM", "sim": {}, "sgx": {} }),
            "unexpected field `sgx`",
        ),
        (
            json!({ "attestation_type": "SIM", "sim": [] }),
            "`sim` must be an object",
        ),
        (
            json!({ "attestation_type": "SIM", "sim": {}, "require_nonce": "yes" }),
            "`require_nonce` must be true or false",
        ),
        (
            json!({ "attestation_type": "SIM", "sim": { "require_nonce": true } }),
            "belongs beside `attestation_type`",
        ),
    ];
    for (doc, expected) in cases {
        assert_invalid(NewPolicy::from_document(document(doc)), expected);
    }
}

#[test]
fn a_policy_the_broker_cannot_evaluate_is_refused_audited_and_not_stored() {
    let f = fixture();
    let operator = f.operator();
    let doc = json!({ "attestation_type": "SIM", "sim": { "no_such_field": 1 } });
    let refused = f.service.create_policy(&operator, new_policy(doc));
    assert_refused(refused, |e| matches!(e, KbsError::BadRequest { .. }));
    let event = assert_one_event(&f, AdminAction::CreatePolicy, false);
    assert_eq!(event.target, None);
    assert!(f.service.policies(&operator).unwrap().is_empty());
}

#[test]
fn a_policy_whose_record_cannot_be_written_does_not_stay() {
    let f = fixture();
    let operator = f.operator();
    f.audit.break_it();
    let refused = f
        .service
        .create_policy(&operator, new_policy(sim_document()));
    assert_audit_failure(refused);
    assert!(f.kbs.broker.store().policies().unwrap().is_empty());
}

#[test]
fn an_unknown_policy_is_not_found_and_its_deletion_is_audited_as_refused() {
    let f = fixture();
    let operator = f.operator();
    let missing = f.service.policy(&operator, "no-such-policy");
    assert_refused(
        missing,
        |e| matches!(e, KbsError::UnknownPolicy { id } if id == "no-such-policy"),
    );
    assert!(f.events().is_empty(), "reads are not audited");
    let refused = f.service.delete_policy(&operator, "no-such-policy");
    assert_refused(refused, |e| matches!(e, KbsError::UnknownPolicy { .. }));
    let event = assert_one_event(&f, AdminAction::DeletePolicy, false);
    assert_eq!(event.target.as_deref(), Some("no-such-policy"));
}

#[test]
fn a_policy_in_use_is_not_deleted_until_its_keys_are() {
    let f = fixture();
    let operator = f.operator();
    let key = f.key(&operator);
    let policy_id = key.transfer_policy_id.clone();
    let refused = f.service.delete_policy(&operator, &policy_id);
    assert_refused(refused, |e| {
        matches!(e, KbsError::PolicyInUse { keys: 1, .. })
    });
    f.service.delete_key(&operator, &key.id).unwrap();
    f.service.delete_policy(&operator, &policy_id).unwrap();
    let outcomes: Vec<_> = f
        .events()
        .into_iter()
        .map(|e| (e.action, e.allowed))
        .collect();
    assert_eq!(
        outcomes,
        [
            (AdminAction::CreatePolicy, true),
            (AdminAction::CreateKey, true),
            (AdminAction::DeletePolicy, false),
            (AdminAction::DeleteKey, true),
            (AdminAction::DeletePolicy, true),
        ]
    );
}

#[test]
fn a_deletion_whose_record_cannot_be_written_fails_though_done() {
    let f = fixture();
    let operator = f.operator();
    let policy = f.policy(&operator);
    f.audit.break_it();
    let refused = f.service.delete_policy(&operator, &policy.id);
    assert_audit_failure(refused);
    // It only ever removes access, so it is not taken back.
    assert!(f.kbs.broker.store().policy(&policy.id).unwrap().is_none());
}

#[test]
fn keys_generated_or_imported_are_stored_audited_read_and_deleted() {
    let f = fixture();
    let operator = f.operator();
    let policy = f.policy(&operator);
    let generated = f
        .service
        .create_key(&operator, aes_key(&policy.id))
        .unwrap();
    let imported = aes_key(&policy.id).imported(Zeroizing::new(vec![0xA7; 32]));
    let imported = f.service.create_key(&operator, imported).unwrap();
    assert_eq!(imported.transfer_policy_id, policy.id);
    assert!(!format!("{imported:?}").contains("sealed_key"));

    assert_eq!(f.service.key(&operator, &imported.id).unwrap(), imported);
    let mut ids: Vec<_> = f
        .service
        .keys(&operator)
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    ids.sort();
    let mut expected = vec![generated.id.clone(), imported.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    f.service.delete_key(&operator, &generated.id).unwrap();
    let missing = f.service.key(&operator, &generated.id);
    assert_refused(missing, |e| matches!(e, KbsError::UnknownKey { .. }));
    let events = f.events();
    let targets: Vec<_> = events[1..].iter().map(|e| e.target.clone()).collect();
    assert_eq!(
        targets,
        [
            Some(generated.id.clone()),
            Some(imported.id),
            Some(generated.id)
        ]
    );
    assert!(events.iter().all(|e| e.allowed));
}

#[test]
fn only_aes_256_keys_are_accepted() {
    for (algorithm, length) in [("DES", 256), ("AES", 128), ("", 0)] {
        assert_invalid(
            NewKey::new(algorithm, length, "p".into()),
            "only algorithm AES with key_length 256",
        );
    }
    assert!(NewKey::new("aes", 256, "p".into()).is_ok());
}

#[test]
fn a_key_under_an_unknown_policy_or_of_the_wrong_length_is_refused_and_audited() {
    let f = fixture();
    let operator = f.operator();
    let refused = f.service.create_key(&operator, aes_key("no-such-policy"));
    assert_refused(refused, |e| matches!(e, KbsError::UnknownPolicy { .. }));
    let event = assert_one_event(&f, AdminAction::CreateKey, false);
    assert_eq!(event.target, None);

    let policy = f.policy(&operator);
    let short = aes_key(&policy.id).imported(Zeroizing::new(vec![1; 16]));
    let refused = f.service.create_key(&operator, short);
    assert_refused(refused, |e| matches!(e, KbsError::BadRequest { .. }));
    assert!(f.service.keys(&operator).unwrap().is_empty());
    let last = f.events().pop().unwrap();
    assert_eq!((last.action, last.allowed), (AdminAction::CreateKey, false));
}

#[test]
fn a_key_whose_record_cannot_be_written_does_not_stay() {
    let f = fixture();
    let operator = f.operator();
    let policy = f.policy(&operator);
    f.audit.break_it();
    let refused = f.service.create_key(&operator, aes_key(&policy.id));
    assert_audit_failure(refused);
    assert!(f.kbs.broker.store().keys().unwrap().is_empty());
}

#[test]
fn deleting_an_unknown_key_is_not_found_and_audited_as_refused() {
    let f = fixture();
    let operator = f.operator();
    let refused = f.service.delete_key(&operator, "no-such-key");
    assert_refused(refused, |e| matches!(e, KbsError::UnknownKey { .. }));
    let event = assert_one_event(&f, AdminAction::DeleteKey, false);
    assert_eq!(event.target.as_deref(), Some("no-such-key"));
}

/// A SIM device's provisioning request for `key_id`, with honest evidence over its public key.
fn provision_request(key_id: &str, tee: &str, device: &TeeKeyPair) -> ProvisionRequest {
    let spki = device.public_key().unwrap().spki_der().to_vec();
    let attester = SimAttester::with_measurement([3; 32], MEASUREMENT).unwrap();
    let evidence = attester
        .evidence(&expected_report_data(&spki, None))
        .unwrap();
    let request = json!({
        "format": "adyton-provision-request/1",
        "request_id": "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b",
        "model": "resnet-50",
        "key_id": key_id,
        "tee": tee,
        "sealing_policy": "exact-build",
        "public_key": BASE64.encode(&spki),
        "evidence": BASE64.encode(evidence.to_json()),
        "created_at": NOW - 60,
    });
    serde_json::from_value(request).unwrap()
}

#[test]
fn an_offline_transfer_releases_the_key_to_the_device_and_audits_who_asked() {
    let f = fixture();
    let operator = f.operator();
    let key = f.key(&operator);
    let device = TeeKeyPair::generate(2048).unwrap();
    let request = provision_request(&key.id, "SIM", &device);
    let wrapped = f
        .service
        .offline_transfer(&operator, &key.id, request)
        .unwrap();
    assert!(device.unwrap_transfer(&wrapped).is_ok());
    let decisions = f.audit.memory.decisions();
    assert_eq!(decisions.len(), 1);
    assert!(decisions[0].allowed);
    let offline = decisions[0].offline.as_ref().unwrap();
    assert_eq!(offline.operator, "admin");
    assert_eq!(offline.model, "resnet-50");
}

#[test]
fn an_offline_request_for_another_key_or_malformed_is_refused_unaudited() {
    let f = fixture();
    let operator = f.operator();
    let device = TeeKeyPair::generate(2048).unwrap();
    let request = provision_request("key-a", "SIM", &device);
    assert_invalid(
        f.service.offline_transfer(&operator, "key-b", request),
        "the request is for key `key-a`, not for `key-b`",
    );
    let mut request = provision_request("key-a", "SIM", &device);
    request.format = "adyton-provision-request/9".into();
    assert!(matches!(
        f.service.offline_transfer(&operator, "key-a", request),
        Err(ServiceError::InvalidRequest { .. })
    ));
    let mut request = provision_request("key-a", "SIM", &device);
    request.public_key = "not base64!".into();
    assert!(matches!(
        f.service.offline_transfer(&operator, "key-a", request),
        Err(ServiceError::InvalidRequest { .. })
    ));
    assert!(f.audit.memory.decisions().is_empty());
}

#[test]
fn an_offline_transfer_for_tdx_or_an_unknown_key_is_refused_and_audited() {
    let f = fixture();
    let operator = f.operator();
    let device = TeeKeyPair::generate(2048).unwrap();
    let request = provision_request("no-such-key", "TDX", &device);
    let refused = f
        .service
        .offline_transfer(&operator, "no-such-key", request);
    assert_refused(refused, |e| matches!(e, KbsError::NoSealingKey { .. }));
    let request = provision_request("no-such-key", "SIM", &device);
    let refused = f
        .service
        .offline_transfer(&operator, "no-such-key", request);
    assert_refused(refused, |e| matches!(e, KbsError::UnknownKey { .. }));
    let decisions = f.audit.memory.decisions();
    assert_eq!(decisions.len(), 2);
    assert!(decisions.iter().all(|d| !d.allowed && d.offline.is_some()));
}

#[test]
fn an_offline_transfer_whose_decision_cannot_be_written_releases_nothing() {
    let f = fixture();
    let operator = f.operator();
    let key = f.key(&operator);
    let device = TeeKeyPair::generate(2048).unwrap();
    let request = provision_request(&key.id, "SIM", &device);
    f.audit.break_it();
    let refused = f.service.offline_transfer(&operator, &key.id, request);
    assert_audit_failure(refused);
}

#[test]
fn collateral_metrics_count_each_origin_failures_and_grace() {
    let stats = adyton_attest::provider::ProviderStats {
        network: 1,
        cache: 2,
        stale: 3,
        bundle: 4,
        evidence: 5,
        carried: 8,
        failures: 6,
        grace: 7,
    };
    let text = collateral_metrics(&stats);
    for line in [
        "adyton_kbs_collateral_total{origin=\"network\"} 1",
        "adyton_kbs_collateral_total{origin=\"cache\"} 2",
        "adyton_kbs_collateral_total{origin=\"stale\"} 3",
        "adyton_kbs_collateral_total{origin=\"bundle\"} 4",
        "adyton_kbs_collateral_total{origin=\"evidence\"} 5",
        "adyton_kbs_collateral_total{origin=\"carried\"} 8",
        "adyton_kbs_collateral_failures_total 6",
        "adyton_kbs_collateral_grace_total 7",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}: {text}");
    }
    // Every sample line has its HELP and TYPE.
    assert_eq!(text.matches("# TYPE ").count(), 3);
}
