//! NVIDIA reference integrity manifests (signed XML) from arbitrary bytes: the XML parser, the
//! canonicalisation and the signature checks against NVIDIA's pinned RIM root; errors, never
//! panics.
#![no_main]

use adyton_attest::gpu::chain::read_certificates;
use adyton_attest::gpu::rim::Rim;
use adyton_attest::gpu::xml;
use adyton_attest::gpu::NVIDIA_RIM_ROOT_PEM;
use libfuzzer_sys::fuzz_target;

/// 2025-06-01T00:00:00Z, inside the recorded RIM signer's validity.
const AT: u64 = 1_748_736_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = xml::parse(data) {
        let _ = xml::canonicalize(&root, &xml::Scope::new(), &|_, _| false);
    }
    if let Ok(roots) = read_certificates(NVIDIA_RIM_ROOT_PEM.as_bytes()) {
        let _ = Rim::verify(data, &roots, AT);
    }
});
