//! [`Server`], the inference server's service layer: its use cases, each taking typed input and
//! returning a typed result or a [`ServerError`], none knowing HTTP (`http` adapts requests to
//! them).
//!
//! - Readiness and metadata: [`Server::ready`], [`Server::models`], [`Server::metadata`],
//!   [`Server::model_ready`], [`Server::metrics_text`].
//! - Inference ([`infer`]): [`Server::begin_inference`] finds the model before a body is read,
//!   [`Server::infer`] checks the request, admits it (a bounded number run, a bounded number wait,
//!   the rest are told to come back), runs it alone or in its model's batch, and encodes the
//!   outputs once they are checked against the output limits.
//! - Attestation: [`Server::evidence`], fresh evidence over the TLS key and a client's nonce;
//!   [`Server::collateral`], the collateral of the evidence in the server's certificate, for
//!   clients that have none of their own ([`collateral`]).
//! - Administration, for the holder of the admin token only ([`Server::authorize`] makes the
//!   [`Admin`] each of these takes): [`Server::upload`], [`Server::pull`], [`Server::delete`].
//!   An upload's or a pull's target is checked ([`Server::upload_target`],
//!   [`Server::pull_target`]) before its body is read.
//!
//! No tensor, weight or token is logged: logs carry model names, sizes and times.

pub mod collateral;
mod infer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::Semaphore;

pub use collateral::{EvidenceCollateral, OwnCollateral};
pub use infer::Inference;

use crate::error::ServerError;
use crate::metrics::{Metrics, ModelFigures};
use crate::protocol::{Limits, ZeroizedBytes};
use crate::pull::Puller;
use crate::repository::{
    check_name, ModelSettings, Pending, Repository, RepositoryError, ServedModel, Source, Summary,
};
use crate::runtime::{Dim, Engine, LoadOptions};

/// Makes fresh evidence over the server's TLS key and a client's nonce.
pub trait FreshEvidence: Send + Sync + fmt::Debug {
    /// The evidence JSON (`adyton-evidence-v1`) over the key and `nonce`, or why not (a bad nonce
    /// length, say).
    fn evidence_for_nonce(&self, nonce: &[u8]) -> Result<String, FreshEvidenceError>;
}

/// Why fresh evidence could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FreshEvidenceError {
    /// The nonce is not acceptable (the message says why).
    #[error("{0}")]
    BadNonce(String),
    /// The TEE failed.
    #[error("{0}")]
    Tee(String),
}

/// The server's limits and sizes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest infer request body.
    pub max_infer_body: usize,
    /// Largest uploaded model.
    pub max_upload: usize,
    /// Tensor element limits, of inputs and of the outputs sent back.
    pub limits: Limits,
    /// Largest JSON part of an infer response, bounded from element counts before it is built.
    /// Binary outputs are bounded by `max_infer_body` instead, as request bodies are.
    pub max_json_response: usize,
    /// Inferences running at once (the blocking threads).
    pub workers: usize,
    /// Requests that may wait for a worker; beyond that, 503.
    pub queue: usize,
    /// Seconds a client is told to wait (`Retry-After`) when the pool is full.
    pub retry_after_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Settings {
            max_infer_body: 64 << 20,
            max_upload: 1 << 30,
            limits: Limits::default(),
            // As large as a request body: JSON is the verbose encoding, and beyond this the
            // binary extension carries the same tensors in a fraction of the bytes and memory.
            max_json_response: 64 << 20,
            workers,
            queue: workers * 16,
            retry_after_secs: 1,
        }
    }
}

/// The bearer token for uploads and deletes: an [`adyton_proto::BearerToken`], kept only as its
/// SHA-256 and compared in constant time.
#[derive(Clone)]
pub struct AdminToken(adyton_proto::BearerToken);

impl AdminToken {
    /// From the token's text (surrounding whitespace is not part of it).
    pub fn new(token: &str) -> Option<AdminToken> {
        adyton_proto::BearerToken::new(token).map(AdminToken)
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.matches(presented)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Proof that a request presented the admin token: only [`Server::authorize`] makes one, and
/// every use case that changes the models served takes one.
#[derive(Debug)]
pub struct Admin {
    _checked: (),
}

/// The inference server's use cases, over its engine, its models and its limits.
#[derive(Debug)]
pub struct Server {
    /// The engine that loads models.
    pub engine: Arc<dyn Engine>,
    /// The models being served.
    pub repository: Arc<Repository>,
    /// Metrics.
    pub metrics: Metrics,
    /// Limits.
    pub settings: Settings,
    /// The upload/delete token; without one, uploads and deletes are refused.
    pub admin_token: Option<AdminToken>,
    /// Fresh evidence; without it, [`Server::evidence`] is refused.
    pub attestation: Option<Arc<dyn FreshEvidence>>,
    /// Pulls protected models (flow B); without it, [`Server::pull`] is refused.
    pub puller: Option<Arc<Puller>>,
    /// The collateral of the server's own evidence; without it, [`Server::collateral`] is
    /// refused.
    pub collateral: Option<Arc<dyn OwnCollateral>>,
    /// The engine's options for models uploaded or pulled over the API (the server-wide
    /// `threads`, say).
    pub load_options: LoadOptions,
    /// The inference workers: one permit per run, alone or in a batch.
    running: Arc<Semaphore>,
    /// The inferences admitted: running, or waiting for a worker.
    admitted: Arc<Semaphore>,
}

/// A model's metadata: its loaded version and every version's number, or, for a model loading or
/// failed, its state and why.
#[derive(Debug)]
pub enum ModelMetadata {
    /// A loaded version.
    Served {
        /// The version asked for (the latest when none was).
        model: Arc<ServedModel>,
        /// Every version of the model.
        versions: Vec<u64>,
    },
    /// No version is loaded: the model is loading, or failed.
    Pending(Summary),
}

/// Where an upload goes: a checked name, and the version asked for, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadTarget {
    name: String,
    version: Option<u64>,
}

/// Where a pull goes: a checked name, on a server that pulls.
#[derive(Debug)]
pub struct PullTarget {
    name: String,
    puller: Arc<Puller>,
}

/// A pull's request: the registry's model id, and the input shapes the engine is told.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct PullRequest {
    /// The registry's model id.
    pub model_id: String,
    /// Input shapes for the engine, by input name: sizes, or -1 for the declared dimension.
    #[serde(default)]
    pub input_shapes: BTreeMap<String, Vec<i64>>,
}

/// A pull started in the background: its state shows in the model's metadata and readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullStarted {
    /// The name the model will be served under.
    pub name: String,
    /// The registry's model id.
    pub model_id: String,
}

/// Most inputs, and most dimensions of one, a pull request may give shapes for.
const MAX_SHAPED_INPUTS: usize = 64;
const MAX_SHAPE_RANK: usize = 16;

impl Server {
    /// A server over an engine and a repository.
    pub fn new(
        engine: Arc<dyn Engine>,
        repository: Arc<Repository>,
        settings: Settings,
        admin_token: Option<AdminToken>,
        attestation: Option<Arc<dyn FreshEvidence>>,
    ) -> Self {
        let workers = settings.workers.max(1);
        // The models held when the server is made are the ones it was started with; readiness
        // waits for them, and for nothing added later over the API.
        repository.mark_configured();
        Server {
            engine,
            repository,
            metrics: Metrics::new(),
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers + settings.queue)),
            settings,
            admin_token,
            attestation,
            puller: None,
            collateral: None,
            load_options: LoadOptions::default(),
        }
    }

    /// The same server, loading models uploaded or pulled over the API with `options`.
    pub fn with_load_options(mut self, options: LoadOptions) -> Self {
        self.load_options = options;
        self
    }

    /// The same server, able to pull protected models.
    pub fn with_puller(mut self, puller: Arc<Puller>) -> Self {
        self.puller = Some(puller);
        self
    }

    /// The same server, serving the collateral of its own evidence.
    pub fn with_collateral(mut self, collateral: Arc<dyn OwnCollateral>) -> Self {
        self.collateral = Some(collateral);
        self
    }

    /// Whether the server has an admin token: without one, every admin request is refused,
    /// whatever it presents.
    pub fn admin_enabled(&self) -> Result<(), ServerError> {
        self.admin_token
            .as_ref()
            .map(|_| ())
            .ok_or(ServerError::AdminDisabled)
    }

    /// Checks the bearer token a request presents against the admin token, in constant time.
    pub fn authorize(&self, presented: Option<&str>) -> Result<Admin, ServerError> {
        let token = self
            .admin_token
            .as_ref()
            .ok_or(ServerError::AdminDisabled)?;
        let presented = presented.ok_or(ServerError::MissingToken)?;
        if token.matches(presented) {
            Ok(Admin { _checked: () })
        } else {
            Err(ServerError::InvalidToken)
        }
    }

    /// Whether every model the server was started with is loaded.
    pub fn ready(&self) -> bool {
        self.repository.ready()
    }

    /// Every model, its versions and state.
    pub fn models(&self) -> Vec<Summary> {
        self.repository.list()
    }

    /// A model's metadata; a model loading or failed has its state and why, unless a version
    /// was asked for.
    pub fn metadata(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ServerError> {
        let model = match self.repository.get(name, version) {
            Ok(model) => model,
            Err(RepositoryError::NotReady { .. }) if version.is_none() => {
                let summary =
                    self.repository
                        .summary(name)
                        .ok_or_else(|| RepositoryError::UnknownModel {
                            name: name.to_owned(),
                        })?;
                return Ok(ModelMetadata::Pending(summary));
            }
            Err(e) => return Err(e.into()),
        };
        let versions = self
            .repository
            .summary(name)
            .map(|s| s.versions)
            .unwrap_or_default();
        Ok(ModelMetadata::Served { model, versions })
    }

    /// Whether a model (or one of its versions) is ready; an unknown one is an error.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, ServerError> {
        match self.repository.get(name, version) {
            Ok(_) => Ok(true),
            Err(RepositoryError::NotReady { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The metrics in Prometheus's text format, with each model's plan cache read now.
    pub fn metrics_text(&self) -> String {
        let figures: Vec<ModelFigures> = self
            .repository
            .served()
            .iter()
            .map(|served| ModelFigures {
                model: served.name.clone(),
                version: served.version,
                engine: served.model.engine(),
                plan: served.model.plan(),
                stats: served.model.plan_stats(),
            })
            .collect();
        self.metrics.render_with(&figures)
    }

    /// Fresh evidence over the TLS key and `nonce_hex`, the client's nonce in hexadecimal as it
    /// sent it. A server without an attested identity refuses before it reads the nonce.
    pub async fn evidence(&self, nonce_hex: Option<&str>) -> Result<String, ServerError> {
        let source = self.attestation.clone().ok_or(ServerError::NoAttestation)?;
        let bad_nonce = |reason: &str| ServerError::BadNonce {
            reason: reason.to_owned(),
        };
        let nonce_hex = nonce_hex.ok_or_else(|| bad_nonce("the query needs nonce=HEX"))?;
        let nonce = hex::decode(nonce_hex).map_err(|_| bad_nonce("nonce must be hexadecimal"))?;
        // The TEE's interfaces block (a file read and write for SGX, an ioctl for SNP).
        tokio::task::spawn_blocking(move || source.evidence_for_nonce(&nonce))
            .await
            .map_err(|_| ServerError::WorkerStopped { task: "evidence" })?
            .map_err(|e| match e {
                FreshEvidenceError::BadNonce(reason) => ServerError::BadNonce { reason },
                FreshEvidenceError::Tee(reason) => ServerError::Evidence { reason },
            })
    }

    /// The collateral bundle of the evidence in the server's certificate (JSON). A server with
    /// none to serve (SIM, no `pccs_url` or `kds_url`) refuses; a source that cannot be reached
    /// with nothing cached is [`ServerError::CollateralUnavailable`].
    pub async fn collateral(&self) -> Result<Arc<[u8]>, ServerError> {
        let source = self.collateral.clone().ok_or(ServerError::NoCollateral)?;
        // A fetch from the PCCS or KDS blocks.
        tokio::task::spawn_blocking(move || source.bundle())
            .await
            .map_err(|_| ServerError::WorkerStopped { task: "collateral" })?
            .map_err(|reason| {
                tracing::warn!(error = %reason, "no collateral for this server's evidence");
                ServerError::CollateralUnavailable
            })?
            .ok_or(ServerError::NoCollateral)
    }

    /// Checks an upload's name and `version` (its text as the client sent it), before its body
    /// is read.
    pub fn upload_target(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<UploadTarget, ServerError> {
        check_name(name)?;
        let version = version
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|&v| v > 0)
                    .ok_or(ServerError::BadVersion)
            })
            .transpose()?;
        Ok(UploadTarget {
            name: name.to_owned(),
            version,
        })
    }

    /// Loads an uploaded model (on a blocking thread) and serves it under `target`.
    pub async fn upload(
        &self,
        _admin: &Admin,
        target: UploadTarget,
        model: ZeroizedBytes,
    ) -> Result<Arc<ServedModel>, ServerError> {
        let size = model.len();
        let engine = Arc::clone(&self.engine);
        let options = self.load_options.clone();
        let loaded = tokio::task::spawn_blocking(move || engine.load_with(&model, &options))
            .await
            .map_err(|_| ServerError::WorkerStopped { task: "loading" })?
            .map_err(ServerError::Load)?;
        let served =
            self.repository
                .insert(&target.name, target.version, loaded, Source::Upload)?;
        tracing::info!(
            model = %target.name,
            version = served.version,
            bytes = size,
            engine = served.model.engine().as_str(),
            plan = served.model.plan().as_str(),
            "model uploaded"
        );
        Ok(served)
    }

    /// Checks a pull's name, and that this server pulls, before its body is read.
    pub fn pull_target(&self, name: &str) -> Result<PullTarget, ServerError> {
        check_name(name)?;
        let puller = self.puller.clone().ok_or(ServerError::PullsDisabled)?;
        Ok(PullTarget {
            name: name.to_owned(),
            puller,
        })
    }

    /// Starts pulling a protected model from the registry in the background (flow B); its state
    /// shows in [`Server::metadata`] and [`Server::model_ready`].
    pub fn pull(
        &self,
        _admin: &Admin,
        target: PullTarget,
        request: PullRequest,
    ) -> Result<PullStarted, ServerError> {
        let PullTarget { name, puller } = target;
        check_name(&request.model_id).map_err(|_| ServerError::BadModelId)?;
        let mut options = load_options(&request.input_shapes)?;
        options.threads = self.load_options.threads;
        options.plan_cache = self.load_options.plan_cache;
        if let Some(summary) = self.repository.summary(&name) {
            if summary.pending == Some(Pending::Loading) {
                return Err(ServerError::PullInProgress { name });
            }
        }
        self.repository.set_pending(&name, Pending::Loading)?;
        Puller::spawn_with(
            puller,
            Arc::clone(&self.repository),
            &name,
            &request.model_id,
            ModelSettings {
                load: options,
                ..ModelSettings::default()
            },
        );
        Ok(PullStarted {
            name,
            model_id: request.model_id,
        })
    }

    /// Stops serving every version of a model; requests that hold it finish first.
    pub fn delete(&self, _admin: &Admin, name: &str) -> Result<(), ServerError> {
        if self.repository.remove(name) {
            tracing::info!(model = %name, "model deleted");
            Ok(())
        } else {
            Err(RepositoryError::UnknownModel {
                name: name.to_owned(),
            }
            .into())
        }
    }
}

/// A pull request's `input_shapes` as the engine takes them; whether they fit the model is the
/// engine's check, reported in the model's failed state.
fn load_options(shapes: &BTreeMap<String, Vec<i64>>) -> Result<LoadOptions, ServerError> {
    let refused = |reason: String| ServerError::BadInputShapes { reason };
    if shapes.len() > MAX_SHAPED_INPUTS {
        return Err(refused(format!(
            "input_shapes names {} inputs; at most {MAX_SHAPED_INPUTS}",
            shapes.len()
        )));
    }
    let mut options = LoadOptions::default();
    for (input, sizes) in shapes {
        if sizes.len() > MAX_SHAPE_RANK {
            return Err(refused(format!(
                "input_shapes: input '{input}' has {} dimensions; at most {MAX_SHAPE_RANK}",
                sizes.len()
            )));
        }
        let dims = sizes
            .iter()
            .map(|&size| match size {
                -1 => Ok(Dim::Dynamic),
                size => usize::try_from(size).map(Dim::Fixed).map_err(|_| {
                    refused(format!(
                        "input_shapes: input '{input}' has {size}; a dimension is a size or -1"
                    ))
                }),
            })
            .collect::<Result<Vec<Dim>, ServerError>>()?;
        options.input_shapes.insert(input.clone(), dims);
    }
    Ok(options)
}
