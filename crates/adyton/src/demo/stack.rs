//! The whole stack on one machine: the key broker and the registry (this executable) and the
//! inference server (`adyton-server`, SIM TEE) as child processes on free loopback ports, with the digits model published
//! encrypted and pulled by the server through attested key release. `adyton demo` and
//! `adyton dev` share it.
//!
//! Every child is owned by a [`Service`] that kills it when dropped, so an error or a panic never
//! leaves one behind.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adyton_attest::attester::sim::SimAttester;
use adyton_attest::{Collateral, Policy};
use adyton_client::attested_tls::{client_config, AttestedServerVerifier, VerifiedServer};
use adyton_client::KbsClient;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::format::FormatArg;
use crate::publish::{publish_model, PublishArgs, Published};

/// The digit classifier (`assets/README.md`): made by `scripts/train_digits.py`.
pub const DIGITS_ONNX: &[u8] = include_bytes!("../../assets/digits.onnx");
/// Its held-out test set, with scikit-learn's predictions and accuracy.
pub const DIGITS_TEST: &str = include_str!("../../assets/digits_test.json");
/// The name the server serves the digits model under.
pub const MODEL_NAME: &str = "digits";

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to pull a model.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// The KBS's admin user in the local trial.
const KBS_ADMIN: &str = "admin";

/// The held-out digits of `assets/digits_test.json`.
#[derive(Debug, Deserialize)]
pub struct TestSet {
    pub count: usize,
    pub sklearn_correct: usize,
    pub sklearn_accuracy: f64,
    pub labels: Vec<i64>,
    pub sklearn_predictions: Vec<i64>,
    pub pixels: Vec<Vec<u8>>,
}

impl TestSet {
    /// The embedded test set, checked for consistency.
    pub fn embedded() -> Result<Self> {
        let set: Self =
            serde_json::from_str(DIGITS_TEST).context("the embedded digits test set")?;
        if set.labels.len() != set.count
            || set.sklearn_predictions.len() != set.count
            || set.pixels.len() != set.count
            || set.pixels.iter().any(|row| row.len() != 64)
        {
            bail!("the embedded digits test set is inconsistent");
        }
        Ok(set)
    }
}

/// Prints numbered steps with the time each took.
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    step_started: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        let now = Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            step_started: now,
        }
    }

    /// Ends a step: prints `[n/total] headline (x.x s)` and the detail lines under it.
    pub fn step(&mut self, headline: &str, details: &[String]) {
        self.done += 1;
        println!(
            "[{}/{}] {headline} ({})",
            self.done,
            self.total,
            seconds(self.step_started.elapsed())
        );
        for line in details {
            println!("      {line}");
        }
        self.step_started = Instant::now();
    }

    /// Time since the first step began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A duration for people: `0.42 s`, `12 ms`.
pub fn seconds(d: Duration) -> String {
    if d < Duration::from_millis(100) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A child process serving on the URL it printed; killed when dropped.
#[derive(Debug)]
pub struct Service {
    child: Child,
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    /// Where its standard error goes.
    pub log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Spawns `command` with its output in `log`, and waits until it prints `listening on URL`.
    pub fn start(what: &str, mut command: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = spawn_retrying(&mut command, out, err)
            .with_context(|| format!("cannot start the {what}"))?;
        let mut service = Self {
            child,
            url: String::new(),
            log: log.to_owned(),
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(url) = text
                .lines()
                .find_map(|line| line.strip_prefix("listening on "))
            {
                service.url = url.trim().to_owned();
                return Ok(service);
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                bail!(
                    "the {what} stopped ({status}) before listening; its log ({}):\n{}",
                    log.display(),
                    tail(&text)
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the {what} did not listen within {START_TIMEOUT:?}; its log ({}):\n{}",
                    log.display(),
                    tail(&text)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `host:port` of the URL.
    pub fn address(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns, retrying briefly on "text file busy": an executable just written (the other build of
/// the demo) may still be open for writing in a child forked at the same moment.
fn spawn_retrying(command: &mut Command, out: File, err: File) -> std::io::Result<Child> {
    let mut attempts = 0;
    loop {
        let spawned = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(err.try_clone()?)
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(26) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The last lines of a log, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Where the stack keeps its state, and the secrets it runs with.
pub struct Layout {
    pub dir: PathBuf,
    /// The executable the key broker and the registry run from (this one).
    pub exe: PathBuf,
    /// The inference server's executable, `adyton-server`, whose measurement the policies pin.
    pub server_exe: PathBuf,
    pub kbs_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub sim_key: PathBuf,
    /// The bearer token of the registry's and the server's writes.
    pub admin_token_file: PathBuf,
    pub admin_token: Zeroizing<String>,
    pub kbs_password_file: PathBuf,
    kbs_password: Zeroizing<String>,
    pub kbs_token_file: PathBuf,
    /// The client policy that accepts this stack's server.
    pub policy_file: PathBuf,
    /// The server's certificate, verified against the policy, for clients that pin it.
    pub certificate: PathBuf,
    pub model_file: PathBuf,
}

impl Layout {
    /// The layout in `dir` (created, mode 0700); secrets found there are kept, missing ones made.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let server_exe = crate::server_binary::find()?;
        let admin_token_file = dir.join("admin-token");
        let admin_token = secret_file(&admin_token_file, 24)?;
        let kbs_password_file = dir.join("kbs-password");
        let kbs_password = secret_file(&kbs_password_file, 16)?;
        Ok(Self {
            exe,
            server_exe,
            kbs_dir: dir.join("kbs"),
            registry_dir: dir.join("registry"),
            sim_key: dir.join("sim.key"),
            admin_token_file,
            admin_token,
            kbs_password_file,
            kbs_password,
            kbs_token_file: dir.join("kbs-token"),
            policy_file: dir.join("policy.toml"),
            certificate: dir.join("server.pem"),
            model_file: dir.join("digits.onnx"),
            dir,
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(&self.exe, args)
    }

    /// A command running `exe` (this executable, the server's, or another build of it) in the
    /// state directory.
    pub fn command_of(&self, exe: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(exe);
        command
            .args(args)
            .current_dir(&self.dir)
            .env("ADYTON_SIM_KEY", &self.sim_key)
            .env_remove("ADYTON_KBS_MASTER_KEY")
            .env_remove("ADYTON_KBS_TOKEN")
            .env_remove("ADYTON_KBS_ADMIN_PASSWORD");
        command
    }
}

/// Reads a secret kept in `path`, or makes one of `bytes` random bytes (hex) and writes it there
/// with mode 0600.
fn secret_file(path: &Path, bytes: usize) -> Result<Zeroizing<String>> {
    if path.exists() {
        return crate::secrets::read_token_file(path, "secret file");
    }
    let secret = Zeroizing::new(hex::encode(random_bytes(bytes)?));
    write_private(path, format!("{}\n", secret.as_str()).as_bytes())?;
    Ok(secret)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the random source failed"))?;
    Ok(bytes)
}

/// A `[sim]` policy pinning these measurements (and, when given, the attester's key).
pub fn sim_policy_toml(measurements: &[[u8; 48]], signer: Option<[u8; 32]>) -> String {
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "[sim]\nmeasurement = [{}]\n",
        list(measurements.iter().map(hex::encode).collect())
    );
    if let Some(signer) = signer {
        text.push_str(&format!("signer = [{}]\n", list(vec![hex::encode(signer)])));
    }
    text
}

/// The running stack.
pub struct Stack {
    pub layout: Layout,
    pub kbs: Service,
    pub registry: Service,
    pub server: Service,
    /// The client policy (the contents of `layout.policy_file`).
    pub policy: Policy,
    pub published: Published,
}

impl Stack {
    /// Starts the key broker, the registry and the server in `layout.dir`, publishes the digits
    /// model and waits until the server has pulled it: four steps of `progress`.
    pub fn start(layout: Layout, progress: &mut Progress) -> Result<Self> {
        // 1. The key broker.
        let mut command = layout.command(&["kbs", "serve", "--listen", "127.0.0.1:0"]);
        command
            .arg("--data-dir")
            .arg(&layout.kbs_dir)
            .env("ADYTON_KBS_ADMIN_PASSWORD", layout.kbs_password.as_str());
        let kbs = Service::start("key broker", command, &layout.dir.join("kbs.log"))?;
        let kbs_client = KbsClient::new(&kbs.url)?;
        let kbs_token = kbs_client
            .login(KBS_ADMIN, &layout.kbs_password)
            .context("cannot log in to the key broker")?;
        write_private(
            &layout.kbs_token_file,
            format!("{}\n", kbs_token.expose_secret()).as_bytes(),
        )?;
        progress.step(
            &format!("key broker on {}", kbs.url),
            &[format!(
                "embedded key store and audit log in {}; admin logged in",
                layout.kbs_dir.display()
            )],
        );

        // 2. The registry.
        let mut command = layout.command(&["registry", "serve", "--listen", "127.0.0.1:0"]);
        command
            .arg("--data-dir")
            .arg(&layout.registry_dir)
            .arg("--token-file")
            .arg(&layout.admin_token_file);
        let registry = Service::start("registry", command, &layout.dir.join("registry.log"))?;
        progress.step(
            &format!("model registry on {}", registry.url),
            &[format!(
                "embedded storage in {}",
                layout.registry_dir.display()
            )],
        );

        // 3. The model owner publishes the model, its key guarded by the server's measurement.
        let measurement = adyton_attest::sim::measure_file(&layout.server_exe)
            .context("cannot measure the server's build")?;
        let signer = SimAttester::from_key_file(&layout.sim_key)
            .context("cannot open the SIM attester's key")?
            .public_key();
        let table = serde_json::json!({ "measurement": [hex::encode(measurement)] });
        let transfer_policy = kbs_client
            .create_policy(&kbs_token, "SIM", &table)
            .context("cannot create the transfer policy")?
            .id;
        std::fs::write(&layout.model_file, DIGITS_ONNX)
            .with_context(|| format!("cannot write {}", layout.model_file.display()))?;
        let mut lines = vec![format!(
            "transfer policy {transfer_policy}: SIM measurement {} (SHA-384 of {})",
            hex::encode(measurement),
            layout.server_exe.display()
        )];
        let published = publish_model(
            &PublishArgs {
                input: layout.model_file.clone(),
                registry: registry.url.clone(),
                registry_token_file: layout.admin_token_file.clone(),
                kbs: kbs.url.clone(),
                kbs_token_file: Some(layout.kbs_token_file.clone()),
                policy: transfer_policy.clone(),
                format: FormatArg::V2,
                id: Some(format!("digits-{}", hex::encode(random_bytes(4)?))),
                name: Some(MODEL_NAME.to_owned()),
                version: Some("1".to_owned()),
            },
            &mut |line| lines.push(line),
        )?;
        progress.step(
            &format!(
                "published the digits classifier encrypted as `{}` ({} bytes, AES-256-GCM)",
                published.id, published.blob_size
            ),
            &lines,
        );

        // 4. The server pulls it: its key is released to its SIM evidence only.
        std::fs::write(
            &layout.policy_file,
            sim_policy_toml(&[measurement], Some(signer)),
        )
        .with_context(|| format!("cannot write {}", layout.policy_file.display()))?;
        let policy = Policy::from_file(&layout.policy_file)?;
        let written = layout.dir.join("server-written.pem");
        let server = start_server(
            &layout,
            &layout.server_exe,
            &registry.url,
            &published.id,
            &written,
            "server.log",
        )?;
        let verified = wait_for_model(&server, &policy, MODEL_NAME)?
            .map_err(|reason| anyhow!("the server could not pull the model: {reason}"))?;
        save_verified_certificate(&written, &verified, &layout.certificate)?;
        progress.step(
            &format!(
                "inference server on {} pulled `{MODEL_NAME}` through attested key release",
                server.url
            ),
            &[
                "the server made SIM evidence over a fresh RSA key; the key broker checked it \
                 against the transfer policy and released the model key to that key only"
                    .to_owned(),
                format!(
                    "the model was decrypted in the server's memory; certificate SHA-256 {} \
                     (verified, saved to {})",
                    hex::encode(verified.certificate_sha256),
                    layout.certificate.display()
                ),
            ],
        );
        Ok(Self {
            layout,
            kbs,
            registry,
            server,
            policy,
            published,
        })
    }
}

/// Starts `adyton-server serve --tee sim` from `exe` (the server's build, or another), pulling
/// `model_id` as the digits model.
pub fn start_server(
    layout: &Layout,
    exe: &Path,
    registry: &str,
    model_id: &str,
    certificate_out: &Path,
    log: &str,
) -> Result<Service> {
    let mut command = layout.command_of(exe, &[]);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--tee", "sim"])
        .arg("--sim-key")
        .arg(&layout.sim_key)
        .args(["--registry", registry])
        .arg("--pull")
        .arg(format!("{MODEL_NAME}={model_id}"))
        .arg("--token-file")
        .arg(&layout.admin_token_file)
        .arg("--certificate-out")
        .arg(certificate_out)
        .args(["--workers", "2"]);
    Service::start("inference server", command, &layout.dir.join(log))
}

/// Polls the model's metadata over attested TLS until it is loaded (`Ok(Ok(verified))`) or has
/// failed (`Ok(Err(reason))`).
pub fn wait_for_model(
    server: &Service,
    policy: &Policy,
    model: &str,
) -> Result<std::result::Result<VerifiedServer, String>> {
    let started = Instant::now();
    let path = format!("/v2/models/{model}");
    loop {
        let answer = attested_get(server.address(), policy, &path)?;
        let meta: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        if meta["inputs"].is_array() {
            return Ok(Ok(answer.verified));
        }
        if meta["state"] == "UNAVAILABLE" {
            return Ok(Err(meta["reason"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned()));
        }
        if started.elapsed() > PULL_TIMEOUT {
            bail!("the server did not load `{model}` within {PULL_TIMEOUT:?}: {meta}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Keeps the certificate the server wrote only if it is the one the client verified.
fn save_verified_certificate(written: &Path, verified: &VerifiedServer, to: &Path) -> Result<()> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let der = CertificateDer::from_pem_file(written)
        .with_context(|| format!("cannot read the certificate {}", written.display()))?;
    if der.as_ref() != verified.certificate_der.as_slice() {
        bail!(
            "the certificate in {} is not the one the server presented",
            written.display()
        );
    }
    std::fs::rename(written, to).with_context(|| format!("cannot write {}", to.display()))
}

/// An answer over attested TLS.
pub struct AttestedAnswer {
    /// The HTTP status.
    pub status: u16,
    pub body: String,
    pub verified: VerifiedServer,
}

/// `GET path` on an attested server at `address`, after verifying its evidence against `policy`.
/// HTTP/1.0, so the answer is the rest of the stream.
pub fn attested_get(address: &str, policy: &Policy, path: &str) -> Result<AttestedAnswer> {
    let verifier = Arc::new(AttestedServerVerifier::new(
        policy.clone(),
        Collateral::none(),
    ));
    let config = client_config(Arc::clone(&verifier)).context("cannot set up TLS")?;
    let name = rustls_pki_types::ServerName::try_from("localhost")
        .map_err(|e| anyhow!("server name: {e}"))?;
    let connection =
        rustls::ClientConnection::new(config, name).context("cannot start a TLS session")?;
    let tcp =
        TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .and_then(|()| tls.flush())
        .with_context(|| format!("GET https://{address}{path}"))?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify has still sent the whole HTTP/1.0 answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("GET https://{address}{path}")),
    }
    let verified = verifier
        .verified()
        .context("the handshake verified no server")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET https://{address}{path}: no HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET https://{address}{path}: no status"))?;
    Ok(AttestedAnswer {
        status,
        body: body.to_owned(),
        verified,
    })
}

/// The sum of a Prometheus counter's samples whose labels include `model="NAME"`.
pub fn counter(metrics: &str, name: &str, model: &str) -> f64 {
    let label = format!("model=\"{model}\"");
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(&label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_test_set_is_whole() {
        let set = TestSet::embedded().unwrap();
        assert_eq!(set.count, 360);
        let correct = set
            .labels
            .iter()
            .zip(&set.sklearn_predictions)
            .filter(|(a, b)| a == b)
            .count();
        assert_eq!(correct, set.sklearn_correct);
        assert!(DIGITS_ONNX.len() > 1000);
    }

    #[test]
    fn counters_are_summed_per_model() {
        let text = "# TYPE nv_inference_count counter\n\
                    nv_inference_count{model=\"digits\",version=\"1\"} 360\n\
                    nv_inference_count{model=\"other\",version=\"1\"} 5\n\
                    nv_inference_count_total{model=\"digits\"} 9\n";
        assert_eq!(counter(text, "nv_inference_count", "digits"), 360.0);
        assert_eq!(counter(text, "nv_inference_count", "none"), 0.0);
    }

    #[test]
    fn sim_policies_parse() {
        let text = sim_policy_toml(&[[0xab; 48]], Some([1; 32]));
        let policy = Policy::from_toml(&text).unwrap();
        assert_eq!(policy.sim.unwrap().measurement.len(), 1);
    }
}
