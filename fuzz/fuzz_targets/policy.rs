//! Policy files from arbitrary text, TOML and JSON: errors, never panics.
#![no_main]

use adyton_attest::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::from_toml(text);
        let _ = Policy::from_json(text);
    }
});
