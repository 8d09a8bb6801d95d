//! `adyton server serve` end to end, over real sockets: Adyton's attested TLS verifier accepts the
//! SIM server only under a policy that names this build, and the certificate it verified is then
//! pinned by clients that cannot verify attestation: curl and tritonclient, unchanged.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use adyton_attest::{Collateral, Policy};
use adyton_client::attested_tls::{client_config, AttestedServerVerifier};

use crate::support::{adyton_ok, ServerProcess};

const TOKEN: &str = "s3cret-upload-token";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes the test models into `dir` with scripts/make_test_models.py.
fn make_models(dir: &Path) {
    let interpreter = crate::support::python_interpreter();
    let script = workspace().join("scripts/make_test_models.py");
    let out = Command::new(&interpreter)
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_test_models.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    server: ServerProcess,
    /// `127.0.0.1:PORT`.
    addr: String,
}

fn start_server() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    make_models(&dir.join("models"));
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
        .args([
            "--sim-key",
            "sim.key",
            "--token-file",
            "token",
            "--certificate-out",
            "printed.pem",
        ])
        .args([
            "--model",
            "add=models/add.onnx",
            "--model",
            "multi=models/multi_io.onnx",
        ])
        .args(["--workers", "2"])
        .current_dir(&dir);
    let server = ServerProcess::start(command);
    let addr = server
        .url
        .strip_prefix("https://")
        .expect("an https URL")
        .to_owned();
    Setup {
        _dir: tmp,
        dir,
        server,
        addr,
    }
}

/// A SIM policy pinning this build's measurement (what `adyton attest measure` prints).
fn policy_for_this_build(dir: &Path) -> Policy {
    let out = adyton_ok(&["attest", "measure"], dir);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let measurement = stdout.lines().last().unwrap().trim().to_owned();
    Policy::from_toml(&format!("[sim]\nmeasurement = [\"{measurement}\"]\n")).unwrap()
}

/// One request over a connection that Adyton's verifier accepted; returns the verifier's record
/// and the raw HTTP answer.
fn attested_get(
    addr: &str,
    policy: Policy,
    path: &str,
) -> Result<(Arc<AttestedServerVerifier>, String), String> {
    let verifier = Arc::new(AttestedServerVerifier::new(policy, Collateral::none()));
    let config = client_config(Arc::clone(&verifier)).unwrap();
    let name = rustls_pki_types::ServerName::try_from("adyton.invalid").unwrap();
    let connection = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let request = format!("GET {path} HTTP/1.1\r\nHost: adyton\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok((verifier, answer))
}

fn curl(args: &[&str], dir: &Path) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("curl runs")
}

fn curl_ok(args: &[&str], dir: &Path) -> String {
    let out = curl(args, dir);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sim_server_is_verified_then_pinned_by_curl_and_tritonclient() {
    let s = start_server();
    assert!(
        s.server
            .startup
            .iter()
            .any(|l| l.contains("WARNING: tee = sim")),
        "no SIM warning: {:?}",
        s.server.startup
    );

    // Adyton's verifier: the evidence in the certificate, this build's measurement, the key.
    let (verifier, answer) =
        attested_get(&s.addr, policy_for_this_build(&s.dir), "/v2/health/ready")
            .expect("the attested connection is accepted");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"ready\":true}"), "{answer}");
    let verified = verifier.verified().expect("claims recorded");
    assert_eq!(verified.claims.tee, adyton_attest::TeeKind::Sim);
    let sha = hex::encode(verified.certificate_sha256);
    assert!(
        s.server.startup.iter().any(|l| l.contains(&sha)),
        "the server printed another certificate: {sha} vs {:?}",
        s.server.startup
    );
    // Pin what the verifier accepted: the certificate file the server wrote is checked to be
    // exactly that one first.
    use rustls_pki_types::pem::PemObject as _;
    let written =
        rustls_pki_types::CertificateDer::from_pem_file(s.dir.join("printed.pem")).unwrap();
    assert_eq!(written.as_ref(), verified.certificate_der.as_ref() as &[u8]);
    std::fs::copy(s.dir.join("printed.pem"), s.dir.join("verified.pem")).unwrap();

    let base = format!("https://{}", s.addr);
    let cacert = ["--cacert", "verified.pem"];
    // curl: health, metadata, infer, upload, delete.
    let ready = curl_ok(
        &[&cacert[..], &[&format!("{base}/v2/health/ready")]].concat(),
        &s.dir,
    );
    assert_eq!(ready, "{\"ready\":true}");
    let body = r#"{"id":"c1","inputs":[{"name":"a","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"b","shape":[1,3],"datatype":"FP32","data":[[4,5,6]]}]}"#;
    let inferred = curl_ok(
        &[
            &cacert[..],
            &["-d", body, &format!("{base}/v2/models/add/infer")],
        ]
        .concat(),
        &s.dir,
    );
    let v: serde_json::Value = serde_json::from_str(&inferred).unwrap();
    assert_eq!(v["id"], "c1");
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([5.0, 7.0, 9.0]));
    let auth = format!("Authorization: Bearer {TOKEN}");
    let uploaded = curl_ok(
        &[
            &cacert[..],
            &[
                "-H",
                &auth,
                "--data-binary",
                "@models/dynamic_batch.onnx",
                &format!("{base}/adyton/v1/models/mine"),
            ],
        ]
        .concat(),
        &s.dir,
    );
    assert!(uploaded.contains("\"version\":\"1\""), "{uploaded}");
    let meta = curl_ok(
        &[&cacert[..], &[&format!("{base}/v2/models/mine")]].concat(),
        &s.dir,
    );
    assert!(meta.contains("[-1,4]"), "{meta}");
    let refused = curl_ok(
        &[
            &cacert[..],
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
                &format!("{base}/adyton/v1/models/mine"),
            ],
        ]
        .concat(),
        &s.dir,
    );
    assert_eq!(refused, "401");
    let deleted = curl_ok(
        &[
            &cacert[..],
            &[
                "-H",
                &auth,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
                &format!("{base}/adyton/v1/models/mine"),
            ],
        ]
        .concat(),
        &s.dir,
    );
    assert_eq!(deleted, "200");
    // Without the pinned certificate, curl refuses the server (exit 60: certificate problem).
    let unpinned = curl(&[&format!("{base}/v2/health/live")], &s.dir);
    assert_eq!(
        unpinned.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&unpinned.stderr)
    );
    let metrics = curl_ok(
        &[&cacert[..], &[&format!("{base}/metrics")]].concat(),
        &s.dir,
    );
    assert!(
        metrics.contains("nv_inference_request_success{model=\"add\",version=\"1\"} 1"),
        "{metrics}"
    );

    // tritonclient, unchanged, pinned to the same certificate.
    let interpreter = crate::support::python_interpreter();
    let script = workspace().join("tests/clients/triton_client.py");
    let out = Command::new(&interpreter)
        .arg(script)
        .arg(&s.addr)
        .arg("verified.pem")
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tritonclient:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("ok   infer add binary=True")
            && printed.contains("ok   infer add binary=False"),
        "{printed}"
    );
}

#[test]
fn attested_connection_is_refused_under_another_policy_before_anything_is_sent() {
    let s = start_server();
    let other_build =
        Policy::from_toml(&format!("[sim]\nmeasurement = [\"{}\"]\n", "ab".repeat(48))).unwrap();
    let e = attested_get(&s.addr, other_build, "/v2/health/ready").unwrap_err();
    assert!(e.contains("measurement"), "{e}");
    let tdx_only =
        Policy::from_toml(&format!("[tdx]\nmrtd = [\"{}\"]\n", "ab".repeat(48))).unwrap();
    let e = attested_get(&s.addr, tdx_only, "/v2/health/ready").unwrap_err();
    assert!(!e.is_empty());
    // Fresh evidence over a nonce of the client's own.
    let pem = std::fs::read_to_string(s.dir.join("printed.pem")).unwrap();
    let base = format!("https://{}", s.addr);
    let nonce = "00112233445566778899aabbccddeeff";
    let evidence = curl_ok(
        &[
            "--cacert",
            "printed.pem",
            &format!("{base}/adyton/v1/attestation?nonce={nonce}"),
        ],
        &s.dir,
    );
    let parsed = adyton_attest::Evidence::from_json(evidence.as_bytes()).unwrap();
    assert_eq!(parsed.tee, adyton_attest::TeeKind::Sim);
    let short = curl_ok(
        &[
            "--cacert",
            "printed.pem",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/adyton/v1/attestation?nonce=00"),
        ],
        &s.dir,
    );
    assert_eq!(short, "400");
    drop(pem);
}

/// One TLS connection that Adyton's verifier accepted, for raw HTTP/1.1 bytes.
fn attested_stream(
    addr: &str,
    dir: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let verifier = Arc::new(AttestedServerVerifier::new(
        policy_for_this_build(dir),
        Collateral::none(),
    ));
    let config = client_config(verifier).unwrap();
    let name = rustls_pki_types::ServerName::try_from("adyton.invalid").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(connection, TcpStream::connect(addr).unwrap())
}

#[test]
fn a_truncated_body_is_a_400_and_the_server_serves_on() {
    let s = start_server();
    let mut tls = attested_stream(&s.addr, &s.dir);
    let partial = r#"{"inputs":[{"name":"a","shape":[1,3],"datatype":"FP32","data":[1,2"#;
    let head = format!(
        "POST /v2/models/add/infer HTTP/1.1\r\nHost: adyton\r\nContent-Length: 4096\r\n\r\n{partial}"
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.flush().unwrap();
    // The client gives up half-way: it closes its side of the connection.
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "a truncated body got: {answer}"
    );
    assert!(answer.contains("could not be read"), "{answer}");
    // The server is still up and serving.
    let base = format!("https://{}", s.addr);
    let live = curl_ok(
        &["--cacert", "printed.pem", &format!("{base}/v2/health/live")],
        &s.dir,
    );
    assert_eq!(live, "{\"live\":true}");
}

#[test]
fn serve_from_a_configuration_file_with_paths_relative_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let etc = dir.join("etc");
    make_models(&etc.join("models"));
    std::fs::write(etc.join("token"), TOKEN).unwrap();
    std::fs::write(
        etc.join("server.toml"),
        r#"
listen = "127.0.0.1:0"
tee = "sim"
sim_key = "sim.key"
token_file = "token"
certificate_out = "server.pem"
workers = 1
queue = 4

[[model]]
name = "dyn"
path = "models/dynamic_batch.onnx"
version = 7
"#,
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(["server", "serve", "--config", "etc/server.toml"])
        .current_dir(dir);
    let server = ServerProcess::start(command);
    let base = server.url.clone();
    let meta = curl_ok(
        &[
            "--cacert",
            "etc/server.pem",
            &format!("{base}/v2/models/dyn"),
        ],
        dir,
    );
    assert!(meta.contains("\"versions\":[\"7\"]"), "{meta}");
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.contains("model 'dyn' version 7")),
        "{:?}",
        server.startup
    );
}

#[test]
fn bad_configurations_are_refused_before_listening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_models(&dir.join("models"));
    std::fs::write(
        dir.join("typo.toml"),
        "listen = \"127.0.0.1:0\"\nworkerz = 2\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_adyton"))
            .args(["server", "serve"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--config", "typo.toml", "--tee", "sim", "--sim-key", "k"]);
    assert!(e.contains("workerz"), "{e}");
    let e = run(&["--tee", "sim", "--sim-key", "k"]);
    assert!(e.contains("--listen"), "{e}");
    let e = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tee",
        "sim",
        "--sim-key",
        "k",
        "--model",
        "det=models/unsupported_op.onnx",
    ]);
    assert!(e.contains("model 'det'") && e.contains("Det"), "{e}");
    assert!(!e.contains("listening on"), "{e}");
    let e = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tee",
        "sim",
        "--sim-key",
        "k",
        "--model",
        "nameonly",
    ]);
    assert!(e.contains("NAME=PATH"), "{e}");
    let e = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tee",
        "sim",
        "--sim-key",
        "k",
        "--token-file",
        "missing",
    ]);
    assert!(e.contains("token file"), "{e}");
    let e = run(&["--listen", "127.0.0.1:0", "--tee", "tdx"]);
    assert!(
        e.contains("TEE") || e.contains("tsm") || e.contains("attestation"),
        "{e}"
    );
}

/// The onnxruntime shared library, or a failure that says how to get it.
fn onnxruntime_library() -> PathBuf {
    adyton_server::runtime::onnxruntime::find_library().unwrap_or_else(|| {
        panic!(
            "the onnxruntime library is missing: run scripts/setup (it installs the onnxruntime \
             wheel into .venv), or set ADYTON_ONNXRUNTIME_LIBRARY"
        )
    })
}

/// dynamic_batch.onnx's answer for rows of x: y = x @ W + B.
fn dynamic_batch_rows(x: &[[f32; 4]]) -> Vec<f32> {
    x.iter()
        .flat_map(|[a, b, c, d]| [a + c + 2.0 * d + 0.5, b + c - d - 1.0])
        .collect()
}

fn infer_rows(base: &str, model: &str, x: &[[f32; 4]], dir: &Path) -> serde_json::Value {
    let body = serde_json::json!({"inputs": [{
        "name": "x", "shape": [x.len(), 4], "datatype": "FP32", "data": x,
    }]});
    let answer = curl_ok(
        &[
            "--cacert",
            "server.pem",
            "-d",
            &body.to_string(),
            &format!("{base}/v2/models/{model}/infer"),
        ],
        dir,
    );
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn onnxruntime_batching_and_shapes_compiled_ahead_from_the_file_and_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_models(&dir.join("models"));
    std::fs::write(
        dir.join("server.toml"),
        format!(
            r#"
listen = "127.0.0.1:0"
tee = "sim"
sim_key = "sim.key"
certificate_out = "server.pem"
workers = 2
onnxruntime_library = "{}"

[[model]]
name = "ort"
path = "models/dynamic_batch.onnx"
engine = "onnxruntime"
threads = 1

[[model]]
name = "batched"
path = "models/dynamic_batch.onnx"
max_batch_size = 8
max_queue_delay_us = 2000
input_shapes = [{{ x = [2, 4] }}, {{ x = [4, 4] }}]

[[model]]
name = "unknown"
path = "models/unknown_dim.onnx"
input_shapes = {{ x = [2, 1, 4] }}
"#,
            onnxruntime_library().display()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(["server", "serve", "--config", "server.toml"])
        .args(["--model", "pinned=models/dynamic_batch.onnx"])
        .args(["--input-shape", "pinned:x=3,4", "--threads", "1"])
        .args(["--model", "bare=models/unknown_dim.onnx"])
        .current_dir(dir);
    let server = ServerProcess::start(command);
    let startup = server.startup.join("\n");
    assert!(
        startup.contains("model 'ort' version 1")
            && startup.contains("engine onnxruntime, onnxruntime plan"),
        "{startup}"
    );
    assert!(
        startup.contains("model 'batched' version 1")
            && startup.contains("engine tract")
            && startup.contains("batches of up to 8 rows, 2000 µs queue delay"),
        "{startup}"
    );
    assert!(startup.contains("model 'pinned' version 1"), "{startup}");
    let base = server.url.clone();
    let meta = curl_ok(
        &["--cacert", "server.pem", &format!("{base}/v2/models/ort")],
        dir,
    );
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["parameters"]["engine"], "onnxruntime");
    assert_eq!(meta["parameters"]["plan"], "onnxruntime");
    let x = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]];
    let answer = infer_rows(&base, "ort", &x, dir);
    assert_eq!(answer["outputs"][0]["shape"], serde_json::json!([2, 2]));
    assert_eq!(
        answer["outputs"][0]["data"],
        serde_json::json!(dynamic_batch_rows(&x))
    );
    let meta = curl_ok(
        &[
            "--cacert",
            "server.pem",
            &format!("{base}/v2/models/batched"),
        ],
        dir,
    );
    assert!(
        meta.contains(r#""batching":{"max_batch_size":8,"max_queue_delay_us":2000}"#),
        "{meta}"
    );

    // Callers at once, of different batch sizes: each gets its own rows.
    let callers: Vec<_> = (0..6)
        .map(|caller| {
            let (base, dir) = (base.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                let rows: Vec<[f32; 4]> = (0..1 + caller % 3)
                    .map(|r| {
                        let v = (caller * 10 + r) as f32;
                        [v, v + 1.0, -v, 0.25 * v]
                    })
                    .collect();
                let answer = infer_rows(&base, "batched", &rows, &dir);
                assert_eq!(
                    answer["outputs"][0]["data"],
                    serde_json::json!(dynamic_batch_rows(&rows)),
                    "caller {caller}"
                );
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    // unknown_dim.onnx ([batch, ?, 4]) loads with no setting, a plan compiled per shape: ahead
    // for the shape listed, on first use for another.
    let plan_cache = |model: &str| {
        let meta = curl_ok(
            &[
                "--cacert",
                "server.pem",
                &format!("{base}/v2/models/{model}"),
            ],
            dir,
        );
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(meta["parameters"]["plan"], "optimized-per-shape", "{meta}");
        meta["parameters"]["plan_cache"]["compiled"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(plan_cache("unknown"), 1);
    assert_eq!(plan_cache("bare"), 0);
    let body = r#"{"inputs": [{"name": "x", "shape": [3, 1, 4], "datatype": "FP32",
        "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}]}"#;
    let answer = curl_ok(
        &[
            "--cacert",
            "server.pem",
            "-d",
            body,
            &format!("{base}/v2/models/bare/infer"),
        ],
        dir,
    );
    assert!(
        answer.contains("[2.0,4.0,6.0,8.0,10.0,12.0,14.0,16.0,18.0,20.0,22.0,24.0]"),
        "{answer}"
    );
    assert_eq!(plan_cache("bare"), 1);
    // A shape the graph cannot take (the squeezed axis is not 1) is a 400 that names the input.
    let refused = curl_ok(
        &[
            "--cacert",
            "server.pem",
            "-w",
            " %{http_code}",
            "-d",
            r#"{"inputs": [{"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}"#,
            &format!("{base}/v2/models/bare/infer"),
        ],
        dir,
    );
    assert!(
        refused.ends_with(" 400") && refused.contains("input 'x'"),
        "{refused}"
    );
    let pinned = infer_rows(&base, "pinned", &[[1.0, 1.0, 1.0, 1.0]; 3], dir);
    assert_eq!(pinned["outputs"][0]["shape"], serde_json::json!([3, 2]));
    let metrics = curl_ok(&["--cacert", "server.pem", &format!("{base}/metrics")], dir);
    for needle in [
        "nv_inference_count{model=\"batched\",version=\"1\"} 12",
        "nv_inference_exec_count{model=\"batched\",version=\"1\"}",
        "adyton_inference_batch_size_count{model=\"batched\",version=\"1\"}",
        "adyton_model_info{engine=\"onnxruntime\",model=\"ort\",plan=\"onnxruntime\",version=\"1\"} 1",
        "adyton_plan_cache_compiled_total{model=\"batched\",version=\"1\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
}

#[test]
fn bad_engine_batching_and_shape_settings_are_refused_before_listening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_models(&dir.join("models"));
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_adyton"))
            .args(["server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
            .args(["--sim-key", "k"])
            .args(extra)
            .env_remove(adyton_server::runtime::onnxruntime::LIBRARY_ENV)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!e.contains("listening on"), "{e}");
        e
    };
    let e = run(&[
        "--model",
        "m=models/dynamic_batch.onnx",
        "--input-shape",
        "m:x=-1,4",
    ]);
    assert!(e.contains("input 'x'") && e.contains("concrete"), "{e}");
    let e = run(&[
        "--model",
        "m=models/unknown_dim.onnx",
        "--input-shape",
        "m:z=2,1,4",
    ]);
    assert!(e.contains("model 'm'") && e.contains("input 'z'"), "{e}");
    let e = run(&[
        "--model",
        "m=models/unknown_dim.onnx",
        "--input-shape",
        "m:x=2,1,5",
    ]);
    assert!(e.contains("input 'x'") && e.contains("axis 2"), "{e}");
    let e = run(&["--model", "m=models/dynamic_batch.onnx", "--engine", "cuda"]);
    assert!(e.contains("unknown engine 'cuda'"), "{e}");
    let e = run(&[
        "--model",
        "m=models/dynamic_batch.onnx",
        "--engine",
        "onnxruntime",
    ]);
    assert!(
        e.contains("onnxruntime") && e.contains("ADYTON_ONNXRUNTIME_LIBRARY"),
        "{e}"
    );
    let e = run(&[
        "--model",
        "m=models/dynamic_batch.onnx",
        "--engine",
        "onnxruntime",
        "--onnxruntime-library",
        "no-such-library.so",
    ]);
    assert!(e.contains("no-such-library.so"), "{e}");
    std::fs::write(
        dir.join("server.toml"),
        "[[model]]\nname = \"add\"\npath = \"models/add.onnx\"\nmax_batch_size = 4\n",
    )
    .unwrap();
    let e = run(&["--config", "server.toml"]);
    assert!(
        e.contains("model 'add'") && e.contains("batch dimension"),
        "{e}"
    );
}
