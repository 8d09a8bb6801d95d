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

/// The measurement the offline test's SIM device claims, pinned by its transfer policy.
const DEVICE_MEASUREMENT: [u8; 48] = [0x4D; 48];

/// A provisioning request as a SIM device writes it: evidence from a device measuring
/// `measurement`, over SHA-512 of `bound` (the device's own DER public key, when honest).
fn provision_request(
    key_id: &str,
    device: &adyton_envelope::wrap::TeeKeyPair,
    measurement: [u8; 48],
    bound: &[u8],
) -> adyton_client::ProvisionRequest {
    use adyton_attest::attester::Attester as _;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let spki = device.public_key().unwrap().spki_der().to_vec();
    let attester =
        adyton_attest::attester::sim::SimAttester::with_measurement([5; 32], measurement).unwrap();
    let report_data = adyton_kbs::transfer::expected_report_data(bound, None);
    let evidence = attester.evidence(&report_data).unwrap().to_json();
    adyton_client::ProvisionRequest {
        format: adyton_client::offline::REQUEST_FORMAT.into(),
        request_id: "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b".into(),
        model: "resnet-50".into(),
        key_id: key_id.into(),
        tee: "SIM".into(),
        sealing_policy: "exact-build".into(),
        public_key: b64.encode(&spki),
        evidence: b64.encode(evidence),
        created_at: 1_800_000_000,
    }
}

/// The audit log's offline lines.
fn offline_audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line.get("offline").is_some())
        .collect()
}

#[test]
fn operator_answers_an_offline_provisioning_request() {
    use adyton_envelope::wrap::{TeeKeyPair, WrappedKey};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut command = ServerProcess::command(d, &["--listen", "127.0.0.1:0", "--data-dir", "kbs"]);
    command.env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD);
    let server = ServerProcess::start(command);
    let url = server.url.as_str();
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
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[sim]\nmeasurement = [\"{}\"]\n",
            hex::encode(DEVICE_MEASUREMENT)
        ),
    )
    .unwrap();
    let policy_id = last_line(&ok(
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
    ));
    std::fs::write(d.join("model.key"), hex::decode(KEY_HEX).unwrap()).unwrap();
    std::fs::set_permissions(d.join("model.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let key_id = last_line(&ok(
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
    ));

    // The device's request, carried to the operator.
    let device = TeeKeyPair::generate(3072).unwrap();
    let spki = device.public_key().unwrap().spki_der().to_vec();
    let request = provision_request(&key_id, &device, DEVICE_MEASUREMENT, &spki);
    std::fs::write(d.join("request.json"), request.to_json()).unwrap();
    let transfer = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "kbs",
            "transfer",
            "--url",
            url,
            "--offline",
            "request.json",
            "-o",
            output,
        ];
        args.extend_from_slice(extra);
        run(d, &args, &[])
    };
    let out = transfer("response.json", &[]);
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{said}");

    // The response unwraps, with the device's private key, to the key the KBS holds.
    let bytes = std::fs::read(d.join("response.json")).unwrap();
    let response = adyton_client::ProvisionResponse::from_json(&bytes).unwrap();
    assert_eq!(response.request_id, request.request_id);
    assert_eq!(response.model, "resnet-50");
    assert_eq!(response.key_id, key_id);
    assert_eq!(
        response.public_key_sha256,
        request.public_key_sha256().unwrap()
    );
    let answer = response.transfer_answer().unwrap();
    let key = device
        .unwrap_transfer(&WrappedKey {
            wrapped_key: answer.wrapped_key,
            wrapped_swk: answer.wrapped_swk,
        })
        .unwrap();
    assert_eq!(hex::encode(key.expose_secret()), KEY_HEX);
    assert!(crate::support::leftovers(d).is_empty());

    // The summary names the request, the model, the key and the TEE, and no key material.
    for expected in [
        &request.request_id,
        "resnet-50",
        &key_id,
        "SIM",
        "response.json",
    ] {
        assert!(said.contains(expected), "{expected}: {said}");
    }
    for secret in [&response.wrapped_key, &response.wrapped_swk, KEY_HEX] {
        assert!(!said.contains(secret), "{said}");
    }

    // The KBS audited it, marked offline, with the operator.
    let audit = d.join("kbs/audit.jsonl");
    let lines = offline_audit_lines(&audit);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[0]["key_id"], key_id.as_str());
    assert_eq!(lines[0]["tee"], "SIM");
    assert_eq!(
        lines[0]["offline"],
        serde_json::json!({
            "request_id": request.request_id,
            "model": "resnet-50",
            "operator": "admin",
        })
    );

    // An existing response is not clobbered, and the KBS is not even asked.
    let err = String::from_utf8(transfer("response.json", &[]).stderr).unwrap();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(d.join("response.json")).unwrap(), bytes);
    assert_eq!(offline_audit_lines(&audit).len(), 1);
    // With --force it is replaced by a fresh answer.
    let out = transfer("response.json", &["--force", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["key_id"], key_id.as_str());
    assert_ne!(std::fs::read(d.join("response.json")).unwrap(), bytes);
    assert_eq!(offline_audit_lines(&audit).len(), 2);

    // Evidence that binds another public key: 403, nothing written, audited as denied.
    let other = TeeKeyPair::generate(3072).unwrap();
    let other_spki = other.public_key().unwrap().spki_der().to_vec();
    let forged = provision_request(&key_id, &device, DEVICE_MEASUREMENT, &other_spki);
    std::fs::write(d.join("request.json"), forged.to_json()).unwrap();
    let err = String::from_utf8(transfer("denied.json", &[]).stderr).unwrap();
    assert!(err.contains("403"), "{err}");
    assert!(!d.join("denied.json").exists());
    // A device whose measurement the policy does not name: 403 too.
    let stranger = provision_request(&key_id, &device, [0x11; 48], &spki);
    std::fs::write(d.join("request.json"), stranger.to_json()).unwrap();
    let err = String::from_utf8(transfer("denied.json", &[]).stderr).unwrap();
    assert!(err.contains("403"), "{err}");
    assert!(!d.join("denied.json").exists());
    assert!(crate::support::leftovers(d).is_empty());
    let lines = offline_audit_lines(&audit);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for line in &lines[2..] {
        assert_eq!(line["allowed"], false, "{line}");
        assert!(line["reason"].is_string(), "{line}");
        assert_eq!(line["offline"]["operator"], "admin", "{line}");
    }

    // A wrong token: 401, and it is not echoed.
    std::fs::write(d.join("request.json"), request.to_json()).unwrap();
    let wrong = d.join("wrong-token");
    std::fs::write(&wrong, "not-a-real-token-xyz\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = fails(
        d,
        &[
            "kbs",
            "transfer",
            "--url",
            url,
            "--token-file",
            "wrong-token",
            "--offline",
            "request.json",
            "-o",
            "denied.json",
        ],
        &[],
    );
    assert!(
        err.contains("401") && err.contains("adyton kbs login"),
        "{err}"
    );
    assert!(!err.contains("not-a-real-token-xyz"), "{err}");
    assert!(!d.join("denied.json").exists());
}

#[test]
fn offline_transfer_refuses_bad_requests_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens on port 1, and there is no token: the file is refused first.
    let base = ["kbs", "transfer", "--url", "http://127.0.0.1:1"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    std::fs::write(
        d.join("bad.json"),
        r#"{"format": "adyton-provision-request/1"}"#,
    )
    .unwrap();
    let err = fails(
        d,
        &with(&base, &["--offline", "bad.json", "-o", "r.json"]),
        &[],
    );
    assert!(err.contains("not a valid provisioning request"), "{err}");
    assert!(!err.contains("reach") && !err.contains("token"), "{err}");
    std::fs::write(d.join("big.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    let err = fails(
        d,
        &with(&base, &["--offline", "big.json", "-o", "r.json"]),
        &[],
    );
    assert!(err.contains("larger than"), "{err}");
    assert!(!d.join("r.json").exists());
    // --offline is required, and the help says why.
    let err = fails(d, &with(&base, &["-o", "r.json"]), &[]);
    assert!(err.contains("--offline"), "{err}");
    let help = ok(d, &["kbs", "transfer", "--help"]);
    assert!(
        help.contains("offline device") && help.contains("TDX") && help.contains("--offline"),
        "{help}"
    );
}
