//! The client's one error type.

use crate::attested_tls::AttestationFailure;

/// What went wrong talking to a service. No variant ever holds a token, a password or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL is not an `http` or `https` URL with a host.
    #[error("`{url}` is not a service URL: {reason}")]
    InvalidUrl { url: String, reason: &'static str },

    /// An argument the client refuses before sending anything.
    #[error("invalid {what}: {reason}")]
    InvalidInput { what: &'static str, reason: String },

    /// The request did not get an answer: connection refused, TLS failure, timeout.
    #[error("{request} failed: {source}")]
    Transport {
        request: String,
        #[source]
        source: ureq::Error,
    },

    /// The service answered with an error status; `message` is its `{"error": ...}` text.
    #[error("{request}: HTTP {status}{}: {message}", reason_phrase(*status))]
    Api {
        request: String,
        status: u16,
        message: String,
    },

    /// The answer was larger than the client accepts.
    #[error("{request}: the answer exceeds the {limit}-byte limit")]
    ResponseTooLarge { request: String, limit: u64 },

    /// A success status with a body that is not what the API documents.
    #[error("{request}: unexpected answer: {reason}")]
    InvalidResponse { request: String, reason: String },

    /// The server's attestation failed: its evidence is not genuine, its certificate cannot be
    /// read, or the evidence does not bind its TLS key (or this client's nonce). Nothing was sent.
    #[error("attestation failed: {reason}")]
    Attestation { reason: String },

    /// The server's evidence is genuine but the caller's policy refuses it. Nothing was sent.
    #[error("policy denied the server: {reason}")]
    Policy { reason: String },

    /// A request to an attested server did not get an answer: connection refused, timeout, a
    /// broken connection.
    #[error("{request} failed: {source}")]
    Connection {
        request: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<&AttestationFailure> for ClientError {
    fn from(failure: &AttestationFailure) -> Self {
        match failure {
            AttestationFailure::Policy(reason) => Self::Policy {
                reason: reason.to_string(),
            },
            // The GPUs verified, and the policy's `[nvidia_gpu]` table refused them.
            AttestationFailure::Gpus(adyton_attest::AttestError::PolicyDenied { .. }) => {
                Self::Policy {
                    reason: failure.to_string(),
                }
            }
            other => Self::Attestation {
                reason: other.to_string(),
            },
        }
    }
}

impl From<AttestationFailure> for ClientError {
    fn from(failure: AttestationFailure) -> Self {
        Self::from(&failure)
    }
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// ` Conflict` for 409, and so on; empty for unknown codes.
fn reason_phrase(status: u16) -> String {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .map(|reason| format!(" {reason}"))
        .unwrap_or_default()
}

/// Longest server message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 500;

/// The error of a non-2xx answer: the server's `{"error": "..."}` message when the body is one,
/// with control characters removed (a hostile server must not drive the operator's terminal).
pub(crate) fn api_error(request: String, status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => sanitise(&body.error),
        Err(_) => "(the answer holds no error message)".to_owned(),
    };
    ClientError::Api {
        request,
        status,
        message,
    }
}

fn sanitise(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().filter(|c| !c.is_control()).count() > MAX_MESSAGE_CHARS {
        clean.push('…');
    }
    clean
}

/// A wire contract broken by an argument or a file: the same message as the client's own checks.
impl From<adyton_proto::ProtoError> for ClientError {
    fn from(e: adyton_proto::ProtoError) -> Self {
        ClientError::InvalidInput {
            what: e.what(),
            reason: e.reason().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> String {
        "DELETE /kbs/v1/key-transfer-policies/p1".to_owned()
    }

    #[test]
    fn error_body_is_decoded() {
        let err = api_error(
            request(),
            409,
            br#"{"error": "the policy is used by 1 key"}"#,
        );
        assert_eq!(err.status(), Some(409));
        assert_eq!(
            err.to_string(),
            "DELETE /kbs/v1/key-transfer-policies/p1: HTTP 409 Conflict: the policy is used by 1 key"
        );
    }

    #[test]
    fn body_without_error_field_is_named() {
        for body in [&b""[..], b"<html>oops</html>", br#"{"message": "x"}"#] {
            let err = api_error(request(), 502, body);
            let text = err.to_string();
            assert!(text.contains("HTTP 502 Bad Gateway"), "{text}");
            assert!(text.contains("no error message"), "{text}");
        }
    }

    #[test]
    fn unknown_status_has_no_phrase() {
        let err = api_error(request(), 599, br#"{"error": "odd"}"#);
        assert_eq!(err.to_string(), format!("{}: HTTP 599: odd", request()));
    }

    #[test]
    fn control_characters_and_long_messages_are_cleaned() {
        let err = api_error(request(), 400, b"{\"error\": \"bad\\u001b[31m red\\n\"}");
        assert!(err.to_string().ends_with("bad[31m red"), "{err}");
        let long = format!(r#"{{"error": "{}"}}"#, "a".repeat(2000));
        let ClientError::Api { message, .. } = api_error(request(), 400, long.as_bytes()) else {
            panic!("not an API error");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
