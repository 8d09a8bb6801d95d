//! `adyton server serve`: the inference server, from a TOML configuration file (`--config`,
//! `docs/server-config.md`) or, in the local trial, from flags alone.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adyton_attest::attested_tls::AttestedTlsError;
use adyton_attest::attester::{self, Attester, AttesterPaths, TeeChoice};
use adyton_attest::TeeKind;
use adyton_server::http::{
    self, AdminToken, FreshEvidence, FreshEvidenceError, ServerState, Settings,
};
use adyton_server::pull::remote::{HttpKeyBroker, HttpRegistry};
use adyton_server::pull::{Backoff, Puller};
use adyton_server::repository::{Pending, Repository, Source};
use adyton_server::runtime::tract::{TractEngine, DEFAULT_LOAD_BUDGET};
use adyton_server::runtime::{Dim, Engine, LoadOptions};
use adyton_server::tls::{AttestedIdentity, TlsIdentityError};
use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::ServerServeArgs;
use crate::files::{OutputFile, OutputKind};
use crate::net;
use crate::secrets::read_token_file;

/// Largest plain model file loaded from disk.
const MAX_MODEL_FILE: u64 = 4 << 30;

/// `server.toml` (docs/server-config.md). Unknown keys are refused so that a typo is not ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    tee: Option<String>,
    sim_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    certificate_out: Option<PathBuf>,
    workers: Option<usize>,
    queue: Option<usize>,
    max_models: Option<usize>,
    max_upload_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_tensor_elements: Option<usize>,
    /// The memory a model's constants may need (the engine's load budget).
    load_budget_bytes: Option<u64>,
    /// The largest JSON infer response.
    max_json_response_bytes: Option<usize>,
    /// The registry that protected models are pulled from.
    registry: Option<String>,
    /// An offline device's state directory: its sealed models are served (docs/offline.md).
    state_dir: Option<PathBuf>,
    #[serde(default, rename = "model")]
    models: Vec<ModelEntry>,
    connections: Option<net::ConnectionsSection>,
}

/// A model to serve: a plain (not secret) file, or a protected model pulled from the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    path: Option<PathBuf>,
    model_id: Option<String>,
    version: Option<u64>,
    /// Input shapes given to the engine, by input name: sizes, -1 keeping a dimension as the
    /// model declares it. `--input-shape` adds to these and replaces them input by input.
    #[serde(default)]
    input_shapes: BTreeMap<String, Vec<i64>>,
    /// `input_shapes`, checked, as the engine takes them (filled in by `resolve`).
    #[serde(skip)]
    load_options: LoadOptions,
}

impl ModelEntry {
    fn new(name: &str, path: Option<PathBuf>, model_id: Option<String>) -> ModelEntry {
        ModelEntry {
            name: name.to_owned(),
            path,
            model_id,
            version: None,
            input_shapes: BTreeMap::new(),
            load_options: LoadOptions::default(),
        }
    }
}

/// The engine's options from a model's `input_shapes`: each dimension a size, or -1.
fn load_options(model: &ModelEntry) -> Result<LoadOptions> {
    let mut options = LoadOptions::default();
    for (input, sizes) in &model.input_shapes {
        let dims = sizes
            .iter()
            .map(|&size| match size {
                -1 => Ok(Dim::Dynamic),
                size => usize::try_from(size).map(Dim::Fixed).map_err(|_| {
                    anyhow::anyhow!(
                        "model '{}': the shape of input '{input}' has {size}; a dimension is a size or -1",
                        model.name
                    )
                }),
            })
            .collect::<Result<Vec<Dim>>>()?;
        options.input_shapes.insert(input.clone(), dims);
    }
    Ok(options)
}

/// `--input-shape NAME:INPUT=DIMS`: the model, the input and its dimensions (comma-separated sizes
/// or -1). The input is split at the last `=`, since ONNX names may hold `:` (`input:0`).
fn parse_input_shape(spec: &str) -> Result<(String, String, Vec<i64>)> {
    let malformed = || {
        anyhow::anyhow!("--input-shape takes NAME:INPUT=DIMS (e.g. ocr:x=1,3,48,320), not '{spec}'")
    };
    let (model, rest) = spec.split_once(':').ok_or_else(malformed)?;
    let (input, dims) = rest.rsplit_once('=').ok_or_else(malformed)?;
    if model.is_empty() || input.is_empty() {
        return Err(malformed());
    }
    let dims = if dims.trim().is_empty() {
        // A scalar input has no dimensions.
        Vec::new()
    } else {
        dims.split(',')
            .map(|d| d.trim().parse::<i64>().map_err(|_| malformed()))
            .collect::<Result<Vec<i64>>>()?
    };
    Ok((model.to_owned(), input.to_owned(), dims))
}

/// Settings after merging the file and the flags (flags win).
#[derive(Debug)]
struct Resolved {
    listen: SocketAddr,
    tee: TeeChoice,
    sim_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    certificate_out: Option<PathBuf>,
    max_models: usize,
    load_budget: u64,
    settings: Settings,
    models: Vec<ModelEntry>,
    registry: Option<String>,
    state_dir: Option<PathBuf>,
    connections: net::ConnectionLimits,
}

fn resolve(args: &ServerServeArgs) -> Result<Resolved> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut file = toml::from_str::<ConfigFile>(&text).with_context(|| {
                format!("{} is not a valid server configuration", path.display())
            })?;
            // Paths in the file are relative to the file's directory.
            let base = path.parent().unwrap_or(Path::new("."));
            for p in [
                &mut file.sim_key,
                &mut file.token_file,
                &mut file.certificate_out,
                &mut file.state_dir,
            ]
            .into_iter()
            .flatten()
            {
                *p = base.join(&*p);
            }
            for model in &mut file.models {
                if let Some(path) = &mut model.path {
                    *path = base.join(&*path);
                }
            }
            file
        }
        None => ConfigFile::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .context("--listen is required without --config (or set `listen` in the file)")?;
    let tee_text = args
        .tee
        .clone()
        .or(file.tee)
        .unwrap_or_else(|| "auto".to_owned());
    let tee: TeeChoice = tee_text
        .parse()
        .with_context(|| format!("unknown TEE '{tee_text}' (auto, sgx, tdx, snp or sim)"))?;
    let mut models = file.models;
    for spec in &args.models {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--model takes NAME=PATH.onnx, not '{spec}'"))?;
        models.push(ModelEntry::new(name, Some(PathBuf::from(path)), None));
    }
    for spec in &args.pulls {
        let (name, model_id) = spec
            .split_once('=')
            .with_context(|| format!("--pull takes NAME=MODEL_ID, not '{spec}'"))?;
        models.push(ModelEntry::new(name, None, Some(model_id.to_owned())));
    }
    let state_dir = args.state_dir.clone().or(file.state_dir);
    for spec in &args.input_shapes {
        let (name, input, dims) = parse_input_shape(spec)?;
        let mut found = false;
        for model in models.iter_mut().filter(|m| m.name == name) {
            model.input_shapes.insert(input.clone(), dims.clone());
            found = true;
        }
        if !found && state_dir.is_some() {
            // A model provisioned on this device (checked against the state directory at start).
            let mut sealed = ModelEntry::new(&name, None, None);
            sealed.input_shapes.insert(input.clone(), dims.clone());
            models.push(sealed);
        } else if !found {
            bail!(
                "--input-shape '{spec}': no model is named '{name}' (--model, --pull or [[model]])"
            );
        }
    }
    for model in &mut models {
        model.load_options = load_options(model)?;
    }
    for model in &models {
        match (&model.path, &model.model_id) {
            (Some(_), None) | (None, Some(_)) => {}
            (None, None) if state_dir.is_some() => {}
            (None, None) => bail!(
                "model '{}' needs one of `path` (a plain file) and `model_id` (pulled from the \
                 registry), or `state_dir` for a model provisioned on this device",
                model.name
            ),
            _ => bail!(
                "model '{}' needs exactly one of `path` (a plain file) and `model_id` (pulled from the registry)",
                model.name
            ),
        }
    }
    let registry = args.registry.clone().or(file.registry);
    if registry.is_none() && models.iter().any(|m| m.model_id.is_some()) {
        bail!(
            "models pulled by model_id need a registry (--registry URL, or `registry` in the file)"
        );
    }
    let mut settings = Settings::default();
    if let Some(n) = args.workers.or(file.workers) {
        if n == 0 {
            bail!("workers must be at least 1");
        }
        settings.workers = n;
    }
    settings.queue = args.queue.or(file.queue).unwrap_or(settings.workers * 16);
    if let Some(n) = args.max_upload_bytes.or(file.max_upload_bytes) {
        settings.max_upload = n;
    }
    if let Some(n) = args.max_request_bytes.or(file.max_request_bytes) {
        settings.max_infer_body = n;
    }
    if let Some(n) = file.max_tensor_elements {
        settings.limits.max_elements = n;
        settings.limits.max_total_elements = settings.limits.max_total_elements.max(n);
    }
    if let Some(n) = args
        .max_json_response_bytes
        .or(file.max_json_response_bytes)
    {
        settings.max_json_response = n;
    }
    let load_budget = args
        .load_budget_bytes
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .or(file.load_budget_bytes)
        .unwrap_or(DEFAULT_LOAD_BUDGET);
    Ok(Resolved {
        listen,
        tee,
        sim_key: args.sim_key.clone().or(file.sim_key),
        token_file: args.token_file.clone().or(file.token_file),
        certificate_out: args.certificate_out.clone().or(file.certificate_out),
        max_models: args.max_models.or(file.max_models).unwrap_or(16),
        load_budget,
        settings,
        models,
        registry,
        state_dir,
        connections: net::ConnectionLimits::resolve(
            file.connections.as_ref(),
            &args.connections,
            &args
                .config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )?,
    })
}

fn read_token(path: &Path) -> Result<AdminToken> {
    let text = read_token_file(path, "token file")?;
    AdminToken::new(&text).with_context(|| format!("token file {} is empty", path.display()))
}

/// Evidence over the TLS key and a client's nonce, from the server's attester.
#[derive(Debug)]
struct Freshness {
    identity: Arc<AttestedIdentity>,
    attester: Arc<dyn Attester>,
}

impl FreshEvidence for Freshness {
    fn evidence_for_nonce(&self, nonce: &[u8]) -> Result<String, FreshEvidenceError> {
        self.identity
            .fresh_evidence(self.attester.as_ref(), nonce)
            .map(|e| e.to_json())
            .map_err(|e| match e {
                TlsIdentityError::Binding(AttestedTlsError::NonceLength { .. }) => {
                    FreshEvidenceError::BadNonce(e.to_string())
                }
                other => FreshEvidenceError::Tee(other.to_string()),
            })
    }
}

fn sim_banner() {
    eprintln!(
        "\n\
         ************************************************************************\n\
         *  WARNING: tee = sim. This server runs in NO trusted execution         *\n\
         *  environment. Its evidence is made with a software key that anyone    *\n\
         *  can hold: it proves NOTHING. Models and inputs are NOT protected.    *\n\
         *  Use it for development and tests only. Clients accept it only when   *\n\
         *  their policy names SIM.                                              *\n\
         ************************************************************************\n"
    );
}

/// Panics inside the engine are caught and answered as errors; their messages may quote tensor
/// or weight values, so only where they happened is printed.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("error: a panic was caught{place} (its message is withheld: it may quote data)");
    }));
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADYTON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or a pipe gets plain `key=value` fields.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// `adyton server serve`.
pub fn serve(args: &ServerServeArgs) -> Result<()> {
    let resolved = resolve(args)?;
    init_logging();
    quiet_panics();
    let admin_token = match &resolved.token_file {
        Some(path) => Some(read_token(path)?),
        None => {
            eprintln!("note: no --token-file: model upload and delete are disabled");
            None
        }
    };
    let mut paths = AttesterPaths::default();
    if let Some(key) = &resolved.sim_key {
        paths.sim_key = key.clone();
    }
    // Offline mode needs the TEE's sealing key: a TEE without one (TDX) is refused before the
    // server starts, with the reason.
    let sealer = match &resolved.state_dir {
        Some(_) => Some(
            adyton_attest::seal::sealer_for(resolved.tee, &paths)
                .context("--state-dir: offline mode needs this TEE's sealing key")?,
        ),
        None => None,
    };
    let attester: Arc<dyn Attester> = Arc::from(
        attester::attester_for(resolved.tee, &paths)
            .context("cannot open the TEE's attestation interface")?,
    );
    if attester.tee() == TeeKind::Sim {
        sim_banner();
    }
    let identity = Arc::new(
        AttestedIdentity::generate(attester.as_ref())
            .context("cannot make the attested TLS identity")?,
    );
    eprintln!(
        "attested TLS: {} evidence over a fresh key; certificate SHA-256 {}",
        attester.tee(),
        hex::encode(identity.certificate_sha256())
    );
    if let Some(path) = &resolved.certificate_out {
        let mut out = OutputFile::create(path, true, OutputKind::Public)?;
        std::io::Write::write_all(out.file(), identity.certificate_pem().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        out.commit()?;
        eprintln!("wrote the certificate to {}", path.display());
    }

    // One engine for every model, so that the load budget holds for files, sealed models,
    // pulls and uploads alike.
    let engine: Arc<dyn Engine> =
        Arc::new(TractEngine::new().with_load_budget(resolved.load_budget));
    let repository = Arc::new(Repository::new(resolved.max_models));
    for entry in &resolved.models {
        if let Some(path) = &entry.path {
            load_file_model(engine.as_ref(), &repository, entry, path)?;
        }
    }
    if let (Some(dir), Some(sealer)) = (&resolved.state_dir, &sealer) {
        // `[[model]]` entries with neither `path` nor `model_id` give settings to sealed models.
        let options: BTreeMap<String, LoadOptions> = resolved
            .models
            .iter()
            .filter(|m| m.path.is_none() && m.model_id.is_none())
            .map(|m| (m.name.clone(), m.load_options.clone()))
            .collect();
        crate::provision::load_sealed(dir, sealer.as_ref(), &engine, &repository, &options)?;
    }
    let puller = match &resolved.registry {
        Some(url) => Some(Arc::new(Puller {
            attester: Arc::clone(&attester),
            engine: Arc::clone(&engine),
            registry: Arc::new(HttpRegistry::new(url).context("the registry URL")?),
            key_broker: Arc::new(HttpKeyBroker),
            backoff: Backoff::default(),
        })),
        None => None,
    };
    // Protected models are pulled in the background; readiness waits for them.
    for entry in &resolved.models {
        if let (Some(model_id), Some(puller)) = (&entry.model_id, &puller) {
            repository
                .set_pending(&entry.name, Pending::Loading)
                .with_context(|| format!("model '{}'", entry.name))?;
            Puller::spawn_with(
                Arc::clone(puller),
                Arc::clone(&repository),
                &entry.name,
                model_id,
                entry.load_options.clone(),
            );
        }
    }
    let freshness: Arc<dyn FreshEvidence> = Arc::new(Freshness {
        identity: Arc::clone(&identity),
        attester: Arc::clone(&attester),
    });
    let mut state = ServerState::new(
        engine,
        repository,
        resolved.settings.clone(),
        admin_token,
        Some(freshness),
    );
    if let Some(puller) = puller {
        state = state.with_puller(puller);
    }
    let state = Arc::new(state);
    let config = identity.rustls_server_config();

    net::serve(resolved.listen, Some(config), resolved.connections, |_| {
        http::router(state)
    })
}

fn load_file_model(
    engine: &dyn Engine,
    repository: &Repository,
    entry: &ModelEntry,
    path: &Path,
) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("model '{}': cannot open {}", entry.name, path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_MODEL_FILE {
        bail!(
            "model '{}': {} is over {MAX_MODEL_FILE} bytes",
            entry.name,
            path.display()
        );
    }
    let mut reader = file.take(MAX_MODEL_FILE);
    let model = engine
        .load_from_reader_with(&mut reader, &entry.load_options)
        .with_context(|| format!("model '{}': cannot load {}", entry.name, path.display()))?;
    let served = repository
        .insert(&entry.name, entry.version, model, Source::File)
        .with_context(|| format!("model '{}'", entry.name))?;
    eprintln!(
        "model '{}' version {} loaded from {} ({} plan): inputs {}; outputs {}",
        served.name,
        served.version,
        path.display(),
        served.model.plan().as_str(),
        http::describe_signature(&served.model.signature().inputs),
        http::describe_signature(&served.model.signature().outputs),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `adyton server serve`'s arguments alone.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServerServeArgs,
    }

    fn resolve_with(file: Option<&str>, flags: &[&str]) -> Result<Resolved> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0"];
        let config = dir.path().join("server.toml");
        let config_arg = config.to_string_lossy().into_owned();
        if let Some(text) = file {
            std::fs::write(&config, text).unwrap();
            argv.extend(["--config", &config_arg]);
        }
        argv.extend(flags);
        resolve(&Serve::try_parse_from(argv).unwrap().args)
    }

    fn shapes(resolved: &Resolved, name: &str) -> BTreeMap<String, Vec<Dim>> {
        resolved
            .models
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .load_options
            .input_shapes
            .clone()
    }

    #[test]
    fn input_shapes_come_from_the_file_and_the_flags() {
        let file = r#"
registry = "http://127.0.0.1:1"

[[model]]
name = "ocr"
path = "ocr.onnx"
input_shapes = { x = [1, 3, 48, 320] }

[[model]]
name = "pulled"
model_id = "m-1"
input_shapes = { "input:0" = [-1, 4], y = [] }

[[model]]
name = "plain"
path = "plain.onnx"
"#;
        let resolved = resolve_with(
            Some(file),
            &[
                "--model",
                "extra=extra.onnx",
                "--input-shape",
                "extra:ids=-1, 128",
                "--input-shape",
                "pulled:y=2",
            ],
        )
        .unwrap();
        assert_eq!(
            shapes(&resolved, "ocr"),
            BTreeMap::from([("x".to_owned(), [1, 3, 48, 320].map(Dim::Fixed).to_vec())])
        );
        // The flag replaces the file's shape of `y`, input by input.
        assert_eq!(
            shapes(&resolved, "pulled"),
            BTreeMap::from([
                ("input:0".to_owned(), vec![Dim::Dynamic, Dim::Fixed(4)]),
                ("y".to_owned(), vec![Dim::Fixed(2)]),
            ])
        );
        assert_eq!(
            shapes(&resolved, "extra"),
            BTreeMap::from([("ids".to_owned(), vec![Dim::Dynamic, Dim::Fixed(128)])])
        );
        assert!(shapes(&resolved, "plain").is_empty());
    }

    #[test]
    fn limits_come_from_the_file_and_the_flags() {
        let defaults = resolve_with(None, &[]).unwrap();
        assert_eq!(defaults.load_budget, DEFAULT_LOAD_BUDGET);
        assert_eq!(
            defaults.settings.max_json_response,
            Settings::default().max_json_response
        );
        let file = "load_budget_bytes = 1073741824\nmax_json_response_bytes = 1048576\n";
        let from_file = resolve_with(Some(file), &[]).unwrap();
        assert_eq!(from_file.load_budget, 1 << 30);
        assert_eq!(from_file.settings.max_json_response, 1 << 20);
        let flags = [
            "--load-budget-bytes",
            "512M",
            "--max-json-response-bytes",
            "2M",
        ];
        let from_flags = resolve_with(Some(file), &flags).unwrap();
        assert_eq!(from_flags.load_budget, 512 << 20);
        assert_eq!(from_flags.settings.max_json_response, 2 << 20);
    }

    #[test]
    fn bad_input_shapes_are_refused() {
        let error = |file: Option<&str>, flags: &[&str]| {
            format!("{:#}", resolve_with(file, flags).unwrap_err())
        };
        let e = error(None, &["--model", "a=a.onnx", "--input-shape", "b:x=1"]);
        assert!(e.contains("no model is named 'b'"), "{e}");
        for spec in ["a=1,2", "a:x", "a:x=1,two", ":x=1", "a:=1"] {
            let e = error(None, &["--model", "a=a.onnx", "--input-shape", spec]);
            assert!(e.contains("NAME:INPUT=DIMS"), "{spec}: {e}");
        }
        let e = error(None, &["--model", "a=a.onnx", "--input-shape", "a:x=1,-2"]);
        assert!(e.contains("model 'a'") && e.contains("input 'x'"), "{e}");
        let e = error(
            Some("[[model]]\nname = \"a\"\npath = \"a.onnx\"\ninput_shapes = { x = [1.5] }\n"),
            &[],
        );
        assert!(e.contains("input_shapes") || e.contains("integer"), "{e}");
    }

    #[test]
    fn sealed_models_take_input_shapes_only_with_a_state_dir() {
        // With a state directory, a name that no other model has is a model provisioned there.
        let resolved = resolve_with(
            Some("state_dir = \"device\"\n[[model]]\nname = \"ocr\"\ninput_shapes = { x = [1, 3, 48, 320] }\n"),
            &["--input-shape", "face:input=1,3,112,112"],
        )
        .unwrap();
        assert!(resolved.state_dir.as_ref().unwrap().ends_with("device"));
        assert_eq!(
            shapes(&resolved, "ocr"),
            BTreeMap::from([("x".to_owned(), [1, 3, 48, 320].map(Dim::Fixed).to_vec())])
        );
        assert_eq!(
            shapes(&resolved, "face"),
            BTreeMap::from([(
                "input".to_owned(),
                [1, 3, 112, 112].map(Dim::Fixed).to_vec()
            )])
        );
        // Without one, the same is refused.
        let e = format!(
            "{:#}",
            resolve_with(Some("[[model]]\nname = \"ocr\"\n"), &[]).unwrap_err()
        );
        assert!(e.contains("state_dir"), "{e}");
        let e = format!(
            "{:#}",
            resolve_with(None, &["--input-shape", "face:input=1"]).unwrap_err()
        );
        assert!(e.contains("no model is named 'face'"), "{e}");
    }
}
