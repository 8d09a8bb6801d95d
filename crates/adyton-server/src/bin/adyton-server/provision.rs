//! `adyton-server provision-request` and `provision-accept` (also run as `adyton server ...`): an
//! offline device's one-time provisioning by file (flow D, `docs/offline.md`), and the sealed
//! models that `serve --state-dir` loads with no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use adyton_attest::attester::{self, AttesterPaths, TeeChoice};
use adyton_attest::seal::{self, Sealer};
use adyton_attest::TeeKind;
use adyton_cli::files::{read_limited, OutputFile, OutputKind};
use adyton_server::device::{DeviceState, RequestParams, MAX_RESPONSE_LEN};
use adyton_server::repository::{ModelSettings, Repository};
use adyton_server::runtime::Engine;
use anyhow::{bail, Context, Result};
use clap::Args;

/// Where an offline device keeps its state, and which TEE it seals to.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device's state directory: encrypted blobs, sealed keys, pending requests [default:
    /// $ADYTON_STATE_DIR if set, else /var/lib/adyton].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The TEE to seal to: auto, sgx, snp or sim (INSECURE). TDX has no sealing key [default:
    /// auto].
    #[arg(long, value_name = "TEE")]
    pub tee: Option<String>,
    /// The SIM attester's key file, the SIM device's identity [default: $ADYTON_SIM_KEY if set,
    /// else ~/.local/share/adyton/sim-attester.key].
    #[arg(long, value_name = "FILE")]
    pub sim_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProvisionRequestArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The model's id on this device, which it is served as.
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// The encrypted model blob (envelope v2 or v1), as the provider delivered it.
    #[arg(long, value_name = "FILE")]
    pub blob: PathBuf,
    /// The key broker's id of the model key [default: the key id in the blob's v2 header].
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// What the model key is sealed to: exact-build (this build's measurement: an upgrade needs
    /// a new provisioning) or signer (any build by this signer: an upgrade keeps the model).
    #[arg(long, value_name = "POLICY", default_value = "exact-build")]
    pub sealing: adyton_attest::seal::SealingPolicy,
    /// Where to write the request.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ProvisionAcceptArgs {
    /// The response file written by `adyton kbs transfer --offline`.
    #[arg(value_name = "RESPONSE")]
    pub response: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The state directory when neither --state-dir nor ADYTON_STATE_DIR names one.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/adyton";

/// The state directory of `args`: --state-dir, else $ADYTON_STATE_DIR, else the default.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ADYTON_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn paths(sim_key: Option<&Path>) -> AttesterPaths {
    let mut paths = AttesterPaths::default();
    if let Some(key) = sim_key {
        paths.sim_key = key.to_path_buf();
    }
    paths
}

fn tee_choice(text: Option<&str>) -> Result<TeeChoice> {
    text.unwrap_or("auto")
        .parse()
        .context("--tee: expected auto, sgx, tdx, snp, azure-snp, azure-tdx, nitro, coco or sim")
}

/// This TEE's sealer, with the reason when it has none (TDX, or no TEE).
pub fn sealer(tee: TeeChoice, sim_key: Option<&Path>) -> Result<Box<dyn Sealer>> {
    seal::sealer_for(tee, &paths(sim_key)).context("offline mode needs this TEE's sealing key")
}

fn sim_warning(tee: TeeKind) {
    if tee == TeeKind::Sim {
        eprintln!(
            "warning: tee = sim: the sealing key is derived from a software key file; a SIM \
             device protects NOTHING (development and tests only)"
        );
    }
}

/// `adyton-server provision-request`.
pub fn request(args: &ProvisionRequestArgs) -> Result<()> {
    let DeviceArgs {
        state_dir: dir,
        tee,
        sim_key,
    } = &args.device;
    let choice = tee_choice(tee.as_deref())?;
    // The sealer first: a TEE that cannot seal (TDX) is refused before anything else is done.
    let sealer = sealer(choice, sim_key.as_deref())?;
    let attester = attester::attester_for(choice, &paths(sim_key.as_deref()))
        .context("cannot open the TEE's attestation interface")?;
    sim_warning(attester.tee());
    let mut output = OutputFile::create(&args.output, args.force, OutputKind::PublicOrStdout)?;
    let dir = state_dir(dir.as_deref());
    let state = DeviceState::open(&dir)
        .with_context(|| format!("cannot open the state directory {}", dir.display()))?;
    let mut blob = std::fs::File::open(&args.blob)
        .with_context(|| format!("cannot open the model blob {}", args.blob.display()))?;
    let request = state
        .create_request(
            attester.as_ref(),
            sealer.as_ref(),
            &RequestParams {
                model: &args.model,
                key_id: args.key_id.as_deref(),
                sealing_policy: args.sealing,
                now: now(),
            },
            &mut blob,
        )
        .context("cannot make the provisioning request")?;
    std::io::Write::write_all(output.file(), &request.to_json())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    output.commit()?;
    eprintln!(
        "wrote provisioning request {} to {}\n  model {}, key {}, {} evidence over SHA-512 of a \
         fresh RSA-3072 public key; its private key is sealed to this TEE ({} policy) in {}\n  \
         carry it to the model provider, who answers with `adyton kbs transfer --offline`; then \
         run `adyton server provision-accept RESPONSE.json` here",
        request.request_id,
        args.output.display(),
        request.model,
        request.key_id,
        request.tee,
        args.sealing,
        dir.display(),
    );
    Ok(())
}

/// `adyton-server provision-accept`.
pub fn accept(args: &ProvisionAcceptArgs) -> Result<()> {
    let DeviceArgs {
        state_dir: dir,
        tee,
        sim_key,
    } = &args.device;
    let choice = tee_choice(tee.as_deref())?;
    let sealer = sealer(choice, sim_key.as_deref())?;
    sim_warning(sealer.tee());
    let bytes = read_limited(&args.response, MAX_RESPONSE_LEN, "response")?;
    let dir = state_dir(dir.as_deref());
    let state = DeviceState::open(&dir)
        .with_context(|| format!("cannot open the state directory {}", dir.display()))?;
    let record = state
        .accept(sealer.as_ref(), &bytes, now())
        .with_context(|| format!("cannot accept {}", args.response.display()))?;
    eprintln!(
        "model {} provisioned: its key is sealed to this {} TEE ({} policy) in {}; the \
         provisioning key pair is deleted\n  serve it with no network: adyton server serve \
         --state-dir {} ...",
        record.model,
        record.tee,
        record.sealing_policy,
        dir.display(),
        dir.display(),
    );
    Ok(())
}

/// Loads the sealed models of the state directory `dir` into `repository`, each with its
/// `settings` by model id (its engine, else `engine`; the engine's options; dynamic batching). A
/// model that does not unseal or open is logged and left in its failed state; the others are
/// served. Settings for a model that is not provisioned there are an error.
pub fn load_sealed(
    dir: &Path,
    sealer: &dyn Sealer,
    engine: &Arc<dyn Engine>,
    repository: &Repository,
    options: &BTreeMap<String, ModelSettings>,
) -> Result<()> {
    let state = DeviceState::open(dir)
        .with_context(|| format!("cannot open the state directory {}", dir.display()))?;
    let provisioned: Vec<String> = state
        .models()
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?
        .into_iter()
        .map(|(model, _)| model)
        .collect();
    if let Some(unknown) = options.keys().find(|name| !provisioned.contains(name)) {
        bail!(
            "model '{unknown}' has settings but is not provisioned in {} (provisioned: {})",
            dir.display(),
            if provisioned.is_empty() {
                "none".to_owned()
            } else {
                provisioned.join(", ")
            }
        );
    }
    let outcomes = state
        .load_all_with(sealer, engine, repository, options)
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?;
    if outcomes.is_empty() {
        eprintln!(
            "note: no sealed model in {} (provision one with `adyton server provision-request`)",
            dir.display()
        );
    }
    for (model, outcome) in outcomes {
        match outcome {
            Ok(()) => {
                let (engine, plan) = repository
                    .get(&model, None)
                    .map(|s| (s.model.engine().as_str(), s.model.plan().as_str()))
                    .unwrap_or_default();
                tracing::info!(model = %model, engine, plan, "sealed model unsealed and loaded");
            }
            Err(e) => tracing::error!(model = %model, error = %e, "sealed model not loaded"),
        }
    }
    Ok(())
}
