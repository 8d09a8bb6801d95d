//! The key broker's HTTP API (`design.md`, "KBS key transfer"; `docs/kbs.md`).
//!
//! Endpoints:
//! - `POST /kbs/v1/keys/{id}/transfer`: with a `quote`, the key transfer; without one (or with an
//!   empty body), a fresh nonce for the freshness flow.
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
//! Nothing secret is logged: not the key, not the wrapped bytes, not `user_data`.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use adyton_attest::AttestError;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::KbsError;
use crate::transfer::{Broker, TransferDecision, TransferRequest};

/// The largest transfer request body accepted. A quote with its certificate chain is a few KiB; an
/// SNP report with a VCEK chain under 16 KiB. 1 MiB leaves room and bounds the memory a client can
/// make the broker hold.
pub const TRANSFER_BODY_LIMIT: usize = 1 << 20;

/// Where transfer decisions go. Every transfer attempt that reaches the broker is recorded once,
/// allowed or denied.
pub trait AuditSink: Send + Sync {
    /// Records one decision. It holds no secret.
    fn record(&self, decision: &TransferDecision);
}

/// An audit sink writing one JSON object per line.
pub struct JsonLinesAudit<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> std::fmt::Debug for JsonLinesAudit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesAudit").finish_non_exhaustive()
    }
}

impl<W: Write + Send> JsonLinesAudit<W> {
    /// An audit log written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    /// The writer, back.
    pub fn into_inner(self) -> W {
        self.out
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<W: Write + Send> AuditSink for JsonLinesAudit<W> {
    fn record(&self, decision: &TransferDecision) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // One write per line, so lines from concurrent transfers never interleave.
        let written = serde_json::to_vec(decision)
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                out.write_all(&line)?;
                out.flush()
            });
        if let Err(e) = written {
            // The decision itself holds no secret, so naming the key id here is safe.
            eprintln!(
                "adyton-kbs: audit write failed for key {}: {e}",
                decision.key_id
            );
        }
    }
}

/// An audit sink that keeps decisions in memory, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    decisions: Mutex<Vec<TransferDecision>>,
}

impl MemoryAudit {
    /// The decisions recorded so far, oldest first.
    pub fn decisions(&self) -> Vec<TransferDecision> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, decision: &TransferDecision) {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(decision.clone());
    }
}

/// The current time in unix seconds; a plain function so tests can fix it.
pub type Clock = fn() -> u64;

/// The system clock. A clock before 1970 reads as 0, which every nonce and certificate check refuses.
pub fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the HTTP handlers share.
pub struct KbsState {
    /// The broker.
    pub broker: Broker,
    /// Where transfer decisions go.
    pub audit: Arc<dyn AuditSink>,
    /// The time source.
    pub clock: Clock,
}

impl std::fmt::Debug for KbsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsState")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl KbsState {
    /// Answers a call to the transfer endpoint: a nonce, or the transfer, audited.
    fn answer(&self, call: TransferCall) -> Result<TransferReply, KbsError> {
        let now = (self.clock)();
        let request = match call.body {
            TransferBody::NonceRequest => {
                let nonce = self.broker.nonce(now)?;
                return Ok(TransferReply::Nonce {
                    nonce: BASE64.encode(nonce),
                });
            }
            TransferBody::Transfer(request) => request,
        };
        let (outcome, decision) = self.broker.transfer(&call.key_id, &request, now);
        self.audit.record(&decision);
        let (wrapped, _claims) = outcome?;
        Ok(TransferReply::Key {
            wrapped_key: BASE64.encode(&wrapped.wrapped_key),
            wrapped_swk: BASE64.encode(&wrapped.wrapped_swk),
        })
    }
}

/// The key broker's router.
pub fn router(state: Arc<KbsState>) -> Router {
    Router::new()
        .route("/kbs/v1/keys/{id}/transfer", post(transfer_key))
        .layer(DefaultBodyLimit::max(TRANSFER_BODY_LIMIT))
        .with_state(state)
}

async fn transfer_key(
    State(state): State<Arc<KbsState>>,
    call: TransferCall,
) -> Result<Json<TransferReply>, ApiError> {
    // Verification is CPU work (signatures, certificate chains, RSA): keep it off the async workers.
    let reply = tokio::task::spawn_blocking(move || state.answer(call))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(reply))
}

/// The answer of the transfer endpoint.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum TransferReply {
    Key {
        wrapped_key: String,
        wrapped_swk: String,
    },
    Nonce {
        nonce: String,
    },
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

/// The JSON body as sent; unknown fields are ignored, as Intel's KBS clients send extras.
#[derive(Deserialize)]
struct TransferJson {
    quote: Option<String>,
    user_data: Option<String>,
    nonce: Option<String>,
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
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TransferBody::NonceRequest);
    }
    let json: TransferJson = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let Some(quote) = json.quote else {
        return Ok(TransferBody::NonceRequest);
    };
    let user_data = json
        .user_data
        .ok_or_else(|| ApiError::bad_request("missing `user_data`"))?;
    Ok(TransferBody::Transfer(TransferRequest {
        attestation_type,
        quote: decode_base64("quote", &quote)?,
        user_data: decode_base64("user_data", &user_data)?,
        nonce: json
            .nonce
            .map(|nonce| decode_base64("nonce", &nonce))
            .transpose()?,
    }))
}

fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    BASE64
        .decode(text.trim())
        .map_err(|e| ApiError::bad_request(format!("`{field}` is not base64: {e}")))
}

/// The one error type of the key broker's HTTP API: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
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

impl From<KbsError> for ApiError {
    fn from(err: KbsError) -> Self {
        let status = match &err {
            KbsError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            KbsError::UnknownKey { .. } | KbsError::UnknownPolicy { .. } => StatusCode::NOT_FOUND,
            KbsError::AlreadyExists { .. } | KbsError::PolicyInUse { .. } => StatusCode::CONFLICT,
            KbsError::AttestationTypeMismatch { .. }
            | KbsError::ReportDataMismatch
            | KbsError::BadNonce { .. } => StatusCode::FORBIDDEN,
            KbsError::Attestation(e) => attestation_status(e),
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
        | AttestError::TeeNotInPolicy { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}
