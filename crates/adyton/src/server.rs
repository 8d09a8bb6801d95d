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
use adyton_server::batching::{BatchOptions, PreferredBatchSizes};
use adyton_server::http::{
    self, AdminToken, FreshEvidence, FreshEvidenceError, ServerState, Settings,
};
use adyton_server::pull::remote::{HttpKeyBroker, HttpRegistry};
use adyton_server::pull::{Backoff, Puller};
use adyton_server::repository::{ModelSettings, Pending, Repository, Source};
use adyton_server::runtime::onnxruntime::{self, OnnxRuntimeEngine};
use adyton_server::runtime::tract::{TractEngine, DEFAULT_LOAD_BUDGET};
use adyton_server::runtime::{Engine, EngineKind, LoadOptions, PlanCacheOptions, ShapeSet};
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
    /// The engine of every model without one of its own: `tract` or `onnxruntime`.
    engine: Option<String>,
    /// Intra-op threads of every model without its own setting.
    threads: Option<usize>,
    /// The onnxruntime shared library.
    onnxruntime_library: Option<PathBuf>,
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
    /// Concrete input shapes compiled at load: a list of tables of shapes by input name, or one
    /// table. `--input-shape` adds to them.
    input_shapes: Option<toml::Value>,
    /// The engine: `tract` or `onnxruntime` (else the server's).
    engine: Option<String>,
    /// Intra-op threads (else the server's).
    threads: Option<usize>,
    /// Dynamic batching: the most rows run at once.
    max_batch_size: Option<usize>,
    /// Dynamic batching: how long a batch waits for more requests.
    max_queue_delay_us: Option<u64>,
    /// Dynamic batching: the batch sizes formed when the requests waiting allow.
    preferred_batch_size: Option<Vec<usize>>,
    /// The plan cache: the most plans kept.
    max_plans: Option<usize>,
    /// The plan cache: the most memory its plans may take.
    max_plan_bytes: Option<u64>,
    /// The plan cache: the most plans compiled in any minute.
    max_compiles_per_minute: Option<u32>,
    /// Shape sets added by `--input-shape`.
    #[serde(skip)]
    flag_shapes: Vec<ShapeSet>,
    /// The settings, checked (filled in by `resolve`).
    #[serde(skip)]
    resolved: ModelConfig,
}

/// A model's settings, checked.
#[derive(Clone, Debug, Default, PartialEq)]
struct ModelConfig {
    engine: EngineKind,
    load: LoadOptions,
    batching: Option<BatchOptions>,
}

impl ModelEntry {
    fn new(name: &str, path: Option<PathBuf>, model_id: Option<String>) -> ModelEntry {
        ModelEntry {
            name: name.to_owned(),
            path,
            model_id,
            version: None,
            input_shapes: None,
            engine: None,
            threads: None,
            max_batch_size: None,
            max_queue_delay_us: None,
            preferred_batch_size: None,
            max_plans: None,
            max_plan_bytes: None,
            max_compiles_per_minute: None,
            flag_shapes: Vec::new(),
            resolved: ModelConfig::default(),
        }
    }
}

/// The most shape sets compiled ahead for one model, and the most inputs and dimensions of one.
const MAX_AHEAD_SHAPES: usize = 64;
const MAX_SHAPED_INPUTS: usize = 64;
const MAX_SHAPE_RANK: usize = 16;
/// The most intra-op threads a setting may ask for.
const MAX_THREADS: usize = 1024;

/// An engine's name (`engine`, `--engine`).
fn engine_kind(text: &str, key: &str) -> Result<EngineKind> {
    EngineKind::parse(text)
        .with_context(|| format!("{key}: unknown engine '{text}' (tract or onnxruntime)"))
}

fn check_threads(threads: Option<usize>, key: &str) -> Result<Option<usize>> {
    match threads {
        Some(n) if !(1..=MAX_THREADS).contains(&n) => {
            bail!("{key} must be from 1 to {MAX_THREADS}, not {n}")
        }
        other => Ok(other),
    }
}

/// One dimension of a shape compiled ahead: a size. -1 is refused with why it is not needed.
fn ahead_dimension(size: i64, model: &str, input: &str) -> Result<usize> {
    match size {
        -1 => bail!(
            "model '{model}': input_shapes: input '{input}' has -1; shapes compiled ahead are              concrete (sizes only), and dynamic dimensions need no setting any more: a plan is              compiled for each shape a request brings"
        ),
        size => usize::try_from(size).map_err(|_| {
            anyhow::anyhow!(
                "model '{model}': input_shapes: input '{input}' has {size}; a dimension is a size"
            )
        }),
    }
}

/// One table of `input_shapes`: a shape (a list of sizes) by input name.
fn shape_set(value: &toml::Value, model: &str) -> Result<ShapeSet> {
    let table = value.as_table().with_context(|| {
        format!(
            "model '{model}': input_shapes takes tables of shapes by input name, e.g.              [{{ x = [1, 3, 48, 320] }}], not {value}"
        )
    })?;
    if table.len() > MAX_SHAPED_INPUTS {
        bail!("model '{model}': input_shapes: a shape set names {} inputs; at most {MAX_SHAPED_INPUTS}", table.len());
    }
    let mut set = ShapeSet::new();
    for (input, dims) in table {
        let dims = dims.as_array().with_context(|| {
            format!(
                "model '{model}': input_shapes: input '{input}' needs a list of sizes, not {dims}"
            )
        })?;
        if dims.len() > MAX_SHAPE_RANK {
            bail!(
                "model '{model}': input_shapes: input '{input}' has {} dimensions; at most {MAX_SHAPE_RANK}",
                dims.len()
            );
        }
        let sizes = dims
            .iter()
            .map(|d| {
                let size = d.as_integer().with_context(|| {
                    format!("model '{model}': input_shapes: input '{input}' has {d}; a dimension is a size")
                })?;
                ahead_dimension(size, model, input)
            })
            .collect::<Result<Vec<usize>>>()?;
        set.insert(input.clone(), sizes);
    }
    Ok(set)
}

/// `input_shapes`: a list of shape sets, or one (the form of earlier versions).
fn ahead_shapes(model: &ModelEntry) -> Result<Vec<ShapeSet>> {
    let mut sets = match &model.input_shapes {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| shape_set(item, &model.name))
            .collect::<Result<Vec<_>>>()?,
        Some(one) => vec![shape_set(one, &model.name)?],
    };
    sets.extend(model.flag_shapes.iter().cloned());
    if sets.len() > MAX_AHEAD_SHAPES {
        bail!(
            "model '{}': input_shapes: {} shape sets; at most {MAX_AHEAD_SHAPES}",
            model.name,
            sets.len()
        );
    }
    Ok(sets)
}

/// A model's settings from its entry and the server's: every bad value names its key.
fn model_config(model: &ModelEntry, server: &ServerDefaults) -> Result<ModelConfig> {
    let name = &model.name;
    let engine = match &model.engine {
        Some(text) => engine_kind(text, &format!("model '{name}': engine"))?,
        None => server.engine,
    };
    let threads = check_threads(model.threads, &format!("model '{name}': threads"))?;
    let mut plan_cache = PlanCacheOptions::default();
    if let Some(n) = model.max_plans {
        if n == 0 {
            bail!("model '{name}': max_plans must be at least 1");
        }
        plan_cache.max_plans = n;
    }
    if let Some(n) = model.max_plan_bytes {
        if n == 0 {
            bail!("model '{name}': max_plan_bytes must be at least 1");
        }
        plan_cache.max_bytes = n;
    }
    if let Some(n) = model.max_compiles_per_minute {
        if n == 0 {
            bail!("model '{name}': max_compiles_per_minute must be at least 1");
        }
        plan_cache.max_compiles_per_minute = n;
    }
    let batching = match (model.max_batch_size, model.max_queue_delay_us) {
        (None, None) if model.preferred_batch_size.is_none() => None,
        (None, _) => bail!(
            "model '{name}': max_queue_delay_us and preferred_batch_size need max_batch_size \
             (dynamic batching is off without it)"
        ),
        (Some(max_batch_size), delay) => {
            let preferred = model.preferred_batch_size.as_deref().unwrap_or_default();
            let options = BatchOptions {
                max_batch_size,
                max_queue_delay_us: delay.unwrap_or(0),
                preferred_batch_size: PreferredBatchSizes::new(preferred)
                    .with_context(|| format!("model '{name}'"))?,
            };
            options.check().with_context(|| format!("model '{name}'"))?;
            Some(options)
        }
    };
    Ok(ModelConfig {
        engine,
        load: LoadOptions {
            ahead_shapes: ahead_shapes(model)?,
            threads: threads.or(server.threads),
            plan_cache,
            batch_sizes: batching
                .map(|b| b.preferred_batch_size.sizes().collect())
                .unwrap_or_default(),
            ..LoadOptions::default()
        },
        batching,
    })
}

/// The server-wide engine settings that models inherit.
#[derive(Clone, Copy, Debug)]
struct ServerDefaults {
    engine: EngineKind,
    threads: Option<usize>,
}

/// The onnxruntime library: the setting (file or flag), else the environment's; an error only
/// when some model needs it.
fn onnxruntime_library(
    setting: Option<PathBuf>,
    from_env: Option<PathBuf>,
    needed_by: Option<&str>,
) -> Result<Option<PathBuf>> {
    let library = setting.or(from_env);
    if let (None, Some(who)) = (&library, needed_by) {
        bail!(
            "{who} runs on the onnxruntime engine, which needs its shared library: set              `onnxruntime_library` in the file, --onnxruntime-library, or {}              (scripts/onnxruntime_library prints the path of the onnxruntime wheel's)",
            onnxruntime::LIBRARY_ENV
        );
    }
    Ok(library)
}

/// `--input-shape NAME:INPUT=DIMS`: the model, the input and its dimensions (comma-separated
/// sizes). The input is split at the last `=`, since ONNX names may hold `:` (`input:0`).
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
    /// The engine and threads of uploads, pulls over the API, and models without their own.
    defaults: ServerDefaults,
    /// The onnxruntime library, when some model runs on onnxruntime.
    onnxruntime_library: Option<PathBuf>,
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
                &mut file.onnxruntime_library,
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
        let dims = dims
            .iter()
            .map(|&d| ahead_dimension(d, &name, &input))
            .collect::<Result<Vec<usize>>>()
            .with_context(|| format!("--input-shape '{spec}'"))?;
        if !models.iter().any(|m| m.name == name) {
            if state_dir.is_none() {
                bail!(
                    "--input-shape '{spec}': no model is named '{name}' (--model, --pull or [[model]])"
                );
            }
            // A model provisioned on this device (checked against the state directory at start).
            models.push(ModelEntry::new(&name, None, None));
        }
        for model in models.iter_mut().filter(|m| m.name == name) {
            // The flags of one model fill one set input by input; an input again starts the next.
            match model.flag_shapes.last_mut() {
                Some(set) if !set.contains_key(&input) => {
                    set.insert(input.clone(), dims.clone());
                }
                _ => model
                    .flag_shapes
                    .push(ShapeSet::from([(input.clone(), dims.clone())])),
            }
        }
    }
    let engine_text = args.engine.clone().or(file.engine);
    let defaults = ServerDefaults {
        engine: match &engine_text {
            Some(text) => engine_kind(text, "engine")?,
            None => EngineKind::default(),
        },
        threads: check_threads(args.threads.or(file.threads), "threads")?,
    };
    for model in &mut models {
        model.resolved = model_config(model, &defaults)?;
    }
    let needed_by = if defaults.engine == EngineKind::OnnxRuntime {
        Some("the server (engine = \"onnxruntime\")".to_owned())
    } else {
        models
            .iter()
            .find(|m| m.resolved.engine == EngineKind::OnnxRuntime)
            .map(|m| format!("model '{}'", m.name))
    };
    let onnxruntime_library = onnxruntime_library(
        args.onnxruntime_library
            .clone()
            .or(file.onnxruntime_library),
        onnxruntime::library_from_env(),
        needed_by.as_deref(),
    )?;
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
        defaults,
        onnxruntime_library,
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
    // The first pull's RSA key pair is made while the server starts up, not during the pull.
    if resolved.models.iter().any(|m| m.model_id.is_some()) {
        adyton_server::pull::make_transfer_key_ahead();
    }
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

    let engines = Engines::new(&resolved)?;
    let engine = engines.get(resolved.defaults.engine)?;
    let repository = Arc::new(Repository::new(resolved.max_models));
    for entry in &resolved.models {
        if let Some(path) = &entry.path {
            load_file_model(&engines.settings(entry)?, &repository, entry, path)?;
        }
    }
    if let (Some(dir), Some(sealer)) = (&resolved.state_dir, &sealer) {
        // `[[model]]` entries with neither `path` nor `model_id` give settings to sealed models.
        let settings = resolved
            .models
            .iter()
            .filter(|m| m.path.is_none() && m.model_id.is_none())
            .map(|m| Ok((m.name.clone(), engines.settings(m)?)))
            .collect::<Result<BTreeMap<String, ModelSettings>>>()?;
        crate::provision::load_sealed(dir, sealer.as_ref(), &engine, &repository, &settings)?;
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
                engines.settings(entry)?,
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
    // Uploads and pulls over the API take the server-wide engine and threads.
    state = state.with_load_options(LoadOptions {
        threads: resolved.defaults.threads,
        ..LoadOptions::default()
    });
    let state = Arc::new(state);
    let config = identity.rustls_server_config();

    net::serve(resolved.listen, Some(config), resolved.connections, |_| {
        http::router(state)
    })
}

/// The engines models run on: tract always, and onnxruntime when some model needs it, each
/// with the load budget, so that it holds for files, sealed models, pulls and uploads alike.
struct Engines {
    tract: Arc<dyn Engine>,
    onnxruntime: Option<Arc<dyn Engine>>,
}

impl Engines {
    fn new(resolved: &Resolved) -> Result<Engines> {
        let tract: Arc<dyn Engine> =
            Arc::new(TractEngine::new().with_load_budget(resolved.load_budget));
        let onnxruntime = match &resolved.onnxruntime_library {
            Some(library) if resolved.needs_onnxruntime() => {
                let engine = OnnxRuntimeEngine::new(library)
                    .with_context(|| format!("the onnxruntime engine, from {}", library.display()))?
                    .with_load_budget(resolved.load_budget);
                eprintln!("onnxruntime engine: {}", library.display());
                Some(Arc::new(engine) as Arc<dyn Engine>)
            }
            _ => None,
        };
        Ok(Engines { tract, onnxruntime })
    }

    fn get(&self, kind: EngineKind) -> Result<Arc<dyn Engine>> {
        match kind {
            EngineKind::Tract => Ok(Arc::clone(&self.tract)),
            // `resolve` refuses a configuration that needs onnxruntime without its library.
            EngineKind::OnnxRuntime => self
                .onnxruntime
                .clone()
                .context("the onnxruntime engine is not set up"),
        }
    }

    /// A model's settings, with its engine.
    fn settings(&self, entry: &ModelEntry) -> Result<ModelSettings> {
        Ok(ModelSettings {
            engine: Some(self.get(entry.resolved.engine)?),
            load: entry.resolved.load.clone(),
            batching: entry.resolved.batching,
        })
    }
}

impl Resolved {
    fn needs_onnxruntime(&self) -> bool {
        self.defaults.engine == EngineKind::OnnxRuntime
            || self
                .models
                .iter()
                .any(|m| m.resolved.engine == EngineKind::OnnxRuntime)
    }
}

fn load_file_model(
    settings: &ModelSettings,
    repository: &Repository,
    entry: &ModelEntry,
    path: &Path,
) -> Result<()> {
    let Some(engine) = &settings.engine else {
        bail!("model '{}': no engine", entry.name);
    };
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
        .load_from_reader_with(&mut reader, &settings.load)
        .with_context(|| format!("model '{}': cannot load {}", entry.name, path.display()))?;
    let served = repository
        .insert_with(
            &entry.name,
            entry.version,
            model,
            Source::File,
            settings.batching,
        )
        .with_context(|| format!("model '{}'", entry.name))?;
    let batching = settings.batching.map_or_else(String::new, |b| {
        let preferred = if b.preferred_batch_size.is_empty() {
            String::new()
        } else {
            format!(", preferring {:?}", b.preferred_batch_size)
        };
        format!(
            ", batches of up to {} rows{preferred}, {} µs queue delay",
            b.max_batch_size, b.max_queue_delay_us
        )
    });
    eprintln!(
        "model '{}' version {} loaded from {} (engine {}, {} plan{batching}): inputs {}; outputs {}",
        served.name,
        served.version,
        path.display(),
        served.model.engine().as_str(),
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

    fn error(file: Option<&str>, flags: &[&str]) -> String {
        format!("{:#}", resolve_with(file, flags).unwrap_err())
    }

    fn config<'r>(resolved: &'r Resolved, name: &str) -> &'r ModelConfig {
        &resolved
            .models
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .resolved
    }

    fn set(entries: &[(&str, &[usize])]) -> ShapeSet {
        entries
            .iter()
            .map(|(input, dims)| ((*input).to_owned(), dims.to_vec()))
            .collect()
    }

    #[test]
    fn input_shapes_are_lists_of_shape_sets_from_the_file_and_the_flags() {
        let file = r#"
registry = "http://127.0.0.1:1"

[[model]]
name = "ocr"
path = "ocr.onnx"
input_shapes = [{ x = [1, 3, 48, 320] }, { x = [1, 3, 48, 640] }]

[[model]]
name = "pulled"
model_id = "m-1"
input_shapes = { "input:0" = [2, 4], y = [] }

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
                "extra:ids=1, 128",
                "--input-shape",
                "extra:mask=1,128",
                "--input-shape",
                "extra:ids=4,128",
                "--input-shape",
                "pulled:y=2",
            ],
        )
        .unwrap();
        assert_eq!(
            config(&resolved, "ocr").load.ahead_shapes,
            vec![
                set(&[("x", &[1, 3, 48, 320])]),
                set(&[("x", &[1, 3, 48, 640])])
            ]
        );
        // The single-table form is one set; a flag adds one.
        assert_eq!(
            config(&resolved, "pulled").load.ahead_shapes,
            vec![
                set(&[("input:0", &[2, 4]), ("y", &[])]),
                set(&[("y", &[2])])
            ]
        );
        // Flags fill one set input by input; an input given again starts the next set.
        assert_eq!(
            config(&resolved, "extra").load.ahead_shapes,
            vec![
                set(&[("ids", &[1, 128]), ("mask", &[1, 128])]),
                set(&[("ids", &[4, 128])])
            ]
        );
        assert_eq!(config(&resolved, "plain"), &ModelConfig::default());
        // Shapes compiled ahead no longer fix the graph's dimensions.
        assert!(config(&resolved, "ocr").load.input_shapes.is_empty());
    }

    #[test]
    fn engines_threads_batching_and_plan_caches_come_from_the_file_and_the_flags() {
        let defaults = resolve_with(None, &["--model", "m=m.onnx"]).unwrap();
        assert_eq!(defaults.defaults.engine, EngineKind::Tract);
        assert_eq!(defaults.defaults.threads, None);
        assert!(!defaults.needs_onnxruntime());
        assert_eq!(config(&defaults, "m"), &ModelConfig::default());
        let file = r#"
threads = 2
onnxruntime_library = "lib/libonnxruntime.so"

[[model]]
name = "fast"
path = "fast.onnx"
engine = "onnxruntime"
threads = 4
max_batch_size = 8
max_queue_delay_us = 500
preferred_batch_size = [4, 2]

[[model]]
name = "cached"
path = "cached.onnx"
max_plans = 4
max_plan_bytes = 1048576
max_compiles_per_minute = 10
max_batch_size = 2
"#;
        let resolved = resolve_with(Some(file), &[]).unwrap();
        assert!(resolved.needs_onnxruntime());
        assert!(resolved
            .onnxruntime_library
            .as_ref()
            .unwrap()
            .ends_with("lib/libonnxruntime.so"));
        let fast = config(&resolved, "fast");
        assert_eq!(fast.engine, EngineKind::OnnxRuntime);
        assert_eq!(fast.load.threads, Some(4));
        assert_eq!(
            fast.batching,
            Some(BatchOptions {
                max_batch_size: 8,
                max_queue_delay_us: 500,
                preferred_batch_size: PreferredBatchSizes::new(&[2, 4]).unwrap(),
            })
        );
        // The engine may compile plans for the preferred sizes.
        assert_eq!(fast.load.batch_sizes, [2, 4]);
        let cached = config(&resolved, "cached");
        assert_eq!(cached.engine, EngineKind::Tract);
        assert_eq!(cached.load.threads, Some(2), "the server's threads");
        assert_eq!(
            cached.load.plan_cache,
            PlanCacheOptions {
                max_plans: 4,
                max_bytes: 1 << 20,
                max_compiles_per_minute: 10
            }
        );
        assert_eq!(cached.batching.unwrap().max_queue_delay_us, 0);
        assert!(cached.batching.unwrap().preferred_batch_size.is_empty());
        assert!(cached.load.batch_sizes.is_empty());
        // Flags win over the file; a model's own engine wins over both.
        let flags = resolve_with(
            Some(file),
            &[
                "--engine",
                "onnxruntime",
                "--threads",
                "3",
                "--onnxruntime-library",
                "/opt/ort.so",
            ],
        )
        .unwrap();
        assert_eq!(flags.defaults.engine, EngineKind::OnnxRuntime);
        assert_eq!(config(&flags, "cached").engine, EngineKind::OnnxRuntime);
        assert_eq!(config(&flags, "cached").load.threads, Some(3));
        assert_eq!(config(&flags, "fast").load.threads, Some(4));
        assert_eq!(
            flags.onnxruntime_library.as_deref(),
            Some(Path::new("/opt/ort.so"))
        );
    }

    #[test]
    fn the_onnxruntime_library_is_needed_only_by_a_model_that_runs_on_it() {
        let setting = Some(PathBuf::from("/set.so"));
        let env = Some(PathBuf::from("/env.so"));
        assert_eq!(
            onnxruntime_library(setting.clone(), env.clone(), Some("model 'm'")).unwrap(),
            setting
        );
        assert_eq!(
            onnxruntime_library(None, env.clone(), Some("model 'm'")).unwrap(),
            env
        );
        assert_eq!(onnxruntime_library(None, None, None).unwrap(), None);
        let e = onnxruntime_library(None, None, Some("model 'm'"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model 'm'")
                && e.contains("onnxruntime_library")
                && e.contains("--onnxruntime-library")
                && e.contains(onnxruntime::LIBRARY_ENV),
            "{e}"
        );
    }

    #[test]
    fn bad_engine_settings_name_their_key() {
        let model = |extra: &str| format!("[[model]]\nname = \"m\"\npath = \"m.onnx\"\n{extra}\n");
        for (extra, needles) in [
            ("engine = \"torch\"", &["model 'm': engine", "torch"][..]),
            ("threads = 0", &["model 'm': threads"]),
            ("threads = 5000", &["model 'm': threads"]),
            ("max_batch_size = 0", &["model 'm'", "max_batch_size"]),
            ("max_batch_size = 100000", &["model 'm'", "max_batch_size"]),
            (
                "max_queue_delay_us = 100",
                &["model 'm'", "need max_batch_size"],
            ),
            (
                "preferred_batch_size = [2]",
                &["model 'm'", "preferred_batch_size need max_batch_size"],
            ),
            (
                "max_batch_size = 4\npreferred_batch_size = [2, 8]",
                &[
                    "model 'm'",
                    "preferred_batch_size 8 is over max_batch_size 4",
                ],
            ),
            (
                "max_batch_size = 4\npreferred_batch_size = [0]",
                &["model 'm'", "preferred_batch_size"],
            ),
            (
                "max_batch_size = 64\npreferred_batch_size = [1, 2, 3, 4, 5, 6, 7, 8, 9]",
                &["model 'm'", "preferred_batch_size lists 9 sizes"],
            ),
            (
                "max_batch_size = 4\nmax_queue_delay_us = 99000000",
                &["model 'm'", "max_queue_delay_us"],
            ),
            ("max_plans = 0", &["model 'm': max_plans"]),
            ("max_plan_bytes = 0", &["model 'm': max_plan_bytes"]),
            (
                "max_compiles_per_minute = 0",
                &["model 'm': max_compiles_per_minute"],
            ),
            ("max_plans = -1", &["max_plans"]),
            ("threads = \"four\"", &["threads"]),
            (
                "input_shapes = { x = [-1, 4] }",
                &["model 'm'", "input 'x'", "concrete", "need no setting"],
            ),
            (
                "input_shapes = [{ x = [1, -3] }]",
                &["model 'm'", "input 'x'", "a dimension is a size"],
            ),
            (
                "input_shapes = { x = [1.5] }",
                &["model 'm'", "input 'x'", "1.5"],
            ),
            (
                "input_shapes = { x = 4 }",
                &["model 'm'", "input 'x'", "list of sizes"],
            ),
            (
                "input_shapes = [[1, 2]]",
                &["model 'm'", "input_shapes takes tables"],
            ),
            (
                "input_shapes = 3",
                &["model 'm'", "input_shapes takes tables"],
            ),
            ("unknown_key = 1", &["unknown_key"]),
        ] {
            let e = error(Some(&model(extra)), &[]);
            for needle in needles {
                assert!(e.contains(needle), "{extra}: {needle} not in {e}");
            }
        }
        let e = error(
            Some(&model(&format!(
                "input_shapes = [{}]",
                vec!["{ x = [1] }"; 65].join(", ")
            ))),
            &[],
        );
        assert!(e.contains("at most 64"), "{e}");
        for (flags, needles) in [
            (
                &["--engine", "cuda"][..],
                &["engine", "cuda", "tract or onnxruntime"][..],
            ),
            (&["--threads", "0"], &["threads must be from 1"]),
            (
                &["--input-shape", "m:x=-1,4"],
                &["--input-shape 'm:x=-1,4'", "concrete"],
            ),
        ] {
            let mut argv = vec!["--model", "m=m.onnx"];
            argv.extend(flags);
            let e = error(None, &argv);
            for needle in needles {
                assert!(e.contains(needle), "{flags:?}: {needle} not in {e}");
            }
        }
        let e = error(Some("engine = \"gpu\"\n"), &[]);
        assert!(e.contains("engine: unknown engine 'gpu'"), "{e}");
        let e = error(Some("threads = 0\n"), &[]);
        assert!(e.contains("threads must be from 1"), "{e}");
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
    fn bad_input_shape_flags_are_refused() {
        let e = error(None, &["--model", "a=a.onnx", "--input-shape", "b:x=1"]);
        assert!(e.contains("no model is named 'b'"), "{e}");
        for spec in ["a=1,2", "a:x", "a:x=1,two", ":x=1", "a:=1"] {
            let e = error(None, &["--model", "a=a.onnx", "--input-shape", spec]);
            assert!(e.contains("NAME:INPUT=DIMS"), "{spec}: {e}");
        }
        let e = error(None, &["--model", "a=a.onnx", "--input-shape", "a:x=1,-2"]);
        assert!(e.contains("model 'a'") && e.contains("input 'x'"), "{e}");
    }

    #[test]
    fn sealed_models_take_settings_only_with_a_state_dir() {
        // With a state directory, a name that no other model has is a model provisioned there.
        let resolved = resolve_with(
            Some(
                "state_dir = \"device\"\n[[model]]\nname = \"ocr\"\nengine = \"tract\"\n\
                 max_batch_size = 4\ninput_shapes = { x = [1, 3, 48, 320] }\n",
            ),
            &["--input-shape", "face:input=1,3,112,112"],
        )
        .unwrap();
        assert!(resolved.state_dir.as_ref().unwrap().ends_with("device"));
        assert_eq!(
            config(&resolved, "ocr").load.ahead_shapes,
            vec![set(&[("x", &[1, 3, 48, 320])])]
        );
        assert_eq!(config(&resolved, "ocr").batching.unwrap().max_batch_size, 4);
        assert_eq!(
            config(&resolved, "face").load.ahead_shapes,
            vec![set(&[("input", &[1, 3, 112, 112])])]
        );
        // Without one, the same is refused.
        let e = error(Some("[[model]]\nname = \"ocr\"\n"), &[]);
        assert!(e.contains("state_dir"), "{e}");
        let e = error(None, &["--input-shape", "face:input=1"]);
        assert!(e.contains("no model is named 'face'"), "{e}");
    }
}
