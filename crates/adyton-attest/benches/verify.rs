//! Verifications per second on one core, for real SGX, TDX, SNP (VCEK and VLEK), Azure vTPM, AWS
//! Nitro and NVIDIA GPU evidence and for SIM, with the collateral parsed once and reused.
//! Adyton's DCAP verifier memoises the collateral's signature checks (`verifier::dcap_cache`),
//! which repeat from quote to quote; each quote's own signatures are verified every time. The
//! `dcap-qvl verify() alone` rows show the library without the memo. Run with
//! `cargo bench -p adyton-attest --bench verify`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::attester::Attester;
use adyton_attest::collateral::SnpCollateral;
use adyton_attest::gpu::attester::FakeRimSigner;
use adyton_attest::verifier::nitro::NitroVerifier;
use adyton_attest::{gpu, verifier, Collateral, Evidence, TeeKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

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

/// AZURE-SNP: the recorded samples come from different VMs (`testdata/azure-vtpm/README.md`), so
/// no recorded evidence passes `AzureVerifier` whole. The row runs the same steps on real bytes:
/// the container's JSON, the HCL report, its runtime data's hash, the AK's JWK, the vTPM quote's
/// RSA-2048 signature and PCR digest (recorded quote, recorded AK), and the SNP report under its
/// VCEK chain (the Milan report of `testdata/snp/`).
fn azure_rows(budget: Duration, snp_time: u64) {
    use adyton_attest::verifier::azure::{self, AzureEvidence, HclReport, RsaKey, TpmQuote};
    use std::collections::BTreeMap;

    let bytes = read("azure-vtpm/quote.bin");
    let le = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let signature = bytes[8..8 + le(0)].to_vec();
    let at = 8 + signature.len();
    let message = bytes[at + 8..at + 8 + le(at)].to_vec();
    let at = at + 8 + message.len();
    let pcrs: BTreeMap<u8, [u8; 32]> = (0..le(at))
        .map(|i| {
            let start = at + 8 + 32 * i;
            (i as u8, bytes[start..start + 32].try_into().unwrap())
        })
        .collect();
    let container = AzureEvidence {
        format: azure::FORMAT.into(),
        hcl_report: read("azure-vtpm/hcl-report-snp.bin"),
        report_data: [0; 64],
        tpm_quote: TpmQuote {
            message,
            signature,
            pcrs,
        },
        td_quote: None,
    }
    .to_json();
    // akpub.pem: SubjectPublicKeyInfo; the RSA modulus is the 256 bytes before `02 03 01 00 01`.
    let pem = String::from_utf8(read("azure-vtpm/akpub.pem")).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let ak = RsaKey {
        n: der[der.len() - 5 - 256..der.len() - 5].to_vec(),
        e: vec![1, 0, 1],
    };
    let report = hex::decode(
        String::from_utf8(read("snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let snp = Evidence {
        tee: TeeKind::Snp,
        quote: report,
        certificates: None,
        gpus: Vec::new(),
    };
    let collateral = Collateral {
        dcap: None,
        snp: Some(SnpCollateral {
            ark: None,
            ask: None,
            vcek: Some(read("snp/vcek_milan.der")),
        }),
    };
    let mut once = || {
        let doc = AzureEvidence::from_json(&container).unwrap();
        let hcl = HclReport::parse(&doc.hcl_report).unwrap();
        azure::check_runtime_data(&hcl, &hcl.hardware_report_data()).unwrap();
        hcl.attestation_key().unwrap();
        azure::verify_tpm_quote(&doc.tpm_quote, &ak).unwrap();
        verifier::verify(&snp, &collateral, snp_time).unwrap();
    };
    let (per_second, runs) = rate(budget, &mut once);
    println!(
        "| AZURE-SNP (HCL report, vTPM quote RSA-2048, SNP report; samples of different VMs) | {per_second:.0} | {:.3} | {runs} |",
        1000.0 / per_second
    );
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
                gpus: Vec::new(),
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
            gpus: Vec::new(),
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
    // AWS EC2: a VLEK-signed report carrying its VLEK in the certificate table, as configfs-tsm
    // gives it; the ASVK and ARK are built in (testdata/snp/README.md).
    let vlek_report = BASE64
        .decode(
            String::from_utf8(read("snp/report_aws_vlek_milan.b64"))
                .unwrap()
                .trim(),
        )
        .unwrap();
    let vlek_pem = String::from_utf8(read("snp/vlek_aws_milan.pem")).unwrap();
    let vlek_der = BASE64
        .decode(
            vlek_pem
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    // One entry (the VLEK GUID, offset, length), the all-zero terminator, then the certificate.
    let mut table = hex::decode("a8074bc2a25a483eaae639c045a0b8a1").unwrap();
    table.extend(48u32.to_le_bytes());
    table.extend(u32::try_from(vlek_der.len()).unwrap().to_le_bytes());
    table.extend([0; 24]);
    table.extend(&vlek_der);
    cases.push((
        "SNP (AWS Milan report, VLEK from the evidence)",
        Evidence {
            tee: TeeKind::Snp,
            quote: vlek_report,
            certificates: Some(table),
            gpus: Vec::new(),
        },
        Collateral::none(),
        1_704_067_200, // 2024-01-01T00:00:00Z, inside the VLEK's validity
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
    // NVIDIA GPU: the recorded Hopper report (NVIDIA's chain and signature) with a driver RIM
    // of its own measurements signed under a test root, since no recorded RIM matches its driver.
    // Each verification parses the report, checks the 5-certificate device chain and the
    // report's signature, then verifies the RIM (XML parse, C14N 1.1, digest, signature, its
    // 2-certificate chain) and compares 64 indices.
    {
        let report = hex::decode(
            String::from_utf8(read("nvidia-gpu/hopperAttestationReport.txt"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        let parsed = gpu::spdm::parse_report(&report).unwrap();
        let own: Vec<(u8, [u8; 48])> = (0u8..63)
            .filter_map(|i| {
                let value: [u8; 48] = parsed.measurement(i + 1)?.try_into().ok()?;
                (value != [0; 48]).then_some((i, value))
            })
            .collect();
        let signer = FakeRimSigner::new().unwrap();
        let rim = signer.rim("GH100", "535.86.09", &own).unwrap();
        let verifier = gpu::GpuVerifier::with_test_roots(
            gpu::NVIDIA_DEVICE_ROOT_PEM.as_bytes(),
            signer.root_pem().as_bytes(),
        )
        .unwrap()
        .with_rims([rim])
        .unwrap();
        let evidence = gpu::GpuEvidence {
            report: report.clone(),
            certificates: read("nvidia-gpu/hopperCertChain.txt"),
            rims: Vec::new(),
        };
        let nonce = parsed.nonce;
        let gpu_time = 1_748_736_000; // 2025-06-01T00:00:00Z
        verifier.verify(&evidence, &nonce, gpu_time).unwrap();
        let (per_second, runs) = rate(budget, || {
            verifier.verify(&evidence, &nonce, gpu_time).unwrap();
        });
        println!(
            "| NVIDIA GPU (Hopper report, device chain, driver RIM) | {per_second:.0} | {:.3} | {runs} |",
            1000.0 / per_second
        );
    }
    azure_rows(budget, snp_time);
    println!();
    let slowest = dcap_rates.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "Target: at least 1,000 DCAP verifications a second per core: slowest DCAP row {slowest:.0}/s -> {}",
        if slowest >= 1000.0 { "met" } else { "NOT met" }
    );
}
