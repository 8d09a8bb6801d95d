//! Azure vTPM evidence parts from arbitrary bytes: the container JSON, the HCL report, the runtime
//! data's attestation key, the TPM quote message, and the quote check. Errors, never panics.
#![no_main]

use std::collections::BTreeMap;

use adyton_attest::verifier::azure::{self, AzureEvidence, HclReport, RsaKey, TpmQuote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = AzureEvidence::from_json(data);
    if let Ok(hcl) = HclReport::parse(data) {
        let _ = hcl.attestation_key();
        let _ = azure::check_runtime_data(&hcl, &hcl.hardware_report_data());
    }
    let _ = azure::attestation_key(data);
    let _ = azure::parse_quote_message(data);
    let (signature, message) = data.split_at(data.len().min(256));
    let quote = TpmQuote {
        message: message.to_vec(),
        signature: signature.to_vec(),
        pcrs: BTreeMap::from([(0, [0; 32])]),
    };
    let key = RsaKey {
        n: vec![0xc5; 256],
        e: vec![1, 0, 1],
    };
    // No key signs fuzzed bytes.
    assert!(azure::verify_tpm_quote(&quote, &key).is_err());
});
