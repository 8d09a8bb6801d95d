//! `adyton kbs serve --config kbs.toml`: admin hashes from `adyton kbs hash-password`, refused
//! fields, and HTTPS with a self-signed certificate.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::KbsServer;

const PASSWORD: &str = "config-test-password";

fn adyton() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adyton"));
    command
        .env_remove("ADYTON_KBS_ADMIN_PASSWORD")
        .env_remove("ADYTON_KBS_MASTER_KEY")
        .env_remove("ADYTON_KBS_TOKEN");
    command
}

/// `adyton kbs hash-password`, the password on standard input.
fn hash_password(dir: &Path, password: &str) -> String {
    let mut child = adyton()
        .args(["kbs", "hash-password"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    phc
}

/// Starts `adyton kbs serve --config CONFIG` and returns it with the `ADDR` of its
/// `SCHEME://ADDR`.
fn start_server(dir: &Path, config: &Path, scheme: &str) -> (KbsServer, String) {
    let config = config.to_str().expect("a UTF-8 path");
    let server = KbsServer::start(KbsServer::command(dir, &["--config", config]));
    let addr = server
        .url
        .strip_prefix(&format!("{scheme}://"))
        .unwrap_or_else(|| panic!("expected a {scheme} URL, got {}", server.url))
        .to_owned();
    (server, addr)
}

/// `adyton kbs serve --config` with this file (`bad.toml`) fails before binding; returns stderr.
fn serve_fails(dir: &Path, toml: &str) -> String {
    let config = dir.join("bad.toml");
    std::fs::write(&config, toml).unwrap();
    let out = adyton()
        .args(["kbs", "serve", "--config"])
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve accepted {toml}: {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

fn login(dir: &Path, url: &str, user: &str, password: &str) -> Output {
    adyton()
        .args(["kbs", "login", "--url", url, "--user", user, "--token-file"])
        .arg(dir.join("token"))
        .env("ADYTON_KBS_ADMIN_PASSWORD", password)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn config_admin_hash_logs_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let phc = hash_password(dir, PASSWORD);
    let config = dir.join("kbs.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\naudit_log = \"logs-audit.jsonl\"\n\n\
             [[admin]]\nusername = \"operator\"\npassword_hash = \"{phc}\"\n"
        ),
    )
    .unwrap();
    let (_server, addr) = start_server(dir, &config, "http");
    let url = format!("http://{}", addr);

    let out = login(dir, &url, "operator", PASSWORD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("token").exists());
    // The wrong password, and the trial user `admin`, are refused.
    assert!(!login(dir, &url, "operator", "not-the-password")
        .status
        .success());
    assert!(!login(dir, &url, "admin", PASSWORD).status.success());
    // Relative paths are relative to the configuration file.
    assert!(dir.join("data/kbs.redb").exists());
    assert!(dir.join("logs-audit.jsonl").exists());
}

#[test]
fn config_refuses_secrets_and_unknown_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let err = serve_fails(
        dir,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nmaster_key = \"00ff\"\n",
    );
    assert!(err.contains("master_key"), "{err}");
    assert!(err.contains("bad.toml"), "the file is not named: {err}");
    assert!(
        err.contains("never kept in the configuration file"),
        "{err}"
    );

    let err = serve_fails(
        dir,
        "data_dir = \"data\"\n[[admin]]\nusername = \"op\"\npassword = \"plain\"\n",
    );
    assert!(err.contains("password"), "{err}");
    assert!(err.contains("hash-password"), "{err}");
    assert!(err.contains("bad.toml"), "the file is not named: {err}");

    let err = serve_fails(dir, "data_dir = \"data\"\nlisten_port = 8443\n");
    assert!(err.contains("listen_port"), "{err}");
    assert!(err.contains("bad.toml"), "the file is not named: {err}");

    let err = serve_fails(
        dir,
        "data_dir = \"data\"\n[[admin]]\nusername = \"op\"\npassword_hash = \"secret\"\n",
    );
    assert!(err.contains("password_hash"), "{err}");
    assert!(err.contains("bad.toml"), "the file is not named: {err}");

    let err = serve_fails(
        dir,
        "data_dir = \"data\"\n[tls]\ncertificate = \"missing.pem\"\nprivate_key = \"missing-key.pem\"\n",
    );
    assert!(err.contains("missing.pem"), "{err}");

    // Nothing was created: every check ran before the data directory was touched.
    assert!(!dir.join("data").exists());
}

#[test]
fn config_tls_serves_https() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!(
                "note: skipping the HTTPS test: openssl cannot make a certificate: {other:?}"
            );
            return;
        }
    }
    let config = dir.join("kbs.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n",
    )
    .unwrap();
    let (_server, addr) = start_server(dir, &config, "https");
    assert!(addr.starts_with("127.0.0.1:"), "{}", addr);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .write_all(b"GET /kbs/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("200 OK"),
        "plain HTTP was served"
    );

    let curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            "cert.pem",
        ])
        .arg(format!("https://{}/kbs/v1/openapi.json", addr))
        .current_dir(dir)
        .output();
    match curl {
        Ok(out) => {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "200",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // And curl without the CA refuses the self-signed certificate.
            let untrusted = Command::new("curl")
                .args(["-sS", "-o", "/dev/null"])
                .arg(format!("https://{}/kbs/v1/openapi.json", addr))
                .output()
                .unwrap();
            assert!(!untrusted.status.success());
        }
        Err(e) => eprintln!("note: curl is not installed ({e}); skipping the HTTPS request"),
    }
}
