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
//!    report's GUID table); the ASK (for a VLEK, the ASVK) from the collateral, or else from that
//!    table or the built-in ones (`sev`'s ASKs, this module's ASVKs); the ARK is always one of
//!    `sev`'s built-in ARKs (see "Trust anchor").
//! 3. The chain ARK → ASK → VCEK (ARK → ASVK → VLEK) verifies (`sev`: ARK self-signed, ARK signs
//!    the ASK, the ASK signs the VCEK, RSA-PSS with SHA-384), else
//!    [`AttestError::CertificateChain`].
//! 4. The chain is of the kind the report's `KEY_INFO.SIGNING_KEY` names: a VCEK report needs an
//!    ASK (`CN=SEV-<product>`) and a VCEK (CN=SEV-VCEK), a VLEK report an ASVK
//!    (`CN=SEV-VLEK-<product>`) and a VLEK (CN=SEV-VLEK), else [`AttestError::CertificateChain`].
//!    The ARK signs both intermediates, so the signatures alone would let a VCEK stand for a
//!    VLEK report and the other way round.
//! 5. The ARK, ASK and VCEK are within their validity periods at `now` (checked here: `sev`
//!    checks signatures only), else [`AttestError::CollateralExpired`].
//! 6. The report's signature verifies under the VCEK (ECDSA P-384 with SHA-384 over the bytes
//!    0..0x2A0 received, checked here with aws-lc-rs), else [`AttestError::BadSignature`]. A
//!    scalar is the low 48 bytes of the 72-byte R and S fields, so the rest must be zero; and the
//!    report `sev` parsed, from which the claims come, must re-encode to the bytes received
//!    (`sev` drops the reserved bytes inside TCB versions): no byte of the report escapes the
//!    signature or the claims.
//! 7. The reported TCB equals the TCB the VCEK was issued for (its extensions blSPL, teeSPL,
//!    snpSPL, ucodeSPL and, on Turin, fmcSPL), and the chip id equals the VCEK's hwID (a masked,
//!    all-zero chip id is refused; a VLEK has no hwID, and VLEK reports have a masked chip id),
//!    else [`AttestError::VerificationFailed`].
//!
//! # Processor generation
//!
//! Reports of version 3 and later carry the CPUID family and model, and the built-in roots of that
//! generation (Milan, Genoa or Turin) are the only ones tried. Version 2 reports do not say, so
//! each built-in chain is tried in turn and the first whose ASK (ASVK) signs the VCEK (VLEK) is
//! used; a certificate that no built-in chain signs is refused. `sev` tells a version 2 report's
//! TCB layout from its chip id and cannot read a masked one, which VLEK reports have; see
//! [`parse_report`]. Generations without built-in roots in `sev` (Venice) are
//! refused with [`AttestError::CertificateChain`].
//!
//! # Trust anchor
//!
//! The collateral and the evidence's certificate table come from the host, which is not trusted.
//! An ARK given in the collateral is therefore used only when it is byte for byte one of `sev`'s
//! built-in ARKs; the ARK from the evidence's table is ignored. An ASK (or ASVK) from either
//! place is accepted only because the pinned ARK signs it.
//!
//! # VLEK
//!
//! A cloud provider that hides the chip (AWS EC2 on shared tenancy) has the firmware sign reports
//! with a VLEK, a key AMD certifies per provider and TCB, not per chip: its certificate is issued
//! by AMD's ASVK, which the ARK signs, and carries the provider's CSP_ID instead of a hwID. The
//! ASVKs of Milan, Genoa and Turin are built in here (`sev` ships none), so a VLEK report verifies
//! with only its VLEK, from the evidence's certificate table or the collateral. A host's ASVK
//! (the table's ASK entry) is tried first, as the host's ASK is for a VCEK; it counts only because
//! the ARK signs it.
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

use std::borrow::Cow;

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
        let ask = CertFacts::read(certs.intermediate_name(), &chain.ca.ask)?;
        let vek = CertFacts::read(certs.vek_name, &chain.vek)?;
        check_key_kind(&report, &ask, &vek)?;
        // The VCEK first: it expires long before AMD's roots, so its dates name the cause.
        for facts in [&vek, &ask, &ark] {
            facts.check_validity(now)?;
        }

        verify_report_signature(&report, &evidence.quote, &vek)?;
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
/// unknown processor is [`AttestError::MalformedEvidence`]. Nothing is verified. A version 2
/// report with a masked chip id is read with a placeholder chip id that `sev` accepts (see
/// `sev_view`), and the parsed report has the zeros back.
pub fn parse_report(bytes: &[u8]) -> Result<AttestationReport> {
    if bytes.len() != REPORT_LEN {
        return Err(AttestError::malformed(format!(
            "an SNP attestation report is {REPORT_LEN} bytes, this one is {}",
            bytes.len()
        )));
    }
    let view = sev_view(bytes);
    let mut report = AttestationReport::from_bytes(&view)
        .map_err(|e| AttestError::malformed(format!("SNP attestation report unreadable: {e}")))?;
    if let Cow::Owned(_) = view {
        report.chip_id = [0; 64];
    }
    Ok(report)
}

/// Where the chip id lies in a report.
const CHIP_ID_RANGE: std::ops::Range<usize> = 0x1A0..0x1E0;

/// A chip id that `sev` takes for a Milan or Genoa one (its last 56 bytes are not all zero).
const PRE_TURIN_PLACEHOLDER_CHIP_ID: [u8; 64] = [0xFF; 64];

/// The bytes `sev` is given to parse. A version 2 report has no CPUID fields, so `sev` tells its
/// TCB layout from the chip id (Turin's hwID is 8 bytes, the rest zero) and refuses a masked,
/// all-zero one. AWS's VLEK-signed reports are such reports. Version 2 reports come from firmware
/// older than Turin's, so their layout is Milan's and Genoa's, which `sev` picks for any chip id
/// that is not Turin-like: a masked chip id is replaced by such a placeholder here, and
/// [`parse_report`] puts the zeros back. Every other report is parsed as it is.
fn sev_view(bytes: &[u8]) -> Cow<'_, [u8]> {
    let version_2 = bytes.get(0..4) == Some(&2u32.to_le_bytes()[..]);
    let masked = bytes
        .get(CHIP_ID_RANGE)
        .is_some_and(|id| id.iter().all(|&b| b == 0));
    if !(version_2 && masked) {
        return Cow::Borrowed(bytes);
    }
    let mut view = bytes.to_vec();
    view[CHIP_ID_RANGE].copy_from_slice(&PRE_TURIN_PLACEHOLDER_CHIP_ID);
    Cow::Owned(view)
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

    /// The product name AMD's certificates use (`CN=ARK-<name>`, `SEV-<name>`, `SEV-VLEK-<name>`).
    fn name(self) -> &'static str {
        match self {
            AmdFamily::Milan => "Milan",
            AmdFamily::Genoa => "Genoa",
            AmdFamily::Turin => "Turin",
        }
    }

    /// The built-in ASVK, which signs this generation's VLEKs.
    fn asvk(self) -> Result<Certificate> {
        let pem = match self {
            AmdFamily::Milan => ASVK_MILAN_PEM,
            AmdFamily::Genoa => ASVK_GENOA_PEM,
            AmdFamily::Turin => ASVK_TURIN_PEM,
        };
        Certificate::from_pem(pem)
            .map_err(|_| AttestError::Crypto("a built-in AMD ASVK certificate does not parse"))
    }

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

// AMD's ASVKs (AMD SEV VLEK signing keys), one per generation, as AMD's KDS serves them first in
// `https://kdsintf.amd.com/vlek/v1/{Milan,Genoa,Turin}/cert_chain` (ASVK, then the ARK). They are
// public certificates; where these copies came from is in `testdata/snp/README.md`. What makes
// them trustworthy is not their source: a test checks that `sev`'s built-in ARK of the same
// generation signs each one (RSA-PSS with SHA-384), and that the SHA-256 of its DER is the one
// below. The verifier checks the ARK's signature again on every verification.

/// CN=SEV-VLEK-Milan, serial 0x010101, issued by ARK-Milan, valid 2022-11-16T22:45:24Z to
/// 2047-11-16T22:45:24Z. SHA-256 of the DER:
/// c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5.
const ASVK_MILAN_PEM: &[u8] = include_bytes!("snp_asvk/milan.pem");

/// CN=SEV-VLEK-Genoa, serial 0x020101, issued by ARK-Genoa, valid 2022-11-18T20:48:34Z to
/// 2047-11-18T20:48:34Z. SHA-256 of the DER:
/// 197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372.
const ASVK_GENOA_PEM: &[u8] = include_bytes!("snp_asvk/genoa.pem");

/// CN=SEV-VLEK-Turin, serial 0x030101, issued by ARK-Turin, valid 2023-05-15T21:09:41Z to
/// 2048-05-15T21:09:41Z. SHA-256 of the DER:
/// 104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c.
const ASVK_TURIN_PEM: &[u8] = include_bytes!("snp_asvk/turin.pem");

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
    /// Whether the report says it was signed with a VLEK, so that the chain runs through an ASVK.
    signed_by_vlek: bool,
    /// "VCEK" or "VLEK", for messages.
    vek_name: &'static str,
    vek: Certificate,
    ark: Option<Certificate>,
    /// ASK (or ASVK) candidates in the order tried; built-in ones are added later.
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
            signed_by_vlek,
            vek_name,
            vek,
            ark,
            asks,
            ask_from_collateral,
        })
    }
}

impl FoundCertificates {
    /// "ASK" or "ASVK", for messages.
    fn intermediate_name(&self) -> &'static str {
        if self.signed_by_vlek {
            "ASVK"
        } else {
            "ASK"
        }
    }

    /// The built-in intermediate of a generation for this report's key: the ASVK for a VLEK.
    fn built_in_intermediate(&self, family: AmdFamily) -> Result<Certificate> {
        if self.signed_by_vlek {
            family.asvk()
        } else {
            family.ask()
        }
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
/// the ASK (ASVK), which signs the VCEK (VLEK), all checked by `sev`.
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
            asks.push(certs.built_in_intermediate(family)?);
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
            "no chain from AMD's ARK ({}) through an {} to the {} verifies: {}",
            family_names(&families),
            certs.intermediate_name(),
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

/// Checks the report's signature under the VCEK (or VLEK) over the bytes received, and that the
/// report `sev` parsed is exactly those bytes.
///
/// The signature is checked here (aws-lc-rs) rather than by `sev`, which checks it over its own
/// re-encoding of the parsed report: that cannot be done for a version 2 report with a masked
/// chip id (see [`sev_view`]).
fn verify_report_signature(report: &AttestationReport, raw: &[u8], vek: &CertFacts) -> Result<()> {
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
    // R and S are little-endian in 72-byte fields; a P-384 scalar is their low 48 bytes, so the
    // rest must be zero or those bytes could change freely.
    let sig = &report.signature;
    if [sig.r(), sig.s()]
        .iter()
        .any(|scalar| scalar.iter().skip(48).any(|&b| b != 0))
    {
        return Err(bad(
            "the report's signature has non-zero bytes beyond the 48 of a P-384 scalar".into(),
        ));
    }
    let Some(public_key) = &vek.p384_public_key else {
        return Err(AttestError::CertificateChain {
            reason: format!("the {}'s key is not an ECDSA P-384 key", vek.name),
        });
    };
    // The fixed-length form aws-lc-rs verifies: R then S, each 48 bytes big-endian.
    let mut fixed = Vec::with_capacity(96);
    for scalar in [sig.r(), sig.s()] {
        fixed.extend(scalar.iter().take(48).rev());
    }
    let signed = raw
        .get(..SIGNED_LEN)
        .ok_or_else(|| bad("the report is shorter than its signed part".into()))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        public_key,
    )
    .verify(signed, &fixed)
    .map_err(|_| {
        bad(format!(
            "SNP attestation report: the signature does not verify under the {}",
            vek.name
        ))
    })?;

    // The claims come from the report `sev` parsed. `sev` refuses non-zero bytes in most reserved
    // fields while parsing, but it drops the reserved bytes inside TCB versions and writes zeros
    // back, so the parsed report is required to re-encode to the bytes `sev` was given (with the
    // same placeholder chip id, if any), which are the signed bytes but for that chip id.
    let view = sev_view(raw);
    let mut parsed = *report;
    if let Some(chip_id) = view
        .get(CHIP_ID_RANGE)
        .and_then(|id| <[u8; 64]>::try_from(id).ok())
    {
        parsed.chip_id = chip_id;
    }
    let encoded = parsed
        .to_bytes()
        .map_err(|e| bad(format!("the parsed report does not re-encode: {e}")))?;
    let differs = |range: std::ops::Range<usize>| encoded.get(range.clone()) != view.get(range);
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

/// The report's `KEY_INFO.SIGNING_KEY` says which key signed it; the chain that verified must be
/// of that kind. AMD names the certificates by kind: the VCEK is CN=SEV-VCEK under the ASK
/// `CN=SEV-<product>`, the VLEK is CN=SEV-VLEK under the ASVK `CN=SEV-VLEK-<product>`. The ARK
/// signs both intermediates, so without this check a VCEK could stand for a VLEK report and the
/// other way round.
fn check_key_kind(
    report: &AttestationReport,
    intermediate: &CertFacts,
    vek: &CertFacts,
) -> Result<()> {
    let signed_by_vlek = report.key_info.signing_key() == SIGNING_KEY_VLEK;
    let (wanted_leaf, wanted_intermediate) = if signed_by_vlek {
        ("SEV-VLEK", "an ASVK (CN=SEV-VLEK-<product>)")
    } else {
        ("SEV-VCEK", "an ASK (CN=SEV-<product>)")
    };
    let intermediate_is_asvk = intermediate
        .subject_cn
        .as_deref()
        .is_some_and(|cn| cn.starts_with("SEV-VLEK-"));
    let intermediate_is_ask = intermediate.subject_cn.as_deref().is_some_and(|cn| {
        AmdFamily::ALL
            .iter()
            .any(|family| cn == format!("SEV-{}", family.name()))
    });
    let intermediate_ok = if signed_by_vlek {
        intermediate_is_asvk
    } else {
        intermediate_is_ask
    };
    let cn = |facts: &CertFacts| facts.subject_cn.clone().unwrap_or_else(|| "<none>".into());
    if !intermediate_ok {
        return Err(AttestError::CertificateChain {
            reason: format!(
                "the report is signed with a {} (KEY_INFO), which only {wanted_intermediate} \
                 certifies, but the chain's issuer is CN={}",
                vek.name,
                cn(intermediate)
            ),
        });
    }
    if vek.subject_cn.as_deref() != Some(wanted_leaf) {
        return Err(AttestError::CertificateChain {
            reason: format!(
                "the report is signed with a {} (KEY_INFO), whose certificate is \
                 CN={wanted_leaf}, but the chain's leaf is CN={}",
                vek.name,
                cn(vek)
            ),
        });
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
    /// The subject's common name: AMD names each kind of certificate by it.
    subject_cn: Option<String>,
    /// The uncompressed point (`04 || X || Y`) of an ECDSA P-384 subject key, as VCEKs and VLEKs
    /// have; `None` for any other key.
    p384_public_key: Option<Vec<u8>>,
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

/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The P-384 curve, secp384r1 (RFC 5480).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

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

        let subject_cn = tbs
            .subject()
            .common_name()
            .map_err(|e| unreadable(&format!("the subject's common name: {e}")))?
            .map(|cn| cn.value().into_owned());

        let spki = tbs.subject_public_key_info();
        let p384 = spki.algorithm.oid == EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|params| params.decode_as::<ObjectIdentifier>().ok())
                == Some(SECP384R1);
        let p384_public_key = p384
            .then(|| spki.subject_public_key.as_bytes().map(<[u8]>::to_vec))
            .flatten();

        let validity = tbs.validity();
        Ok(Self {
            name,
            not_before: CertTime::from_x509(validity.not_before),
            not_after: CertTime::from_x509(validity.not_after),
            tcb,
            hw_id,
            subject_cn,
            p384_public_key,
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
            family.asvk().unwrap();
        }
    }

    /// 2025-01-01T00:00:00Z.
    const FIXED_TIME: u64 = 1_735_689_600;

    /// The SHA-256 fingerprints written beside the built-in ASVKs.
    const ASVK_FINGERPRINTS: [(AmdFamily, &str); 3] = [
        (
            AmdFamily::Milan,
            "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
        ),
        (
            AmdFamily::Genoa,
            "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
        ),
        (
            AmdFamily::Turin,
            "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
        ),
    ];

    /// The ASVKs' authenticity rests on this test, not on where they were copied from: each is
    /// signed by the ARK `sev` builds in for its generation (RSA-PSS with SHA-384), names itself
    /// SEV-VLEK-<product>, is valid now and for decades, and is the certificate its comment names.
    #[test]
    fn every_built_in_asvk_is_signed_by_its_generations_ark() {
        for (family, fingerprint) in ASVK_FINGERPRINTS {
            let ark = family.ark().unwrap();
            let asvk = family.asvk().unwrap();
            (&ark, &asvk).verify().unwrap();

            let der = asvk.to_der().unwrap();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
            assert_eq!(hex::encode(digest.as_ref()), fingerprint, "{family:?}");

            let facts = CertFacts::read("ASVK", &asvk).unwrap();
            assert_eq!(
                facts.subject_cn.as_deref(),
                Some(format!("SEV-VLEK-{}", family.name()).as_str())
            );
            facts.check_validity(FIXED_TIME).unwrap();
            // AMD's intermediates live 25 years: these end in 2047 and 2048, after 2046.
            assert!(facts.not_after.unix > 2_400_000_000, "{family:?}");
            assert_eq!(facts.hw_id, None);
            assert_eq!(facts.tcb, [None; 5]);

            // Not an ASK: the ASK of the same generation is another key.
            assert_ne!(der, family.ask().unwrap().to_der().unwrap());
        }
    }

    #[test]
    fn no_built_in_asvk_is_signed_by_another_generations_ark() {
        for signer in AmdFamily::ALL {
            let ark = signer.ark().unwrap();
            for family in AmdFamily::ALL.into_iter().filter(|f| *f != signer) {
                let asvk = family.asvk().unwrap();
                assert!(
                    (&ark, &asvk).verify().is_err(),
                    "{signer:?} ARK must not sign the {family:?} ASVK"
                );
            }
        }
    }

    #[test]
    fn a_tampered_built_in_asvk_does_not_verify() {
        let ark = AmdFamily::Milan.ark().unwrap();
        let der = AmdFamily::Milan.asvk().unwrap().to_der().unwrap();
        // One byte of the RSA modulus (inside the signed TBS) and one of the signature.
        let modulus_at = der
            .windows(4)
            .position(|w| w == [0x02, 0x82, 0x02, 0x01])
            .unwrap()
            + 10;
        for at in [modulus_at, der.len() - 1] {
            let mut tampered = der.clone();
            tampered[at] ^= 0x01;
            let asvk = Certificate::from_der(&tampered).unwrap();
            assert!((&ark, &asvk).verify().is_err(), "byte {at}");
        }
    }

    /// Signs `raw`'s signed part with a fresh P-384 key, as the firmware would, and returns the
    /// signed report and facts of a certificate for that key.
    fn signed_with_fresh_key(mut raw: Vec<u8>) -> (Vec<u8>, CertFacts) {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
        let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let signature = key.sign(&SystemRandom::new(), &raw[..SIGNED_LEN]).unwrap();
        let (r, s) = signature.as_ref().split_at(48);
        raw[SIGNED_LEN..].fill(0);
        for (at, scalar) in [(SIGNED_LEN, r), (SIGNED_LEN + 72, s)] {
            let little_endian: Vec<u8> = scalar.iter().rev().copied().collect();
            raw[at..at + 48].copy_from_slice(&little_endian);
        }
        let mut facts = milan_vcek_facts();
        facts.p384_public_key = Some(key.public_key().as_ref().to_vec());
        (raw, facts)
    }

    fn milan_raw() -> Vec<u8> {
        hex::decode(MILAN_REPORT_HEX.trim()).unwrap()
    }

    #[test]
    fn the_signature_is_checked_over_the_bytes_received() {
        let (raw, facts) = signed_with_fresh_key(milan_raw());
        verify_report_signature(&parse_report(&raw).unwrap(), &raw, &facts).unwrap();
        // The real VCEK did not sign this.
        let vcek = milan_vcek_facts();
        assert!(matches!(
            verify_report_signature(&parse_report(&raw).unwrap(), &raw, &vcek),
            Err(AttestError::BadSignature { .. })
        ));
        // A certificate whose key is not P-384 cannot have signed it.
        let mut rsa = facts;
        rsa.p384_public_key = None;
        assert!(matches!(
            verify_report_signature(&parse_report(&raw).unwrap(), &raw, &rsa),
            Err(AttestError::CertificateChain { .. })
        ));
    }

    #[test]
    fn a_parsed_report_must_re_encode_to_the_signed_bytes() {
        // A reserved byte inside the reported TCB, which `sev` drops while parsing: even signed,
        // it is refused, because the claims would not show what was signed.
        let mut raw = milan_raw();
        raw[0x180 + 3] = 1;
        let (raw, facts) = signed_with_fresh_key(raw);
        match verify_report_signature(&parse_report(&raw).unwrap(), &raw, &facts) {
            Err(AttestError::BadSignature { what }) => {
                assert!(what.contains("reserved bytes in its signed part"), "{what}")
            }
            other => panic!("expected BadSignature, got {other:?}"),
        }
    }

    #[test]
    fn a_version_2_report_with_a_masked_chip_id_is_read_and_verified() {
        let mut raw = milan_raw();
        raw[CHIP_ID_RANGE].fill(0);
        // `sev` alone refuses it.
        assert!(AttestationReport::from_bytes(&raw).is_err());
        let report = parse_report(&raw).unwrap();
        assert_eq!(report.chip_id, [0; 64]);
        assert_eq!(report.reported_tcb, milan_report().reported_tcb);
        let (raw, facts) = signed_with_fresh_key(raw);
        verify_report_signature(&parse_report(&raw).unwrap(), &raw, &facts).unwrap();
        // The placeholder is only for `sev`: a report that carries it is another report.
        let mut placeholder = raw.clone();
        placeholder[CHIP_ID_RANGE].copy_from_slice(&PRE_TURIN_PLACEHOLDER_CHIP_ID);
        assert!(matches!(
            verify_report_signature(&parse_report(&placeholder).unwrap(), &placeholder, &facts),
            Err(AttestError::BadSignature { .. })
        ));
        // Version 3 names its processor, so its chip id is never replaced.
        let mut version_3 = raw;
        version_3[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(sev_view(&version_3), Cow::Borrowed(_)));
    }

    fn vlek_report() -> AttestationReport {
        let mut report = milan_report();
        report.key_info = sev::firmware::guest::KeyInfo::from(SIGNING_KEY_VLEK << 2);
        report
    }

    fn asvk_facts() -> CertFacts {
        CertFacts::read("ASVK", &AmdFamily::Milan.asvk().unwrap()).unwrap()
    }

    fn ask_facts() -> CertFacts {
        CertFacts::read("ASK", &AmdFamily::Milan.ask().unwrap()).unwrap()
    }

    #[test]
    fn the_chain_must_be_of_the_kind_key_info_names() {
        let vcek = milan_vcek_facts();
        check_key_kind(&milan_report(), &ask_facts(), &vcek).unwrap();

        let mut vlek = milan_vcek_facts();
        vlek.name = "VLEK";
        vlek.subject_cn = Some("SEV-VLEK".into());
        check_key_kind(&vlek_report(), &asvk_facts(), &vlek).unwrap();

        let refused = |report: &AttestationReport, intermediate: &CertFacts, leaf: &CertFacts| {
            match check_key_kind(report, intermediate, leaf) {
                Err(AttestError::CertificateChain { reason }) => reason,
                other => panic!("expected CertificateChain, got {other:?}"),
            }
        };
        // A VCEK report through an ASVK, a VLEK report through an ASK.
        let reason = refused(&milan_report(), &asvk_facts(), &vcek);
        assert!(reason.contains("CN=SEV-VLEK-Milan"), "{reason}");
        let reason = refused(&vlek_report(), &ask_facts(), &vlek);
        assert!(reason.contains("only an ASVK"), "{reason}");
        // The right intermediate, the wrong leaf.
        let reason = refused(&vlek_report(), &asvk_facts(), &vcek);
        assert!(reason.contains("CN=SEV-VCEK"), "{reason}");
        let reason = refused(&milan_report(), &ask_facts(), &vlek);
        assert!(reason.contains("CN=SEV-VLEK"), "{reason}");
        // No common name at all.
        let mut anonymous = ask_facts();
        anonymous.subject_cn = None;
        assert!(refused(&milan_report(), &anonymous, &vcek).contains("<none>"));
    }
}
