//! DCAP quotes from arbitrary bytes, verified with real collateral at a time inside its validity,
//! so that the fuzzer reaches the quote parser and signature checks: errors, never panics.
#![no_main]

use std::sync::OnceLock;

use adyton_attest::{verifier, Collateral, Evidence, TeeKind};
use libfuzzer_sys::fuzz_target;

const SGX_COLLATERAL: &[u8] = include_bytes!("../../testdata/dcap/sgx_quote_collateral.json");
const TDX_COLLATERAL: &[u8] = include_bytes!("../../testdata/dcap/tdx_quote_collateral.json");
/// 2025-07-01T00:00:00Z, inside both samples' collateral validity (testdata/dcap/README.md).
const AT: u64 = 1_751_328_000;

fn collateral() -> &'static (Collateral, Collateral) {
    static PARSED: OnceLock<(Collateral, Collateral)> = OnceLock::new();
    PARSED.get_or_init(|| {
        (
            Collateral::from_dcap_json(SGX_COLLATERAL).unwrap_or_default(),
            Collateral::from_dcap_json(TDX_COLLATERAL).unwrap_or_default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (sgx, tdx) = collateral();
    for (tee, collateral) in [(TeeKind::Sgx, sgx), (TeeKind::Tdx, tdx)] {
        let evidence = Evidence {
            tee,
            quote: data.to_vec(),
            certificates: None,
            gpus: Vec::new(),
        };
        let _ = verifier::verify(&evidence, collateral, AT);
    }
});
