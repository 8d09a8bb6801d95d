//! v1 envelopes and format detection from arbitrary bytes: errors, never panics.
#![no_main]

use adyton_envelope::{v1, Aes256Key, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Format::detect(data);
    let _ = v1::check_layout(data, data.len() as u64);
    if let Ok(key) = Aes256Key::from_slice(&[0x5A; 32]) {
        let _ = v1::open(&key, data);
    }
});
