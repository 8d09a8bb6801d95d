//! `adyton-server serve` (also run as `adyton server serve`): the inference server, from a TOML
//! configuration file (`--config`, `docs/server-config.md`) or, in the local trial, from flags
//! alone.

mod args;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use adyton_attest::attested_tls::AttestedTlsError;
use adyton_attest::attester::{Attester, AttesterPaths, OpeningAttester};
use adyton_attest::composite::CompositeAttester;
use adyton_attest::gpu::attester::GpuAttester;
use adyton_attest::provider::{CollateralProvider, ProviderConfig};
use adyton_attest::TeeKind;
use adyton_cli::files::{OutputFile, OutputKind};
use adyton_cli::net;
use adyton_cli::secrets::read_token_file;
use adyton_server::config::{GpuSource, ModelSpec, ServerConfig};
use adyton_server::http::{self, AdminToken, FreshEvidence, FreshEvidenceError, ServerState};
use adyton_server::pull::remote::{HttpKeyBroker, HttpRegistry};
use adyton_server::pull::{Backoff, Puller};
use adyton_server::repository::{ModelSettings, Pending, Repository, Source};
use adyton_server::runtime::onnxruntime::OnnxRuntimeEngine;
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{Engine, EngineKind, LoadOptions};
use adyton_server::service::EvidenceCollateral;
use adyton_server::tls::{AttestedIdentity, TlsIdentityError};
use anyhow::{bail, Context, Result};

pub use args::ServeArgs;

/// Largest plain model file loaded from disk.
const MAX_MODEL_FILE: u64 = 4 << 30;

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

/// `adyton-server serve`.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let (resolved, connections) = args.resolve()?;
    // The first pull's key pair is made while the server starts up, not during the pull.
    if resolved.models.iter().any(|m| m.model_id.is_some()) {
        adyton_server::pull::make_transfer_key_ahead(resolved.transfer_key);
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
    if let Some(url) = &resolved.coco_url {
        paths.coco.url = url.clone();
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
    // The attester opens on a thread of its own (the SIM attester hashes this executable), while
    // the engines are made and the protected models' pulls start: a pull needs evidence only once
    // its key pair is made, and fetches the model's info and blob meanwhile.
    let opening = Arc::new(
        OpeningAttester::start(resolved.tee, &paths)
            .context("cannot open the TEE's attestation interface")?,
    );
    // With GPUs, every piece of evidence (the certificate's, fresh evidence, key transfers)
    // carries each GPU's report over a nonce derived from its report data.
    let gpus = gpu_attester(resolved.gpus)?;
    let with_gpus = |cpu: Arc<dyn Attester>| -> Arc<dyn Attester> {
        match &gpus {
            Some(gpus) => Arc::new(CompositeAttester::new(cpu, Arc::clone(gpus))),
            None => cpu,
        }
    };
    let engines = Engines::new(&resolved)?;
    let engine = engines.get(resolved.defaults.engine)?;
    let repository = Arc::new(Repository::new(resolved.max_models));
    let collateral = collateral_provider(&resolved)?;
    let puller = match &resolved.registry {
        Some(url) => Some(Arc::new(Puller {
            attester: with_gpus(Arc::clone(&opening) as Arc<dyn Attester>),
            engine: Arc::clone(&engine),
            registry: Arc::new(HttpRegistry::new(url).context("the registry URL")?),
            key_broker: Arc::new(match &collateral {
                Some(provider) => HttpKeyBroker::with_collateral(Arc::clone(provider)),
                None => HttpKeyBroker::default(),
            }),
            backoff: Backoff::default(),
            transfer_key: resolved.transfer_key,
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
    let attester = with_gpus(
        opening
            .wait()
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
    if let Some(provider) = collateral {
        state = state.with_collateral(own_collateral(provider, &identity));
    }
    // Uploads and pulls over the API take the server-wide engine and threads.
    state = state.with_load_options(LoadOptions {
        threads: resolved.defaults.threads,
        ..LoadOptions::default()
    });
    let state = Arc::new(state);
    let config = identity.rustls_server_config();

    net::serve(resolved.listen, Some(config), connections, |_| {
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
    fn new(resolved: &ServerConfig) -> Result<Engines> {
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
    fn settings(&self, entry: &ModelSpec) -> Result<ModelSettings> {
        Ok(ModelSettings {
            engine: Some(self.get(entry.config.engine)?),
            load: entry.config.load.clone(),
            batching: entry.config.batching,
        })
    }
}

fn load_file_model(
    settings: &ModelSettings,
    repository: &Repository,
    entry: &ModelSpec,
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

/// The source of the collateral of this server's own evidence (`pccs_url`, `kds_url`), if any:
/// the pulls send it to the key broker, and `GET /adyton/v1/collateral` serves it to clients,
/// for verifiers that have none of their own. One provider, so one cache, serves both.
/// The GPUs' attester, opened and counted at start so that a machine whose GPUs cannot attest
/// (no driver, confidential computing off) stops here with the reason.
fn gpu_attester(source: GpuSource) -> Result<Option<Arc<dyn GpuAttester>>> {
    match source {
        GpuSource::None => Ok(None),
        #[cfg(feature = "nvml")]
        GpuSource::Nvml => {
            let nvml = adyton_attest::gpu::attester::NvmlGpuAttester::open()
                .context("gpus = \"nvml\": cannot open NVIDIA's management library")?;
            let count = nvml.count().context("gpus = \"nvml\"")?;
            if count == 0 {
                bail!("gpus = \"nvml\": NVIDIA's management library sees no GPU");
            }
            eprintln!("GPUs: {count}, through NVML; their reports go with every evidence");
            Ok(Some(Arc::new(nvml)))
        }
        #[cfg(not(feature = "nvml"))]
        GpuSource::Nvml => bail!("gpus = \"nvml\": this adyton-server was built without NVML"),
    }
}

fn collateral_provider(resolved: &ServerConfig) -> Result<Option<Arc<CollateralProvider>>> {
    if resolved.pccs_url.is_none() && resolved.kds_url.is_none() {
        return Ok(None);
    }
    let mut config = ProviderConfig::new();
    if let Some(url) = &resolved.pccs_url {
        config = config.with_pccs_url(url);
    }
    if let Some(url) = &resolved.kds_url {
        config = config.with_kds_url(url);
    }
    let provider = CollateralProvider::new(config).context("pccs_url or kds_url")?;
    Ok(Some(Arc::new(provider)))
}

/// The collateral of the evidence in the certificate, fetched now so that the first client does
/// not wait; a failure is reported and the server starts anyway (clients with collateral of
/// their own need none, and the endpoint tries again).
fn own_collateral(
    provider: Arc<CollateralProvider>,
    identity: &AttestedIdentity,
) -> Arc<EvidenceCollateral> {
    let own = EvidenceCollateral::new(provider, identity.evidence().clone());
    match own.fetch_now() {
        Ok(Some(bundle)) => eprintln!(
            "collateral: serving the {}-byte bundle of this server's {} evidence at /adyton/v1/collateral",
            bundle.len(),
            identity.tee()
        ),
        Ok(None) => eprintln!(
            "collateral: this server's {} evidence needs none from its source; /adyton/v1/collateral answers 404",
            identity.tee()
        ),
        Err(e) => eprintln!(
            "warning: cannot fetch the collateral of this server's evidence: {e}; clients without collateral of their own cannot verify it until it can be fetched"
        ),
    }
    Arc::new(own)
}
