//! The key broker's transfer (`design.md`, "KBS key transfer"; `docs/kbs.md`): the JSON body a TEE
//! posts to `/kbs/v1/keys/{id}/transfer`, the broker's answer, and the report data that binds the
//! TEE's public key into its evidence.
//!
//! The body is CNAP's and Intel's KBS's: `{"quote", "user_data", "nonce"?}`, each standard base64,
//! and Adyton's optional `"collateral"` (base64 of a collateral bundle, the JSON of
//! `docs/evidence.md`), which CNAP clients omit. Unknown fields are ignored, as Intel's KBS
//! clients send extras; a body without `quote` (or an empty one) asks for a nonce instead.

use std::fmt;

use aws_lc_rs::digest::{Context, SHA512};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::ProtoError;

/// Length of the report data that evidence carries: a SHA-512.
pub const REPORT_DATA_LEN: usize = 64;

/// The report data a key transfer requires: SHA-512 of the nonce (if any) followed by
/// `user_data`, the TEE's public key (RSA or EC P-384) exactly as sent (`docs/kbs.md`, "Report
/// data").
pub fn transfer_report_data(user_data: &[u8], nonce: Option<&[u8]>) -> [u8; REPORT_DATA_LEN] {
    let mut hasher = Context::new(&SHA512);
    hasher.update(nonce.unwrap_or_default());
    hasher.update(user_data);
    let mut out = [0u8; REPORT_DATA_LEN];
    out.copy_from_slice(hasher.finish().as_ref());
    out
}

const REQUEST: &str = "transfer request";
const ANSWER: &str = "transfer answer";

/// A transfer request's body, decoded from base64.
#[derive(Clone, PartialEq, Eq)]
pub struct TransferBody {
    /// The evidence: a raw DCAP quote or SNP report, a SIM report, or Adyton evidence JSON.
    pub quote: Vec<u8>,
    /// The TEE's public key: DER SubjectPublicKeyInfo of an RSA key or of an EC P-384 key
    /// (uncompressed point), or Intel's raw RSA form `u32le exponent || modulus`.
    pub user_data: Vec<u8>,
    /// The nonce the broker issued, when the TEE bound one.
    pub nonce: Option<Vec<u8>>,
    /// The collateral of the evidence, as bundle JSON, when the TEE fetched it from its
    /// platform's source. A broker uses it only when it has none of its own; it adds no trust,
    /// since the broker still checks every signature up to Intel's or AMD's root.
    pub collateral: Option<Vec<u8>>,
}

impl fmt::Debug for TransferBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferBody")
            .field("quote", &format_args!("<{} bytes>", self.quote.len()))
            .field(
                "user_data",
                &format_args!("<{} bytes>", self.user_data.len()),
            )
            .field("nonce", &self.nonce.as_ref().map(Vec::len))
            .field("collateral", &self.collateral.as_ref().map(Vec::len))
            .finish()
    }
}

/// The body as sent. A field that is present must be a string: `"quote": null` is a malformed
/// request, not a nonce request (which is a body without `quote`).
#[derive(Deserialize)]
struct TransferJson {
    #[serde(default, deserialize_with = "present")]
    quote: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    user_data: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    nonce: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    collateral: Option<Option<String>>,
}

/// A field that is present (`Some`), with its value (`None` for `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A present field's string, or an error for `null`.
fn non_null(field: &str, value: Option<Option<String>>) -> Result<Option<String>, ProtoError> {
    match value {
        None => Ok(None),
        Some(Some(text)) => Ok(Some(text)),
        Some(None) => Err(ProtoError::invalid(
            REQUEST,
            format!("`{field}` is null: give a base64 string, or leave the field out"),
        )),
    }
}

/// Whether `bytes` open a JSON object: serde would also read a struct from an array of its
/// fields' values, which no client sends and the documents do not allow.
fn is_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn decode_field(field: &str, text: &str) -> Result<Vec<u8>, ProtoError> {
    BASE64
        .decode(text.trim())
        .map_err(|e| ProtoError::invalid(REQUEST, format!("`{field}` is not base64: {e}")))
}

impl TransferBody {
    /// Reads a body: `None` for a nonce request (an empty or blank body, or one without `quote`),
    /// else the decoded fields. `null` fields, a missing `user_data` and bad base64 are refused.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>, ProtoError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !is_object(bytes) {
            return Err(ProtoError::invalid(
                REQUEST,
                "malformed JSON body: expected an object",
            ));
        }
        let json: TransferJson = serde_json::from_slice(bytes)
            .map_err(|e| ProtoError::invalid(REQUEST, format!("malformed JSON body: {e}")))?;
        let user_data = non_null("user_data", json.user_data)?;
        let nonce = non_null("nonce", json.nonce)?;
        let collateral = non_null("collateral", json.collateral)?;
        let Some(quote) = non_null("quote", json.quote)? else {
            return Ok(None);
        };
        let user_data =
            user_data.ok_or_else(|| ProtoError::invalid(REQUEST, "missing `user_data`"))?;
        Ok(Some(Self {
            quote: decode_field("quote", &quote)?,
            user_data: decode_field("user_data", &user_data)?,
            nonce: nonce
                .map(|nonce| decode_field("nonce", &nonce))
                .transpose()?,
            collateral: collateral
                .map(|collateral| decode_field("collateral", &collateral))
                .transpose()?,
        }))
    }

    /// The body as a TEE sends it: `{"quote", "user_data"}`, then `"nonce"` and `"collateral"`
    /// when there are.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for TransferBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 2 + usize::from(self.nonce.is_some()) + usize::from(self.collateral.is_some());
        let mut s = serializer.serialize_struct("TransferBody", fields)?;
        s.serialize_field("quote", &BASE64.encode(&self.quote))?;
        s.serialize_field("user_data", &BASE64.encode(&self.user_data))?;
        if let Some(nonce) = &self.nonce {
            s.serialize_field("nonce", &BASE64.encode(nonce))?;
        }
        if let Some(collateral) = &self.collateral {
            s.serialize_field("collateral", &BASE64.encode(collateral))?;
        }
        s.end()
    }
}

/// The key broker's answer to a transfer, both fields decoded from base64. `Debug` prints lengths
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct TransferAnswer {
    /// The model key sealed under the wrapping key (envelope v1).
    pub wrapped_key: Vec<u8>,
    /// The wrapping key encrypted to the TEE's public key: RSA-OAEP-SHA256 to an RSA key; HPKE
    /// (DHKEM(P-384, HKDF-SHA384), HKDF-SHA384, AES-256-GCM) to a P-384 key, as `enc` (97
    /// bytes) followed by the ciphertext and tag (48 bytes) (`docs/kbs.md`).
    pub wrapped_swk: Vec<u8>,
}

impl fmt::Debug for TransferAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferAnswer")
            .field(
                "wrapped_key",
                &format_args!("<{} bytes>", self.wrapped_key.len()),
            )
            .field(
                "wrapped_swk",
                &format_args!("<{} bytes>", self.wrapped_swk.len()),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct AnswerJson {
    wrapped_key: String,
    wrapped_swk: String,
}

impl TransferAnswer {
    /// Reads the broker's `{"wrapped_key", "wrapped_swk"}` answer.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtoError> {
        if !is_object(bytes) {
            return Err(ProtoError::invalid(ANSWER, "expected a JSON object"));
        }
        let json: AnswerJson = serde_json::from_slice(bytes)
            .map_err(|e| ProtoError::invalid(ANSWER, e.to_string()))?;
        let decode = |field: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|_| ProtoError::invalid(ANSWER, format!("{field} is not base64")))
        };
        Ok(Self {
            wrapped_key: decode("wrapped_key", &json.wrapped_key)?,
            wrapped_swk: decode("wrapped_swk", &json.wrapped_swk)?,
        })
    }

    /// The answer as the broker sends it.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for TransferAnswer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TransferAnswer", 2)?;
        s.serialize_field("wrapped_key", &BASE64.encode(&self.wrapped_key))?;
        s.serialize_field("wrapped_swk", &BASE64.encode(&self.wrapped_swk))?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn arrays_of_the_fields_are_refused() {
        for body in [
            &b"[]"[..],
            b" [\"ZXZp\", \"a2V5\"]",
            b"[null]",
            b"\"quote\"",
            b"7",
        ] {
            let error = TransferBody::parse(body).unwrap_err().to_string();
            assert!(error.contains("malformed JSON body"), "{error}");
        }
        for body in [&b"[\"ZXZp\", \"a2V5\"]"[..], b"[]"] {
            let error = TransferAnswer::from_json(body).unwrap_err().to_string();
            assert!(error.contains("expected a JSON object"), "{error}");
        }
    }

    #[test]
    fn report_data_is_sha512_of_nonce_then_user_data() {
        let one_shot = |bytes: &[u8]| {
            let mut out = [0u8; REPORT_DATA_LEN];
            out.copy_from_slice(aws_lc_rs::digest::digest(&SHA512, bytes).as_ref());
            out
        };
        assert_eq!(transfer_report_data(b"key", None), one_shot(b"key"));
        assert_eq!(
            transfer_report_data(b"key", Some(b"nonce")),
            one_shot(b"noncekey")
        );
        assert_ne!(
            transfer_report_data(b"key", Some(b"nonce")),
            transfer_report_data(b"nonce", Some(b"key"))
        );
        // A known answer: SHA-512 of the empty string.
        assert_eq!(
            hex::encode(transfer_report_data(b"", None)),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
    }

    #[test]
    fn a_body_round_trips_as_cnap_sends_it() {
        // CNAP's client: `{"quote": b64(evidence), "user_data": b64(public key)}`.
        let body = TransferBody {
            quote: b"evidence".to_vec(),
            user_data: b"key".to_vec(),
            nonce: None,
            collateral: None,
        };
        let json = body.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"quote":"ZXZpZGVuY2U=","user_data":"a2V5"}"#
        );
        assert_eq!(TransferBody::parse(&json).unwrap().unwrap(), body);

        let with_nonce = TransferBody {
            nonce: Some(b"n".to_vec()),
            ..body
        };
        let json = with_nonce.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"quote":"ZXZpZGVuY2U=","user_data":"a2V5","nonce":"bg=="}"#
        );
        assert_eq!(TransferBody::parse(&json).unwrap().unwrap(), with_nonce);

        // Adyton's optional collateral, after the CNAP fields.
        let with_collateral = TransferBody {
            collateral: Some(br#"{"dcap":{}}"#.to_vec()),
            ..with_nonce
        };
        let json = with_collateral.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"quote":"ZXZpZGVuY2U=","user_data":"a2V5","nonce":"bg==","collateral":"eyJkY2FwIjp7fX0="}"#
        );
        assert_eq!(
            TransferBody::parse(&json).unwrap().unwrap(),
            with_collateral
        );
    }

    #[test]
    fn extras_and_whitespace_are_accepted() {
        let json = br#"{"quote": " ZXZpZGVuY2U= ", "user_data": "a2V5", "tee": "sgx"}"#;
        let body = TransferBody::parse(json).unwrap().unwrap();
        assert_eq!(body.quote, b"evidence");
        assert_eq!(body.nonce, None);
    }

    #[test]
    fn a_body_without_quote_asks_for_a_nonce() {
        for json in [&b""[..], b"  \n", b"{}", br#"{"user_data": "a2V5"}"#] {
            assert_eq!(TransferBody::parse(json).unwrap(), None, "{json:?}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let reason = |json: &[u8]| TransferBody::parse(json).unwrap_err().reason().to_owned();
        assert!(reason(b"{").starts_with("malformed JSON body"));
        assert!(reason(br#"{"quote": 1}"#).starts_with("malformed JSON body"));
        for field in ["quote", "user_data", "nonce", "collateral"] {
            let mut json = serde_json::json!({"quote": "AA==", "user_data": "AA=="});
            json[field] = serde_json::Value::Null;
            let reason = reason(json.to_string().as_bytes());
            assert!(reason.contains(&format!("`{field}` is null")), "{reason}");
        }
        assert_eq!(reason(br#"{"quote": "AA=="}"#), "missing `user_data`");
        for field in ["quote", "user_data", "nonce", "collateral"] {
            let mut json = serde_json::json!(
                {"quote": "AA==", "user_data": "AA==", "nonce": "AA==", "collateral": "AA=="}
            );
            json[field] = "not base64!".into();
            let reason = reason(json.to_string().as_bytes());
            assert!(
                reason.starts_with(&format!("`{field}` is not base64")),
                "{reason}"
            );
        }
    }

    #[test]
    fn an_answer_round_trips_and_hides_its_bytes() {
        let answer = TransferAnswer {
            wrapped_key: vec![1, 2, 3],
            wrapped_swk: vec![4, 5],
        };
        let json = answer.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"wrapped_key":"AQID","wrapped_swk":"BAU="}"#
        );
        assert_eq!(TransferAnswer::from_json(&json).unwrap(), answer);
        let debug = format!("{answer:?}");
        assert!(
            debug.contains("<3 bytes>") && !debug.contains("AQID"),
            "{debug}"
        );
    }

    #[test]
    fn a_bad_answer_is_refused() {
        let reason = |json: &[u8]| {
            TransferAnswer::from_json(json)
                .unwrap_err()
                .reason()
                .to_owned()
        };
        assert_eq!(
            reason(br#"{"wrapped_key": "!", "wrapped_swk": "AA=="}"#),
            "wrapped_key is not base64"
        );
        assert_eq!(
            reason(br#"{"wrapped_key": "AA==", "wrapped_swk": "!"}"#),
            "wrapped_swk is not base64"
        );
        assert!(reason(br#"{"wrapped_key": "AA=="}"#).contains("wrapped_swk"));
        assert!(TransferAnswer::from_json(b"[]").is_err());
    }
}
