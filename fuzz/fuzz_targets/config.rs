//! Configuration files in TOML (`server.toml`, `kbs.toml`, `registry.toml`) and policy files:
//! errors, never panics. The binary crate's own file structs are private to it (a fuzz target
//! cannot link a binary), so this target fuzzes what they are read with, the `toml` parser, on
//! documents of their shape, and the library type they embed, the attestation policy, which must
//! mean the same in TOML and in JSON.
#![no_main]

use adyton_attest::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    // A policy file is TOML or JSON with the same fields (docs/policy.md): the same document in
    // either form is the same policy.
    if let Ok(policy) = Policy::from_toml(text) {
        let json = serde_json::to_string(&table).expect("a TOML table is JSON");
        assert_eq!(Policy::from_json(&json).ok(), Some(policy));
    }
});
