//! AWS Nitro attestation documents from arbitrary bytes, verified with the pinned AWS root at the
//! recorded document's time: errors, never panics, and never claims.
#![no_main]

use adyton_attest::verifier::nitro::{parse_document, NitroVerifier};
use adyton_attest::{verifier, Collateral, Evidence, TeeKind};
use libfuzzer_sys::fuzz_target;

/// 2022-10-13T09:00:00Z, inside the recorded document's leaf validity (testdata/nitro/README.md).
const AT: u64 = 1_665_651_600;

fuzz_target!(|data: &[u8]| {
    let _ = parse_document(data);
    let _ = NitroVerifier::new().verify_document(data, AT);
    let evidence = Evidence {
        tee: TeeKind::Nitro,
        quote: data.to_vec(),
        certificates: None,
        gpus: Vec::new(),
    };
    // The only genuine documents valid at AT (the seeds) carry no 64-byte user_data, and adding
    // one breaks AWS's signature: no input can give claims.
    assert!(verifier::verify(&evidence, &Collateral::none(), AT).is_err());
});
