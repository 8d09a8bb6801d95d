//! NVIDIA GPU attestation reports and certificate chains from arbitrary bytes, verified against
//! NVIDIA's pinned root with the recorded Hopper chain: errors, never panics.
#![no_main]

use adyton_attest::gpu::{spdm, GpuEvidence, GpuVerifier};
use libfuzzer_sys::fuzz_target;

const CHAIN: &[u8] = include_bytes!("../../testdata/nvidia-gpu/hopperCertChain.txt");
/// 2025-06-01T00:00:00Z, inside the recorded chain's validity (testdata/nvidia-gpu/README.md).
const AT: u64 = 1_748_736_000;

fuzz_target!(|data: &[u8]| {
    let _ = spdm::parse_report(data);
    let Ok(verifier) = GpuVerifier::new() else {
        return;
    };
    let nonce = data
        .get(4..36)
        .and_then(|n| n.try_into().ok())
        .unwrap_or([0; 32]);
    // The report with the real chain, then the first bytes as a chain of their own.
    let with_chain = GpuEvidence {
        report: data.to_vec(),
        certificates: CHAIN.to_vec(),
        rims: Vec::new(),
    };
    let _ = verifier.verify(&with_chain, &nonce, AT);
    let (chain, report) = data.split_at(data.len() / 2);
    let own_chain = GpuEvidence {
        report: report.to_vec(),
        certificates: chain.to_vec(),
        rims: vec![chain.to_vec()],
    };
    let _ = verifier.verify(&own_chain, &nonce, AT);
});
