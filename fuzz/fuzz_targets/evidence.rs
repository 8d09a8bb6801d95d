//! Evidence from arbitrary bytes: the JSON form, and every verifier on raw quotes. Errors, never
//! panics; nothing random ever verifies.
#![no_main]

use adyton_attest::{verifier, Collateral, Evidence, TeeKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Evidence::from_json(data);
    let Some((&selector, quote)) = data.split_first() else {
        return;
    };
    let tee = TeeKind::ALL[usize::from(selector) % TeeKind::ALL.len()];
    let evidence = Evidence {
        tee,
        quote: quote.to_vec(),
        certificates: None,
    };
    // SIM needs no collateral; the others must fail cleanly without it.
    assert!(verifier::verify(&evidence, &Collateral::none(), 1_700_000_000).is_err());
});
