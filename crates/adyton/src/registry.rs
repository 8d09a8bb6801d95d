//! `adyton registry serve`: run the model registry, from a TOML configuration file (`--config`)
//! or, in the local trial, from flags (docs/registry.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adyton_registry::blob::s3::S3Config;
use adyton_registry::blob::{self, StoreConfig};
use adyton_registry::http::{self, RegistryState, WriteToken};
use adyton_registry::registry::{Registry, DEFAULT_MAX_BLOB_BYTES};
use anyhow::{bail, Context, Result};
use serde::Deserialize;

use adyton_cli::net::{self, ListenArgs, TlsFiles, LISTEN_HELP};
use adyton_cli::secrets::TokenFileArgs;
use clap::{Args, Subcommand};

use crate::files::read_limited;
use crate::secrets::read_token_file;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry's HTTP API (docs/registry.md) until SIGINT or SIGTERM.
    ///
    /// With --config, settings come from a TOML file (docs/registry.md, "Configuration"), flags
    /// overriding it. Without it, a local trial: blobs in --data-dir, writes allowed with the token
    /// in --token-file. Blobs are stored and served as they are: the registry never sees a key.
    #[command(after_help = "Examples:\n  \
        adyton registry serve --listen 127.0.0.1:8080 --data-dir registry --token-file token\n  \
        adyton registry serve --config registry.toml")]
    Serve(RegistryServeArgs),
}

#[derive(Debug, Args)]
#[command(
    mut_arg("listen", |arg| arg.help(format!("{LISTEN_HELP} [default: {DEFAULT_LISTEN}]"))),
    mut_arg("token_file", |arg| arg.help(
        "A file holding the bearer token that writes (uploads, info, deletes) require; without \
         one, every write is refused (401)"
    )),
)]
pub struct RegistryServeArgs {
    /// Configuration file (TOML; see docs/registry.md). Flags given on the command line override
    /// its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub listen: ListenArgs,

    /// Directory of the filesystem store (blobs and model info). Created with mode 0700 if
    /// missing. Required unless the configuration file sets `data_dir` or an S3 store.
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub token_file: TokenFileArgs,

    /// The URL clients reach this registry at, used in the models' `url` [default:
    /// http(s)://ADDR, the address bound].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Largest blob accepted, e.g. 512M or 20G [default: 8G].
    #[arg(long, value_name = "SIZE", value_parser = adyton_cli::bytes::parse_bytes)]
    pub max_blob_bytes: Option<u64>,

    #[command(flatten)]
    pub tls: adyton_cli::net::TlsArgs,

    #[command(flatten)]
    pub connections: adyton_cli::net::ConnectionArgs,
}

/// The default listen address.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest configuration file read.
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// `registry.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    /// The filesystem store's directory (`[store] backend = "fs"`, the default).
    data_dir: Option<PathBuf>,
    public_url: Option<String>,
    token_file: Option<PathBuf>,
    max_blob_bytes: Option<u64>,
    tls: Option<TlsFiles>,
    store: Option<StoreSection>,
    connections: Option<net::ConnectionsSection>,
}

/// `[store]`: where blobs and model info are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    backend: Backend,
    /// S3 only.
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    #[serde(default)]
    allow_http: bool,
    /// Refused with an explanation rather than as an unknown field.
    #[serde(
        rename = "access_key_id",
        default,
        deserialize_with = "refuse_credentials"
    )]
    _access_key_id: (),
    #[serde(
        rename = "secret_access_key",
        default,
        deserialize_with = "refuse_credentials"
    )]
    _secret_access_key: (),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    Fs,
    S3,
}

fn refuse_credentials<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "S3 credentials are not allowed in the configuration file: set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY in the registry's environment",
    ))
}

/// The settings `serve` runs with: the file (if any), overridden by flags.
struct Settings {
    listen: String,
    store: StoreConfig,
    public_url: Option<String>,
    token_file: Option<PathBuf>,
    max_blob_bytes: u64,
    tls: Option<TlsFiles>,
    connections: net::ConnectionLimits,
}

impl Settings {
    fn resolve(args: &RegistryServeArgs) -> Result<Self> {
        let flag_tls = TlsFiles::from_args(&args.tls);
        let Some(path) = &args.config else {
            let data_dir = args
                .data_dir
                .clone()
                .context("--data-dir is required without --config")?;
            return Ok(Self {
                listen: args
                    .listen
                    .address
                    .clone()
                    .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
                store: StoreConfig::Fs { data_dir },
                public_url: args.public_url.clone(),
                token_file: args.token_file.path.clone(),
                max_blob_bytes: args.max_blob_bytes.unwrap_or(DEFAULT_MAX_BLOB_BYTES),
                tls: flag_tls,
                connections: net::ConnectionLimits::resolve(None, &args.connections, "")?,
            });
        };
        let file = load_config(path)?;
        let source = path.display().to_string();
        // Relative paths in the file are relative to the file's directory.
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let data_dir = args.data_dir.clone().or(file.data_dir.map(&rel));
        let store = match file.store {
            None
            | Some(StoreSection {
                backend: Backend::Fs,
                endpoint: None,
                bucket: None,
                region: None,
                allow_http: false,
                ..
            }) => StoreConfig::Fs {
                data_dir: data_dir.with_context(|| {
                    format!(
                        "{source}: `data_dir` is missing (set it in the file or pass --data-dir)"
                    )
                })?,
            },
            Some(StoreSection {
                backend: Backend::Fs,
                ..
            }) => bail!(
                "{source}: [store] `endpoint`, `bucket`, `region` and `allow_http` are only for \
                 backend = \"s3\""
            ),
            Some(StoreSection {
                backend: Backend::S3,
                endpoint,
                bucket,
                region,
                allow_http,
                ..
            }) => {
                if args.data_dir.is_some() {
                    bail!("--data-dir is for the filesystem store; {source} uses S3");
                }
                StoreConfig::S3(S3Config {
                    endpoint,
                    bucket: bucket
                        .with_context(|| format!("{source}: [store] `bucket` is missing"))?,
                    region,
                    allow_http,
                })
            }
        };
        Ok(Self {
            listen: args
                .listen
                .address
                .clone()
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            store,
            public_url: args.public_url.clone().or(file.public_url),
            token_file: args.token_file.path.clone().or(file.token_file.map(&rel)),
            max_blob_bytes: args
                .max_blob_bytes
                .or(file.max_blob_bytes)
                .unwrap_or(DEFAULT_MAX_BLOB_BYTES),
            tls: flag_tls.or(file.tls.map(|t| TlsFiles {
                certificate: rel(t.certificate),
                private_key: rel(t.private_key),
            })),
            connections: net::ConnectionLimits::resolve(
                file.connections.as_ref(),
                &args.connections,
                &source,
            )?,
        })
    }
}

/// `adyton registry serve`.
/// Runs an `adyton registry` subcommand.
pub fn run(command: &RegistryCommand) -> Result<()> {
    match command {
        RegistryCommand::Serve(args) => serve(args),
    }
}

pub fn serve(args: &RegistryServeArgs) -> Result<()> {
    // Everything that can be wrong in the configuration is found before anything is bound.
    let settings = Settings::resolve(args)?;
    let tls = settings.tls.as_ref().map(TlsFiles::load).transpose()?;
    let token = match &settings.token_file {
        Some(path) => Some(read_write_token(path)?),
        None => {
            eprintln!("warning: no token file: every write (upload, info, delete) is refused");
            None
        }
    };
    if let Some(url) = &settings.public_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("the public URL `{url}` is not an http(s) URL");
        }
    }
    let store = blob::open(&settings.store).context("cannot open the blob store")?;
    match &settings.store {
        StoreConfig::Fs { data_dir } => eprintln!("blob store: {}", data_dir.display()),
        StoreConfig::S3(s3) => eprintln!(
            "blob store: S3 bucket {} at {}",
            s3.bucket,
            s3.endpoint.as_deref().unwrap_or("AWS")
        ),
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    net::serve(&settings.listen, tls, settings.connections, |addr| {
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        eprintln!("public URL: {public_url}");
        let registry = Registry::new(store, &public_url, settings.max_blob_bytes);
        http::router(Arc::new(RegistryState { registry, token }))
    })
}

fn load_config(path: &Path) -> Result<ConfigFile> {
    let bytes = read_limited(path, MAX_CONFIG_LEN, "the configuration file")?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    toml::from_str(text).map_err(|e| {
        // The parser quotes the offending line; for a refused credential that line holds it.
        if e.message().contains("are not allowed") {
            anyhow::anyhow!("{}: {}", path.display(), e.message())
        } else {
            anyhow::anyhow!("{}: {e}", path.display())
        }
    })
}

/// The write token from its file.
fn read_write_token(path: &Path) -> Result<WriteToken> {
    let text = read_token_file(path, "token file")?;
    WriteToken::new(&text).with_context(|| format!("token file {} is empty", path.display()))
}
