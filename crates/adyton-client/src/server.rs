//! The inference server's client (`docs/server.md`): the Open Inference Protocol over one attested
//! server.
//!
//! [`ServerClient::connect`] verifies before it sends anything:
//!
//! 1. a TLS 1.3 handshake through [`AttestedServerVerifier`]: the evidence in the server's
//!    certificate verifies, binds the key the handshake proves, and satisfies the caller's policy;
//! 2. with [`ConnectOptions::fresh_evidence`], fresh evidence over a random nonce of this client's
//!    own, bound to the same key (`GET /adyton/v1/attestation?nonce=HEX`).
//!
//! When the evidence of a TEE the policy names cannot be verified for want of collateral (no
//! collateral source configured, or none that has this platform's), the client fetches the
//! server's own (`GET /adyton/v1/collateral`, [`fetch_served_collateral`]) over TLS that does not
//! verify the server, and makes the attested handshake again with it. Nothing is sent on that
//! connection but the request, and nothing from it is trusted: the bundle is used only as
//! collateral, whose signatures must chain to Intel's or AMD's root like any other's.
//! [`ConnectOptions::server_collateral`] turns this off.
//!
//! Every later request goes over HTTPS that accepts exactly the certificate verified in step 1
//! ([`PinnedServerVerifier`](crate::attested_tls::PinnedServerVerifier)), so no byte reaches a key that was not verified; a server that
//! restarted with a new key is refused until the caller connects again.
//!
//! The HTTP client is `reqwest`'s blocking client on a rustls configuration built here (reqwest's
//! `rustls-no-provider` feature, so aws-lc-rs stays the only crypto provider). `ureq`, which the
//! other clients of this crate use, takes no caller-built rustls configuration except through its
//! semver-exempt connector API; reqwest accepts one through a documented builder method.
//!
//! ```no_run
//! # use adyton_attest::Policy;
//! # use adyton_client::server::{ConnectOptions, InferTensor, ServerClient};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_file(std::path::Path::new("policy.toml"))?;
//! let server = ServerClient::connect("https://10.0.0.5:8443", policy, ConnectOptions::default())?;
//! println!("{}", server.verified().claims.primary_measurement());
//! let a = InferTensor::new("a", "FP32", vec![1, 3], [1f32, 2., 3.].iter().flat_map(|x| x.to_le_bytes()).collect());
//! let b = InferTensor::new("b", "FP32", vec![1, 3], a.data.to_vec());
//! let outputs = server.infer("add", &[a, b])?;
//! # drop(outputs); Ok(()) }
//! ```

use std::fmt;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adyton_attest::collateral::MAX_COLLATERAL_LEN;
use adyton_attest::gpu::GpuVerifier;
use adyton_attest::provider::CollateralProvider;
use adyton_attest::{Claims, Collateral, Evidence, Policy};
use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::attested_tls::{
    self, client_config, pinned_client_config, AttestationFailure, AttestedServerVerifier,
    ServedCollateral, VerifiedServer,
};
use crate::error::{api_error, ClientError};
use crate::kbs::Token;
pub use crate::tensor::{element_size, InferTensor};

type Result<T> = std::result::Result<T, ClientError>;

/// Largest metadata, evidence or upload answer read.
pub const MAX_METADATA_LEN: u64 = 8 << 20;
/// Largest infer answer read (the outputs are held in memory, zeroized afterwards).
pub const MAX_INFER_RESPONSE_LEN: u64 = 1 << 30;
/// The nonce of fresh evidence, in bytes (the server takes 16 to 64).
const NONCE_LEN: usize = 32;
/// Where the server serves the collateral of its own evidence.
pub const COLLATERAL_PATH: &str = "/adyton/v1/collateral";
/// The header of the binary tensor extension: the length of the JSON that starts the body.
const INFERENCE_HEADER: &str = "Inference-Header-Content-Length";

/// How [`ServerClient::connect`] verifies and talks to the server.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Where the vendor collateral for the evidence's checks (DCAP, SNP) comes from: a bundle, a
    /// PCCS, AMD's KDS ([`CollateralProvider`]); none is needed for SIM. Shared between
    /// connections, so is its cache.
    pub collateral: Arc<CollateralProvider>,
    /// The server's bearer token, for [`ServerClient::upload_model`] and
    /// [`ServerClient::delete_model`].
    pub token: Option<Token>,
    /// Also ask for evidence over a nonce of this client's own, proving the server attests now
    /// and not only when it made its certificate.
    pub fresh_evidence: bool,
    /// When `collateral` has nothing for the server's evidence, fetch the collateral the server
    /// serves for it (`GET /adyton/v1/collateral`) and verify with that (see the module
    /// documentation). On by default; off for callers who want only their own sources.
    pub server_collateral: bool,
    /// How the GPUs attached to the server's evidence are verified, under a policy with
    /// `[nvidia_gpu]`: the RIMs (a RIM directory) besides those the evidence carries. `None`:
    /// NVIDIA's pinned roots and only the carried RIMs.
    pub gpus: Option<Arc<GpuVerifier>>,
    /// The limit of connecting and of each request.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            collateral: Arc::new(CollateralProvider::none()),
            token: None,
            fresh_evidence: true,
            server_collateral: true,
            gpus: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A model's declared inputs and outputs (`GET /v2/models/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// One declared tensor; -1 in `shape` is a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// A client of one attested inference server. See the module documentation for what
/// [`ServerClient::connect`] proves before anything is sent.
pub struct ServerClient {
    base_url: String,
    http: Client,
    verified: VerifiedServer,
    fresh_claims: Option<Claims>,
    token: Option<Token>,
    /// Model metadata by name, so that an inference checks its inputs without a request of its
    /// own; forgotten on upload, delete, and any refused inference (the server checks again).
    metadata: std::sync::Mutex<std::collections::HashMap<String, ModelMetadata>>,
}

impl fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerClient")
            .field("base_url", &self.base_url)
            .field(
                "certificate_sha256",
                &hex::encode(self.verified.certificate_sha256),
            )
            .field("fresh_evidence", &self.fresh_claims.is_some())
            .finish_non_exhaustive()
    }
}

/// Where to connect: the base URL as given, and the host and port it names.
struct Target {
    base_url: String,
    host: String,
    port: u16,
}

impl ServerClient {
    /// Connects to the server at `url` (`https://host:port`), verifies its attestation against
    /// `policy` and, with `options.fresh_evidence`, its fresh evidence. Fails with
    /// [`ClientError::Attestation`] or [`ClientError::Policy`] before any request is sent.
    pub fn connect(url: &str, policy: Policy, options: ConnectOptions) -> Result<ServerClient> {
        let target = parse_target(url)?;
        let (verifier, served) = attested_handshake(&target, &policy, &options)?;
        let verified = verifier
            .verified()
            .ok_or_else(|| ClientError::Attestation {
                reason: "the handshake ended without a verified certificate".into(),
            })?;
        let tls = pinned_client_config(verified.clone()).map_err(|e| ClientError::Connection {
            request: "TLS configuration".into(),
            source: Box::new(e),
        })?;
        let http = Client::builder()
            .tls_backend_preconfigured(Arc::unwrap_or_clone(tls))
            // A proxy or a redirect could only lead to a key the pin refuses; neither is taken,
            // so that errors name the server that was verified.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout)
            .timeout(options.timeout)
            .user_agent(concat!("adyton-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Connection {
                request: "HTTP client set-up".into(),
                source: Box::new(e),
            })?;
        let mut client = ServerClient {
            base_url: target.base_url,
            http,
            verified,
            fresh_claims: None,
            token: options.token.clone(),
            metadata: std::sync::Mutex::default(),
        };
        if options.fresh_evidence {
            client.fresh_claims =
                Some(client.check_fresh_evidence(&policy, &options, served.as_ref())?);
        }
        Ok(client)
    }

    /// What the handshake proved: the claims, the certificate and its SHA-256, the key.
    pub fn verified(&self) -> &VerifiedServer {
        &self.verified
    }

    /// The claims of the fresh evidence, when [`ConnectOptions::fresh_evidence`] asked for it.
    pub fn fresh_claims(&self) -> Option<&Claims> {
        self.fresh_claims.as_ref()
    }

    /// The base URL, without trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The verified certificate as PEM, for clients that pin it (curl `--cacert`, tritonclient).
    pub fn certificate_pem(&self) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(&self.verified.certificate_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The server's metadata (`GET /v2`).
    pub fn server_metadata(&self) -> Result<Value> {
        let path = "/v2".to_owned();
        let body = self.call(&format!("GET {path}"), self.http.get(self.url(&path)), None)?;
        decode_json(format!("GET {path}"), &body.bytes)
    }

    /// A model's declared inputs and outputs (`GET /v2/models/{name}`).
    pub fn model_metadata(&self, model: &str) -> Result<ModelMetadata> {
        let path = format!("/v2/models/{}", model_name(model)?);
        let request = format!("GET {path}");
        let body = self.call(&request, self.http.get(self.url(&path)), None)?;
        decode_json(request, &body.bytes)
    }

    /// Runs `model` on `inputs` with the binary tensor extension and returns every output.
    ///
    /// The inputs are first checked against the model's metadata (names, data types, ranks,
    /// fixed dimensions, data lengths): a mismatch is [`ClientError::InvalidInput`] naming the
    /// input, and nothing is sent.
    pub fn infer(&self, model: &str, inputs: &[InferTensor]) -> Result<Vec<InferTensor>> {
        let metadata = self.cached_metadata(model)?;
        check_inputs(&metadata, inputs)?;
        let header = json!({
            "inputs": inputs.iter().map(|t| json!({
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "parameters": {"binary_data_size": t.data.len()},
            })).collect::<Vec<_>>(),
            "parameters": {"binary_data_output": true},
        });
        let header = serde_json::to_vec(&header).map_err(|e| ClientError::InvalidInput {
            what: "inputs",
            reason: e.to_string(),
        })?;
        let total = header.len() + inputs.iter().map(|t| t.data.len()).sum::<usize>();
        let mut body = Zeroizing::new(Vec::with_capacity(total));
        body.extend_from_slice(&header);
        for input in inputs {
            body.extend_from_slice(&input.data);
        }
        let path = format!("/v2/models/{}/infer", model_name(model)?);
        let request = format!("POST {path}");
        let builder = self
            .http
            .post(self.url(&path))
            .header(INFERENCE_HEADER, header.len())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(zeroized_body(body));
        let answer = self
            .call(&request, builder, Some(MAX_INFER_RESPONSE_LEN))
            .inspect_err(|_| self.forget_metadata(model))?;
        parse_infer_answer(&request, &answer)
    }

    fn metadata_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ModelMetadata>> {
        self.metadata.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_metadata(&self, model: &str) -> Result<ModelMetadata> {
        if let Some(found) = self.metadata_cache().get(model) {
            return Ok(found.clone());
        }
        let fetched = self.model_metadata(model)?;
        self.metadata_cache()
            .insert(model.to_owned(), fetched.clone());
        Ok(fetched)
    }

    fn forget_metadata(&self, model: &str) {
        self.metadata_cache().remove(model);
    }

    /// Uploads a plaintext ONNX model under `name` (`POST /adyton/v1/models/{name}`); the answer
    /// names its version and signature. Needs [`ConnectOptions::token`].
    pub fn upload_model(&self, name: &str, onnx: &[u8]) -> Result<Value> {
        self.forget_metadata(name);
        let token = self.token("upload")?;
        let path = format!("/adyton/v1/models/{}", model_name(name)?);
        let request = format!("POST {path}");
        let builder = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::AUTHORIZATION, bearer(token)?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(zeroized_body(Zeroizing::new(onnx.to_vec())));
        let body = self.call(&request, builder, None);
        self.forget_metadata(name);
        let body = body?;
        decode_json(request, &body.bytes)
    }

    /// Removes every version of a model (`DELETE /adyton/v1/models/{name}`). Needs
    /// [`ConnectOptions::token`].
    pub fn delete_model(&self, name: &str) -> Result<()> {
        self.forget_metadata(name);
        let token = self.token("delete")?;
        let path = format!("/adyton/v1/models/{}", model_name(name)?);
        let request = format!("DELETE {path}");
        let builder = self
            .http
            .delete(self.url(&path))
            .header(reqwest::header::AUTHORIZATION, bearer(token)?);
        self.call(&request, builder, None)?;
        Ok(())
    }

    fn token(&self, action: &str) -> Result<&Token> {
        self.token
            .as_ref()
            .ok_or_else(|| ClientError::InvalidInput {
                what: "token",
                reason: format!(
                    "a model {action} needs the server's token (ConnectOptions::token)"
                ),
            })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Asks for evidence over a fresh random nonce and checks it against the handshake's key.
    fn check_fresh_evidence(
        &self,
        policy: &Policy,
        options: &ConnectOptions,
        served: Option<&ServedCollateral>,
    ) -> Result<Claims> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ClientError::Attestation {
            reason: "no random nonce could be drawn".into(),
        })?;
        let path = format!("/adyton/v1/attestation?nonce={}", hex::encode(nonce));
        let request = format!("GET {path}");
        let answer = self.call(&request, self.http.get(self.url(&path)), None)?;
        let evidence =
            Evidence::from_json(&answer.bytes).map_err(|e| ClientError::Attestation {
                reason: format!("the fresh evidence is not Adyton evidence: {e}"),
            })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (claims, _gpus) = attested_tls::check_fresh_evidence_with_gpus(
            &evidence,
            &self.verified.spki_der,
            &nonce,
            policy,
            &options.collateral,
            served,
            options.gpus.as_deref(),
            now,
        )?;
        Ok(claims)
    }

    /// Sends one request and reads its answer (at most `limit` bytes, [`MAX_METADATA_LEN`] by
    /// default); a non-2xx status is [`ClientError::Api`].
    fn call(&self, request: &str, builder: RequestBuilder, limit: Option<u64>) -> Result<Answer> {
        let limit = limit.unwrap_or(MAX_METADATA_LEN);
        let response = builder
            .send()
            .map_err(|e| transport_error(request, Box::new(e)))?;
        let status = response.status().as_u16();
        let header_len = response
            .headers()
            .get(INFERENCE_HEADER)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| ClientError::InvalidResponse {
                        request: request.to_owned(),
                        reason: format!("{INFERENCE_HEADER} is not a length"),
                    })
            })
            .transpose()?;
        let too_large = || ClientError::ResponseTooLarge {
            request: request.to_owned(),
            limit,
        };
        let declared = response.content_length().unwrap_or(0);
        if declared > limit {
            return Err(too_large());
        }
        // Reserved up front, so that the answer is never copied by a growing buffer that would
        // leave unzeroized copies behind.
        let mut bytes = Zeroizing::new(Vec::with_capacity(
            usize::try_from(declared).unwrap_or(0) + 1,
        ));
        response
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| transport_error(request, Box::new(e)))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        if !(200..300).contains(&status) {
            return Err(api_error(request.to_owned(), status, &bytes));
        }
        Ok(Answer { header_len, bytes })
    }
}

/// A 2xx answer: the body and, for binary infer answers, the length of its JSON part.
struct Answer {
    header_len: Option<usize>,
    bytes: Zeroizing<Vec<u8>>,
}

fn parse_target(url: &str) -> Result<Target> {
    let bad = |reason| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| bad("it does not parse"))?;
    if parsed.scheme() != "https" {
        return Err(bad(
            "the scheme must be https: the server speaks only attested TLS",
        ));
    }
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| bad("it names no host"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("it must not have a query"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("it must not hold credentials"));
    }
    Ok(Target {
        base_url: trimmed.to_owned(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: parsed.port_or_known_default().unwrap_or(443),
    })
}

/// The attested handshake with the caller's collateral, and when that lacks the collateral of the
/// server's evidence, again with the collateral the server serves; the verifier that succeeded,
/// and the served collateral if it was used.
fn attested_handshake(
    target: &Target,
    policy: &Policy,
    options: &ConnectOptions,
) -> Result<(Arc<AttestedServerVerifier>, Option<ServedCollateral>)> {
    let verifier = Arc::new(with_gpus(
        AttestedServerVerifier::with_provider(policy.clone(), options.collateral.clone()),
        options,
    ));
    let refused = match handshake(target, &verifier, options.timeout) {
        Ok(()) => return Ok((verifier, None)),
        Err(refused) => refused,
    };
    let Some(tee) = verifier.wants_collateral() else {
        return Err(refused);
    };
    if !options.server_collateral {
        return Err(with_hint(
            refused,
            &format!(
                "the server's own collateral was not asked for; configure a collateral source \
                 for {tee} evidence (a bundle file, a PCCS URL for SGX and TDX, AMD's KDS for SNP)"
            ),
        ));
    }
    let served = match fetch_served_collateral(&target.base_url, options.timeout) {
        Ok(Some(served)) => served,
        Ok(None) => {
            return Err(with_hint(
                refused,
                &format!(
                    "the server serves no collateral for its {tee} evidence \
                     (GET {COLLATERAL_PATH}: 404); configure a collateral source of your own \
                     (a bundle file, a PCCS URL for SGX and TDX, AMD's KDS for SNP)"
                ),
            ))
        }
        Err(e) => {
            return Err(with_hint(
                refused,
                &format!("the server's own collateral could not be had either: {e}"),
            ))
        }
    };
    let verifier = Arc::new(with_gpus(
        AttestedServerVerifier::with_provider(policy.clone(), options.collateral.clone())
            .with_served_collateral(served.clone()),
        options,
    ));
    handshake(target, &verifier, options.timeout)?;
    Ok((verifier, Some(served)))
}

/// `verifier` with the GPU verifier of `options`, if it names one.
fn with_gpus(verifier: AttestedServerVerifier, options: &ConnectOptions) -> AttestedServerVerifier {
    match &options.gpus {
        Some(gpus) => verifier.with_gpu_verifier(Arc::clone(gpus)),
        None => verifier,
    }
}

/// `error` with `hint` after its reason, for an attestation failure; other errors as they are.
fn with_hint(error: ClientError, hint: &str) -> ClientError {
    match error {
        ClientError::Attestation { reason } => ClientError::Attestation {
            reason: format!("{reason} ({hint})"),
        },
        other => other,
    }
}

/// Fetches the collateral the server at `base_url` serves for its own evidence
/// (`GET /adyton/v1/collateral`): `Ok(None)` when it serves none (404).
///
/// The connection does not verify the server: the request carries nothing secret, and the
/// answer is only ever used as collateral, which a verifier checks up to Intel's or AMD's root
/// whatever its source. It is bounded by `timeout` and [`MAX_COLLATERAL_LEN`], follows no
/// redirect and takes no proxy.
pub fn fetch_served_collateral(
    base_url: &str,
    timeout: Duration,
) -> Result<Option<ServedCollateral>> {
    let base_url = base_url.trim().trim_end_matches('/');
    let url = format!("{base_url}{COLLATERAL_PATH}");
    let request = format!("GET {url}");
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        // Nothing from this connection is trusted; see above.
        .disable_verification(true)
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("adyton-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let answer = agent
        .get(&url)
        .call()
        .map_err(|source| ClientError::Transport {
            request: request.clone(),
            source,
        })?;
    if answer.status().as_u16() == 404 {
        return Ok(None);
    }
    let bytes = crate::http::answer_body(request.clone(), answer, MAX_COLLATERAL_LEN as u64)?;
    let collateral =
        Collateral::from_bundle_json(&bytes).map_err(|e| ClientError::InvalidResponse {
            request,
            reason: format!("not a collateral bundle: {e}"),
        })?;
    Ok(Some(ServedCollateral {
        collateral,
        source_url: url,
    }))
}

/// The attested handshake, on a connection of its own that carries no request.
fn handshake(
    target: &Target,
    verifier: &Arc<AttestedServerVerifier>,
    timeout: Duration,
) -> Result<()> {
    let request = format!("TLS handshake with {}:{}", target.host, target.port);
    let config = client_config(Arc::clone(verifier)).map_err(|e| ClientError::Connection {
        request: request.clone(),
        source: Box::new(e),
    })?;
    // The verifier ignores names; an IP address or a DNS name is passed as the URL has it, and
    // anything rustls cannot take as a name becomes the certificate's own `adyton.invalid`.
    let name = ServerName::try_from(target.host.clone())
        .or_else(|_| ServerName::try_from("adyton.invalid"))
        .map_err(|e| ClientError::Connection {
            request: request.clone(),
            source: Box::new(e),
        })?;
    let mut connection =
        rustls::ClientConnection::new(config, name).map_err(|e| ClientError::Connection {
            request: request.clone(),
            source: Box::new(e),
        })?;
    let io_error = |e: std::io::Error| transport_error(&request, Box::new(e));
    let addresses = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(io_error)?;
    let mut last_error = None;
    let mut socket = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                socket = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut socket = socket.ok_or_else(|| {
        io_error(last_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
        }))
    })?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(io_error)?;
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).map_err(io_error)?;
    }
    connection.send_close_notify();
    // The handshake succeeded; how the idle connection closes does not matter.
    let _ = connection.complete_io(&mut socket);
    Ok(())
}

/// A transport error, or the attestation failure inside it (a TLS refusal).
fn transport_error(request: &str, error: Box<dyn std::error::Error + Send + Sync>) -> ClientError {
    if let Some(failure) = AttestationFailure::find(error.as_ref()) {
        return ClientError::from(failure);
    }
    ClientError::Connection {
        request: request.to_owned(),
        source: error,
    }
}

/// Checks a model name as the server does: 1 to 128 letters, digits, `.`, `_` or `-`, not
/// starting with `.` (it goes into a URL path).
fn model_name(name: &str) -> Result<&str> {
    if adyton_proto::id::is_model_id(name) {
        Ok(name)
    } else {
        Err(ClientError::InvalidInput {
            what: "model name",
            reason: format!(
                "`{}` is not 1 to 128 letters, digits, `.`, `_` or `-` (not starting with `.`)",
                name.escape_debug()
            ),
        })
    }
}

fn bearer(token: &Token) -> Result<reqwest::header::HeaderValue> {
    let value = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
    let mut header =
        reqwest::header::HeaderValue::from_str(&value).map_err(|_| ClientError::InvalidInput {
            what: "token",
            reason: "it holds characters a header cannot carry".into(),
        })?;
    header.set_sensitive(true);
    Ok(header)
}

fn decode_json<T: serde::de::DeserializeOwned>(request: String, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::InvalidResponse {
        request,
        reason: e.to_string(),
    })
}

/// A request body read from memory that is zeroized when the request is done.
fn zeroized_body(bytes: Zeroizing<Vec<u8>>) -> reqwest::blocking::Body {
    let len = bytes.len() as u64;
    reqwest::blocking::Body::sized(ZeroizedReader { bytes, position: 0 }, len)
}

struct ZeroizedReader {
    bytes: Zeroizing<Vec<u8>>,
    position: usize,
}

impl Read for ZeroizedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.bytes.get(self.position..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        Ok(n)
    }
}

/// Checks `inputs` against the model's declared inputs: each declared input given once, nothing
/// else, with its data type, rank and fixed dimensions, and data that fills its shape.
fn check_inputs(metadata: &ModelMetadata, inputs: &[InferTensor]) -> Result<()> {
    let refuse = |reason: String| ClientError::InvalidInput {
        what: "input",
        reason,
    };
    for (index, input) in inputs.iter().enumerate() {
        let Some(declared) = metadata.inputs.iter().find(|d| d.name == input.name) else {
            let names: Vec<&str> = metadata.inputs.iter().map(|d| d.name.as_str()).collect();
            return Err(refuse(format!(
                "`{}` is not an input of model `{}` (its inputs: {})",
                input.name,
                metadata.name,
                names.join(", ")
            )));
        };
        if inputs[..index].iter().any(|i| i.name == input.name) {
            return Err(refuse(format!("`{}` is given twice", input.name)));
        }
        if input.datatype != declared.datatype {
            return Err(refuse(format!(
                "`{}` is {}; model `{}` declares {}",
                input.name, input.datatype, metadata.name, declared.datatype
            )));
        }
        let fits = input.shape.len() == declared.shape.len()
            && input
                .shape
                .iter()
                .zip(&declared.shape)
                .all(|(given, want)| *want < 0 || u64::try_from(*want).ok() == Some(*given as u64));
        if !fits {
            return Err(refuse(format!(
                "`{}` has shape {:?}; model `{}` declares {:?} (-1: any size)",
                input.name, input.shape, metadata.name, declared.shape
            )));
        }
        input
            .check()
            .map_err(|reason| refuse(format!("`{}`: {reason}", input.name)))?;
    }
    if let Some(missing) = metadata
        .inputs
        .iter()
        .find(|d| !inputs.iter().any(|i| i.name == d.name))
    {
        return Err(refuse(format!(
            "`{}` is missing: model `{}` needs it",
            missing.name, metadata.name
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct InferAnswer {
    outputs: Vec<OutputHeader>,
}

#[derive(Deserialize)]
struct OutputHeader {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

/// The outputs of an infer answer: JSON, or JSON then the binary outputs in order.
fn parse_infer_answer(request: &str, answer: &Answer) -> Result<Vec<InferTensor>> {
    let invalid = |reason: String| ClientError::InvalidResponse {
        request: request.to_owned(),
        reason,
    };
    let json_len = answer.header_len.unwrap_or(answer.bytes.len());
    let (json_part, mut binary) = answer
        .bytes
        .split_at_checked(json_len)
        .ok_or_else(|| invalid(format!("{INFERENCE_HEADER} exceeds the body")))?;
    let parsed: InferAnswer =
        serde_json::from_slice(json_part).map_err(|e| invalid(e.to_string()))?;
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for output in parsed.outputs {
        let shape = output
            .shape
            .iter()
            .map(|dim| usize::try_from(*dim))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| invalid(format!("output `{}` has too large a shape", output.name)))?;
        let size = output.parameters.get("binary_data_size");
        let tensor = match (size, &output.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        invalid(format!("output `{}`: bad binary_data_size", output.name))
                    })?;
                let (data, rest) = binary.split_at_checked(size).ok_or_else(|| {
                    invalid(format!("output `{}` ends past the body", output.name))
                })?;
                binary = rest;
                InferTensor::new(output.name, output.datatype, shape, data.to_vec())
            }
            (None, Some(data)) => {
                InferTensor::from_json(&output.name, &output.datatype, Some(shape), data)
                    .map_err(|reason| invalid(format!("output `{}`: {reason}", output.name)))?
            }
            (None, None) => return Err(invalid(format!("output `{}` has no data", output.name))),
        };
        tensor
            .check()
            .map_err(|reason| invalid(format!("output `{}`: {reason}", tensor.name)))?;
        outputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes follow the last output",
            binary.len()
        )));
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            inputs: vec![
                TensorMetadata {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 2],
                },
                TensorMetadata {
                    name: "y".into(),
                    datatype: "INT64".into(),
                    shape: vec![3],
                },
            ],
            outputs: vec![],
        }
    }

    fn x(rows: usize) -> InferTensor {
        InferTensor::new("x", "FP32", vec![rows, 2], vec![0; rows * 8])
    }

    fn y() -> InferTensor {
        InferTensor::new("y", "INT64", vec![3], vec![0; 24])
    }

    fn refusal(inputs: &[InferTensor]) -> String {
        match check_inputs(&metadata(), inputs) {
            Err(ClientError::InvalidInput { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn inputs_are_checked_against_the_metadata() {
        check_inputs(&metadata(), &[x(5), y()]).unwrap();
        assert!(refusal(&[x(1)]).contains("`y` is missing"));
        assert!(refusal(&[x(1), y(), y()]).contains("`y` is given twice"));
        let z = InferTensor::new("z", "FP32", vec![1], vec![0; 4]);
        assert!(refusal(&[x(1), y(), z]).contains("`z` is not an input"));
        let wrong_type = InferTensor::new("y", "INT32", vec![3], vec![0; 12]);
        assert!(refusal(&[x(1), wrong_type]).contains("`y` is INT32"));
        let wrong_dim = InferTensor::new("y", "INT64", vec![4], vec![0; 32]);
        assert!(refusal(&[x(1), wrong_dim]).contains("`y` has shape [4]"));
        let wrong_rank = InferTensor::new("x", "FP32", vec![2], vec![0; 8]);
        assert!(refusal(&[wrong_rank, y()]).contains("`x` has shape [2]"));
        let short = InferTensor::new("x", "FP32", vec![1, 2], vec![0; 7]);
        assert!(refusal(&[short, y()]).contains("`x`: shape"));
    }

    #[test]
    fn binary_answers_are_split_in_order() {
        let json = br#"{"model_name":"m","outputs":[{"name":"a","datatype":"INT8","shape":[2],"parameters":{"binary_data_size":2}},{"name":"b","datatype":"FP32","shape":[1],"data":[1.5]}]}"#;
        let mut bytes = json.to_vec();
        bytes.extend([1u8, 255]);
        let answer = Answer {
            header_len: Some(json.len()),
            bytes: Zeroizing::new(bytes.clone()),
        };
        let outputs = parse_infer_answer("POST x", &answer).unwrap();
        assert_eq!(outputs[0].data.as_slice(), &[1, 255]);
        assert_eq!(outputs[1].data.as_slice(), &1.5f32.to_le_bytes());
        bytes.push(0);
        let trailing = Answer {
            header_len: Some(json.len()),
            bytes: Zeroizing::new(bytes),
        };
        assert!(parse_infer_answer("POST x", &trailing).is_err());
        let past = Answer {
            header_len: Some(json.len() + 10),
            bytes: Zeroizing::new(json.to_vec()),
        };
        assert!(parse_infer_answer("POST x", &past).is_err());
    }

    #[test]
    fn urls_must_be_https_with_a_host() {
        assert!(parse_target("http://127.0.0.1:8443").is_err());
        assert!(parse_target("https://h:1?x=1").is_err());
        let t = parse_target("https://[::1]:8443/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.base_url, "https://[::1]:8443");
        assert!(model_name("../x").is_err());
        assert!(model_name("add").is_ok());
    }
}
