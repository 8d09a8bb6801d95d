//! The inference server's clients end to end, against `adyton server serve --tee sim` over real
//! sockets: `adyton_client::ServerClient` (verify, then metadata, infer, upload, delete), and the
//! commands built on it, `adyton attest server` and `adyton infer`. A refused server gets no
//! inference request, and `adyton infer` reads no input before the server is verified.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adyton_attest::Policy;
use adyton_client::{ClientError, ConnectOptions, InferTensor, ServerClient, Token};

use crate::support::{adyton, adyton_err, adyton_ok, ServerProcess};

const TOKEN: &str = "client-upload-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$PYTHON`, else the project's virtual environment (numpy, onnx), else `python3`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PYTHON") {
        return PathBuf::from(python);
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn python_ok(code: &str, dir: &Path) -> String {
    let out = Command::new(python())
        .args(["-c", code])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    _server: ServerProcess,
    /// `https://127.0.0.1:PORT`.
    url: String,
    /// This build's SIM measurement.
    measurement: String,
}

fn start_server() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let script = workspace().join("scripts/make_test_models.py");
    let out = Command::new(python())
        .arg(script)
        .arg(dir.join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_test_models.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
        .args(["--sim-key", "sim.key", "--token-file", "token"])
        .args(["--certificate-out", "printed.pem"])
        .args([
            "--model",
            "add=models/add.onnx",
            "--model",
            "multi=models/multi_io.onnx",
        ])
        .current_dir(&dir);
    let server = ServerProcess::start(command);
    let url = server.url.clone();
    let measure = adyton_ok(&["attest", "measure"], &dir);
    let measurement = String::from_utf8(measure.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    std::fs::write(
        dir.join("policy.toml"),
        format!("[sim]\nmeasurement = [\"{measurement}\"]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("other.toml"),
        format!("[sim]\nmeasurement = [\"{}\"]\n", "ab".repeat(48)),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        dir,
        _server: server,
        url,
        measurement,
    }
}

fn policy(s: &Setup) -> Policy {
    Policy::from_toml(&format!("[sim]\nmeasurement = [\"{}\"]\n", s.measurement)).unwrap()
}

fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> InferTensor {
    InferTensor::new(
        name,
        "FP32",
        shape,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn f32_values(tensor: &InferTensor) -> Vec<f32> {
    assert_eq!(tensor.datatype, "FP32");
    tensor
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn curl(args: &[&str], dir: &Path) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("curl runs")
}

/// The server's metrics, read with curl pinned to the certificate the server printed.
fn metrics(s: &Setup) -> String {
    let out = curl(
        &["--cacert", "printed.pem", &format!("{}/metrics", s.url)],
        &s.dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The count of successful inference requests of `model` in the metrics (0 when absent).
fn inference_successes(metrics: &str, model: &str) -> u64 {
    let prefix = format!("nv_inference_request_success{{model=\"{model}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn server_client_verifies_then_serves_metadata_inference_and_uploads() {
    let s = start_server();
    let client = ServerClient::connect(&s.url, policy(&s), ConnectOptions::default()).unwrap();
    let verified = client.verified();
    assert_eq!(verified.claims.tee, adyton_attest::TeeKind::Sim);
    assert!(verified.claims.insecure);
    assert_eq!(
        client.fresh_claims().map(|c| c.tee),
        Some(adyton_attest::TeeKind::Sim)
    );
    let printed = std::fs::read_to_string(s.dir.join("printed.pem")).unwrap();
    assert_eq!(client.certificate_pem(), printed);

    assert_eq!(client.server_metadata().unwrap()["name"], "adyton");
    let add = client.model_metadata("add").unwrap();
    assert_eq!(add.name, "add");
    let names: Vec<&str> = add.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(add.inputs[0].datatype, "FP32");
    assert_eq!(add.inputs[0].shape, [1, 3]);

    let outputs = client
        .infer(
            "add",
            &[
                f32_tensor("a", vec![1, 3], &[1., 2., 3.]),
                f32_tensor("b", vec![1, 3], &[4., 5., 6.]),
            ],
        )
        .unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "sum");
    assert_eq!(outputs[0].shape, [1, 3]);
    assert_eq!(f32_values(&outputs[0]), [5., 7., 9.]);

    let y = InferTensor::new(
        "y",
        "INT64",
        vec![3],
        [7i64, -1, 41]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    );
    let outputs = client
        .infer(
            "multi",
            &[f32_tensor("x", vec![2, 2], &[1., 2., 3., 4.]), y.clone()],
        )
        .unwrap();
    let by_name = |name: &str| outputs.iter().find(|o| o.name == name).unwrap();
    assert_eq!(f32_values(by_name("x_times_2")), [2., 4., 6., 8.]);
    assert_eq!(f32_values(by_name("x_total")), [10.]);
    let y_plus_1: Vec<i64> = by_name("y_plus_1")
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(y_plus_1, [8, 0, 42]);

    // Inputs are checked against the metadata before anything is sent; the error names them.
    let before = inference_successes(&metrics(&s), "multi");
    let wrong_type = InferTensor::new("y", "INT32", vec![3], vec![0; 12]);
    let e = client
        .infer(
            "multi",
            &[f32_tensor("x", vec![2, 2], &[0.; 4]), wrong_type],
        )
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidInput { reason, .. } if reason.contains("`y`")),
        "{e}"
    );
    let e = client
        .infer("multi", &[f32_tensor("x", vec![3, 2], &[0.; 6]), y])
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidInput { reason, .. } if reason.contains("`x` has shape")),
        "{e}"
    );
    assert_eq!(inference_successes(&metrics(&s), "multi"), before);

    // Upload and delete need the token.
    let onnx = std::fs::read(s.dir.join("models/dynamic_batch.onnx")).unwrap();
    let e = client.upload_model("mine", &onnx).unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidInput { what: "token", .. }),
        "{e}"
    );
    let with_token = ServerClient::connect(
        &s.url,
        policy(&s),
        ConnectOptions {
            token: Some(Token::new(TOKEN)),
            fresh_evidence: false,
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    assert!(with_token.fresh_claims().is_none());
    let uploaded = with_token.upload_model("mine", &onnx).unwrap();
    assert_eq!(uploaded["version"], "1", "{uploaded}");
    let mine = with_token.model_metadata("mine").unwrap();
    assert_eq!(mine.inputs[0].shape, [-1, 4]);
    let outputs = with_token
        .infer(
            "mine",
            &[f32_tensor(
                "x",
                vec![2, 4],
                &[1., 0., 0., 0., 0., 0., 1., 1.],
            )],
        )
        .unwrap();
    assert_eq!(outputs[0].shape, [2, 2]);
    assert_eq!(f32_values(&outputs[0]), [1.5, -1., 3.5, -1.]);
    with_token.delete_model("mine").unwrap();
    let e = with_token.model_metadata("mine").unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let wrong_token = ServerClient::connect(
        &s.url,
        policy(&s),
        ConnectOptions {
            token: Some(Token::new("not-the-token")),
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    let e = wrong_token.delete_model("add").unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
}

#[test]
fn a_refused_server_gets_no_inference_and_no_input_is_read() {
    let s = start_server();
    let other_build =
        Policy::from_toml(&format!("[sim]\nmeasurement = [\"{}\"]\n", "ab".repeat(48))).unwrap();
    let e = ServerClient::connect(&s.url, other_build, ConnectOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ClientError::Policy { reason } if reason.contains("measurement")),
        "{e:?}"
    );
    let tdx_only =
        Policy::from_toml(&format!("[tdx]\nmrtd = [\"{}\"]\n", "ab".repeat(48))).unwrap();
    let e = ServerClient::connect(&s.url, tdx_only, ConnectOptions::default()).unwrap_err();
    assert!(matches!(e, ClientError::Policy { .. }), "{e:?}");
    // Plain https is not accepted, nor http.
    let e = ServerClient::connect(
        &s.url.replace("https://", "http://"),
        policy(&s),
        ConnectOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::InvalidUrl { .. }), "{e:?}");

    // `adyton infer` under the wrong policy fails on the policy, before it opens its input.
    let out = adyton(
        &[
            "infer",
            &s.url,
            "add",
            "--policy",
            "other.toml",
            "--input",
            "a=does-not-exist.npy",
            "--input",
            "b=does-not-exist.json",
        ],
        &s.dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("policy denied the server"), "{stderr}");
    assert!(stderr.contains("measurement"), "{stderr}");
    assert!(!stderr.contains("does-not-exist"), "{stderr}");
    let out = adyton(
        &[
            "attest",
            "server",
            &s.url,
            "--policy",
            "other.toml",
            "--save-cert",
            "x.pem",
        ],
        &s.dir,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy denied the server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.dir.join("x.pem").exists());

    // No inference request reached the server.
    let metrics = metrics(&s);
    assert_eq!(inference_successes(&metrics, "add"), 0, "{metrics}");
    assert_eq!(inference_successes(&metrics, "multi"), 0, "{metrics}");
}

#[test]
fn attest_server_and_infer_commands() {
    let s = start_server();
    let out = adyton_ok(
        &[
            "attest",
            "server",
            &s.url,
            "--policy",
            "policy.toml",
            "--save-cert",
            "verified.pem",
        ],
        &s.dir,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("tee:           SIM"), "{stdout}");
    assert!(stdout.contains(&s.measurement), "{stdout}");
    assert!(stdout.contains("fresh evidence: verified"), "{stdout}");
    let printed = std::fs::read(s.dir.join("printed.pem")).unwrap();
    assert_eq!(std::fs::read(s.dir.join("verified.pem")).unwrap(), printed);
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&printed).unwrap();
    let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der));
    assert!(
        stdout.contains(&format!("certificate SHA-256: {sha}")),
        "{stdout}"
    );
    // curl pins the saved certificate.
    let ready = curl(
        &[
            "--cacert",
            "verified.pem",
            &format!("{}/v2/health/ready", s.url),
        ],
        &s.dir,
    );
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "{\"ready\":true}");
    let out = adyton_ok(
        &[
            "attest",
            "server",
            &s.url,
            "--policy",
            "policy.toml",
            "--no-nonce",
        ],
        &s.dir,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not asked (--no-nonce)"));
    // Collateral sources are asked only for the evidence that needs them: SIM needs none, so
    // unreachable ones change nothing.
    let out = adyton_ok(
        &[
            "attest",
            "server",
            &s.url,
            "--policy",
            "policy.toml",
            "--pccs-url",
            "http://127.0.0.1:1",
            "--kds-url",
            "http://127.0.0.1:1",
        ],
        &s.dir,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fresh evidence: verified"));

    // Inputs: .npy from numpy, JSON as an object or a nested array.
    python_ok(
        "import numpy as np\n\
         np.save('a.npy', np.array([[1, 2, 3]], dtype=np.float32))\n\
         np.save('x.npy', np.array([[1, 2], [3, 4]], dtype=np.float32))\n\
         np.save('y.npy', np.array([7, -1, 41], dtype=np.int64))\n\
         np.save('y32.npy', np.array([7, -1, 41], dtype=np.int32))\n\
         np.save('xf.npy', np.asfortranarray(np.array([[1, 2], [3, 4]], dtype=np.float32)))\n",
        &s.dir,
    );
    std::fs::write(
        s.dir.join("b.json"),
        r#"{"shape": [1, 3], "datatype": "FP32", "data": [4, 5, 6]}"#,
    )
    .unwrap();
    std::fs::write(s.dir.join("b_nested.json"), "[[4, 5, 6.5]]").unwrap();
    let infer = |extra: &[&str]| -> Output {
        let mut args = vec!["infer", s.url.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--policy", "policy.toml"]);
        adyton(&args, &s.dir)
    };
    let out = infer(&["add", "--input", "a=a.npy", "--input", "b=b.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["outputs"][0]["name"], "sum");
    assert_eq!(printed["outputs"][0]["shape"], serde_json::json!([1, 3]));
    assert_eq!(
        printed["outputs"][0]["data"],
        serde_json::json!([5.0, 7.0, 9.0])
    );

    let out = infer(&[
        "add",
        "--input",
        "a=a.npy",
        "--input",
        "b=b_nested.json",
        "-o",
        "sum.npy",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = python_ok(
        "import numpy as np; a = np.load('sum.npy'); print(a.dtype, a.shape, a.tolist())",
        &s.dir,
    );
    assert_eq!(loaded.trim(), "float32 (1, 3) [[5.0, 7.0, 9.5]]");

    let out = infer(&[
        "multi", "--input", "x=x.npy", "--input", "y=y.npy", "-o", "out.npz",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = python_ok(
        "import numpy as np\n\
         z = np.load('out.npz')\n\
         for k in sorted(z.files): print(k, z[k].dtype, z[k].shape, z[k].tolist())\n",
        &s.dir,
    );
    assert_eq!(
        loaded.trim(),
        "x_times_2 float32 (2, 2) [[2.0, 4.0], [6.0, 8.0]]\n\
         x_total float32 () 10.0\n\
         y_plus_1 int64 (3,) [8, 0, 42]"
    );
    let out = infer(&[
        "multi", "--input", "x=x.npy", "--input", "y=y.npy", "-o", "out.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.dir.join("out.json")).unwrap()).unwrap();
    assert_eq!(written["outputs"].as_array().unwrap().len(), 3);

    // Clear errors: several outputs to one .npy, a wrong dtype, Fortran order, a bad file, an
    // unknown input; the existing output is kept.
    let err = |extra: &[&str]| -> String {
        let out = infer(extra);
        assert!(!out.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&[
        "multi", "--input", "x=x.npy", "--input", "y=y.npy", "-o", "one.npy",
    ]);
    assert!(e.contains("3 outputs"), "{e}");
    assert!(!s.dir.join("one.npy").exists());
    let e = err(&["multi", "--input", "x=x.npy", "--input", "y=y32.npy"]);
    assert!(e.contains("`y` is INT32"), "{e}");
    let e = err(&["multi", "--input", "x=xf.npy", "--input", "y=y.npy"]);
    assert!(e.contains("xf.npy") && e.contains("Fortran"), "{e}");
    std::fs::write(s.dir.join("broken.npy"), b"\x93NUMPY\x01\x00\xff").unwrap();
    let e = err(&["add", "--input", "a=broken.npy", "--input", "b=b.json"]);
    assert!(e.contains("broken.npy"), "{e}");
    std::fs::write(s.dir.join("broken.json"), "[[1, 2], [3]]").unwrap();
    let e = err(&["add", "--input", "a=a.npy", "--input", "b=broken.json"]);
    assert!(e.contains("broken.json") && e.contains("ragged"), "{e}");
    let e = err(&["add", "--input", "a=a.npy", "--input", "c=b.json"]);
    assert!(e.contains("no input `c`"), "{e}");
    let e = err(&[
        "add", "--input", "a=a.npy", "--input", "b=b.json", "-o", "sum.npy",
    ]);
    assert!(e.contains("already exists"), "{e}");
}

/// A policy with `[nvidia_gpu]` makes `adyton attest server` (and `adyton infer`) verify the
/// server's GPUs: this SIM server attaches none, so a policy requiring them refuses it.
#[test]
fn attest_server_applies_the_policys_gpu_table() {
    let s = start_server();
    let sim = std::fs::read_to_string(s.dir.join("policy.toml")).unwrap();
    std::fs::write(
        s.dir.join("gpus-required.toml"),
        format!("{sim}[nvidia_gpu]\nrequired = true\n"),
    )
    .unwrap();
    std::fs::write(
        s.dir.join("gpus-if-any.toml"),
        format!("{sim}[nvidia_gpu]\n"),
    )
    .unwrap();

    let stderr = adyton_err(
        &["attest", "server", &s.url, "--policy", "gpus-required.toml"],
        &s.dir,
    );
    assert!(
        stderr.contains("GPUs are refused") && stderr.contains("nvidia_gpu.required"),
        "{stderr}"
    );
    let stderr = adyton_err(
        &[
            "infer",
            &s.url,
            "add",
            "--policy",
            "gpus-required.toml",
            "--input",
            "a=does-not-exist.json",
        ],
        &s.dir,
    );
    assert!(stderr.contains("nvidia_gpu.required"), "{stderr}");

    // No GPUs and no requirement: every attached GPU (none) verifies.
    let out = adyton_ok(
        &["attest", "server", &s.url, "--policy", "gpus-if-any.toml"],
        &s.dir,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fresh evidence: verified"));
    // The RIM directory is read before connecting.
    let stderr = adyton_err(
        &[
            "attest",
            "server",
            &s.url,
            "--policy",
            "gpus-if-any.toml",
            "--gpu-rims",
            "no-such-dir",
        ],
        &s.dir,
    );
    assert!(
        stderr.contains("cannot read the GPU RIMs in no-such-dir"),
        "{stderr}"
    );
}
