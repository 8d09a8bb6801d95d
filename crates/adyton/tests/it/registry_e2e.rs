//! `adyton registry serve`, `adyton kbs serve` and `adyton model publish` end to end over real
//! sockets on 127.0.0.1; then the CNAP-style Python model provider client
//! (`tests/reference/cnap_model_provider.py`) fetches the info, downloads the blob, gets the key
//! through the KBS transfer with SIM evidence, decrypts with the v1 reader, and must obtain the
//! original file byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{adyton_ok, ServerProcess};

const PASSWORD: &str = "trial-password-for-the-registry-test";
const REGISTRY_TOKEN: &str = "registry-write-token-for-the-test";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    crate::support::python_interpreter()
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

fn adyton(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .current_dir(dir)
        .env("ADYTON_SIM_KEY", dir.join("sim.key"))
        .env_remove("ADYTON_KBS_TOKEN");
    command
}

fn publish(dir: &Path, kbs: &str, registry: &str, policy: &str, extra: &[&str]) -> Output {
    let mut command = adyton(dir);
    command
        .args(["model", "publish", "model.onnx", "--registry", registry])
        .args(["--registry-token-file", "registry-token", "--kbs", kbs])
        .args(["--kbs-token-file", "kbs-token", "--policy", policy])
        .args(extra);
    command.output().unwrap()
}

#[test]
fn published_models_are_fetched_and_decrypted_by_a_cnap_style_client() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut make = Command::new(python());
    make.arg(workspace().join("scripts/make_model.py"))
        .arg(d.join("model.onnx"))
        .args(["--hidden", "64"]);
    run_ok(make, "make_model.py");
    let original = std::fs::read(d.join("model.onnx")).unwrap();
    std::fs::write(d.join("registry-token"), format!("{REGISTRY_TOKEN}\n")).unwrap();

    // The key broker, an operator's token, a SIM policy pinned to this build.
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
    std::fs::write(
        d.join("policy.toml"),
        format!("[sim]\nmeasurement = [\"{measurement}\"]\n"),
    )
    .unwrap();
    let mut create = adyton(d);
    create
        .args(["kbs", "policy", "create", "--url", &kbs.url])
        .args(["--token-file", "kbs-token", "--file", "policy.toml"]);
    let policy = last_line(&run_ok(create, "adyton kbs policy create"));

    // The registry.
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args([
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "registry",
        ])
        .args(["--token-file", "registry-token"])
        .current_dir(d);
    let registry = ServerProcess::start(command);
    assert!(
        registry.url.starts_with("http://127.0.0.1:"),
        "{}",
        registry.url
    );

    // v1: the CNAP model provider client gets the original file back.
    let out = publish(
        d,
        &kbs.url,
        &registry.url,
        &policy,
        &["--format", "v1", "--id", "mlp-v1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_line(&String::from_utf8(out.stdout).unwrap()), "mlp-v1");
    let mut provider = Command::new(python());
    provider
        .arg(workspace().join("tests/reference/cnap_model_provider.py"))
        .args(["--registry", &registry.url, "--model", "mlp-v1"])
        .args([
            "--adyton",
            env!("CARGO_BIN_EXE_adyton"),
            "-o",
            "fetched-v1.onnx",
        ])
        .current_dir(d)
        .env("ADYTON_SIM_KEY", d.join("sim.key"));
    assert_eq!(
        last_line(&run_ok(provider, "cnap_model_provider.py")),
        "mlp-v1"
    );
    assert!(std::fs::read(d.join("fetched-v1.onnx")).unwrap() == original);

    // v2 (the default): the info names the format, and the key from the KBS transfer opens it.
    let out = publish(
        d,
        &kbs.url,
        &registry.url,
        &policy,
        &["--name", "mlp", "--version", "2"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = last_line(&String::from_utf8(out.stdout).unwrap());
    assert!(id.starts_with("model-"), "{id}");
    let client = adyton_client::RegistryClient::new(&registry.url).unwrap();
    let info = client.get_info(&id).unwrap();
    assert_eq!(info.format.as_deref(), Some("v2"));
    assert_eq!(info.name.as_deref(), Some("mlp"));
    assert_eq!(info.version.as_deref(), Some("2"));
    assert_eq!(info.encrypted, Some(true));
    assert_eq!(info.framework.as_deref(), Some("onnx"));
    let key_id = info.key_id.clone().unwrap();
    assert_eq!(
        info.kbs_url.as_deref(),
        Some(format!("{}/kbs/v1/keys/{key_id}/transfer", kbs.url).as_str())
    );
    let mut blob = std::fs::File::create(d.join("model.v2")).unwrap();
    client
        .download_url(info.url.as_deref().unwrap(), &mut blob)
        .unwrap();
    let mut transfer = Command::new(python());
    transfer
        .arg(workspace().join("tests/reference/cnap_kbs_client.py"))
        .args(["--url", &kbs.url, "transfer", "--key-id", &key_id])
        .args(["--adyton", env!("CARGO_BIN_EXE_adyton")])
        .current_dir(d)
        .env("ADYTON_SIM_KEY", d.join("sim.key"));
    let key_hex = last_line(&run_ok(transfer, "cnap_kbs_client.py transfer"));
    assert!(
        !stderr.to_ascii_lowercase().contains(&key_hex),
        "the key was printed"
    );
    std::fs::write(d.join("model.key"), hex::decode(&key_hex).unwrap()).unwrap();
    adyton_ok(
        &[
            "model",
            "decrypt",
            "model.v2",
            "-o",
            "fetched-v2.onnx",
            "--key",
            "model.key",
        ],
        d,
    );
    assert!(std::fs::read(d.join("fetched-v2.onnx")).unwrap() == original);

    // A failed upload (wrong registry token) undoes the KBS key and leaves nothing behind.
    std::fs::write(d.join("registry-token"), "wrong\n").unwrap();
    let out = publish(d, &kbs.url, &registry.url, &policy, &["--id", "refused"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deleted the KBS key"), "{stderr}");
    let mut keys = adyton(d);
    keys.args([
        "kbs",
        "key",
        "list",
        "--url",
        &kbs.url,
        "--token-file",
        "kbs-token",
        "--json",
    ]);
    let keys: serde_json::Value =
        serde_json::from_str(&run_ok(keys, "adyton kbs key list")).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    assert_eq!(client.list().unwrap().len(), 2);
}
