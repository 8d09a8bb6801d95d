//! SEV-SNP verification with the `sev` crate (pure-Rust crypto, no OpenSSL).
//!
//! What is checked, in this order:
//!
//! 1. The evidence is SNP evidence, and its quote is a 1184-byte attestation report that `sev`
//!    parses ([`parse_report`]), else [`AttestError::MalformedEvidence`]. `sev` refuses report
//!    versions 0 and 1, unknown processors, non-zero reserved fields, and version 2 reports whose
//!    chip id is masked.
//! 2. The certificates are found: the VCEK (or VLEK) from the collateral, or else from the
//!    certificate table that came with the evidence (configfs-tsm's `auxblob`, the extended
//!    report's GUID table); the ASK from the collateral, or else from that table or `sev`'s
//!    built-in ASKs; the ARK is always one of `sev`'s built-in ARKs (see "Trust anchor").
//! 3. The chain ARK → ASK → VCEK verifies (`sev`: ARK self-signed, ARK signs ASK, ASK signs VCEK,
//!    RSA-PSS with SHA-384), else [`AttestError::CertificateChain`].
//! 4. The ARK, ASK and VCEK are within their validity periods at `now` (checked here: `sev`
//!    checks signatures only), else [`AttestError::CollateralExpired`].
//! 5. The report's signature verifies under the VCEK (`sev`: ECDSA P-384 with SHA-384 over bytes
//!    0..0x2A0), else [`AttestError::BadSignature`]. `sev` verifies the signature over its own
//!    re-encoding of the parsed report and reads only the low 48 bytes of R and S, so this module
//!    also requires the re-encoding to equal the bytes received and the rest of R and S to be
//!    zero: no byte of the report escapes the signature.
//! 6. The reported TCB equals the TCB the VCEK was issued for (its extensions blSPL, teeSPL,
//!    snpSPL, ucodeSPL and, on Turin, fmcSPL), and the chip id equals the VCEK's hwID (a masked,
//!    all-zero chip id is refused; a VLEK has no hwID), else [`AttestError::VerificationFailed`].
//!
//! # Processor generation
//!
//! Reports of version 3 and later carry the CPUID family and model, and the built-in roots of that
//! generation (Milan, Genoa or Turin) are the only ones tried. Version 2 reports do not say, so
//! each built-in chain is tried in turn and the first whose ASK signs the VCEK is used; a VCEK that
//! no built-in chain signs is refused. Generations without built-in roots in `sev` (Venice) are
//! refused with [`AttestError::CertificateChain`].
//!
//! # Trust anchor
//!
//! The collateral and the evidence's certificate table come from the host, which is not trusted.
//! An ARK given in the collateral is therefore used only when it is byte for byte one of `sev`'s
//! built-in ARKs; the ARK from the evidence's table is ignored. An ASK from either place is
//! accepted only because the pinned ARK signs it. A VLEK's ASVK is not built in, so VLEK evidence
//! verifies only when the collateral or the table carries the ASVK.
//!
//! # Claims
//!
//! `collateral_issued_at` is the VCEK's notBefore; `collateral_expires_at` is the earliest notAfter
//! of the ARK, ASK and VCEK, which for AMD's certificates is the VCEK's. `debug` is guest policy
//! bit 19 (DEBUG allowed). There are no advisory ids.
//!
//! # TCB status
//!
//! SNP has no status like Intel's. [`TcbStatus::UpToDate`] here means: the report's TCB is the one
//! AMD certified in the VCEK, the certificates are current, and the chip is the VCEK's. AMD issues
//! VCEKs for older TCBs too, so whether a TCB is recent enough is the policy's `min_tcb` decision.

use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertType;
use sev::parser::ByteParser;
use sev::Generation;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::time::Time;
use x509_cert::Certificate as X509Certificate;

use crate::claims::{Claims, SnpClaims, SnpTcb, TcbStatus, TeeClaims};
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};
use crate::verifier::Verifier;

/// Length of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;

/// The report's signature covers bytes `0..SIGNED_LEN` (SEV-SNP ABI, table "ATTESTATION_REPORT").
const SIGNED_LEN: usize = 0x2A0;

/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384, the only one the ABI defines.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// `KEY_INFO.SIGNING_KEY` value of a report signed with a VLEK (0 is the VCEK).
const SIGNING_KEY_VLEK: u32 = 1;

/// Verifies SNP attestation reports against AMD's ARK.
#[derive(Debug, Default)]
pub struct SnpVerifier;

impl SnpVerifier {
    /// A verifier with AMD's built-in roots.
    pub fn new() -> Self {
        Self
    }
}

impl Verifier for SnpVerifier {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn verify(&self, evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims> {
        if evidence.tee != TeeKind::Snp {
            return Err(AttestError::WrongTee {
                expected: TeeKind::Snp,
                found: evidence.tee,
            });
        }
        let report = parse_report(&evidence.quote)?;
        let certs = FoundCertificates::find(&report, evidence, collateral)?;
        let chain = verify_chain(&report, &certs)?;

        let ark = CertFacts::read("ARK", &chain.ca.ark)?;
        let ask = CertFacts::read("ASK", &chain.ca.ask)?;
        let vek = CertFacts::read(certs.vek_name, &chain.vek)?;
        // The VCEK first: it expires long before AMD's roots, so its dates name the cause.
        for facts in [&vek, &ask, &ark] {
            facts.check_validity(now)?;
        }

        verify_report_signature(&report, &evidence.quote, &chain.vek)?;
        check_reported_tcb(&report, &vek)?;
        check_chip_id(&report, &vek)?;

        let expires_at = [&ark, &ask, &vek]
            .iter()
            .map(|facts| facts.not_after.unix)
            .min();
        let mut claims = claims_for(&report)?;
        claims.collateral_expires_at = expires_at;
        claims.collateral_issued_at = Some(vek.not_before.unix);
        Ok(claims)
    }
}

/// Parses a 1184-byte SNP attestation report. Any other length, an unsupported version or an
/// unknown processor is [`AttestError::MalformedEvidence`]. Nothing is verified.
pub fn parse_report(bytes: &[u8]) -> Result<AttestationReport> {
    if bytes.len() != REPORT_LEN {
        return Err(AttestError::malformed(format!(
            "an SNP attestation report is {REPORT_LEN} bytes, this one is {}",
            bytes.len()
        )));
    }
    AttestationReport::from_bytes(bytes)
        .map_err(|e| AttestError::malformed(format!("SNP attestation report unreadable: {e}")))
}

/// Whether the report's guest policy allows debugging (policy bit 19, DEBUG): the hypervisor can
/// then read and write the guest's memory.
pub fn debug_allowed(report: &AttestationReport) -> bool {
    report.policy.debug_allowed()
}

/// The claims a report states. Only [`SnpVerifier::verify`] makes them proven; it also fills the
/// collateral dates, which stay `None` here.
pub(crate) fn claims_for(report: &AttestationReport) -> Result<Claims> {
    // `u64::from(GuestPolicy)` sets the reserved bit 17, so the raw value is taken from the
    // policy's own encoding (eight bytes, little-endian) to report exactly what the chip signed.
    let policy = report
        .policy
        .to_bytes()
        .map(u64::from_le_bytes)
        .map_err(|e| AttestError::malformed(format!("guest policy unreadable: {e}")))?;
    let tcb = &report.reported_tcb;
    Ok(Claims {
        tee: TeeKind::Snp,
        insecure: false,
        report_data: report.report_data,
        tcb_status: TcbStatus::UpToDate,
        advisory_ids: Vec::new(),
        debug: debug_allowed(report),
        collateral_expires_at: None,
        collateral_issued_at: None,
        collateral_grace_secs: None,
        details: TeeClaims::Snp(SnpClaims {
            measurement: report.measurement,
            host_data: report.host_data,
            reported_tcb: SnpTcb {
                bootloader: tcb.bootloader,
                tee: tcb.tee,
                snp: tcb.snp,
                microcode: tcb.microcode,
            },
            policy,
            chip_id: report.chip_id.to_vec(),
            vmpl: report.vmpl,
        }),
    })
}

/// The processor generations whose roots `sev` ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AmdFamily {
    Milan,
    Genoa,
    Turin,
}

impl AmdFamily {
    const ALL: [AmdFamily; 3] = [AmdFamily::Milan, AmdFamily::Genoa, AmdFamily::Turin];

    fn ark(self) -> Result<Certificate> {
        match self {
            AmdFamily::Milan => builtin::milan::ark(),
            AmdFamily::Genoa => builtin::genoa::ark(),
            AmdFamily::Turin => builtin::turin::ark(),
        }
        .map_err(|_| AttestError::Crypto("a built-in AMD ARK certificate does not parse"))
    }

    fn ask(self) -> Result<Certificate> {
        match self {
            AmdFamily::Milan => builtin::milan::ask(),
            AmdFamily::Genoa => builtin::genoa::ask(),
            AmdFamily::Turin => builtin::turin::ask(),
        }
        .map_err(|_| AttestError::Crypto("a built-in AMD ASK certificate does not parse"))
    }
}

/// The generations whose roots may have signed this report's VCEK.
fn candidate_families(report: &AttestationReport) -> Result<Vec<AmdFamily>> {
    let (Some(family), Some(model)) = (report.cpuid_fam_id, report.cpuid_mod_id) else {
        // Version 2 reports carry no CPUID fields.
        return Ok(AmdFamily::ALL.to_vec());
    };
    // `sev` already identified the processor while parsing, so this does not fail for a parsed
    // report; the error path is kept rather than assumed away.
    let generation = Generation::identify_cpu(family, model)
        .map_err(|e| AttestError::malformed(format!("unknown processor: {e}")))?;
    match generation {
        Generation::Milan => Ok(vec![AmdFamily::Milan]),
        Generation::Genoa => Ok(vec![AmdFamily::Genoa]),
        Generation::Turin => Ok(vec![AmdFamily::Turin]),
        // Written as a wildcard: which other variants exist depends on `sev`'s features.
        _ => Err(AttestError::CertificateChain {
            reason: format!(
                "no built-in AMD root for this processor (CPUID family {family:#x}, model \
                 {model:#x})"
            ),
        }),
    }
}

/// The certificates found for a report, before any of them is trusted.
struct FoundCertificates {
    /// "VCEK" or "VLEK", for messages.
    vek_name: &'static str,
    vek: Certificate,
    ark: Option<Certificate>,
    /// ASK candidates in the order tried; built-in ASKs are added later.
    asks: Vec<Certificate>,
    /// Whether an ASK was given explicitly in the collateral, which then is the only one tried.
    ask_from_collateral: bool,
}

impl FoundCertificates {
    fn find(
        report: &AttestationReport,
        evidence: &Evidence,
        collateral: &Collateral,
    ) -> Result<Self> {
        let snp = collateral.snp.as_ref();
        let table = match &evidence.certificates {
            Some(bytes) => parse_cert_table(bytes)?,
            None => Vec::new(),
        };
        let signed_by_vlek = report.key_info.signing_key() == SIGNING_KEY_VLEK;
        let vek_name = if signed_by_vlek { "VLEK" } else { "VCEK" };

        let vek = match snp.and_then(|s| s.vcek.as_deref()) {
            Some(bytes) => {
                decode_certificate(bytes).map_err(|e| AttestError::CertificateChain {
                    reason: format!("the collateral's {vek_name} is not a certificate: {e}"),
                })?
            }
            None => {
                let (first, second) = if signed_by_vlek {
                    (CertType::VLEK, CertType::VCEK)
                } else {
                    (CertType::VCEK, CertType::VLEK)
                };
                let entry = table_entry(&table, &first).or_else(|| table_entry(&table, &second));
                let Some(bytes) = entry else {
                    return Err(AttestError::CollateralMissing {
                        what: format!(
                            "no {vek_name} certificate: neither the collateral nor the evidence's \
                             certificate table carries one"
                        ),
                    });
                };
                decode_certificate(bytes).map_err(|e| {
                    AttestError::malformed(format!(
                        "the {vek_name} in the evidence's certificate table is not a \
                         certificate: {e}"
                    ))
                })?
            }
        };

        let ark = match snp.and_then(|s| s.ark.as_deref()) {
            Some(bytes) => {
                Some(
                    decode_certificate(bytes).map_err(|e| AttestError::CertificateChain {
                        reason: format!("the collateral's ARK is not a certificate: {e}"),
                    })?,
                )
            }
            None => None,
        };

        let mut asks = Vec::new();
        let ask_from_collateral = match snp.and_then(|s| s.ask.as_deref()) {
            Some(bytes) => {
                asks.push(decode_certificate(bytes).map_err(|e| {
                    AttestError::CertificateChain {
                        reason: format!("the collateral's ASK is not a certificate: {e}"),
                    }
                })?);
                true
            }
            None => {
                // The host's ASK (the ASVK, for a VLEK) is tried before the built-in one. A table
                // entry that does not parse is skipped: the built-in ASK may still do.
                if let Some(ask) =
                    table_entry(&table, &CertType::ASK).and_then(|b| decode_certificate(b).ok())
                {
                    asks.push(ask);
                }
                false
            }
        };

        Ok(Self {
            vek_name,
            vek,
            ark,
            asks,
            ask_from_collateral,
        })
    }
}

pub(crate) fn table_entry<'a>(
    table: &[(CertType, &'a [u8])],
    wanted: &CertType,
) -> Option<&'a [u8]> {
    table
        .iter()
        .find(|(cert_type, _)| cert_type == wanted)
        .map(|(_, data)| *data)
}

/// Reads a certificate in PEM or DER.
fn decode_certificate(bytes: &[u8]) -> std::io::Result<Certificate> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        Certificate::from_pem(bytes)
    } else {
        Certificate::from_der(bytes)
    }
}

/// Size of one entry of the certificate table: a GUID, a u32 offset and a u32 length.
const CERT_TABLE_ENTRY_LEN: usize = 24;

/// More entries than any real table has (it holds at most ARK, ASK, VCEK or VLEK, and a CRL).
const MAX_CERT_TABLE_ENTRIES: usize = 64;

/// Parses the SNP extended-report certificate table (GHCB specification, "SNP Extended Guest
/// Request"; configfs-tsm's `auxblob`): entries of a 16-byte GUID, a little-endian u32 offset from
/// the table's start and a u32 length, ended by an all-zero GUID, followed by the certificates.
///
/// `sev` can name the GUIDs ([`CertType`]) but parses tables only through raw pointers with no
/// bounds, so the walk is done here, with every offset checked. GUIDs are read in RFC 4122 byte
/// order, as `sev` writes and reads them and as go-sev-guest does.
pub(crate) fn parse_cert_table(bytes: &[u8]) -> Result<Vec<(CertType, &[u8])>> {
    let mut entries: Vec<(CertType, &[u8])> = Vec::new();
    let mut rest = bytes;
    loop {
        let Some((entry, tail)) = rest.split_at_checked(CERT_TABLE_ENTRY_LEN) else {
            return Err(AttestError::malformed(
                "SNP certificate table ends before its all-zero terminating entry",
            ));
        };
        rest = tail;
        let (guid, location) = entry.split_at(16);
        if guid.iter().all(|&b| b == 0) {
            break;
        }
        if entries.len() == MAX_CERT_TABLE_ENTRIES {
            return Err(AttestError::malformed(format!(
                "SNP certificate table has more than {MAX_CERT_TABLE_ENTRIES} entries"
            )));
        }
        let cert_type = CertType::from_bytes(guid)
            .map_err(|e| AttestError::malformed(format!("SNP certificate table GUID: {e}")))?;
        let word = |range: std::ops::Range<usize>| {
            location
                .get(range)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .and_then(|v| usize::try_from(v).ok())
        };
        let data = match (word(0..4), word(4..8)) {
            (Some(offset), Some(len)) => offset
                .checked_add(len)
                .and_then(|end| bytes.get(offset..end)),
            _ => None,
        };
        let Some(data) = data else {
            return Err(AttestError::malformed(format!(
                "SNP certificate table entry {cert_type} points outside the table's {} bytes",
                bytes.len()
            )));
        };
        if !matches!(cert_type, CertType::OTHER(_))
            && entries.iter().any(|(seen, _)| *seen == cert_type)
        {
            return Err(AttestError::malformed(format!(
                "SNP certificate table has two entries of type {cert_type}"
            )));
        }
        entries.push((cert_type, data));
    }
    Ok(entries)
}

/// Builds the candidate chains and returns the first that verifies: ARK self-signed, ARK signs
/// ASK, ASK signs the VCEK (all checked by `sev`).
fn verify_chain(report: &AttestationReport, certs: &FoundCertificates) -> Result<Chain> {
    let families = candidate_families(report)?;
    let given_ark_der = match &certs.ark {
        Some(ark) => Some(ark.to_der().map_err(|e| AttestError::CertificateChain {
            reason: format!("the collateral's ARK does not encode: {e}"),
        })?),
        None => None,
    };

    let mut failures = Vec::new();
    let mut ark_is_builtin = false;
    for family in families.iter().copied() {
        let ark = family.ark()?;
        if let Some(given) = &given_ark_der {
            if ark.to_der().ok().as_ref() != Some(given) {
                continue;
            }
            ark_is_builtin = true;
        }
        let mut asks = certs.asks.clone();
        if !certs.ask_from_collateral {
            asks.push(family.ask()?);
        }
        for ask in asks {
            let chain = Chain {
                ca: ca::Chain {
                    ark: ark.clone(),
                    ask,
                },
                vek: certs.vek.clone(),
            };
            match (&chain).verify() {
                Ok(_) => return Ok(chain),
                Err(e) => failures.push(format!("{family:?} roots: {e}")),
            }
        }
    }
    if given_ark_der.is_some() && !ark_is_builtin {
        return Err(AttestError::CertificateChain {
            reason: format!(
                "the collateral's ARK is not AMD's built-in ARK for {}",
                family_names(&families)
            ),
        });
    }
    Err(AttestError::CertificateChain {
        reason: format!(
            "no chain from AMD's ARK ({}) through an ASK to the {} verifies: {}",
            family_names(&families),
            certs.vek_name,
            failures.join("; ")
        ),
    })
}

fn family_names(families: &[AmdFamily]) -> String {
    families
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the report's signature under the VCEK (`sev`), and that the bytes received are exactly
/// the ones that signature covers.
fn verify_report_signature(
    report: &AttestationReport,
    raw: &[u8],
    vek: &Certificate,
) -> Result<()> {
    let bad = |what: String| AttestError::BadSignature { what };
    if report.key_info.mask_chip_key() {
        return Err(bad(
            "the report is unsigned: MaskChipKey is set, so the firmware wrote zeros as its \
             signature"
                .into(),
        ));
    }
    if report.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(bad(format!(
            "the report's signature algorithm is {}, only 1 (ECDSA P-384 with SHA-384) exists",
            report.sig_algo
        )));
    }
    // R and S are little-endian in 72-byte fields; `sev` reads the low 48 bytes of each, a P-384
    // scalar, so the rest must be zero or those bytes could change freely.
    let sig = &report.signature;
    if [sig.r(), sig.s()]
        .iter()
        .any(|scalar| scalar.iter().skip(48).any(|&b| b != 0))
    {
        return Err(bad(
            "the report's signature has non-zero bytes beyond the 48 of a P-384 scalar".into(),
        ));
    }
    (vek, report)
        .verify()
        .map_err(|e| bad(format!("SNP attestation report: {e}")))?;

    // `sev` verified its re-encoding of the parsed report. `sev` refuses non-zero bytes in most
    // reserved fields while parsing, but it drops the reserved bytes inside TCB versions and
    // writes zeros back, so those would escape the signature unless the received bytes are
    // required to equal the re-encoding.
    let encoded = report
        .to_bytes()
        .map_err(|e| bad(format!("the parsed report does not re-encode: {e}")))?;
    let differs = |range: std::ops::Range<usize>| encoded.get(range.clone()) != raw.get(range);
    if differs(0..SIGNED_LEN) {
        return Err(bad(
            "the report has non-zero reserved bytes in its signed part, which the verified \
             re-encoding does not contain"
                .into(),
        ));
    }
    if differs(SIGNED_LEN..REPORT_LEN) {
        return Err(bad(
            "the report's signature field has non-zero padding or reserved bytes".into(),
        ));
    }
    Ok(())
}

/// The report was signed with the key derived for its reported TCB; the VCEK says which TCB AMD
/// certified that key for. They must agree, or the VCEK is not the one for this report.
fn check_reported_tcb(report: &AttestationReport, vek: &CertFacts) -> Result<()> {
    let tcb = &report.reported_tcb;
    // In the order of TCB_EXTENSIONS.
    let reported = [
        Some(tcb.bootloader),
        Some(tcb.tee),
        Some(tcb.snp),
        Some(tcb.microcode),
        tcb.fmc,
    ];
    for (((name, _), value), certified) in TCB_EXTENSIONS.into_iter().zip(reported).zip(vek.tcb) {
        let matches = match (value, certified) {
            (Some(value), Some(certified)) => value == certified,
            // Only Turin and later have an FMC: absent on one side means zero.
            (value, certified) if name == FMC_SPL => value.or(certified).unwrap_or(0) == 0,
            _ => false,
        };
        if !matches {
            return Err(AttestError::VerificationFailed {
                tee: TeeKind::Snp,
                reason: format!(
                    "reported TCB does not match the {}'s: {name} is {} in the report and {} in \
                     the certificate (the certificate was issued for another TCB)",
                    vek.name,
                    show(value),
                    show(certified),
                ),
            });
        }
    }
    Ok(())
}

fn show(value: Option<u8>) -> String {
    value.map_or_else(|| "absent".into(), |v| v.to_string())
}

/// A VCEK's hwID is the chip id of the one chip it belongs to: 64 bytes up to Genoa, the first 8
/// bytes of the report's chip id (the rest zero) from Turin on. A VLEK has none.
fn check_chip_id(report: &AttestationReport, vek: &CertFacts) -> Result<()> {
    let failed = |reason: String| AttestError::VerificationFailed {
        tee: TeeKind::Snp,
        reason,
    };
    let chip_id = &report.chip_id[..];
    let Some(hw_id) = &vek.hw_id else {
        if report.key_info.signing_key() == SIGNING_KEY_VLEK {
            return Ok(());
        }
        return Err(failed(
            "the VCEK has no hwID extension, so it cannot be tied to the report's chip".into(),
        ));
    };
    if chip_id.iter().all(|&b| b == 0) {
        return Err(failed(
            "the report's chip id is masked (MaskChipId), so it cannot be matched with the \
             VCEK's hwID"
                .into(),
        ));
    }
    let matches = match chip_id.split_at_checked(hw_id.len()) {
        Some((head, tail)) => head == hw_id.as_slice() && tail.iter().all(|&b| b == 0),
        None => false,
    };
    if !matches {
        return Err(failed(format!(
            "chip id {} does not match the VCEK's hwID {}: the VCEK belongs to another chip",
            hex::encode(chip_id),
            hex::encode(hw_id)
        )));
    }
    Ok(())
}

/// A certificate time: unix seconds, and the text for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CertTime {
    unix: u64,
    text: String,
}

impl CertTime {
    /// `der` accepts only what RFC 5280 allows (UTCTime and GeneralizedTime to the second, in
    /// UTC, from 1970 on), so every decoded time has a unix value and no conversion can fail.
    fn from_x509(time: Time) -> Self {
        Self {
            unix: time.to_unix_duration().as_secs(),
            text: time.to_string(),
        }
    }
}

/// What this module reads from a certificate that `sev` does not expose: its validity and AMD's
/// extensions.
#[derive(Debug)]
struct CertFacts {
    name: &'static str,
    not_before: CertTime,
    not_after: CertTime,
    /// The TCB extensions' values, in the order of [`TCB_EXTENSIONS`].
    tcb: [Option<u8>; 5],
    hw_id: Option<Vec<u8>>,
}

/// The TCB extensions (1.3.6.1.4.1.3704.1.3.n, under AMD's arc 1.3.6.1.4.1.3704.1), by name
/// (VCEK specification, AMD 57230, table "VCEK Certificate Extensions"). Each `extnValue` holds
/// a DER INTEGER.
const TCB_EXTENSIONS: [(&str, ObjectIdentifier); 5] = [
    (
        "blSPL",
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1"),
    ),
    (
        "teeSPL",
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2"),
    ),
    (
        "snpSPL",
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3"),
    ),
    (
        "ucodeSPL",
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8"),
    ),
    (
        FMC_SPL,
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9"),
    ),
];

/// The FMC (firmware), which only Turin and later have.
const FMC_SPL: &str = "fmcSPL";

/// The hwID extension. Unlike the TCB extensions, AMD puts the chip id into `extnValue` as it
/// is, with no inner DER tag: the extension's OCTET STRING is the chip id.
const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

impl CertFacts {
    /// Reads a certificate that has already been verified, so its content is AMD's.
    ///
    /// `sev` keeps its `x509-cert` certificate private, so the DER it verified (its own
    /// encoding of the certificate) is parsed again here.
    fn read(name: &'static str, cert: &Certificate) -> Result<Self> {
        let der = cert
            .to_der()
            .map_err(|e| Self::unreadable(name, &e.to_string()))?;
        Self::from_der(name, &der)
    }

    fn from_der(name: &'static str, der: &[u8]) -> Result<Self> {
        let unreadable = |what: &str| Self::unreadable(name, what);
        let cert =
            X509Certificate::from_der(der).map_err(|e| unreadable(&format!("bad DER: {e}")))?;
        let tbs = cert.tbs_certificate();
        let extensions = tbs.extensions().map_or(&[][..], Vec::as_slice);

        let extension = |oid: &ObjectIdentifier| -> Result<Option<&[u8]>> {
            let mut found = extensions.iter().filter(|ext| ext.extn_id == *oid);
            let first = found.next().map(|ext| ext.extn_value.as_bytes());
            if found.next().is_some() {
                return Err(unreadable("an extension appears twice"));
            }
            Ok(first)
        };

        let mut tcb = [None; 5];
        for (slot, (ext_name, oid)) in tcb.iter_mut().zip(&TCB_EXTENSIONS) {
            if let Some(value) = extension(oid)? {
                // `u8::from_der` takes exactly one INTEGER, 0 to 255, minimally encoded.
                *slot =
                    Some(u8::from_der(value).map_err(|e| {
                        unreadable(&format!("{ext_name} is not a small integer: {e}"))
                    })?);
            }
        }
        let hw_id = extension(&HW_ID)?.map(<[u8]>::to_vec);
        if hw_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 64)
        {
            return Err(unreadable("hwID is not 1 to 64 bytes"));
        }

        let validity = tbs.validity();
        Ok(Self {
            name,
            not_before: CertTime::from_x509(validity.not_before),
            not_after: CertTime::from_x509(validity.not_after),
            tcb,
            hw_id,
        })
    }

    fn unreadable(name: &str, what: &str) -> AttestError {
        AttestError::CertificateChain {
            reason: format!("the {name} certificate is unreadable: {what}"),
        }
    }

    fn check_validity(&self, now: u64) -> Result<()> {
        if now < self.not_before.unix || now > self.not_after.unix {
            return Err(AttestError::CollateralExpired {
                what: format!(
                    "the {} certificate is valid from {} to {}, and the verification time is \
                     unix {now}",
                    self.name, self.not_before.text, self.not_after.text
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILAN_REPORT_HEX: &str = include_str!("../../../../testdata/snp/report_milan.hex");
    const MILAN_VCEK_DER: &[u8] = include_bytes!("../../../../testdata/snp/vcek_milan.der");
    const TURIN_VCEK_DER: &[u8] = include_bytes!("../../../../testdata/snp/vcek_turin.der");

    fn milan_report() -> AttestationReport {
        parse_report(&hex::decode(MILAN_REPORT_HEX.trim()).unwrap()).unwrap()
    }

    #[test]
    fn the_debug_bit_maps_to_the_debug_claim() {
        let mut report = milan_report();
        assert!(!claims_for(&report).unwrap().debug);
        report.policy.set_debug_allowed(true);
        let claims = claims_for(&report).unwrap();
        assert!(claims.debug);
        let TeeClaims::Snp(snp) = &claims.details else {
            panic!("not SNP claims")
        };
        assert_ne!(snp.policy & (1 << 19), 0);
    }

    #[test]
    fn version_2_reports_try_every_built_in_root() {
        assert_eq!(
            candidate_families(&milan_report()).unwrap(),
            AmdFamily::ALL.to_vec()
        );
        let mut report = milan_report();
        report.version = 3;
        report.cpuid_fam_id = Some(0x19);
        report.cpuid_mod_id = Some(0x01);
        assert_eq!(candidate_families(&report).unwrap(), vec![AmdFamily::Milan]);
        report.cpuid_fam_id = Some(0x1A);
        report.cpuid_mod_id = Some(0x02);
        assert_eq!(candidate_families(&report).unwrap(), vec![AmdFamily::Turin]);
        report.cpuid_mod_id = Some(0x90);
        assert!(matches!(
            candidate_families(&report),
            Err(AttestError::CertificateChain { .. })
        ));
    }

    fn milan_vcek_facts() -> CertFacts {
        let vcek = Certificate::from_der(MILAN_VCEK_DER).unwrap();
        CertFacts::read("VCEK", &vcek).unwrap()
    }

    #[test]
    fn the_vcek_extensions_are_read() {
        let facts = milan_vcek_facts();
        assert_eq!(facts.tcb, [Some(3), Some(0), Some(8), Some(115), None]);
        assert_eq!(facts.hw_id.as_deref(), Some(&milan_report().chip_id[..]));
        assert_eq!(facts.not_before.text, "2023-04-03T19:23:43Z");
        assert_eq!(facts.not_after.unix, 1_901_474_623);
    }

    #[test]
    fn the_turin_vceks_fmc_spl_and_8_byte_hw_id_are_read() {
        let facts = CertFacts::from_der("VCEK", TURIN_VCEK_DER).unwrap();
        assert_eq!(facts.tcb, [Some(0), Some(0), Some(0), Some(9), Some(0)]);
        assert_eq!(
            facts.hw_id.as_deref(),
            Some(&[0x1E, 0x55, 0x0A, 0x8E, 0xE5, 0xCF, 0x9F, 0x4D][..])
        );
        assert_eq!(facts.not_before.text, "2024-11-06T21:14:00Z");
        assert_eq!(facts.not_after.text, "2031-11-06T21:14:00Z");
    }

    #[test]
    fn the_facts_come_from_the_der_sev_verified() {
        let from_file = CertFacts::from_der("VCEK", MILAN_VCEK_DER).unwrap();
        let through_sev = milan_vcek_facts();
        assert_eq!(from_file.tcb, through_sev.tcb);
        assert_eq!(from_file.hw_id, through_sev.hw_id);
        assert_eq!(from_file.not_before, through_sev.not_before);
        assert_eq!(from_file.not_after, through_sev.not_after);
    }

    /// The DER offset of the last arc of ucodeSPL's OID (1.3.6.1.4.1.3704.1.3.8) in the Milan
    /// VCEK (`openssl asn1parse`: the OBJECT at 675, two header bytes, ten content bytes).
    const MILAN_UCODE_SPL_ARC_AT: usize = 675 + 2 + 9;

    #[test]
    fn a_repeated_tcb_extension_is_refused() {
        let mut der = MILAN_VCEK_DER.to_vec();
        assert_eq!(der[MILAN_UCODE_SPL_ARC_AT], 8);
        // ucodeSPL becomes a second blSPL.
        der[MILAN_UCODE_SPL_ARC_AT] = 1;
        match CertFacts::from_der("VCEK", &der) {
            Err(AttestError::CertificateChain { reason }) => {
                assert!(reason.contains("an extension appears twice"), "{reason}")
            }
            other => panic!("expected CertificateChain, got {other:?}"),
        }
    }

    #[test]
    fn an_spl_that_is_not_a_der_integer_is_refused() {
        let mut der = MILAN_VCEK_DER.to_vec();
        // ucodeSPL's value 02 01 73 (INTEGER 115) becomes 04 01 73 (an OCTET STRING).
        let value_at = MILAN_UCODE_SPL_ARC_AT + 1 + 2;
        assert_eq!(der[value_at..value_at + 3], [0x02, 0x01, 0x73]);
        der[value_at] = 0x04;
        match CertFacts::from_der("VCEK", &der) {
            Err(AttestError::CertificateChain { reason }) => {
                assert!(
                    reason.contains("ucodeSPL is not a small integer"),
                    "{reason}"
                )
            }
            other => panic!("expected CertificateChain, got {other:?}"),
        }
    }

    /// Wraps `content` in a DER TLV with a one-byte length.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut der = vec![tag, u8::try_from(content.len()).unwrap()];
        der.extend_from_slice(content);
        der
    }

    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    const OCTET_STRING: u8 = 0x04;

    fn read_time(tag: u8, content: &[u8]) -> Option<CertTime> {
        Time::from_der(&tlv(tag, content))
            .ok()
            .map(CertTime::from_x509)
    }

    #[test]
    fn times_convert_to_unix_seconds() {
        let t = read_time(UTC_TIME, b"700101000000Z").unwrap();
        assert_eq!(t.unix, 0);
        let t = read_time(UTC_TIME, b"300403192343Z").unwrap();
        assert_eq!(
            (t.unix, t.text.as_str()),
            (1_901_474_623, "2030-04-03T19:23:43Z")
        );
        let t = read_time(GENERALIZED_TIME, b"20240229235959Z").unwrap();
        assert_eq!(t.unix, 1_709_251_199);
        assert_eq!(
            read_time(UTC_TIME, b"490101000000Z").unwrap().text,
            "2049-01-01T00:00:00Z"
        );
        for bad in [
            &b"230229000000Z"[..],
            b"231301000000Z",
            b"230101240000Z",
            b"2301010000Z",
            b"230101000000",
            b"23010100000aZ",
            b"",
        ] {
            assert!(read_time(UTC_TIME, bad).is_none(), "{bad:?}");
        }
        assert!(read_time(OCTET_STRING, b"700101000000Z").is_none());
    }

    /// The SPL extensions are read with `u8::from_der`: this pins what it accepts.
    #[test]
    fn small_integers_only() {
        let read_u8_integer = |der: &[u8]| u8::from_der(der).ok();
        assert_eq!(read_u8_integer(&[0x02, 0x01, 0x73]), Some(0x73));
        assert_eq!(read_u8_integer(&[0x02, 0x02, 0x00, 0xC8]), Some(200));
        assert_eq!(read_u8_integer(&[0x02, 0x01, 0x80]), None);
        assert_eq!(read_u8_integer(&[0x02, 0x02, 0x01, 0x00]), None);
        assert_eq!(read_u8_integer(&[0x02, 0x00]), None);
        assert_eq!(read_u8_integer(&[0x02, 0x01, 0x01, 0x00]), None);
        assert_eq!(read_u8_integer(&[0x04, 0x01, 0x01]), None);
        // A redundant leading zero is not DER, and is refused.
        assert_eq!(read_u8_integer(&[0x02, 0x02, 0x00, 0x05]), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            assert!(CertFacts::from_der("VCEK", &bytes).is_err());
            let mut framed = vec![0x30, 0x82];
            framed.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            framed.extend_from_slice(&bytes);
            assert!(CertFacts::from_der("VCEK", &framed).is_err());
        }
        // Every truncation of a real VCEK fails cleanly.
        for len in 0..MILAN_VCEK_DER.len() {
            assert!(CertFacts::from_der("VCEK", &MILAN_VCEK_DER[..len]).is_err());
        }
    }

    #[test]
    fn a_reported_tcb_other_than_the_vceks_is_refused() {
        let facts = milan_vcek_facts();
        check_reported_tcb(&milan_report(), &facts).unwrap();
        let mut report = milan_report();
        report.reported_tcb.microcode = 116;
        match check_reported_tcb(&report, &facts) {
            Err(AttestError::VerificationFailed { reason, .. }) => {
                assert!(
                    reason.contains("ucodeSPL is 116 in the report and 115"),
                    "{reason}"
                )
            }
            other => panic!("expected VerificationFailed, got {other:?}"),
        }
        // An FMC appears only from Turin on; absent on one side, it must be zero on the other.
        let mut report = milan_report();
        report.reported_tcb.fmc = Some(0);
        check_reported_tcb(&report, &facts).unwrap();
        report.reported_tcb.fmc = Some(1);
        assert!(check_reported_tcb(&report, &facts).is_err());
        let mut with_fmc = milan_vcek_facts();
        with_fmc.tcb[4] = Some(2);
        assert!(check_reported_tcb(&milan_report(), &with_fmc).is_err());
        // A VCEK without a TCB extension cannot vouch for the TCB.
        let mut missing = milan_vcek_facts();
        missing.tcb[1] = None;
        assert!(check_reported_tcb(&milan_report(), &missing).is_err());
    }

    #[test]
    fn the_chip_id_must_be_the_vceks_hw_id() {
        let facts = milan_vcek_facts();
        check_chip_id(&milan_report(), &facts).unwrap();

        let mut other_chip = milan_report();
        other_chip.chip_id[63] ^= 1;
        let mut masked = milan_report();
        masked.chip_id = [0; 64];
        for report in [other_chip, masked] {
            assert!(matches!(
                check_chip_id(&report, &facts),
                Err(AttestError::VerificationFailed { .. })
            ));
        }

        // Turin's hwID is 8 bytes: the start of the chip id, whose other bytes are zero.
        let mut turin_like = milan_vcek_facts();
        turin_like.hw_id = Some(milan_report().chip_id[..8].to_vec());
        let mut report = milan_report();
        assert!(check_chip_id(&report, &turin_like).is_err());
        report.chip_id[8..].fill(0);
        check_chip_id(&report, &turin_like).unwrap();

        // A certificate without hwID passes only for a report signed with a VLEK.
        let mut no_hw_id = milan_vcek_facts();
        no_hw_id.hw_id = None;
        let mut report = milan_report();
        assert!(check_chip_id(&report, &no_hw_id).is_err());
        report.key_info = sev::firmware::guest::KeyInfo::from(SIGNING_KEY_VLEK << 2);
        check_chip_id(&report, &no_hw_id).unwrap();
    }

    #[test]
    fn every_built_in_root_parses() {
        for family in AmdFamily::ALL {
            family.ark().unwrap();
            family.ask().unwrap();
        }
    }
}
