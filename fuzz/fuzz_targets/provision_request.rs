//! Provisioning request files (flow D, a device's request for a model key, read by the key
//! broker's operator and its offline-transfer endpoint): errors, never panics; what is accepted
//! names a TEE that can seal, and reads back unchanged from the file the device would write.
#![no_main]

use adyton_attest::TeeKind;
use adyton_client::offline::tee_kind;
use adyton_client::ProvisionRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ProvisionRequest::from_json(data) else {
        return;
    };
    let tee = tee_kind(&request).expect("an accepted request names a TEE");
    assert_ne!(tee, TeeKind::Tdx, "TDX cannot seal");
    assert!(request.public_key_der().is_ok_and(|der| !der.is_empty()));
    assert!(request.public_key_sha256().is_ok());
    let again =
        ProvisionRequest::from_json(&request.to_json()).expect("a written request reads back");
    assert_eq!(again, request);
});
