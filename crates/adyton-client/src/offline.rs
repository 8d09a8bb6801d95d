//! The files of offline provisioning (`design.md`, flow D): a device with no network writes a
//! [`ProvisionRequest`] (its evidence and a public key), the request is carried to the provider,
//! whose operator has the key broker answer it (`adyton kbs transfer --offline`), and the
//! [`ProvisionResponse`] (the model key wrapped to the device's public key) is carried back.
//!
//! Both files are JSON of at most [`MAX_PROVISION_FILE_LEN`] bytes, with a `format` field naming
//! their version; unknown fields are refused, so that a file meant for a later version is never
//! half understood. Neither holds a secret: the request holds a public key and evidence, the
//! response a key that only the device's private key unwraps.

use std::fmt;

use adyton_attest::{Evidence, TeeKind};
use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::kbs::TransferAnswer;

type Result<T> = std::result::Result<T, ClientError>;

/// The `format` of a provisioning request.
pub const REQUEST_FORMAT: &str = "adyton-provision-request/1";
/// The `format` of a provisioning response.
pub const RESPONSE_FORMAT: &str = "adyton-provision-response/1";
/// The largest provisioning file read: evidence with its certificate chain is a few KiB, an SNP
/// report with a VCEK chain under 16 KiB.
pub const MAX_PROVISION_FILE_LEN: usize = 1 << 20;

/// Longest id (`request_id`, `model`, `key_id`), in characters.
const MAX_ID_LEN: usize = 128;
/// The sealing policies a request may name (`adyton_attest::seal::SealingPolicy`'s names).
const SEALING_POLICIES: [&str; 2] = ["exact-build", "signer"];
/// Why TDX is refused, in the key broker's words.
const TDX_REFUSAL: &str = "TDX has no sealing key: offline provisioning needs SGX or SEV-SNP";

/// A device's request for a model key: its evidence, over SHA-512 of its public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// [`REQUEST_FORMAT`].
    pub format: String,
    /// A UUID v4 made by the device, to match the response to the request.
    pub request_id: String,
    /// The id of the model the device will serve.
    pub model: String,
    /// The key broker's id of the model's key.
    pub key_id: String,
    /// The TEE, as `TeeKind` displays it: `SGX`, `SNP` or `SIM` (TDX cannot seal, so is refused).
    pub tee: String,
    /// How the device will seal the key, `exact-build` or `signer`; for the provider's information.
    pub sealing_policy: String,
    /// Standard base64 of the device's RSA public key, DER SubjectPublicKeyInfo.
    pub public_key: String,
    /// Standard base64 of Adyton evidence JSON whose report data is SHA-512 of the DER public key.
    pub evidence: String,
    /// When the device wrote the request, in unix seconds.
    pub created_at: u64,
}

impl ProvisionRequest {
    /// Reads a request, refusing files over [`MAX_PROVISION_FILE_LEN`], unknown fields, another
    /// format, ids that are not 1 to 128 characters of `[A-Za-z0-9._:-]`, an unknown TEE or TDX, an
    /// unknown sealing policy, and public keys or evidence that do not decode.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "provisioning request";
        let request: Self = parse(WHAT, bytes)?;
        check_format(WHAT, &request.format, REQUEST_FORMAT)?;
        check_id(WHAT, "request_id", &request.request_id)?;
        check_id(WHAT, "model", &request.model)?;
        check_id(WHAT, "key_id", &request.key_id)?;
        let tee = request.tee_kind()?;
        if !SEALING_POLICIES.contains(&request.sealing_policy.as_str()) {
            return Err(invalid(
                WHAT,
                format!(
                    "sealing_policy `{}` is neither `exact-build` nor `signer`",
                    shorten(&request.sealing_policy)
                ),
            ));
        }
        if request.public_key_der()?.is_empty() {
            return Err(invalid(WHAT, "public_key is empty"));
        }
        let evidence = Evidence::from_json(&request.evidence_json()?)
            .map_err(|e| invalid(WHAT, format!("evidence: {e}")))?;
        if evidence.tee != tee {
            return Err(invalid(
                WHAT,
                format!(
                    "the evidence comes from {}, but the request names {tee}",
                    evidence.tee
                ),
            ));
        }
        Ok(request)
    }

    /// The request as a file: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        pretty(self)
    }

    /// The TEE named by `tee`: `SGX`, `SNP` or `SIM`, spelt as `TeeKind` displays it.
    pub fn tee_kind(&self) -> Result<TeeKind> {
        let tee: TeeKind = self.tee.parse().map_err(|_| {
            invalid(
                "provisioning request",
                format!("tee `{}` is not SGX, SNP or SIM", shorten(&self.tee)),
            )
        })?;
        if tee.as_str() != self.tee {
            return Err(invalid(
                "provisioning request",
                format!("tee `{}` must be spelt `{tee}`", shorten(&self.tee)),
            ));
        }
        if tee == TeeKind::Tdx {
            return Err(invalid("provisioning request", TDX_REFUSAL));
        }
        Ok(tee)
    }

    /// The device's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        decode_base64("provisioning request", "public_key", &self.public_key)
    }

    /// The device's evidence, Adyton evidence JSON.
    pub fn evidence_json(&self) -> Result<Vec<u8>> {
        decode_base64("provisioning request", "evidence", &self.evidence)
    }

    /// SHA-256 of the DER public key, lowercase hex: what the response names the key by.
    pub fn public_key_sha256(&self) -> Result<String> {
        Ok(hex::encode(digest(&SHA256, &self.public_key_der()?)))
    }
}

/// The key broker's answer to a [`ProvisionRequest`]: the model key wrapped to the device's public
/// key, as the online transfer answers it. `Debug` leaves the wrapped bytes out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionResponse {
    /// [`RESPONSE_FORMAT`].
    pub format: String,
    /// The request's `request_id`.
    pub request_id: String,
    /// The request's `model`.
    pub model: String,
    /// The request's `key_id`.
    pub key_id: String,
    /// SHA-256 of the request's DER public key, lowercase hex: the device checks it is its own.
    pub public_key_sha256: String,
    /// Standard base64 of the model key sealed under the wrapping key (envelope v1).
    pub wrapped_key: String,
    /// Standard base64 of the wrapping key, RSA-OAEP-SHA256 encrypted to the device's public key.
    pub wrapped_swk: String,
    /// When the key broker answered, in unix seconds.
    pub issued_at: u64,
}

impl fmt::Debug for ProvisionResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionResponse")
            .field("format", &self.format)
            .field("request_id", &self.request_id)
            .field("model", &self.model)
            .field("key_id", &self.key_id)
            .field("public_key_sha256", &self.public_key_sha256)
            .field("wrapped_key", &format_args!("<redacted>"))
            .field("wrapped_swk", &format_args!("<redacted>"))
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

impl ProvisionResponse {
    /// Reads a response, refusing files over [`MAX_PROVISION_FILE_LEN`], unknown fields, another
    /// format, bad ids, a `public_key_sha256` that is not 64 lowercase hex digits, and wrapped
    /// keys that are empty or not base64.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "provisioning response";
        let response: Self = parse(WHAT, bytes)?;
        check_format(WHAT, &response.format, RESPONSE_FORMAT)?;
        check_id(WHAT, "request_id", &response.request_id)?;
        check_id(WHAT, "model", &response.model)?;
        check_id(WHAT, "key_id", &response.key_id)?;
        let hash = &response.public_key_sha256;
        if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid(
                WHAT,
                "public_key_sha256 is not 64 lowercase hex digits",
            ));
        }
        response.transfer_answer()?;
        Ok(response)
    }

    /// The response as a file: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        pretty(self)
    }

    /// The response to `request`, carrying the key broker's `answer`, issued at `now`.
    pub fn for_request(
        request: &ProvisionRequest,
        answer: &TransferAnswer,
        now: u64,
    ) -> Result<Self> {
        Ok(Self {
            format: RESPONSE_FORMAT.to_owned(),
            request_id: request.request_id.clone(),
            model: request.model.clone(),
            key_id: request.key_id.clone(),
            public_key_sha256: request.public_key_sha256()?,
            wrapped_key: BASE64.encode(&answer.wrapped_key),
            wrapped_swk: BASE64.encode(&answer.wrapped_swk),
            issued_at: now,
        })
    }

    /// The wrapped key, decoded, for the device to unwrap with its private key.
    pub fn transfer_answer(&self) -> Result<TransferAnswer> {
        const WHAT: &str = "provisioning response";
        let answer = TransferAnswer {
            wrapped_key: decode_base64(WHAT, "wrapped_key", &self.wrapped_key)?,
            wrapped_swk: decode_base64(WHAT, "wrapped_swk", &self.wrapped_swk)?,
        };
        if answer.wrapped_key.is_empty() || answer.wrapped_swk.is_empty() {
            return Err(invalid(
                WHAT,
                "wrapped_key and wrapped_swk must not be empty",
            ));
        }
        Ok(answer)
    }
}

/// Checks an id that names a request, a model or a key: 1 to 128 characters of
/// `[A-Za-z0-9._:-]`, and not `.` or `..` (a key id becomes a URL path segment).
pub(crate) fn check_id(what: &'static str, field: &str, id: &str) -> Result<()> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!(
                "{field} `{}` is not 1 to {MAX_ID_LEN} characters of letters, digits, `.`, `_`, `:` \
                 and `-`",
                shorten(id)
            ),
        ))
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_PROVISION_FILE_LEN {
        return Err(invalid(
            what,
            format!(
                "{} bytes; at most {MAX_PROVISION_FILE_LEN} are accepted",
                bytes.len()
            ),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(what, format!("not valid JSON: {e}")))
}

fn check_format(what: &'static str, found: &str, expected: &str) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(invalid(
            what,
            format!("format `{}`, expected `{expected}`", shorten(found)),
        ))
    }
}

fn decode_base64(what: &'static str, field: &str, text: &str) -> Result<Vec<u8>> {
    BASE64
        .decode(text)
        .map_err(|e| invalid(what, format!("{field} is not base64: {e}")))
}

fn pretty(value: &impl Serialize) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn invalid(what: &'static str, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

/// At most 64 characters of untrusted text, with control characters escaped, for messages.
fn shorten(text: &str) -> String {
    text.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn evidence(tee: TeeKind) -> String {
        let evidence = Evidence {
            tee,
            quote: vec![1, 2, 3],
            certificates: None,
        };
        BASE64.encode(evidence.to_json())
    }

    fn request() -> ProvisionRequest {
        ProvisionRequest {
            format: REQUEST_FORMAT.into(),
            request_id: "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b".into(),
            model: "resnet-50".into(),
            key_id: "0b0e11aa-2222-4333-8444-555566667777".into(),
            tee: "SIM".into(),
            sealing_policy: "exact-build".into(),
            public_key: BASE64.encode(b"not really DER, but base64"),
            evidence: evidence(TeeKind::Sim),
            created_at: 1_800_000_000,
        }
    }

    fn answer() -> TransferAnswer {
        TransferAnswer {
            wrapped_key: vec![7; 60],
            wrapped_swk: vec![9; 384],
        }
    }

    fn as_json(request: &ProvisionRequest) -> serde_json::Value {
        serde_json::from_slice(&request.to_json()).unwrap()
    }

    fn refused(json: &serde_json::Value) -> String {
        let err = ProvisionRequest::from_json(&serde_json::to_vec(json).unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::InvalidInput {
                    what: "provisioning request",
                    ..
                }
            ),
            "{err:?}"
        );
        err.to_string()
    }

    #[test]
    fn a_request_round_trips() {
        let request = request();
        let bytes = request.to_json();
        assert!(bytes.ends_with(b"}\n"));
        assert!(bytes.contains(&b'\n'));
        assert_eq!(ProvisionRequest::from_json(&bytes).unwrap(), request);
        assert_eq!(
            request.public_key_der().unwrap(),
            b"not really DER, but base64"
        );
        assert_eq!(request.tee_kind().unwrap(), TeeKind::Sim);
        // SHA-256 of the decoded key, not of its base64.
        assert_eq!(
            request.public_key_sha256().unwrap(),
            hex::encode(digest(&SHA256, b"not really DER, but base64"))
        );
    }

    #[test]
    fn a_response_round_trips_and_carries_the_answer() {
        let request = request();
        let response = ProvisionResponse::for_request(&request, &answer(), 1_800_000_100).unwrap();
        assert_eq!(response.format, RESPONSE_FORMAT);
        assert_eq!(response.request_id, request.request_id);
        assert_eq!(response.model, request.model);
        assert_eq!(response.key_id, request.key_id);
        assert_eq!(
            response.public_key_sha256,
            request.public_key_sha256().unwrap()
        );
        assert_eq!(response.issued_at, 1_800_000_100);
        let bytes = response.to_json();
        assert!(bytes.ends_with(b"}\n"));
        let back = ProvisionResponse::from_json(&bytes).unwrap();
        assert_eq!(back, response);
        assert_eq!(back.transfer_answer().unwrap(), answer());
    }

    #[test]
    fn the_response_debug_leaves_the_wrapped_key_out() {
        let response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
        let text = format!("{response:?}");
        assert!(text.contains("resnet-50"), "{text}");
        assert!(!text.contains(&response.wrapped_key), "{text}");
        assert!(!text.contains(&response.wrapped_swk), "{text}");
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let mut json = as_json(&request());
        json["extra"] = "x".into();
        assert!(refused(&json).contains("unknown field `extra`"));
        let mut json = as_json(&request());
        json.as_object_mut().unwrap().remove("evidence");
        assert!(refused(&json).contains("missing field `evidence`"));
        for bad in [&b""[..], b"[]", b"{", b"null"] {
            assert!(ProvisionRequest::from_json(bad).is_err());
            assert!(ProvisionResponse::from_json(bad).is_err());
        }
    }

    #[test]
    fn another_format_is_refused() {
        for format in ["adyton-provision-request/2", "", RESPONSE_FORMAT] {
            let mut json = as_json(&request());
            json["format"] = format.into();
            assert!(refused(&json).contains("format"), "{format}");
        }
        let mut response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
        response.format = REQUEST_FORMAT.into();
        assert!(ProvisionResponse::from_json(&response.to_json()).is_err());
    }

    #[test]
    fn bad_base64_is_refused() {
        for field in ["public_key", "evidence"] {
            let mut json = as_json(&request());
            json[field] = "not base64!".into();
            let err = refused(&json);
            assert!(err.contains(&format!("{field} is not base64")), "{err}");
        }
        let mut json = as_json(&request());
        json["public_key"] = "".into();
        assert!(refused(&json).contains("empty"));
        for field in ["wrapped_key", "wrapped_swk"] {
            let response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
            let mut json = serde_json::to_value(&response).unwrap();
            json[field] = "%%%".into();
            let err =
                ProvisionResponse::from_json(&serde_json::to_vec(&json).unwrap()).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn evidence_that_is_not_evidence_or_of_another_tee_is_refused() {
        let mut json = as_json(&request());
        json["evidence"] = BASE64.encode(b"{\"format\": \"nope\"}").into();
        assert!(refused(&json).contains("evidence"));
        let mut json = as_json(&request());
        json["evidence"] = evidence(TeeKind::Sgx).into();
        assert!(refused(&json).contains("comes from SGX"));
    }

    #[test]
    fn oversize_files_are_refused_before_parsing() {
        let mut big = request().to_json();
        big.resize(MAX_PROVISION_FILE_LEN + 1, b' ');
        let err = ProvisionRequest::from_json(&big).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let err = ProvisionResponse::from_json(&big).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        // At the limit, trailing whitespace is still JSON.
        let mut at_limit = request().to_json();
        at_limit.resize(MAX_PROVISION_FILE_LEN, b' ');
        assert!(ProvisionRequest::from_json(&at_limit).is_ok());
    }

    #[test]
    fn bad_ids_are_refused() {
        let long = "a".repeat(129);
        for field in ["request_id", "model", "key_id"] {
            for bad in [
                "",
                ".",
                "..",
                "a/b",
                "a b",
                "a?b",
                "é",
                "a\nb",
                long.as_str(),
            ] {
                let mut json = as_json(&request());
                json[field] = bad.into();
                let err = refused(&json);
                assert!(err.contains(field), "{field} {bad:?}: {err}");
                assert!(!err.contains('\n'), "{err}");
            }
            let mut json = as_json(&request());
            json[field] = "A-z_0.9:x".into();
            ProvisionRequest::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        }
        let mut response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
        response.key_id = "../x".into();
        assert!(ProvisionResponse::from_json(&response.to_json()).is_err());
    }

    #[test]
    fn tdx_unknown_tees_and_sealing_policies_are_refused() {
        let mut json = as_json(&request());
        json["tee"] = "TDX".into();
        json["evidence"] = evidence(TeeKind::Tdx).into();
        assert!(refused(&json).contains(TDX_REFUSAL));
        for tee in ["sim", "XYZ", ""] {
            let mut json = as_json(&request());
            json["tee"] = tee.into();
            assert!(refused(&json).contains("tee"), "{tee}");
        }
        for tee in [TeeKind::Sgx, TeeKind::Snp] {
            let mut request = request();
            request.tee = tee.to_string();
            request.evidence = evidence(tee);
            ProvisionRequest::from_json(&request.to_json()).unwrap();
        }
        for policy in ["signer", "exact-build"] {
            let mut json = as_json(&request());
            json["sealing_policy"] = policy.into();
            ProvisionRequest::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
        }
        let mut json = as_json(&request());
        json["sealing_policy"] = "mrsigner".into();
        assert!(refused(&json).contains("sealing_policy"));
    }

    #[test]
    fn a_bad_public_key_hash_is_refused() {
        for hash in ["ab".repeat(31), "AB".repeat(32), "zz".repeat(32)] {
            let mut response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
            response.public_key_sha256 = hash;
            assert!(ProvisionResponse::from_json(&response.to_json()).is_err());
        }
        let mut response = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
        response.wrapped_key = String::new();
        assert!(ProvisionResponse::from_json(&response.to_json()).is_err());
    }
}
