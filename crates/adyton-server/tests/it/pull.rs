//! Flow B with the real SIM attester, the real engine and real envelopes, and a registry and a key
//! broker in memory: what is pulled, what is refused and why, and what is retried.

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::{sim::SimReport, Evidence, TeeKind};
use adyton_envelope::wrap::{
    wrap_for_tee, TeeKeyAlgorithm, TeePublicKey, TransferKeyKind, WrappedKey,
};
use adyton_envelope::{v1, v2, Aes256Key};
use adyton_server::pull::{
    Backoff, FetchError, KeyBroker, ModelInfo, PullError, Puller, Registry, Step,
};
use adyton_server::repository::{Pending, Repository};
use adyton_server::runtime::tract::TractEngine;

use crate::support::model;

/// A registry in memory. `failures` transient failures come first.
#[derive(Debug)]
struct MemoryRegistry {
    info: ModelInfo,
    blob: Mutex<Vec<u8>>,
    failures: AtomicU32,
    /// Ends every download after this many bytes, with an I/O error.
    cut_at: Option<usize>,
    /// Blob bytes read by the puller, over all downloads.
    read: Arc<AtomicUsize>,
}

/// A blob reader that counts what the puller read.
struct Counting {
    inner: Box<dyn Read + Send>,
    read: Arc<AtomicUsize>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

/// A reader that fails after `left` bytes, as a dropped connection does.
struct Cut {
    inner: Cursor<Vec<u8>>,
    left: usize,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

impl Registry for MemoryRegistry {
    fn info(&self, model_id: &str) -> Result<ModelInfo, FetchError> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(FetchError::Transient(
                "HTTP 503: the registry is restarting".into(),
            ));
        }
        if model_id != self.info.id {
            return Err(FetchError::Permanent(format!(
                "HTTP 404: no model {model_id}"
            )));
        }
        Ok(self.info.clone())
    }

    fn open_blob(&self, _url: &str) -> Result<Box<dyn Read + Send>, FetchError> {
        let blob = self.blob.lock().unwrap().clone();
        let inner: Box<dyn Read + Send> = match self.cut_at {
            Some(left) => Box::new(Cut {
                inner: Cursor::new(blob),
                left,
            }),
            None => Box::new(Cursor::new(blob)),
        };
        Ok(Box::new(Counting {
            inner,
            read: Arc::clone(&self.read),
        }))
    }
}

/// A key broker in memory that checks, as the real one does, that the SIM evidence's report data
/// is SHA-512 of the public key, and that the measurement is the one its policy allows.
#[derive(Debug)]
struct MemoryBroker {
    key: Aes256Key,
    allowed_measurement: [u8; 48],
    transfers: AtomicU32,
    /// The algorithm of each public key presented.
    algorithms: Mutex<Vec<TeeKeyAlgorithm>>,
}

impl KeyBroker for MemoryBroker {
    fn transfer(
        &self,
        _url: &str,
        evidence: &Evidence,
        public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError> {
        self.transfers.fetch_add(1, Ordering::SeqCst);
        self.algorithms.lock().unwrap().push(public_key.algorithm());
        assert_eq!(evidence.tee, TeeKind::Sim);
        let report = SimReport::parse(&evidence.quote).unwrap();
        let user_data = public_key.spki_der();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, user_data);
        assert_eq!(
            &report.report_data[..],
            digest.as_ref(),
            "report data binds the public key"
        );
        if report.measurement != self.allowed_measurement {
            return Err(FetchError::Denied(
                "HTTP 403: measurement is not in the policy".into(),
            ));
        }
        Ok(wrap_for_tee(public_key, &self.key).unwrap())
    }
}

const MEASUREMENT: [u8; 48] = [0x42; 48];

fn attester(measurement: [u8; 48]) -> Arc<SimAttester> {
    Arc::new(SimAttester::with_measurement([7; 32], measurement).unwrap())
}

fn key() -> Aes256Key {
    Aes256Key::from_slice(&[0x33; 32]).unwrap()
}

fn v2_blob(plaintext: &[u8], key_id: &str) -> Vec<u8> {
    let options = v2::EncryptOptions {
        chunk_size: 4096,
        key_id: key_id.into(),
        content_type: v2::CONTENT_TYPE_ONNX.into(),
    };
    v2::seal(&key(), plaintext, &options).unwrap()
}

fn info(key_id: &str) -> ModelInfo {
    ModelInfo {
        id: "m1".into(),
        url: Some("http://registry.invalid/blobs/m1".into()),
        encrypted: Some(true),
        kbs_url: Some(format!("http://kbs.invalid/kbs/v1/keys/{key_id}/transfer")),
        key_id: Some(key_id.into()),
        ..ModelInfo::default()
    }
}

struct Fixture {
    registry: Arc<MemoryRegistry>,
    broker: Arc<MemoryBroker>,
    puller: Puller,
}

fn fixture(blob: Vec<u8>, measurement: [u8; 48]) -> Fixture {
    let registry = Arc::new(MemoryRegistry {
        info: info("k1"),
        blob: Mutex::new(blob),
        failures: AtomicU32::new(0),
        cut_at: None,
        read: Arc::default(),
    });
    let broker = Arc::new(MemoryBroker {
        key: key(),
        allowed_measurement: MEASUREMENT,
        transfers: AtomicU32::new(0),
        algorithms: Mutex::default(),
    });
    let puller = Puller {
        attester: attester(measurement),
        engine: Arc::new(TractEngine::new()),
        registry: registry.clone(),
        key_broker: broker.clone(),
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            attempts: 4,
        },
        transfer_key: TransferKeyKind::default(),
    };
    Fixture {
        registry,
        broker,
        puller,
    }
}

fn reason(e: &PullError) -> String {
    e.to_string()
}

#[test]
fn a_v2_model_is_pulled_decrypted_in_memory_and_served() {
    let f = fixture(v2_blob(&model("add"), "k1"), MEASUREMENT);
    let repository = Repository::new(4);
    let (served, timings) = f.puller.pull_into(&repository, "add", "m1").unwrap();
    assert_eq!(served.version, 1);
    assert_eq!(served.model.signature().inputs.len(), 2);
    assert!(repository.all_ready());
    assert_eq!(timings.attempts, 1);
    assert!(timings.blob_bytes > model("add").len() as u64);
    assert!(timings.total() >= timings.load);
    assert_eq!(f.broker.transfers.load(Ordering::SeqCst), 1);
}

/// The default transfer key is P-384 (its SWK sealed with HPKE); `transfer_key = "rsa-3072"`
/// makes an RSA key pair (RSA-OAEP), as a broker that speaks only RSA needs.
#[test]
fn a_pull_transfers_with_p384_by_default_and_with_rsa_when_set() {
    for (kind, expected) in [
        (None, TeeKeyAlgorithm::P384),
        (
            Some(TransferKeyKind::Rsa3072),
            TeeKeyAlgorithm::Rsa { bits: 3072 },
        ),
    ] {
        let mut f = fixture(v2_blob(&model("add"), "k1"), MEASUREMENT);
        if let Some(kind) = kind {
            f.puller.transfer_key = kind;
        }
        let (model, _) = f.puller.pull("m1").unwrap();
        assert_eq!(model.signature().outputs[0].name, "sum");
        assert_eq!(*f.broker.algorithms.lock().unwrap(), [expected]);
    }
}

#[test]
fn a_v1_model_is_pulled_too() {
    let blob = v1::seal(&key(), &model("add")).unwrap();
    let f = fixture(blob, MEASUREMENT);
    let (model, _) = f.puller.pull("m1").unwrap();
    assert_eq!(model.signature().outputs[0].name, "sum");
}

#[test]
fn zeroed_weights_are_refused_as_an_integrity_failure() {
    refuse_zeroed_weights(false);
}

/// With the key there before the download, the altered chunk is refused while the download goes
/// on, and reported once the blob has been read to its end, as the same integrity failure.
#[test]
fn zeroed_weights_are_refused_when_the_key_came_first() {
    refuse_zeroed_weights(true);
}

fn refuse_zeroed_weights(key_first: bool) {
    let mut blob = v2_blob(&model("dynamic_batch"), "k1");
    let middle = blob.len() / 2;
    blob[middle..middle + 64].fill(0);
    let len = blob.len();
    let mut f = fixture(blob, MEASUREMENT);
    if key_first {
        gate_on_transfer(&mut f, 0);
    }
    let repository = Repository::new(4);
    let e = f.puller.pull_into(&repository, "m", "m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::Permanent {
                step: Step::Download,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(reason(&e).contains("integrity check failed"), "{e}");
    assert_eq!(f.registry.read.load(Ordering::SeqCst), len);
    // Nothing is served from it, and the failure shows.
    let summary = repository.summary("m").unwrap();
    assert!(summary.versions.is_empty());
    assert!(
        matches!(summary.pending, Some(Pending::Failed { ref reason }) if reason.contains("integrity"))
    );
}

#[test]
fn zeroed_v1_blob_and_truncated_blobs_are_refused() {
    let mut blob = v1::seal(&key(), &model("add")).unwrap();
    let n = blob.len();
    blob[n / 2..n / 2 + 16].fill(0);
    let e = fixture(blob, MEASUREMENT).puller.pull("m1").unwrap_err();
    assert!(reason(&e).contains("integrity check failed"), "{e}");

    let full = v2_blob(&model("dynamic_batch"), "k1");
    for cut in [full.len() - 1, full.len() / 2, 40, 3] {
        let e = fixture(full[..cut].to_vec(), MEASUREMENT)
            .puller
            .pull("m1")
            .unwrap_err();
        assert!(
            matches!(
                e,
                PullError::Permanent {
                    step: Step::Download,
                    ..
                }
            ),
            "cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn the_wrong_key_is_refused() {
    let other = Aes256Key::from_slice(&[0x44; 32]).unwrap();
    let options = v2::EncryptOptions {
        key_id: "k1".into(),
        ..Default::default()
    };
    let blob = v2::seal(&other, &model("add"), &options).unwrap();
    let e = fixture(blob, MEASUREMENT).puller.pull("m1").unwrap_err();
    assert!(reason(&e).contains("authentication failed"), "{e}");
}

#[test]
fn a_blob_under_another_key_id_is_refused_by_name() {
    let e = fixture(v2_blob(&model("add"), "k2"), MEASUREMENT)
        .puller
        .pull("m1")
        .unwrap_err();
    assert!(
        reason(&e).contains("'k2'") && reason(&e).contains("'k1'"),
        "{e}"
    );
}

#[test]
fn a_model_over_the_load_budget_fails_for_good_with_the_reason() {
    let mut f = fixture(
        v2_blob(&crate::onnx::constant_of_shape(16384), "k1"),
        MEASUREMENT,
    );
    f.puller.engine = Arc::new(TractEngine::new().with_load_budget(512 << 20));
    let repository = Repository::new(4);
    let e = f.puller.pull_into(&repository, "big", "m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::Permanent {
                step: Step::Load,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        reason(&e).contains("model constants need 1.0 GiB, over the load budget of 512.0 MiB"),
        "{e}"
    );
    assert_eq!(f.broker.transfers.load(Ordering::SeqCst), 1, "not retried");
    let summary = repository.summary("big").unwrap();
    assert!(
        matches!(&summary.pending, Some(Pending::Failed { reason }) if reason.contains("load budget")),
        "{summary:?}"
    );
}

#[test]
fn a_policy_refusal_is_permanent_and_not_retried() {
    let f = fixture(v2_blob(&model("add"), "k1"), [0x99; 48]);
    let repository = Repository::new(4);
    let e = f.puller.pull_into(&repository, "m", "m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::Permanent {
                step: Step::KeyTransfer,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        reason(&e).contains("refused the key") && reason(&e).contains("measurement"),
        "{e}"
    );
    assert_eq!(
        f.broker.transfers.load(Ordering::SeqCst),
        1,
        "a refusal is not retried"
    );
    assert!(!repository.all_ready());
}

#[test]
fn transient_failures_are_retried_then_given_up() {
    let f = fixture(v2_blob(&model("add"), "k1"), MEASUREMENT);
    f.registry.failures.store(2, Ordering::SeqCst);
    let (_, timings) = f.puller.pull("m1").unwrap();
    assert_eq!(timings.attempts, 3);

    f.registry.failures.store(100, Ordering::SeqCst);
    let e = f.puller.pull("m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::GaveUp {
                step: Step::Info,
                attempts: 4,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_broken_download_is_transient() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let mut f = fixture(blob.clone(), MEASUREMENT);
    let registry = Arc::new(MemoryRegistry {
        info: info("k1"),
        blob: Mutex::new(blob),
        failures: AtomicU32::new(0),
        cut_at: Some(100),
        read: Arc::default(),
    });
    f.puller.registry = registry;
    let e = f.puller.pull("m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::GaveUp {
                step: Step::Download,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(reason(&e).contains("connection reset"), "{e}");
}

#[test]
fn unknown_and_unencrypted_models_are_refused() {
    let f = fixture(v2_blob(&model("add"), "k1"), MEASUREMENT);
    let e = f.puller.pull("nope").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::Permanent {
                step: Step::Info,
                ..
            }
        ),
        "{e:?}"
    );
    let mut plain = info("k1");
    plain.encrypted = Some(false);
    let registry = Arc::new(MemoryRegistry {
        info: plain,
        blob: Mutex::new(model("add")),
        failures: AtomicU32::new(0),
        cut_at: None,
        read: Arc::default(),
    });
    let mut puller = f.puller.clone();
    puller.registry = registry;
    let e = puller.pull("m1").unwrap_err();
    assert!(reason(&e).contains("not encrypted"), "{e}");
}

/// `POST /adyton/v1/models/{name}:pull` through the router, with and without the input shapes a
/// model needs: the pull's outcome shows in the model's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_endpoint_takes_input_shapes() {
    use adyton_server::http::{router, AdminToken, ServerState, Settings};
    use adyton_server::runtime::Engine;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const TOKEN: &str = "pull-token";
    let f = fixture(v2_blob(&model("unknown_dim"), "k1"), MEASUREMENT);
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let repository = Arc::new(Repository::new(8));
    let state = ServerState::new(
        engine,
        Arc::clone(&repository),
        Settings::default(),
        AdminToken::new(TOKEN),
        None,
    )
    .with_puller(Arc::new(f.puller));
    let app = router(Arc::new(state));
    let pull = |name: &'static str, body: &'static str| {
        let app = app.clone();
        async move {
            let request = axum::http::Request::post(format!("/adyton/v1/models/{name}:pull"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .body(Body::from(body))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let settled = |name: &'static str| {
        let repository = Arc::clone(&repository);
        async move {
            for _ in 0..2000 {
                match repository.summary(name).and_then(|s| s.pending) {
                    Some(Pending::Loading) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other,
                }
            }
            panic!("the pull of {name} did not settle");
        }
    };

    // Without a shape, the model loads with a plan per concrete input shape.
    let (status, body) = pull("plain", r#"{"model_id": "m1"}"#).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(settled("plain").await, None);
    // A shape that does not fit the model fails it, saying why.
    let (status, body) = pull(
        "misfit",
        r#"{"model_id": "m1", "input_shapes": {"z": [1]}}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    match settled("misfit").await {
        Some(Pending::Failed { reason }) => {
            assert!(reason.contains("input 'z'"), "{reason}")
        }
        other => panic!("expected a failed load, got {other:?}"),
    }
    // With it, the model loads with the fixed dimension in its signature.
    let (status, body) = pull(
        "shaped",
        r#"{"model_id": "m1", "input_shapes": {"x": [-1, 1, 4]}}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(settled("shaped").await, None);
    let served = repository.get("shaped", None).unwrap();
    assert_eq!(
        served.model.signature().inputs[0]
            .shape
            .as_ref()
            .unwrap()
            .len(),
        3
    );
    // Malformed shapes are refused before anything is pulled.
    for body in [
        r#"{"model_id": "m1", "input_shapes": {"x": [-2]}}"#,
        r#"{"model_id": "m1", "input_shapes": {"x": "1,2"}}"#,
        r#"{"model_id": "m1", "input_shapes": {"x": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}}"#,
    ] {
        let (status, answer) = pull("bad", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    assert!(repository.summary("bad").is_none());
}

/// The SIM attester, made slow or failing, recording when it was asked and when it answered, and
/// able to hold its answer until the blob has been read whole.
#[derive(Debug)]
struct ObservedAttester {
    inner: Arc<SimAttester>,
    delay: Duration,
    fail: bool,
    /// Answer only once this many blob bytes have been read (bounded wait).
    after_download: Option<(Arc<AtomicUsize>, usize)>,
    asked: AtomicU32,
    answered: AtomicU32,
}

impl ObservedAttester {
    fn new(delay: Duration, fail: bool) -> Self {
        ObservedAttester {
            inner: attester(MEASUREMENT),
            delay,
            fail,
            after_download: None,
            asked: AtomicU32::new(0),
            answered: AtomicU32::new(0),
        }
    }
}

impl Attester for ObservedAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn evidence(&self, report_data: &[u8; 64]) -> adyton_attest::Result<Evidence> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if let Some((read, len)) = &self.after_download {
            let deadline = Instant::now() + Duration::from_secs(30);
            while read.load(Ordering::SeqCst) < *len {
                if Instant::now() > deadline {
                    self.answered.fetch_add(1, Ordering::SeqCst);
                    return Err(adyton_attest::AttestError::TeeUnavailable {
                        tee: TeeKind::Sim,
                        reason: "the blob was not downloaded while the evidence was made".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let outcome = if self.fail {
            Err(adyton_attest::AttestError::TeeUnavailable {
                tee: TeeKind::Sim,
                reason: "the attestation device is busy".into(),
            })
        } else {
            self.inner.evidence(report_data)
        };
        self.answered.fetch_add(1, Ordering::SeqCst);
        outcome
    }
}

/// The blob is downloaded while the key pair and its evidence are made: evidence that waits for
/// the whole blob to have been read would never come if the two ran one after the other. The key
/// then comes after the download, and opens the whole blob: nothing was decrypted before.
#[test]
fn the_download_runs_while_the_key_pair_and_evidence_are_made() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let len = blob.len();
    let mut f = fixture(blob, MEASUREMENT);
    let mut observed = ObservedAttester::new(Duration::ZERO, false);
    observed.after_download = Some((Arc::clone(&f.registry.read), len));
    f.puller.attester = Arc::new(observed);
    let (model, timings) = f.puller.pull("m1").unwrap();
    assert_eq!(model.signature().inputs[0].name, "x");
    assert_eq!(timings.attempts, 1);
    assert_eq!(timings.blob_bytes, len as u64);
    assert!(timings.elapsed >= timings.load);
    assert_eq!(timings.decrypted_in_download, 0, "{timings:?}");
}

/// A download that fails while the key pair is still being made fails the attempt with the
/// download's reason once the key pair's thread has finished (nothing is left running), and no key
/// is asked for.
#[test]
fn a_download_failing_while_the_key_pair_is_made_asks_for_no_key() {
    let full = v2_blob(&model("dynamic_batch"), "k1");
    let cases: [(&str, Vec<u8>, Option<usize>); 3] = [
        ("truncated", full[..full.len() - 3].to_vec(), None),
        ("another key id", v2_blob(&model("add"), "k2"), None),
        ("connection reset", full.clone(), Some(200)),
    ];
    for (case, blob, cut_at) in cases {
        let mut f = fixture(blob.clone(), MEASUREMENT);
        f.puller.registry = Arc::new(MemoryRegistry {
            info: info("k1"),
            blob: Mutex::new(blob),
            failures: AtomicU32::new(0),
            cut_at,
            read: Arc::default(),
        });
        f.puller.backoff.attempts = 2;
        let observed = Arc::new(ObservedAttester::new(Duration::from_millis(300), false));
        f.puller.attester = observed.clone();
        let repository = Repository::new(4);
        let e = f.puller.pull_into(&repository, "m", "m1").unwrap_err();
        match (case, &e) {
            ("connection reset", PullError::GaveUp { step, attempts, .. }) => {
                assert_eq!((*step, *attempts), (Step::Download, 2), "{case}: {e}");
                assert!(reason(&e).contains("connection reset"), "{case}: {e}");
            }
            (_, PullError::Permanent { step, .. }) => {
                assert_eq!(*step, Step::Download, "{case}: {e}")
            }
            _ => panic!("{case}: unexpected {e:?}"),
        }
        assert_eq!(
            f.broker.transfers.load(Ordering::SeqCst),
            0,
            "{case}: a key was asked for"
        );
        // Every key pair's thread ran to its end before the pull returned.
        let asked = observed.asked.load(Ordering::SeqCst);
        assert!(asked >= 1, "{case}");
        assert_eq!(observed.answered.load(Ordering::SeqCst), asked, "{case}");
        let summary = repository.summary("m").unwrap();
        assert!(summary.versions.is_empty(), "{case}");
        assert!(
            matches!(summary.pending, Some(Pending::Failed { .. })),
            "{case}: {summary:?}"
        );
    }
}

/// `e` is the busy attestation device's failure, retried as a transient one until the attempts
/// ran out, and no key was asked for.
fn assert_evidence_gave_up(e: &PullError, f: &Fixture) {
    assert!(
        matches!(
            *e,
            PullError::GaveUp {
                step: Step::Evidence,
                attempts: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(reason(e).contains("attestation device is busy"), "{e}");
    assert_eq!(f.broker.transfers.load(Ordering::SeqCst), 0);
}

/// Evidence that cannot be made while the download succeeds is the evidence step's failure,
/// retried as a transient one, and no key is asked for.
#[test]
fn failing_evidence_fails_the_attempt_after_a_good_download() {
    let mut f = fixture(v2_blob(&model("add"), "k1"), MEASUREMENT);
    f.puller.attester = Arc::new(ObservedAttester::new(Duration::ZERO, true));
    let e = f.puller.pull("m1").unwrap_err();
    assert_evidence_gave_up(&e, &f);
}

/// The key broker refuses once the whole blob is already in memory: the refusal is the pull's
/// error, nothing is served, and the downloaded blob goes (zeroized) with the attempt.
#[test]
fn a_transfer_refused_after_the_download_finished_fails_cleanly() {
    let blob = v2_blob(&model("add"), "k1");
    let len = blob.len();
    let f = fixture(blob, [0x99; 48]);
    let repository = Repository::new(4);
    let e = f.puller.pull_into(&repository, "m", "m1").unwrap_err();
    assert!(
        matches!(
            e,
            PullError::Permanent {
                step: Step::KeyTransfer,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(reason(&e).contains("refused the key"), "{e}");
    assert_eq!(
        f.registry.read.load(Ordering::SeqCst),
        len,
        "the blob was downloaded whole before the refusal"
    );
    assert_eq!(f.broker.transfers.load(Ordering::SeqCst), 1);
    let summary = repository.summary("m").unwrap();
    assert!(summary.versions.is_empty());
    assert!(
        matches!(&summary.pending, Some(Pending::Failed { reason }) if reason.contains("refused the key")),
        "{summary:?}"
    );
    assert!(!repository.all_ready());
}

/// A registry whose blobs hold back their bytes from offset `at` until `open()` holds (waiting at
/// most 30 s, then failing the read), so that a test can tell where in the download the key
/// thread's work lands.
#[derive(Debug)]
struct GatedRegistry {
    inner: Arc<MemoryRegistry>,
    at: usize,
    open: Gate,
}

/// The condition a [`GatedRegistry`] waits for.
#[derive(Clone)]
struct Gate(Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

struct Gated {
    inner: Box<dyn Read + Send>,
    left: usize,
    open: Gate,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Bytes before the gate go freely, in reads that stop at it.
        let before_gate = self.left.min(buf.len());
        if before_gate > 0 {
            let n = self.inner.read(&mut buf[..before_gate])?;
            self.left -= n;
            return Ok(n);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.open.0)() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("the gate never opened"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.read(buf)
    }
}

impl Registry for GatedRegistry {
    fn info(&self, model_id: &str) -> Result<ModelInfo, FetchError> {
        self.inner.info(model_id)
    }

    fn open_blob(&self, url: &str) -> Result<Box<dyn Read + Send>, FetchError> {
        Ok(Box::new(Gated {
            inner: self.inner.open_blob(url)?,
            left: self.at,
            open: self.open.clone(),
        }))
    }
}

/// `f`'s puller with its blob held back from `at` until the key broker has released a key.
fn gate_on_transfer(f: &mut Fixture, at: usize) {
    let broker = Arc::clone(&f.broker);
    f.puller.registry = Arc::new(GatedRegistry {
        inner: Arc::clone(&f.registry),
        at,
        open: Gate(Arc::new(move || {
            broker.transfers.load(Ordering::SeqCst) >= 1
        })),
    });
}

/// The key released before the first byte of the blob is read, or half-way through its download:
/// the blob opens and loads, with one transfer and the blob read once.
#[test]
fn a_key_released_before_or_during_the_download_opens_the_blob() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let len = blob.len();
    for at in [0, len / 2] {
        let mut f = fixture(blob.clone(), MEASUREMENT);
        gate_on_transfer(&mut f, at);
        let (model, timings) = f.puller.pull("m1").unwrap();
        assert_eq!(model.signature().inputs[0].name, "x", "{at}");
        assert_eq!(timings.attempts, 1, "{at}");
        assert_eq!(timings.blob_bytes, len as u64, "{at}");
        assert_eq!(f.broker.transfers.load(Ordering::SeqCst), 1, "{at}");
        assert!(
            timings.decrypted_in_download <= model_len("dynamic_batch"),
            "{at}: {timings:?}"
        );
    }
}

fn model_len(name: &str) -> u64 {
    model(name).len() as u64
}

/// A download that breaks after the key came is the download's transient failure, retried, even
/// though the key was released each time.
#[test]
fn a_download_breaking_after_the_key_came_is_transient() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let len = blob.len();
    let mut f = fixture(blob.clone(), MEASUREMENT);
    f.registry = Arc::new(MemoryRegistry {
        info: info("k1"),
        blob: Mutex::new(blob),
        failures: AtomicU32::new(0),
        cut_at: Some(len * 3 / 4),
        read: Arc::default(),
    });
    gate_on_transfer(&mut f, len / 2);
    let e = f.puller.pull("m1").unwrap_err();
    assert_failed(&e, Step::Download, Some(4));
    assert!(reason(&e).contains("connection reset"), "{e}");
    assert!(f.broker.transfers.load(Ordering::SeqCst) >= 1);
}

/// The key broker refusing while the download is under way: the download reads on to its end (a
/// failure of its own would be reported first), then the refusal is the pull's error; nothing
/// waits for a key that will not come.
#[test]
fn a_transfer_refused_during_the_download_is_reported_after_it() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let len = blob.len();
    let mut f = fixture(blob, [0x99; 48]);
    gate_on_transfer(&mut f, len / 2);
    let started = Instant::now();
    let e = f.puller.pull("m1").unwrap_err();
    assert_failed(&e, Step::KeyTransfer, None);
    assert_eq!(f.registry.read.load(Ordering::SeqCst), len);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Evidence failing while the blob is half downloaded: the download stops rather than wait for a
/// key that will not come, and the evidence's failure is the attempt's, retried as a transient
/// one, with no key asked for and every key thread ended.
#[test]
fn evidence_failing_during_the_download_stops_it_cleanly() {
    let blob = v2_blob(&model("dynamic_batch"), "k1");
    let len = blob.len();
    let mut f = fixture(blob, MEASUREMENT);
    let mut observed = ObservedAttester::new(Duration::ZERO, true);
    observed.after_download = Some((Arc::clone(&f.registry.read), len / 2));
    let observed = Arc::new(observed);
    f.puller.attester = observed.clone();
    // The blob's last quarter waits until the evidence has failed: the failure lands mid-download.
    let answered = Arc::clone(&observed);
    f.puller.registry = Arc::new(GatedRegistry {
        inner: Arc::clone(&f.registry),
        at: len * 3 / 4,
        open: Gate(Arc::new(move || {
            answered.answered.load(Ordering::SeqCst) >= 1
        })),
    });
    let started = Instant::now();
    let e = f.puller.pull("m1").unwrap_err();
    assert_evidence_gave_up(&e, &f);
    let asked = observed.asked.load(Ordering::SeqCst);
    assert_eq!(asked, 4);
    assert_eq!(observed.answered.load(Ordering::SeqCst), asked);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// `e` failed at `step`: permanently (`None`), or giving up after `attempts`.
fn assert_failed(e: &PullError, step: Step, attempts: Option<u32>) {
    let failed = match e {
        PullError::Permanent { step, .. } => (*step, None),
        PullError::GaveUp { step, attempts, .. } => (*step, Some(*attempts)),
    };
    assert_eq!(failed, (step, attempts), "{e:?}");
}
