//! Evidence from arbitrary bytes: the JSON form, and every verifier on raw quotes. Errors, never
//! panics.
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
        gpus: Vec::new(),
    };
    let result = verifier::verify(&evidence, &Collateral::none(), 1_700_000_000);
    // Without collateral, hardware evidence can never verify. (A SIM report copied whole from a
    // seed would verify, which is correct: its signature is genuine. A NITRO document needs no
    // collateral, but none that AWS signed is valid at this time with 64 bytes of user data.)
    if tee != TeeKind::Sim {
        assert!(result.is_err());
    }
});
