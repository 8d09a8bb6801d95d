//! `adyton kbs serve --config kbs.toml`: admin hashes from `adyton kbs hash-password`, refused
//! fields, HTTPS with a self-signed certificate, and the PostgreSQL store.
//!
//! The PostgreSQL test needs a server: `ADYTON_TEST_POSTGRES_URL` (see `scripts/postgres`), with
//! the same rule as adyton-kbs's store tests: skipped without it, unless
//! `ADYTON_REQUIRE_POSTGRES=1`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::ServerProcess;

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
fn start_server(dir: &Path, config: &Path, scheme: &str) -> (ServerProcess, String) {
    let config = config.to_str().expect("a UTF-8 path");
    let server = ServerProcess::start(ServerProcess::command(dir, &["--config", config]));
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
    // The line is named, and the refused secret is not repeated.
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains("00ff"), "{err}");

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

#[test]
fn config_store_refuses_a_url_in_the_file_and_a_missing_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let err = serve_fails(
        dir,
        "data_dir = \"data\"\n[store]\nbackend = \"postgres\"\n\
         url = \"postgres://kbs:hunter2@db/kbs\"\n",
    );
    assert!(err.contains("`url` is not allowed"), "{err}");
    assert!(err.contains("url_env"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = serve_fails(
        dir,
        "data_dir = \"data\"\n[store]\nbackend = \"postgres\"\n\
         url_env = \"ADYTON_TEST_NOT_SET_ANYWHERE\"\n",
    );
    assert!(err.contains("ADYTON_TEST_NOT_SET_ANYWHERE"), "{err}");
    assert!(err.contains("not set"), "{err}");

    let err = serve_fails(dir, "data_dir = \"data\"\n[store]\nbackend = \"sqlite\"\n");
    assert!(err.contains("sqlite"), "{err}");

    // Nothing was created: every check ran before the data directory was touched.
    assert!(!dir.join("data").exists());
}

/// A database of the test's own on the server of `ADYTON_TEST_POSTGRES_URL`, dropped afterwards;
/// `None` (after saying so) when the PostgreSQL tests are skipped.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn create() -> Option<Self> {
        const URL_ENV: &str = "ADYTON_TEST_POSTGRES_URL";
        const REQUIRE_ENV: &str = "ADYTON_REQUIRE_POSTGRES";
        let admin_url = match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => panic!(
                "{URL_ENV} is not set, and {REQUIRE_ENV}=1 requires the PostgreSQL tests: start \
                 a server with `eval \"$(./scripts/postgres start)\"`"
            ),
            _ => {
                eprintln!("skipped: {URL_ENV} is not set");
                return None;
            }
        };
        let name = format!("adyton_test_{}", uuid::Uuid::new_v4().simple());
        sql(&admin_url, &format!("CREATE DATABASE {name}"));
        let (scheme, rest) = admin_url.split_once("://").unwrap();
        let authority = rest.split(['/', '?']).next().unwrap();
        let query = rest.split_once('?').map(|(_, q)| format!("?{q}"));
        let url = format!("{scheme}://{authority}/{name}{}", query.unwrap_or_default());
        Some(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let drop_it = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::panic::catch_unwind(|| sql(&self.admin_url, &drop_it));
        // A second panic while a failed test unwinds would abort its report.
        if dropped.is_err() && !std::thread::panicking() {
            panic!("cannot drop the test database {}", self.name);
        }
    }
}

fn sql(url: &str, statement: &str) {
    use sqlx::{Connection as _, Executor as _};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        conn.execute(statement).await.unwrap();
        conn.close().await.unwrap();
    });
}

#[test]
fn config_postgres_store_keeps_keys_across_restarts() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let phc = hash_password(dir, PASSWORD);
    let config = dir.join("kbs.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n\
             [[admin]]\nusername = \"operator\"\npassword_hash = \"{phc}\"\n\n\
             [store]\nbackend = \"postgres\"\nurl_env = \"ADYTON_TEST_KBS_DATABASE\"\n"
        ),
    )
    .unwrap();
    let password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_owned());
    let serve = || {
        let mut command = ServerProcess::command(dir, &["--config", config.to_str().unwrap()]);
        command.env("ADYTON_TEST_KBS_DATABASE", &db.url);
        let server = ServerProcess::start(command);
        let said = server.startup.join("\n");
        assert!(said.contains("key store: PostgreSQL at"), "{said}");
        if let Some(password) = &password {
            assert!(!said.contains(password.as_str()), "{said}");
        }
        server
    };
    // The operator's commands, with the token in $HOME.
    let client = |url: &str, args: &[&str]| {
        let out = adyton()
            .args(["kbs"])
            .args(args)
            .args(["--url", url])
            .env("HOME", dir.join("home"))
            .env("ADYTON_KBS_ADMIN_PASSWORD", PASSWORD)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "adyton kbs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().last().unwrap_or("").trim().to_owned()
    };
    std::fs::write(
        dir.join("policy.toml"),
        format!("[sim]\nmeasurement = [\"{}\"]\n", "ab".repeat(48)),
    )
    .unwrap();

    let key_id = {
        let server = serve();
        client(&server.url, &["login", "--user", "operator"]);
        let policy_id = client(&server.url, &["policy", "create", "--file", "policy.toml"]);
        client(&server.url, &["key", "create", "--policy", &policy_id])
    };
    assert_eq!(key_id.len(), 36, "{key_id}");

    // A new process, on a new port: the key comes from the database.
    let server = serve();
    client(&server.url, &["login", "--user", "operator"]);
    client(&server.url, &["key", "show", &key_id]);
    let listed = adyton()
        .args(["kbs", "key", "list", "--json", "--url", &server.url])
        .env("HOME", dir.join("home"))
        .current_dir(dir)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], key_id.as_str(), "{listed}");
    // Nothing went to the embedded store.
    assert!(!dir.join("data/kbs.redb").exists());
}

/// `collateral = FILE` (the older form) and the `[collateral]` table both start a broker that
/// says where its collateral comes from; mistakes in the table are refused before anything is
/// opened.
#[test]
fn config_collateral_is_a_file_or_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bundle =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/dcap/tdx_quote_collateral.json");
    std::fs::copy(&bundle, dir.join("tdx.json")).unwrap();
    let base = "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n";

    let old = dir.join("old.toml");
    std::fs::write(&old, format!("{base}collateral = \"tdx.json\"\n")).unwrap();
    let (server, _) = start_server(dir, &old, "http");
    let startup = server.startup.join("\n");
    assert!(startup.contains("collateral: bundle file"), "{startup}");
    assert!(startup.contains("tdx.json"), "{startup}");
    drop(server);

    let table = dir.join("table.toml");
    std::fs::write(
        &table,
        format!(
            "{base}[collateral]\nbundle = \"tdx.json\"\npccs_url = \"https://pccs.example:8081\"\n\
             kds_url = \"https://kdsintf.amd.com\"\ncache_dir = \"collateral-cache\"\n\
             grace_period_secs = 3600\nconnect_timeout_secs = 5\nread_timeout_secs = 10\n"
        ),
    )
    .unwrap();
    let (server, _) = start_server(dir, &table, "http");
    let startup = server.startup.join("\n");
    assert!(
        startup.contains("PCCS https://pccs.example:8081"),
        "{startup}"
    );
    assert!(startup.contains("KDS https://kdsintf.amd.com"), "{startup}");
    assert!(startup.contains("3600 s after its expiry"), "{startup}");
    // The cache directory is relative to the file, and made at start.
    assert!(dir.join("collateral-cache").is_dir());
    drop(server);

    let err = serve_fails(dir, &format!("{base}[collateral]\npccs = \"https://x\"\n"));
    assert!(err.contains("unknown field `pccs`"), "{err}");
    let err = serve_fails(
        dir,
        &format!("{base}[collateral]\npccs_url = \"pccs.example\"\n"),
    );
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
    let err = serve_fails(
        dir,
        &format!("{base}[collateral]\nbundle = \"missing.json\"\n"),
    );
    assert!(err.contains("missing.json"), "{err}");
    let err = serve_fails(
        dir,
        &format!("{base}[collateral]\npccs_url = \"https://x.example\"\nread_timeout_secs = 0\n"),
    );
    assert!(err.contains("read_timeout_secs"), "{err}");

    // Flags override the file, and the environment sets what flags would.
    let table = table.to_str().unwrap();
    let args = ["--config", table, "--pccs-url", "https://flag.example"];
    let server = ServerProcess::start(ServerProcess::command(dir, &args));
    let startup = server.startup.join("\n");
    assert!(startup.contains("PCCS https://flag.example"), "{startup}");
    drop(server);
    let args = ["--data-dir", "trial", "--listen", "127.0.0.1:0"];
    let mut command = ServerProcess::command(dir, &args);
    command.env("ADYTON_KDS_URL", "https://kds.example");
    let server = ServerProcess::start(command);
    let startup = server.startup.join("\n");
    assert!(startup.contains("KDS https://kds.example"), "{startup}");
}
