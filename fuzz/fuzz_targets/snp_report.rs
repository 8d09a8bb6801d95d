//! SEV-SNP reports and certificate tables from arbitrary bytes, verified with the real Milan VCEK:
//! errors, never panics.
#![no_main]

use adyton_attest::collateral::SnpCollateral;
use adyton_attest::{verifier, Collateral, Evidence, TeeKind};
use libfuzzer_sys::fuzz_target;

const VCEK: &[u8] = include_bytes!("../../testdata/snp/vcek_milan.der");
/// 2025-01-01T00:00:00Z, inside the VCEK's validity (testdata/snp/README.md).
const AT: u64 = 1_735_689_600;

fuzz_target!(|data: &[u8]| {
    // The first half is the report, the rest a certificate table.
    let (report, table) = data.split_at(data.len().min(1184));
    let with_vcek = Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: None,
            vcek: Some(VCEK.to_vec()),
        }),
    };
    let evidence = Evidence {
        tee: TeeKind::Snp,
        quote: report.to_vec(),
        certificates: Some(table.to_vec()),
        gpus: Vec::new(),
    };
    let _ = verifier::verify(&evidence, &with_vcek, AT);
    let _ = verifier::verify(&evidence, &Collateral::none(), AT);
});
