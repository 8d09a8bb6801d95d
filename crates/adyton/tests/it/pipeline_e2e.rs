//! The protected-model pipeline end to end, over real sockets (`design.md`, flows A and B): the key
//! broker, the registry and the inference server (SIM TEE) as processes; a real model published
//! encrypted; the server pulls it through attested key release and serves it; tritonclient gets
//! onnxruntime's outputs. Then the refusals: a policy that names another build, a blob with a range
//! of zeros, a truncated blob.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{adyton_ok, ServerProcess};

const PASSWORD: &str = "pipeline-test-admin-password";
const TOKEN: &str = "pipeline-test-write-token";
/// The smallest real model the suite uses (`real_models.rs`): a face embedding from npm.
const MODEL: &str = "fr_feature.onnx";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    crate::support::python_interpreter()
}

fn adyton(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .current_dir(dir)
        .env("ADYTON_SIM_KEY", dir.join("sim.key"))
        .env_remove("ADYTON_KBS_TOKEN");
    command
}

fn run_ok(mut command: Command, what: &str) -> String {
    let out: Output = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

fn curl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", "server.pem"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls a model's metadata until `done` says so, or fails after `limit`.
fn wait_for(
    dir: &Path,
    base: &str,
    model: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let meta: serde_json::Value =
            serde_json::from_str(&curl(dir, &[&format!("{base}/v2/models/{model}")])).unwrap();
        if done(&meta) {
            return meta;
        }
        assert!(
            started.elapsed() < limit,
            "model {model} did not settle: {meta}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn loaded(meta: &serde_json::Value) -> bool {
    meta["inputs"].is_array()
}

fn failed(meta: &serde_json::Value) -> bool {
    meta["state"] == "UNAVAILABLE"
}

struct Services {
    kbs: ServerProcess,
    registry: ServerProcess,
    good_policy: String,
    other_policy: String,
}

fn start_services(d: &Path) -> Services {
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    let kbs = ServerProcess::start(command);
    let mut login = adyton(d);
    login
        .args([
            "kbs",
            "login",
            "--url",
            &kbs.url,
            "--token-file",
            "kbs-token",
        ])
        .env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    run_ok(login, "adyton kbs login");
    let measurement =
        last_line(&String::from_utf8(adyton_ok(&["attest", "measure"], d).stdout).unwrap());
    let policy = |file: &str, measurement: &str| {
        std::fs::write(
            d.join(file),
            format!("[sim]\nmeasurement = [\"{measurement}\"]\n"),
        )
        .unwrap();
        let mut create = adyton(d);
        create
            .args(["kbs", "policy", "create", "--url", &kbs.url])
            .args(["--token-file", "kbs-token", "--file", file]);
        last_line(&run_ok(create, "adyton kbs policy create"))
    };
    let good_policy = policy("this-build.toml", &measurement);
    let other_policy = policy("other-build.toml", &"ab".repeat(48));
    let mut command = adyton(d);
    command.args([
        "registry",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "registry",
        "--token-file",
        "token",
    ]);
    let registry = ServerProcess::start(command);
    Services {
        kbs,
        registry,
        good_policy,
        other_policy,
    }
}

fn publish(d: &Path, s: &Services, model: &Path, policy: &str, id: &str) {
    let mut command = adyton(d);
    command
        .arg("model")
        .arg("publish")
        .arg(model)
        .args([
            "--registry",
            &s.registry.url,
            "--registry-token-file",
            "token",
        ])
        .args([
            "--kbs",
            &s.kbs.url,
            "--kbs-token-file",
            "kbs-token",
            "--policy",
            policy,
            "--id",
            id,
        ]);
    assert_eq!(last_line(&run_ok(command, "adyton model publish")), id);
}

fn start_server(d: &Path, s: &Services, extra: &[&str]) -> ServerProcess {
    let mut command = adyton(d);
    command
        .args([
            "server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tee",
            "sim",
            "--sim-key",
            "sim.key",
        ])
        .args([
            "--registry",
            &s.registry.url,
            "--token-file",
            "token",
            "--certificate-out",
            "server.pem",
        ])
        .args(extra);
    ServerProcess::start(command)
}

fn fetch_model() -> PathBuf {
    let fetched = Command::new(workspace().join("scripts/fetch_models"))
        .arg(MODEL)
        .env("PYTHON", python())
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "fetch_models: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    PathBuf::from(String::from_utf8(fetched.stdout).unwrap().trim())
}

#[test]
fn a_published_model_is_pulled_through_attested_key_release_and_refused_when_altered() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = fetch_model();
    let s = start_services(d);
    publish(d, &s, &model, &s.good_policy, "face");
    publish(d, &s, &model, &s.other_policy, "face-other-build");

    // 1. The server pulls both; this build's policy releases one key and not the other.
    let server = start_server(
        d,
        &s,
        &["--pull", "face=face", "--pull", "denied=face-other-build"],
    );
    let base = server.url.clone();
    let meta = wait_for(d, &base, "face", Duration::from_secs(300), loaded);
    assert_eq!(meta["parameters"]["source"]["registry"], "face");
    let denied = wait_for(d, &base, "denied", Duration::from_secs(120), failed);
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused the key") && reason.contains("measurement"),
        "{reason}"
    );
    // The failure is in readiness, and the server serves on.
    assert_eq!(
        curl(
            d,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{base}/v2/health/ready")
            ]
        ),
        "503"
    );
    let audit = std::fs::read_to_string(d.join("kbs/audit.jsonl")).unwrap();
    let denial = audit
        .lines()
        .filter(|l| l.contains("\"allowed\":false"))
        .find(|l| l.contains("measurement"))
        .unwrap_or_else(|| panic!("no denial in the audit log:\n{audit}"));
    assert!(denial.contains("SIM"), "{denial}");

    // 2. tritonclient, pinned to the server's certificate, gets onnxruntime's outputs.
    let out = Command::new(python())
        .arg(workspace().join("tests/models/compare.py"))
        .args([
            "--server",
            server.url.trim_start_matches("https://"),
            "--cert",
        ])
        .arg(d.join("server.pem"))
        .args(["--served-name", "face"])
        .arg(&model)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare.py:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains(&format!("{MODEL}: pass")), "{printed}");
    drop(server);

    // 3. The stored blob is altered on the registry's disk: zeros over a range, and (for a second
    //    copy) a truncation. After a restart, both are refused for integrity; nothing is served
    //    from them, and the server stays up with its other model.
    publish(d, &s, &model, &s.good_policy, "face-truncated");
    let blob = |id: &str| d.join("registry/blobs").join(id);
    let mut bytes = std::fs::read(blob("face")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 4096].fill(0);
    std::fs::write(blob("face"), &bytes).unwrap();
    let truncated = std::fs::read(blob("face-truncated")).unwrap();
    std::fs::write(
        blob("face-truncated"),
        &truncated[..truncated.len() * 2 / 3],
    )
    .unwrap();

    let server = start_server(
        d,
        &s,
        &[
            "--pull",
            "zeroed=face",
            "--pull",
            "truncated=face-truncated",
        ],
    );
    let base = server.url.clone();
    for name in ["zeroed", "truncated"] {
        let meta = wait_for(d, &base, name, Duration::from_secs(300), failed);
        let reason = meta["reason"].as_str().unwrap();
        assert!(
            reason.contains("integrity check failed"),
            "{name}: {reason}"
        );
        let infer = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                "server.pem",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                "{}",
            ])
            .arg(format!("{base}/v2/models/{name}/infer"))
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&infer.stdout),
            "503",
            "{name} must not be served"
        );
    }
    assert_eq!(
        curl(d, &[&format!("{base}/v2/health/live")]),
        "{\"live\":true}"
    );
}
