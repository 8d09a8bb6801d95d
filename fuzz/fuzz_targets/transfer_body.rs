//! Key transfer request bodies (`POST /kbs/v1/keys/{id}/transfer`, posted by any TEE to the key
//! broker): errors, never panics; what is accepted reads back unchanged from the body a TEE would
//! send, and a nonce request stays one.
#![no_main]

use adyton_proto::TransferBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = TransferBody::parse(data) else {
        return;
    };
    let Some(body) = body else {
        // A nonce request: a blank body, or one without `quote`.
        return;
    };
    let again = TransferBody::parse(&body.to_json()).expect("a written body reads back");
    assert_eq!(again.as_ref(), Some(&body), "a transfer stays a transfer");
    let debug = format!("{body:?}");
    assert!(
        debug.contains(&format!("<{} bytes>", body.quote.len())),
        "{debug}"
    );
});
