//! Verifications per second on one core, for real SGX, TDX, SNP and AWS Nitro evidence and for SIM, with the
//! collateral parsed once and reused. Adyton's DCAP verifier memoises the collateral's signature
//! checks (`verifier::dcap_cache`), which repeat from quote to quote; each quote's own signatures
//! are verified every time. The `dcap-qvl verify() alone` rows show the library without the memo. Run with `cargo bench -p adyton-attest --bench verify`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::collateral::SnpCollateral;
use adyton_attest::verifier::nitro::NitroVerifier;
use adyton_attest::{verifier, Collateral, Evidence, TeeKind};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(testdata(name)).unwrap()
}

/// Runs `f` for about `budget`, returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> (f64, u64) {
    // Warm-up.
    f();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        f();
        calls += 1;
    }
    (calls as f64 / start.elapsed().as_secs_f64(), calls)
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("ADYTON_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    );
    // Times inside each sample's collateral validity (testdata/dcap/README.md, testdata/snp/README.md).
    let dcap_time = 1_751_328_000; // 2025-07-01T00:00:00Z
    let snp_time = 1_735_689_600; // 2025-01-01T00:00:00Z

    let mut cases: Vec<(&str, Evidence, Collateral, u64)> = Vec::new();
    for (name, tee, quote, collateral) in [
        (
            "SGX (DCAP quote v3)",
            TeeKind::Sgx,
            "dcap/sgx_quote",
            "dcap/sgx_quote_collateral.json",
        ),
        (
            "TDX (DCAP quote v4)",
            TeeKind::Tdx,
            "dcap/tdx_quote",
            "dcap/tdx_quote_collateral.json",
        ),
    ] {
        cases.push((
            name,
            Evidence {
                tee,
                quote: read(quote),
                certificates: None,
            },
            Collateral::from_dcap_json(&read(collateral)).unwrap(),
            dcap_time,
        ));
    }
    let report = hex::decode(
        String::from_utf8(read("snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    cases.push((
        "SNP (Milan report, VCEK)",
        Evidence {
            tee: TeeKind::Snp,
            quote: report,
            certificates: None,
        },
        Collateral {
            dcap: None,
            snp: Some(SnpCollateral {
                ark: None,
                ask: None,
                vcek: Some(read("snp/vcek_milan.der")),
            }),
        },
        snp_time,
    ));
    let sim = SimAttester::with_measurement([1; 32], [2; 48]).unwrap();
    cases.push((
        "SIM (Ed25519)",
        sim.evidence(&[3; 64]).unwrap(),
        Collateral::none(),
        0,
    ));

    println!();
    println!(
        "Evidence verification on one core, collateral parsed once, {} s per row",
        budget.as_secs_f64()
    );
    println!();
    println!("| evidence | verifications/s | ms each | runs |");
    println!("| --- | ---: | ---: | ---: |");
    let mut dcap_rates = Vec::new();
    for (name, evidence, collateral, now) in &cases {
        verifier::verify(evidence, collateral, *now).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (per_second, runs) = rate(budget, || {
            verifier::verify(evidence, collateral, *now).unwrap();
        });
        if matches!(evidence.tee, TeeKind::Sgx | TeeKind::Tdx) {
            dcap_rates.push(per_second);
        }
        println!(
            "| {name} | {per_second:.0} | {:.3} | {runs} |",
            1000.0 / per_second
        );
    }
    // AWS Nitro: the real document's full check (COSE_Sign1 parse, the chain of four certificates
    // to the pinned root, the ES384 signature, the dates) at its fixed time. The recorded document
    // has no 64-byte user_data, so it is measured through `verify_document`, which is everything
    // `verify` does but reading the report data (testdata/nitro/README.md).
    {
        let nitro = NitroVerifier::new();
        let document = read("nitro/valid-attestation-doc-bytes");
        let nitro_time = 1_665_651_600; // 2022-10-13T09:00:00Z
        nitro.verify_document(&document, nitro_time).unwrap();
        let (per_second, runs) = rate(budget, || {
            nitro.verify_document(&document, nitro_time).unwrap();
        });
        println!(
            "| NITRO (AWS document, ES384, chain of five) | {per_second:.0} | {:.3} | {runs} |",
            1000.0 / per_second
        );
    }
    // The library alone, for comparison: what Adyton adds on top of dcap-qvl.
    for (name, evidence, collateral, now) in cases
        .iter()
        .filter(|c| matches!(c.1.tee, TeeKind::Sgx | TeeKind::Tdx))
    {
        let dcap = collateral.dcap.as_ref().unwrap();
        let (per_second, runs) = rate(budget, || {
            dcap_qvl::verify::verify(&evidence.quote, dcap, *now).unwrap();
        });
        println!(
            "| {name}, dcap-qvl verify() alone | {per_second:.0} | {:.3} | {runs} |",
            1000.0 / per_second
        );
    }
    println!();
    let slowest = dcap_rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "Target: at least 1,000 DCAP verifications a second per core: slowest DCAP row {slowest:.0}/s -> {}",
        if slowest >= 1000.0 { "met" } else { "NOT met" }
    );
}
