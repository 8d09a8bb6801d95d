//! `server.toml` (`docs/server-config.md`) and the serve flags that override it, parsed and
//! checked into a typed [`ServerConfig`]. The binary reads the file and the flags; every rule
//! about what they may say lives here, so that a new setting touches this module and the flag
//! that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use adyton_attest::attester::TeeChoice;
use adyton_attest::AttestError;
use adyton_envelope::wrap::TransferKeyKind;
use serde::Deserialize;

use crate::batching::{BatchError, BatchOptions, PreferredBatchSizes};
use crate::http::Settings;
use crate::runtime::onnxruntime;
use crate::runtime::tract::DEFAULT_LOAD_BUDGET;
use crate::runtime::{EngineKind, LoadOptions, PlanCacheOptions, ShapeSet};

/// Why a configuration was refused. Every message names the key or flag at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not TOML, or holds an unknown key or a value of the wrong type.
    #[error("{path} is not a valid server configuration")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    /// The TEE's name is not one of auto, coco and the TEE kinds.
    #[error(
        "unknown TEE '{name}' (auto, sgx, tdx, snp, azure-snp, azure-tdx, nitro, coco or sim)"
    )]
    Tee {
        name: String,
        #[source]
        source: AttestError,
    },
    /// A model's dynamic batching settings.
    #[error("model '{model}'")]
    Batching {
        model: String,
        #[source]
        source: BatchError,
    },
    /// An `--input-shape` flag, and what is wrong with it.
    #[error("--input-shape '{spec}'")]
    InputShape {
        spec: String,
        #[source]
        source: Box<ConfigError>,
    },
    /// Any other bad value or combination, with the key or flag it concerns.
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// `bail!` for [`ConfigError::Invalid`].
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(ConfigError::Invalid(format!($($arg)*)))
    };
}

/// The serve flags, as the binary parsed them: each overrides the file's key of the same name
/// (`docs/server-config.md`, "Flags"). `models`, `pulls` and `input_shapes` add to the file's.
#[derive(Debug, Clone, Default)]
pub struct ServerFlags {
    pub listen: Option<SocketAddr>,
    pub tee: Option<String>,
    pub sim_key: Option<PathBuf>,
    /// `--model NAME=PATH`.
    pub models: Vec<String>,
    /// `--pull NAME=MODEL_ID`.
    pub pulls: Vec<String>,
    /// `--input-shape NAME:INPUT=DIMS`.
    pub input_shapes: Vec<String>,
    pub engine: Option<String>,
    pub threads: Option<usize>,
    pub onnxruntime_library: Option<PathBuf>,
    pub registry: Option<String>,
    /// `--pccs-url`: this platform's PCCS, for the collateral of its own evidence.
    pub pccs_url: Option<String>,
    /// `--kds-url`: AMD's KDS, for the VCEK of this chip.
    pub kds_url: Option<String>,
    /// `--coco-url`: the Confidential Containers attestation agent's REST API, for `--tee coco`.
    pub coco_url: Option<String>,
    /// `--gpus none|nvml`: the NVIDIA GPUs whose reports go with the TEE's evidence.
    pub gpus: Option<String>,
    /// `--transfer-key p384|rsa-3072`.
    pub transfer_key: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub certificate_out: Option<PathBuf>,
    pub workers: Option<usize>,
    pub queue: Option<usize>,
    pub max_models: Option<usize>,
    pub max_upload_bytes: Option<usize>,
    pub load_budget_bytes: Option<usize>,
    pub max_json_response_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
}

/// The configuration file: where it was read from (paths in it are relative to its directory)
/// and its text.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSource<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

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
    /// This platform's PCCS (clouds provide one), for the collateral of its own evidence.
    pccs_url: Option<String>,
    /// AMD's KDS, for this chip's VCEK.
    kds_url: Option<String>,
    /// The Confidential Containers attestation agent's REST API, for `tee = "coco"`.
    coco_url: Option<String>,
    /// The NVIDIA GPUs whose reports go with the TEE's evidence: `none` (the default) or `nvml`.
    gpus: Option<String>,
    /// The kind of key pair a pull's key transfer makes: `p384` (the default) or `rsa-3072`.
    transfer_key: Option<String>,
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
    /// `[connections]`, checked by the serve loop that applies it.
    connections: Option<toml::Value>,
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
}

/// A model's settings, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelConfig {
    pub engine: EngineKind,
    pub load: LoadOptions,
    pub batching: Option<BatchOptions>,
}

/// A model the configuration names: a plain file (`path`), a protected model pulled from the
/// registry (`model_id`), or, with neither, one provisioned in the state directory.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub path: Option<PathBuf>,
    pub model_id: Option<String>,
    pub version: Option<u64>,
    pub config: ModelConfig,
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
    EngineKind::parse(text).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "{key}: unknown engine '{text}' (tract or onnxruntime)"
        ))
    })
}

fn check_threads(threads: Option<usize>, key: &str) -> Result<Option<usize>> {
    match threads {
        Some(n) if !(1..=MAX_THREADS).contains(&n) => {
            invalid!("{key} must be from 1 to {MAX_THREADS}, not {n}")
        }
        other => Ok(other),
    }
}

/// One dimension of a shape compiled ahead: a size. -1 is refused with why it is not needed.
fn ahead_dimension(size: i64, model: &str, input: &str) -> Result<usize> {
    match size {
        -1 => invalid!(
            "model '{model}': input_shapes: input '{input}' has -1; shapes compiled ahead are              concrete (sizes only), and dynamic dimensions need no setting any more: a plan is              compiled for each shape a request brings"
        ),
        size => usize::try_from(size).map_err(|_| {
            ConfigError::Invalid(format!(
                "model '{model}': input_shapes: input '{input}' has {size}; a dimension is a size"
            ))
        }),
    }
}

/// One table of `input_shapes`: a shape (a list of sizes) by input name.
fn shape_set(value: &toml::Value, model: &str) -> Result<ShapeSet> {
    let table = value.as_table().ok_or_else(|| {
        ConfigError::Invalid(format!(
            "model '{model}': input_shapes takes tables of shapes by input name, e.g.              [{{ x = [1, 3, 48, 320] }}], not {value}"
        ))
    })?;
    if table.len() > MAX_SHAPED_INPUTS {
        invalid!("model '{model}': input_shapes: a shape set names {} inputs; at most {MAX_SHAPED_INPUTS}", table.len());
    }
    let mut set = ShapeSet::new();
    for (input, dims) in table {
        let dims = dims.as_array().ok_or_else(|| {
            ConfigError::Invalid(format!(
                "model '{model}': input_shapes: input '{input}' needs a list of sizes, not {dims}"
            ))
        })?;
        if dims.len() > MAX_SHAPE_RANK {
            invalid!(
                "model '{model}': input_shapes: input '{input}' has {} dimensions; at most {MAX_SHAPE_RANK}",
                dims.len()
            );
        }
        let sizes = dims
            .iter()
            .map(|d| {
                let size = d.as_integer().ok_or_else(|| {
                    ConfigError::Invalid(format!("model '{model}': input_shapes: input '{input}' has {d}; a dimension is a size"))
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
        invalid!(
            "model '{}': input_shapes: {} shape sets; at most {MAX_AHEAD_SHAPES}",
            model.name,
            sets.len()
        );
    }
    Ok(sets)
}

/// A model's settings from its entry and the server's: every bad value names its key.
fn model_config(model: &ModelEntry, server: &EngineDefaults) -> Result<ModelConfig> {
    let name = &model.name;
    let engine = match &model.engine {
        Some(text) => engine_kind(text, &format!("model '{name}': engine"))?,
        None => server.engine,
    };
    let threads = check_threads(model.threads, &format!("model '{name}': threads"))?;
    let mut plan_cache = PlanCacheOptions::default();
    if let Some(n) = model.max_plans {
        if n == 0 {
            invalid!("model '{name}': max_plans must be at least 1");
        }
        plan_cache.max_plans = n;
    }
    if let Some(n) = model.max_plan_bytes {
        if n == 0 {
            invalid!("model '{name}': max_plan_bytes must be at least 1");
        }
        plan_cache.max_bytes = n;
    }
    if let Some(n) = model.max_compiles_per_minute {
        if n == 0 {
            invalid!("model '{name}': max_compiles_per_minute must be at least 1");
        }
        plan_cache.max_compiles_per_minute = n;
    }
    let batching = match (model.max_batch_size, model.max_queue_delay_us) {
        (None, None) if model.preferred_batch_size.is_none() => None,
        (None, _) => invalid!(
            "model '{name}': max_queue_delay_us and preferred_batch_size need max_batch_size \
             (dynamic batching is off without it)"
        ),
        (Some(max_batch_size), delay) => {
            let preferred = model.preferred_batch_size.as_deref().unwrap_or_default();
            let options = BatchOptions {
                max_batch_size,
                max_queue_delay_us: delay.unwrap_or(0),
                preferred_batch_size: PreferredBatchSizes::new(preferred).map_err(|source| {
                    ConfigError::Batching {
                        model: name.clone(),
                        source,
                    }
                })?,
            };
            options.check().map_err(|source| ConfigError::Batching {
                model: name.clone(),
                source,
            })?;
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

/// The server-wide engine settings that models inherit, and that uploads and pulls over the
/// API take.
#[derive(Clone, Copy, Debug)]
pub struct EngineDefaults {
    pub engine: EngineKind,
    pub threads: Option<usize>,
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
        invalid!(
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
        ConfigError::Invalid(format!(
            "--input-shape takes NAME:INPUT=DIMS (e.g. ocr:x=1,3,48,320), not '{spec}'"
        ))
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

/// Where the reports of the NVIDIA GPUs that the TEE drives come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuSource {
    /// No GPU reports: the TEE's evidence alone.
    None,
    /// Every GPU that NVIDIA's management library sees, each in confidential-computing mode
    /// (feature `nvml`).
    Nvml,
}

/// The server's settings: the file's, overridden by the flags, checked.
#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tee: TeeChoice,
    pub sim_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub certificate_out: Option<PathBuf>,
    pub max_models: usize,
    pub load_budget: u64,
    pub settings: Settings,
    pub models: Vec<ModelSpec>,
    pub registry: Option<String>,
    /// Where the collateral of this server's own evidence comes from, sent with it in key
    /// transfers so that a key broker without a network path to Intel or AMD can verify it.
    pub pccs_url: Option<String>,
    /// AMD's KDS, for the same.
    pub kds_url: Option<String>,
    /// Where the Confidential Containers attestation agent answers, for `tee = "coco"`; `None`
    /// means its usual place in the pod (`http://127.0.0.1:8006`).
    pub coco_url: Option<String>,
    /// The GPUs whose attestation reports go with the TEE's evidence (composite evidence).
    pub gpus: GpuSource,
    /// The kind of key pair a pull makes for its key transfer.
    pub transfer_key: TransferKeyKind,
    pub state_dir: Option<PathBuf>,
    /// The engine and threads of uploads, pulls over the API, and models without their own.
    pub defaults: EngineDefaults,
    /// The onnxruntime library, when some model runs on onnxruntime.
    pub onnxruntime_library: Option<PathBuf>,
    /// The file's `[connections]`, for the serve loop (which checks it, with its flags).
    pub connections: Option<toml::Value>,
}

impl ServerConfig {
    /// The configuration from `file` (if any) and `flags`, flags winning. Paths in the file are
    /// relative to its directory.
    pub fn resolve(file: Option<ConfigSource<'_>>, flags: &ServerFlags) -> Result<Self> {
        let file = match file {
            Some(source) => parse_file(source)?,
            None => ConfigFile::default(),
        };
        let listen = flags.listen.or(file.listen).ok_or_else(|| {
            ConfigError::Invalid(
                "--listen is required without --config (or set `listen` in the file)".to_owned(),
            )
        })?;
        let tee_text = flags
            .tee
            .clone()
            .or(file.tee)
            .unwrap_or_else(|| "auto".to_owned());
        let tee: TeeChoice = tee_text.parse().map_err(|source| ConfigError::Tee {
            name: tee_text.clone(),
            source,
        })?;
        let coco_url = flags.coco_url.clone().or(file.coco_url);
        if coco_url.is_some() && tee != TeeChoice::Coco {
            invalid!(
                "coco_url is the Confidential Containers attestation agent's address, used only \
                 with tee = \"coco\" (the tee is `{tee_text}`)"
            );
        }
        let gpus_text = flags.gpus.clone().or(file.gpus);
        let gpus = match gpus_text.as_deref() {
            None | Some("none") => GpuSource::None,
            Some("nvml") if cfg!(feature = "nvml") => GpuSource::Nvml,
            Some("nvml") => invalid!(
                "gpus = \"nvml\": this adyton-server was built without NVML; build it with \
                 `--features nvml` to attach NVIDIA GPU reports to its evidence"
            ),
            Some(other) => invalid!("gpus: expected none or nvml, not '{other}'"),
        };
        let mut models = file.models;
        for spec in &flags.models {
            let (name, path) = spec.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--model takes NAME=PATH.onnx, not '{spec}'"))
            })?;
            models.push(ModelEntry::new(name, Some(PathBuf::from(path)), None));
        }
        for spec in &flags.pulls {
            let (name, model_id) = spec.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--pull takes NAME=MODEL_ID, not '{spec}'"))
            })?;
            models.push(ModelEntry::new(name, None, Some(model_id.to_owned())));
        }
        let state_dir = flags.state_dir.clone().or(file.state_dir);
        for spec in &flags.input_shapes {
            add_flag_shape(&mut models, spec, state_dir.is_some())?;
        }
        let engine_text = flags.engine.clone().or(file.engine);
        let defaults = EngineDefaults {
            engine: match &engine_text {
                Some(text) => engine_kind(text, "engine")?,
                None => EngineKind::default(),
            },
            threads: check_threads(flags.threads.or(file.threads), "threads")?,
        };
        let models = models
            .iter()
            .map(|model| {
                Ok(ModelSpec {
                    name: model.name.clone(),
                    path: model.path.clone(),
                    model_id: model.model_id.clone(),
                    version: model.version,
                    config: model_config(model, &defaults)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let needed_by = if defaults.engine == EngineKind::OnnxRuntime {
            Some("the server (engine = \"onnxruntime\")".to_owned())
        } else {
            models
                .iter()
                .find(|m| m.config.engine == EngineKind::OnnxRuntime)
                .map(|m| format!("model '{}'", m.name))
        };
        let onnxruntime_library = onnxruntime_library(
            flags
                .onnxruntime_library
                .clone()
                .or(file.onnxruntime_library),
            onnxruntime::library_from_env(),
            needed_by.as_deref(),
        )?;
        for model in &models {
            match (&model.path, &model.model_id) {
                (Some(_), None) | (None, Some(_)) => {}
                (None, None) if state_dir.is_some() => {}
                (None, None) => invalid!(
                    "model '{}' needs one of `path` (a plain file) and `model_id` (pulled from the \
                     registry), or `state_dir` for a model provisioned on this device",
                    model.name
                ),
                _ => invalid!(
                    "model '{}' needs exactly one of `path` (a plain file) and `model_id` (pulled from the registry)",
                    model.name
                ),
            }
        }
        let registry = flags.registry.clone().or(file.registry);
        if registry.is_none() && models.iter().any(|m| m.model_id.is_some()) {
            invalid!(
                "models pulled by model_id need a registry (--registry URL, or `registry` in the file)"
            );
        }
        let transfer_key = match flags.transfer_key.clone().or(file.transfer_key) {
            Some(name) => transfer_key_kind(&name)?,
            None => TransferKeyKind::default(),
        };
        let mut settings = Settings::default();
        if let Some(n) = flags.workers.or(file.workers) {
            if n == 0 {
                invalid!("workers must be at least 1");
            }
            settings.workers = n;
        }
        settings.queue = flags.queue.or(file.queue).unwrap_or(settings.workers * 16);
        if let Some(n) = flags.max_upload_bytes.or(file.max_upload_bytes) {
            settings.max_upload = n;
        }
        if let Some(n) = flags.max_request_bytes.or(file.max_request_bytes) {
            settings.max_infer_body = n;
        }
        if let Some(n) = file.max_tensor_elements {
            settings.limits.max_elements = n;
            settings.limits.max_total_elements = settings.limits.max_total_elements.max(n);
        }
        if let Some(n) = flags
            .max_json_response_bytes
            .or(file.max_json_response_bytes)
        {
            settings.max_json_response = n;
        }
        let load_budget = flags
            .load_budget_bytes
            .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
            .or(file.load_budget_bytes)
            .unwrap_or(DEFAULT_LOAD_BUDGET);
        Ok(ServerConfig {
            listen,
            tee,
            sim_key: flags.sim_key.clone().or(file.sim_key),
            token_file: flags.token_file.clone().or(file.token_file),
            certificate_out: flags.certificate_out.clone().or(file.certificate_out),
            max_models: flags.max_models.or(file.max_models).unwrap_or(16),
            load_budget,
            settings,
            models,
            registry,
            pccs_url: flags.pccs_url.clone().or(file.pccs_url),
            kds_url: flags.kds_url.clone().or(file.kds_url),
            coco_url,
            gpus,
            transfer_key,
            state_dir,
            defaults,
            onnxruntime_library,
            connections: file.connections,
        })
    }

    /// Whether some model, or the server's default, runs on onnxruntime.
    pub fn needs_onnxruntime(&self) -> bool {
        self.defaults.engine == EngineKind::OnnxRuntime
            || self
                .models
                .iter()
                .any(|m| m.config.engine == EngineKind::OnnxRuntime)
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// The file, parsed, with its paths made relative to its directory.
fn parse_file(source: ConfigSource<'_>) -> Result<ConfigFile> {
    let mut file =
        toml::from_str::<ConfigFile>(source.text).map_err(|source_error| ConfigError::Parse {
            path: source.path.display().to_string(),
            source: source_error,
        })?;
    let base = source.path.parent().unwrap_or(Path::new("."));
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
    Ok(file)
}

/// Adds one `--input-shape` flag to its model's shape sets. With a state directory, a name no
/// other model has is a model provisioned there (checked against the directory at start).
fn add_flag_shape(models: &mut Vec<ModelEntry>, spec: &str, has_state_dir: bool) -> Result<()> {
    let (name, input, dims) = parse_input_shape(spec)?;
    let dims = dims
        .iter()
        .map(|&d| ahead_dimension(d, &name, &input))
        .collect::<Result<Vec<usize>>>()
        .map_err(|source| ConfigError::InputShape {
            spec: spec.to_owned(),
            source: Box::new(source),
        })?;
    if !models.iter().any(|m| m.name == name) {
        if !has_state_dir {
            invalid!(
                "--input-shape '{spec}': no model is named '{name}' (--model, --pull or [[model]])"
            );
        }
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
    Ok(())
}
/// The transfer key kind named `name` (`transfer_key`, `--transfer-key`).
fn transfer_key_kind(name: &str) -> Result<TransferKeyKind> {
    TransferKeyKind::from_name(name).ok_or_else(|| {
        let valid = TransferKeyKind::ALL
            .map(|kind| format!("\"{kind}\""))
            .join(" or ");
        ConfigError::Invalid(format!(
            "transfer_key: unknown key type \"{name}\" (valid: {valid}; \"rsa-3072\" for a key \
             broker that takes RSA keys only, such as Intel's KBS)"
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    /// The serve flags of `argv`, as the binary's parser would give them.
    fn flags(argv: &[&str]) -> ServerFlags {
        let mut flags = ServerFlags {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServerFlags::default()
        };
        let size = |text: &str| -> usize {
            match text.strip_suffix('M') {
                Some(n) => n.parse::<usize>().unwrap() << 20,
                None => text.parse().unwrap(),
            }
        };
        for pair in argv.chunks(2) {
            let value = pair[1].to_owned();
            match pair[0] {
                "--model" => flags.models.push(value),
                "--pull" => flags.pulls.push(value),
                "--input-shape" => flags.input_shapes.push(value),
                "--engine" => flags.engine = Some(value),
                "--threads" => flags.threads = Some(value.parse().unwrap()),
                "--onnxruntime-library" => flags.onnxruntime_library = Some(value.into()),
                "--load-budget-bytes" => flags.load_budget_bytes = Some(size(&value)),
                "--transfer-key" => flags.transfer_key = Some(value),
                "--pccs-url" => flags.pccs_url = Some(value),
                "--tee" => flags.tee = Some(value),
                "--coco-url" => flags.coco_url = Some(value),
                "--gpus" => flags.gpus = Some(value),
                "--max-json-response-bytes" => flags.max_json_response_bytes = Some(size(&value)),
                other => panic!("no such flag in these tests: {other}"),
            }
        }
        flags
    }

    fn resolve_with(file: Option<&str>, argv: &[&str]) -> Result<ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        let source = file.map(|text| ConfigSource { path: &path, text });
        ServerConfig::resolve(source, &flags(argv))
    }

    /// The error and its causes, as the binary prints them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    fn error(file: Option<&str>, flags: &[&str]) -> String {
        chain(&resolve_with(file, flags).unwrap_err())
    }

    fn config<'r>(resolved: &'r ServerConfig, name: &str) -> &'r ModelConfig {
        &resolved.model(name).unwrap().config
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

    #[test]
    fn the_transfer_key_is_p384_unless_set_and_unknown_kinds_are_refused() {
        let resolved = resolve_with(None, &[]).unwrap();
        assert_eq!(resolved.transfer_key, TransferKeyKind::P384);
        let resolved = resolve_with(Some("transfer_key = \"rsa-3072\"\n"), &[]).unwrap();
        assert_eq!(resolved.transfer_key, TransferKeyKind::Rsa3072);
        let resolved = resolve_with(None, &["--transfer-key", "rsa-3072"]).unwrap();
        assert_eq!(resolved.transfer_key, TransferKeyKind::Rsa3072);
        // The flag wins over the file.
        let resolved = resolve_with(
            Some("transfer_key = \"rsa-3072\"\n"),
            &["--transfer-key", "p384"],
        )
        .unwrap();
        assert_eq!(resolved.transfer_key, TransferKeyKind::P384);
        for bad in ["rsa", "p256", "P384", ""] {
            let e = error(Some(&format!("transfer_key = \"{bad}\"\n")), &[]);
            assert!(e.contains(&format!("unknown key type \"{bad}\"")), "{e}");
            assert!(e.contains("\"p384\" or \"rsa-3072\""), "{e}");
        }
        let e = error(None, &["--transfer-key", "x25519"]);
        assert!(e.starts_with("transfer_key: unknown key type"), "{e}");
    }

    #[test]
    fn collateral_sources_come_from_the_file_and_the_flags() {
        let file = "pccs_url = \"https://pccs.file\"\nkds_url = \"https://kds.file\"\n";
        let resolved = resolve_with(Some(file), &[]).unwrap();
        assert_eq!(resolved.pccs_url.as_deref(), Some("https://pccs.file"));
        assert_eq!(resolved.kds_url.as_deref(), Some("https://kds.file"));
        let resolved = resolve_with(Some(file), &["--pccs-url", "https://pccs.flag"]).unwrap();
        assert_eq!(resolved.pccs_url.as_deref(), Some("https://pccs.flag"));
        assert_eq!(resolved.kds_url.as_deref(), Some("https://kds.file"));
        let none = resolve_with(None, &[]).unwrap();
        assert_eq!((none.pccs_url, none.kds_url), (None, None));
    }

    #[test]
    fn coco_is_chosen_by_name_with_its_agent_url() {
        let resolved = resolve_with(Some("tee = \"coco\"\n"), &[]).unwrap();
        assert_eq!((resolved.tee, resolved.coco_url), (TeeChoice::Coco, None));
        let file = "tee = \"coco\"\ncoco_url = \"http://127.0.0.1:9006\"\n";
        let resolved = resolve_with(Some(file), &[]).unwrap();
        assert_eq!(resolved.coco_url.as_deref(), Some("http://127.0.0.1:9006"));
        let resolved = resolve_with(Some(file), &["--coco-url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(resolved.coco_url.as_deref(), Some("http://127.0.0.1:1"));
        let resolved = resolve_with(None, &["--tee", "coco"]).unwrap();
        assert_eq!(resolved.tee, TeeChoice::Coco);
        // An agent URL with another TEE is a mistake, not a setting to ignore.
        let e = error(
            Some("tee = \"tdx\"\ncoco_url = \"http://127.0.0.1:9006\"\n"),
            &[],
        );
        assert!(e.contains("used only with tee = \"coco\""), "{e}");
        let e = error(None, &["--coco-url", "http://127.0.0.1:9006"]);
        assert!(e.contains("the tee is `auto`"), "{e}");
    }

    #[test]
    fn gpus_are_none_by_default_and_nvml_needs_the_feature() {
        assert_eq!(resolve_with(None, &[]).unwrap().gpus, GpuSource::None);
        let none = resolve_with(Some("gpus = \"none\"\n"), &[]).unwrap();
        assert_eq!(none.gpus, GpuSource::None);
        let e = error(None, &["--gpus", "cuda"]);
        assert!(e.contains("expected none or nvml, not 'cuda'"), "{e}");
        let nvml = resolve_with(Some("gpus = \"nvml\"\n"), &[]);
        if cfg!(feature = "nvml") {
            assert_eq!(nvml.unwrap().gpus, GpuSource::Nvml);
        } else {
            let e = error(None, &["--gpus", "nvml"]);
            assert!(e.contains("built without NVML"), "{e}");
            assert!(nvml.is_err());
        }
    }
}
