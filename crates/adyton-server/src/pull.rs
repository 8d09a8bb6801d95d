//! Flow B (`design.md`): pulling an encrypted model from the registry, with its key released by the
//! key broker to this TEE only.
//!
//! For each model: make an RSA key pair here, inside the TEE, and evidence over SHA-512 of its
//! public key (DER SubjectPublicKeyInfo), on a thread of their own; meanwhile fetch the model's
//! info and download its blob whole into memory that is zeroized afterwards (the download needs no
//! key, and the key pair takes longer). Then ask the key broker's transfer endpoint, unwrap the key,
//! open the blob in place (every v2 chunk's tag, the end of input, the plaintext SHA-256 of the
//! authenticated header; a v1 blob whole), and load. The plaintext never touches disk, is held
//! once (the decrypted bytes, then tract's model), and reaches the engine only once every check
//! has passed.
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
use download::Downloaded;

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

/// How long each step of a successful pull took. The key pair and evidence are made while the
/// info is fetched and the blob downloaded, so those steps overlap: [`Timings::total`] is the
/// pull's own time, less than their sum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Fetching the info.
    pub info: Duration,
    /// Key pair and evidence (on a thread of their own, from the attempt's start).
    pub evidence: Duration,
    /// How long the downloaded blob waited for the key pair and evidence (zero when the download
    /// took longer).
    pub key_wait: Duration,
    /// The key broker's transfer and the unwrap.
    pub key_transfer: Duration,
    /// Downloading the blob whole (from the info's arrival).
    pub download: Duration,
    /// Authenticating and decrypting it in place, with the plaintext hash.
    pub decrypt: Duration,
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

/// What the registry gave: the key broker's transfer URL and the downloaded blob.
struct Fetched {
    kbs_url: String,
    blob: Downloaded,
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
        // The key pair and its evidence need nothing from the registry, and take longer than the
        // info and the download: they are made on a thread of their own meanwhile.
        let (fetched, identity) = std::thread::scope(|scope| {
            let identity = std::thread::Builder::new()
                .name("adyton-transfer-key".into())
                .spawn_scoped(scope, || self.transfer_identity());
            let fetched = self.fetch(model_id, &mut timings);
            let fetched_at = Instant::now();
            let identity = match identity {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(Attempt::permanent(
                        Step::Evidence,
                        "the key pair's thread panicked",
                    ))
                }),
                // No thread to spare: make them now, after the download.
                Err(_) => self.transfer_identity(),
            };
            timings.key_wait = fetched_at.elapsed();
            (fetched, identity)
        });
        // Failures are reported in the steps' order: the info first, then the evidence, then the
        // download. Whatever was made is dropped (and zeroized) either way.
        let (fetched, identity) = match (fetched, identity) {
            (Err((Step::Info, e)), _) => return Err(e),
            (_, Err(e)) => return Err(e),
            (Err((_, e)), _) => return Err(e),
            (Ok(fetched), Ok((identity, evidence_took))) => {
                timings.evidence = evidence_took;
                (fetched, identity)
            }
        };

        let started = Instant::now();
        let TransferIdentity {
            pair,
            public,
            evidence,
            made_ahead,
        } = identity;
        timings.key_made_ahead = made_ahead;
        let wrapped = self
            .key_broker
            .transfer(&fetched.kbs_url, &evidence, &public)
            .map_err(|e| Attempt::from_fetch(Step::KeyTransfer, e))?;
        let key = pair
            .unwrap_transfer(&wrapped)
            .map_err(|e| Attempt::permanent(Step::Unwrap, e))?;
        drop(pair);
        timings.key_transfer = started.elapsed();

        let started = Instant::now();
        let plaintext = fetched.blob.open(&key).map_err(open_failure)?;
        drop(key);
        timings.decrypt = started.elapsed();

        let started = Instant::now();
        let model = engine
            .load_with(&plaintext, options)
            .map_err(|e| Attempt::permanent(Step::Load, e))?;
        drop(plaintext);
        timings.load = started.elapsed();
        timings.elapsed = attempt_started.elapsed();
        Ok((model, timings))
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

    /// The model's info and its blob, downloaded whole. A failure names its step, so that the
    /// caller can order it against the evidence's.
    fn fetch(&self, model_id: &str, timings: &mut Timings) -> Result<Fetched, (Step, Attempt)> {
        let started = Instant::now();
        let info = self
            .registry
            .info(model_id)
            .map_err(|e| (Step::Info, Attempt::from_fetch(Step::Info, e)))?;
        timings.info = started.elapsed();
        let refuse = |reason: String| (Step::Info, Attempt::permanent(Step::Info, reason));
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

        let started = Instant::now();
        let blob = self
            .registry
            .open_blob(&url)
            .map_err(|e| (Step::Download, Attempt::from_fetch(Step::Download, e)))?;
        let mut counted = Counted {
            inner: blob,
            bytes: 0,
        };
        let blob = download::download(&mut counted, info.key_id.as_deref())
            .map_err(|e| (Step::Download, open_failure(e)))?;
        timings.download = started.elapsed();
        timings.blob_bytes = counted.bytes;
        Ok(Fetched { kbs_url, blob })
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
