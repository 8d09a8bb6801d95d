//! `adyton kbs`: run the key broker, from a TOML configuration file (`--config`) or, in the local
//! trial, from flags and the environment; and hash admin passwords for the configuration file.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adyton_attest::gpu::GpuVerifier;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_kbs::admin::{AdminAuth, AdminUsers, TRIAL_ADMIN_USER};
use adyton_kbs::audit::{
    AuditSink, FileAudit, JsonLinesAudit, RateLimit, RateLimitedAudit, Rotation,
};
use adyton_kbs::http::{self, KbsState};
use adyton_kbs::master_key::{MasterKey, MASTER_KEY_FILE};
use adyton_kbs::store::postgres::PostgresStore;
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::store::Store;
use adyton_kbs::transfer::Broker;
use anyhow::{Context, Result};
use serde::Deserialize;
use zeroize::Zeroizing;

use adyton_cli::collateral::{self, CollateralArgs, CollateralSetting};
use adyton_cli::net::{self, ListenArgs, TlsFiles, LISTEN_HELP};
use clap::{Args, Subcommand};

use crate::files::read_limited;
use crate::kbs_client::{self, KbsKeyCommand, KbsLoginArgs, KbsPolicyCommand, KbsTransferArgs};

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Serve the KBS HTTP API (key transfer and admin) until SIGINT or SIGTERM.
    ///
    /// With --config, settings come from a TOML file (docs/kbs-config.md), flags overriding it.
    /// Without it, local-trial mode: everything comes from flags and the environment.
    /// ADYTON_KBS_MASTER_KEY (64 hex digits or base64 of 32 bytes) sets the master key; else
    /// --master-key-file; else DIR/master.key, generated (mode 0600) on first start.
    /// ADYTON_KBS_ADMIN_PASSWORD enables the admin API for the user `admin`; without it every admin
    /// request is 401. Transfer decisions and admin actions are appended to DIR/audit.jsonl. SIM
    /// evidence is accepted only for keys whose transfer policy names SIM.
    #[command(after_help = "Examples:\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs serve --listen 127.0.0.1:8443 --data-dir /var/lib/adyton-kbs\n  \
        adyton kbs serve --listen 127.0.0.1:0 --data-dir kbs --collateral collateral.json")]
    Serve(Box<KbsServeArgs>),

    /// Hash an admin password for the `[[admin]]` entries of a KBS configuration file.
    ///
    /// The password comes from ADYTON_KBS_ADMIN_PASSWORD, else from one line of standard input;
    /// the argon2id PHC string (`$argon2id$...`) is printed on standard output.
    #[command(after_help = "Examples:\n  \
        pass show kbs-admin | adyton kbs hash-password\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs hash-password")]
    HashPassword,

    /// Log in to a KBS's admin API and keep the token (15 minutes) in a file of mode 0600.
    ///
    /// The password comes from ADYTON_KBS_ADMIN_PASSWORD, else from one line of standard input.
    #[command(after_help = "Examples:\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs login --url http://127.0.0.1:8443\n  \
        pass show kbs | adyton kbs login --url https://kbs.example --token-file kbs-token")]
    Login(KbsLoginArgs),

    /// Create, list, show and delete key transfer policies.
    #[command(subcommand)]
    Policy(KbsPolicyCommand),

    /// Create (or import), list, show and delete model keys. Key bytes are never shown.
    #[command(subcommand)]
    Key(KbsKeyCommand),

    /// Answer an offline device's provisioning request with its key, wrapped to the device.
    ///
    /// A device with no network writes a provisioning request (its attestation evidence over a
    /// public key of its own) and someone carries the file here. The KBS checks the evidence and
    /// the key's transfer policy as for an online transfer, wraps the key to the device's public
    /// key, and audits the decision with the request id, the model and your user name. The
    /// response file goes back to the device, which unwraps the key and seals it to its TEE. It
    /// holds no usable key for anyone else. TDX devices are refused: TDX cannot seal. Online
    /// servers need none of this: they fetch their keys from the KBS themselves.
    #[command(after_help = "Examples:\n  \
        adyton kbs transfer --url https://kbs.example --offline request.json -o response.json")]
    Transfer(KbsTransferArgs),
}

#[derive(Debug, Args)]
#[command(mut_arg("listen", |arg| arg.help(format!(
    "{LISTEN_HELP}. Without TLS this is plain HTTP: put it behind TLS or keep it on a trusted \
     network [default: {DEFAULT_LISTEN}]"
))))]
pub struct KbsServeArgs {
    /// Configuration file (TOML; see docs/kbs-config.md). Flags given on the command line override
    /// its values. Without it, the local-trial mode described above applies.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub listen: ListenArgs,

    /// Data directory: the key store (kbs.redb), the audit log (audit.jsonl) and, unless given
    /// otherwise, the master key (master.key). Created with mode 0700 if missing. Required unless
    /// the configuration file sets `data_dir`.
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,

    /// Master key file: exactly 32 raw bytes, mode 0600 (ignored when ADYTON_KBS_MASTER_KEY is
    /// set) [default: DIR/master.key, generated if missing].
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Directory of NVIDIA reference integrity manifests (`*.xml`, `*.swidtag`, as NVIDIA's RIM
    /// service serves them) for GPUs attached to evidence under policies with `nvidia_gpu`. Each
    /// is verified against NVIDIA's RIM root when used. Without it, GPU evidence must carry its
    /// RIMs.
    #[arg(long, value_name = "DIR", env = "ADYTON_KBS_GPU_RIMS")]
    pub gpu_rims: Option<PathBuf>,

    /// Where the collateral for verifying SGX, TDX and SNP evidence comes from: a bundle file, a
    /// PCCS or Intel's PCS, AMD's KDS (or `[collateral]` in the configuration file). Without any,
    /// only SIM evidence (under SIM policies) and SNP evidence that carries its VCEK can succeed.
    #[command(flatten)]
    pub collateral: CollateralArgs,

    #[command(flatten)]
    pub tls: adyton_cli::net::TlsArgs,

    #[command(flatten)]
    pub connections: adyton_cli::net::ConnectionArgs,
}

/// The environment variable holding the master key (64 hex digits or base64 of 32 bytes).
const MASTER_KEY_ENV: &str = "ADYTON_KBS_MASTER_KEY";
/// The environment variable holding the password of the trial operator `admin`.
const ADMIN_PASSWORD_ENV: &str = "ADYTON_KBS_ADMIN_PASSWORD";
/// The key store's file name in the data directory.
const STORE_FILE: &str = "kbs.redb";
/// The environment variable holding the PostgreSQL store's URL, unless `[store].url_env` names
/// another.
const DATABASE_URL_ENV: &str = "ADYTON_KBS_DATABASE_URL";
/// The audit log's file name in the data directory.
const AUDIT_FILE: &str = "audit.jsonl";

/// `adyton kbs serve`.
/// Runs an `adyton kbs` subcommand.
pub fn run(command: &KbsCommand) -> Result<()> {
    match command {
        KbsCommand::Serve(args) => serve(args),
        KbsCommand::HashPassword => hash_password(),
        KbsCommand::Login(args) => kbs_client::login(args),
        KbsCommand::Policy(command) => kbs_client::policy(command),
        KbsCommand::Key(command) => kbs_client::key(command),
        KbsCommand::Transfer(args) => kbs_client::transfer(args),
    }
}

pub fn serve(args: &KbsServeArgs) -> Result<()> {
    // Everything that can be wrong in the configuration is found before anything is opened or bound.
    let settings = Settings::resolve(args)?;
    let tls = settings.tls.as_ref().map(TlsFiles::load).transpose()?;
    let users = match &settings.admins {
        Some(admins) => configured_admin_users(admins, &settings.source)?,
        None => admin_users()?,
    };
    let dir = settings.data_dir.as_path();
    let master = load_master_key(settings.master_key_file.as_deref(), dir)?;
    let store = open_store(&settings.store, dir)?;
    let no_collateral = settings.collateral.is_empty();
    describe_collateral(&settings.collateral);
    let provider = CollateralProvider::new(settings.collateral)
        .context("cannot use the collateral settings")?;
    let mut broker = Broker::with_provider(store, master, Arc::new(provider))
        .context("cannot start the key broker")?;
    if let Some(dir) = &args.gpu_rims {
        let verifier = GpuVerifier::new()
            .and_then(|v| v.with_rim_dir(dir))
            .with_context(|| format!("cannot read the GPU RIMs in {}", dir.display()))?;
        broker = broker.with_gpu_verifier(verifier);
    }
    let audit_path = settings.audit_log.clone();
    let audit = open_audit(&settings.audit, &audit_path)?;
    let state = Arc::new(KbsState::new(broker, audit, http::system_clock));
    let admin = Arc::new(AdminAuth::new(users));

    eprintln!(
        "warning: SIM evidence (INSECURE, anyone can make it) is accepted only for keys whose \
         transfer policy names SIM"
    );
    if no_collateral {
        eprintln!(
            "note: no collateral source (--collateral, --pccs-url, --kds-url or [collateral]): \
             SGX and TDX transfers will be refused, and SNP ones unless the evidence carries its \
             VCEK"
        );
    }
    match settings.audit.destination {
        AuditDestination::File => eprintln!("audit log: {}", audit_path.display()),
        AuditDestination::Stdout => eprintln!("audit log: standard output (JSON lines)"),
    }

    net::serve(settings.listen, tls, settings.connections, |_| {
        http::router_with_admin(state, admin)
    })
}

/// `adyton kbs hash-password`: the argon2id PHC string of a password from
/// `ADYTON_KBS_ADMIN_PASSWORD` or one line of standard input.
pub fn hash_password() -> Result<()> {
    let password = match std::env::var_os(ADMIN_PASSWORD_ENV) {
        Some(value) => Zeroizing::new(
            value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{ADMIN_PASSWORD_ENV} is not valid UTF-8"))?,
        ),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password to hash (shown as typed; prefer {ADMIN_PASSWORD_ENV}): ");
                let _ = std::io::stderr().flush();
            }
            let mut line = Zeroizing::new(String::new());
            stdin
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned())
        }
    };
    if password.is_empty() {
        anyhow::bail!("no password: set {ADMIN_PASSWORD_ENV} or write it on standard input");
    }
    let phc = hash_phc(password.as_bytes())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{phc}").context("cannot write to standard output")?;
    Ok(())
}

/// argon2id (v19, the OWASP parameters of `Argon2::default()`, as adyton-kbs uses) with a random
/// 16-byte salt from aws-lc-rs.
fn hash_phc(password: &[u8]) -> Result<String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("the random source failed"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// The default listen address.
const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// `kbs.toml`: see docs/kbs-config.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    /// A bundle file's path, or a `[collateral]` table.
    collateral: Option<CollateralSetting>,
    audit_log: Option<PathBuf>,
    audit: Option<AuditSection>,
    #[serde(default)]
    admin: Vec<AdminEntry>,
    tls: Option<TlsFiles>,
    store: Option<StoreSection>,
    connections: Option<net::ConnectionsSection>,
    /// Refused with an explanation rather than as an unknown field.
    #[serde(rename = "master_key", default, deserialize_with = "refuse_master_key")]
    _master_key: (),
}

/// `[audit]`: where the audit log goes, its rotation and its limit on unauthenticated records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    #[serde(default)]
    destination: AuditDestination,
    max_file_bytes: Option<u64>,
    max_files: Option<u32>,
    unauthenticated_per_second: Option<f64>,
    unauthenticated_burst: Option<u32>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            destination: AuditDestination::File,
            max_file_bytes: None,
            max_files: None,
            unauthenticated_per_second: None,
            unauthenticated_burst: None,
        }
    }
}

impl AuditSection {
    fn check(&self, source: &str) -> Result<()> {
        if self.max_file_bytes.is_some_and(|b| b < 4096) {
            anyhow::bail!("{source}: [audit] max_file_bytes must be at least 4096");
        }
        if self.max_files == Some(0) {
            anyhow::bail!("{source}: [audit] max_files must be at least 1");
        }
        if self
            .unauthenticated_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            anyhow::bail!("{source}: [audit] unauthenticated_per_second must be a positive number");
        }
        Ok(())
    }
}

/// Where audit records go: the file (`audit_log`), or standard output as JSON lines for a log
/// collector (journald, a container runtime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuditDestination {
    #[default]
    File,
    Stdout,
}

/// `[store]`: where policies and keys are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    backend: StoreBackend,
    /// PostgreSQL only: the environment variable that holds the URL.
    url_env: Option<String>,
    /// Refused with an explanation rather than as an unknown field.
    #[serde(rename = "url", default, deserialize_with = "refuse_url")]
    _url: (),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreBackend {
    /// `kbs.redb` in the data directory.
    Redb,
    /// One PostgreSQL database, which several replicas may share.
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    username: String,
    password_hash: Option<String>,
    /// Refused with an explanation rather than as an unknown field.
    #[serde(rename = "password", default, deserialize_with = "refuse_password")]
    _password: (),
}

fn refuse_master_key<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "`master_key` is not allowed: the master key is never kept in the configuration file \
         (which is read by more people and tools than the key should be); set `master_key_file` \
         to a file of mode 0600, or ADYTON_KBS_MASTER_KEY",
    ))
}

fn refuse_url<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(format!(
        "`url` is not allowed: the database URL holds a password, which is never kept in the \
         configuration file; put the URL in the environment variable named by `url_env` \
         (default {DATABASE_URL_ENV})"
    )))
}

fn refuse_password<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "`password` is not allowed: only hashed passwords are kept in the configuration file; \
         run `adyton kbs hash-password` and set `password_hash` to what it prints",
    ))
}

/// The settings `serve` runs with: the configuration file (if any), overridden by flags.
struct Settings {
    /// Where the settings came from, for messages.
    source: String,
    listen: String,
    data_dir: PathBuf,
    master_key_file: Option<PathBuf>,
    collateral: ProviderConfig,
    audit_log: PathBuf,
    audit: AuditSection,
    /// `Some` with `--config` (possibly empty); `None` in the local trial.
    admins: Option<Vec<AdminEntry>>,
    tls: Option<TlsFiles>,
    store: StoreSetting,
    connections: net::ConnectionLimits,
}

/// The key store `serve` opens.
enum StoreSetting {
    /// `DATA_DIR/kbs.redb`.
    Redb,
    /// PostgreSQL at `url`, read from the environment variable `url_env`.
    Postgres {
        url_env: String,
        url: Zeroizing<String>,
    },
}

impl StoreSetting {
    /// The `[store]` section, with the URL read from the environment now, so that a missing
    /// variable is found before anything is opened.
    fn resolve(section: Option<StoreSection>, source: &str) -> Result<Self> {
        let Some(section) = section else {
            return Ok(Self::Redb);
        };
        match (section.backend, section.url_env) {
            (StoreBackend::Redb, None) => Ok(Self::Redb),
            (StoreBackend::Redb, Some(_)) => {
                anyhow::bail!("{source}: [store] `url_env` is only for backend = \"postgres\"")
            }
            (StoreBackend::Postgres, url_env) => {
                let url_env = url_env.unwrap_or_else(|| DATABASE_URL_ENV.to_owned());
                if url_env.is_empty() {
                    anyhow::bail!("{source}: [store] `url_env` is empty");
                }
                let url = match std::env::var_os(&url_env) {
                    Some(value) => Zeroizing::new(value.into_string().map_err(|_| {
                        anyhow::anyhow!("{url_env} (the PostgreSQL URL) is not valid UTF-8")
                    })?),
                    None => anyhow::bail!(
                        "{source}: [store] backend = \"postgres\" takes the database URL from \
                         the environment variable {url_env}, which is not set"
                    ),
                };
                if url.trim().is_empty() {
                    anyhow::bail!("{url_env} (the PostgreSQL URL) is empty");
                }
                Ok(Self::Postgres { url_env, url })
            }
        }
    }
}

/// Opens the configured store. Errors never show a database password.
fn open_store(setting: &StoreSetting, data_dir: &Path) -> Result<Arc<dyn Store>> {
    match setting {
        StoreSetting::Redb => {
            let store = RedbStore::open(&data_dir.join(STORE_FILE))
                .with_context(|| format!("cannot open the key store in {}", data_dir.display()))?;
            Ok(Arc::new(store))
        }
        StoreSetting::Postgres { url_env, url } => {
            let store = PostgresStore::connect(url).with_context(|| {
                format!("cannot open the key store in PostgreSQL (the URL in {url_env})")
            })?;
            eprintln!("key store: PostgreSQL at {}", store.target());
            Ok(Arc::new(store))
        }
    }
}

impl Settings {
    fn resolve(args: &KbsServeArgs) -> Result<Self> {
        let flag_tls = TlsFiles::from_args(&args.tls);
        let Some(path) = &args.config else {
            let data_dir = args
                .data_dir
                .clone()
                .context("--data-dir is required without --config")?;
            return Ok(Self {
                source: "the command line".to_owned(),
                listen: args
                    .listen
                    .address
                    .clone()
                    .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
                audit_log: data_dir.join(AUDIT_FILE),
                audit: AuditSection::default(),
                data_dir,
                master_key_file: args.master_key_file.clone(),
                collateral: args.collateral.provider_config()?,
                admins: None,
                tls: flag_tls,
                store: StoreSetting::Redb,
                connections: net::ConnectionLimits::resolve(None, &args.connections, "")?,
            });
        };
        let file = load_config(path)?;
        let source = path.display().to_string();
        let store = StoreSetting::resolve(file.store, &source)?;
        // Relative paths in the file are relative to the file's directory.
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data_dir = match (&args.data_dir, file.data_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => rel(dir),
            (None, None) => anyhow::bail!(
                "{source}: `data_dir` is missing (set it in the file or pass --data-dir)"
            ),
        };
        let audit_log = file
            .audit_log
            .map(&rel)
            .unwrap_or_else(|| data_dir.join(AUDIT_FILE));
        let audit = file.audit.unwrap_or_default();
        audit.check(&source)?;
        let tls = flag_tls.or(file.tls.map(|t| TlsFiles {
            certificate: rel(t.certificate),
            private_key: rel(t.private_key),
        }));
        Ok(Self {
            listen: args
                .listen
                .address
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            master_key_file: args
                .master_key_file
                .clone()
                .or(file.master_key_file.map(&rel)),
            collateral: collateral::resolve(
                &args.collateral,
                file.collateral
                    .map(CollateralSetting::into_section)
                    .as_ref(),
                &base,
                &source,
            )?,
            data_dir,
            audit_log,
            audit,
            admins: Some(file.admin),
            tls,
            store,
            connections: net::ConnectionLimits::resolve(
                file.connections.as_ref(),
                &args.connections,
                &source,
            )?,
            source,
        })
    }
}

/// Largest configuration file read.
const MAX_CONFIG_LEN: u64 = 1 << 20;

fn load_config(path: &Path) -> Result<ConfigFile> {
    let bytes = read_limited(path, MAX_CONFIG_LEN, "the configuration file")?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    toml::from_str(text).map_err(|e| {
        // The parser quotes the offending line, and the line of a refused secret holds the secret:
        // for those, the line number and the explanation only.
        if e.message().contains("is not allowed") {
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1);
            match line {
                Some(line) => anyhow::anyhow!("{}, line {line}: {}", path.display(), e.message()),
                None => anyhow::anyhow!("{}: {}", path.display(), e.message()),
            }
        } else {
            anyhow::anyhow!("{}: {e}", path.display())
        }
    })
}

/// The operators of `[[admin]]`: each with a username and an argon2 PHC `password_hash`.
fn configured_admin_users(admins: &[AdminEntry], source: &str) -> Result<AdminUsers> {
    if std::env::var_os(ADMIN_PASSWORD_ENV).is_some() {
        eprintln!(
            "note: {ADMIN_PASSWORD_ENV} is ignored with --config: operators come from [[admin]]"
        );
    }
    let mut users = AdminUsers::none();
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in admins.iter().enumerate() {
        let n = i + 1;
        if entry.username.is_empty() {
            anyhow::bail!("{source}: [[admin]] entry {n}: `username` is empty");
        }
        if !seen.insert(entry.username.as_str()) {
            anyhow::bail!(
                "{source}: [[admin]] entry {n}: username `{}` appears more than once",
                entry.username
            );
        }
        let Some(hash) = &entry.password_hash else {
            anyhow::bail!(
                "{source}: [[admin]] entry {n} (`{}`): `password_hash` is missing (make one with \
                 `adyton kbs hash-password`)",
                entry.username
            );
        };
        if !hash.starts_with("$argon2") {
            anyhow::bail!(
                "{source}: [[admin]] entry {n} (`{}`): `password_hash` is not an argon2 PHC \
                 string (`$argon2id$...`); make one with `adyton kbs hash-password`",
                entry.username
            );
        }
        users
            .add_hash(&entry.username, hash)
            .map_err(|e| anyhow::anyhow!("{source}: [[admin]] entry {n}: {e}"))?;
    }
    if admins.is_empty() {
        eprintln!(
            "warning: {source} has no [[admin]] entries: the admin API is disabled (every admin \
             request is 401)"
        );
    }
    Ok(users)
}

/// The master key: from the environment, else from `--master-key-file`, else `DIR/master.key`
/// (generated on first use).
fn load_master_key(file: Option<&Path>, dir: &Path) -> Result<MasterKey> {
    if let Some(value) = std::env::var_os(MASTER_KEY_ENV) {
        let value = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{MASTER_KEY_ENV} is not valid UTF-8"))?,
        );
        if file.is_some() {
            eprintln!("note: {MASTER_KEY_ENV} is set; --master-key-file is ignored");
        }
        return MasterKey::from_env_value(&value)
            .with_context(|| format!("cannot use {MASTER_KEY_ENV}"));
    }
    if let Some(path) = file {
        return MasterKey::from_file(path)
            .with_context(|| format!("cannot use the master key file {}", path.display()));
    }
    let (key, created) = MasterKey::load_or_generate(dir)
        .with_context(|| format!("cannot load or generate a master key in {}", dir.display()))?;
    if created {
        eprintln!(
            "generated a master key at {} (mode 0600): back it up; without it the stored keys \
             are lost",
            dir.join(MASTER_KEY_FILE).display()
        );
    }
    Ok(key)
}

/// The trial operator `admin` with the password from the environment, or no operator at all
/// (local trial, without --config).
fn admin_users() -> Result<AdminUsers> {
    match std::env::var_os(ADMIN_PASSWORD_ENV) {
        Some(value) => {
            let password = Zeroizing::new(
                value
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("{ADMIN_PASSWORD_ENV} is not valid UTF-8"))?,
            );
            if password.is_empty() {
                anyhow::bail!("{ADMIN_PASSWORD_ENV} is empty");
            }
            AdminUsers::with_password(TRIAL_ADMIN_USER, &password)
                .map_err(|e| anyhow::anyhow!("cannot set up the admin user: {e}"))
        }
        None => {
            eprintln!(
                "warning: {ADMIN_PASSWORD_ENV} is not set: the admin API is disabled (every admin \
                 request is 401)"
            );
            Ok(AdminUsers::none())
        }
    }
}

/// Says on standard error where collateral will come from.
fn describe_collateral(config: &ProviderConfig) {
    if let Some((_, file)) = &config.bundle {
        eprintln!("collateral: bundle file {file}");
    }
    if let Some(url) = &config.pccs_url {
        eprintln!("collateral: SGX and TDX from the PCCS {url}");
    }
    if let Some(url) = &config.kds_url {
        eprintln!("collateral: SNP from the KDS {url}");
    }
    if let Some(dir) = &config.fetch.cache_dir {
        eprintln!("collateral cache: {}", dir.display());
    }
    if let Some(grace) = config.grace_period {
        eprintln!(
            "warning: expired collateral is accepted for {} s after its expiry (grace_period_secs); \
             such transfers are marked in the audit log",
            grace.as_secs()
        );
    }
}

/// The audit log: a file synced after every record and rotated by size, or standard output; either
/// way with unauthenticated failures rate-limited.
fn open_audit(section: &AuditSection, path: &Path) -> Result<Arc<dyn AuditSink>> {
    let defaults = RateLimit::default();
    let limit = RateLimit {
        per_second: section
            .unauthenticated_per_second
            .unwrap_or(defaults.per_second),
        burst: section.unauthenticated_burst.unwrap_or(defaults.burst),
    };
    Ok(match section.destination {
        AuditDestination::File => {
            let defaults = Rotation::default();
            let rotation = Rotation {
                max_file_bytes: section.max_file_bytes.unwrap_or(defaults.max_file_bytes),
                max_files: section.max_files.unwrap_or(defaults.max_files),
            };
            let file = FileAudit::open(path, rotation)
                .with_context(|| format!("cannot open the audit log {}", path.display()))?;
            Arc::new(RateLimitedAudit::new(file, limit, http::system_clock))
        }
        AuditDestination::Stdout => Arc::new(RateLimitedAudit::new(
            JsonLinesAudit::new(std::io::stdout()),
            limit,
            http::system_clock,
        )),
    })
}
