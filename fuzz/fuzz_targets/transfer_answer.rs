//! The key broker's transfer answer (`{"wrapped_key", "wrapped_swk"}`, read by every TEE that
//! asks for a model key, from a broker it does not trust yet): errors, never panics; what is
//! accepted reads back unchanged from the answer the broker would write.
#![no_main]

use adyton_proto::TransferAnswer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = TransferAnswer::from_json(data) else {
        return;
    };
    let again = TransferAnswer::from_json(&answer.to_json()).expect("a written answer reads back");
    assert_eq!(again, answer);
});
