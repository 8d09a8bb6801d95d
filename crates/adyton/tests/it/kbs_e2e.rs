//! `adyton kbs serve` end to end over a real socket on 127.0.0.1, driven by the reference Python
//! KBS client (`tests/reference/cnap_kbs_client.py`) and, when installed, curl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{adyton_ok, ServerProcess};

const PASSWORD: &str = "trial-password-for-the-e2e-test";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

/// Starts `adyton kbs serve` on a free port with the test's admin password, and checks what it
/// says at start.
fn start_server(dir: &Path) -> ServerProcess {
    let mut command =
        ServerProcess::command(dir, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    let server = ServerProcess::start(command);
    let seen = &server.startup;
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("SIM") && l.contains("only") && l.contains("policy")),
        "no SIM warning: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("generated a master key")),
        "{seen:?}"
    );
    server
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/cnap_kbs_client.py")
}

/// Runs the Python KBS client against `url`, with the SIM key and the admin token in its
/// environment.
fn client(dir: &Path, url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let interpreter = crate::support::python_interpreter();
    let mut command = Command::new(&interpreter);
    command
        .arg(client_script())
        .args(["--url", url])
        .args(args)
        .current_dir(dir)
        .env("ADYTON_SIM_KEY", dir.join("sim.key"))
        .env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)
        .env_remove("KBS_TOKEN");
    if let Some(token) = token {
        command.env("KBS_TOKEN", token);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"))
}

/// Runs the client, insists that it succeeds, and returns its one line of output.
fn client_ok(dir: &Path, url: &str, token: Option<&str>, args: &[&str]) -> String {
    let out = client(dir, url, token, args);
    assert!(
        out.status.success(),
        "client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs a transfer that must be refused; returns its stderr, having checked that no key was
/// printed.
fn transfer_denied(dir: &Path, url: &str, key_id: &str, adyton: &str) -> String {
    let out = client(
        dir,
        url,
        None,
        &["transfer", "--key-id", key_id, "--adyton", adyton],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a key was printed");
    String::from_utf8(out.stderr).unwrap()
}

fn measurement(dir: &Path) -> String {
    let out = adyton_ok(&["attest", "measure"], dir);
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().last().unwrap().trim().to_owned()
}

fn curl_installed() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn kbs_serve_releases_keys_to_sim_evidence_over_http_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start_server(d);
    let url = server.url.as_str();
    let adyton = env!("CARGO_BIN_EXE_adyton");

    // Admin: login, a SIM policy pinned to this build, a known key under it.
    let login = client_ok(d, url, None, &["login"]);
    assert!(!login.is_empty());
    let token = Some(login.as_str());
    let pinned = client_ok(
        d,
        url,
        token,
        &["create-policy", "--measurement", &measurement(d)],
    );
    let key_id = client_ok(
        d,
        url,
        token,
        &["import-key", "--policy", &pinned, "--key-hex", KEY_HEX],
    );

    // The CNAP transfer, with DER user_data, the raw form, and the nonce flow.
    for extra in [
        &[][..],
        &["--raw"][..],
        &["--nonce"][..],
        &["--raw", "--nonce"][..],
    ] {
        let mut args = vec!["transfer", "--key-id", &key_id, "--adyton", adyton];
        args.extend_from_slice(extra);
        assert_eq!(
            client_ok(d, url, None, &args),
            KEY_HEX,
            "transfer {extra:?}"
        );
    }

    // A policy pinned to another build: 403, no key.
    let other = client_ok(
        d,
        url,
        token,
        &["create-policy", "--measurement", &"ab".repeat(48)],
    );
    let other_key = client_ok(
        d,
        url,
        token,
        &[
            "import-key",
            "--policy",
            &other,
            "--key-hex",
            &"5a".repeat(32),
        ],
    );
    let err = transfer_denied(d, url, &other_key, adyton);
    assert!(err.contains("HTTP 403"), "{err}");

    // An unknown key: 404.
    let err = transfer_denied(d, url, "no-such-key", adyton);
    assert!(err.contains("HTTP 404"), "{err}");

    // The admin API without a token: 401.
    if curl_installed() {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{url}/kbs/v1/keys"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    } else {
        eprintln!("note: curl is not installed; skipping the curl check of the admin API");
    }

    // Stop the server before reading the audit log, so that every line is written.
    drop(server);
    let audit = std::fs::read_to_string(d.join("kbs/audit.jsonl")).unwrap();
    let decisions: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|v: &serde_json::Value| v.get("key_id").is_some())
        .collect();
    let allowed = decisions.iter().filter(|v| v["allowed"] == true).count();
    let denied: Vec<_> = decisions.iter().filter(|v| v["allowed"] == false).collect();
    assert_eq!(allowed, 4, "{audit}");
    assert_eq!(denied.len(), 2, "{audit}");
    assert!(denied.iter().any(|v| v["key_id"] == other_key.as_str()));
    assert!(denied.iter().any(|v| v["key_id"] == "no-such-key"));
    for secret in [KEY_HEX, &"5a".repeat(32), PASSWORD] {
        assert!(!audit.to_ascii_lowercase().contains(secret), "{audit}");
    }
    assert!(!audit.contains(&login));
}

#[test]
fn kbs_serve_without_admin_password_disables_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env(
        "ADYTON_KBS_MASTER_KEY",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let server = ServerProcess::start(command);
    let seen = &server.startup;
    assert!(!server.url.is_empty(), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("admin API is disabled")),
        "{seen:?}"
    );
    // The master key came from the environment: nothing was generated.
    assert!(!d.join("kbs/master.key").exists());
    let out = client(d, &server.url, None, &["login"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
}
