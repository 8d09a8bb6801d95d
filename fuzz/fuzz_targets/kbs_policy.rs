//! Transfer policies as the key broker's admin API takes them (`POST
//! /kbs/v1/key-transfer-policies`: `attestation_type` and the table under the TEE's name), through
//! the broker's own parsing (`PolicyRecord::policy`, what `Broker::create_policy` calls to refuse
//! a policy that cannot be evaluated) and the store's JSON form. Errors, never panics; a policy
//! that parses still parses once stored and read back, and means the same.
#![no_main]

use adyton_attest::TeeKind;
use adyton_kbs::store::PolicyRecord;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(mut body) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    // The body's envelope as the admin API reads it (its own checks are private to `http`):
    // the TEE's name, then its table.
    let Some(Value::String(name)) = body.remove("attestation_type") else {
        return;
    };
    let Ok(tee) = name.parse::<TeeKind>() else {
        return;
    };
    let Some(table) = body.remove(&tee.as_str().to_ascii_lowercase()) else {
        return;
    };
    let record = PolicyRecord {
        id: "00000000-0000-4000-8000-000000000000".into(),
        attestation_type: tee,
        table,
        created_at: 1_700_000_000,
    };
    let Ok(policy) = record.policy() else {
        return;
    };
    // What the store keeps is the record as JSON: read back, it is the same record, and its
    // policy still parses to the same reference values.
    let stored = serde_json::to_vec(&record).expect("a record serialises");
    let read: PolicyRecord = serde_json::from_slice(&stored).expect("a stored record reads back");
    assert_eq!(read, record);
    let again = read.policy().expect("a stored policy parses again");
    assert_eq!(again, policy);
});
