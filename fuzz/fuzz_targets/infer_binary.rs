//! Infer request bodies with the binary tensor extension: the first two bytes are the
//! `Inference-Header-Content-Length` (little-endian), the rest the body. Errors, never panics; a
//! header length beyond the body is refused; what parses honours the element limits, comes back
//! byte for byte through a binary response, and reaches a fixed point through a JSON one.
#![no_main]

use adyton_server::protocol::{
    encode_response, json_response_overhead, json_size_bound, parse_request, InferRequest, Limits,
    Output,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Small limits, so that the fuzzer reaches them and each run stays quick.
const LIMITS: Limits = Limits {
    max_elements: 4096,
    max_total_elements: 8192,
};

fuzz_target!(|data: &[u8]| {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let header_length = usize::from(u16::from_le_bytes(*length));
    let parsed = parse_request(body, Some(header_length), &LIMITS);
    if header_length > body.len() {
        assert!(parsed.is_err());
        return;
    }
    let Ok(request) = parsed else {
        return;
    };
    let mut total = 0;
    for (_, tensor) in &request.inputs {
        assert!(tensor.len() <= LIMITS.max_elements);
        total += tensor.len();
    }
    assert!(total <= LIMITS.max_total_elements);

    // Binary outputs carry the bytes as they are: the same tensors come back.
    let binary = round_trip(&request, true);
    assert_eq!(binary.inputs, request.inputs);
    // JSON may canonicalise once (NaN payloads, BOOL bytes other than 0 and 1, BYTES that are
    // not UTF-8), and never again.
    let json = round_trip(&request, false);
    let json_again = round_trip(&json, false);
    assert_eq!(json_again.inputs, json.inputs);
});

/// The request's inputs encoded as a response's outputs, and read back as a request.
fn round_trip(request: &InferRequest, binary: bool) -> InferRequest {
    let outputs: Vec<Output<'_>> = request
        .inputs
        .iter()
        .map(|(name, tensor)| Output {
            name,
            tensor,
            binary,
        })
        .collect();
    let encoded = encode_response("m", "1", request.id.as_deref(), &outputs);
    let json_length = encoded.header_length.unwrap_or(encoded.body.len());
    assert_eq!(encoded.header_length.is_some(), binary);
    let (json, tensors) = encoded.body.split_at(json_length);
    // The bound the server checks a response's JSON against before building it holds.
    let bound = outputs.iter().map(json_size_bound).sum::<usize>()
        + json_response_overhead("m", "1", request.id.as_deref());
    assert!(json.len() <= bound, "{} > {bound}", json.len());
    let mut body = as_request(json);
    let header_length = binary.then_some(body.len());
    body.extend_from_slice(tensors);
    parse_request(&body, header_length, &LIMITS).expect("a response reads back")
}

/// A response's JSON, rewritten as a request: `outputs` become `inputs`.
fn as_request(response: &[u8]) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(response).expect("the response is JSON");
    let fields = value.as_object_mut().expect("the response is an object");
    let outputs = fields.remove("outputs").expect("the response has outputs");
    let mut request = serde_json::Map::new();
    if let Some(id) = fields.remove("id") {
        request.insert("id".into(), id);
    }
    request.insert("inputs".into(), outputs);
    serde_json::to_vec(&Value::Object(request)).expect("a JSON value serialises")
}
