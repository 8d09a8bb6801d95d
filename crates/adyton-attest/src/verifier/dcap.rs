//! SGX and TDX verification through Intel DCAP, with the pure-Rust `dcap-qvl`.
//!
//! dcap-qvl checks, against Intel's production root CA and as of the time it is given: the PCK
//! certificate chain and both CRLs, the signatures and validity dates of the TCB info and the QE
//! identity, the QE report (its PCK signature, its binding of the attestation key, and Intel's QE
//! identity), the quote's own signature, and the platform's TCB level. It refuses a `Revoked`
//! TCB; every other TCB status (`OutOfDate`, `SWHardeningNeeded`, ...) is only reported, and this
//! module passes it on in [`Claims::tcb_status`] for the policy to judge.
//!
//! Debug mode is handled the same way: the verifier reports it in [`Claims::debug`], and
//! [`crate::Policy::evaluate`] refuses it (see [`DcapVerifier::new`]).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use dcap_qvl::quote::{EnclaveReport, Report, TDReport10};
use dcap_qvl::verify::QuoteVerifier;

use crate::verifier::dcap_cache::{register_collateral, MemoisedConfig};
use dcap_qvl::{QuoteCollateralV3, QuotePolicy};
use serde::Deserialize;

use crate::claims::{Claims, SgxClaims, TcbStatus, TdxClaims, TeeClaims};
use crate::collateral::Collateral;
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind, MAX_EVIDENCE_LEN, REPORT_DATA_LEN};
use crate::verifier::Verifier;

/// Length of the DCAP quote header (Intel's `sgx_quote_header_t`), common to quote v3, v4 and v5.
const QUOTE_HEADER_LEN: usize = 48;
/// `tee_type` in the quote header for SGX.
const TEE_TYPE_SGX: u32 = 0x0000_0000;
/// `tee_type` in the quote header for TDX.
const TEE_TYPE_TDX: u32 = 0x0000_0081;
/// SGX `ATTRIBUTES.FLAGS` bit 1: the enclave was launched in debug mode.
const SGX_FLAGS_DEBUG: u8 = 0x02;
/// TDX `TD_ATTRIBUTES` bits 7:0, the TUD ("TD under debug") group. Bit 0 is `DEBUG`; the TDX
/// module ABI says a TD with any bit of this group set is untrusted.
const TD_ATTRIBUTES_TUD_MASK: u64 = 0xFF;

/// Verifies DCAP quotes (SGX v3, TDX v4 and v5) against Intel's root CA.
pub struct DcapVerifier {
    tee: TeeKind,
    quote_verifier: QuoteVerifier<MemoisedConfig>,
}

impl fmt::Debug for DcapVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DcapVerifier")
            .field("tee", &self.tee)
            .field("root", &"Intel SGX Root CA (production)")
            .finish()
    }
}

impl DcapVerifier {
    /// A verifier for `tee` (SGX or TDX) with Intel's production root.
    ///
    /// dcap-qvl refuses debug enclaves and TDs by default, with an error that only a match on its
    /// message could tell apart. We turn that refusal off (`allow_debug(true)`) and report debug
    /// mode in [`Claims::debug`] instead, so that the verdict has one place and one typed error:
    /// [`crate::Policy::evaluate`] refuses it with [`AttestError::DebugEnabled`]. A caller that
    /// skips the policy must check `Claims::debug` itself. For TDX, `allow_debug(true)` also lifts
    /// dcap-qvl's refusal of the other TUD attribute bits (TD profiling), which is why
    /// `td_debug` counts every TUD bit as debug.
    ///
    /// Service TDs stay refused (dcap-qvl's default): our claims do not carry the service TD
    /// hashes, so a policy could not judge them.
    pub fn new(tee: TeeKind) -> Self {
        Self {
            tee,
            quote_verifier: QuoteVerifier::new_prod()
                .allow_debug(true)
                .with_config::<MemoisedConfig>(),
        }
    }
}

impl Verifier for DcapVerifier {
    fn tee(&self) -> TeeKind {
        self.tee
    }

    fn verify(&self, evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims> {
        if evidence.tee != self.tee {
            return Err(AttestError::WrongTee {
                expected: self.tee,
                found: evidence.tee,
            });
        }
        let quote = evidence.quote.as_slice();
        let quote_tee = quote_tee_kind(quote)?;
        if quote_tee != evidence.tee {
            return Err(AttestError::WrongTee {
                expected: evidence.tee,
                found: quote_tee,
            });
        }
        let dcap = collateral
            .dcap
            .as_ref()
            .ok_or_else(|| AttestError::CollateralMissing {
                what: format!(
                    "Intel DCAP collateral (TCB info, QE identity, CRLs) for {quote_tee} evidence"
                ),
            })?;

        // `claims_only` applies no policy of dcap-qvl's own: the TCB status, advisories and
        // debug mode are judged by `crate::Policy`. It is used over `verify` because its claims
        // carry the collateral's earliest expiry; computing them cost no measurable time over
        // `verify` (1.2 to 1.5 ms a quote either way, release build).
        // Collateral signatures repeat from quote to quote; see `dcap_cache`.
        register_collateral(dcap);
        let verified = self
            .quote_verifier
            .verify_with_policy(quote, dcap, now, &QuotePolicy::claims_only(now))
            .map_err(|e| map_dcap_error(self.tee, &*e))?;

        let report = ReportClaims::from_report(&verified.report);
        // The header said which TEE; the signed body must agree (dcap-qvl ties the two together,
        // but the claims must never say SGX about a TD report or the reverse).
        if report.tee != evidence.tee {
            return Err(AttestError::WrongTee {
                expected: evidence.tee,
                found: report.tee,
            });
        }

        Ok(Claims {
            tee: report.tee,
            insecure: false,
            report_data: report.report_data,
            tcb_status: TcbStatus::from_dcap(&verified.tcb.status.to_string()),
            advisory_ids: verified.tcb.advisory_ids,
            debug: report.debug,
            // The weakest link of all eight dated sources Intel's QVL considers: TCB info and
            // QE identity nextUpdate, both CRLs' nextUpdate, and every certificate's notAfter.
            collateral_expires_at: Some(verified.earliest_expiration_date),
            collateral_issued_at: Some(collateral_issued_at(dcap)?),
            collateral_grace_secs: None,
            details: report.details,
        })
    }
}

/// The TEE a quote's header names, read without parsing the rest of the quote.
fn quote_tee_kind(quote: &[u8]) -> Result<TeeKind> {
    if quote.len() > MAX_EVIDENCE_LEN {
        return Err(AttestError::malformed(format!(
            "DCAP quote of {} bytes, at most {MAX_EVIDENCE_LEN} are accepted",
            quote.len()
        )));
    }
    let tee_type = quote
        .get(4..8)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(u32::from_le_bytes)
        .filter(|_| quote.len() >= QUOTE_HEADER_LEN)
        .ok_or_else(|| {
            AttestError::malformed(format!(
                "DCAP quote of {} bytes is shorter than its {QUOTE_HEADER_LEN}-byte header",
                quote.len()
            ))
        })?;
    match tee_type {
        TEE_TYPE_SGX => Ok(TeeKind::Sgx),
        TEE_TYPE_TDX => Ok(TeeKind::Tdx),
        other => Err(AttestError::malformed(format!(
            "DCAP quote header names TEE type {other:#010x}, neither SGX (0) nor TDX (0x81)"
        ))),
    }
}

/// What the signed report body of a verified quote says.
struct ReportClaims {
    tee: TeeKind,
    report_data: [u8; REPORT_DATA_LEN],
    debug: bool,
    details: TeeClaims,
}

impl ReportClaims {
    fn from_report(report: &Report) -> Self {
        match report {
            Report::SgxEnclave(enclave) => Self::from_enclave(enclave),
            // TD 1.5 and 1.5ex reports extend the TD 1.0 report, whose fields are the claims.
            Report::TD10(td) => Self::from_td(td),
            Report::TD15(td) => Self::from_td(&td.base),
            Report::TD15Ex(td) => Self::from_td(&td.base.base),
        }
    }

    fn from_enclave(report: &EnclaveReport) -> Self {
        Self {
            tee: TeeKind::Sgx,
            report_data: report.report_data,
            debug: sgx_debug(report),
            details: TeeClaims::Sgx(SgxClaims {
                mrenclave: report.mr_enclave,
                mrsigner: report.mr_signer,
                isvprodid: report.isv_prod_id,
                isvsvn: report.isv_svn,
            }),
        }
    }

    fn from_td(report: &TDReport10) -> Self {
        Self {
            tee: TeeKind::Tdx,
            report_data: report.report_data,
            debug: td_debug(report),
            details: TeeClaims::Tdx(TdxClaims {
                mrtd: report.mr_td,
                rtmr: [report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3],
                mrseam: report.mr_seam,
                mrconfigid: report.mr_config_id,
                mrowner: report.mr_owner,
                mrownerconfig: report.mr_owner_config,
                seamsvn: seamsvn(report),
                td_attributes: u64::from_le_bytes(report.td_attributes),
            }),
        }
    }
}

/// Whether an SGX enclave runs in debug mode: `ATTRIBUTES.FLAGS` bit 1 (`DEBUG`), in the first
/// byte of the little-endian attributes.
fn sgx_debug(report: &EnclaveReport) -> bool {
    report.attributes[0] & SGX_FLAGS_DEBUG != 0
}

/// Whether a TD runs in debug mode: `TD_ATTRIBUTES` bit 0 (`DEBUG`), or any other bit of the TUD
/// group (bits 7:0). The TDX module ABI says a TD with any TUD bit set is untrusted, and dcap-qvl
/// refuses bits 4 to 6 (TD profiling) under the same switch as `DEBUG`, which this verifier turns
/// off (see [`DcapVerifier::new`]). Counting the whole group as debug keeps those TDs refused by
/// the policy. dcap-qvl refuses the reserved TUD bits (1 to 3 and 7) itself.
fn td_debug(report: &TDReport10) -> bool {
    u64::from_le_bytes(report.td_attributes) & TD_ATTRIBUTES_TUD_MASK != 0
}

/// The TDX module's SVN, as one number for `min_seamsvn`: `TEE_TCB_SVN` bytes 0 (the module's
/// minor SVN) and 1 (its major SVN) read as a little-endian `u16`, so that a newer major version
/// always compares higher. For a TD 1.5 this is the TCB the TD launched with; dcap-qvl also
/// appraises the current one (`TEE_TCB_SVN2`) in the TCB status.
fn seamsvn(report: &TDReport10) -> u16 {
    u16::from_le_bytes([report.tee_tcb_svn[0], report.tee_tcb_svn[1]])
}

/// How many TCB info and QE identity pairs [`collateral_issued_at`] remembers: one per platform
/// model (FMSPC) and TEE that a service sees, with room to spare.
const ISSUE_DATE_CACHE_LEN: usize = 16;

/// The issue dates of recently seen collateral, keyed by the exact text of the two documents,
/// so that the date is a pure function of the key and the cache can never answer wrongly.
/// Parsing the two documents costs 15 to 45 µs (a few per cent of a verification), comparing
/// them with a cached copy under a microsecond. The cache is process-wide because a verifier is
/// made per call (`crate::verifier::verifier_for`).
static ISSUE_DATES: Mutex<VecDeque<IssueDates>> = Mutex::new(VecDeque::new());

struct IssueDates {
    tcb_info: String,
    qe_identity: String,
    issued_at: u64,
}

/// The earlier `issueDate` of the TCB info and the QE identity, the collateral Intel reissues:
/// the age of the collateral is the age of its oldest part, which is what
/// `max_collateral_age_secs` must bound. (CRLs and certificates are left out: their
/// `thisUpdate` and `notBefore` say nothing about how current the TCB levels are.)
///
/// dcap-qvl has parsed the same JSON and checked these dates against `now`, but does not hand
/// its parse back, so this reads only the one field it needs, once per collateral.
fn collateral_issued_at(dcap: &QuoteCollateralV3) -> Result<u64> {
    let lock = || ISSUE_DATES.lock().unwrap_or_else(PoisonError::into_inner);
    let cached = lock()
        .iter()
        .find(|entry| entry.tcb_info == dcap.tcb_info && entry.qe_identity == dcap.qe_identity)
        .map(|entry| entry.issued_at);
    if let Some(issued_at) = cached {
        return Ok(issued_at);
    }
    let issued_at = read_issue_date("TCB info", &dcap.tcb_info)?
        .min(read_issue_date("QE identity", &dcap.qe_identity)?);
    let mut cache = lock();
    if cache.len() >= ISSUE_DATE_CACHE_LEN {
        cache.pop_front();
    }
    cache.push_back(IssueDates {
        tcb_info: dcap.tcb_info.clone(),
        qe_identity: dcap.qe_identity.clone(),
        issued_at,
    });
    Ok(issued_at)
}

/// The one field we read from Intel's TCB info and QE identity JSON; serde skips the others
/// without building them.
#[derive(Deserialize)]
struct IssueDateJson {
    #[serde(rename = "issueDate")]
    issue_date: String,
}

/// The `issueDate` of one signed collateral document, in unix seconds.
fn read_issue_date(what: &str, json: &str) -> Result<u64> {
    let unreadable = |detail: String| AttestError::CollateralMissing {
        what: format!("{what} issueDate unreadable: {detail}"),
    };
    let doc: IssueDateJson = serde_json::from_str(json).map_err(|e| unreadable(e.to_string()))?;
    parse_rfc3339(&doc.issue_date)
        .ok_or_else(|| unreadable(format!("`{}`", truncate(&doc.issue_date))))
}

/// An RFC 3339 date-time (as Intel's collateral writes them) in unix seconds; `None` for anything
/// else, or a time before 1970.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(time.timestamp()).ok()
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

/// How dcap-qvl's refusal maps onto our error variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// A date check failed: TCB info or QE identity before its issueDate or after its
    /// nextUpdate, a CRL after its nextUpdate, or a certificate outside its validity.
    Expired,
    /// The quote bytes could not be read, or use a format DCAP does not support.
    Malformed,
    /// The collateral could not be read, or is for another platform or TEE.
    Collateral,
    /// A certificate chain, CRL or revocation check failed.
    Chain,
    /// A signature over the quote, the QE report or the collateral did not verify.
    Signature,
    /// Anything else (QE identity, TCB level matching, TD attributes, a revoked TCB).
    Other,
}

/// Phrases of dcap-qvl 0.7.1 (and its webpki fork), lower-cased, by the refusal they mean. The
/// library reports every failure as an `anyhow` message chain and exports no error type, so
/// the phrases are the only handle. The integration tests (`tests/it/dcap.rs`) pin the mapping
/// on the real samples, and dcap-qvl is pinned exactly, so an upgrade that rewords a message
/// fails those tests instead of silently changing the variant.
///
/// Earlier rows win. Malformed comes first because its phrases are dcap-qvl's own outermost
/// contexts, while a PEM parse error below them can quote text from the quote itself.
const REFUSAL_PHRASES: &[(Refusal, &[&str])] = &[
    (
        Refusal::Malformed,
        &[
            "failed to decode quote",
            "unsupported dcap quote version",
            "unknown qe vendor id",
            "unsupported tee type",
            "quote must have version",
            "unsupported dcap attestation key type",
            "failed to get signed quote scope",
            "failed to decode qe report",
            "invalid qe auth data length",
            "unsupported dcap pck cert format",
            "failed to extract pck certificates from quote",
            "certificate chain is too short in quote",
        ],
    ),
    (
        Refusal::Expired,
        &[
            // "TCBInfo expired", "QE Identity expired", webpki's CertExpired and CrlExpired.
            "expired",
            // "TCBInfo issue date is in the future", "QE Identity issue date is in the future".
            "issue date is in the future",
            // webpki's CertNotValidYet.
            "notvalidyet",
        ],
    ),
    (
        Refusal::Collateral,
        &[
            "failed to decode tcbinfo",
            "failed to decode qeidentity",
            "failed to parse tcb info issue date",
            "failed to parse tcb info next update",
            "failed to parse qe identity issue date",
            "failed to parse qe identity next update",
            "tcb info in the collateral",
            "unsupported qe identity id/version",
            "fmspc mismatch",
            "tdx tcb info is missing",
        ],
    ),
    (
        Refusal::Chain,
        &[
            "certificate",
            "crl",
            "root ca",
            "revocation",
            "certrevoked",
            "unknownissuer",
            "failed to parse certs",
        ],
    ),
    (
        Refusal::Signature,
        &[
            "signature is invalid",
            "qe report hash mismatch",
            "invalid key length",
        ],
    ),
];

/// Classifies dcap-qvl's error chain (outermost context first) by the first phrase that matches.
fn classify(messages: &[String]) -> Refusal {
    let lowered: Vec<String> = messages.iter().map(|m| m.to_lowercase()).collect();
    REFUSAL_PHRASES
        .iter()
        .find(|(_, phrases)| {
            lowered
                .iter()
                .any(|message| phrases.iter().any(|phrase| message.contains(phrase)))
        })
        .map_or(Refusal::Other, |(refusal, _)| *refusal)
}

/// Maps a dcap-qvl error onto our variants, keeping its whole message chain as the reason.
fn map_dcap_error(tee: TeeKind, error: &(dyn StdError + 'static)) -> AttestError {
    let mut messages = Vec::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        messages.push(current.to_string());
        cause = current.source();
    }
    let reason = messages.join(": ");
    match classify(&messages) {
        Refusal::Expired => AttestError::CollateralExpired { what: reason },
        Refusal::Malformed => AttestError::MalformedEvidence { reason },
        Refusal::Collateral => AttestError::CollateralMissing {
            what: format!("usable {tee} collateral for this quote: {reason}"),
        },
        Refusal::Chain => AttestError::CertificateChain { reason },
        Refusal::Signature => AttestError::BadSignature { what: reason },
        Refusal::Other => AttestError::VerificationFailed { tee, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enclave_report(attributes0: u8) -> EnclaveReport {
        let mut attributes = [0u8; 16];
        attributes[0] = attributes0;
        EnclaveReport {
            cpu_svn: [0; 16],
            misc_select: 0,
            reserved1: [0; 28],
            attributes,
            mr_enclave: [1; 32],
            reserved2: [0; 32],
            mr_signer: [2; 32],
            reserved3: [0; 96],
            isv_prod_id: 3,
            isv_svn: 4,
            reserved4: [0; 60],
            report_data: [5; 64],
        }
    }

    fn td_report(td_attributes: u64, tee_tcb_svn: [u8; 16]) -> TDReport10 {
        TDReport10 {
            tee_tcb_svn,
            mr_seam: [1; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: td_attributes.to_le_bytes(),
            xfam: [0; 8],
            mr_td: [2; 48],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rt_mr0: [10; 48],
            rt_mr1: [11; 48],
            rt_mr2: [12; 48],
            rt_mr3: [13; 48],
            report_data: [3; 64],
        }
    }

    /// A debug quote cannot be made from the samples without breaking their signatures, so the
    /// debug bits are tested on constructed reports.
    #[test]
    fn sgx_debug_is_attributes_flags_bit_1() {
        // INIT (bit 0) and MODE64BIT (bit 2) are set in every production enclave.
        assert!(!sgx_debug(&enclave_report(0x05)));
        assert!(sgx_debug(&enclave_report(0x07)));
        assert!(sgx_debug(&enclave_report(0x02)));
        let claims = ReportClaims::from_report(&Report::SgxEnclave(enclave_report(0x07)));
        assert!(claims.debug);
        assert_eq!(claims.tee, TeeKind::Sgx);
    }

    #[test]
    fn td_debug_is_any_tud_bit() {
        // SEPT_VE_DISABLE (bit 28), as in production TDs.
        let production = 1u64 << 28;
        assert!(!td_debug(&td_report(production, [0; 16])));
        assert!(td_debug(&td_report(production | 1, [0; 16])));
        for tud_bit in 0..8 {
            assert!(
                td_debug(&td_report(production | 1 << tud_bit, [0; 16])),
                "bit {tud_bit}"
            );
        }
        for other_bit in 8..64 {
            assert!(
                !td_debug(&td_report(1 << other_bit, [0; 16])),
                "bit {other_bit}"
            );
        }
    }

    #[test]
    fn td_claims_take_every_field_from_the_report() {
        let mut svn = [0u8; 16];
        svn[..3].copy_from_slice(&[5, 1, 3]);
        let report = Report::TD10(td_report((1 << 28) | 1, svn));
        let claims = ReportClaims::from_report(&report);
        assert!(claims.debug);
        assert_eq!(claims.report_data, [3; 64]);
        let TeeClaims::Tdx(tdx) = claims.details else {
            panic!("not TDX claims");
        };
        assert_eq!(tdx.mrtd, [2; 48]);
        assert_eq!(tdx.mrseam, [1; 48]);
        assert_eq!(tdx.rtmr, [[10; 48], [11; 48], [12; 48], [13; 48]]);
        // Minor 5, major 1.
        assert_eq!(tdx.seamsvn, 0x0105);
        assert_eq!(tdx.td_attributes, (1 << 28) | 1);
    }

    #[test]
    fn header_tee_type_is_read_without_panicking() {
        let mut header = [0u8; QUOTE_HEADER_LEN];
        header[0] = 4;
        header[4] = 0x81;
        assert_eq!(quote_tee_kind(&header).ok(), Some(TeeKind::Tdx));
        header[4] = 0;
        assert_eq!(quote_tee_kind(&header).ok(), Some(TeeKind::Sgx));
        header[4] = 0x7f;
        assert!(matches!(
            quote_tee_kind(&header),
            Err(AttestError::MalformedEvidence { .. })
        ));
        for len in 0..QUOTE_HEADER_LEN {
            assert!(matches!(
                quote_tee_kind(&header[..len]),
                Err(AttestError::MalformedEvidence { .. })
            ));
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-06-19T10:56:11Z"), Some(1_750_330_571));
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123Z"),
            Some(1_709_251_199)
        );
        assert_eq!(
            parse_rfc3339("2025-06-19T12:56:11+02:00"),
            Some(1_750_330_571)
        );
        assert_eq!(
            parse_rfc3339("2025-06-19T08:56:11-02:00"),
            Some(1_750_330_571)
        );
        for bad in [
            "",
            "2025-06-19",
            "2025-06-19T10:56:11",
            "2025-13-19T10:56:11Z",
            "2025-02-29T10:56:11Z",
            "2025-06-19T24:00:00Z",
            "2025-06-19T10:56:11.Z",
            "2025-06-19T10:56:11+0200",
            "1969-12-31T23:59:59Z",
            "２０２５-06-19T10:56:11Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_odd_suffixes_and_offsets_are_refused() {
        assert_eq!(
            parse_rfc3339("2025-06-19T10:56:11+00:00"),
            Some(1_750_330_571)
        );
        assert_eq!(
            parse_rfc3339("2025-06-19T10:56:11.5-00:30"),
            Some(1_750_332_371)
        );
        for bad in [
            "2025-06-19T10:56:11ZZ",
            "2025-06-19T10:56:11Z+00:00",
            "2025-06-19T10:56:11.+02:00",
            "2025-06-19T10:56:11.1.2Z",
            "2025-06-19T10:56:11 Z",
            "2025-06-19T10:56:11+24:00",
            "2025-06-19T10:56:11+02:60",
            "2025-06-19T10:56:11+0a:00",
            "1970-01-01T00:30:00+01:00",
            "+00:00",
            "ééééééé+02:00",
            "€€a",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_sample_issue_date_is_read() {
        for name in [
            "sgx_quote_collateral.json",
            "tdx_quote_collateral.json",
            "tdx_quote_outdated_collateral.json",
            "tdx_quote_td15ex_collateral.json",
        ] {
            let path = format!("{}/../../testdata/dcap/{name}", env!("CARGO_MANIFEST_DIR"));
            let collateral: QuoteCollateralV3 =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let tcb_info = read_issue_date("TCB info", &collateral.tcb_info).unwrap();
            let qe_identity = read_issue_date("QE identity", &collateral.qe_identity).unwrap();
            // All samples were issued between 2025 and 2027.
            for date in [tcb_info, qe_identity] {
                assert!(
                    (1_735_689_600..1_798_761_600).contains(&date),
                    "{name}: {date}"
                );
            }
        }
    }

    #[test]
    fn dcap_messages_map_to_variants() {
        let cases = [
            ("TCBInfo expired", Refusal::Expired),
            ("QE Identity issue date is in the future", Refusal::Expired),
            (
                "Failed to verify certificate chain: CertExpired { time: 1, not_after: 0 }",
                Refusal::Expired,
            ),
            ("CrlExpired { time: 1, next_update: 0 }", Refusal::Expired),
            (
                "Failed to decode quote: Not enough data",
                Refusal::Malformed,
            ),
            ("SGX TEE quote must have version 3", Refusal::Malformed),
            // Text the quote controls (a PEM label) cannot move a malformed quote elsewhere.
            (
                "Failed to extract PCK certificates from quote: Failed to parse certs: \
                 mismatching BEGIN (\"EXPIRED\") and END (\"CERTIFICATE\") tags",
                Refusal::Malformed,
            ),
            ("Failed to decode TcbInfo: EOF", Refusal::Collateral),
            ("Fmspc mismatch", Refusal::Collateral),
            (
                "Failed to verify certificate chain: UnknownIssuer",
                Refusal::Chain,
            ),
            ("Failed to parse PCK CRL: BadDer", Refusal::Chain),
            ("CertRevoked", Refusal::Chain),
            (
                "ISV enclave report signature is invalid",
                Refusal::Signature,
            ),
            (
                "Signature is invalid for qe_report in quote",
                Refusal::Signature,
            ),
            ("QE report hash mismatch", Refusal::Signature),
            ("TCB status is invalid: Revoked", Refusal::Other),
            ("No matching TCB level found", Refusal::Other),
        ];
        for (message, expected) in cases {
            let messages: Vec<String> = message.split(": ").map(str::to_owned).collect();
            assert_eq!(classify(&messages), expected, "{message}");
        }
    }
}
