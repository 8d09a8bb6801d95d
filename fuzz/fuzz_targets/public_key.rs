//! Transfer public keys in every `user_data` form (RSA as DER or Intel's raw form, EC P-384 as
//! DER) from arbitrary bytes: errors, never panics.
#![no_main]

use adyton_envelope::wrap::{ModulusOrder, TeePublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for order in [ModulusOrder::BigEndian, ModulusOrder::LittleEndian] {
        if let Ok(key) = TeePublicKey::from_user_data(data, order) {
            // Whatever parses can be re-encoded and read back as the same key.
            let again = TeePublicKey::from_spki_der(key.spki_der());
            assert!(again.is_ok_and(|k| k.spki_der() == key.spki_der()));
        }
    }
});
