//! `adyton demo` end to end; `adyton dev` with the commands it prints run as a user would paste
//! them; and the committed digits model against a fresh training.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    crate::support::python_interpreter()
}

#[test]
fn the_demo_checks_the_pipeline_and_shows_both_refusals() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_adyton"))
        .arg("demo")
        .env("HOME", home.path())
        .env_remove("ADYTON_SIM_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "adyton demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[1/7] key broker on http://127.0.0.1:",
        "[4/7] inference server on https://127.0.0.1:",
        "pulled `digits` through attested key release",
        "accuracy 96.39 % (347/360); scikit-learn measured 96.39 % (347/360)",
        "predictions that differ from scikit-learn's: 0",
        "refused the server before sending data: policy denied: sim.measurement",
        "nv_inference_count for `digits`: 360 before, 360 after",
        "the key broker refused it the key",
        "1 key transfer allowed, 1 denied",
        "[7/7] offline device: provisioned once by file",
        "accepting it again is refused",
        "served the model: 360 digits, every prediction as scikit-learn's",
        "another device (another SIM key): refused: cannot unseal the key of model `digits`",
        "every check passed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// `adyton dev` in the background; stopped with SIGTERM when dropped.
struct Dev {
    child: std::process::Child,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(command: &str) -> String {
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{command}` failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("\"error\""),
        "`{command}` answered an error: {stdout}"
    );
    stdout
}

#[test]
fn the_commands_adyton_dev_prints_work_when_pasted() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_adyton"))
        .args(["dev", "--state-dir"])
        .arg(&state)
        .env("HOME", tmp.path())
        .env_remove("ADYTON_SIM_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let dev = Dev { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[dev] {line}");
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("adyton dev did not get ready ({e}): {printed:#?}"));
        let done = line.contains("Running until Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }

    let commands: Vec<&str> = printed
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl ") || l.starts_with("python3 ") || l.starts_with("bash "))
        .collect();
    assert_eq!(commands.len(), 6, "{printed:#?}");
    for command in &commands {
        let command = match command.strip_prefix("python3 ") {
            Some(rest) => format!("{} {rest}", python()),
            None => (*command).to_owned(),
        };
        let output = sh(&command);
        if command.contains("/infer") {
            assert!(output.contains("\"label\""), "{output}");
        } else if command.contains("/v2/health/ready") {
            assert_eq!(output, "{\"ready\":true}");
        } else if command.contains("tritonclient") {
            assert!(output.starts_with("label 7 probability"), "{output}");
        } else if command.contains("/adyton/v1/models/mine") {
            assert!(output.contains("\"version\""), "{output}");
        } else {
            assert!(output.contains("digits"), "{command}: {output}");
        }
    }

    let env = std::fs::read_to_string(state.join("dev.env")).unwrap();
    for name in [
        "ADYTON_KBS_URL",
        "ADYTON_REGISTRY_URL",
        "ADYTON_SERVER_URL",
        "ADYTON_ADMIN_TOKEN",
        "ADYTON_POLICY",
        "ADYTON_SERVER_CERT",
    ] {
        assert!(env.contains(&format!("export {name}=")), "{name}: {env}");
    }
    let env_file = state.join("dev.env").display().to_string();
    let ready = sh(&format!(
        "bash -c 'source {env_file} && curl -sS --fail --cacert \"$ADYTON_SERVER_CERT\" \"$ADYTON_SERVER_URL/v2/health/ready\"'"
    ));
    assert_eq!(ready, "{\"ready\":true}");
    // The policy file accepts the server; the KBS and registry answer at their URLs.
    let checks = sh(&format!(
        "bash -c 'source {env_file} && curl -sS --fail \"$ADYTON_REGISTRY_URL/models\" && \
         curl -sS -o /dev/null -w %{{http_code}} \"$ADYTON_KBS_URL/kbs/v1/openapi.json\" && \
         curl -sS --fail --cacert \"$ADYTON_SERVER_CERT\" -H \"Authorization: Bearer $ADYTON_ADMIN_TOKEN\" \
           -X DELETE \"$ADYTON_SERVER_URL/adyton/v1/models/mine\" -o /dev/null && echo deleted'"
    ));
    assert!(
        checks.contains("digits") && checks.ends_with("200deleted\n"),
        "{checks}"
    );
    let policy = std::fs::read_to_string(state.join("policy.toml")).unwrap();
    assert!(policy.starts_with("[sim]\nmeasurement = [\""), "{policy}");

    let server_url = env
        .lines()
        .find_map(|l| l.strip_prefix("export ADYTON_SERVER_URL="))
        .unwrap()
        .trim_matches('\'')
        .to_owned();
    drop(dev);
    // The services stopped with it.
    let after = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(state.join("server.pem"))
        .arg(format!("{server_url}/v2/health/live"))
        .output()
        .unwrap();
    assert!(!after.status.success(), "the server outlived adyton dev");
}

#[test]
fn the_committed_digits_model_is_what_the_training_script_makes() {
    let root = workspace();
    let out = Command::new(python())
        .arg(root.join("scripts/train_digits.py"))
        .arg("--check")
        .arg(root.join("crates/adyton/assets"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    assert!(
        out.status.success(),
        "train_digits.py --check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
