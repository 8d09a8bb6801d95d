//! `adyton attest`: verify evidence, and verify a running inference server. Making evidence and
//! printing the SIM measurement are the TEE binary's (`adyton-server attest report`, `measure`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use adyton_attest::collateral::Collateral;
use adyton_attest::pccs::{FetchOptions, KdsClient, PccsClient, SnpProduct};
use adyton_attest::{Claims, Evidence, Policy, TeeKind};
use anyhow::{bail, Context, Result};
use serde_json::json;

use adyton_client::{ConnectOptions, ServerClient, Token};

use adyton_cli::report_data::parse_report_data;

use crate::cli::{AttestServerArgs, AttestedServerArgs, VerifyArgs};
use crate::files::{print_stdout, OutputFile, OutputKind};

/// Largest evidence, quote or certificate file read.
const MAX_INPUT_LEN: u64 = 4 << 20;

pub fn verify(args: &VerifyArgs) -> Result<()> {
    let now = match &args.at {
        Some(text) => parse_time(text)?,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    };
    let evidence = load_evidence(args)?;
    let collateral = load_collateral(args, &evidence, now)?;
    let policy = args
        .policy
        .as_deref()
        .map(|path| {
            Policy::from_file(path).with_context(|| format!("cannot use policy {}", path.display()))
        })
        .transpose()?;

    let verified = adyton_attest::verifier::verify(&evidence, &collateral, now);
    let decision = match (&verified, &policy) {
        (Ok(claims), Some(policy)) => Some(policy.evaluate(claims, now)),
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
            None => "none given (the evidence is genuine; nothing was judged)".to_string(),
        };
        print_stdout(&format!(
            "{}policy:        {decision}",
            claims_text(claims, now)
        ))?;
    }
    let claims = verified.context("evidence refused")?;
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
    print_stdout(&format!(
        "server:        {}\n{}fresh evidence: {fresh}\ncertificate SHA-256: {}",
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
    let collateral = match &args.collateral {
        Some(path) => Collateral::from_json(&read_limited(path)?)
            .with_context(|| format!("cannot use collateral {}", path.display()))?,
        None => Collateral::none(),
    };
    let options = ConnectOptions {
        collateral,
        token,
        fresh_evidence: !args.no_nonce,
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
            })
        }
        (None, None, Some(path)) => {
            if raw_tee()? != TeeKind::Snp {
                bail!("--report is for --tee snp");
            }
            Ok(Evidence {
                tee: TeeKind::Snp,
                quote: binary_or_hex(read_limited(path)?),
                certificates: None,
            })
        }
        (None, None, None) => bail!("give an EVIDENCE file, or --tee with --quote or --report"),
        _ => bail!("give only one of EVIDENCE, --quote and --report"),
    }
}

fn load_collateral(args: &VerifyArgs, evidence: &Evidence, now: u64) -> Result<Collateral> {
    let mut collateral = match &args.collateral {
        Some(path) => Collateral::from_json(&read_limited(path)?)
            .with_context(|| format!("cannot use collateral {}", path.display()))?,
        None => Collateral::none(),
    };
    let mut options = FetchOptions::default();
    if let Some(dir) = &args.collateral_cache {
        options = options.with_cache_dir(dir);
    }
    if let (None, Some(url), TeeKind::Sgx | TeeKind::Tdx) =
        (&collateral.dcap, &args.pccs, evidence.tee)
    {
        let client = PccsClient::new(url, options.clone())?;
        collateral.dcap = Some(
            client
                .dcap_collateral_at(&evidence.quote, now)
                .with_context(|| format!("cannot fetch collateral from {url}"))?,
        );
    }
    let has_vcek = collateral.snp.as_ref().is_some_and(|s| s.vcek.is_some());
    if let (false, None, Some(product), TeeKind::Snp) =
        (has_vcek, &args.vcek, &args.kds_product, evidence.tee)
    {
        let product: SnpProduct = product.parse()?;
        let client = KdsClient::new(&args.kds, options)?;
        collateral.snp = Some(
            client
                .snp_collateral_at(&evidence.quote, product, now)
                .with_context(|| format!("cannot fetch the VCEK from {}", args.kds))?,
        );
    }
    if args.vcek.is_some() || args.chain.is_some() {
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
    }
    Ok(collateral)
}
