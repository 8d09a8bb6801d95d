//! The key broker's HTTP API (`design.md`, "KBS key transfer"; `docs/kbs.md`).
//!
//! Endpoints:
//! - `POST /kbs/v1/keys/{id}/transfer`: with a `quote`, the key transfer; without one (or with an
//!   empty body), a fresh nonce for the freshness flow.
//! - The admin API ([`crate::admin`]), for operators only:
//!   - `POST /kbs/v1/token`: `{"username", "password"}` → `{"token", "expires_in"}`; 401 for a wrong
//!     password or an unknown user alike, 429 after too many failures for the username;
//!   - with `Authorization: Bearer <token>` (else 401): `POST`, `GET` (list) on
//!     `/kbs/v1/key-transfer-policies` and `/kbs/v1/keys`, and `GET`, `DELETE` on `.../{id}`.
//!     A key's bytes are never returned; deleting a policy that keys use is 409.
//!   - `POST /kbs/v1/keys/{id}/offline-transfer`, with a bearer token: a device's provisioning
//!     request (`adyton-provision-request/1`, `design.md` flow D) carried by an operator; the
//!     transfer's decision without a nonce, TDX refused (400: it cannot seal), audited with the
//!     request id, the model and the operator.
//! - `GET /kbs/v1/openapi.json`: the OpenAPI 3.1 document of all of these (`docs/kbs-openapi.json`),
//!   unauthenticated. [`ROUTES`] lists every route; the router is built from it.
//!
//! Status codes, with the body `{"error": "..."}`:
//! - 400: malformed input (JSON, base64, `user_data`, evidence, an `Attestation-Type` naming no TEE);
//! - 403: evidence or policy denials, including an `Attestation-Type` that names a TEE other than the
//!   key's policy requires: the request was well formed, and the answer is "not you";
//! - 404: unknown key (or its policy);
//! - 413: a body over [`TRANSFER_BODY_LIMIT`];
//! - 500: store, master key and other internal failures, with a generic message; the details go
//!   to stderr, never to the client.
//!
//! Nothing secret is logged: not the key, not the wrapped bytes, not `user_data`, not a password or
//! a token.
//!
//! Each handler is an adapter: extractors read and check the request (the admin token in
//! [`Operator`]'s, bodies in `OperatorJson` and `AdminJson`, the transfer in `TransferCall`);
//! one call of the transfer use case ([`KbsState`]) or of the admin service ([`AdminService`]),
//! which write the audit log themselves; one answer. [`ApiError`] maps every refusal to its status
//! in one place.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use adyton_attest::AttestError;
use adyton_envelope::wrap::WrappedKey;
use adyton_proto::{ProvisionRequest, TransferAnswer};
use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::admin::{
    policy_document, AdminAuth, AdminError, AdminService, AdminUsers, Login, NewKey, NewPolicy,
    Operator, PasswordPool,
};
use crate::audit::AuditError;
use crate::error::{KbsError, ServiceError};
use crate::store::KeyRecord;
use crate::transfer::TransferRequest;

/// The largest transfer request body accepted. A quote with its certificate chain is a few KiB; an
/// SNP report with a VCEK chain under 16 KiB. 1 MiB leaves room and bounds the memory a client can
/// make the broker hold.
pub const TRANSFER_BODY_LIMIT: usize = 1 << 20;

pub use crate::audit::{AuditSink, JsonLinesAudit, MemoryAudit};
pub use crate::service::{system_clock, Clock, KbsState};

/// The key broker's router, with no operators: every admin request is 401.
pub fn router(state: Arc<KbsState>) -> Router {
    router_with_admin(state, Arc::new(AdminAuth::new(AdminUsers::none())))
}

/// The key broker's router, with the admin API open to `admin`'s operators.
///
/// The admin side is a second argument rather than a field of [`KbsState`], so that code building
/// `KbsState` by its fields keeps compiling.
///
/// The routes mounted are exactly [`ROUTES`]: the router is built from that list.
pub fn router_with_admin(state: Arc<KbsState>, admin: Arc<AdminAuth>) -> Router {
    router_with_admin_pool(state, admin, PasswordPool::with_defaults())
}

/// [`router_with_admin`], with passwords checked on `passwords`.
pub fn router_with_admin_pool(
    state: Arc<KbsState>,
    admin: Arc<AdminAuth>,
    passwords: PasswordPool,
) -> Router {
    let admin = Arc::new(AdminService::new(state.clone(), admin, passwords));
    ROUTES
        .iter()
        .filter_map(|&(method, path)| Some((path, handler(method, path)?)))
        .fold(Router::new(), |router, (path, handler)| {
            // Two methods on one path merge into one method router.
            router.route(path, handler)
        })
        .layer(DefaultBodyLimit::max(TRANSFER_BODY_LIMIT))
        .with_state(AppState { kbs: state, admin })
}

/// `POST`: the key transfer and the nonce flow.
const TRANSFER_PATH: &str = "/kbs/v1/keys/{id}/transfer";
/// `POST`: an operator's answer to an offline device's provisioning request.
const OFFLINE_TRANSFER_PATH: &str = "/kbs/v1/keys/{id}/offline-transfer";
/// `POST`: an operator's login.
const TOKEN_PATH: &str = "/kbs/v1/token";
/// `POST`, `GET`: create and list transfer policies.
const POLICIES_PATH: &str = "/kbs/v1/key-transfer-policies";
/// `GET`, `DELETE`: one transfer policy.
const POLICY_PATH: &str = "/kbs/v1/key-transfer-policies/{id}";
/// `POST`, `GET`: create and list keys.
const KEYS_PATH: &str = "/kbs/v1/keys";
/// `GET`, `DELETE`: one key.
const KEY_PATH: &str = "/kbs/v1/keys/{id}";
/// `GET`: the broker's metrics (Prometheus text), for operators.
const METRICS_PATH: &str = "/kbs/v1/metrics";
/// `GET`: the OpenAPI document of this API.
const OPENAPI_PATH: &str = "/kbs/v1/openapi.json";

/// Every `(method, path)` the router serves, paths in axum's (and OpenAPI's) `{param}` syntax.
/// `docs/kbs-openapi.json` documents exactly these; the tests hold both to it. (`GET` routes also
/// answer `HEAD`, as axum does.)
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", TRANSFER_PATH),
    ("POST", OFFLINE_TRANSFER_PATH),
    ("POST", TOKEN_PATH),
    ("POST", POLICIES_PATH),
    ("GET", POLICIES_PATH),
    ("GET", POLICY_PATH),
    ("DELETE", POLICY_PATH),
    ("POST", KEYS_PATH),
    ("GET", KEYS_PATH),
    ("GET", KEY_PATH),
    ("DELETE", KEY_PATH),
    ("GET", METRICS_PATH),
    ("GET", OPENAPI_PATH),
];

/// The OpenAPI 3.1 document of this API, served at `GET /kbs/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/kbs-openapi.json");

/// The handler of one entry of [`ROUTES`]; `None` for a pair no handler serves, which the tests
/// catch (an entry of `ROUTES` that the router answers 404 or 405).
fn handler(method: &str, path: &str) -> Option<MethodRouter<AppState>> {
    Some(match (method, path) {
        ("POST", TRANSFER_PATH) => post(transfer_key),
        ("POST", OFFLINE_TRANSFER_PATH) => post(offline_transfer),
        ("POST", TOKEN_PATH) => post(issue_token),
        ("POST", POLICIES_PATH) => post(create_policy),
        ("GET", POLICIES_PATH) => get(list_policies),
        ("GET", POLICY_PATH) => get(get_policy),
        ("DELETE", POLICY_PATH) => delete(delete_policy),
        ("POST", KEYS_PATH) => post(create_key),
        ("GET", KEYS_PATH) => get(list_keys),
        ("GET", KEY_PATH) => get(get_key),
        ("DELETE", KEY_PATH) => delete(delete_key),
        ("GET", METRICS_PATH) => get(metrics),
        ("GET", OPENAPI_PATH) => get(openapi),
        _ => return None,
    })
}

/// The collateral counters, for an operator's scraper.
async fn metrics(State(admin): State<Arc<AdminService>>, operator: Operator) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics_text(&operator),
    )
}

/// The OpenAPI document; unauthenticated, like the transfer endpoint.
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// The router's state: the transfer use case, and the admin service.
#[derive(Clone)]
struct AppState {
    kbs: Arc<KbsState>,
    admin: Arc<AdminService>,
}

impl FromRef<AppState> for Arc<KbsState> {
    fn from_ref(state: &AppState) -> Self {
        state.kbs.clone()
    }
}

impl FromRef<AppState> for Arc<AdminService> {
    fn from_ref(state: &AppState) -> Self {
        state.admin.clone()
    }
}

async fn transfer_key(
    State(kbs): State<Arc<KbsState>>,
    call: TransferCall,
) -> Result<Json<TransferReply>, ApiError> {
    // Verification is CPU work (signatures, certificate chains, RSA): keep it off the async workers.
    let reply = off_workers(move || match call.body {
        TransferBody::NonceRequest => kbs.nonce().map(|nonce| TransferReply::Nonce {
            nonce: BASE64.encode(nonce),
        }),
        TransferBody::Transfer(request) => kbs.transfer(&call.key_id, &request).map(Into::into),
    })
    .await?;
    Ok(Json(reply))
}

/// The answer of the transfer endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum TransferReply {
    Key(TransferAnswer),
    Nonce { nonce: String },
}

/// A call to the transfer endpoint, extracted and decoded: key id, header and body.
#[derive(Debug)]
struct TransferCall {
    key_id: String,
    body: TransferBody,
}

#[derive(Debug)]
enum TransferBody {
    /// No quote: the client asks for a nonce to bind into its next request.
    NonceRequest,
    Transfer(TransferRequest),
}

impl<S: Send + Sync> FromRequest<S> for TransferCall {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Path(key_id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let attestation_type = match parts.headers.get("attestation-type") {
            // A missing header reaches the broker as "", which it refuses (and audits) as naming
            // no TEE.
            None => String::new(),
            Some(value) => value
                .to_str()
                .map_err(|_| ApiError::bad_request("Attestation-Type is not ASCII"))?
                .trim()
                .to_owned(),
        };
        // The body is read as bytes and parsed here, not by `Json`, because some clients send no
        // `Content-Type`. `Bytes` honours `DefaultBodyLimit`, and reports an overrun as 413.
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        Ok(Self {
            key_id,
            body: parse_transfer_body(&bytes, attestation_type)?,
        })
    }
}

fn parse_transfer_body(bytes: &[u8], attestation_type: String) -> Result<TransferBody, ApiError> {
    // The body's syntax is the wire contract's (`adyton_proto::transfer`); its meaning, the
    // broker's.
    let body =
        adyton_proto::TransferBody::parse(bytes).map_err(|e| ApiError::bad_request(e.reason()))?;
    Ok(match body {
        None => TransferBody::NonceRequest,
        Some(body) => TransferBody::Transfer(TransferRequest {
            attestation_type,
            quote: body.quote,
            user_data: body.user_data,
            nonce: body.nonce,
            collateral: body.collateral,
        }),
    })
}

// The admin API. Each handler: an authenticated operator (`Operator`, checked before the body is
// parsed), a typed body (`OperatorJson`, `AdminJson`), one call of the admin service, off the async
// workers when it touches the store or the disk, one answer.

async fn issue_token(
    State(admin): State<Arc<AdminService>>,
    ClientAddress(client): ClientAddress,
    AdminJson(login): AdminJson<Login>,
) -> Result<Json<TokenReply>, ApiError> {
    let issued = admin.login(client, login).await?;
    Ok(Json(TokenReply {
        token: issued.token.to_string(),
        expires_in: issued.expires_in,
    }))
}

async fn create_policy(
    State(admin): State<Arc<AdminService>>,
    OperatorJson { operator, body }: OperatorJson<NewPolicy>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let record = off_workers(move || admin.create_policy(&operator, body)).await?;
    Ok((StatusCode::CREATED, Json(policy_document(&record))))
}

async fn list_policies(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let records = off_workers(move || admin.policies(&operator)).await?;
    Ok(Json(records.iter().map(policy_document).collect()))
}

async fn get_policy(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = off_workers(move || admin.policy(&operator, &id)).await?;
    Ok(Json(policy_document(&record)))
}

async fn delete_policy(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    off_workers(move || admin.delete_policy(&operator, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_key(
    State(admin): State<Arc<AdminService>>,
    OperatorJson { operator, body }: OperatorJson<NewKey>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let record = off_workers(move || admin.create_key(&operator, body)).await?;
    Ok((StatusCode::CREATED, Json(key_json(&record))))
}

async fn list_keys(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let records = off_workers(move || admin.keys(&operator)).await?;
    Ok(Json(records.iter().map(key_json).collect()))
}

async fn get_key(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = off_workers(move || admin.key(&operator, &id)).await?;
    Ok(Json(key_json(&record)))
}

async fn delete_key(
    State(admin): State<Arc<AdminService>>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    off_workers(move || admin.delete_key(&operator, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn offline_transfer(
    State(admin): State<Arc<AdminService>>,
    Path(key_id): Path<String>,
    OperatorJson { operator, body }: OperatorJson<ProvisionRequest>,
) -> Result<Json<TransferReply>, ApiError> {
    // Verification is CPU work, like the online transfer's.
    let wrapped = off_workers(move || admin.offline_transfer(&operator, &key_id, body)).await?;
    Ok(Json(wrapped.into()))
}

/// Runs a use case that verifies evidence or touches the store or the disk on the blocking pool.
async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(ApiError::from)
}

/// A key's metadata. The sealed bytes stay in the store: no admin answer carries key material.
fn key_json(record: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "transfer_policy_id": record.transfer_policy_id,
        "key_information": {
            "algorithm": record.algorithm,
            "key_length": record.key_length,
        },
        "created_at": record.created_at,
    })
}

/// `POST /kbs/v1/token`'s body. No `Debug`: it holds a password.
#[derive(Deserialize)]
struct LoginJson {
    username: String,
    password: String,
}

impl Drop for LoginJson {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

#[derive(Serialize)]
struct TokenReply {
    token: String,
    expires_in: u64,
}

/// `POST /kbs/v1/keys`'s body.
#[derive(Deserialize)]
struct KeyJson {
    key_information: KeyInformation,
    transfer_policy_id: String,
}

/// No `Debug`: it may hold key bytes.
#[derive(Deserialize)]
struct KeyInformation {
    algorithm: String,
    key_length: u32,
    key_data: Option<String>,
}

impl Drop for KeyInformation {
    fn drop(&mut self) {
        if let Some(key_data) = &mut self.key_data {
            key_data.zeroize();
        }
    }
}

/// An admin request's typed input, read from its JSON body.
trait AdminBody: Sized {
    /// The body's JSON shape.
    type Json: DeserializeOwned;

    fn from_json(json: Self::Json) -> Result<Self, ServiceError>;
}

impl AdminBody for Login {
    type Json = LoginJson;

    fn from_json(mut json: LoginJson) -> Result<Self, ServiceError> {
        Ok(Self {
            username: std::mem::take(&mut json.username),
            password: Zeroizing::new(std::mem::take(&mut json.password)),
        })
    }
}

impl AdminBody for NewPolicy {
    type Json = serde_json::Map<String, serde_json::Value>;

    fn from_json(json: Self::Json) -> Result<Self, ServiceError> {
        Self::from_document(json)
    }
}

impl AdminBody for NewKey {
    type Json = KeyJson;

    fn from_json(mut json: KeyJson) -> Result<Self, ServiceError> {
        let info = &json.key_information;
        let policy_id = std::mem::take(&mut json.transfer_policy_id);
        let key = Self::new(&info.algorithm, info.key_length, policy_id)?;
        let Some(text) = info.key_data.as_deref() else {
            return Ok(key);
        };
        let key_data = BASE64
            .decode(text.trim())
            .map(Zeroizing::new)
            // The decoder's message names an offending byte of the key: leave it out.
            .map_err(|_| ServiceError::invalid("key_information.key_data is not base64"))?;
        Ok(key.imported(key_data))
    }
}

impl AdminBody for ProvisionRequest {
    type Json = Self;

    fn from_json(json: Self) -> Result<Self, ServiceError> {
        Ok(json)
    }
}

impl From<WrappedKey> for TransferReply {
    fn from(wrapped: WrappedKey) -> Self {
        Self::Key(TransferAnswer {
            wrapped_key: wrapped.wrapped_key,
            wrapped_swk: wrapped.wrapped_swk,
        })
    }
}

/// An authenticated operator: the user of a live `Authorization: Bearer` token.
impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(AdminError::Unauthenticated)?;
        Ok(app.admin.authenticate(token)?)
    }
}

/// An operator's request with a JSON body. The body (at most [`TRANSFER_BODY_LIMIT`]) is read
/// before the token is checked, so that a refused client reads its 401 rather than a connection
/// reset while it is still sending.
struct OperatorJson<T> {
    operator: Operator,
    body: T,
}

impl<T: AdminBody> FromRequest<AppState> for OperatorJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), app)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let operator = Operator::from_request_parts(&mut parts, app).await?;
        let body = T::from_json(parse_json(&bytes)?)?;
        Ok(Self { operator, body })
    }
}

/// A JSON body parsed from bytes, so that malformed JSON or a missing `Content-Type` is a 400 like
/// the transfer endpoint's, not axum's 415 or 422.
struct AdminJson<T>(T);

impl<T: AdminBody, S: Send + Sync> FromRequest<S> for AdminJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        Ok(Self(T::from_json(parse_json(&bytes)?)?))
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let status = match &err {
            AdminError::InvalidCredentials | AdminError::Unauthenticated => {
                StatusCode::UNAUTHORIZED
            }
            AdminError::TooManyAttempts { retry_after } | AdminError::Busy { retry_after } => {
                let status = if matches!(err, AdminError::Busy { .. }) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::TOO_MANY_REQUESTS
                };
                let mut refused = Self::new(status, err.to_string());
                refused.retry_after = Some(*retry_after);
                return refused;
            }
            AdminError::Internal { .. } => return Self::internal(&err),
        };
        Self::new(status, err.to_string())
    }
}

/// The client's IP address, from the connection (`ConnectInfo`), for the login limits. A router
/// served without connection info (in-process tests) sees every client as `0.0.0.0`.
struct ClientAddress(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        Ok(Self(address))
    }
}

/// The one error type of the key broker's HTTP API: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (429 and 503).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 503: the audit record could not be written, so the request is refused (fail closed).
    /// The cause goes to stderr; the client learns only that the broker cannot serve now.
    fn audit(err: AuditError) -> Self {
        // At most one line a second, with a count of the ones left out: a full disk refuses every
        // request, and the log of the refusals must not become a flood of its own.
        static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
        static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
        let now = system_clock();
        if LAST_SECOND.swap(now, Ordering::Relaxed) != now {
            let left_out = LEFT_OUT.swap(0, Ordering::Relaxed);
            eprintln!(
                "adyton-kbs: audit write failed, request refused: {err} ({left_out} more since the \
                 last such line)"
            );
        } else {
            LEFT_OUT.fetch_add(1, Ordering::Relaxed);
        }
        let mut refused = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written; nothing was done or released",
        );
        refused.retry_after = Some(5);
        refused
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 500: the details are logged here and never returned.
    fn internal(details: &dyn std::fmt::Display) -> Self {
        eprintln!("adyton-kbs: internal error: {details}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The one mapping of the services' refusals to statuses.
impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidRequest { reason } => Self::bad_request(reason),
            ServiceError::Broker(err) => err.into(),
            ServiceError::Admin(err) => err.into(),
            ServiceError::Audit(err) => Self::audit(err),
            ServiceError::Internal { .. } => Self::internal(&err),
        }
    }
}

/// Seconds a client is asked to wait before it sends evidence again when the collateral source
/// is unreachable: long enough not to hammer a source that is down, short enough for a pull's
/// retries.
const COLLATERAL_RETRY_AFTER_SECS: u64 = 30;

impl From<KbsError> for ApiError {
    fn from(err: KbsError) -> Self {
        if err.is_collateral_unreachable() {
            // The source's URL and failure are the operator's to read (here and in the audit
            // line); the client learns that nothing was decided and when to try again.
            eprintln!("adyton-kbs: transfer refused for now: {err}");
            let mut refused = Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "collateral source unreachable: the key broker cannot fetch the collateral this \
                 evidence needs and holds no valid copy; nothing was decided about the evidence, \
                 retry later",
            );
            refused.retry_after = Some(COLLATERAL_RETRY_AFTER_SECS);
            return refused;
        }
        let status = match &err {
            KbsError::BadRequest { .. } | KbsError::NoSealingKey { .. } => StatusCode::BAD_REQUEST,
            KbsError::UnknownKey { .. } | KbsError::UnknownPolicy { .. } => StatusCode::NOT_FOUND,
            KbsError::AlreadyExists { .. } | KbsError::PolicyInUse { .. } => StatusCode::CONFLICT,
            KbsError::AttestationTypeMismatch { .. }
            | KbsError::ReportDataMismatch
            | KbsError::BadNonce { .. } => StatusCode::FORBIDDEN,
            KbsError::Attestation(e) => attestation_status(e),
            KbsError::StorageFull { .. } => {
                // The path and the cause go to the log; the client learns what to do.
                eprintln!("adyton-kbs: {err}");
                return Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the key broker's storage is full; retry once space is freed",
                );
            }
            KbsError::Envelope(_) | KbsError::Store { .. } | KbsError::MasterKey { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            return Self::internal(&err);
        }
        Self::new(status, err.to_string())
    }
}

/// Malformed evidence is the client's input error; verification and policy failures are denials;
/// anything else (I/O, a bad stored policy, crypto library failures) is the broker's own fault.
fn attestation_status(err: &AttestError) -> StatusCode {
    match err {
        AttestError::MalformedEvidence { .. } | AttestError::UnknownTee { .. } => {
            StatusCode::BAD_REQUEST
        }
        AttestError::WrongTee { .. }
        | AttestError::BadSignature { .. }
        | AttestError::CertificateChain { .. }
        | AttestError::CollateralMissing { .. }
        | AttestError::CollateralExpired { .. }
        | AttestError::VerificationFailed { .. }
        | AttestError::ReportDataMismatch { .. }
        | AttestError::PolicyDenied { .. }
        | AttestError::TcbOutOfDate { .. }
        | AttestError::DebugEnabled
        | AttestError::TeeNotInPolicy { .. }
        | AttestError::GpuMeasurementMismatch { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}
