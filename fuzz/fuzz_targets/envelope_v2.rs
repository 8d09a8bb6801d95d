//! v2 headers and chunk streams from arbitrary bytes: errors, never panics or hangs, and a stream
//! that does not authenticate releases nothing.
#![no_main]

use std::io::Read;

use adyton_envelope::v2::{Decryptor, HashCheck, Header};
use adyton_envelope::Aes256Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let Ok(key) = Aes256Key::from_slice(&[0x5A; 32]) else {
        return;
    };
    if let Ok(mut decryptor) = Decryptor::new(data, &key, HashCheck::Verify) {
        let mut out = Vec::new();
        // Random bytes never carry a valid tag under this key, so nothing may come out.
        let result = decryptor.read_to_end(&mut out);
        assert!(result.is_err());
        assert!(out.is_empty());
    }
});
