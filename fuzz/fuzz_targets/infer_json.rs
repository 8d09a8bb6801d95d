//! Infer request bodies as JSON (the Open Inference Protocol without the binary extension): errors,
//! never panics; what parses honours the element limits, and its tensors come back identical from
//! the JSON response the server would send for them.
#![no_main]

use adyton_server::protocol::{
    encode_response, json_response_overhead, json_size_bound, parse_request, Limits, Output,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Small limits, so that the fuzzer reaches them and each run stays quick.
const LIMITS: Limits = Limits {
    max_elements: 4096,
    max_total_elements: 8192,
};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(data, None, &LIMITS) else {
        return;
    };
    assert!(!request.inputs.is_empty());
    let mut total = 0;
    for (_, tensor) in &request.inputs {
        assert!(tensor.len() <= LIMITS.max_elements);
        total += tensor.len();
    }
    assert!(total <= LIMITS.max_total_elements);

    // The response's JSON outputs, read back as a request's inputs: values that came from JSON
    // are exactly what JSON carries (canonical NaN, 0 or 1 for BOOL, UTF-8 for BYTES), so the
    // same tensors must come back.
    let outputs: Vec<Output<'_>> = request
        .inputs
        .iter()
        .map(|(name, tensor)| Output {
            name,
            tensor,
            binary: false,
        })
        .collect();
    let encoded = encode_response("m", "1", request.id.as_deref(), &outputs);
    assert_eq!(encoded.header_length, None);
    // The bound the server checks a response against before building it holds.
    let bound = outputs.iter().map(json_size_bound).sum::<usize>()
        + json_response_overhead("m", "1", request.id.as_deref());
    assert!(
        encoded.body.len() <= bound,
        "{} > {bound}",
        encoded.body.len()
    );
    let again = as_request(&encoded.body);
    let reparsed = parse_request(&again, None, &LIMITS).expect("a JSON response reads back");
    assert_eq!(reparsed.id, request.id);
    assert_eq!(reparsed.inputs, request.inputs);
});

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
