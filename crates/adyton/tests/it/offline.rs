//! Flow D end to end with the SIM TEE: an offline device provisioned once by file through a real
//! `adyton kbs serve`, then served by `adyton server serve --state-dir` with no network at all;
//! the copied disk, another build, and tampered state refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{python_interpreter, ServerProcess};

const PASSWORD: &str = "trial-password-for-the-offline-test";

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// Runs `exe` (the adyton binary or a copy of it) with HOME inside `dir`, no proxy to anywhere
/// real, and `env`.
fn run_exe(exe: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(exe);
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env_remove("ADYTON_KBS_ADMIN_PASSWORD")
        .env_remove("ADYTON_KBS_TOKEN")
        .env_remove("ADYTON_STATE_DIR")
        .env_remove("ADYTON_SIM_KEY")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the adyton binary runs")
}

fn adyton() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_adyton"))
}

fn ok(dir: &Path, args: &[&str]) -> String {
    ok_with(&adyton(), dir, args)
}

fn ok_with(exe: &Path, dir: &Path, args: &[&str]) -> String {
    let out = run_exe(exe, dir, args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "adyton {args:?} failed: {stderr}");
    format!("{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

fn fails_with(exe: &Path, dir: &Path, args: &[&str]) -> String {
    let out = run_exe(exe, dir, args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "adyton {args:?} succeeded: {stderr}");
    stderr
}

fn fails(dir: &Path, args: &[&str]) -> String {
    fails_with(&adyton(), dir, args)
}

/// The provider's side: a key broker with a SIM transfer policy for `measurement`, the model key
/// imported under it, and the digits classifier encrypted under that key (v2, key id in its
/// header).
struct Provider {
    kbs: ServerProcess,
    key_id: String,
}

fn provider(d: &Path, measurements: &[&str]) -> Provider {
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command
        .env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)
        .env("HOME", d.join("home"));
    let kbs = ServerProcess::start(command);
    let out = run_exe(
        &adyton(),
        d,
        &["kbs", "login", "--url", &kbs.url],
        &[("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = measurements
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        d.join("policy.toml"),
        format!("[sim]\nmeasurement = [{list}]\n"),
    )
    .unwrap();
    let said = ok(
        d,
        &[
            "kbs",
            "policy",
            "create",
            "--url",
            &kbs.url,
            "--file",
            "policy.toml",
        ],
    );
    let policy_id = said
        .lines()
        .find(|l| l.trim().len() == 36)
        .unwrap()
        .trim()
        .to_owned();
    let key = crate::support::random_bytes(32);
    std::fs::write(d.join("model.key"), &key).unwrap();
    std::fs::set_permissions(d.join("model.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let said = ok(
        d,
        &[
            "kbs",
            "key",
            "create",
            "--url",
            &kbs.url,
            "--policy",
            &policy_id,
            "--import",
            "model.key",
        ],
    );
    let key_id = said
        .lines()
        .find(|l| l.trim().len() == 36)
        .unwrap()
        .trim()
        .to_owned();
    let digits = assets().join("digits.onnx");
    ok(
        d,
        &[
            "model",
            "encrypt",
            digits.to_str().unwrap(),
            "-o",
            "digits.enc",
            "--key",
            "model.key",
            "--key-id",
            &key_id,
            "--force",
        ],
    );
    Provider { kbs, key_id }
}

fn measure(exe: &Path, d: &Path) -> String {
    ok_with(exe, d, &["attest", "measure"])
        .lines()
        // The hex line, not the header (which may be 96 characters long too, depending on the
        // executable's path).
        .find(|l| l.trim().len() == 96 && l.trim().bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("a SHA-384 measurement")
        .trim()
        .to_owned()
}

/// `adyton server provision-request` on the device `state` with SIM key `sim_key`.
fn request(exe: &Path, d: &Path, state: &str, sim_key: &str, policy: &str, out: &str) -> String {
    ok_with(
        exe,
        d,
        &[
            "server",
            "provision-request",
            "--state-dir",
            state,
            "--tee",
            "sim",
            "--sim-key",
            sim_key,
            "--model",
            "digits",
            "--blob",
            "digits.enc",
            "--sealing",
            policy,
            "-o",
            out,
        ],
    )
}

fn transfer(d: &Path, url: &str, request: &str, response: &str) -> String {
    ok(
        d,
        &[
            "kbs",
            "transfer",
            "--offline",
            request,
            "-o",
            response,
            "--url",
            url,
        ],
    )
}

fn accept_args<'a>(state: &'a str, sim_key: &'a str, response: &'a str) -> Vec<&'a str> {
    vec![
        "server",
        "provision-accept",
        response,
        "--state-dir",
        state,
        "--tee",
        "sim",
        "--sim-key",
        sim_key,
    ]
}

/// Starts `exe server serve` on the device state with every proxy variable pointing at a closed
/// port, no registry and no key broker: the device has no network.
fn serve_offline(
    exe: &Path,
    d: &Path,
    state: &str,
    sim_key: &str,
    extra: &[&str],
) -> ServerProcess {
    let mut command = Command::new(exe);
    command
        .args([
            "server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tee",
            "sim",
            "--sim-key",
            sim_key,
            "--state-dir",
            state,
            "--certificate-out",
            "server.pem",
        ])
        .args(extra)
        .current_dir(d)
        .env("HOME", d.join("home"));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        command.env(var, "http://127.0.0.1:9");
    }
    ServerProcess::start(command)
}

fn curl(d: &Path, url: &str, data: Option<&str>) -> (u16, serde_json::Value) {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--cacert",
            "server.pem",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .current_dir(d);
    if let Some(body) = data {
        command.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = command.arg(url).output().expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    let status = status.trim().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// The model's entry (`GET /v2/models/NAME`): its metadata when loaded, its state and the reason
/// when it failed (and then its ready endpoint must say no).
fn model_state(d: &Path, url: &str, model: &str) -> (u16, serde_json::Value) {
    let answer = curl(d, &format!("{url}/v2/models/{model}"), None);
    if answer.1["state"] == "UNAVAILABLE" {
        let (ready, _) = curl(d, &format!("{url}/v2/models/{model}/ready"), None);
        assert_ne!(ready, 200, "a model that failed is not ready");
    }
    answer
}

/// Sixteen held-out digits: the pixels as a flat list.
fn digits_input() -> Vec<f32> {
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(assets().join("digits_test.json")).unwrap()).unwrap();
    test["pixels"].as_array().unwrap()[..16]
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect()
}

fn infer_digits(d: &Path, url: &str) -> (u16, serde_json::Value) {
    let pixels = digits_input();
    let body = serde_json::json!({
        "inputs": [{"name": "pixels", "shape": [16, 64], "datatype": "FP32", "data": pixels}],
    })
    .to_string();
    curl(d, &format!("{url}/v2/models/digits/infer"), Some(&body))
}

/// onnxruntime's outputs on the plaintext model, as {name: flat list}.
fn onnxruntime_digits(d: &Path) -> serde_json::Value {
    let pixels = serde_json::to_string(&digits_input()).unwrap();
    std::fs::write(d.join("pixels.json"), pixels).unwrap();
    let script = "import json, sys, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
        x = np.array(json.load(open('pixels.json')), dtype=np.float32).reshape(16, 64)\n\
        names = [o.name for o in s.get_outputs()]\n\
        outs = s.run(None, {'pixels': x})\n\
        print(json.dumps({n: np.asarray(o).ravel().tolist() for n, o in zip(names, outs)}))\n";
    let out = Command::new(python_interpreter())
        .args(["-c", script, assets().join("digits.onnx").to_str().unwrap()])
        .current_dir(d)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_outputs_match(adyton: &serde_json::Value, reference: &serde_json::Value) {
    let outputs = adyton["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2, "{adyton}");
    for output in outputs {
        let name = output["name"].as_str().unwrap();
        let ours: Vec<f64> = output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let theirs: Vec<f64> = reference[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{name}: {a} against onnxruntime's {b}"
            );
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Another build of the server, with another SIM measurement: `adyton` copied into a directory
/// beside a copy of `adyton-server` with bytes appended (the `adyton` copy runs the server
/// beside it). Returns the `adyton` copy.
fn another_build(d: &Path) -> PathBuf {
    let next = d.join("next");
    std::fs::create_dir_all(&next).unwrap();
    let adyton_copy = next.join("adyton");
    std::fs::copy(adyton(), &adyton_copy).unwrap();
    let mut bytes = std::fs::read(crate::support::server_exe()).unwrap();
    bytes.extend_from_slice(b"\0another build of the server\0");
    let server_copy = next.join("adyton-server");
    std::fs::write(&server_copy, bytes).unwrap();
    for copy in [&adyton_copy, &server_copy] {
        std::fs::set_permissions(copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    adyton_copy
}

#[test]
fn offline_device_is_provisioned_by_file_and_serves_with_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let measurement = measure(&adyton(), d);
    let provider = provider(d, &[&measurement]);

    // 1. On the device: the request.
    let said = request(
        &adyton(),
        d,
        "device",
        "device-a.key",
        "exact-build",
        "request.json",
    );
    assert!(said.contains("wrote provisioning request"), "{said}");
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("request.json")).unwrap()).unwrap();
    assert_eq!(request["key_id"], provider.key_id.as_str());
    assert_eq!(request["tee"], "SIM");
    assert_eq!(request["model"], "digits");

    // 2. At the provider: the offline transfer, audited.
    transfer(d, &provider.kbs.url, "request.json", "response.json");
    let audit = std::fs::read_to_string(d.join("kbs/audit.jsonl")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains(request["request_id"].as_str().unwrap()))
        .expect("the offline transfer is in the audit log");
    assert!(line.contains("\"allowed\":true"), "{line}");
    drop(provider);

    // 3. On the device: accept. The provisioning key pair is gone; nothing is plaintext.
    let said = ok(d, &accept_args("device", "device-a.key", "response.json"));
    assert!(said.contains("model digits provisioned"), "{said}");
    assert_eq!(
        std::fs::read_dir(d.join("device/requests"))
            .unwrap()
            .count(),
        0
    );
    let plaintext = std::fs::read(assets().join("digits.onnx")).unwrap();
    let model_key = std::fs::read(d.join("model.key")).unwrap();
    for file in files_under(&d.join("device")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(model_key.len())
                .any(|w| w == model_key.as_slice())
                && !bytes.windows(64).any(|w| w == &plaintext[..64]),
            "{} holds plaintext",
            file.display()
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", file.display());
    }

    // A replayed response is refused, and changes nothing.
    let refused = fails(d, &accept_args("device", "device-a.key", "response.json"));
    assert!(refused.contains("already accepted"), "{refused}");

    // 4. The server restarts with no network and serves the model; 5. as onnxruntime computes it.
    let server = serve_offline(&adyton(), d, "device", "device-a.key", &[]);
    let (status, answer) = infer_digits(d, &server.url);
    assert_eq!(status, 200, "{answer}");
    assert_outputs_match(&answer, &onnxruntime_digits(d));
    let (_, metadata) = model_state(d, &server.url, "digits");
    assert_eq!(
        metadata["parameters"]["source"]["sealed"], "digits",
        "{metadata}"
    );
}

#[test]
fn copied_disk_and_other_builds_are_refused_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let next = another_build(d);
    let measurement = measure(&adyton(), d);
    let next_measurement = measure(&next, d);
    assert_ne!(measurement, next_measurement);
    let provider = provider(d, &[&measurement]);

    for (state, policy) in [("exact", "exact-build"), ("signer", "signer")] {
        let out = format!("{state}-request.json");
        let response = format!("{state}-response.json");
        request(&adyton(), d, state, "device-a.key", policy, &out);
        transfer(d, &provider.kbs.url, &out, &response);
        ok(d, &accept_args(state, "device-a.key", &response));
    }
    drop(provider);

    // The disk copied to a second device (another SIM identity): nothing unseals.
    for state in ["exact", "signer"] {
        let copy = format!("{state}-copy");
        copy_dir(&d.join(state), &d.join(&copy));
        let server = serve_offline(&adyton(), d, &copy, "device-b.key", &[]);
        let (status, answer) = model_state(d, &server.url, "digits");
        assert_unavailable(&answer, status);
        let reason = answer["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("cannot unseal the key of model `digits`"),
            "{answer}"
        );
        let (status, _) = infer_digits(d, &server.url);
        assert_ne!(status, 200);
    }

    // Another build on the same device: refused under exact-build, served under signer.
    let server = serve_offline(&next, d, "exact", "device-a.key", &[]);
    let (status, answer) = model_state(d, &server.url, "digits");
    assert_unavailable(&answer, status);
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exact-build"),
        "{answer}"
    );
    drop(server);
    let server = serve_offline(&next, d, "signer", "device-a.key", &[]);
    let (status, answer) = infer_digits(d, &server.url);
    assert_eq!(status, 200, "{answer}");
    assert_outputs_match(&answer, &onnxruntime_digits(d));
}

#[test]
fn tampered_state_and_foreign_responses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let measurement = measure(&adyton(), d);
    let provider = provider(d, &[&measurement]);

    // Two requests pending on one device; each response opens only its own.
    request(
        &adyton(),
        d,
        "device",
        "device-a.key",
        "exact-build",
        "first.json",
    );
    transfer(d, &provider.kbs.url, "first.json", "first-response.json");
    request(
        &adyton(),
        d,
        "other",
        "device-b.key",
        "exact-build",
        "second.json",
    );
    transfer(d, &provider.kbs.url, "second.json", "second-response.json");
    drop(provider);

    // A response made for another device's request names a request not pending here.
    let refused = fails(
        d,
        &accept_args("device", "device-a.key", "second-response.json"),
    );
    assert!(refused.contains("is pending on this device"), "{refused}");
    // A response relabelled with this device's request id does not match that request.
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("second-response.json")).unwrap()).unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("first.json")).unwrap()).unwrap();
    forged["request_id"] = first["request_id"].clone();
    std::fs::write(d.join("forged.json"), forged.to_string()).unwrap();
    let refused = fails(d, &accept_args("device", "device-a.key", "forged.json"));
    assert!(refused.contains("made for another request"), "{refused}");
    // And with its public key hash too: the wrapped key does not open with this request's key.
    forged["public_key_sha256"] = serde_json::Value::Null;
    let first_response: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("first-response.json")).unwrap()).unwrap();
    forged["public_key_sha256"] = first_response["public_key_sha256"].clone();
    std::fs::write(d.join("forged.json"), forged.to_string()).unwrap();
    let refused = fails(d, &accept_args("device", "device-a.key", "forged.json"));
    assert!(refused.contains("made for another request"), "{refused}");
    // The genuine response still works after those attempts.
    ok(
        d,
        &accept_args("device", "device-a.key", "first-response.json"),
    );

    // A second model, plain, served beside the sealed one: the tampered model never takes it down.
    let plain = assets().join("digits.onnx");
    let plain_model = format!("plain={}", plain.display());
    let record_path = d.join("device/models/digits.json");
    let record_bytes = std::fs::read(&record_path).unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record_bytes).unwrap();
    let blob_path = d
        .join("device/blobs")
        .join(record["blob_sha256"].as_str().unwrap());
    let blob_bytes = std::fs::read(&blob_path).unwrap();

    // A flipped byte of the sealed key.
    let mut tampered = record.clone();
    let mut sealed = base64_decode(record["sealed_key"].as_str().unwrap());
    let middle = sealed.len() / 2;
    sealed[middle] ^= 0x01;
    tampered["sealed_key"] = base64_encode(&sealed).into();
    std::fs::write(&record_path, tampered.to_string()).unwrap();
    assert_refused_beside_plain(d, &plain_model, "cannot unseal the key of model `digits`");
    std::fs::write(&record_path, &record_bytes).unwrap();

    // A record edited to another sealing policy (authenticated: it does not unseal either).
    let mut tampered = record.clone();
    tampered["sealing_policy"] = "signer".into();
    std::fs::write(&record_path, tampered.to_string()).unwrap();
    assert_refused_beside_plain(d, &plain_model, "cannot unseal the key of model `digits`");
    std::fs::write(&record_path, &record_bytes).unwrap();

    // A zeroed range of the stored blob.
    let mut zeroed = blob_bytes.clone();
    let end = zeroed.len() - 20;
    zeroed[end - 200..end].fill(0);
    std::fs::write(&blob_path, &zeroed).unwrap();
    assert_refused_beside_plain(d, &plain_model, "does not open with the model key");
    // A truncated blob.
    std::fs::write(&blob_path, &blob_bytes[..blob_bytes.len() / 2]).unwrap();
    assert_refused_beside_plain(d, &plain_model, "does not open with the model key");
    // A missing blob.
    std::fs::remove_file(&blob_path).unwrap();
    assert_refused_beside_plain(d, &plain_model, "is missing from the state directory");
    std::fs::write(&blob_path, &blob_bytes).unwrap();

    // Restored, it serves again.
    let server = serve_offline(&adyton(), d, "device", "device-a.key", &[]);
    let (status, answer) = infer_digits(d, &server.url);
    assert_eq!(status, 200, "{answer}");
}

/// Serves the device's state beside a plain model: the sealed model is refused with `reason`,
/// the plain model keeps serving.
fn assert_refused_beside_plain(d: &Path, plain_model: &str, reason: &str) {
    let server = serve_offline(
        &adyton(),
        d,
        "device",
        "device-a.key",
        &["--model", plain_model],
    );
    let (status, answer) = model_state(d, &server.url, "digits");
    assert_unavailable(&answer, status);
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(reason),
        "{answer}"
    );
    let (status, _) = curl(d, &format!("{}/v2/models/plain/ready", server.url), None);
    assert_eq!(status, 200);
    let pixels = digits_input();
    let body = serde_json::json!({
        "inputs": [{"name": "pixels", "shape": [16, 64], "datatype": "FP32", "data": pixels}],
    })
    .to_string();
    let (status, answer) = curl(
        d,
        &format!("{}/v2/models/plain/infer", server.url),
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn tdx_refuses_offline_mode_and_explains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("digits.enc"), b"not used").unwrap();
    let refused = fails(
        d,
        &[
            "server",
            "provision-request",
            "--state-dir",
            "device",
            "--tee",
            "tdx",
            "--model",
            "digits",
            "--blob",
            "digits.enc",
            "-o",
            "request.json",
        ],
    );
    assert!(refused.contains("TDX has no sealing key"), "{refused}");
    assert!(refused.contains("online key release"), "{refused}");
    assert!(!d.join("request.json").exists());
    assert!(
        !d.join("device").exists(),
        "nothing is written before the refusal"
    );
    // A TDX server refuses to serve sealed models, before it listens, with the same reason.
    let refused = fails(
        d,
        &[
            "server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tee",
            "tdx",
            "--state-dir",
            "device",
        ],
    );
    assert!(refused.contains("TDX has no sealing key"), "{refused}");
    assert!(!d.join("device").exists());
}

/// A model that failed to load: listed as UNAVAILABLE with its reason, and not ready.
fn assert_unavailable(answer: &serde_json::Value, status: u16) {
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "UNAVAILABLE", "{answer}");
}
