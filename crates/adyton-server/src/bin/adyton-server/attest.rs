//! `adyton-server attest report`: evidence over report data, made by this TEE.

use std::path::PathBuf;

use adyton_attest::attester::{self, AttesterPaths, TeeChoice};
use adyton_attest::TeeKind;
use adyton_cli::files::{OutputFile, OutputKind};
use adyton_cli::report_data::parse_report_data;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Make evidence over report data in this machine's TEE, and write it as JSON.
    #[command(after_help = "Examples:\n  \
        adyton attest report --tee sim --report-data 00ff -o evidence.json\n  \
        adyton attest report --report-data $(sha512sum key.der | cut -c1-128) -o evidence.json")]
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The TEE to use: auto (detect; never falls back to sim), sgx, tdx, snp, azure-snp,
    /// azure-tdx, nitro, coco, or sim (INSECURE).
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

pub fn report(args: &ReportArgs) -> Result<()> {
    let report_data = parse_report_data(&args.report_data)?;
    let choice: TeeChoice = args.tee.parse()?;
    let mut paths = AttesterPaths::default();
    if let Some(key) = &args.sim_key {
        paths.sim_key = key.clone();
    }
    let mut output = OutputFile::create(&args.output, args.force, OutputKind::PublicOrStdout)?;
    let attester = attester::attester_for(choice, &paths)?;
    if attester.tee() == TeeKind::Sim {
        eprintln!("warning: SIM evidence is INSECURE: it proves nothing about hardware");
    }
    let evidence = attester.evidence(&report_data)?;
    std::io::Write::write_all(output.file(), evidence.to_json().as_bytes())
        .with_context(|| format!("cannot write {output}"))?;
    let shown = output.to_string();
    output.commit()?;
    eprintln!(
        "wrote {} evidence ({} bytes of quote) to {shown}",
        evidence.tee,
        evidence.quote.len(),
    );
    Ok(())
}
