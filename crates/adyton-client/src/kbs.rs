//! The key broker's admin API: login, transfer policies and keys (`docs/kbs.md`, "Admin API"), and
//! the offline transfer of a device's provisioning request (`docs/kbs.md`, "Offline transfer").

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{api_error, ClientError};
use crate::http::{self, Timeouts};
use crate::offline::ProvisionRequest;

type Result<T> = std::result::Result<T, ClientError>;

/// Largest answer read: the admin API answers with small JSON documents, but a list of many
/// policies can grow; anything larger is refused rather than held in memory.
pub const MAX_RESPONSE_LEN: u64 = 8 << 20;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request may take (the server hashes passwords with argon2id on login).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

const TOKEN_PATH: &str = "/kbs/v1/token";
const POLICIES_PATH: &str = "/kbs/v1/key-transfer-policies";
const KEYS_PATH: &str = "/kbs/v1/keys";

/// A bearer token of the admin API. Zeroized on drop; `Debug` prints a redaction.
#[derive(Clone)]
pub struct Token {
    secret: Zeroizing<String>,
    expires_in: Option<u64>,
}

impl Token {
    /// A token obtained earlier (read from a file or the environment); surrounding whitespace is
    /// dropped.
    pub fn new(secret: impl Into<String>) -> Self {
        let secret = Zeroizing::new(secret.into());
        let trimmed = secret.trim();
        let secret = if trimmed.len() == secret.len() {
            secret
        } else {
            Zeroizing::new(trimmed.to_owned())
        };
        Self {
            secret,
            expires_in: None,
        }
    }

    /// The token itself, to store it; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// Seconds until expiry, as the server said at login; `None` for tokens made with [`Token::new`].
    pub fn expires_in(&self) -> Option<u64> {
        self.expires_in
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A stored transfer policy: its table sits under the lowercase name of its attestation type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub id: String,
    pub attestation_type: String,
    pub created_at: u64,
    /// The TEE table (`{"sim": {...}}`), as the server returned it.
    #[serde(flatten)]
    pub tables: serde_json::Map<String, serde_json::Value>,
}

/// A key's metadata. The API never returns key bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub transfer_policy_id: String,
    pub key_information: KeyInformation,
    pub created_at: u64,
}

/// A key's algorithm and length (AES, 256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInformation {
    pub algorithm: String,
    pub key_length: u32,
}

/// A client of one key broker's admin API.
pub struct KbsClient {
    base_url: String,
    agent: ureq::Agent,
}

impl fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KbsClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl KbsClient {
    /// A client of the KBS at `base_url` (`http://host:port` or `https://...`, with or without a
    /// trailing `/`). Certificates are always checked against Mozilla's roots.
    pub fn new(base_url: &str) -> Result<Self> {
        let base_url = http::normalise_base_url(base_url)?;
        let agent = http::agent(Timeouts {
            connect: CONNECT_TIMEOUT,
            call: Some(CALL_TIMEOUT),
            stall: None,
        });
        Ok(Self { base_url, agent })
    }

    /// The base URL, normalised.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Logs in as `user`: a wrong password and an unknown user are the same 401.
    pub fn login(&self, user: &str, password: &str) -> Result<Token> {
        #[derive(Serialize)]
        struct Login<'a> {
            username: &'a str,
            password: &'a str,
        }
        #[derive(Deserialize)]
        struct Reply {
            token: String,
            expires_in: u64,
        }
        let body = Zeroizing::new(to_json(&Login {
            username: user,
            password,
        })?);
        let reply: Reply = self.send(Method::Post, TOKEN_PATH.to_owned(), None, Some(&body))?;
        let mut token = Token::new(reply.token);
        token.expires_in = Some(reply.expires_in);
        Ok(token)
    }

    /// Creates a transfer policy of `attestation_type` (`SGX`, `TDX`, `SNP` or `SIM`) from its
    /// table (`docs/policy.md`, as JSON).
    pub fn create_policy(
        &self,
        token: &Token,
        attestation_type: &str,
        table: &serde_json::Value,
    ) -> Result<PolicyInfo> {
        let mut body = serde_json::Map::new();
        body.insert("attestation_type".into(), attestation_type.into());
        body.insert(attestation_type.to_ascii_lowercase(), table.clone());
        let body = to_json(&body)?;
        self.send(
            Method::Post,
            POLICIES_PATH.to_owned(),
            Some(token),
            Some(&body),
        )
    }

    /// Every transfer policy.
    pub fn list_policies(&self, token: &Token) -> Result<Vec<PolicyInfo>> {
        self.send(Method::Get, POLICIES_PATH.to_owned(), Some(token), None)
    }

    /// One transfer policy.
    pub fn get_policy(&self, token: &Token, id: &str) -> Result<PolicyInfo> {
        self.send(
            Method::Get,
            item_path(POLICIES_PATH, id)?,
            Some(token),
            None,
        )
    }

    /// Deletes a transfer policy; the server refuses (409) while keys use it.
    pub fn delete_policy(&self, token: &Token, id: &str) -> Result<()> {
        self.send_no_content(Method::Delete, item_path(POLICIES_PATH, id)?, token)
    }

    /// Creates an AES-256 key under the policy `policy_id`: these 32 bytes, or (with `None`) a key
    /// the server generates.
    pub fn create_key(
        &self,
        token: &Token,
        policy_id: &str,
        key_data: Option<&[u8]>,
    ) -> Result<KeyInfo> {
        if let Some(key) = key_data {
            if key.len() != 32 {
                return Err(ClientError::InvalidInput {
                    what: "key",
                    reason: format!("an AES-256 key is 32 bytes, not {}", key.len()),
                });
            }
        }
        let mut info = serde_json::Map::new();
        info.insert("algorithm".into(), "AES".into());
        info.insert("key_length".into(), 256.into());
        // The encoded key lives in `body` only, which is zeroized; `info` is moved into it.
        let encoded = key_data
            .map(|key| Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key)));
        let body = Zeroizing::new(match &encoded {
            None => to_json(&serde_json::json!({
                "key_information": info,
                "transfer_policy_id": policy_id,
            }))?,
            Some(encoded) => {
                #[derive(Serialize)]
                struct Information<'a> {
                    algorithm: &'a str,
                    key_length: u32,
                    key_data: &'a str,
                }
                #[derive(Serialize)]
                struct Request<'a> {
                    key_information: Information<'a>,
                    transfer_policy_id: &'a str,
                }
                to_json(&Request {
                    key_information: Information {
                        algorithm: "AES",
                        key_length: 256,
                        key_data: encoded,
                    },
                    transfer_policy_id: policy_id,
                })?
            }
        });
        self.send(Method::Post, KEYS_PATH.to_owned(), Some(token), Some(&body))
    }

    /// Every key's metadata.
    pub fn list_keys(&self, token: &Token) -> Result<Vec<KeyInfo>> {
        self.send(Method::Get, KEYS_PATH.to_owned(), Some(token), None)
    }

    /// One key's metadata.
    pub fn get_key(&self, token: &Token, id: &str) -> Result<KeyInfo> {
        self.send(Method::Get, item_path(KEYS_PATH, id)?, Some(token), None)
    }

    /// Deletes a key.
    pub fn delete_key(&self, token: &Token, id: &str) -> Result<()> {
        self.send_no_content(Method::Delete, item_path(KEYS_PATH, id)?, token)
    }

    /// Has the key broker answer a device's provisioning request (`design.md`, flow D):
    /// `POST /kbs/v1/keys/{key_id}/offline-transfer` with the request file's JSON, as an operator.
    /// The broker decides as for an online transfer without a nonce (the evidence must verify,
    /// bind SHA-512 of the request's public key and satisfy the key's transfer policy) and answers
    /// the model key wrapped to that public key; every decision is audited with the request id,
    /// the model and the operator.
    pub fn offline_transfer(
        &self,
        token: &Token,
        request: &ProvisionRequest,
    ) -> Result<TransferAnswer> {
        // The id goes into the URL path: check it here too, whatever made `request`.
        adyton_proto::id::check_provision_id("provisioning request", "key_id", &request.key_id)?;
        let path = format!("{KEYS_PATH}/{}/offline-transfer", request.key_id);
        let body = request.to_json();
        let (request, bytes) = self.exchange(Method::Post, path, Some(token), Some(&body))?;
        decode_transfer_answer(request, &bytes)
    }

    /// Sends a request and decodes its JSON answer.
    fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        token: Option<&Token>,
        body: Option<&[u8]>,
    ) -> Result<T> {
        let (request, bytes) = self.exchange(method, path, token, body)?;
        http::decode_json(request, &bytes)
    }

    fn send_no_content(&self, method: Method, path: String, token: &Token) -> Result<()> {
        self.exchange(method, path, Some(token), None).map(|_| ())
    }

    /// Sends a request; returns its description (method and path, never a secret) and the body of
    /// a 2xx answer, or the error of any other.
    fn exchange(
        &self,
        method: Method,
        path: String,
        token: Option<&Token>,
        body: Option<&[u8]>,
    ) -> Result<(String, Vec<u8>)> {
        let url = format!("{}{path}", self.base_url);
        let request = format!("{} {path}", method.as_str());
        let bearer = token.map(http::bearer);
        let answer = match method {
            Method::Get | Method::Delete => {
                let mut builder = if method == Method::Get {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(bearer) = &bearer {
                    builder = builder.header("Authorization", bearer.as_str());
                }
                builder.call()
            }
            Method::Post => {
                let mut builder = self.agent.post(&url).content_type("application/json");
                if let Some(bearer) = &bearer {
                    builder = builder.header("Authorization", bearer.as_str());
                }
                builder.send(body.unwrap_or(b"{}"))
            }
        };
        let answer = answer.map_err(|source| ClientError::Transport {
            request: request.clone(),
            source,
        })?;
        let bytes = http::answer_body(request.clone(), answer, MAX_RESPONSE_LEN)?;
        Ok((request, bytes))
    }
}

pub use adyton_proto::{TransferAnswer, TransferBody};

/// `POST url` (a key's full transfer URL, `.../kbs/v1/keys/{id}/transfer`, as model info carries it)
/// with `Attestation-Type: attestation_type` and `body`, the evidence and public key that the
/// CNAP client sends (`docs/kbs.md`), in base64 on the wire.
pub fn transfer(url: &str, attestation_type: &str, body: &TransferBody) -> Result<TransferAnswer> {
    let client = KbsClient::new(url)?;
    let request = "POST (key transfer)".to_owned();
    let body = body.to_json();
    let mut answer = client
        .agent
        .post(&client.base_url)
        .header("Attestation-Type", attestation_type)
        .content_type("application/json")
        .send(&body)
        .map_err(|source| ClientError::Transport {
            request: request.clone(),
            source,
        })?;
    let status = answer.status().as_u16();
    // Not `http::answer_body`: here an answer over the limit stays a `Transport` error, which the
    // server's puller treats as transient.
    let bytes = answer
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_LEN)
        .read_to_vec()
        .map_err(|source| ClientError::Transport {
            request: request.clone(),
            source,
        })?;
    if !(200..300).contains(&status) {
        return Err(api_error(request, status, &bytes));
    }
    decode_transfer_answer(request, &bytes)
}

/// A transfer's `{"wrapped_key", "wrapped_swk"}` answer, decoded from base64.
fn decode_transfer_answer(request: String, bytes: &[u8]) -> Result<TransferAnswer> {
    TransferAnswer::from_json(bytes).map_err(|e| ClientError::InvalidResponse {
        request,
        reason: e.reason().to_owned(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Delete => "DELETE",
        }
    }
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ClientError::InvalidInput {
        what: "request",
        reason: e.to_string(),
    })
}

/// `collection/id`, for ids that need no escaping in a path (the server's ids are UUIDs).
fn item_path(collection: &str, id: &str) -> Result<String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != "..";
    if !ok {
        return Err(ClientError::InvalidInput {
            what: "id",
            reason: format!(
                "`{}` is not an id (letters, digits, `-`, `_`, `.`)",
                id.escape_debug()
            ),
        });
    }
    Ok(format!("{collection}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::new(" s3cret-token\n");
        assert_eq!(token.expose_secret(), "s3cret-token");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn base_urls_are_checked() {
        let client = KbsClient::new("http://127.0.0.1:8443/").unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:8443");
        assert!(format!("{client:?}").contains("127.0.0.1"));
        for bad in [
            "",
            "127.0.0.1:8443",
            "ftp://host",
            "http://",
            "http://h/?q=1",
        ] {
            assert!(
                matches!(KbsClient::new(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_checked_before_sending() {
        assert_eq!(
            item_path(KEYS_PATH, "0b0e-11").unwrap(),
            "/kbs/v1/keys/0b0e-11"
        );
        for bad in ["", "..", "a/b", "a?b", "a b", "é"] {
            assert!(item_path(KEYS_PATH, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused_before_sending() {
        // Port 9 (discard) is never contacted: the check comes first.
        let client = KbsClient::new("http://127.0.0.1:9").unwrap();
        let err = client
            .create_key(&Token::new("t"), "p", Some(&[0u8; 16]))
            .unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidInput { what: "key", .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("Bearer"), "{err}");
    }

    #[test]
    fn transport_errors_name_the_request_but_no_secret() {
        // Nothing listens on port 1 of the loopback address.
        let client = KbsClient::new("http://127.0.0.1:1").unwrap();
        let err = client.login("admin", "the-password").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("POST /kbs/v1/token"), "{text}");
        assert!(!text.contains("the-password"), "{text}");
        let err = client.list_keys(&Token::new("the-token")).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("GET /kbs/v1/keys"), "{text}");
        assert!(!text.contains("the-token"), "{text}");
    }

    #[test]
    fn offline_transfers_check_the_key_id_and_name_no_secret() {
        let mut request = crate::offline::ProvisionRequest {
            format: crate::offline::REQUEST_FORMAT.into(),
            request_id: "r-1".into(),
            model: "m".into(),
            key_id: "../admin".into(),
            tee: "SIM".into(),
            sealing_policy: "signer".into(),
            public_key: "AAAA".into(),
            evidence: "AAAA".into(),
            created_at: 0,
        };
        // Nothing listens on port 1 of the loopback address; the id is refused before that.
        let client = KbsClient::new("http://127.0.0.1:1").unwrap();
        let err = client
            .offline_transfer(&Token::new("the-token"), &request)
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidInput { .. }), "{err:?}");
        request.key_id = "k-1".into();
        let err = client
            .offline_transfer(&Token::new("the-token"), &request)
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("POST /kbs/v1/keys/k-1/offline-transfer"),
            "{text}"
        );
        assert!(!text.contains("the-token"), "{text}");
    }

    #[test]
    fn policy_info_keeps_its_table() {
        let json = r#"{"id":"p","attestation_type":"SIM","created_at":5,"sim":{"measurement":[]}}"#;
        let policy: PolicyInfo = serde_json::from_str(json).unwrap();
        assert_eq!(policy.tables.len(), 1);
        assert!(policy.tables.contains_key("sim"));
        assert_eq!(serde_json::to_string(&policy).unwrap(), json);
    }
}
