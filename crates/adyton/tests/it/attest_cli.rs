//! `adyton attest`: report, verify and measure through the binary.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{adyton, adyton_err, adyton_ok, server_exe};

fn adyton_sim(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adyton"))
        .args(args)
        .current_dir(dir)
        .env("ADYTON_SIM_KEY", dir.join("sim.key"))
        .output()
        .unwrap()
}

fn measurement(dir: &Path) -> String {
    let out = adyton_ok(&["attest", "measure"], dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().last().unwrap().to_string();
    assert_eq!(last.len(), 96, "{text}");
    assert!(last.bytes().all(|b| b.is_ascii_hexdigit()));
    last
}

#[test]
fn measure_prints_the_sha384_of_the_server_binary() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        // `adyton attest measure` is `adyton-server measure`: the TEE binary's measurement.
        let bytes = fs::read(server_exe()).unwrap();
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA384,
            &bytes,
        ))
    };
    assert_eq!(measurement(dir.path()), expected);
}

#[test]
fn sim_report_verifies_under_a_policy_that_pins_this_build() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = adyton_sim(
        &[
            "attest",
            "report",
            "--tee",
            "sim",
            "--report-data",
            "c0ffee",
            "-o",
            "ev.json",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSECURE"));

    fs::write(
        d.join("ok.toml"),
        format!("[sim]\nmeasurement = [\"{}\"]\n", measurement(d)),
    )
    .unwrap();
    let out = adyton_ok(
        &[
            "attest",
            "verify",
            "ev.json",
            "--policy",
            "ok.toml",
            "--expect-report-data",
            "c0ffee",
            "--json",
        ],
        d,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["policy"]["decision"], "allowed");
    assert_eq!(report["claims"]["tee"], "SIM");
    assert_eq!(report["claims"]["insecure"], true);

    fs::write(d.join("hw.toml"), "[tdx]\n[sgx]\n").unwrap();
    let stderr = adyton_err(&["attest", "verify", "ev.json", "--policy", "hw.toml"], d);
    assert!(stderr.contains("does not name SIM"), "{stderr}");

    fs::write(
        d.join("old.toml"),
        format!("[sim]\nmeasurement = [\"{}\"]\n", "ab".repeat(48)),
    )
    .unwrap();
    let stderr = adyton_err(&["attest", "verify", "ev.json", "--policy", "old.toml"], d);
    assert!(stderr.contains("sim.measurement"), "{stderr}");

    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "ev.json",
            "--expect-report-data",
            "c0ffef",
        ],
        d,
    );
    assert!(stderr.contains("report data mismatch"), "{stderr}");

    // Genuine, but SIM: without a policy naming SIM it is refused.
    let stderr = adyton_err(&["attest", "verify", "ev.json"], d);
    assert!(stderr.contains("[sim] table"), "{stderr}");

    // Times the RFC 3339 printer cannot show are refused, not a crash.
    for at in ["18446744073709551615", "999999999999"] {
        let stderr = adyton_err(&["attest", "verify", "ev.json", "--at", at], d);
        assert!(stderr.contains("year 9999"), "{stderr}");
    }
}

#[test]
fn tampered_or_garbage_evidence_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(adyton_sim(
        &[
            "attest",
            "report",
            "--tee",
            "sim",
            "--report-data",
            "01",
            "-o",
            "ev.json"
        ],
        d
    )
    .status
    .success());
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("ev.json")).unwrap()).unwrap();
    let quote = doc["quote"].as_str().unwrap().to_string();
    // Change one base64 character inside the report data.
    let mut chars: Vec<char> = quote.chars().collect();
    chars[110] = if chars[110] == 'A' { 'B' } else { 'A' };
    doc["quote"] = chars.into_iter().collect::<String>().into();
    fs::write(d.join("bad.json"), doc.to_string()).unwrap();
    let stderr = adyton_err(&["attest", "verify", "bad.json"], d);
    assert!(stderr.contains("bad signature"), "{stderr}");

    fs::write(d.join("junk.json"), b"\x00\x01random bytes").unwrap();
    let stderr = adyton_err(&["attest", "verify", "junk.json"], d);
    assert!(
        stderr.contains("junk.json") && stderr.contains("not Adyton evidence"),
        "{stderr}"
    );

    let stderr = adyton_err(&["attest", "verify", "ev.json", "--at", "yesterday-ish"], d);
    assert!(stderr.contains("RFC 3339"), "{stderr}");

    fs::write(d.join("typo.toml"), "[sim]\nmeasurment = []\n").unwrap();
    let stderr = adyton_err(&["attest", "verify", "ev.json", "--policy", "typo.toml"], d);
    assert!(
        stderr.contains("typo.toml") && stderr.contains("measurment"),
        "{stderr}"
    );
}

#[test]
fn auto_never_falls_back_to_sim() {
    let dir = tempfile::tempdir().unwrap();
    // This machine has neither Gramine nor configfs-tsm (tests run on hosts without TEE hardware).
    if Path::new("/dev/attestation").exists() || Path::new("/sys/kernel/config/tsm/report").exists()
    {
        return;
    }
    let out = adyton_sim(
        &["attest", "report", "--report-data", "00", "-o", "ev.json"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no TEE detected"), "{stderr}");
    assert!(!dir.path().join("ev.json").exists());
    assert!(!dir.path().join("sim.key").exists());
}

fn testdata(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn real_dcap_quotes_verify_from_vendor_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (quote, collateral) = (
        testdata("dcap/tdx_quote"),
        testdata("dcap/tdx_quote_collateral.json"),
    );
    let base = [
        "attest",
        "verify",
        "--tee",
        "tdx",
        "--quote",
        &quote,
        "--collateral",
        &collateral,
    ];

    let out = adyton_ok(
        &[&base[..], &["--at", "2025-07-01T00:00:00Z", "--json"]].concat(),
        d,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["claims"]["tee"], "TDX");
    assert_eq!(report["claims"]["tcb_status"], "UpToDate");
    let mrtd = report["claims"]["details"]["tdx"]["mrtd"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mrtd.starts_with("91eb2b44"), "{mrtd}");

    fs::write(d.join("ok.toml"), format!("[tdx]\nmrtd = [\"{mrtd}\"]\n")).unwrap();
    adyton_ok(
        &[&base[..], &["--at", "1751328000", "--policy", "ok.toml"]].concat(),
        d,
    );

    fs::write(
        d.join("bad.toml"),
        format!("[tdx]\nmrtd = [\"{}\"]\n", "00".repeat(48)),
    )
    .unwrap();
    let stderr = adyton_err(
        &[&base[..], &["--at", "1751328000", "--policy", "bad.toml"]].concat(),
        d,
    );
    assert!(stderr.contains("tdx.mrtd"), "{stderr}");

    let stderr = adyton_err(&[&base[..], &["--at", "2030-01-01T00:00:00Z"]].concat(), d);
    assert!(stderr.contains("collateral expired"), "{stderr}");

    // The SGX sample's TCB needs configuration and hardening: genuine, but refused by a strict policy.
    let sgx = [
        "attest",
        "verify",
        "--tee",
        "sgx",
        "--quote",
        &testdata("dcap/sgx_quote"),
        "--collateral",
        &testdata("dcap/sgx_quote_collateral.json"),
        "--at",
        "2025-07-01T00:00:00Z",
    ];
    let out = adyton_ok(&sgx, d);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ConfigurationAndSWHardeningNeeded"));
    fs::write(d.join("strict.toml"), "[sgx]\n").unwrap();
    let stderr = adyton_err(&[&sgx[..], &["--policy", "strict.toml"]].concat(), d);
    assert!(stderr.contains("TCB out of date"), "{stderr}");
}

#[test]
fn real_snp_report_verifies_from_vendor_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let report = testdata("snp/report_milan.hex");
    let vcek = testdata("snp/vcek_milan.der");
    let chain = testdata("snp/cert_chain_milan");
    let at = ["--at", "2025-01-01T00:00:00Z"];
    let base = [
        "attest", "verify", "--tee", "snp", "--report", &report, "--vcek", &vcek,
    ];

    let out = adyton_ok(
        &[&base[..], &at, &["--chain", &chain, "--json"]].concat(),
        d,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["claims"]["tee"], "SNP");
    assert!(json["claims"]["details"]["snp"]["measurement"]
        .as_str()
        .unwrap()
        .starts_with("7a1e5c26"));
    // Built-in AMD roots when no chain is given.
    adyton_ok(&[&base[..], &at].concat(), d);

    let hex_text = fs::read_to_string(&report).unwrap();
    fs::write(d.join("short.hex"), &hex_text[..hex_text.len() - 20]).unwrap();
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "snp",
            "--report",
            "short.hex",
            "--vcek",
            &vcek,
            "--at",
            "1735689600",
        ],
        d,
    );
    assert!(stderr.contains("malformed evidence"), "{stderr}");

    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "snp",
            "--report",
            &report,
            "--at",
            "1735689600",
        ],
        d,
    );
    assert!(stderr.contains("collateral missing"), "{stderr}");
}

/// The older flag names (`--pccs`, `--kds-product` with `--kds`) still work: hidden aliases of
/// the shared collateral flags.
#[test]
fn real_aws_vlek_report_verifies_with_only_its_vlek() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Stored as base64 text (testdata/snp/README.md); the command reads binary or hex.
    let text = fs::read_to_string(testdata("snp/report_aws_vlek_milan.b64")).unwrap();
    let report = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    fs::write(d.join("report.bin"), report).unwrap();
    let vlek = testdata("snp/vlek_aws_milan.pem");
    let base = [
        "attest",
        "verify",
        "--tee",
        "snp",
        "--report",
        "report.bin",
        "--vcek",
        &vlek,
        "--at",
    ];

    // No --chain: the ASVK is built in.
    let out = adyton_ok(
        &[&base[..], &["2024-01-01T00:00:00Z", "--json"]].concat(),
        d,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["claims"]["tee"], "SNP");
    assert!(json["claims"]["details"]["snp"]["measurement"]
        .as_str()
        .unwrap()
        .starts_with("25ac810f"));

    // A day after the VLEK's notAfter.
    let stderr = adyton_err(&[&base[..], &["2024-07-20T00:00:00Z"]].concat(), d);
    assert!(stderr.contains("collateral expired"), "{stderr}");
    assert!(stderr.contains("VLEK"), "{stderr}");
}

#[test]
fn real_nitro_documents_are_checked_from_vendor_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let document = testdata("nitro/valid-attestation-doc-bytes");
    let verify = |at: &str| -> String {
        adyton_err(
            &[
                "attest", "verify", "--tee", "nitro", "--report", &document, "--at", at,
            ],
            d,
        )
    };
    // Genuine at its time, but AWS's sample has no 64 bytes of user_data: no report data.
    let stderr = verify("2022-10-13T09:00:00Z");
    assert!(stderr.contains("user_data"), "{stderr}");
    // After its leaf certificate expired.
    let stderr = verify("2022-10-13T12:00:00Z");
    assert!(stderr.contains("collateral expired"), "{stderr}");
    // A flipped signature byte.
    let mut bytes = fs::read(&document).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(d.join("flipped"), &bytes).unwrap();
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "nitro",
            "--report",
            "flipped",
            "--at",
            "1665651600",
        ],
        d,
    );
    assert!(stderr.contains("bad signature"), "{stderr}");
}

#[test]
fn unreachable_collateral_services_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let quote = testdata("dcap/tdx_quote");
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "tdx",
            "--quote",
            &quote,
            "--pccs",
            "http://127.0.0.1:1",
            "--at",
            "1751328000",
        ],
        dir.path(),
    );
    assert!(
        stderr.contains("collateral source unreachable")
            && stderr.contains("GET http://127.0.0.1:1/"),
        "{stderr}"
    );

    let report = testdata("snp/report_milan.hex");
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "snp",
            "--report",
            &report,
            "--kds-product",
            "Milan",
            "--kds",
            "http://127.0.0.1:1",
            "--at",
            "1735689600",
        ],
        dir.path(),
    );
    assert!(
        stderr.contains("collateral source unreachable")
            && stderr.contains("GET http://127.0.0.1:1/vcek/"),
        "{stderr}"
    );

    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "snp",
            "--report",
            &report,
            "--kds-product",
            "Rome",
            "--at",
            "1735689600",
        ],
        dir.path(),
    );
    assert!(stderr.contains("Rome"), "{stderr}");
}

/// `adyton attest server` and `adyton infer` share the collateral flags and their environment
/// variables, and check them before connecting.
#[test]
fn client_collateral_flags_and_environment_are_checked_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("policy.toml"), "[sim]\n").unwrap();
    // Port 1 on loopback: were anything sent, the error would be a refused connection instead.
    let server = ["https://127.0.0.1:1", "--policy", "policy.toml"];

    let mut args = vec!["attest", "server"];
    args.extend(server);
    let with = |extra: &[&'static str]| [args.clone(), extra.to_vec()].concat();
    let stderr = adyton_err(&with(&["--pccs-url", "ftp://pccs.example"]), d);
    assert!(
        stderr.contains("not an http:// or https:// URL"),
        "{stderr}"
    );
    let stderr = adyton_err(&with(&["--collateral", "missing.json"]), d);
    assert!(stderr.contains("missing.json"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_adyton"))
        .args(["infer", server[0], "add"])
        .args(&server[1..])
        .args(["--input", "x=x.json"])
        .env("ADYTON_KDS_URL", "kds.example")
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("KDS URL `kds.example`"), "{stderr}");
}

/// `adyton attest verify` takes the collateral flags every verifier command takes, and fetches
/// from a PCS (here a local imitation serving the recorded collateral) or reads a bundle file.
#[test]
fn attest_verify_takes_the_shared_collateral_flags() {
    use crate::pcs_imitation::{Sample, Server};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let help = String::from_utf8(adyton_ok(&["attest", "verify", "--help"], d).stdout).unwrap();
    for flag in [
        "--collateral <FILE>",
        "--pccs-url <URL>",
        "--kds-url <URL>",
        "--collateral-cache-dir <DIR>",
        "--pccs-ca-file <FILE>",
        "ADYTON_PCCS_URL",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    for older in [
        "--pccs <",
        "--kds <",
        "--kds-product",
        "--collateral-cache <",
    ] {
        assert!(!help.contains(older), "{older}: {help}");
    }

    let sample = Sample::sgx();
    let server = Server::start(sample.routes());
    let quote = testdata("pccs/sgx_quote");
    let base = [
        "attest",
        "verify",
        "--tee",
        "sgx",
        "--quote",
        &quote,
        "--at",
        "2025-07-01T00:00:00Z",
    ];
    let url = server.url();
    let out = adyton_ok(
        &[
            &base[..],
            &[
                "--pccs-url",
                &url,
                "--collateral-cache-dir",
                "cache",
                "--json",
            ],
        ]
        .concat(),
        d,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["evidence"], "genuine", "{report}");
    assert_eq!(report["claims"]["tee"], "SGX");
    assert_eq!(report["collateral"]["origin"], "network");
    assert_eq!(report["collateral"]["source"], url.as_str());
    assert_eq!(
        report["collateral"]["key"]["platform"],
        format!("{}/processor", sample.fmspc())
    );
    assert_eq!(server.requests().len(), 4, "{:?}", server.requests());

    // The cache directory serves the next run with the PCS gone.
    drop(server);
    let out = adyton_ok(
        &[
            &base[..],
            &["--pccs-url", &url, "--collateral-cache-dir", "cache"],
        ]
        .concat(),
        d,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("collateral:    cache "), "{text}");
    // Without it, the PCS being gone is a clear error.
    let stderr = adyton_err(&[&base[..], &["--pccs-url", &url]].concat(), d);
    assert!(stderr.contains("collateral source unreachable"), "{stderr}");

    // A bundle file, through the flag and through the environment.
    let bundle = testdata("pccs/sgx_quote_collateral.json");
    let out = adyton_ok(&[&base[..], &["--collateral", &bundle]].concat(), d);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("collateral:    bundle {bundle}")),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_adyton"))
        .args(base)
        .env("ADYTON_COLLATERAL", &bundle)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The bundle's collateral has expired a month later: refused.
    let stderr = adyton_err(
        &[
            &base[..6],
            &["--at", "2025-08-20T00:00:00Z", "--collateral", &bundle],
        ]
        .concat(),
        d,
    );
    assert!(stderr.contains("collateral expired"), "{stderr}");
}

/// The nonce of the recorded Hopper report (`testdata/nvidia-gpu/README.md`).
const HOPPER_NONCE: &str = "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66";
/// The recorded GPU samples' fixed time, when their chains and NVIDIA's RIM signer are valid.
const GPU_RECORDED_AT: &str = "2025-06-01T00:00:00Z";

/// `adyton attest verify --tee nvidia-gpu` with the recorded report `report`, NVIDIA's chain of
/// the Hopper samples, `nonce`, and `extra` arguments.
fn verify_gpu(report: &str, nonce: Option<&str>, extra: &[&str], dir: &Path) -> String {
    let report = testdata(&format!("nvidia-gpu/{report}"));
    let chain = testdata("nvidia-gpu/hopperCertChain.txt");
    let mut args = vec![
        "attest",
        "verify",
        "--tee",
        "nvidia-gpu",
        "--report",
        &report,
        "--chain",
        &chain,
    ];
    if let Some(nonce) = nonce {
        args.extend(["--nonce", nonce]);
    }
    args.extend(extra);
    adyton_err(&args, dir)
}

#[test]
fn recorded_gpu_reports_are_checked_from_vendor_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let at = ["--at", GPU_RECORDED_AT];

    // Chain, signature and nonce verify; NVIDIA's recorded RIM is for driver 550.144.03, not
    // the report's 535.86.09: refused, naming the missing RIM.
    let rim = testdata("nvidia-gpu/NV_GPU_DRIVER_GH100_550.144.03.xml");
    let stderr = verify_gpu(
        "hopperAttestationReport.txt",
        Some(HOPPER_NONCE),
        &[&at[..], &["--rim", &rim]].concat(),
        d,
    );
    assert!(
        stderr.contains("collateral missing")
            && stderr.contains("the driver RIM for GH100 driver 535.86.09"),
        "{stderr}"
    );
    let out = adyton(
        &[
            "attest",
            "verify",
            "--tee",
            "nvidia-gpu",
            "--report",
            &testdata("nvidia-gpu/hopperAttestationReport.txt"),
            "--chain",
            &testdata("nvidia-gpu/hopperCertChain.txt"),
            "--nonce",
            HOPPER_NONCE,
            "--at",
            GPU_RECORDED_AT,
            "--json",
        ],
        d,
    );
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["evidence"], "refused");
    assert!(
        json["error"].as_str().unwrap().contains("535.86.09"),
        "{json}"
    );

    // The recorded RIM directory holds a RIM for 535.86.09 whose values were changed after
    // signing: a RIM that claims to be the reference and is not intact is refused, not skipped.
    let rims = testdata("nvidia-gpu");
    let stderr = verify_gpu(
        "hopperAttestationReport.txt",
        Some(HOPPER_NONCE),
        &[&at[..], &["--gpu-rims", &rims]].concat(),
        d,
    );
    assert!(stderr.contains("GPU report refused"), "{stderr}");
    assert!(!stderr.contains("collateral missing"), "{stderr}");

    // Another nonce: refused.
    let other = format!("00{}", &HOPPER_NONCE[2..]);
    let stderr = verify_gpu("hopperAttestationReport.txt", Some(&other), &at, d);
    assert!(
        stderr.contains("its nonce is not --nonce") && stderr.contains("report data mismatch"),
        "{stderr}"
    );

    // NVIDIA's report whose signature does not verify under the chain.
    let stderr = verify_gpu(
        "hopperAttestationReportInvalidSignature.txt",
        Some("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"),
        &at,
        d,
    );
    assert!(stderr.contains("bad signature"), "{stderr}");

    // A flipped byte in the signed part of the genuine report.
    let mut report = hex::decode(
        fs::read_to_string(testdata("nvidia-gpu/hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    // A byte of the first measurement's value.
    report[60] ^= 1;
    fs::write(d.join("flipped.bin"), &report).unwrap();
    let chain = testdata("nvidia-gpu/hopperCertChain.txt");
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "nvidia-gpu",
            "--report",
            "flipped.bin",
            "--chain",
            &chain,
            "--nonce",
            HOPPER_NONCE,
            "--at",
            GPU_RECORDED_AT,
        ],
        d,
    );
    assert!(stderr.contains("bad signature"), "{stderr}");

    // The nonce is required, and the chain.
    let stderr = verify_gpu("hopperAttestationReport.txt", None, &at, d);
    assert!(stderr.contains("needs --nonce HEX"), "{stderr}");
    let stderr = adyton_err(
        &[
            "attest",
            "verify",
            "--tee",
            "nvidia-gpu",
            "--report",
            &testdata("nvidia-gpu/hopperAttestationReport.txt"),
            "--nonce",
            HOPPER_NONCE,
        ],
        d,
    );
    assert!(stderr.contains("needs --chain"), "{stderr}");
    let stderr = verify_gpu("hopperAttestationReport.txt", Some("27a3"), &at, d);
    assert!(stderr.contains("is not 64 hex digits"), "{stderr}");
}

#[test]
fn composite_evidence_shows_each_gpus_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = adyton_sim(
        &[
            "attest",
            "report",
            "--tee",
            "sim",
            "--report-data",
            "c0ffee",
            "-o",
            "cpu.json",
        ],
        d,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The recorded Hopper report attached as GPU 0: genuine, but its nonce is NVIDIA's, not
    // the one derived from this evidence's report data.
    let mut evidence: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("cpu.json")).unwrap()).unwrap();
    let report = hex::decode(
        fs::read_to_string(testdata("nvidia-gpu/hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let chain = fs::read(testdata("nvidia-gpu/hopperCertChain.txt")).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    evidence["gpus"] = serde_json::json!([{
        "report": b64.encode(&report),
        "certificates": b64.encode(&chain),
    }]);
    fs::write(d.join("ev.json"), evidence.to_string()).unwrap();
    let sim = format!("[sim]\nmeasurement = [\"{}\"]\n", measurement(d));
    fs::write(d.join("sim.toml"), &sim).unwrap();
    fs::write(d.join("gpu.toml"), format!("{sim}[nvidia_gpu]\n")).unwrap();
    let at = ["--at", GPU_RECORDED_AT];

    // A policy without [nvidia_gpu] ignores GPUs; the output still shows what GPU 0 is.
    let out = adyton_ok(
        &[
            &["attest", "verify", "ev.json", "--policy", "sim.toml"],
            &at[..],
        ]
        .concat(),
        d,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("gpu 0:")
            && text.contains("REFUSED")
            && text.contains("report data mismatch"),
        "{text}"
    );
    let out = adyton_ok(
        &[
            &[
                "attest", "verify", "ev.json", "--policy", "sim.toml", "--json",
            ],
            &at[..],
        ]
        .concat(),
        d,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["gpus"][0]["index"], 0);
    assert_eq!(json["gpus"][0]["verified"], false);

    // Under [nvidia_gpu] the GPU must verify.
    let stderr = adyton_err(
        &[
            &["attest", "verify", "ev.json", "--policy", "gpu.toml"],
            &at[..],
        ]
        .concat(),
        d,
    );
    assert!(
        stderr.contains("policy denied the evidence") && stderr.contains("GPU 0"),
        "{stderr}"
    );
    // Without a policy, nothing attached may fail.
    let stderr = adyton_err(&[&["attest", "verify", "ev.json"], &at[..]].concat(), d);
    assert!(stderr.contains("GPU 0 refused"), "{stderr}");
}

#[test]
fn azure_containers_are_read_with_report() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b64 = base64::engine::general_purpose::STANDARD;
    let hcl = fs::read(testdata("azure-vtpm/hcl-report-snp.bin")).unwrap();
    let container = serde_json::json!({
        "format": "adyton-azure-vtpm-v1",
        "hcl_report": b64.encode(&hcl),
        "report_data": "00".repeat(64),
        "tpm_quote": {
            "message": b64.encode([0u8; 16]),
            "signature": b64.encode([0u8; 16]),
            "pcrs": {"0": "00".repeat(32)},
        },
    });
    fs::write(d.join("azure.json"), container.to_string()).unwrap();
    let verify = |tee: &str| {
        adyton_err(
            &[
                "attest",
                "verify",
                "--tee",
                tee,
                "--report",
                "azure.json",
                "--at",
                "1700000000",
            ],
            d,
        )
    };
    // The recorded SNP HCL report reaches the SNP checks, which need its chip's VCEK.
    let stderr = verify("azure-snp");
    assert!(stderr.contains("no VCEK certificate"), "{stderr}");
    // An SNP HCL report is not AZURE-TDX evidence.
    let stderr = verify("azure-tdx");
    assert!(
        stderr.contains("AZURE-TDX evidence whose HCL report"),
        "{stderr}"
    );
}

#[test]
fn attest_verify_help_names_every_tee_and_the_gpu_flags() {
    let dir = tempfile::tempdir().unwrap();
    let help =
        String::from_utf8(adyton_ok(&["attest", "verify", "--help"], dir.path()).stdout).unwrap();
    for text in [
        "sgx|tdx|snp|azure-snp|azure-tdx|nitro|nvidia-gpu",
        "--nonce <HEX>",
        "--rim <FILE>",
        "--gpu-rims <DIR>",
        "ADYTON_GPU_RIMS",
    ] {
        assert!(help.contains(text), "{text}: {help}");
    }
    let help =
        String::from_utf8(adyton_ok(&["attest", "server", "--help"], dir.path()).stdout).unwrap();
    assert!(help.contains("--gpu-rims <DIR>"), "{help}");
}
