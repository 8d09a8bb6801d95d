//! `adyton kbs login|policy|key` against `adyton kbs serve` over a real socket on 127.0.0.1.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::{adyton_ok, ServerProcess};

const PASSWORD: &str = "trial-password-for-the-client-test";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

/// Runs `adyton` with a clean client environment (HOME inside `dir`) plus `env`.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env_remove("ADYTON_KBS_ADMIN_PASSWORD")
        .env_remove("ADYTON_KBS_TOKEN")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the adyton binary runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args, &[]);
    assert!(
        out.status.success(),
        "adyton {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(dir, args, env);
    assert!(!out.status.success(), "adyton {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap().trim().to_owned()
}

#[test]
fn operator_manages_policies_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    let server = ServerProcess::start(command);
    let url = server.url.as_str();

    // Login: password from the environment, token in $HOME/.config/adyton/kbs-token, mode 0600.
    let out = run(
        d,
        &["kbs", "login", "--url", url],
        &[("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = d.join("home/.config/adyton/kbs-token");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains(&token_file.display().to_string()), "{said}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(!said.contains(token.trim()), "the token was printed");

    // A SIM policy pinned to this build, from a policy file.
    let measure = adyton_ok(&["attest", "measure"], d);
    let measurement = last_line(&String::from_utf8(measure.stdout).unwrap());
    let policy_path = d.join("policy.toml");
    std::fs::write(
        &policy_path,
        format!("[sim]\nmeasurement = [\"{measurement}\"]\n"),
    )
    .unwrap();
    let created = ok(
        d,
        &[
            "kbs",
            "policy",
            "create",
            "--url",
            url,
            "--file",
            "policy.toml",
        ],
    );
    let policy_id = last_line(&created);
    assert_eq!(policy_id.len(), 36, "{created}");
    let shown = ok(d, &["kbs", "policy", "show", "--url", url, &policy_id]);
    assert!(
        shown.contains(&measurement) && shown.contains("SIM"),
        "{shown}"
    );
    let listed = ok(d, &["kbs", "policy", "list", "--url", url, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], policy_id.as_str());

    // A known key, imported.
    let key_path = d.join("model.key");
    std::fs::write(&key_path, hex::decode(KEY_HEX).unwrap()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let created = ok(
        d,
        &[
            "kbs",
            "key",
            "create",
            "--url",
            url,
            "--policy",
            &policy_id,
            "--import",
            "model.key",
        ],
    );
    let key_id = last_line(&created);
    assert_eq!(key_id.len(), 36, "{created}");

    let listed = ok(d, &["kbs", "key", "list", "--url", url, "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], key_id.as_str());
    assert_eq!(keys[0]["transfer_policy_id"], policy_id.as_str());
    assert!(
        keys[0]["key_information"].get("key_data").is_none(),
        "{listed}"
    );
    let b64 = "ABEiM0RVZneImaq7zN3u/wEjRWeJq83v/ty6mHZUMhA=";
    assert!(
        !listed.contains(KEY_HEX) && !listed.contains(b64),
        "{listed}"
    );
    let shown = ok(d, &["kbs", "key", "show", "--url", url, &key_id]);
    assert!(
        shown.contains(&key_id) && shown.contains(&policy_id) && shown.contains("AES-256"),
        "{shown}"
    );
    assert!(!shown.contains(KEY_HEX) && !shown.contains(b64), "{shown}");

    // The policy is in use: 409, with the server's reason.
    let err = fails(
        d,
        &["kbs", "policy", "delete", "--url", url, &policy_id],
        &[],
    );
    assert!(err.contains("409"), "{err}");
    assert!(err.contains("Conflict"), "{err}");

    ok(d, &["kbs", "key", "delete", "--url", url, &key_id]);
    ok(d, &["kbs", "policy", "delete", "--url", url, &policy_id]);
    let listed = ok(d, &["kbs", "key", "list", "--url", url, "--json"]);
    assert_eq!(listed.trim(), "[]");

    // A wrong token, through ADYTON_KBS_TOKEN: 401, and the token is not echoed.
    let wrong = d.join("wrong-token");
    std::fs::write(&wrong, "not-a-real-token-xyz\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = fails(
        d,
        &["kbs", "key", "list", "--url", url],
        &[("ADYTON_KBS_TOKEN", wrong.to_str().unwrap())],
    );
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("adyton kbs login"), "{err}");
    assert!(!err.contains("not-a-real-token-xyz"), "{err}");

    // A wrong password: 401, and the password is not echoed.
    let err = fails(
        d,
        &["kbs", "login", "--url", url, "--token-file", "other-token"],
        &[("ADYTON_KBS_ADMIN_PASSWORD", "wrong-password-abc")],
    );
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("wrong-password-abc"), "{err}");
    assert!(!d.join("other-token").exists());
}

#[test]
fn policy_with_two_tees_is_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("two.toml"), "[sim]\n[tdx]\nmin_seamsvn = 1\n").unwrap();
    // Nothing listens on port 1, and there is no token: the file is refused first.
    let err = fails(
        d,
        &[
            "kbs",
            "policy",
            "create",
            "--url",
            "http://127.0.0.1:1",
            "--file",
            "two.toml",
        ],
        &[],
    );
    assert!(err.contains("several TEEs"), "{err}");
    assert!(err.contains("SIM") && err.contains("TDX"), "{err}");
    assert!(!err.contains("reach") && !err.contains("token"), "{err}");
}

#[test]
fn commands_without_a_token_say_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        dir.path(),
        &["kbs", "key", "list", "--url", "http://127.0.0.1:1"],
        &[],
    );
    assert!(err.contains("adyton kbs login"), "{err}");
}
