//! The server's HTTP API: the Open Inference Protocol (KServe v2) and Adyton's own endpoints
//! (`design.md`, "Inference"; `docs/server.md`).
//!
//! - `GET /v2/health/live`, `GET /v2/health/ready`: `{"live":true}`, `{"ready":...}` (503 while a
//!   model the server was started with is loading or failed; a model uploaded or pulled over the
//!   API has its own readiness only);
//! - `GET /v2`: server metadata and extensions;
//! - `GET /v2/models`: every model, its versions and state;
//! - `GET /v2/models/{name}[/versions/{v}]`: model metadata from the ONNX graph (-1 for dynamic
//!   dimensions);
//! - `GET /v2/models/{name}[/versions/{v}]/ready`;
//! - `POST /v2/models/{name}[/versions/{v}]/infer`: JSON tensors, flat or nested, and the binary
//!   tensor extension; no `Content-Type` needed; unknown fields ignored; `id` echoed;
//! - `GET /adyton/v1/attestation?nonce=HEX`: fresh evidence over the TLS key and the nonce;
//! - `POST /adyton/v1/models/{name}` (confidential upload) and `DELETE /adyton/v1/models/{name}`,
//!   with `Authorization: Bearer <token>`;
//! - `GET /metrics`: Prometheus, with Triton's metric names;
//! - `GET /adyton/v1/openapi.json`: the OpenAPI 3.1 document of all of these
//!   (`docs/server-openapi.json`). [`ROUTES`] lists every route; the router is built from it.
//!
//! Errors are `{"error": "..."}`: 400 bad input (naming the input, or a framing header given
//! twice, or an input shape the model cannot take), 401 no or wrong token, 404 unknown model or
//! version, 409 a taken version, 413 a body over the limit, 422 outputs over the output limits
//! (naming the output and the limit) or a model that does not load (over the load budget, say),
//! 429 an engine that has done as much work of a kind as it may for now (plans compiled this
//! minute; with `Retry-After`), 503 a full pool (with `Retry-After`) or a model not loaded, 500
//! engine failures (a panic included: that request fails alone, and the model serves on).
//!
//! A model with dynamic batching ([`crate::batching`]) runs its requests through its batcher; a
//! batch occupies one worker.
//!
//! No tensor, weight or token is ever logged: logs carry model names, sizes, statuses and times.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::batching::{BatchRuntime, Batcher};
use crate::metrics::{FailureReason, Metrics, ModelFigures};
use crate::protocol::{self, Limits, Output};
use crate::pull::Puller;
use crate::repository::{
    check_name, ModelSettings, Repository, RepositoryError, ServedModel, Source, Summary,
};
use crate::runtime::{check_inputs, Dim, Engine, EngineError, LoadOptions, Tensor, TensorSpec};

/// The extensions `GET /v2` lists.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "adyton_attestation",
    "adyton_model_upload",
];

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

/// Everything the handlers share.
#[derive(Debug)]
pub struct ServerState {
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
    /// Fresh evidence; without it, `/adyton/v1/attestation` is 404.
    pub attestation: Option<Arc<dyn FreshEvidence>>,
    /// Pulls protected models (flow B); without it, `:pull` is refused.
    pub puller: Option<Arc<Puller>>,
    /// The engine's options for models uploaded or pulled over the API (the server-wide
    /// `threads`, say).
    pub load_options: LoadOptions,
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

impl ServerState {
    /// State over an engine and a repository.
    pub fn new(
        engine: Arc<dyn Engine>,
        repository: Arc<Repository>,
        settings: Settings,
        admin_token: Option<AdminToken>,
        attestation: Option<Arc<dyn FreshEvidence>>,
    ) -> Self {
        let workers = settings.workers.max(1);
        // The models held when the server's state is made are the ones it was started with;
        // readiness waits for them, and for nothing added later over the API.
        repository.mark_configured();
        ServerState {
            engine,
            repository,
            metrics: Metrics::new(),
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers + settings.queue)),
            settings,
            admin_token,
            attestation,
            puller: None,
            load_options: LoadOptions::default(),
        }
    }

    /// The same state, loading models uploaded or pulled over the API with `options`.
    pub fn with_load_options(mut self, options: LoadOptions) -> Self {
        self.load_options = options;
        self
    }

    /// The same state, able to pull protected models.
    pub fn with_puller(mut self, puller: Arc<Puller>) -> Self {
        self.puller = Some(puller);
        self
    }
}

type AppState = Arc<ServerState>;

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), error = %self.message, "request refused");
        }
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<RepositoryError> for ApiError {
    fn from(e: RepositoryError) -> Self {
        let status = match e {
            RepositoryError::UnknownModel { .. } | RepositoryError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            RepositoryError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RepositoryError::VersionExists { .. } => StatusCode::CONFLICT,
            RepositoryError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
            RepositoryError::BadName => StatusCode::BAD_REQUEST,
            RepositoryError::Batching { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

const LIVE_PATH: &str = "/v2/health/live";
const READY_PATH: &str = "/v2/health/ready";
const SERVER_METADATA_PATH: &str = "/v2";
const MODELS_PATH: &str = "/v2/models";
const MODEL_PATH: &str = "/v2/models/{name}";
const MODEL_VERSION_PATH: &str = "/v2/models/{name}/versions/{version}";
const MODEL_READY_PATH: &str = "/v2/models/{name}/ready";
const MODEL_VERSION_READY_PATH: &str = "/v2/models/{name}/versions/{version}/ready";
const INFER_PATH: &str = "/v2/models/{name}/infer";
const INFER_VERSION_PATH: &str = "/v2/models/{name}/versions/{version}/infer";
const ATTESTATION_PATH: &str = "/adyton/v1/attestation";
/// `POST`: a confidential upload, or with `{name}` ending in `:pull`, a pull from the registry.
const ADYTON_MODEL_PATH: &str = "/adyton/v1/models/{name}";
const OPENAPI_PATH: &str = "/adyton/v1/openapi.json";
const METRICS_PATH: &str = "/metrics";

/// Every `(method, path)` the router serves, in axum's (and OpenAPI's) `{param}` syntax; the
/// router is built from this list. `docs/server-openapi.json` documents exactly these (with
/// `POST /adyton/v1/models/{name}:pull` apart); the tests hold both to it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", LIVE_PATH),
    ("GET", READY_PATH),
    ("GET", SERVER_METADATA_PATH),
    ("GET", MODELS_PATH),
    ("GET", MODEL_PATH),
    ("GET", MODEL_VERSION_PATH),
    ("GET", MODEL_READY_PATH),
    ("GET", MODEL_VERSION_READY_PATH),
    ("POST", INFER_PATH),
    ("POST", INFER_VERSION_PATH),
    ("GET", ATTESTATION_PATH),
    ("POST", ADYTON_MODEL_PATH),
    ("DELETE", ADYTON_MODEL_PATH),
    ("GET", OPENAPI_PATH),
    ("GET", METRICS_PATH),
];

/// The OpenAPI 3.1 document of this API, served at `GET /adyton/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/server-openapi.json");

/// The handler of one entry of [`ROUTES`]; `None` for a pair no handler serves, which the tests
/// catch.
fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    Some(match (method, path) {
        ("GET", LIVE_PATH) => get(live),
        ("GET", READY_PATH) => get(ready),
        ("GET", SERVER_METADATA_PATH) => get(server_metadata),
        ("GET", MODELS_PATH) => get(list_models),
        ("GET", MODEL_PATH) => get(model_metadata),
        ("GET", MODEL_VERSION_PATH) => get(model_metadata_version),
        ("GET", MODEL_READY_PATH) => get(model_ready),
        ("GET", MODEL_VERSION_READY_PATH) => get(model_ready_version),
        ("POST", INFER_PATH) => post(infer),
        ("POST", INFER_VERSION_PATH) => post(infer_version),
        ("GET", ATTESTATION_PATH) => get(attestation),
        ("POST", ADYTON_MODEL_PATH) => post(upload),
        ("DELETE", ADYTON_MODEL_PATH) => delete(delete_model),
        ("GET", OPENAPI_PATH) => get(openapi),
        ("GET", METRICS_PATH) => get(metrics),
        _ => return None,
    })
}

/// The OpenAPI document; public, like the model metadata.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// The router of every endpoint: exactly [`ROUTES`].
pub fn router(state: Arc<ServerState>) -> Router {
    ROUTES
        .iter()
        .filter_map(|&(method, path)| Some((path, handler(method, path)?)))
        .fold(Router::new(), |router, (path, handler)| {
            // Two methods on one path merge into one method router.
            router.route(path, handler)
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Gives every request an id (the client's `X-Request-Id` when it is short and printable, else a
/// fresh one), a tracing span, and the id back in the response.
async fn request_span(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "done"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(app): State<AppState>) -> Response {
    let ready = app.repository.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "adyton",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

fn summary_json(s: &Summary) -> Value {
    let state = match &s.pending {
        None => json!("READY"),
        Some(crate::repository::Pending::Loading) => json!("LOADING"),
        Some(crate::repository::Pending::Failed { .. }) => json!("UNAVAILABLE"),
    };
    let mut v = json!({
        "name": s.name,
        "versions": s.versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "state": state,
    });
    if let Some(crate::repository::Pending::Failed { reason }) = &s.pending {
        v["reason"] = json!(reason);
    }
    v
}

async fn list_models(State(app): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = app.repository.list().iter().map(summary_json).collect();
    Json(json!({ "models": models }))
}

fn spec_json(spec: &TensorSpec) -> Value {
    json!({
        "name": spec.name,
        "datatype": spec.datatype.as_str(),
        "shape": spec.shape.as_ref().map_or_else(Vec::new, |dims| dims.iter().map(|d| d.as_i64()).collect()),
    })
}

fn metadata(app: &ServerState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let served = match app.repository.get(name, version) {
        Ok(served) => served,
        // A model that is loading or failed still has metadata: its state and why.
        Err(RepositoryError::NotReady { .. }) if version.is_none() => {
            let summary =
                app.repository
                    .summary(name)
                    .ok_or_else(|| RepositoryError::UnknownModel {
                        name: name.to_owned(),
                    })?;
            return Ok(Json(summary_json(&summary)));
        }
        Err(e) => return Err(e.into()),
    };
    let versions = app
        .repository
        .summary(name)
        .map(|s| s.versions.iter().map(u64::to_string).collect::<Vec<_>>())
        .unwrap_or_default();
    let signature = served.model.signature();
    Ok(Json(json!({
        "name": served.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": signature.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": signature.outputs.iter().map(spec_json).collect::<Vec<_>>(),
        "parameters": {
            "version": served.version.to_string(),
            "engine": served.model.engine().as_str(),
            "plan": served.model.plan().as_str(),
            "plan_cache": plan_cache_json(&served),
            "batching": served.batching.map_or(Value::Null, |b| json!({
                "max_batch_size": b.max_batch_size,
                "max_queue_delay_us": b.max_queue_delay_us,
            })),
            "source": match &served.source {
                Source::File => json!("file"),
                Source::Upload => json!("upload"),
                Source::Registry { model_id } => json!({ "registry": model_id }),
                Source::Sealed { model_id } => json!({ "sealed": model_id }),
            },
        },
    })))
}

fn plan_cache_json(served: &ServedModel) -> Value {
    let stats = served.model.plan_stats();
    json!({
        "compiled": stats.compiled,
        "hits": stats.hits,
        "evictions": stats.evictions,
        "refusals": stats.refusals,
        "rate_limited": stats.rate_limited,
        "compile_seconds": stats.compile_seconds,
        "cached_plans": stats.cached_plans,
        "cached_bytes": stats.cached_bytes,
    })
}

async fn model_metadata(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, None)
}

async fn model_metadata_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&app, &name, Some(&version))
}

fn readiness(app: &ServerState, name: &str, version: Option<&str>) -> Response {
    let (status, ready) = match app.repository.get(name, version) {
        Ok(_) => (StatusCode::OK, true),
        Err(RepositoryError::NotReady { .. }) => (StatusCode::SERVICE_UNAVAILABLE, false),
        Err(e) => return ApiError::from(e).into_response(),
    };
    (status, Json(json!({ "name": name, "ready": ready }))).into_response()
}

async fn model_ready(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    readiness(&app, &name, None)
}

async fn model_ready_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(&app, &name, Some(&version))
}

/// The header that splits a binary-extension body into its JSON part and its tensor data.
const INFERENCE_HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

/// The one value of a header the server reads, `None` when absent. A header given more than once
/// is refused (400): where a body is split or who is asking must not depend on which of two
/// values a proxy and this server each take.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "the {name} header is given more than once"
        )));
    }
    Ok(first)
}

/// A header that holds one byte count: ASCII digits only (no sign, no list, no spaces inside).
fn byte_count_header(headers: &HeaderMap, name: &str) -> Result<Option<usize>, ApiError> {
    let Some(value) = single_header(headers, name)? else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("the {name} header must be one byte count")))
}

/// How much of a refused request's body is read before the refusal is sent.
const DRAIN_LIMIT: usize = 1 << 20;

/// Reads and discards up to [`DRAIN_LIMIT`] bytes of a body that will not be used. A refusal sent
/// while the client is still sending makes the connection close with unread data, which the
/// client sees as a reset rather than the refusal (a tritonclient posting to a wrong model name,
/// say); reading a small body first lets it read the answer. A larger one is left unread, and a
/// stalled one ends at the connection's body timeout.
async fn drain(mut body: Body) {
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            if read > DRAIN_LIMIT {
                break;
            }
        }
    }
}

/// Reads a body into zeroized memory (zeroized in bulk when dropped), refusing more than `limit`
/// bytes (413), and a `Content-Length` given twice or not one byte count (400).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<protocol::ZeroizedBytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the {what} is over the limit of {limit} bytes"),
        )
    };
    let declared = byte_count_header(headers, "Content-Length")?;
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let capacity = declared.unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("the {what} could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large());
            }
            // A body without a Content-Length grows its buffer; the old ones are zeroized.
            protocol::extend_zeroizing(&mut out, &data);
        }
    }
    Ok(protocol::ZeroizedBytes::new(out))
}

/// Reads an infer request's body as it arrives (`protocol::RequestReader`: each binary input
/// copied once, straight into its tensor's zeroized buffer), with the limits of [`read_body`]. A
/// body that does not parse is still read to its end, so that the client reads the 400.
async fn read_infer_request(
    headers: &HeaderMap,
    body: Body,
    header_length: Option<usize>,
    settings: &Settings,
) -> Result<protocol::InferRequest, ApiError> {
    let limit = settings.max_infer_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {limit} bytes"),
        )
    };
    let declared = byte_count_header(headers, "Content-Length")?;
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut reader = protocol::RequestReader::new(header_length, declared, settings.limits);
    let mut read = 0usize;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            if read > limit {
                return Err(too_large());
            }
            reader.push(&data);
        }
    }
    reader.finish().map_err(|e| ApiError::bad_request(e.0))
}

async fn infer(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run_infer(app, name, None, headers, body).await
}

async fn infer_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    run_infer(app, name, Some(version), headers, body).await
}

async fn run_infer(
    app: AppState,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let served = match app.repository.get(&name, version.as_deref()) {
        Ok(served) => served,
        Err(e) => {
            drain(body).await;
            return Err(e.into());
        }
    };
    let version_label = served.version.to_string();
    let fail = |reason: FailureReason, e: ApiError| {
        app.metrics
            .failure(&name, &version_label, reason, started.elapsed());
        e
    };
    let header_length = match byte_count_header(&headers, INFERENCE_HEADER_CONTENT_LENGTH) {
        Ok(length) => length,
        Err(e) => {
            drain(body).await;
            return Err(fail(FailureReason::Rejected, e));
        }
    };
    let request = read_infer_request(&headers, body, header_length, &app.settings)
        .await
        .map_err(|e| fail(FailureReason::Rejected, e))?;
    let signature = served.model.signature();
    check_requested_outputs(&signature.outputs, &request.outputs)
        .map_err(|e| fail(FailureReason::Rejected, e))?;
    let batch = request
        .inputs
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .map_or(1, |b| b as u64);
    let inputs = check_inputs(signature, request.inputs).map_err(|e| {
        fail(
            FailureReason::Rejected,
            ApiError::bad_request(e.to_string()),
        )
    })?;

    let _admitted = admit(&app).map_err(|e| fail(FailureReason::QueueFull, e))?;
    let (outputs, queue_time) = execute(&app, &served, inputs, batch)
        .await
        .map_err(|(reason, e)| fail(reason, e))?;
    let response = respond(
        &app,
        &served,
        &request.outputs,
        request.binary_output,
        request.id.as_deref(),
        &outputs,
    )
    .map_err(|e| fail(FailureReason::Rejected, e))?;
    drop(outputs);
    app.metrics
        .success(&name, &version_label, batch, started.elapsed(), queue_time);
    Ok(response)
}

/// Refuses an output asked for that the model does not have.
fn check_requested_outputs(
    specs: &[TensorSpec],
    requested: &[protocol::RequestedOutput],
) -> Result<(), ApiError> {
    match requested
        .iter()
        .find(|r| !specs.iter().any(|o| o.name == r.name))
    {
        None => Ok(()),
        Some(unknown) => {
            let known: Vec<&str> = specs.iter().map(|o| o.name.as_str()).collect();
            Err(ApiError::bad_request(format!(
                "output '{}' is not an output of this model (outputs: {})",
                unknown.name,
                known.join(", ")
            )))
        }
    }
}

/// The response of the outputs asked for, checked against the output limits first.
fn respond(
    app: &ServerState,
    served: &ServedModel,
    requested: &[protocol::RequestedOutput],
    binary_output: bool,
    id: Option<&str>,
    outputs: &[Tensor],
) -> Result<Response, ApiError> {
    let chosen = choose_outputs(served, requested, binary_output, outputs);
    // The outputs are checked before anything is encoded: a small request can ask a model for a
    // huge output (two vectors broadcast into a matrix, an Expand), and its JSON, at about 20 bytes and a
    // serde_json value per element, would take many times the tensor's memory.
    //
    // 422, not 413 or 500: the request is well-formed and within every request limit, and the
    // server is working; what the request asks for produces more than this server sends, and
    // the same request will be refused again (413 would tell the client its body is too large,
    // and clients shrink bodies in answer to it).
    let version_text = served.version.to_string();
    protocol::check_outputs(
        &chosen,
        &app.settings.limits,
        app.settings.max_infer_body,
        app.settings.max_json_response,
        protocol::json_response_overhead(&served.name, &version_text, id),
    )
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(encode_outputs(&served.name, &version_text, id, &chosen))
}

/// Admission: a bounded number run, a bounded number wait; the rest are told to come back (503).
fn admit(app: &ServerState) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(&app.admitted).try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy: every inference worker and queue slot is taken",
        );
        e.retry_after = Some(app.settings.retry_after_secs);
        e
    })
}

/// Runs checked inputs, in a batch when the model batches, else alone on a worker; the outputs
/// and the time spent waiting for a worker.
async fn execute(
    app: &AppState,
    served: &Arc<ServedModel>,
    inputs: Vec<Tensor>,
    rows: u64,
) -> Result<(Vec<Tensor>, Duration), (FailureReason, ApiError)> {
    let batcher = served
        .batcher(|options| {
            Batcher::start(
                &served.name,
                Arc::clone(&served.model),
                options,
                batch_runtime(app, served),
            )
        })
        .map_err(|e| {
            let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            (FailureReason::Backend, e)
        })?;
    let (outputs, queued) = match batcher {
        Some(batcher) => {
            let answer = batcher.infer(inputs).await;
            (answer.outputs, answer.queued)
        }
        None => run_alone(app, served, inputs, rows).await?,
    };
    outputs.map(|o| (o, queued)).map_err(engine_failure)
}

/// What a model's batcher needs from the server: its workers, and its metrics.
fn batch_runtime(app: &AppState, served: &ServedModel) -> BatchRuntime {
    let metrics = app.metrics.clone();
    let (name, version) = (served.name.clone(), served.version.to_string());
    BatchRuntime {
        workers: Arc::clone(&app.running),
        handle: tokio::runtime::Handle::current(),
        max_elements: app.settings.limits.max_elements,
        on_exec: Arc::new(move |rows| metrics.exec(&name, &version, rows)),
    }
}

/// One request on one worker of its own.
async fn run_alone(
    app: &AppState,
    served: &Arc<ServedModel>,
    inputs: Vec<Tensor>,
    rows: u64,
) -> Result<(Result<Vec<Tensor>, EngineError>, Duration), (FailureReason, ApiError)> {
    let queued = Instant::now();
    let running = Arc::clone(&app.running)
        .acquire_owned()
        .await
        .map_err(|_| {
            let e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            );
            (FailureReason::QueueFull, e)
        })?;
    let queue_time = queued.elapsed();
    let model = Arc::clone(&served.model);
    // The engine refuses an output over the element limit before copying it out (the infer
    // handler repeats it on the outputs sent, with the byte and JSON bounds).
    let max_elements = app.settings.limits.max_elements;
    let outcome = tokio::task::spawn_blocking(move || {
        let _running = running;
        model.run_bounded(inputs, max_elements)
    })
    .await
    .unwrap_or_else(|_| {
        // A panic in the engine ends that task only: this request fails, the model serves on.
        Err(EngineError::Run {
            reason: "the engine panicked".to_owned(),
        })
    });
    app.metrics.exec(
        &served.name,
        &served.version.to_string(),
        usize::try_from(rows).unwrap_or(usize::MAX),
    );
    Ok((outcome, queue_time))
}

/// An engine's error as the client sees it, with its metrics label.
fn engine_failure(e: EngineError) -> (FailureReason, ApiError) {
    let (status, reason, retry_after) = match &e {
        EngineError::Input(_) | EngineError::Shape { .. } | EngineError::InputRejected { .. } => {
            (StatusCode::BAD_REQUEST, FailureReason::Rejected, None)
        }
        EngineError::Busy {
            retry_after_secs, ..
        } => (
            StatusCode::TOO_MANY_REQUESTS,
            FailureReason::Rejected,
            Some(*retry_after_secs),
        ),
        // 422 as for every output limit (`run_infer`).
        EngineError::OutputTooLarge { .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            FailureReason::Rejected,
            None,
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            FailureReason::Backend,
            None,
        ),
    };
    let mut error = ApiError::new(status, e.to_string());
    error.retry_after = retry_after;
    (reason, error)
}

/// The outputs to send: those asked for (all when none is named), each in binary or JSON.
fn choose_outputs<'a>(
    served: &'a ServedModel,
    requested: &[protocol::RequestedOutput],
    binary_default: bool,
    outputs: &'a [crate::runtime::Tensor],
) -> Vec<Output<'a>> {
    let specs = &served.model.signature().outputs;
    if requested.is_empty() {
        specs
            .iter()
            .zip(outputs)
            .map(|(spec, tensor)| Output {
                name: &spec.name,
                tensor,
                binary: binary_default,
            })
            .collect()
    } else {
        requested
            .iter()
            .filter_map(|r| {
                let index = specs.iter().position(|s| s.name == r.name)?;
                Some(Output {
                    name: &specs[index].name,
                    tensor: outputs.get(index)?,
                    binary: r.binary.unwrap_or(binary_default),
                })
            })
            .collect()
    }
}

fn encode_outputs(name: &str, version: &str, id: Option<&str>, chosen: &[Output<'_>]) -> Response {
    let encoded = protocol::encode_response(name, version, id, chosen);
    // The body is handed to hyper as it is, without a copy: the `Bytes` own the zeroized buffer,
    // which is zeroized when hyper drops them, once the body is written.
    let mut response = Response::new(Body::from(axum::body::Bytes::from_owner(encoded.body)));
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            headers.insert("inference-header-content-length", HeaderValue::from(n));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    response
}

async fn attestation(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(source) = app.attestation.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no attested TLS identity",
        ));
    };
    let nonce_hex = query
        .get("nonce")
        .ok_or_else(|| ApiError::bad_request("the query needs nonce=HEX"))?;
    let nonce =
        hex::decode(nonce_hex).map_err(|_| ApiError::bad_request("nonce must be hexadecimal"))?;
    let evidence = tokio::task::spawn_blocking(move || source.evidence_for_nonce(&nonce))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "evidence failed: the worker stopped",
            )
        })?
        .map_err(|e| match e {
            FreshEvidenceError::BadNonce(m) => ApiError::bad_request(m),
            FreshEvidenceError::Tee(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("evidence failed: {m}"),
            ),
        })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], evidence).into_response())
}

fn authorize(app: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "model upload and delete are disabled: the server has no token configured",
        ));
    };
    let presented = single_header(headers, "Authorization")?
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this needs Authorization: Bearer <token>",
            )
        })?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the token is not valid",
        ))
    }
}

async fn upload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Err(e) = authorize(&app, &headers) {
        drain(body).await;
        return Err(e);
    }
    if let Some(name) = name.strip_suffix(":pull") {
        return start_pull(&app, name, &headers, body).await;
    }
    let version = match upload_version(&name, &query) {
        Ok(version) => version,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let bytes = read_body(&headers, body, app.settings.max_upload, "model").await?;
    let size = bytes.len();
    let engine = Arc::clone(&app.engine);
    let options = app.load_options.clone();
    let loaded = tokio::task::spawn_blocking(move || engine.load_with(&bytes, &options))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "loading failed: the worker stopped",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let served = app
        .repository
        .insert(&name, version, loaded, Source::Upload)?;
    tracing::info!(
        model = %name,
        version = served.version,
        bytes = size,
        engine = served.model.engine().as_str(),
        plan = served.model.plan().as_str(),
        "model uploaded"
    );
    let signature = served.model.signature();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": served.name,
            "version": served.version.to_string(),
            "inputs": signature.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": signature.outputs.iter().map(spec_json).collect::<Vec<_>>(),
        })),
    )
        .into_response())
}

/// An upload's name and `version`, checked before its body is read.
fn upload_version(name: &str, query: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    check_name(name)?;
    query
        .get("version")
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| ApiError::bad_request("version must be a positive integer"))
        })
        .transpose()
}

/// `POST /adyton/v1/models/{name}:pull` with `{"model_id": "..."}`: pulls a protected model from the
/// registry in the background (202); its state shows in `GET /v2/models/{name}` and `.../ready`.
async fn start_pull(
    app: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let puller = check_name(name).map_err(ApiError::from).and_then(|()| {
        app.puller.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this server has no registry and key broker configured for pulls",
            )
        })
    });
    let puller = match puller {
        Ok(puller) => puller,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let body = read_body(headers, body, 64 << 10, "pull request").await?;
    #[derive(serde::Deserialize)]
    struct PullRequest {
        model_id: String,
        /// Input shapes for the engine, by input name: sizes, or -1 for the declared dimension.
        #[serde(default)]
        input_shapes: std::collections::BTreeMap<String, Vec<i64>>,
    }
    let request: PullRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body must be {{\"model_id\": \"...\"}}: {e}"))
    })?;
    check_name(&request.model_id).map_err(|_| {
        ApiError::bad_request("model_id must be 1 to 128 letters, digits, '.', '_' or '-'")
    })?;
    let mut options = load_options(&request.input_shapes)?;
    options.threads = app.load_options.threads;
    options.plan_cache = app.load_options.plan_cache;
    if let Some(summary) = app.repository.summary(name) {
        if summary.pending == Some(crate::repository::Pending::Loading) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("model '{name}' is already being pulled"),
            ));
        }
    }
    app.repository
        .set_pending(name, crate::repository::Pending::Loading)?;
    let answer = json!({ "name": name, "model_id": request.model_id, "state": "LOADING" });
    Puller::spawn_with(
        puller,
        Arc::clone(&app.repository),
        name,
        &request.model_id,
        ModelSettings {
            load: options,
            ..ModelSettings::default()
        },
    );
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Most inputs, and most dimensions of one, a pull request may give shapes for.
const MAX_SHAPED_INPUTS: usize = 64;
const MAX_SHAPE_RANK: usize = 16;

/// A pull request's `input_shapes` as the engine takes them; whether they fit the model is the
/// engine's check, reported in the model's failed state.
fn load_options(
    shapes: &std::collections::BTreeMap<String, Vec<i64>>,
) -> Result<LoadOptions, ApiError> {
    if shapes.len() > MAX_SHAPED_INPUTS {
        return Err(ApiError::bad_request(format!(
            "input_shapes names {} inputs; at most {MAX_SHAPED_INPUTS}",
            shapes.len()
        )));
    }
    let mut options = LoadOptions::default();
    for (input, sizes) in shapes {
        if sizes.len() > MAX_SHAPE_RANK {
            return Err(ApiError::bad_request(format!(
                "input_shapes: input '{input}' has {} dimensions; at most {MAX_SHAPE_RANK}",
                sizes.len()
            )));
        }
        let dims = sizes
            .iter()
            .map(|&size| match size {
                -1 => Ok(Dim::Dynamic),
                size => usize::try_from(size).map(Dim::Fixed).map_err(|_| {
                    ApiError::bad_request(format!(
                        "input_shapes: input '{input}' has {size}; a dimension is a size or -1"
                    ))
                }),
            })
            .collect::<Result<Vec<Dim>, ApiError>>()?;
        options.input_shapes.insert(input.clone(), dims);
    }
    Ok(options)
}

async fn delete_model(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    if app.repository.remove(&name) {
        tracing::info!(model = %name, "model deleted");
        Ok((StatusCode::OK, Json(json!({ "deleted": name }))).into_response())
    } else {
        Err(RepositoryError::UnknownModel { name }.into())
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let figures: Vec<ModelFigures> = app
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render_with(&figures),
    )
        .into_response()
}

/// The shapes a model declares, for logs at start-up: `name: FP32[-1,3]`.
pub fn describe_signature(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| {
            let dims = s.shape.as_ref().map_or_else(
                || "?".to_owned(),
                |d| {
                    d.iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => n.to_string(),
                            Dim::Dynamic => "-1".to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                },
            );
            format!("{}: {}[{}]", s.name, s.datatype, dims)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
