//! Model info (CNAP's schema): the registry's strict reader of what publishers send, and the
//! lenient one of clients and inference servers reading the registry's answer. Errors, never
//! panics; the strict reader accepts nothing the lenient one refuses, and reads the same value;
//! it refuses a JSON object the lenient one accepts only for an unknown field; what is accepted
//! reads back unchanged from both the registry's answer and a publisher's request.
#![no_main]

use adyton_proto::ModelInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = ModelInfo::from_json_strict(data);
    let lenient = serde_json::from_slice::<ModelInfo>(data);
    if let Ok(info) = &strict {
        let lenient = lenient
            .as_ref()
            .expect("the lenient reader accepts what the strict one does");
        assert_eq!(lenient, info);
    }
    let Ok(info) = lenient else {
        return;
    };
    if let Err(err) = &strict {
        // An object with only known fields must be accepted (serde also reads a struct from an
        // array, which the strict reader refuses: not an object).
        if let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data)
        {
            assert!(
                map.keys()
                    .any(|key| !ModelInfo::FIELDS.contains(&key.as_str())),
                "the strict reader refused known fields only: {err}"
            );
        }
    }
    let answer = serde_json::to_vec(&info).expect("model info serialises");
    let strict_again = ModelInfo::from_json_strict(&answer).expect("an answer reads back strictly");
    assert_eq!(strict_again, info);
    let lenient_again: ModelInfo = serde_json::from_slice(&answer).expect("an answer reads back");
    assert_eq!(lenient_again, info);
    let request = ModelInfo::from_json_strict(&info.to_request_json())
        .expect("a publisher's request reads back");
    assert_eq!(request, info);
});
