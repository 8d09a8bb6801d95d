//! The files of offline provisioning (`design.md`, flow D): a device with no network writes a
//! [`ProvisionRequest`] (its evidence and a public key), the request is carried to the provider,
//! whose operator has the key broker answer it, and the [`ProvisionResponse`] (the model key
//! wrapped to the device's public key) is carried back.
//!
//! Both files are JSON of at most [`MAX_PROVISION_FILE_LEN`] bytes, with a `format` field naming
//! their version; unknown fields are refused, so that a file meant for a later version is never
//! half understood. Neither holds a secret: the request holds a public key and evidence, the
//! response a key that only the device's private key unwraps.
//!
//! Here the evidence is bytes: that it is evidence of the TEE the request names is checked above
//! this crate (`adyton-client`'s `offline::read_request`), and by the key broker.

use std::fmt;

use aws_lc_rs::digest::{digest, SHA256};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{shorten, ProtoError};
use crate::id::check_provision_id as check_id;
use crate::transfer::TransferAnswer;

/// The `format` of a provisioning request.
pub const REQUEST_FORMAT: &str = "adyton-provision-request/1";
/// The `format` of a provisioning response.
pub const RESPONSE_FORMAT: &str = "adyton-provision-response/1";
/// The largest provisioning file read: evidence with its certificate chain is a few KiB, an SNP
/// report with a VCEK chain under 16 KiB.
pub const MAX_PROVISION_FILE_LEN: usize = 1 << 20;
/// The sealing policies a request may name (`adyton_attest::seal::SealingPolicy`'s names).
pub const SEALING_POLICIES: [&str; 2] = ["exact-build", "signer"];
/// Why TDX is refused, in the key broker's words.
pub const TDX_REFUSAL: &str = "TDX has no sealing key: offline provisioning needs SGX or SEV-SNP";
/// The TEE names, as `adyton_attest::TeeKind` displays them.
const TEE_NAMES: [&str; 4] = ["SGX", "TDX", "SNP", "SIM"];

const REQUEST: &str = "provisioning request";
const RESPONSE: &str = "provisioning response";

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
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtoError> {
        let request: Self = parse(REQUEST, bytes)?;
        request.check_fields()?;
        request.check_tee()?;
        if request.public_key_der()?.is_empty() {
            return Err(ProtoError::invalid(REQUEST, "public_key is empty"));
        }
        request.evidence_json()?;
        Ok(request)
    }

    /// Checks what the key broker checks of a request it is handed: the format, the ids and the
    /// sealing policy. The TEE and the bytes are the broker's to judge.
    pub fn check_fields(&self) -> Result<(), ProtoError> {
        check_format(REQUEST, &self.format, REQUEST_FORMAT)?;
        check_id(REQUEST, "request_id", &self.request_id)?;
        check_id(REQUEST, "model", &self.model)?;
        check_id(REQUEST, "key_id", &self.key_id)?;
        if !SEALING_POLICIES.contains(&self.sealing_policy.as_str()) {
            return Err(ProtoError::invalid(
                REQUEST,
                format!(
                    "sealing_policy `{}` is neither `exact-build` nor `signer`",
                    shorten(&self.sealing_policy)
                ),
            ));
        }
        Ok(())
    }

    /// Checks `tee`: `SGX`, `SNP` or `SIM`, spelt exactly so; TDX is refused ([`TDX_REFUSAL`]).
    pub fn check_tee(&self) -> Result<(), ProtoError> {
        let Some(name) = TEE_NAMES
            .into_iter()
            .find(|name| name.eq_ignore_ascii_case(self.tee.trim()))
        else {
            return Err(ProtoError::invalid(
                REQUEST,
                format!("tee `{}` is not SGX, SNP or SIM", shorten(&self.tee)),
            ));
        };
        if name != self.tee {
            return Err(ProtoError::invalid(
                REQUEST,
                format!("tee `{}` must be spelt `{name}`", shorten(&self.tee)),
            ));
        }
        if name == "TDX" {
            return Err(ProtoError::invalid(REQUEST, TDX_REFUSAL));
        }
        Ok(())
    }

    /// The request as a file: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        pretty(self)
    }

    /// The device's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>, ProtoError> {
        decode_base64(REQUEST, "public_key", &self.public_key)
    }

    /// The device's evidence, Adyton evidence JSON.
    pub fn evidence_json(&self) -> Result<Vec<u8>, ProtoError> {
        decode_base64(REQUEST, "evidence", &self.evidence)
    }

    /// SHA-256 of the DER public key, lowercase hex: what the response names the key by.
    pub fn public_key_sha256(&self) -> Result<String, ProtoError> {
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
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtoError> {
        let response: Self = parse(RESPONSE, bytes)?;
        check_format(RESPONSE, &response.format, RESPONSE_FORMAT)?;
        check_id(RESPONSE, "request_id", &response.request_id)?;
        check_id(RESPONSE, "model", &response.model)?;
        check_id(RESPONSE, "key_id", &response.key_id)?;
        let hash = &response.public_key_sha256;
        if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ProtoError::invalid(
                RESPONSE,
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
    ) -> Result<Self, ProtoError> {
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
    pub fn transfer_answer(&self) -> Result<TransferAnswer, ProtoError> {
        let answer = TransferAnswer {
            wrapped_key: decode_base64(RESPONSE, "wrapped_key", &self.wrapped_key)?,
            wrapped_swk: decode_base64(RESPONSE, "wrapped_swk", &self.wrapped_swk)?,
        };
        if answer.wrapped_key.is_empty() || answer.wrapped_swk.is_empty() {
            return Err(ProtoError::invalid(
                RESPONSE,
                "wrapped_key and wrapped_swk must not be empty",
            ));
        }
        Ok(answer)
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ProtoError> {
    if bytes.len() > MAX_PROVISION_FILE_LEN {
        return Err(ProtoError::invalid(
            what,
            format!(
                "{} bytes; at most {MAX_PROVISION_FILE_LEN} are accepted",
                bytes.len()
            ),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ProtoError::invalid(what, format!("not valid JSON: {e}")))
}

fn check_format(what: &'static str, found: &str, expected: &str) -> Result<(), ProtoError> {
    if found == expected {
        Ok(())
    } else {
        Err(ProtoError::invalid(
            what,
            format!("format `{}`, expected `{expected}`", shorten(found)),
        ))
    }
}

fn decode_base64(what: &'static str, field: &str, text: &str) -> Result<Vec<u8>, ProtoError> {
    BASE64
        .decode(text)
        .map_err(|e| ProtoError::invalid(what, format!("{field} is not base64: {e}")))
}

fn pretty(value: &impl Serialize) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A request file as a SIM device writes it (evidence shortened to a stand-in: its meaning is
    /// checked above this crate).
    const REQUEST_JSON: &str = r#"{
  "format": "adyton-provision-request/1",
  "request_id": "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b",
  "model": "resnet-50",
  "key_id": "0b0e11aa-2222-4333-8444-555566667777",
  "tee": "SIM",
  "sealing_policy": "exact-build",
  "public_key": "bm90IHJlYWxseSBERVI=",
  "evidence": "e30=",
  "created_at": 1800000000
}
"#;

    fn request() -> ProvisionRequest {
        ProvisionRequest::from_json(REQUEST_JSON.as_bytes()).unwrap()
    }

    fn answer() -> TransferAnswer {
        TransferAnswer {
            wrapped_key: vec![7; 3],
            wrapped_swk: vec![9; 3],
        }
    }

    fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut json: serde_json::Value = serde_json::from_str(REQUEST_JSON).unwrap();
        edit(&mut json);
        let err = ProvisionRequest::from_json(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert_eq!(err.what(), "provisioning request");
        assert_eq!(
            err.to_string(),
            format!("invalid provisioning request: {}", err.reason())
        );
        err.reason().to_owned()
    }

    #[test]
    fn a_request_round_trips_byte_for_byte() {
        let request = request();
        assert_eq!(request.public_key_der().unwrap(), b"not really DER");
        assert_eq!(request.evidence_json().unwrap(), b"{}");
        assert_eq!(
            std::str::from_utf8(&request.to_json()).unwrap(),
            REQUEST_JSON
        );
    }

    #[test]
    fn a_response_round_trips_byte_for_byte() {
        let response =
            ProvisionResponse::for_request(&request(), &answer(), 1_800_000_100).unwrap();
        let expected = format!(
            r#"{{
  "format": "adyton-provision-response/1",
  "request_id": "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b",
  "model": "resnet-50",
  "key_id": "0b0e11aa-2222-4333-8444-555566667777",
  "public_key_sha256": "{}",
  "wrapped_key": "BwcH",
  "wrapped_swk": "CQkJ",
  "issued_at": 1800000100
}}
"#,
            hex::encode(digest(&SHA256, b"not really DER"))
        );
        assert_eq!(std::str::from_utf8(&response.to_json()).unwrap(), expected);
        let back = ProvisionResponse::from_json(expected.as_bytes()).unwrap();
        assert_eq!(back, response);
        assert_eq!(back.transfer_answer().unwrap(), answer());
        let debug = format!("{back:?}");
        assert!(
            !debug.contains("BwcH") && !debug.contains("CQkJ"),
            "{debug}"
        );
    }

    #[test]
    fn fields_that_break_the_format_are_refused() {
        assert!(refused(|j| j["extra"] = 1.into()).contains("unknown field `extra`"));
        assert!(refused(|j| j["format"] = RESPONSE_FORMAT.into()).contains("format"));
        assert!(refused(|j| j["public_key"] = "".into()).contains("empty"));
        assert!(refused(|j| j["evidence"] = "!".into()).contains("evidence is not base64"));
        assert!(refused(|j| j["sealing_policy"] = "mrsigner".into()).contains("sealing_policy"));
        for field in ["request_id", "model", "key_id"] {
            for bad in ["", ".", "..", "a/b", "a\nb"] {
                let err = refused(|j| j[field] = bad.into());
                assert!(err.contains(field) && !err.contains('\n'), "{err}");
            }
        }
    }

    #[test]
    fn only_sgx_snp_and_sim_spelt_exactly_are_accepted() {
        assert_eq!(refused(|j| j["tee"] = "TDX".into()), TDX_REFUSAL);
        assert!(refused(|j| j["tee"] = "sim".into()).contains("must be spelt `SIM`"));
        assert!(refused(|j| j["tee"] = "XYZ".into()).contains("is not SGX, SNP or SIM"));
        for tee in ["SGX", "SNP", "SIM"] {
            let mut request = request();
            request.tee = tee.into();
            ProvisionRequest::from_json(&request.to_json()).unwrap();
        }
    }

    #[test]
    fn bad_responses_are_refused() {
        let good = ProvisionResponse::for_request(&request(), &answer(), 5).unwrap();
        let mut bad = good.clone();
        bad.public_key_sha256 = "AB".repeat(32);
        assert!(ProvisionResponse::from_json(&bad.to_json()).is_err());
        let mut bad = good.clone();
        bad.wrapped_swk = String::new();
        assert!(ProvisionResponse::from_json(&bad.to_json()).is_err());
        let mut bad = good;
        bad.key_id = "../x".into();
        assert!(ProvisionResponse::from_json(&bad.to_json()).is_err());
        let mut big = REQUEST_JSON.as_bytes().to_vec();
        big.resize(MAX_PROVISION_FILE_LEN + 1, b' ');
        let err = ProvisionResponse::from_json(&big)
            .unwrap_err()
            .reason()
            .to_owned();
        assert!(err.contains("at most"), "{err}");
    }
}
