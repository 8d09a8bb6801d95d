//! The ONNX Runtime engine's check for external data, on arbitrary bytes: the protobuf wire format
//! walked through every message that can hold a tensor. Errors, never panics; the answer does not
//! change when the bytes are checked again, and bytes after a model that is refused for external
//! data never make it acceptable.
#![no_main]

use adyton_server::runtime::onnxruntime::external_tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = external_tensor(data);
    assert_eq!(first, external_tensor(data));
    if let Ok(Some(_)) = first {
        // A protobuf message may be followed by more fields of the same message: appending an
        // empty one (field 2, ModelProto.producer_name, length 0) keeps the refusal.
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x12, 0x00]);
        assert!(matches!(external_tensor(&longer), Ok(Some(_))));
    }
});
