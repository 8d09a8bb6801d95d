//! `adyton kbs`: run the key broker (local trial: flags and environment, no config file yet).

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use adyton_attest::collateral::Collateral;
use adyton_kbs::admin::{AdminAuth, AdminUsers, TRIAL_ADMIN_USER};
use adyton_kbs::http::{self, JsonLinesAudit, KbsState};
use adyton_kbs::master_key::{MasterKey, MASTER_KEY_FILE};
use adyton_kbs::store::redb::RedbStore;
use adyton_kbs::transfer::Broker;
use anyhow::{Context, Result};
use zeroize::Zeroizing;

use crate::cli::KbsServeArgs;

/// The environment variable holding the master key (64 hex digits or base64 of 32 bytes).
const MASTER_KEY_ENV: &str = "ADYTON_KBS_MASTER_KEY";
/// The environment variable holding the password of the trial operator `admin`.
const ADMIN_PASSWORD_ENV: &str = "ADYTON_KBS_ADMIN_PASSWORD";
/// The key store's file name in the data directory.
const STORE_FILE: &str = "kbs.redb";
/// The audit log's file name in the data directory.
const AUDIT_FILE: &str = "audit.jsonl";
/// Largest collateral file read.
const MAX_COLLATERAL_LEN: u64 = 16 << 20;

/// `adyton kbs serve`.
pub fn serve(args: &KbsServeArgs) -> Result<()> {
    let dir = args.data_dir.as_path();
    let master = load_master_key(args.master_key_file.as_deref(), dir)?;
    let store = RedbStore::open(&dir.join(STORE_FILE))
        .with_context(|| format!("cannot open the key store in {}", dir.display()))?;
    let collateral = match &args.collateral {
        Some(path) => load_collateral(path)?,
        None => Collateral::none(),
    };
    let broker =
        Broker::new(Arc::new(store), master, collateral).context("cannot start the key broker")?;
    let audit_path = dir.join(AUDIT_FILE);
    let audit = JsonLinesAudit::new(open_audit_log(&audit_path)?);
    let state = Arc::new(KbsState::new(broker, Arc::new(audit), http::system_clock));
    let admin = Arc::new(AdminAuth::new(admin_users()?));

    eprintln!(
        "warning: SIM evidence (INSECURE, anyone can make it) is accepted only for keys whose \
         transfer policy names SIM"
    );
    if args.collateral.is_none() {
        eprintln!("note: no --collateral: SGX, TDX and SNP transfers will be refused");
    }
    eprintln!("audit log: {}", audit_path.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        eprintln!("listening on http://{addr}");
        axum::serve(listener, http::router_with_admin(state, admin))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")?;
        eprintln!("shut down");
        Ok(())
    })
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

/// The trial operator `admin` with the password from the environment, or no operator at all.
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

fn load_collateral(path: &Path) -> Result<Collateral> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    // One byte more than the limit, so that a larger file is noticed without reading it all.
    file.take(MAX_COLLATERAL_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_COLLATERAL_LEN {
        anyhow::bail!(
            "{} is larger than {MAX_COLLATERAL_LEN} bytes",
            path.display()
        );
    }
    Collateral::from_json(&bytes).with_context(|| format!("cannot use {}", path.display()))
}

/// The audit log, opened for appending, created with mode 0600.
fn open_audit_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the audit log {}", path.display()))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                eprintln!("warning: cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = interrupt => {
            if let Err(e) = result {
                eprintln!("warning: cannot listen for SIGINT: {e}");
                std::future::pending::<()>().await;
            }
        }
        () = terminate => {}
    }
    eprintln!("shutting down");
}
