//! `adyton attest`: verify evidence, and verify a running inference server. Making evidence and
//! printing the SIM measurement are the TEE binary's (`adyton-server attest report`, `measure`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use adyton_attest::collateral::Collateral;
use adyton_attest::composite::verify_gpus;
use adyton_attest::gpu::{gpu_nonce, GpuClaims, GpuEvidence, GpuVerifier};
use adyton_attest::pccs::{SnpProduct, AMD_KDS_URL};
use adyton_attest::provider::{CollateralProvider, CollateralUse, ProviderConfig};
use adyton_attest::{Claims, Evidence, Policy, TeeKind};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use adyton_client::{ConnectOptions, ServerClient, Token};

use adyton_cli::collateral::{CollateralArgs, GpuRimArgs};
use adyton_cli::report_data::parse_report_data;

use crate::files::{print_stdout, OutputFile, OutputKind};
use crate::server_binary::{self, Forwarded};

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Make evidence over report data in this machine's TEE, and write it as JSON.
    ///
    /// Made by `adyton-server attest report`, the TEE binary, with the same arguments.
    #[command(disable_help_flag = true)]
    Report(Forwarded),

    /// Verify evidence: genuine and current, and (with --policy) allowed by the policy.
    ///
    /// Without --policy, only signatures, certificate chains, revocation, collateral dates and the
    /// TCB level are checked, and the TCB status is printed without refusing on it. With --policy,
    /// the policy decides. Exits non-zero on any failure, with the reason.
    #[command(after_help = "Examples:\n  \
        adyton attest verify evidence.json --policy policy.toml\n  \
        adyton attest verify --tee tdx --quote tdx_quote --collateral tdx_quote_collateral.json --at 2025-06-01T00:00:00Z\n  \
        adyton attest verify evidence.json --pccs-url https://api.trustedservices.intel.com --collateral-cache-dir ~/.cache/adyton\n  \
        adyton attest verify --tee snp --report report.bin --vcek vcek.der --chain cert_chain.pem\n  \
        adyton attest verify --tee nvidia-gpu --report gpu_report.hex --chain gpu_chain.pem --nonce 27a3…8f66 --gpu-rims rims/")]
    Verify(Box<VerifyArgs>),

    /// Print the SIM measurement of the inference server's build, `adyton-server` (hex, alone on
    /// the last line): what a policy's [sim] table pins.
    #[command(disable_help_flag = true)]
    Measure(Forwarded),

    /// Connect to an inference server over attested TLS, verify it against a policy, and print
    /// the claims and the certificate's SHA-256.
    ///
    /// --save-cert writes the verified certificate, so that clients that cannot verify
    /// attestation (curl --cacert, tritonclient) can pin it.
    #[command(after_help = "Examples:\n  \
        adyton attest server https://10.0.0.5:8443 --policy policy.toml --save-cert server.pem\n  \
        curl --cacert server.pem https://10.0.0.5:8443/v2/health/ready")]
    Server(Box<AttestServerArgs>),
}

/// How to reach and verify an attested inference server.
#[derive(Debug, Args)]
pub struct AttestedServerArgs {
    /// The server's URL: https://HOST:PORT.
    #[arg(value_name = "URL")]
    pub url: String,

    /// The policy the server's evidence must satisfy (TOML, or JSON when named .json).
    #[arg(long, value_name = "POLICY")]
    pub policy: PathBuf,

    /// Where collateral for the evidence's checks comes from, for SGX, TDX and SNP servers.
    #[command(flatten)]
    pub collateral: CollateralArgs,

    /// The RIMs of the server's GPUs, under a policy with [nvidia_gpu].
    #[command(flatten)]
    pub gpus: GpuRimArgs,

    /// Skip the check of fresh evidence over a nonce of this client's own; the evidence in the
    /// server's certificate is still verified.
    #[arg(long)]
    pub no_nonce: bool,

    /// Never fetch the collateral the server serves for its own evidence
    /// (GET /adyton/v1/collateral); use only the collateral sources given here. By default it is
    /// fetched, and used, only when those sources have none for the server's evidence: it adds no
    /// trust, since its signatures are checked up to Intel's or AMD's root.
    #[arg(long)]
    pub no_server_collateral: bool,

    /// The limit of connecting and of each request.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct AttestServerArgs {
    #[command(flatten)]
    pub server: AttestedServerArgs,

    /// Write the verified certificate (PEM) here.
    #[arg(long, value_name = "CERT.pem")]
    pub save_cert: Option<PathBuf>,

    /// Replace CERT.pem if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Evidence JSON, as `adyton attest report` writes it.
    #[arg(value_name = "EVIDENCE")]
    pub evidence: Option<PathBuf>,

    /// TEE of a raw vendor file given with --quote or --report; nvidia-gpu for one NVIDIA GPU's
    /// attestation report (with --chain and --nonce).
    #[arg(long, value_name = "sgx|tdx|snp|azure-snp|azure-tdx|nitro|nvidia-gpu")]
    pub tee: Option<String>,

    /// A raw DCAP quote (binary or hex), for --tee sgx or tdx.
    #[arg(long, value_name = "FILE")]
    pub quote: Option<PathBuf>,

    /// A raw SEV-SNP attestation report (binary or hex), for --tee snp; an AWS Nitro
    /// attestation document (COSE_Sign1, binary or hex), for --tee nitro; the Azure vTPM
    /// container (JSON, docs/evidence.md), for --tee azure-snp or azure-tdx; an NVIDIA GPU's
    /// attestation report (SPDM GET_MEASUREMENTS request and response, binary or hex), for
    /// --tee nvidia-gpu.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Where collateral for the evidence's checks comes from: a bundle file, a PCCS or Intel's
    /// PCS, AMD's KDS (the flags of every verifier command).
    #[command(flatten)]
    pub collateral: CollateralArgs,

    /// The older names of the collateral flags, still accepted.
    #[command(flatten)]
    pub older: OlderCollateralFlags,

    /// The VCEK or VLEK certificate (DER or PEM), for SNP.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,

    /// AMD's certificate chain (ASK then ARK, PEM; for a VLEK, ASVK then ARK), for SNP; the
    /// built-in roots and ASVKs otherwise. For --tee nvidia-gpu, the GPU's device certificate
    /// chain (PEM or concatenated DER, device certificate first), which must lead to NVIDIA's
    /// pinned device identity root.
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,

    /// The nonce the GPU report must answer (64 hex digits), for --tee nvidia-gpu: required,
    /// since the nonce is what makes a report fresh rather than replayed.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,

    /// An NVIDIA reference integrity manifest (signed XML) for GPU reports, verified against
    /// NVIDIA's RIM root when used; repeatable, and with --gpu-rims.
    #[arg(long, value_name = "FILE")]
    pub rim: Vec<PathBuf>,

    /// The RIMs of GPU reports (--tee nvidia-gpu, or GPUs attached to EVIDENCE).
    #[command(flatten)]
    pub gpus: GpuRimArgs,

    /// Policy file (TOML, or JSON when named .json).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Verify as of this time: RFC 3339 or unix seconds [default: now].
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Also require this report data (hex, zero-padded to 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub expect_report_data: Option<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The collateral flags `adyton attest verify` had before it took the shared group: hidden, and
/// each the same as its new name. Given on the command line, an older name wins over the
/// environment variable of the new one (clap does not say which of the two set a value).
#[derive(Debug, Default, Args)]
pub struct OlderCollateralFlags {
    /// `--pccs-url`.
    #[arg(long = "pccs", value_name = "URL", hide = true)]
    pub pccs: Option<String>,

    /// `--kds-url`.
    #[arg(long = "kds", value_name = "URL", hide = true)]
    pub kds: Option<String>,

    /// AMD's KDS at its usual URL, unless --kds-url names another. The product is read from the
    /// report (or Milan and Genoa are tried, for reports that do not say), so the value is only
    /// checked.
    #[arg(long = "kds-product", value_name = "PRODUCT", hide = true)]
    pub kds_product: Option<String>,

    /// `--collateral-cache-dir`.
    #[arg(long = "collateral-cache", value_name = "DIR", hide = true)]
    pub collateral_cache: Option<PathBuf>,
}

impl OlderCollateralFlags {
    /// `args` with these flags moved to their new names.
    fn applied_to(&self, args: &CollateralArgs) -> Result<CollateralArgs> {
        let mut args = args.clone();
        if let Some(product) = &self.kds_product {
            product.parse::<SnpProduct>()?;
            if args.kds_url.is_none() && self.kds.is_none() {
                args.kds_url = Some(AMD_KDS_URL.to_owned());
            }
        }
        if let Some(url) = &self.pccs {
            args.pccs_url = Some(url.clone());
        }
        if let Some(url) = &self.kds {
            args.kds_url = Some(url.clone());
        }
        if let Some(dir) = &self.collateral_cache {
            args.collateral_cache_dir = Some(dir.clone());
        }
        Ok(args)
    }
}

/// Largest evidence, quote or certificate file read.
const MAX_INPUT_LEN: u64 = 4 << 20;

/// Runs an `adyton attest` subcommand; making evidence and measuring are `adyton-server`'s.
pub fn run(command: &AttestCommand) -> Result<()> {
    match command {
        AttestCommand::Report(forwarded) => {
            server_binary::exec(&forwarded.with_prefix(&["attest", "report"]))
        }
        AttestCommand::Verify(args) => verify(args),
        AttestCommand::Measure(forwarded) => {
            server_binary::exec(&forwarded.with_prefix(&["measure"]))
        }
        AttestCommand::Server(args) => server(args),
    }
}

pub fn verify(args: &VerifyArgs) -> Result<()> {
    let now = match &args.at {
        Some(text) => parse_time(text)?,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    };
    if args.tee.as_deref() == Some(NVIDIA_GPU) {
        return verify_gpu_report(args, now);
    }
    let evidence = load_evidence(args)?;
    let provider = CollateralProvider::new(collateral_config(args)?)
        .context("cannot use the collateral settings")?;
    let policy = args
        .policy
        .as_deref()
        .map(|path| {
            Policy::from_file(path).with_context(|| format!("cannot use policy {}", path.display()))
        })
        .transpose()?;

    let (verified, used) = provider.verify_traced(&evidence, now);
    let mut gpus = match &verified {
        Ok(claims) => AttachedGpus::verify(args, claims, &evidence.gpus, policy.as_ref(), now)?,
        Err(_) => AttachedGpus::default(),
    };
    let gpu_decision = gpus.decision.take();
    let decision = match (&verified, &policy) {
        (Ok(claims), Some(policy)) => Some(
            policy
                .evaluate(claims, now)
                .map_err(anyhow::Error::from)
                .and_then(|()| gpu_decision.unwrap_or(Ok(()))),
        ),
        _ => None,
    };
    if let Some(expected) = &args.expect_report_data {
        let expected = parse_report_data(expected)?;
        if let Ok(claims) = &verified {
            claims.expect_report_data(&expected)?;
        }
    }

    if args.json {
        let report = json!({
            "verified_at": now,
            "evidence": verified.as_ref().map(|_| "genuine").unwrap_or("refused"),
            "error": verified.as_ref().err().map(|e| e.to_string()),
            "claims": verified.as_ref().ok(),
            "gpus": gpus.json(),
            "collateral": used,
            "policy": decision.as_ref().map(|d| match d {
                Ok(()) => json!({"decision": "allowed"}),
                Err(e) => json!({"decision": "denied", "reason": format!("{e:#}")}),
            }),
        });
        print_stdout(&format!("{report:#}"))?;
    } else if let Ok(claims) = &verified {
        let decision = match &decision {
            Some(Ok(())) => "allowed".to_string(),
            Some(Err(e)) => format!("DENIED: {e:#}"),
            None => "none given (the evidence is genuine; nothing was judged)".to_string(),
        };
        print_stdout(&format!(
            "{}{}collateral:    {}\npolicy:        {decision}",
            claims_text(claims, now),
            gpus.text(),
            used.as_ref()
                .map_or_else(|| "none".to_owned(), collateral_text)
        ))?;
    }
    let claims = verified.context("evidence refused")?;
    if policy.is_none() {
        // Under a policy, its `[nvidia_gpu]` table decides (without it GPUs are ignored, as
        // the key broker and the clients ignore them); without one, nothing attached may fail.
        gpus.refusal()?;
    }
    match decision {
        Some(decision) => decision.context("policy denied the evidence")?,
        // Without a policy nothing is judged, except what no policy may ever accept silently:
        // SIM evidence (anyone can make it) and a debug TEE (its memory is readable).
        None if claims.insecure => {
            bail!("SIM evidence is accepted only under a policy with a [sim] table (give --policy)")
        }
        None if claims.debug => bail!("debug mode is enabled: the host can read this TEE's memory"),
        None => {}
    }
    if claims.insecure {
        eprintln!("warning: SIM evidence is INSECURE: it proves nothing about hardware");
    }
    Ok(())
}

pub fn server(args: &AttestServerArgs) -> Result<()> {
    let client = connect_server(&args.server, None)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let verified = client.verified();
    let fresh = if client.fresh_claims().is_some() {
        "verified (evidence over a nonce of this client's own, bound to the same key)"
    } else {
        "not asked (--no-nonce)"
    };
    if let Some(path) = &args.save_cert {
        // Not `-`: the claims go to standard output.
        let mut output = OutputFile::create(path, args.force, OutputKind::Public)?;
        std::io::Write::write_all(output.file(), client.certificate_pem().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        output.commit()?;
        eprintln!(
            "wrote the verified certificate to {}; pin it with curl --cacert {0}",
            path.display()
        );
    }
    let gpus: String = (0..)
        .zip(&verified.gpus)
        .map(|(i, gpu)| gpu_claims_text(&format!("gpu {i}"), gpu))
        .collect();
    print_stdout(&format!(
        "server:        {}\n{}{gpus}fresh evidence: {fresh}\ncertificate SHA-256: {}",
        client.base_url(),
        claims_text(&verified.claims, now),
        hex::encode(verified.certificate_sha256)
    ))
}

/// Connects to an attested inference server and verifies it against the policy of `args`:
/// nothing is sent to it before that succeeds.
pub fn connect_server(args: &AttestedServerArgs, token: Option<Token>) -> Result<ServerClient> {
    let policy = Policy::from_file(&args.policy)
        .with_context(|| format!("cannot use policy {}", args.policy.display()))?;
    let provider = CollateralProvider::new(args.collateral.provider_config()?)
        .context("cannot use the collateral settings")?;
    let options = ConnectOptions {
        collateral: Arc::new(provider),
        token,
        fresh_evidence: !args.no_nonce,
        server_collateral: !args.no_server_collateral,
        gpus: Some(Arc::new(args.gpus.verifier(Vec::new())?)),
        timeout: args.timeout.into(),
    };
    let client = ServerClient::connect(&args.url, policy, options)
        .with_context(|| format!("cannot use the server at {}", args.url))?;
    if client.verified().claims.insecure {
        eprintln!("warning: the server attests with SIM evidence, which is INSECURE: it proves nothing about hardware");
    }
    Ok(client)
}

/// The claims as text, one field a line.
fn claims_text(claims: &Claims, now: u64) -> String {
    let verified_at = UNIX_EPOCH + std::time::Duration::from_secs(now);
    let mut lines = vec![
        format!(
            "tee:           {}{}",
            claims.tee,
            if claims.insecure {
                " (INSECURE simulation)"
            } else {
                ""
            }
        ),
        format!(
            "verified at:   {}",
            humantime::format_rfc3339_seconds(verified_at)
        ),
        format!("measurement:   {}", claims.primary_measurement()),
        format!("tcb status:    {}", claims.tcb_status.name()),
    ];
    if !claims.advisory_ids.is_empty() {
        lines.push(format!("advisories:    {}", claims.advisory_ids.join(", ")));
    }
    lines.push(format!("debug:         {}", claims.debug));
    lines.push(format!(
        "report data:   {}",
        hex::encode(claims.report_data)
    ));
    if let Ok(details) = serde_json::to_string_pretty(&claims.details) {
        lines.push(format!("details:       {details}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn parse_time(text: &str) -> Result<u64> {
    // 9999-12-31T23:59:59Z: later times cannot be printed in RFC 3339.
    const LATEST: u64 = 253_402_300_799;
    let seconds = match text.trim().parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => humantime::parse_rfc3339_weak(text.trim())
            .with_context(|| {
                format!("--at `{text}` is neither RFC 3339 (2024-05-01T00:00:00Z) nor unix seconds")
            })?
            .duration_since(UNIX_EPOCH)?
            .as_secs(),
    };
    if seconds > LATEST {
        bail!("--at `{text}` is after the year 9999");
    }
    Ok(seconds)
}
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_INPUT_LEN {
        bail!(
            "{} is {len} bytes; at most {MAX_INPUT_LEN} are accepted",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Raw vendor files may be binary or hex text (as some tools and test suites store them).
fn binary_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes);
    let compact: String = text.split_whitespace().collect();
    if !compact.is_empty()
        && compact.len().is_multiple_of(2)
        && compact.bytes().all(|b| b.is_ascii_hexdigit())
    {
        hex::decode(compact).unwrap_or(bytes)
    } else {
        bytes
    }
}

fn load_evidence(args: &VerifyArgs) -> Result<Evidence> {
    let raw_tee = || -> Result<TeeKind> {
        let tee = args
            .tee
            .as_deref()
            .context("--quote and --report need --tee")?;
        Ok(tee.parse()?)
    };
    match (&args.evidence, &args.quote, &args.report) {
        (Some(path), None, None) => {
            let bytes = read_limited(path)?;
            Evidence::from_json(&bytes)
                .with_context(|| format!("{} is not Adyton evidence", path.display()))
        }
        (None, Some(path), None) => {
            let tee = raw_tee()?;
            if !matches!(tee, TeeKind::Sgx | TeeKind::Tdx) {
                bail!("--quote is for --tee sgx or tdx; use --report for snp");
            }
            Ok(Evidence {
                tee,
                quote: binary_or_hex(read_limited(path)?),
                certificates: None,
                gpus: Vec::new(),
            })
        }
        (None, None, Some(path)) => {
            let tee = raw_tee()?;
            if !matches!(
                tee,
                TeeKind::Snp | TeeKind::Nitro | TeeKind::AzureSnp | TeeKind::AzureTdx
            ) {
                bail!("--report is for --tee snp, azure-snp, azure-tdx, nitro or nvidia-gpu");
            }
            Ok(Evidence {
                tee,
                quote: binary_or_hex(read_limited(path)?),
                certificates: None,
                gpus: Vec::new(),
            })
        }
        (None, None, None) => bail!("give an EVIDENCE file, or --tee with --quote or --report"),
        _ => bail!("give only one of EVIDENCE, --quote and --report"),
    }
}

/// The collateral sources of `verify`: the shared flags (and their older names), with the SNP
/// certificates given as files (--vcek, --chain) added to the bundle.
fn collateral_config(args: &VerifyArgs) -> Result<ProviderConfig> {
    let mut config = args.older.applied_to(&args.collateral)?.provider_config()?;
    if args.vcek.is_none() && args.chain.is_none() {
        return Ok(config);
    }
    let (mut collateral, mut label) = config
        .bundle
        .take()
        .unwrap_or_else(|| (Collateral::none(), String::new()));
    let mut snp = collateral.snp.take().unwrap_or_default();
    if let Some(path) = &args.vcek {
        snp.vcek = Some(read_limited(path)?);
    }
    if let Some(path) = &args.chain {
        let (ask, ark) = adyton_attest::pccs::split_amd_chain_pem(&read_limited(path)?)
            .with_context(|| format!("cannot use {}", path.display()))?;
        snp.ask = Some(ask);
        snp.ark = Some(ark);
    }
    collateral.snp = Some(snp);
    for path in [&args.vcek, &args.chain].into_iter().flatten() {
        if !label.is_empty() {
            label.push_str(", ");
        }
        label.push_str(&path.display().to_string());
    }
    Ok(config.with_bundle(collateral, label))
}

/// Which collateral verified the evidence, from where.
fn collateral_text(used: &CollateralUse) -> String {
    let origin = serde_json::to_value(used.origin)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut text = origin;
    if !used.source.is_empty() {
        text.push_str(&format!(" {}", used.source));
    }
    if let Some(key) = &used.key {
        text.push_str(&format!(" ({key})"));
    }
    text
}

/// The `--tee` name of one NVIDIA GPU's report: not a TEE kind, since a GPU's evidence is
/// attached to a CPU TEE's (`docs/evidence.md`), but verifiable alone from vendor files.
const NVIDIA_GPU: &str = "nvidia-gpu";

/// The GPU verifier of `verify`: NVIDIA's pinned roots, the RIM directory and the --rim files.
fn gpu_verifier(args: &VerifyArgs) -> Result<GpuVerifier> {
    let rims = args
        .rim
        .iter()
        .map(|path| read_limited(path))
        .collect::<Result<Vec<_>>>()?;
    args.gpus.verifier(rims)
}

/// `adyton attest verify --tee nvidia-gpu`: one GPU report with its chain, against a nonce the
/// caller gives, then (with --policy) the policy's `[nvidia_gpu]` table.
fn verify_gpu_report(args: &VerifyArgs, now: u64) -> Result<()> {
    let report = match (&args.evidence, &args.quote, &args.report) {
        (None, None, Some(path)) => binary_or_hex(read_limited(path)?),
        _ => bail!("--tee nvidia-gpu takes the GPU's attestation report with --report"),
    };
    let chain = args
        .chain
        .as_deref()
        .context("--tee nvidia-gpu needs --chain: the GPU's device certificate chain")?;
    let nonce = args.nonce.as_deref().context(
        "--tee nvidia-gpu needs --nonce HEX: the 32 bytes the report must answer \
         (without a checked nonce a report may be a replay)",
    )?;
    let nonce: [u8; 32] = hex::decode(nonce.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("--nonce `{nonce}` is not 64 hex digits"))?;
    let evidence = GpuEvidence {
        report,
        certificates: read_limited(chain)?,
        rims: Vec::new(),
    };
    let policy = args
        .policy
        .as_deref()
        .map(|path| {
            let policy = Policy::from_file(path)
                .with_context(|| format!("cannot use policy {}", path.display()))?;
            policy
                .nvidia_gpu
                .with_context(|| format!("policy {} has no [nvidia_gpu] table", path.display()))
        })
        .transpose()?;

    let verified = gpu_verifier(args)?.verify(&evidence, &nonce, now);
    let decision = match (&verified, &policy) {
        (Ok(claims), Some(policy)) => Some(policy.evaluate(std::slice::from_ref(claims))),
        _ => None,
    };
    if args.json {
        let report = json!({
            "verified_at": now,
            "evidence": verified.as_ref().map(|_| "genuine").unwrap_or("refused"),
            "error": verified.as_ref().err().map(|e| e.to_string()),
            "gpu": verified.as_ref().ok(),
            "policy": decision.as_ref().map(|d| match d {
                Ok(()) => json!({"decision": "allowed"}),
                Err(e) => json!({"decision": "denied", "reason": e.to_string()}),
            }),
        });
        print_stdout(&format!("{report:#}"))?;
    } else if let Ok(claims) = &verified {
        let decision = match &decision {
            Some(Ok(())) => "allowed".to_string(),
            Some(Err(e)) => format!("DENIED: {e}"),
            None => "none given (the report is genuine; nothing was judged)".to_string(),
        };
        let verified_at = UNIX_EPOCH + std::time::Duration::from_secs(now);
        print_stdout(&format!(
            "verified at:   {}\n{}policy:        {decision}",
            humantime::format_rfc3339_seconds(verified_at),
            gpu_claims_text("gpu", claims),
        ))?;
    }
    match verified {
        Err(e @ adyton_attest::AttestError::ReportDataMismatch { .. }) => {
            return Err(e).context("GPU report refused: its nonce is not --nonce");
        }
        other => other.context("GPU report refused")?,
    };
    if let Some(decision) = decision {
        decision.context("policy denied the GPU")?;
    }
    Ok(())
}

/// One GPU's claims as text, one field a line, each line starting with `label`.
fn gpu_claims_text(label: &str, claims: &GpuClaims) -> String {
    let matched = claims.measurements.iter().filter(|m| m.matches).count();
    let pad = |name: &str| format!("{label} {name}:");
    let lines = [
        format!(
            "{:<15}{} ({:?})",
            pad("product"),
            claims.product,
            claims.arch
        ),
        format!("{:<15}{}", pad("cc mode"), claims.cc_mode),
        format!("{:<15}{}", pad("driver"), claims.driver_version),
        format!("{:<15}{}", pad("vbios"), claims.vbios_version),
        format!("{:<15}{}", pad("nonce"), hex::encode(claims.nonce)),
        format!(
            "{:<15}{matched} of {} compared indices match{}",
            pad("measurements"),
            claims.measurements.len(),
            if claims.vbios_rim_checked {
                ""
            } else {
                " (no VBIOS RIM found: driver RIM only)"
            }
        ),
        format!("{:<15}{}", pad("rims"), claims.rim_ids.join(", ")),
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The GPUs attached to CPU evidence that `verify` was given: each verified with its nonce
/// derived from the verified CPU report data, and (under a policy with `[nvidia_gpu]`) the
/// table's decision.
#[derive(Default)]
struct AttachedGpus {
    /// Each GPU's result, in index order.
    results: Vec<Result<GpuClaims, adyton_attest::AttestError>>,
    /// The policy's `[nvidia_gpu]` decision, when the policy has the table.
    decision: Option<Result<()>>,
}

impl AttachedGpus {
    fn verify(
        args: &VerifyArgs,
        cpu: &Claims,
        gpus: &[GpuEvidence],
        policy: Option<&Policy>,
        now: u64,
    ) -> Result<Self> {
        let gpu_policy = policy.filter(|p| p.nvidia_gpu.is_some());
        if gpus.is_empty() && gpu_policy.is_none() {
            return Ok(Self::default());
        }
        let verifier = gpu_verifier(args)?;
        let results = (0u32..)
            .zip(gpus)
            .map(|(i, gpu)| verifier.verify(gpu, &gpu_nonce(&cpu.report_data, i), now))
            .collect();
        let decision = gpu_policy.map(|policy| {
            let (verified, outcomes) = verify_gpus(cpu, gpus, &verifier, policy, now);
            // Not every error names its GPU (a nonce mismatch does not): name the first refused.
            let refused = outcomes.iter().find(|o| !o.verified).map(|o| o.index);
            verified.map(|_| ()).map_err(|e| match refused {
                Some(index) => anyhow::Error::from(e).context(format!("GPU {index} refused")),
                None => e.into(),
            })
        });
        Ok(Self { results, decision })
    }

    fn json(&self) -> serde_json::Value {
        (0u32..)
            .zip(&self.results)
            .map(|(index, result)| match result {
                Ok(claims) => json!({"index": index, "verified": true, "claims": claims}),
                Err(e) => json!({"index": index, "verified": false, "error": e.to_string()}),
            })
            .collect()
    }

    fn text(&self) -> String {
        (0u32..)
            .zip(&self.results)
            .map(|(index, result)| match result {
                Ok(claims) => gpu_claims_text(&format!("gpu {index}"), claims),
                Err(e) => format!("gpu {index}:         REFUSED: {e}\n"),
            })
            .collect()
    }

    /// The first GPU that did not verify, as an error: attached GPUs that do not verify make
    /// the evidence refused, with or without a policy.
    fn refusal(&self) -> Result<()> {
        for (index, result) in (0u32..).zip(&self.results) {
            if let Err(e) = result {
                bail!("GPU {index} refused: {e}");
            }
        }
        Ok(())
    }
}
