//! Flow B (`design.md`): pulling an encrypted model from the registry, with its key released by the
//! key broker to this TEE only.
//!
//! For each model: make a transfer key pair here, inside the TEE (EC P-384 by default, RSA-3072
//! with `transfer_key = "rsa-3072"`), and evidence over SHA-512 of its public key (DER SubjectPublicKeyInfo), on a thread of their own; meanwhile fetch the model's
//! info and download its blob whole into memory that is zeroized afterwards (`download`). Once the
//! info has given the key broker's transfer URL (through a channel), the key thread asks the key
//! broker's transfer endpoint, unwraps the key and hands it to the download (through another
//! channel): the v2 chunks read before it came are decrypted in place at once, and each further
//! chunk as it lands, the plaintext SHA-256 following in order; a v1 blob is opened whole once the
//! key has come. Then load. The plaintext never touches disk, is held once (the decrypted bytes,
//! then tract's model), and reaches the engine only once every check has passed (every v2 chunk's
//! tag, the end of input, the length, the plaintext SHA-256 of the authenticated header).
//!
//! Failures are reported in the steps' order, as if the steps ran one after the other: the info,
//! the evidence, the download, then the key transfer, the unwrap and the decryption. So a download
//! that fails makes the key thread ask for no key (unless it already has), a key thread that fails
//! making the evidence stops the download, and one whose transfer or unwrap fails lets the download
//! read on to its end, whose own failure would come first.
//!
//! A successful pull's [`Timings`] overlap in the same way: `decrypt` is only the decryption left
//! once the download had ended and the key had come (when the key came first, only the end of the
//! plaintext hash), and `key_wait` how long the downloaded blob waited for the key.
//!
//! The registry and the key broker are reached through two traits ([`Registry`], [`KeyBroker`]),
//! implemented over HTTP in [`remote`], so that failures can be classified: transient ones (down,
//! 5xx, timeouts, a broken download) are retried with capped exponential backoff; permanent ones
//! (the policy refused the key, the blob was altered or truncated, the wrong key, the hash) stop and
//! show in the model's metadata, and the other models serve on.

mod download;
pub mod remote;

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use adyton_attest::attester::Attester;
use adyton_attest::Evidence;
use adyton_envelope::wrap::{TeeKeyPair, TeePublicKey, TransferKeyKind, WrappedKey};
use adyton_envelope::EnvelopeError;

use crate::blob::OpenError;
pub use crate::blob::MAX_MODEL_BYTES;
use crate::repository::{ModelSettings, Pending, Repository, ServedModel, Source};
use crate::runtime::{Engine, LoadOptions};
use download::KeyMessage;
use zeroize::Zeroizing;

/// Size of an RSA transfer key pair (`transfer_key = "rsa-3072"`, and offline provisioning's).
pub const TRANSFER_RSA_BITS: usize = 3072;

/// The key pair that [`make_transfer_key_ahead`] is making, for the next pull to take.
static KEY_AHEAD: Mutex<Option<JoinHandle<Result<TeeKeyPair, EnvelopeError>>>> = Mutex::new(None);

/// Starts making the key pair (of `kind`) of the next pull's transfer now, on a thread of its own.
///
/// An RSA-3072 key pair takes a few hundred milliseconds, most of a protected model's pull before
/// its load (a P-384 one well under a millisecond). A server that pulls models at start calls
/// this first thing, so that the key pair is made while the server starts up (its attester, its
/// TLS identity, its engines) rather than during the pull. The next pull's attempt takes it, once; later ones make their own. Like every
/// transfer key pair, it lives only in memory, serves one transfer, and is zeroized when dropped.
/// Nothing happens if one is already waiting, or if no thread can be started (the pull then makes
/// its own).
pub fn make_transfer_key_ahead(kind: TransferKeyKind) {
    let Ok(mut ahead) = KEY_AHEAD.lock() else {
        return;
    };
    if ahead.is_none() {
        *ahead = std::thread::Builder::new()
            .name("adyton-transfer-key".into())
            .spawn(move || TeeKeyPair::generate_kind(kind))
            .ok();
    }
}

/// The key pair made ahead, if there is one of `kind` (waiting for it to be finished).
fn take_key_ahead(kind: TransferKeyKind) -> Option<TeeKeyPair> {
    let handle = KEY_AHEAD.lock().ok()?.take()?;
    match handle.join() {
        Ok(Ok(pair)) => (pair.kind() == Some(kind)).then_some(pair),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the transfer key pair made ahead failed; making another");
            None
        }
        Err(_) => None,
    }
}

/// The registry's model info (`adyton_proto`'s, CNAP's schema). A pull needs its `url`, its
/// `kbs_url` and `encrypted: true` (plain blobs are refused: the server serves pulled models only
/// when they were protected), and checks the blob's key id against `key_id` when it is given.
pub use adyton_proto::ModelInfo;

/// Why a fetch from the registry or the key broker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying: the service is down, answered 5xx, or timed out.
    #[error("{0}")]
    Transient(String),
    /// The key broker refused to release the key (403): its policy does not accept this TEE.
    #[error("{0}")]
    Denied(String),
    /// Anything else that will not change by retrying (404, 400, a malformed answer).
    #[error("{0}")]
    Permanent(String),
}

/// The registry, as the puller sees it.
pub trait Registry: Send + Sync + fmt::Debug {
    /// The info of a model.
    fn info(&self, model_id: &str) -> Result<ModelInfo, FetchError>;
    /// The blob at `url`, streamed.
    fn open_blob(&self, url: &str) -> Result<Box<dyn Read + Send>, FetchError>;
}

/// The key broker's transfer endpoint, as the puller sees it.
pub trait KeyBroker: Send + Sync + fmt::Debug {
    /// Asks for the key at `kbs_url` (the model info's full transfer URL) for `public_key`, with
    /// `evidence` whose report data is [`adyton_proto::transfer_report_data`] of the key's DER
    /// form; the evidence's TEE is the `Attestation-Type`.
    fn transfer(
        &self,
        kbs_url: &str,
        evidence: &Evidence,
        public_key: &TeePublicKey,
    ) -> Result<WrappedKey, FetchError>;
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A transient failure that outlasted the retries.
    #[error("{step}: {reason} (gave up after {attempts} attempts)")]
    GaveUp {
        /// The step.
        step: Step,
        /// The last failure.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A failure that retrying cannot fix.
    #[error("{step}: {reason}")]
    Permanent {
        /// The step.
        step: Step,
        /// Why.
        reason: String,
    },
}

impl PullError {
    fn permanent(step: Step, reason: impl fmt::Display) -> Self {
        PullError::Permanent {
            step,
            reason: reason.to_string(),
        }
    }
}

/// The steps of a pull, for errors and timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fetching the model info.
    Info,
    /// Making the key pair and the evidence.
    Evidence,
    /// The key broker's transfer.
    KeyTransfer,
    /// Unwrapping the released key.
    Unwrap,
    /// Downloading and decrypting the blob.
    Download,
    /// Loading it into the engine.
    Load,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Info => "model info",
            Step::Evidence => "evidence",
            Step::KeyTransfer => "key transfer",
            Step::Unwrap => "key unwrap",
            Step::Download => "blob download and decryption",
            Step::Load => "model load",
        })
    }
}

/// How long each step of a successful pull took. The key pair, the evidence, the key transfer and
/// the unwrap run on a thread of their own while the info is fetched and the blob downloaded (and
/// decrypted as it lands once the key is there), so those steps overlap: [`Timings::total`] is the
/// pull's own time, less than their sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Fetching the info.
    pub info: Duration,
    /// Key pair and evidence (on the key thread, from the attempt's start).
    pub evidence: Duration,
    /// How long the downloaded blob waited for the key once the download had ended (zero when the
    /// key came first).
    pub key_wait: Duration,
    /// The key broker's transfer and the unwrap (on the key thread).
    pub key_transfer: Duration,
    /// Downloading the blob whole, from the info's arrival to the end of the input checked,
    /// including the decryption of the chunks that landed after the key.
    pub download: Duration,
    /// The decryption left once the download had ended and the key had come: the chunks not yet
    /// opened and the rest of the plaintext hash, or a v1 blob whole.
    pub decrypt: Duration,
    /// Plaintext bytes decrypted before the download ended (all of them when the key came first;
    /// none for a v1 blob, which opens only whole).
    pub decrypted_in_download: u64,
    /// The engine's load and optimisation.
    pub load: Duration,
    /// Ciphertext bytes read.
    pub blob_bytes: u64,
    /// Attempts made (1 when nothing was retried).
    pub attempts: u32,
    /// Whether the key pair was made ahead ([`make_transfer_key_ahead`]).
    pub key_made_ahead: bool,
    /// The successful attempt, from its start to the model loaded.
    pub elapsed: Duration,
}

impl Timings {
    /// The whole (successful) attempt: its steps overlap, so this is less than their sum.
    pub fn total(&self) -> Duration {
        self.elapsed
    }
}

/// Retry schedule for transient failures: `base`, doubling, capped at `cap`, `attempts` in all.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
    /// Attempts in all (at least 1).
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            attempts: 8,
        }
    }
}

impl Backoff {
    fn wait(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Pulls models: the TEE's attester, the engine, and the two services.
#[derive(Debug, Clone)]
pub struct Puller {
    /// This TEE.
    pub attester: Arc<dyn Attester>,
    /// The engine that loads the decrypted model.
    pub engine: Arc<dyn Engine>,
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// The key broker.
    pub key_broker: Arc<dyn KeyBroker>,
    /// Retries of transient failures.
    pub backoff: Backoff,
    /// The kind of key pair each transfer makes (`transfer_key`).
    pub transfer_key: TransferKeyKind,
}

/// A blob reader that counts its bytes.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The TEE's side of a transfer: a fresh key pair, its public half, and evidence over it.
struct TransferIdentity {
    pair: TeeKeyPair,
    public: TeePublicKey,
    evidence: Evidence,
    made_ahead: bool,
}

/// What the key thread did, for the timings.
struct Released {
    /// Key pair and evidence.
    evidence: Duration,
    /// The transfer and the unwrap.
    key_transfer: Duration,
    made_ahead: bool,
}

/// An I/O failure while reading the blob is the network's (transient); anything else the
/// decryptor says is about the bytes themselves (permanent).
fn classify_envelope(e: EnvelopeError) -> Result<PullError, FetchError> {
    match e {
        EnvelopeError::Io(io) => Err(FetchError::Transient(format!("the download broke: {io}"))),
        EnvelopeError::AuthenticationFailed { .. } => Ok(PullError::permanent(
            Step::Download,
            format!(
                "integrity check failed: {e} (the blob was altered, or the key is not its key)"
            ),
        )),
        other => Ok(PullError::permanent(
            Step::Download,
            format!("integrity check failed: {other}"),
        )),
    }
}

impl Puller {
    /// Pulls `model_id` and serves it as `name`, marking it loading meanwhile and failed (with the
    /// reason) if the pull fails. The repository's other models are untouched either way.
    pub fn pull_into(
        &self,
        repository: &Repository,
        name: &str,
        model_id: &str,
    ) -> Result<(Arc<ServedModel>, Timings), PullError> {
        self.pull_into_with(repository, name, model_id, &ModelSettings::default())
    }

    /// [`Puller::pull_into`], loaded and served with the model's `settings` (its engine, the
    /// engine's options, dynamic batching).
    pub fn pull_into_with(
        &self,
        repository: &Repository,
        name: &str,
        model_id: &str,
        settings: &ModelSettings,
    ) -> Result<(Arc<ServedModel>, Timings), PullError> {
        let _ = repository.set_pending(name, Pending::Loading);
        let engine = settings.engine.as_ref().unwrap_or(&self.engine);
        match self.pull_using(engine.as_ref(), model_id, &settings.load) {
            Ok((model, timings)) => {
                let source = Source::Registry {
                    model_id: model_id.to_owned(),
                };
                match repository.insert_with(name, None, model, source, settings.batching) {
                    Ok(served) => Ok((served, timings)),
                    Err(e) => {
                        let error = PullError::permanent(Step::Load, e);
                        let _ = repository.set_pending(
                            name,
                            Pending::Failed {
                                reason: error.to_string(),
                            },
                        );
                        Err(error)
                    }
                }
            }
            Err(error) => {
                let _ = repository.set_pending(
                    name,
                    Pending::Failed {
                        reason: error.to_string(),
                    },
                );
                Err(error)
            }
        }
    }

    /// Pulls `model_id` as `name` on a thread of its own, logging the outcome with the timing of
    /// every step (the model's state shows in the repository meanwhile).
    pub fn spawn(
        puller: Arc<Puller>,
        repository: Arc<Repository>,
        name: &str,
        model_id: &str,
    ) -> std::thread::JoinHandle<()> {
        Puller::spawn_with(puller, repository, name, model_id, ModelSettings::default())
    }

    /// [`Puller::spawn`], loaded and served with the model's `settings` (from the server's
    /// configuration, say).
    pub fn spawn_with(
        puller: Arc<Puller>,
        repository: Arc<Repository>,
        name: &str,
        model_id: &str,
        settings: ModelSettings,
    ) -> std::thread::JoinHandle<()> {
        let (name, model_id) = (name.to_owned(), model_id.to_owned());
        let _ = repository.set_pending(&name, Pending::Loading);
        std::thread::spawn(move || {
            tracing::info!(model = %name, model_id = %model_id, "pulling model");
            match puller.pull_into_with(&repository, &name, &model_id, &settings) {
                Ok((served, t)) => tracing::info!(
                    model = %name,
                    model_id = %model_id,
                    version = served.version,
                    engine = served.model.engine().as_str(),
                    plan = served.model.plan().as_str(),
                    info_ms = millis(t.info),
                    evidence_ms = millis(t.evidence),
                    download_ms = millis(t.download),
                    key_wait_ms = millis(t.key_wait),
                    key_transfer_ms = millis(t.key_transfer),
                    decrypt_ms = millis(t.decrypt),
                    decrypted_in_download_bytes = t.decrypted_in_download,
                    load_ms = millis(t.load),
                    total_ms = millis(t.elapsed),
                    key_made_ahead = t.key_made_ahead,
                    blob_bytes = t.blob_bytes,
                    attempts = t.attempts,
                    "model pulled and loaded"
                ),
                Err(e) => {
                    tracing::error!(model = %name, model_id = %model_id, error = %e, "model not loaded")
                }
            }
        })
    }

    /// Pulls and loads one model, retrying transient failures.
    pub fn pull(
        &self,
        model_id: &str,
    ) -> Result<(Arc<dyn crate::runtime::LoadedModel>, Timings), PullError> {
        self.pull_with(model_id, &LoadOptions::default())
    }

    /// [`Puller::pull`], with `options` given to the engine when it loads the model. Options that
    /// do not fit the model are a permanent failure of the load step.
    pub fn pull_with(
        &self,
        model_id: &str,
        options: &LoadOptions,
    ) -> Result<(Arc<dyn crate::runtime::LoadedModel>, Timings), PullError> {
        self.pull_using(self.engine.as_ref(), model_id, options)
    }

    /// [`Puller::pull_with`] on `engine`.
    fn pull_using(
        &self,
        engine: &dyn Engine,
        model_id: &str,
        options: &LoadOptions,
    ) -> Result<(Arc<dyn crate::runtime::LoadedModel>, Timings), PullError> {
        let attempts = self.backoff.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(engine, model_id, options) {
                Ok((model, mut timings)) => {
                    timings.attempts = attempt;
                    return Ok((model, timings));
                }
                Err(Attempt::Permanent(e)) => return Err(e),
                Err(Attempt::Transient(step, reason)) => {
                    if attempt >= attempts {
                        return Err(PullError::GaveUp {
                            step,
                            reason,
                            attempts: attempt,
                        });
                    }
                    let wait = self.backoff.wait(attempt);
                    tracing::warn!(
                        model_id,
                        step = %step,
                        error = %reason,
                        attempt,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "pull failed; retrying"
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn attempt(
        &self,
        engine: &dyn Engine,
        model_id: &str,
        options: &LoadOptions,
    ) -> Result<(Arc<dyn crate::runtime::LoadedModel>, Timings), Attempt> {
        let attempt_started = Instant::now();
        let mut timings = Timings::default();
        // Set once the download has failed: its failure is the attempt's, and no key is asked
        // for a blob that will not be opened.
        let download_failed = &AtomicBool::new(false);
        let (plaintext, released) = std::thread::scope(|scope| {
            let (kbs_url_to_key, kbs_url) = mpsc::channel::<String>();
            let (key_to_download, keys) = mpsc::channel();
            let key_thread = std::thread::Builder::new()
                .name("adyton-transfer-key".into())
                .spawn_scoped(scope, move || {
                    self.release_key(
                        move || kbs_url.recv().ok(),
                        download_failed,
                        key_to_download,
                    )
                });
            match key_thread {
                Ok(key_thread) => {
                    let send_kbs_url = move |url| {
                        let _ = kbs_url_to_key.send(url);
                    };
                    let plaintext =
                        self.fetch(model_id, send_kbs_url, keys, download_failed, &mut timings);
                    let released = key_thread.join().unwrap_or_else(|_| {
                        Err(Attempt::permanent(
                            Step::Evidence,
                            "the key thread panicked",
                        ))
                    });
                    (plaintext, released)
                }
                // No thread to spare: the key is released on this one once the info has come,
                // before the download (which then decrypts each chunk as it lands).
                Err(_) => {
                    let (key_to_download, keys) = mpsc::channel();
                    let mut released = Ok(None);
                    let release_now = |url| {
                        released = self.release_key(|| Some(url), download_failed, key_to_download)
                    };
                    let plaintext =
                        self.fetch(model_id, release_now, keys, download_failed, &mut timings);
                    (plaintext, released)
                }
            }
        });
        // Failures are reported in the steps' order: the info first, then the evidence, then the
        // download, then the key transfer and the unwrap (a failure to decrypt is the download
        // step's, and can only follow a key released and unwrapped). Whatever was made is dropped
        // (and zeroized) either way.
        let order = |failure: &Attempt| match failure.step() {
            Step::Info => 0,
            Step::Evidence => 1,
            Step::Download => 2,
            _ => 3,
        };
        let (plaintext, released) = match (plaintext, released) {
            (Err(download), Err(key)) if order(&key) < order(&download) => return Err(key),
            (Err(download), _) => return Err(download),
            (_, Err(key)) => return Err(key),
            (Ok(Some(plaintext)), Ok(Some(released))) => (plaintext, released),
            // The key thread sends the key whenever it succeeds, and the download returns without
            // it only if it was told the key would not come.
            (Ok(_), Ok(_)) => {
                return Err(Attempt::permanent(
                    Step::KeyTransfer,
                    "the key did not reach the download",
                ))
            }
        };
        timings.evidence = released.evidence;
        timings.key_transfer = released.key_transfer;
        timings.key_made_ahead = released.made_ahead;

        let started = Instant::now();
        let model = engine
            .load_with(&plaintext, options)
            .map_err(|e| Attempt::permanent(Step::Load, e))?;
        drop(plaintext);
        timings.load = started.elapsed();
        timings.elapsed = attempt_started.elapsed();
        Ok((model, timings))
    }

    /// The key thread's work: the key pair and evidence ([`Puller::transfer_identity`]), then,
    /// once `kbs_url` gives the key broker's transfer URL (`None`: the info failed), the transfer
    /// and the unwrap. The model key goes to the download through `download`; so does the news
    /// that it will not come, with whether the download should stop at once (the evidence failed,
    /// which is reported before the download's failures) or read on to its end (the transfer or
    /// the unwrap failed, which is reported after them). Returns `None` when no key was asked
    /// for: the info or the download had failed.
    fn release_key(
        &self,
        kbs_url: impl FnOnce() -> Option<String>,
        download_failed: &AtomicBool,
        download: Sender<KeyMessage>,
    ) -> Result<Option<Released>, Attempt> {
        let released = self.model_key(kbs_url, download_failed, &download);
        if let Err(failure) = &released {
            // A download that has ended with an error no longer listens.
            let _ = download.send(KeyMessage::NotComing {
                stop_download: failure.step() == Step::Evidence,
            });
        }
        released
    }

    fn model_key(
        &self,
        kbs_url: impl FnOnce() -> Option<String>,
        download_failed: &AtomicBool,
        download: &Sender<KeyMessage>,
    ) -> Result<Option<Released>, Attempt> {
        let (identity, evidence) = self.transfer_identity()?;
        let Some(kbs_url) = kbs_url() else {
            return Ok(None);
        };
        if download_failed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let started = Instant::now();
        let TransferIdentity {
            pair,
            public,
            evidence: tee_evidence,
            made_ahead,
        } = identity;
        let wrapped = self
            .key_broker
            .transfer(&kbs_url, &tee_evidence, &public)
            .map_err(|e| Attempt::from_fetch(Step::KeyTransfer, e))?;
        let key = pair
            .unwrap_transfer(&wrapped)
            .map_err(|e| Attempt::permanent(Step::Unwrap, e))?;
        drop(pair);
        let key_transfer = started.elapsed();
        let _ = download.send(KeyMessage::Released(key));
        Ok(Some(Released {
            evidence,
            key_transfer,
            made_ahead,
        }))
    }

    /// A fresh key pair and evidence over its public key, with the time they took.
    fn transfer_identity(&self) -> Result<(TransferIdentity, Duration), Attempt> {
        let started = Instant::now();
        let (pair, made_ahead) = match take_key_ahead(self.transfer_key) {
            Some(pair) => (pair, true),
            None => (
                TeeKeyPair::generate_kind(self.transfer_key)
                    .map_err(|e| Attempt::permanent(Step::Evidence, e))?,
                false,
            ),
        };
        let public = pair
            .public_key()
            .map_err(|e| Attempt::permanent(Step::Evidence, e))?;
        let report_data = adyton_proto::transfer_report_data(public.spki_der(), None);
        let evidence: Evidence = self
            .attester
            .evidence(&report_data)
            .map_err(|e| Attempt::Transient(Step::Evidence, e.to_string()))?;
        let identity = TransferIdentity {
            pair,
            public,
            evidence,
            made_ahead,
        };
        Ok((identity, started.elapsed()))
    }

    /// The model's info, whose key broker's transfer URL goes to `release_key`, then its blob,
    /// downloaded whole and opened with the key that comes on `keys` (`None`: the key did not
    /// come). A download that fails sets `download_failed` at once.
    fn fetch(
        &self,
        model_id: &str,
        release_key: impl FnOnce(String),
        keys: mpsc::Receiver<KeyMessage>,
        download_failed: &AtomicBool,
        timings: &mut Timings,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Attempt> {
        let started = Instant::now();
        let info = self
            .registry
            .info(model_id)
            .map_err(|e| Attempt::from_fetch(Step::Info, e))?;
        timings.info = started.elapsed();
        let refuse = |reason: String| Attempt::permanent(Step::Info, reason);
        if info.encrypted != Some(true) {
            return Err(refuse(
                "the model is not encrypted; pulled models must be protected".into(),
            ));
        }
        let url = info
            .url
            .clone()
            .ok_or_else(|| refuse(format!("the info of '{model_id}' has no url")))?;
        let kbs_url = info
            .kbs_url
            .clone()
            .ok_or_else(|| refuse("the model info has no kbs_url".into()))?;
        release_key(kbs_url);

        let started = Instant::now();
        let opened = self
            .registry
            .open_blob(&url)
            .map_err(|e| Attempt::from_fetch(Step::Download, e))
            .and_then(|blob| {
                let mut counted = Counted {
                    inner: blob,
                    bytes: 0,
                };
                let opened = download::download(&mut counted, info.key_id.as_deref(), keys);
                timings.blob_bytes = counted.bytes;
                opened.map_err(open_failure)
            })
            .inspect_err(|_| download_failed.store(true, Ordering::SeqCst))?;
        let Some(opened) = opened else {
            return Ok(None);
        };
        timings.download = opened.ended.saturating_duration_since(started);
        timings.key_wait = opened.key_came.saturating_duration_since(opened.ended);
        timings.decrypt = opened.key_came.max(opened.ended).elapsed();
        timings.decrypted_in_download = opened.decrypted_in_download;
        Ok(Some(opened.plaintext))
    }
}

/// One attempt's failure.
enum Attempt {
    Transient(Step, String),
    Permanent(PullError),
}

impl Attempt {
    fn permanent(step: Step, reason: impl fmt::Display) -> Self {
        Attempt::Permanent(PullError::permanent(step, reason))
    }

    fn step(&self) -> Step {
        match self {
            Attempt::Transient(step, _)
            | Attempt::Permanent(PullError::Permanent { step, .. })
            | Attempt::Permanent(PullError::GaveUp { step, .. }) => *step,
        }
    }

    fn from_fetch(step: Step, e: FetchError) -> Self {
        match e {
            FetchError::Transient(reason) => Attempt::Transient(step, reason),
            FetchError::Denied(reason) => {
                Attempt::permanent(step, format!("the key broker refused the key: {reason}"))
            }
            FetchError::Permanent(reason) => Attempt::permanent(step, reason),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sorts a blob's failure to download or open: a broken download is transient, a refused
/// envelope permanent.
fn open_failure(e: OpenError) -> Attempt {
    match e {
        OpenError::Io(e) => Attempt::Transient(Step::Download, format!("the download broke: {e}")),
        OpenError::Envelope(e) => match classify_envelope(e) {
            Ok(permanent) => Attempt::Permanent(permanent),
            Err(FetchError::Transient(r)) => Attempt::Transient(Step::Download, r),
            Err(other) => Attempt::permanent(Step::Download, other),
        },
        OpenError::KeyId { found, expected } => Attempt::permanent(
            Step::Download,
            format!("the blob is encrypted under key '{found}', the model info names '{expected}'"),
        ),
        too_large @ OpenError::TooLarge { .. } => Attempt::permanent(Step::Download, too_large),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key pair made ahead is taken once, is a transfer key pair, and then the next pull makes
    /// its own.
    #[test]
    fn a_key_pair_made_ahead_is_taken_once() {
        for kind in TransferKeyKind::ALL {
            make_transfer_key_ahead(kind);
            // A second call while one waits starts nothing more.
            make_transfer_key_ahead(kind);
            let pair = take_key_ahead(kind).expect("a key pair made ahead");
            assert_eq!(pair.kind(), Some(kind));
            assert!(take_key_ahead(kind).is_none());
        }
        // One of another kind than the pull's is not taken (and is dropped).
        make_transfer_key_ahead(TransferKeyKind::P384);
        assert!(take_key_ahead(TransferKeyKind::Rsa3072).is_none());
        assert!(take_key_ahead(TransferKeyKind::P384).is_none());
    }
}
