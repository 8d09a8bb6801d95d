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
//! - `GET /adyton/v1/collateral`: the collateral bundle of the evidence in the server's
//!   certificate, for clients with no collateral source of their own (404 when it has none);
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

//!
//! Each handler is an adapter: extractors read and check the request (the admin token in
//! [`Admin`]'s, an infer request's body in `InferCall`'s, an upload's or a pull's in
//! `AdminPost`'s), one call of the service ([`Server`]), one answer. [`ServerError`] maps to its
//! status in one place (its `IntoResponse`); the details of the server's own failures (500) are
//! logged, never returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::error::ServerError;
use crate::protocol::{self, EncodedResponse};
use crate::repository::{Pending, RepositoryError, ServedModel, Source, Summary};
use crate::runtime::{Dim, EngineError, TensorSpec};
use crate::service::{
    Admin, Inference, ModelMetadata, PullRequest, PullTarget, Server, UploadTarget,
};

pub use crate::service::{AdminToken, FreshEvidence, FreshEvidenceError, Settings};

/// The server's state, as the router takes it: the service itself.
pub use crate::service::Server as ServerState;

/// The extensions `GET /v2` lists.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "adyton_attestation",
    "adyton_model_upload",
];

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
const COLLATERAL_PATH: &str = "/adyton/v1/collateral";
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
    ("GET", COLLATERAL_PATH),
    ("POST", ADYTON_MODEL_PATH),
    ("DELETE", ADYTON_MODEL_PATH),
    ("GET", OPENAPI_PATH),
    ("GET", METRICS_PATH),
];

/// The OpenAPI 3.1 document of this API, served at `GET /adyton/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/server-openapi.json");

/// The handler of one entry of [`ROUTES`]; `None` for a pair no handler serves, which the tests
/// catch.
fn handler(method: &str, path: &str) -> Option<MethodRouter<Arc<Server>>> {
    Some(match (method, path) {
        ("GET", LIVE_PATH) => get(live),
        ("GET", READY_PATH) => get(ready),
        ("GET", SERVER_METADATA_PATH) => get(server_metadata),
        ("GET", MODELS_PATH) => get(list_models),
        ("GET", MODEL_PATH | MODEL_VERSION_PATH) => get(model_metadata),
        ("GET", MODEL_READY_PATH | MODEL_VERSION_READY_PATH) => get(model_ready),
        ("POST", INFER_PATH | INFER_VERSION_PATH) => post(infer),
        ("GET", ATTESTATION_PATH) => get(attestation),
        ("GET", COLLATERAL_PATH) => get(collateral),
        ("POST", ADYTON_MODEL_PATH) => post(post_model),
        ("DELETE", ADYTON_MODEL_PATH) => delete(delete_model),
        ("GET", OPENAPI_PATH) => get(openapi),
        ("GET", METRICS_PATH) => get(metrics),
        _ => return None,
    })
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
        .fallback(|| async { ServerError::NoSuchEndpoint })
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

// The handlers: each extracts a typed request, calls the service once, and maps its answer.

/// The OpenAPI document; public, like the model metadata.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(server): State<Arc<Server>>) -> Response {
    let ready = server.ready();
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

async fn list_models(State(server): State<Arc<Server>>) -> Json<Value> {
    let models: Vec<Value> = server.models().iter().map(summary_json).collect();
    Json(json!({ "models": models }))
}

async fn model_metadata(
    State(server): State<Arc<Server>>,
    model: ModelPath,
) -> Result<Json<Value>, ServerError> {
    let metadata = server.metadata(&model.name, model.version.as_deref())?;
    Ok(Json(metadata_json(&metadata)))
}

async fn model_ready(
    State(server): State<Arc<Server>>,
    model: ModelPath,
) -> Result<Response, ServerError> {
    let ready = server.model_ready(&model.name, model.version.as_deref())?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({ "name": model.name, "ready": ready }))).into_response())
}

async fn infer(
    State(server): State<Arc<Server>>,
    InferCall { inference, request }: InferCall,
) -> Result<Response, ServerError> {
    let encoded = server.infer(inference, request).await?;
    Ok(infer_response(encoded))
}

async fn attestation(
    State(server): State<Arc<Server>>,
    QueryParams(query): QueryParams,
) -> Result<Response, ServerError> {
    let evidence = server
        .evidence(query.get("nonce").map(String::as_str))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], evidence).into_response())
}

/// The collateral of the server's evidence; public, like the evidence (Intel or AMD signed it).
async fn collateral(State(server): State<Arc<Server>>) -> Result<Response, ServerError> {
    let bundle = server.collateral().await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bundle.to_vec()),
    )
        .into_response())
}

/// `POST /adyton/v1/models/{name}`: a confidential upload (201), or with `{name}` ending in
/// `:pull` and `{"model_id": "..."}`, a pull from the registry started in the background (202),
/// whose state shows in `GET /v2/models/{name}` and `.../ready`.
async fn post_model(
    State(server): State<Arc<Server>>,
    AdminPost { admin, post }: AdminPost,
) -> Result<Response, ServerError> {
    Ok(match post {
        ModelPost::Upload(target, model) => {
            let served = server.upload(&admin, target, model).await?;
            (StatusCode::CREATED, Json(uploaded_json(&served))).into_response()
        }
        ModelPost::Pull(target, request) => {
            let started = server.pull(&admin, target, request)?;
            let answer =
                json!({ "name": started.name, "model_id": started.model_id, "state": "LOADING" });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
    })
}

async fn delete_model(
    State(server): State<Arc<Server>>,
    model: ModelPath,
    admin: Admin,
) -> Result<Json<Value>, ServerError> {
    server.delete(&admin, &model.name)?;
    Ok(Json(json!({ "deleted": model.name })))
}

async fn metrics(State(server): State<Arc<Server>>) -> Response {
    let text = server.metrics_text();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// The answers' JSON.

fn summary_json(s: &Summary) -> Value {
    let state = match &s.pending {
        None => json!("READY"),
        Some(Pending::Loading) => json!("LOADING"),
        Some(Pending::Failed { .. }) => json!("UNAVAILABLE"),
    };
    let mut v = json!({
        "name": s.name,
        "versions": s.versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "state": state,
    });
    if let Some(Pending::Failed { reason }) = &s.pending {
        v["reason"] = json!(reason);
    }
    v
}

fn spec_json(spec: &TensorSpec) -> Value {
    json!({
        "name": spec.name,
        "datatype": spec.datatype.as_str(),
        "shape": spec.shape.as_ref().map_or_else(Vec::new, |dims| dims.iter().map(|d| d.as_i64()).collect()),
    })
}

/// A model's metadata: for a loaded version, its signature and how it is served; for a model
/// loading or failed, its state and why.
fn metadata_json(metadata: &ModelMetadata) -> Value {
    let (served, versions) = match metadata {
        ModelMetadata::Served { model, versions } => (model, versions),
        ModelMetadata::Pending(summary) => return summary_json(summary),
    };
    let signature = served.model.signature();
    json!({
        "name": served.name,
        "versions": versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": signature.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": signature.outputs.iter().map(spec_json).collect::<Vec<_>>(),
        "parameters": {
            "version": served.version.to_string(),
            "engine": served.model.engine().as_str(),
            "plan": served.model.plan().as_str(),
            "plan_cache": plan_cache_json(served),
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
    })
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

/// An uploaded model's name, version and signature.
fn uploaded_json(served: &ServedModel) -> Value {
    let signature = served.model.signature();
    json!({
        "name": served.name,
        "version": served.version.to_string(),
        "inputs": signature.inputs.iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": signature.outputs.iter().map(spec_json).collect::<Vec<_>>(),
    })
}

/// An infer response: JSON, or with binary outputs, the JSON part's length in
/// `Inference-Header-Content-Length` and the tensor data after it.
fn infer_response(encoded: EncodedResponse) -> Response {
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

// The extractors: each reads and checks one part of a request, and refuses with a `ServerError`.

/// A model's name and, on the `/versions/{version}` routes, its version, from the path.
struct ModelPath {
    name: String,
    version: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ModelPath {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ServerError::bad_request(e.body_text()))?;
        let name = params
            .remove("name")
            .ok_or_else(|| ServerError::bad_request("the path names no model"))?;
        Ok(Self {
            name,
            version: params.remove("version"),
        })
    }
}

/// The query's parameters.
struct QueryParams(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ServerError::bad_request(e.body_text()))?;
        Ok(Self(query))
    }
}

/// The admin token's holder: `Authorization: Bearer <token>`, given once, checked by the service
/// in constant time.
impl FromRequestParts<Arc<Server>> for Admin {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, ServerError> {
        // A server with no token refuses every admin request before it reads the header.
        server.admin_enabled()?;
        let presented = single_header(&parts.headers, "Authorization")?
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        server.authorize(presented)
    }
}

/// The largest pull request body: a model id and a few input shapes.
const PULL_BODY_LIMIT: usize = 64 << 10;

/// An admin's `POST /adyton/v1/models/{name}`: the admin token, the target (checked before the
/// body is read), and the body (a model, or a pull request).
struct AdminPost {
    admin: Admin,
    post: ModelPost,
}

enum ModelPost {
    Upload(UploadTarget, protocol::ZeroizedBytes),
    Pull(PullTarget, PullRequest),
}

impl FromRequest<Arc<Server>> for AdminPost {
    type Rejection = ServerError;

    async fn from_request(req: Request, server: &Arc<Server>) -> Result<Self, ServerError> {
        let (mut parts, mut body) = req.into_parts();
        let model = ModelPath::from_request_parts(&mut parts, server).await?;
        let QueryParams(query) = QueryParams::from_request_parts(&mut parts, server).await?;
        let admin = Admin::from_request_parts(&mut parts, server).await;
        let admin = refused_before_body(admin, &mut body).await?;
        let post = if let Some(name) = model.name.strip_suffix(":pull") {
            let target = refused_before_body(server.pull_target(name), &mut body).await?;
            let bytes = read_body(&parts.headers, body, PULL_BODY_LIMIT, "pull request").await?;
            let request = serde_json::from_slice(&bytes).map_err(|e| {
                ServerError::bad_request(format!("the body must be {{\"model_id\": \"...\"}}: {e}"))
            })?;
            ModelPost::Pull(target, request)
        } else {
            let version = query.get("version").map(String::as_str);
            let target = server.upload_target(&model.name, version);
            let target = refused_before_body(target, &mut body).await?;
            let limit = server.settings.max_upload;
            ModelPost::Upload(
                target,
                read_body(&parts.headers, body, limit, "model").await?,
            )
        };
        Ok(Self { admin, post })
    }
}

/// An infer request: its model, found before the body is read, and the request read from the
/// body as it arrives. A refusal after the model is found is counted in its metrics.
struct InferCall {
    inference: Inference,
    request: protocol::InferRequest,
}

impl FromRequest<Arc<Server>> for InferCall {
    type Rejection = ServerError;

    async fn from_request(req: Request, server: &Arc<Server>) -> Result<Self, ServerError> {
        let (mut parts, mut body) = req.into_parts();
        let model = ModelPath::from_request_parts(&mut parts, server).await?;
        let inference = server.begin_inference(&model.name, model.version.as_deref());
        let inference = refused_before_body(inference, &mut body).await?;
        let header_length = byte_count_header(&parts.headers, INFERENCE_HEADER_CONTENT_LENGTH);
        let header_length = refused_before_body(header_length, &mut body)
            .await
            .map_err(|e| server.refuse(&inference, e))?;
        let request = read_infer_request(&parts.headers, body, header_length, &server.settings)
            .await
            .map_err(|e| server.refuse(&inference, e))?;
        Ok(Self { inference, request })
    }
}

/// The header that splits a binary-extension body into its JSON part and its tensor data.
const INFERENCE_HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

/// The one value of a header the server reads, `None` when absent. A header given more than once
/// is refused (400): where a body is split or who is asking must not depend on which of two
/// values a proxy and this server each take.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h HeaderValue>, ServerError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ServerError::RepeatedHeader {
            header: name.to_owned(),
        });
    }
    Ok(first)
}

/// A header that holds one byte count: ASCII digits only (no sign, no list, no spaces inside).
fn byte_count_header(headers: &HeaderMap, name: &str) -> Result<Option<usize>, ServerError> {
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
        .ok_or_else(|| ServerError::BadByteCount {
            header: name.to_owned(),
        })
}

/// How much of a refused request's body is read before the refusal is sent.
const DRAIN_LIMIT: usize = 1 << 20;

/// `checked`, after reading and discarding a small body ([`drain`]) when it is a refusal.
async fn refused_before_body<T>(
    checked: Result<T, ServerError>,
    body: &mut Body,
) -> Result<T, ServerError> {
    if checked.is_err() {
        drain(std::mem::take(body)).await;
    }
    checked
}

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
    what: &'static str,
) -> Result<protocol::ZeroizedBytes, ServerError> {
    let declared = byte_count_header(headers, "Content-Length")?;
    if declared.is_some_and(|n| n > limit) {
        return Err(ServerError::TooLarge { what, limit });
    }
    let capacity = declared.unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ServerError::Unreadable {
            what,
            reason: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ServerError::TooLarge { what, limit });
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
) -> Result<protocol::InferRequest, ServerError> {
    const WHAT: &str = "request body";
    let limit = settings.max_infer_body;
    let declared = byte_count_header(headers, "Content-Length")?;
    if declared.is_some_and(|n| n > limit) {
        return Err(ServerError::TooLarge { what: WHAT, limit });
    }
    let mut reader = protocol::RequestReader::new(header_length, declared, settings.limits);
    let mut read = 0usize;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ServerError::Unreadable {
            what: WHAT,
            reason: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            if read > limit {
                return Err(ServerError::TooLarge { what: WHAT, limit });
            }
            reader.push(&data);
        }
    }
    Ok(reader.finish()?)
}

// The one mapping of the service's errors to statuses.

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = status(&self);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The details (an engine's or the TEE's words) stay in the log.
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
            internal_message(&self).to_owned()
        } else {
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), error = %self, "request failed");
            } else {
                tracing::info!(status = status.as_u16(), error = %self, "request refused");
            }
            self.to_string()
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if let Some(secs) = retry_after(&self) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn status(error: &ServerError) -> StatusCode {
    match error {
        ServerError::BadRequest { .. }
        | ServerError::RepeatedHeader { .. }
        | ServerError::BadByteCount { .. }
        | ServerError::Unreadable { .. }
        | ServerError::BadVersion
        | ServerError::BadModelId
        | ServerError::BadInputShapes { .. }
        | ServerError::BadNonce { .. }
        | ServerError::Protocol(_)
        | ServerError::UnknownOutput { .. }
        | ServerError::Input(_) => StatusCode::BAD_REQUEST,
        ServerError::MissingToken | ServerError::InvalidToken => StatusCode::UNAUTHORIZED,
        ServerError::AdminDisabled => StatusCode::FORBIDDEN,
        ServerError::NoSuchEndpoint
        | ServerError::NoAttestation
        | ServerError::NoCollateral
        | ServerError::PullsDisabled => StatusCode::NOT_FOUND,
        ServerError::PullInProgress { .. } => StatusCode::CONFLICT,
        ServerError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        // 422, not 413 or 500, for outputs over the limits: the request is well-formed and within
        // every request limit, and the server is working; what the request asks for produces
        // more than this server sends, and the same request will be refused again (413 would
        // tell the client its body is too large, and clients shrink bodies in answer to it).
        ServerError::Load(_) | ServerError::OutputLimit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ServerError::Busy { .. }
        | ServerError::ShuttingDown
        | ServerError::CollateralUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ServerError::Repository(e) => repository_status(e),
        ServerError::Engine(e) => engine_status(e),
        ServerError::Evidence { .. }
        | ServerError::Batcher(_)
        | ServerError::WorkerStopped { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn repository_status(error: &RepositoryError) -> StatusCode {
    match error {
        RepositoryError::UnknownModel { .. } | RepositoryError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        RepositoryError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RepositoryError::VersionExists { .. } => StatusCode::CONFLICT,
        RepositoryError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        RepositoryError::BadName => StatusCode::BAD_REQUEST,
        RepositoryError::Batching { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// An engine's refusal of the inputs is the request's fault (400); a limit on its work is 429,
/// an output over the limit 422 (as every output limit); anything else is its own failure.
fn engine_status(error: &EngineError) -> StatusCode {
    match error {
        EngineError::Input(_) | EngineError::Shape { .. } | EngineError::InputRejected { .. } => {
            StatusCode::BAD_REQUEST
        }
        EngineError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
        EngineError::OutputTooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a client reads of a failure of the server's own; the details are logged.
fn internal_message(error: &ServerError) -> &'static str {
    match error {
        ServerError::Evidence { .. } => "evidence failed",
        ServerError::WorkerStopped { task: "loading" } => "loading failed: the worker stopped",
        ServerError::WorkerStopped { task: "evidence" } => "evidence failed: the worker stopped",
        ServerError::Engine(_) | ServerError::Batcher(_) => "inference failed",
        _ => "internal error",
    }
}

/// Seconds a refused client is told to wait before it tries again.
fn retry_after(error: &ServerError) -> Option<u64> {
    match error {
        ServerError::Busy { retry_after_secs }
        | ServerError::Engine(EngineError::Busy {
            retry_after_secs, ..
        }) => Some(*retry_after_secs),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(error: ServerError) -> (StatusCode, Option<String>, String) {
        let response = error.into_response();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap();
        (
            status,
            retry_after,
            json["error"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn the_servers_own_failures_keep_their_details_in_the_log() {
        for (error, says) in [
            (
                ServerError::Evidence {
                    reason: "/dev/attestation/quote: EIO".to_owned(),
                },
                "evidence failed",
            ),
            (
                ServerError::Engine(EngineError::Run {
                    reason: "node 'MatMul_3' failed".to_owned(),
                }),
                "inference failed",
            ),
            (
                ServerError::Batcher(crate::batching::BatchError::Thread(
                    "resource temporarily unavailable".to_owned(),
                )),
                "inference failed",
            ),
            (
                ServerError::WorkerStopped { task: "loading" },
                "loading failed: the worker stopped",
            ),
        ] {
            assert_eq!(
                answer(error).await,
                (StatusCode::INTERNAL_SERVER_ERROR, None, says.to_owned())
            );
        }
    }

    #[tokio::test]
    async fn refusals_keep_their_messages_and_say_when_to_come_back() {
        let busy = answer(ServerError::Busy {
            retry_after_secs: 2,
        })
        .await;
        assert_eq!(
            (busy.0, busy.1.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("2"))
        );
        let engine_busy = answer(ServerError::Engine(EngineError::Busy {
            reason: "too many plans this minute".to_owned(),
            retry_after_secs: 7,
        }))
        .await;
        assert_eq!(
            engine_busy,
            (
                StatusCode::TOO_MANY_REQUESTS,
                Some("7".to_owned()),
                "too many plans this minute".to_owned()
            )
        );
        let full = answer(RepositoryError::Full { max: 4 }.into()).await;
        assert_eq!(
            full,
            (
                StatusCode::INSUFFICIENT_STORAGE,
                None,
                "the server already holds 4 models; delete one first".to_owned()
            )
        );
        for (error, status) in [
            (ServerError::AdminDisabled, StatusCode::FORBIDDEN),
            (ServerError::MissingToken, StatusCode::UNAUTHORIZED),
            (ServerError::InvalidToken, StatusCode::UNAUTHORIZED),
            (ServerError::NoAttestation, StatusCode::NOT_FOUND),
            (ServerError::PullsDisabled, StatusCode::NOT_FOUND),
            (
                ServerError::PullInProgress {
                    name: "m".to_owned(),
                },
                StatusCode::CONFLICT,
            ),
            (
                ServerError::TooLarge {
                    what: "model",
                    limit: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ] {
            let message = error.to_string();
            assert_eq!(answer(error).await, (status, None, message));
        }
    }
}
