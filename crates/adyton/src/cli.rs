//! The command line: argument definitions and dispatch, nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{attest, kbs, model};

/// Confidential AI inference: models and data decrypted only inside a TEE.
#[derive(Debug, Parser)]
#[command(name = "adyton", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encrypt, decrypt and inspect model files (envelopes v1 and v2).
    #[command(subcommand)]
    Model(ModelCommand),

    /// Make attestation evidence, verify it against vendor roots and a policy, measure this build.
    #[command(subcommand)]
    Attest(AttestCommand),

    /// Run the key broker (KBS): model keys released only to attested TEEs.
    #[command(subcommand)]
    Kbs(KbsCommand),
}

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Serve the KBS HTTP API (key transfer and admin) until SIGINT or SIGTERM.
    ///
    /// Local-trial mode: everything comes from flags and the environment.
    /// ADYTON_KBS_MASTER_KEY (64 hex digits or base64 of 32 bytes) sets the master key; else
    /// --master-key-file; else DIR/master.key, generated (mode 0600) on first start.
    /// ADYTON_KBS_ADMIN_PASSWORD enables the admin API for the user `admin`; without it every admin
    /// request is 401. Transfer decisions and admin actions are appended to DIR/audit.jsonl. SIM
    /// evidence is accepted only for keys whose transfer policy names SIM.
    #[command(after_help = "Examples:\n  \
        ADYTON_KBS_ADMIN_PASSWORD=... adyton kbs serve --listen 127.0.0.1:8443 --data-dir /var/lib/adyton-kbs\n  \
        adyton kbs serve --listen 127.0.0.1:0 --data-dir kbs --collateral collateral.json")]
    Serve(KbsServeArgs),
}

#[derive(Debug, Args)]
pub struct KbsServeArgs {
    /// Address and port to listen on (port 0 picks a free port; the bound address is printed as
    /// `listening on http://ADDR`). Plain HTTP: put it behind TLS or keep it on a trusted network.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: String,

    /// Data directory: the key store (kbs.redb), the audit log (audit.jsonl) and, unless given
    /// otherwise, the master key (master.key). Created with mode 0700 if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Master key file: exactly 32 raw bytes, mode 0600 (ignored when ADYTON_KBS_MASTER_KEY is
    /// set) [default: DIR/master.key, generated if missing].
    #[arg(long, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Collateral for verifying SGX, TDX and SNP evidence: a bundle file, or DCAP collateral JSON.
    /// Without it, only SIM evidence (under SIM policies) can succeed.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Make evidence over report data in this machine's TEE, and write it as JSON.
    #[command(after_help = "Examples:\n  \
        adyton attest report --tee sim --report-data 00ff -o evidence.json\n  \
        adyton attest report --report-data $(sha512sum key.der | cut -c1-128) -o evidence.json")]
    Report(ReportArgs),

    /// Verify evidence: genuine and current, and (with --policy) allowed by the policy.
    ///
    /// Without --policy, only signatures, certificate chains, revocation, collateral dates and the
    /// TCB level are checked, and the TCB status is printed without refusing on it. With --policy,
    /// the policy decides. Exits non-zero on any failure, with the reason.
    #[command(after_help = "Examples:\n  \
        adyton attest verify evidence.json --policy policy.toml\n  \
        adyton attest verify --tee tdx --quote tdx_quote --collateral tdx_quote_collateral.json --at 2025-06-01T00:00:00Z\n  \
        adyton attest verify --tee snp --report report.bin --vcek vcek.der --chain cert_chain.pem")]
    Verify(Box<VerifyArgs>),

    /// Print the SIM measurement of this build (hex, alone on the last line).
    Measure,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The TEE to use: auto (detect; never falls back to sim), sgx, tdx, snp, or sim (INSECURE).
    #[arg(long, default_value = "auto", value_name = "TEE")]
    pub tee: String,

    /// Up to 64 bytes of report data, as hex (zero-padded to 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub report_data: String,

    /// Where to write the evidence JSON.
    #[arg(short, long, value_name = "EVIDENCE")]
    pub output: PathBuf,

    /// The SIM attester's key file [default: $ADYTON_SIM_KEY or ~/.local/share/adyton/sim-attester.key].
    #[arg(long, value_name = "FILE")]
    pub sim_key: Option<PathBuf>,

    /// Replace EVIDENCE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Evidence JSON, as `adyton attest report` writes it.
    #[arg(value_name = "EVIDENCE")]
    pub evidence: Option<PathBuf>,

    /// TEE of a raw vendor file given with --quote or --report.
    #[arg(long, value_name = "sgx|tdx|snp")]
    pub tee: Option<String>,

    /// A raw DCAP quote (binary or hex), for --tee sgx or tdx.
    #[arg(long, value_name = "FILE")]
    pub quote: Option<PathBuf>,

    /// A raw SEV-SNP attestation report (binary or hex), for --tee snp.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Collateral: a bundle file, or DCAP collateral JSON as dcap-qvl's sample/ folder has it.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,

    /// Fetch DCAP collateral from this PCCS (or Intel's PCS) when --collateral is not given, e.g.
    /// https://pccs.example:8081 or https://api.trustedservices.intel.com.
    #[arg(long, value_name = "URL")]
    pub pccs: Option<String>,

    /// Fetch the SNP VCEK and chain from AMD's KDS (or a mirror) when not given, for this
    /// processor family: Milan, Genoa or Turin.
    #[arg(long, value_name = "PRODUCT")]
    pub kds_product: Option<String>,

    /// The KDS base URL used with --kds-product.
    #[arg(long, value_name = "URL", default_value = "https://kdsintf.amd.com")]
    pub kds: String,

    /// Keep fetched collateral in this directory, so that a later run works offline.
    #[arg(long, value_name = "DIR")]
    pub collateral_cache: Option<PathBuf>,

    /// The VCEK or VLEK certificate (DER or PEM), for SNP.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,

    /// AMD's certificate chain (ASK then ARK, PEM), for SNP; the built-in roots otherwise.
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,

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

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Encrypt a model file with AES-256-GCM.
    ///
    /// v2 (the default) is Adyton's chunked format: it is checked chunk by chunk and decrypts with
    /// bounded memory. v1 is the CNAP single-shot format, for tools that read only that.
    #[command(after_help = "Examples:\n  \
        adyton model encrypt model.onnx -o model.enc --new-key model.key\n  \
        adyton model encrypt model.onnx -o model.enc --key model.key --format v1")]
    Encrypt(EncryptArgs),

    /// Decrypt a v1 or v2 envelope (the format is detected from the file).
    Decrypt(DecryptArgs),

    /// Show an envelope's header without the key, and check its length.
    Inspect(InspectArgs),
}

/// Envelope format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// CNAP single-shot format (whole file in memory, at most 4 GiB).
    V1,
    /// Adyton chunked streaming format.
    V2,
}

#[derive(Debug, Args)]
#[group(id = "key_source", required = true, multiple = false)]
pub struct KeySource {
    /// Use the 32-byte raw key in this file.
    #[arg(long, value_name = "KEYFILE", group = "key_source")]
    pub key: Option<PathBuf>,

    /// Generate a fresh key and write it to this file (mode 0600).
    #[arg(long, value_name = "KEYFILE", group = "key_source")]
    pub new_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// The plaintext model file.
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Where to write the encrypted model.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// Envelope format.
    #[arg(long, value_enum, default_value_t = FormatArg::V2)]
    pub format: FormatArg,

    #[command(flatten)]
    pub key_source: KeySource,

    /// Key id recorded in the v2 header (the key broker's id of the key).
    #[arg(long, value_name = "ID", default_value = "")]
    pub key_id: String,

    /// Media type recorded in the v2 header [default: application/x-onnx for .onnx files,
    /// application/octet-stream otherwise].
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,

    /// Plaintext bytes per v2 chunk (16 B to 16 MiB). Suffixes K, M for KiB, MiB.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u32,

    /// Replace OUT (and the new key file) if they exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The encrypted model (v1 or v2).
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Where to write the plaintext model.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,

    /// The 32-byte raw key file.
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,

    /// Skip the v2 plaintext SHA-256 check. Every chunk is still authenticated, header included;
    /// the check only catches a writer with the key that recorded a wrong hash.
    #[arg(long)]
    pub skip_hash_check: bool,

    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The encrypted model (v1 or v2).
    #[arg(value_name = "IN")]
    pub input: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses a byte count with an optional K or M suffix (binary units).
fn parse_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1u64 << 10),
        Some((at, 'm' | 'M')) => (&text[..at], 1u64 << 20),
        _ => (text, 1),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count (examples: 65536, 64K, 1M)"))?;
    value
        .checked_mul(unit)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Model(ModelCommand::Encrypt(args)) => model::encrypt(&args),
            Command::Model(ModelCommand::Decrypt(args)) => model::decrypt(&args),
            Command::Model(ModelCommand::Inspect(args)) => model::inspect(&args),
            Command::Attest(AttestCommand::Report(args)) => attest::report(&args),
            Command::Attest(AttestCommand::Verify(args)) => attest::verify(&args),
            Command::Attest(AttestCommand::Measure) => attest::measure(),
            Command::Kbs(KbsCommand::Serve(args)) => kbs::serve(&args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1G").is_err());
        assert!(parse_size("99999999M").is_err());
        assert!(parse_size("").is_err());
    }
}
