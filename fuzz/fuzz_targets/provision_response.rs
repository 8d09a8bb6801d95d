//! Provisioning response files (flow D, the key broker's answer that a device accepts): errors,
//! never panics; what is accepted carries non-empty wrapped keys and reads back unchanged from
//! the file the key broker would write.
#![no_main]

use adyton_client::ProvisionResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = ProvisionResponse::from_json(data) else {
        return;
    };
    let answer = response
        .transfer_answer()
        .expect("an accepted response decodes");
    assert!(!answer.wrapped_key.is_empty() && !answer.wrapped_swk.is_empty());
    assert_eq!(response.public_key_sha256.len(), 64);
    let again =
        ProvisionResponse::from_json(&response.to_json()).expect("a written response reads back");
    assert_eq!(again, response);
});
