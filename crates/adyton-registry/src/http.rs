//! The registry's HTTP API (`docs/registry.md`). The only module that knows axum.
//!
//! - `GET /healthz`: `{"status": "ok"}`.
//! - `GET /openapi.json`: the OpenAPI 3.1 document of this API (`docs/registry-openapi.json`).
//! - `GET /models`: every model's info, by id; `GET /models/{id}`: one (CNAP's schema).
//! - `PUT /models/{id}`: create or replace the info (JSON, at most [`MAX_INFO_BYTES`]);
//!   `DELETE /models/{id}`: remove the info and the blob. Both need the bearer token.
//! - `PUT /blobs/{id}`: upload a blob (the raw body, streamed to the store, never buffered whole;
//!   bearer token; at most the configured limit). Blobs are immutable: 409 if one exists.
//! - `GET /blobs/{id}` (and `HEAD`): download, streamed, with `Accept-Ranges: bytes`; one
//!   `Range: bytes=a-b`, `a-` or `-n` is answered 206 with `Content-Range`, an unsatisfiable one
//!   416; a multi-range request gets the whole blob (200).
//!
//! Errors are `{"error": "..."}` with 400 (bad id, info or body), 401 (no or wrong token), 404,
//! 409, 413, 416, 500 or 507 (the store's disk is full; nothing was stored). The details of a 500
//! or 507 go to stderr, never to the client. Nothing secret is logged: not the token, and the
//! registry never holds a key or plaintext.

use std::fmt;
use std::sync::Arc;

use adyton_proto::BearerToken;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::error::{BlobError, RegistryError};
use crate::range::{self, RangeAnswer};
use crate::registry::{BlobSummary, ModelInfo, Registry, MAX_INFO_BYTES};

/// The bearer token that writes need: an [`adyton_proto::BearerToken`], kept only as its SHA-256
/// and compared in constant time.
pub struct WriteToken(BearerToken);

impl WriteToken {
    /// From the token's text (surrounding whitespace is not part of it); `None` if empty.
    pub fn new(token: &str) -> Option<Self> {
        BearerToken::new(token).map(Self)
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.matches(presented)
    }
}

impl fmt::Debug for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteToken(<redacted>)")
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct RegistryState {
    /// The registry.
    pub registry: Registry,
    /// The write token; without one, every write is 401.
    pub token: Option<WriteToken>,
}

type AppState = Arc<RegistryState>;

const HEALTH_PATH: &str = "/healthz";
const MODELS_PATH: &str = "/models";
const MODEL_PATH: &str = "/models/{id}";
const BLOB_PATH: &str = "/blobs/{id}";
/// `GET`: the OpenAPI document of this API.
const OPENAPI_PATH: &str = "/openapi.json";

/// Every `(method, path)` served; the router is built from this list. `docs/registry-openapi.json`
/// documents exactly these; the tests hold both to it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", HEALTH_PATH),
    ("GET", MODELS_PATH),
    ("GET", MODEL_PATH),
    ("PUT", MODEL_PATH),
    ("DELETE", MODEL_PATH),
    ("PUT", BLOB_PATH),
    ("GET", BLOB_PATH),
    ("HEAD", BLOB_PATH),
    ("GET", OPENAPI_PATH),
];

/// The OpenAPI 3.1 document of this API, served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/registry-openapi.json");

fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    use axum::routing::{delete, head, put};
    Some(match (method, path) {
        ("GET", HEALTH_PATH) => get(health),
        ("GET", MODELS_PATH) => get(list_models),
        ("GET", MODEL_PATH) => get(get_model),
        ("PUT", MODEL_PATH) => put(put_model),
        ("DELETE", MODEL_PATH) => delete(delete_model),
        ("PUT", BLOB_PATH) => put(upload_blob),
        ("GET", BLOB_PATH) => get(download_blob),
        ("HEAD", BLOB_PATH) => head(blob_head),
        ("GET", OPENAPI_PATH) => get(openapi),
        _ => return None,
    })
}

/// The registry's router.
pub fn router(state: Arc<RegistryState>) -> Router {
    ROUTES
        .iter()
        .filter_map(|&(method, path)| Some((path, handler(method, path)?)))
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        // Bounds the info bodies; blob uploads read the raw body, counted against their own limit.
        .layer(DefaultBodyLimit::max(MAX_INFO_BYTES))
        .with_state(state)
}

/// The OpenAPI document; public, like every read.
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn list_models(State(state): State<AppState>) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    Ok(Json(state.registry.list_models().await?))
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    Ok(Json(state.registry.get_model(&id).await?))
}

async fn put_model(
    State(state): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ModelInfo>, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    // Parsed here rather than by `Json`, because some clients send no `Content-Type`.
    let info = ModelInfo::from_json_strict(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid model info: {e}")))?;
    Ok(Json(state.registry.put_model(&id, info).await?))
}

async fn delete_model(
    State(state): State<AppState>,
    _writer: Writer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_model(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload_blob(
    State(state): State<AppState>,
    writer: Result<Writer, ApiError>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobSummary>), ApiError> {
    // A refused upload reads a small body before its 401, as before a 409 below: a client still
    // sending then reads the answer instead of a reset connection.
    if let Err(refused) = writer {
        drain(body, DRAIN_LIMIT).await;
        return Err(refused);
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Blobs are immutable. An upload to an existing id is refused before anything is stored, but
    // only once a small body has been read: a client still sending it then reads the 409, instead
    // of a connection reset in the middle of its request.
    if state.registry.blob_size(&id).await.is_ok() {
        drain(body, DRAIN_LIMIT).await;
        return Err(RegistryError::BlobExists { id }.into());
    }
    let stream = body
        .into_data_stream()
        .map_err(|e| BlobError::Interrupted {
            reason: e.to_string(),
        })
        .boxed();
    let summary = state.registry.upload_blob(&id, stream, announced).await?;
    Ok((StatusCode::CREATED, Json(summary)))
}

/// How much of a refused upload's body is read before the answer, and for how long at most.
const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards up to `limit` bytes of `body` (at most [`DRAIN_TIME`]).
async fn drain(body: Body, limit: usize) {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > limit {
                break;
            }
        }
    })
    .await;
}

async fn download_blob(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let size = state.registry.blob_size(&id).await?;
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, range) = match range::resolve(asked, size) {
        RangeAnswer::Whole => (StatusCode::OK, None),
        RangeAnswer::Partial(range) => (StatusCode::PARTIAL_CONTENT, Some(range)),
        RangeAnswer::Unsatisfiable => {
            return Err(RegistryError::RangeNotSatisfiable { size }.into());
        }
    };
    let read = state.registry.read_blob(&id, range.clone()).await?;
    let mut response = Response::new(Body::from_stream(read.stream));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let length = match &range {
        Some(range) => {
            let value = format!("bytes {}-{}/{}", range.start, range.end - 1, read.total);
            if let Ok(value) = HeaderValue::from_str(&value) {
                out.insert(header::CONTENT_RANGE, value);
            }
            range.end - range.start
        }
        None => read.total,
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

async fn blob_head(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let size = state.registry.blob_size(&id).await?;
    Ok((
        [
            (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        Body::empty(),
    )
        .into_response())
}

/// A request that carried the write token; checked before the body is read.
#[derive(Debug)]
struct Writer;

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this needs `Authorization: Bearer <token>` with the registry's write token",
            )
        };
        let token = state.token.as_ref().ok_or_else(unauthorized)?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        if token.matches(presented.trim()) {
            Ok(Self)
        } else {
            Err(unauthorized())
        }
    }
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// For 416: the blob's size, for `Content-Range: bytes */size`.
    size: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            size: None,
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let status = match &err {
            RegistryError::InvalidId { .. }
            | RegistryError::InvalidInfo { .. }
            | RegistryError::Interrupted { .. } => StatusCode::BAD_REQUEST,
            RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
            RegistryError::BlobExists { .. } | RegistryError::NoBlob { .. } => StatusCode::CONFLICT,
            RegistryError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RegistryError::StorageFull { .. } => {
                // The path and the cause go to the log; the client learns what to do.
                eprintln!("adyton-registry: {err}");
                return Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the registry's storage is full; retry once space is freed",
                );
            }
            RegistryError::RangeNotSatisfiable { size } => {
                let mut api = Self::new(StatusCode::RANGE_NOT_SATISFIABLE, err.to_string());
                api.size = Some(*size);
                return api;
            }
            _ => {
                eprintln!("adyton-registry: internal error: {err}");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        };
        Self::new(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(size) = self.size {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_redact() {
        let token = WriteToken::new(" s3cret \n").unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "WriteToken(<redacted>)");
        assert!(WriteToken::new("  ").is_none());
    }

    #[test]
    fn every_route_has_a_handler() {
        for (method, path) in ROUTES {
            assert!(handler(method, path).is_some(), "{method} {path}");
        }
    }
}
