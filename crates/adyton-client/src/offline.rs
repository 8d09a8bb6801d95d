//! The files of offline provisioning (`design.md`, flow D): a device with no network writes a
//! [`ProvisionRequest`] (its evidence and a public key), the request is carried to the provider,
//! whose operator has the key broker answer it (`adyton kbs transfer --offline`), and the
//! [`ProvisionResponse`] (the model key wrapped to the device's public key) is carried back.
//!
//! The files' formats are `adyton-proto`'s ([`adyton_proto::provision`]), re-exported here; this
//! module adds what needs attestation: [`read_request`] also checks that the evidence is Adyton
//! evidence of the TEE the request names.

use adyton_attest::{Evidence, TeeKind};
pub use adyton_proto::provision::{
    ProvisionRequest, ProvisionResponse, MAX_PROVISION_FILE_LEN, REQUEST_FORMAT, RESPONSE_FORMAT,
};

use crate::error::ClientError;

type Result<T> = std::result::Result<T, ClientError>;

const WHAT: &str = "provisioning request";

/// Reads a request as [`ProvisionRequest::from_json`] does, and also refuses evidence that is not
/// Adyton evidence or that comes from another TEE than the request names.
pub fn read_request(bytes: &[u8]) -> Result<ProvisionRequest> {
    let request = ProvisionRequest::from_json(bytes)?;
    let tee = tee_kind(&request)?;
    let evidence = Evidence::from_json(&request.evidence_json()?)
        .map_err(|e| invalid(format!("evidence: {e}")))?;
    if evidence.tee != tee {
        return Err(invalid(format!(
            "the evidence comes from {}, but the request names {tee}",
            evidence.tee
        )));
    }
    Ok(request)
}

/// The TEE a request names: `SGX`, `SNP` or `SIM`, spelt as `TeeKind` displays it (TDX refused).
pub fn tee_kind(request: &ProvisionRequest) -> Result<TeeKind> {
    request.check_tee()?;
    request
        .tee
        .parse()
        .map_err(|e| invalid(format!("tee: {e}")))
}

fn invalid(reason: String) -> ClientError {
    ClientError::InvalidInput { what: WHAT, reason }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use adyton_proto::provision::TDX_REFUSAL;
    use adyton_proto::TransferAnswer;
    use aws_lc_rs::digest::{digest, SHA256};
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;

    use super::*;

    fn evidence(tee: TeeKind) -> String {
        let evidence = Evidence {
            tee,
            quote: vec![1, 2, 3],
            certificates: None,
            gpus: Vec::new(),
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
        let err = read_request(&serde_json::to_vec(json).unwrap()).unwrap_err();
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
        assert_eq!(read_request(&bytes).unwrap(), request);
        assert_eq!(
            request.public_key_der().unwrap(),
            b"not really DER, but base64"
        );
        assert_eq!(tee_kind(&request).unwrap(), TeeKind::Sim);
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
            assert!(read_request(bad).is_err());
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
        let err = read_request(&big).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let err = ProvisionResponse::from_json(&big).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        // At the limit, trailing whitespace is still JSON.
        let mut at_limit = request().to_json();
        at_limit.resize(MAX_PROVISION_FILE_LEN, b' ');
        assert!(read_request(&at_limit).is_ok());
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
            read_request(&serde_json::to_vec(&json).unwrap()).unwrap();
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
            read_request(&request.to_json()).unwrap();
        }
        for policy in ["signer", "exact-build"] {
            let mut json = as_json(&request());
            json["sealing_policy"] = policy.into();
            read_request(&serde_json::to_vec(&json).unwrap()).unwrap();
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
