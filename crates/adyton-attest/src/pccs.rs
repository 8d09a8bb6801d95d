//! Collateral over HTTP: Intel's PCS/PCCS API for DCAP, AMD's KDS for SNP, with caching.
//!
//! - [`PccsClient`] fetches what dcap-qvl needs besides an SGX or TDX quote (PCK CRL, root CA
//!   CRL, TCB info, QE identity, each with its issuer chain) from a PCCS or from Intel's PCS,
//!   over the v4 API.
//! - [`KdsClient`] fetches the VCEK of the chip that signed an SNP report, and AMD's ASK and ARK,
//!   from AMD's KDS or a mirror of it.
//! - [`write_bundle`] writes fetched collateral as a bundle file for offline sites
//!   ([`Collateral::from_bundle_json`] reads it).
//!
//! The client is blocking (`ureq` on rustls with aws-lc-rs), so this crate needs no async
//! runtime. TLS certificates are always verified: against Mozilla's roots compiled into the
//! binary (so they are part of the measured code, not files the host could swap), or against the
//! CA certificates given in [`FetchOptions::with_ca_certificates_pem`] for a PCCS with a private
//! CA. There is no switch to turn verification off. Plain `http://` is allowed for a local PCCS:
//! the collateral is signed by Intel or AMD and the verifier checks those signatures, so TLS here
//! protects availability and freshness, not authenticity.
//!
//! Every response is checked before it is cached (a CRL must parse, TCB info must be the signed
//! JSON, a certificate must be a certificate), and errors name the URL and the HTTP status:
//! collateral and PCCS configuration was the most common failure in Trustee.
//!
//! # Caching
//!
//! Responses are cached by URL, in memory and, when [`FetchOptions::with_cache_dir`] is set, in
//! files (written atomically) so that a restart without network still has the last collateral.
//! An entry is fresh until the `nextUpdate` of the collateral it carries (TCB info, QE identity,
//! CRLs), or for [`FetchOptions::with_ttl`] when it has none (AMD certificates), and never longer
//! than [`FetchOptions::with_max_age`] after it was fetched, so that a TCB recovery that Intel
//! publishes before `nextUpdate` is seen within that time. When a refresh fails, a stale entry is
//! used if [`FetchOptions::with_stale_on_error`] allows it (the default), and the refresh is tried
//! again a minute later: its signatures and dates are still checked by the verifier, which refuses
//! it once its `nextUpdate` has passed.
//!
//! The cache directory is not trusted more than the network: every entry is parsed and checked
//! again when it is read, and its authenticity comes from the vendor's signatures.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use dcap_qvl::QuoteCollateralV3;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use x509_cert::certificate::Rfc5280;
use x509_cert::crl::CertificateList;
use x509_cert::der::Decode;
use x509_cert::Certificate;

use crate::collateral::{Collateral, SnpCollateral, MAX_COLLATERAL_LEN};
use crate::error::{AttestError, Result};
use crate::evidence::TeeKind;

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";

/// AMD's Key Distribution Service.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";

/// The CRL of Intel's SGX Root CA, at the CRL distribution point named in that certificate.
///
/// Intel's PCS has no `rootcacrl` endpoint (a PCCS has). The root certificate is the one
/// dcap-qvl pins, so its distribution point is fixed; taking the URL from a not yet verified
/// issuer chain instead would let a server choose what this client fetches.
const INTEL_ROOT_CA_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// Length of an SNP attestation report (SEV-SNP ABI specification, table "ATTESTATION_REPORT").
pub const SNP_REPORT_LEN: usize = 1184;
/// Offset of REPORTED_TCB, the TCB the VCEK was derived from, in an SNP report.
const SNP_REPORTED_TCB_OFFSET: usize = 0x180;
/// Offset of CHIP_ID in an SNP report.
const SNP_CHIP_ID_OFFSET: usize = 0x1A0;
const SNP_CHIP_ID_LEN: usize = 64;
/// KDS identifies a Turin chip by the first 8 bytes of CHIP_ID; the rest are zero.
const TURIN_HWID_LEN: usize = 8;

/// How long a stale entry is used, after a failed refresh, before the next refresh is tried.
const STALE_RETRY_SECS: u64 = 60;

/// Most entries kept in the in-memory cache; a few per platform are needed.
const MAX_MEMORY_ENTRIES: usize = 1024;

const PCK_CRL_ISSUER_CHAIN: &str = "SGX-PCK-CRL-Issuer-Chain";
const TCB_INFO_ISSUER_CHAIN: &str = "TCB-Info-Issuer-Chain";
/// The name older PCCS versions (API v3 style) use for the TCB info issuer chain.
const TCB_INFO_ISSUER_CHAIN_OLD: &str = "SGX-TCB-Info-Issuer-Chain";
const QE_IDENTITY_ISSUER_CHAIN: &str = "SGX-Enclave-Identity-Issuer-Chain";
/// Headers in which Intel's PCS explains an error.
const PCS_ERROR_HEADERS: [&str; 2] = ["Error-Code", "Error-Message"];

/// Settings shared by [`PccsClient`] and [`KdsClient`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Time allowed to open the TCP connection (and resolve the name).
    pub connect_timeout: Duration,
    /// Time allowed for each read; a whole request is also bounded by
    /// `connect_timeout + 2 * read_timeout`.
    pub read_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_len: usize,
    /// How long an entry without a `nextUpdate` of its own stays fresh.
    pub ttl: Duration,
    /// How long any entry stays fresh at most, `nextUpdate` or not; `None` for no limit.
    pub max_age: Option<Duration>,
    /// Where fetched responses are also kept, for a restart without network.
    pub cache_dir: Option<PathBuf>,
    /// PEM CA certificates that replace the built-in web roots, for a PCCS with a private CA.
    pub ca_certificates_pem: Option<Vec<u8>>,
    /// Whether a stale cached entry is used when refreshing it fails.
    pub stale_on_error: bool,
    /// How long before an entry's `nextUpdate` it is refreshed, so that a fleet is never left
    /// with collateral that expires while the source is briefly unreachable.
    pub refresh_ahead: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_response_len: MAX_COLLATERAL_LEN,
            ttl: Duration::from_secs(60 * 60),
            // PCCS refreshes its own cache daily by default; do not lag further behind.
            max_age: Some(Duration::from_secs(24 * 60 * 60)),
            cache_dir: None,
            ca_certificates_pem: None,
            stale_on_error: true,
            refresh_ahead: Duration::from_secs(60 * 60),
        }
    }
}

impl FetchOptions {
    /// Sets the connect and per-read timeouts.
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// Sets the largest response body accepted.
    pub fn with_max_response_len(mut self, len: usize) -> Self {
        self.max_response_len = len;
        self
    }

    /// Sets how long entries without a `nextUpdate` stay fresh.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long any entry stays fresh at most (`None`: until its `nextUpdate`).
    pub fn with_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Keeps fetched responses in `dir` too (created if missing).
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Trusts only the CA certificates in `pem` for `https://` (a PCCS with a private CA).
    pub fn with_ca_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificates_pem = Some(pem.into());
        self
    }

    /// Whether a stale cached entry may be used when refreshing it fails.
    pub fn with_stale_on_error(mut self, allowed: bool) -> Self {
        self.stale_on_error = allowed;
        self
    }

    /// Sets how long before its `nextUpdate` an entry is refreshed.
    pub fn with_refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }
}

/// Where a fetched response came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Served {
    /// The in-memory cache, fresh.
    Memory,
    /// The cache directory, fresh (after a restart).
    Disk,
    /// The network, just now.
    Network,
    /// A cached entry past its refresh time, used because the refresh failed.
    Stale,
}

/// How the responses behind one piece of collateral were obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchTrace {
    /// The least fresh way any response was served (`Stale` over `Network` over `Disk` over
    /// `Memory`); `None` when nothing was fetched.
    pub served: Option<Served>,
    /// When the oldest response was fetched from the network (unix seconds).
    pub fetched_at: Option<u64>,
}

impl FetchTrace {
    fn record(&mut self, served: Served, fetched_at: u64) {
        self.served = self.served.max(Some(served));
        self.fetched_at = Some(self.fetched_at.map_or(fetched_at, |t| t.min(fetched_at)));
    }
}

/// A client of Intel's PCS or a PCCS (API v4), for the collateral of SGX and TDX quotes.
#[derive(Debug)]
pub struct PccsClient {
    base_url: String,
    is_intel_pcs: bool,
    fetcher: Fetcher,
}

impl PccsClient {
    /// A client of the PCCS or PCS at `base_url`, such as `https://pccs.example:8081` or
    /// [`INTEL_PCS_URL`].
    ///
    /// The URL may also end in `/sgx/certification/v4/`, as in Intel's `sgx_default_qcnl.conf`.
    pub fn new(base_url: &str, options: FetchOptions) -> Result<Self> {
        let base_url = normalise_base_url(
            base_url,
            &["/sgx/certification/v4", "/tdx/certification/v4"],
            "PCCS",
        )?;
        let host = url_host(&base_url).unwrap_or_default();
        // Intel's production and sandbox PCS.
        let is_intel_pcs = host.eq_ignore_ascii_case("api.trustedservices.intel.com")
            || host.eq_ignore_ascii_case("sbx.api.trustedservices.intel.com");
        Ok(Self {
            base_url,
            is_intel_pcs,
            fetcher: Fetcher::new(options)?,
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The collateral for `quote` (an SGX or TDX DCAP quote), as of now.
    pub fn dcap_collateral(&self, quote: &[u8]) -> Result<QuoteCollateralV3> {
        self.dcap_collateral_at(quote, unix_now())
    }

    /// The collateral for `quote`, with `now` (unix seconds) deciding what the cache holds fresh.
    ///
    /// The quote must carry its PCK certificate chain (certification data type 5), as quotes
    /// from Gramine's and configfs-tsm's quoting enclaves do. The FMSPC and the PCK CA are read
    /// from its PCK certificate; neither is verified here (the verifier does that).
    pub fn dcap_collateral_at(&self, quote: &[u8], now: u64) -> Result<QuoteCollateralV3> {
        self.dcap_collateral_traced(quote, now)
            .map(|(collateral, _)| collateral)
    }

    /// As [`Self::dcap_collateral_at`], with where the responses came from.
    pub fn dcap_collateral_traced(
        &self,
        quote: &[u8],
        now: u64,
    ) -> Result<(QuoteCollateralV3, FetchTrace)> {
        let mut trace = FetchTrace::default();
        let trace = &mut trace;
        let platform = quote_platform(&parse_quote(quote)?)?;
        let tee = platform.tee_path();
        let fmspc = platform.fmspc_hex();
        let base = &self.base_url;

        let pck_crl_url = format!(
            "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            platform.ca
        );
        let (pck_crl_issuer_chain, pck_crl) =
            self.fetcher
                .fetch(&pck_crl_url, &[PCK_CRL_ISSUER_CHAIN], now, trace, |r| {
                    let chain = issuer_chain(r, &[PCK_CRL_ISSUER_CHAIN])?;
                    let (crl, next_update) = parse_crl(r, "PCK CRL")?;
                    Ok(((chain, crl), next_update))
                })?;

        let tcb_url = format!("{base}/{tee}/certification/v4/tcb?fmspc={fmspc}");
        let (tcb_info_issuer_chain, (tcb_info, tcb_info_signature)) = self.fetcher.fetch(
            &tcb_url,
            &[TCB_INFO_ISSUER_CHAIN, TCB_INFO_ISSUER_CHAIN_OLD],
            now,
            trace,
            |r| {
                let chain = issuer_chain(r, &[TCB_INFO_ISSUER_CHAIN, TCB_INFO_ISSUER_CHAIN_OLD])?;
                let (signed, next_update) = parse_signed_json(r, "tcbInfo", "TCB info")?;
                Ok(((chain, signed), Some(next_update)))
            },
        )?;

        let qe_url = format!("{base}/{tee}/certification/v4/qe/identity");
        let (qe_identity_issuer_chain, (qe_identity, qe_identity_signature)) =
            self.fetcher
                .fetch(&qe_url, &[QE_IDENTITY_ISSUER_CHAIN], now, trace, |r| {
                    let chain = issuer_chain(r, &[QE_IDENTITY_ISSUER_CHAIN])?;
                    let (signed, next_update) =
                        parse_signed_json(r, "enclaveIdentity", "QE identity")?;
                    Ok(((chain, signed), Some(next_update)))
                })?;

        let root_crl_url = if self.is_intel_pcs {
            INTEL_ROOT_CA_CRL_URL.to_owned()
        } else {
            format!("{base}/sgx/certification/v4/rootcacrl")
        };
        let root_ca_crl = self.fetcher.fetch(&root_crl_url, &[], now, trace, |r| {
            parse_crl(r, "root CA CRL")
        })?;

        let collateral = QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            // The verifier reads the chain from the quote itself (certification data type 5).
            pck_certificate_chain: None,
        };
        Ok((collateral, *trace))
    }
}

/// The CA that issued a PCK certificate, which names the PCK CRL that can revoke it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// Intel SGX PCK Processor CA.
    Processor,
    /// Intel SGX PCK Platform CA.
    Platform,
}

impl PckCa {
    /// The name in PCS URLs (`pckcrl?ca=...`) and in collateral keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processor => "processor",
            Self::Platform => "platform",
        }
    }
}

impl fmt::Display for PckCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The platform whose collateral an SGX or TDX quote needs: its TEE, its FMSPC and the CA of
/// its PCK certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DcapPlatform {
    /// SGX or TDX, as the quote's header says.
    pub tee: TeeKind,
    /// The FMSPC (family, model, stepping, platform type and customised SKU) of the PCK
    /// certificate's SGX extension.
    pub fmspc: [u8; 6],
    /// The CA that issued the PCK certificate.
    pub ca: PckCa,
}

impl DcapPlatform {
    /// The FMSPC in upper-case hex, as PCS URLs and Intel's tools write it.
    pub fn fmspc_hex(&self) -> String {
        hex::encode_upper(self.fmspc)
    }

    /// The TEE's segment of PCS URLs: TCB info and QE identity differ between SGX and TDX.
    fn tee_path(&self) -> &'static str {
        match self.tee {
            TeeKind::Tdx => "tdx",
            _ => "sgx",
        }
    }
}

/// `FMSPC/ca`, the collateral key of the platform.
impl fmt::Display for DcapPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.fmspc_hex(), self.ca)
    }
}

/// Parses a DCAP quote's structure (not its signatures) with dcap-qvl.
pub fn parse_quote(quote: &[u8]) -> Result<dcap_qvl::quote::Quote> {
    dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| AttestError::malformed(format!("DCAP quote: {e:#}")))
}

/// The platform a parsed SGX or TDX quote comes from, read from the PCK certificate it carries
/// (certification data type 5, as quotes from Gramine's and configfs-tsm's quoting enclaves
/// have). Nothing is verified here: it only says which collateral to fetch, and the verifier
/// then checks the certificate and the collateral.
pub fn quote_platform(quote: &dcap_qvl::quote::Quote) -> Result<DcapPlatform> {
    let cert_type = quote.inner_cert_type();
    if cert_type != 5 {
        return Err(missing(format!(
            "the quote's certification data is of type {cert_type}; only type 5 (PCK \
             certificate chain in the quote) is supported, so the PCK certificate cannot be \
             found"
        )));
    }
    let fmspc = dcap_qvl::intel::quote_fmspc(quote).map_err(|e| {
        AttestError::malformed(format!("no FMSPC in the quote's PCK certificate: {e:#}"))
    })?;
    let ca = match dcap_qvl::intel::quote_ca(quote) {
        Ok(dcap_qvl::config::PckCa::Processor) => PckCa::Processor,
        Ok(dcap_qvl::config::PckCa::Platform) => PckCa::Platform,
        Err(e) => {
            return Err(AttestError::malformed(format!(
                "unreadable PCK certificate in the quote: {e:#}"
            )))
        }
    };
    let tee = if quote.header.is_sgx() {
        TeeKind::Sgx
    } else {
        TeeKind::Tdx
    };
    Ok(DcapPlatform { tee, fmspc, ca })
}

/// AMD processor product lines, as KDS names them in its URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnpProduct {
    /// Third-generation EPYC.
    Milan,
    /// Fourth-generation EPYC (also Bergamo and Siena).
    Genoa,
    /// Fifth-generation EPYC; its TCB layout adds an FMC field.
    Turin,
}

impl SnpProduct {
    /// The name in KDS URLs: `Milan`, `Genoa`, `Turin`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
        }
    }
}

impl fmt::Display for SnpProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SnpProduct {
    type Err = AttestError;

    fn from_str(name: &str) -> Result<Self> {
        [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                missing(format!(
                    "unknown AMD product `{}`: expected Milan, Genoa or Turin",
                    name.chars().take(32).collect::<String>()
                ))
            })
    }
}

/// The security patch levels of REPORTED_TCB, which select the VCEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnpTcb {
    /// FMC firmware (Turin and later only).
    pub fmc: Option<u8>,
    /// PSP bootloader.
    pub bootloader: u8,
    /// PSP OS.
    pub tee: u8,
    /// SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

impl SnpTcb {
    /// Decodes a TCB_VERSION. Milan and Genoa: bootloader, tee, 4 reserved, snp, microcode.
    /// Turin: fmc, bootloader, tee, snp, 3 reserved, microcode (as in the `sev` crate).
    pub fn from_bytes(bytes: [u8; 8], product: SnpProduct) -> Self {
        match product {
            SnpProduct::Milan | SnpProduct::Genoa => Self {
                fmc: None,
                bootloader: bytes[0],
                tee: bytes[1],
                snp: bytes[6],
                microcode: bytes[7],
            },
            SnpProduct::Turin => Self {
                fmc: Some(bytes[0]),
                bootloader: bytes[1],
                tee: bytes[2],
                snp: bytes[3],
                microcode: bytes[7],
            },
        }
    }
}

/// A client of AMD's KDS (or a mirror of it), for the certificates that verify SNP reports.
#[derive(Debug)]
pub struct KdsClient {
    base_url: String,
    fetcher: Fetcher,
}

impl KdsClient {
    /// A client of the KDS at `base_url`, such as [`AMD_KDS_URL`].
    pub fn new(base_url: &str, options: FetchOptions) -> Result<Self> {
        Ok(Self {
            base_url: normalise_base_url(base_url, &["/vcek/v1"], "KDS")?,
            fetcher: Fetcher::new(options)?,
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The VCEK for `report` (a 1184-byte SNP attestation report from a `product` processor),
    /// and AMD's ASK and ARK, all DER, as of now.
    pub fn snp_collateral(&self, report: &[u8], product: SnpProduct) -> Result<SnpCollateral> {
        self.snp_collateral_at(report, product, unix_now())
    }

    /// As [`Self::snp_collateral`], with `now` (unix seconds) deciding what the cache holds fresh.
    pub fn snp_collateral_at(
        &self,
        report: &[u8],
        product: SnpProduct,
        now: u64,
    ) -> Result<SnpCollateral> {
        self.snp_collateral_traced(report, product, now)
            .map(|(collateral, _)| collateral)
    }

    /// As [`Self::snp_collateral_at`], with where the responses came from.
    pub fn snp_collateral_traced(
        &self,
        report: &[u8],
        product: SnpProduct,
        now: u64,
    ) -> Result<(SnpCollateral, FetchTrace)> {
        let mut trace = FetchTrace::default();
        let trace = &mut trace;
        let vcek_url = self.vcek_url(report, product)?;
        let vcek = self.fetcher.fetch(&vcek_url, &[], now, trace, |r| {
            let mut certs = parse_certificates(r, "VCEK")?;
            match (certs.pop(), certs.is_empty()) {
                (Some(vcek), true) => Ok((vcek, None)),
                _ => Err(missing(format!(
                    "the VCEK response from {} holds more than one certificate",
                    r.url
                ))),
            }
        })?;

        let chain_url = format!("{}/vcek/v1/{product}/cert_chain", self.base_url);
        let (ask, ark) = self.fetcher.fetch(&chain_url, &[], now, trace, |r| {
            split_ask_ark(r).map(|pair| (pair, None))
        })?;

        let collateral = SnpCollateral {
            ark: Some(ark),
            ask: Some(ask),
            vcek: Some(vcek),
        };
        Ok((collateral, *trace))
    }

    /// The KDS URL of the VCEK that signed `report`.
    pub fn vcek_url(&self, report: &[u8], product: SnpProduct) -> Result<String> {
        if report.len() != SNP_REPORT_LEN {
            return Err(AttestError::malformed(format!(
                "an SNP report is {SNP_REPORT_LEN} bytes, this one is {}",
                report.len()
            )));
        }
        let mut tcb = [0u8; 8];
        tcb.copy_from_slice(&report[SNP_REPORTED_TCB_OFFSET..SNP_REPORTED_TCB_OFFSET + 8]);
        let chip_id = &report[SNP_CHIP_ID_OFFSET..SNP_CHIP_ID_OFFSET + SNP_CHIP_ID_LEN];
        if chip_id.iter().all(|&b| b == 0) {
            return Err(missing(
                "the SNP report's CHIP_ID is zero (the host set MASK_CHIP_ID), so KDS cannot \
                 name its VCEK; use the VCEK or VLEK from the evidence's certificate table",
            ));
        }
        let hwid = match product {
            SnpProduct::Turin => hex::encode(&chip_id[..TURIN_HWID_LEN]),
            SnpProduct::Milan | SnpProduct::Genoa => hex::encode(chip_id),
        };
        let spl = SnpTcb::from_bytes(tcb, product);
        let fmc = spl
            .fmc
            .map(|fmc| format!("fmcSPL={fmc:02}&"))
            .unwrap_or_default();
        Ok(format!(
            "{}/vcek/v1/{product}/{hwid}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            self.base_url, spl.bootloader, spl.tee, spl.snp, spl.microcode
        ))
    }
}

/// The bundle JSON of `collateral`, as [`Collateral::from_bundle_json`] reads it.
///
/// Certificates that are PEM are written as PEM text, others as base64 DER.
pub fn bundle_json(collateral: &Collateral) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct SnpJson {
        #[serde(skip_serializing_if = "Option::is_none")]
        ark: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ask: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vcek: Option<String>,
    }
    #[derive(Serialize)]
    struct BundleJson<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        dcap: Option<&'a QuoteCollateralV3>,
        #[serde(skip_serializing_if = "Option::is_none")]
        snp: Option<SnpJson>,
    }
    let cert_text = |cert: &Option<Vec<u8>>| {
        cert.as_ref().map(|bytes| match std::str::from_utf8(bytes) {
            Ok(text) if text.trim_start().starts_with("-----BEGIN") => text.to_owned(),
            _ => BASE64.encode(bytes),
        })
    };
    let bundle = BundleJson {
        dcap: collateral.dcap.as_ref(),
        snp: collateral.snp.as_ref().map(|snp| SnpJson {
            ark: cert_text(&snp.ark),
            ask: cert_text(&snp.ask),
            vcek: cert_text(&snp.vcek),
        }),
    };
    serde_json::to_vec_pretty(&bundle).map_err(|e| {
        missing(format!(
            "collateral bundle could not be written as JSON: {e}"
        ))
    })
}

/// Writes `collateral` to `path` as a bundle file, atomically (a temporary file, then a rename).
pub fn write_bundle(path: &Path, collateral: &Collateral) -> Result<()> {
    write_atomically(path, &bundle_json(collateral)?)
}

// ---------------------------------------------------------------------------------------------
// Responses and their checks.

/// A response as the cache keeps it: the body and the headers that the parser reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Response {
    url: String,
    fetched_at: u64,
    expires_at: u64,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    #[serde(with = "base64_bytes")]
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// The URL-decoded PEM chain in the first of `names` that is present.
fn issuer_chain(response: &Response, names: &[&str]) -> Result<String> {
    let (name, value) = names
        .iter()
        .find_map(|name| response.header(name).map(|value| (name, value)))
        .ok_or_else(|| {
            missing(format!(
                "the response from {} lacks the issuer chain header {}",
                response.url,
                names.join(" or ")
            ))
        })?;
    let chain = urlencoding::decode(value).map_err(|e| {
        missing(format!(
            "header {name} from {} is not URL-encoded UTF-8: {e}",
            response.url
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            missing(format!(
                "header {name} from {} is not a PEM certificate chain: {e}",
                response.url
            ))
        })?;
    if certs.is_empty() {
        return Err(missing(format!(
            "header {name} from {} holds no certificate",
            response.url
        )));
    }
    Ok(chain.into_owned())
}

/// A CRL in DER, PEM or hex (PCCS serves the root CA CRL in hex), as DER, with its nextUpdate.
fn parse_crl(response: &Response, what: &str) -> Result<(Vec<u8>, Option<u64>)> {
    let url = &response.url;
    let body = response.body.as_slice();
    let der = if CertificateList::<Rfc5280>::from_der(body).is_ok() {
        body.to_vec()
    } else {
        let text = std::str::from_utf8(body).map(str::trim).unwrap_or_default();
        if text.starts_with("-----BEGIN") {
            CertificateRevocationListDer::from_pem_slice(text.as_bytes())
                .map(|crl| crl.as_ref().to_vec())
                .map_err(|e| missing(format!("{what} from {url} is not a PEM CRL: {e}")))?
        } else {
            hex::decode(text).map_err(|_| {
                missing(format!(
                    "{what} from {url} is not a CRL in DER, PEM or hex ({} bytes)",
                    body.len()
                ))
            })?
        }
    };
    let crl = CertificateList::<Rfc5280>::from_der(&der)
        .map_err(|e| missing(format!("{what} from {url} is not a CRL: {e}")))?;
    let next_update = crl
        .tbs_cert_list
        .next_update
        .map(|t| t.to_unix_duration().as_secs());
    Ok((der, next_update))
}

/// `{"<key>": {...}, "signature": "<hex>"}`: the signed JSON exactly as served, the signature,
/// and the nextUpdate it states.
fn parse_signed_json(
    response: &Response,
    key: &str,
    what: &str,
) -> Result<((String, Vec<u8>), u64)> {
    let url = &response.url;
    let doc: HashMap<String, &RawValue> = serde_json::from_slice(&response.body)
        .map_err(|e| missing(format!("{what} from {url} is not JSON: {e}")))?;
    let body = doc.get(key).ok_or_else(|| {
        missing(format!(
            "{what} from {url} has no `{key}` (expected {{\"{key}\": ..., \"signature\": ...}})"
        ))
    })?;
    let signature: String = doc
        .get("signature")
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .ok()
        .flatten()
        .ok_or_else(|| missing(format!("{what} from {url} has no string `signature`")))?;
    let signature = hex::decode(&signature)
        .map_err(|e| missing(format!("{what} signature from {url} is not hex: {e}")))?;

    #[derive(Deserialize)]
    struct Dates {
        #[serde(rename = "nextUpdate")]
        next_update: String,
    }
    // Intel signs the bytes of the object as served, so they are kept as they are.
    let dates: Dates = serde_json::from_str(body.get())
        .map_err(|e| missing(format!("{what} from {url} has no nextUpdate: {e}")))?;
    let next_update = chrono::DateTime::parse_from_rfc3339(&dates.next_update)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp()).ok())
        .ok_or_else(|| {
            missing(format!(
                "{what} from {url} has an unreadable nextUpdate `{}`",
                dates.next_update.chars().take(40).collect::<String>()
            ))
        })?;
    Ok(((body.get().to_owned(), signature), next_update))
}

/// The DER certificates of a body that is either PEM or one DER certificate.
fn parse_certificates(response: &Response, what: &str) -> Result<Vec<Vec<u8>>> {
    let body = response.body.as_slice();
    let ders = if body.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateDer::pem_slice_iter(body)
            .map(|cert| cert.map(|c| c.as_ref().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| missing(format!("{what} from {} is bad PEM: {e}", response.url)))?
    } else {
        vec![body.to_vec()]
    };
    if ders.is_empty() {
        return Err(missing(format!(
            "{what} from {} holds no certificate",
            response.url
        )));
    }
    for der in &ders {
        Certificate::from_der(der).map_err(|e| {
            missing(format!(
                "{what} from {} is not an X.509 certificate: {e}",
                response.url
            ))
        })?;
    }
    Ok(ders)
}

/// KDS's `cert_chain`: the ASK and the self-signed ARK, in either order.
fn split_ask_ark(response: &Response) -> Result<(Vec<u8>, Vec<u8>)> {
    let ders = parse_certificates(response, "AMD certificate chain")?;
    split_amd_chain(ders).map_err(|()| {
        missing(format!(
            "the AMD certificate chain from {} is not one ASK and one self-signed ARK",
            response.url
        ))
    })
}

/// Reads AMD's certificate chain (PEM, as KDS serves `cert_chain`) into (ASK, ARK) DER, whatever
/// their order: the ARK is the self-signed one.
pub fn split_amd_chain_pem(pem: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|c| c.as_ref().to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| missing(format!("AMD certificate chain is bad PEM: {e}")))?;
    split_amd_chain(ders)
        .map_err(|()| missing("the AMD certificate chain is not one ASK and one self-signed ARK"))
}

fn split_amd_chain(ders: Vec<Vec<u8>>) -> std::result::Result<(Vec<u8>, Vec<u8>), ()> {
    let self_signed = |der: &[u8]| {
        Certificate::from_der(der)
            .map(|cert| cert.tbs_certificate().issuer() == cert.tbs_certificate().subject())
            .unwrap_or(false)
    };
    let [first, second] = <[Vec<u8>; 2]>::try_from(ders).map_err(|_| ())?;
    match (self_signed(&first), self_signed(&second)) {
        (false, true) => Ok((first, second)),
        (true, false) => Ok((second, first)),
        _ => Err(()),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and the cache.

/// The HTTP agent and the cache behind both clients.
struct Fetcher {
    agent: ureq::Agent,
    options: FetchOptions,
    memory: Mutex<HashMap<String, Response>>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    fn new(options: FetchOptions) -> Result<Self> {
        let roots = match &options.ca_certificates_pem {
            None => ureq::tls::RootCerts::WebPki,
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .map(|cert| {
                        cert.map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| missing(format!("the CA certificates are not PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(missing("the CA certificate PEM holds no certificate"));
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .root_certs(roots)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .timeout_per_call(Some(options.connect_timeout + options.read_timeout * 2))
            .max_redirects(3)
            .user_agent(concat!("adyton-attest/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        if let Some(dir) = &options.cache_dir {
            // Fail at start, not at the first fetch, when the directory cannot be made.
            fs::create_dir_all(dir).map_err(|e| AttestError::io(dir, e))?;
        }
        Ok(Self {
            agent,
            options,
            memory: Mutex::new(HashMap::new()),
        })
    }

    /// The value `parse` makes of the response at `url`: from the cache while it is fresh, else
    /// from the network, else (when allowed) from a stale cache entry.
    ///
    /// `parse` returns the value and the collateral's nextUpdate, when it has one; it runs on
    /// every read, so a corrupt cache entry is refused like a bad response.
    fn fetch<T>(
        &self,
        url: &str,
        keep_headers: &[&str],
        now: u64,
        trace: &mut FetchTrace,
        parse: impl Fn(&Response) -> Result<(T, Option<u64>)>,
    ) -> Result<T> {
        let cached = self.cached(url).and_then(|(response, served)| {
            parse(&response)
                .ok()
                .map(|(value, _)| (value, response, served))
        });
        let stale = match cached {
            Some((value, response, served)) if now < response.expires_at => {
                trace.record(served, response.fetched_at);
                self.remember(response);
                return Ok(value);
            }
            other => other.map(|(value, response, _)| (value, response)),
        };

        let fetched = self.get(url, keep_headers, now).and_then(|mut response| {
            let (value, next_update) = parse(&response)?;
            response.expires_at = self.expiry(now, next_update);
            Ok((value, response))
        });
        match (fetched, stale) {
            (Ok((value, response)), _) => {
                self.store(&response)?;
                trace.record(Served::Network, response.fetched_at);
                self.remember(response);
                Ok(value)
            }
            (Err(_), Some((value, mut response))) if self.options.stale_on_error => {
                trace.record(Served::Stale, response.fetched_at);
                // Retry at most once a minute rather than on every call, which would add a
                // connection timeout to every verification at a site that is offline.
                response.expires_at = now.saturating_add(STALE_RETRY_SECS);
                self.remember(response);
                Ok(value)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn expiry(&self, now: u64, next_update: Option<u64>) -> u64 {
        let ttl = self.options.ttl.as_secs();
        let ahead = self.options.refresh_ahead.as_secs();
        let expires = match next_update {
            None => now.saturating_add(ttl),
            // Collateral already past its nextUpdate is stale at once.
            Some(next) if next <= now => next,
            // Refresh ahead of nextUpdate; but when the source still serves collateral that
            // close to its nextUpdate, ask again a minute later rather than on every call.
            Some(next) => next
                .saturating_sub(ahead)
                .max(now.saturating_add(STALE_RETRY_SECS).min(next)),
        };
        match self.options.max_age {
            Some(max_age) => expires.min(now.saturating_add(max_age.as_secs())),
            None => expires,
        }
    }

    /// The cached response for `url`, from memory or else from the cache directory.
    fn cached(&self, url: &str) -> Option<(Response, Served)> {
        let in_memory = self
            .memory
            .lock()
            .ok()
            .and_then(|memory| memory.get(url).cloned());
        match in_memory {
            Some(response) => Some((response, Served::Memory)),
            None => self.load(url).map(|response| (response, Served::Disk)),
        }
    }

    fn remember(&self, response: Response) {
        let Ok(mut memory) = self.memory.lock() else {
            return;
        };
        if memory.len() >= MAX_MEMORY_ENTRIES && !memory.contains_key(&response.url) {
            // Drop the entry that expires first; a few entries per platform are ever needed.
            let oldest = memory
                .iter()
                .min_by_key(|(_, r)| r.expires_at)
                .map(|(url, _)| url.clone());
            if let Some(oldest) = oldest {
                memory.remove(&oldest);
            }
        }
        memory.insert(response.url.clone(), response);
    }

    fn cache_path(&self, url: &str) -> Option<PathBuf> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
        self.options
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.json", hex::encode(digest.as_ref()))))
    }

    /// Reads the cache file of `url`; a missing, oversized or unreadable file is no entry.
    fn load(&self, url: &str) -> Option<Response> {
        let path = self.cache_path(url)?;
        let file = fs::File::open(path).ok()?;
        // Base64 makes the body 4/3 as long; the rest is a few headers.
        let limit = (self.options.max_response_len as u64) * 2 + 64 * 1024;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > limit {
            return None;
        }
        let response: Response = serde_json::from_slice(&bytes).ok()?;
        // A file named for another URL (a hash collision, or a copied file) is no entry.
        (response.url == url).then_some(response)
    }

    fn store(&self, response: &Response) -> Result<()> {
        let Some(path) = self.cache_path(&response.url) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(response)
            .map_err(|e| missing(format!("cache entry could not be written as JSON: {e}")))?;
        write_atomically(&path, &bytes)
    }

    /// GET `url`: a 2xx response with its body (within the size limit) and the named headers.
    fn get(&self, url: &str, keep_headers: &[&str], now: u64) -> Result<Response> {
        let mut response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| unreachable(format!("GET {url} failed: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let mut what = format!("GET {url} returned HTTP {status}");
            for name in PCS_ERROR_HEADERS {
                if let Some(value) = response.headers().get(name) {
                    let value: String = String::from_utf8_lossy(value.as_bytes())
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect();
                    what.push_str(&format!(", {name}: {value}"));
                }
            }
            // A server error or a rate limit says nothing about this platform's collateral: the
            // source is down for now. Any other status is its answer (no such FMSPC, bad request).
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                unreachable(what)
            } else {
                missing(what)
            });
        }
        let headers = keep_headers
            .iter()
            .filter_map(|name| {
                let value = response.headers().get(*name)?.to_str().ok()?;
                Some((name.to_ascii_lowercase(), value.to_owned()))
            })
            .collect();
        let limit = self.options.max_response_len as u64;
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => missing(format!(
                    "GET {url}: the response body exceeds the {limit}-byte limit"
                )),
                e => unreachable(format!("GET {url}: reading the response body failed: {e}")),
            })?;
        Ok(Response {
            url: url.to_owned(),
            fetched_at: now,
            expires_at: now,
            headers,
            body,
        })
    }
}

fn missing(what: impl Into<String>) -> AttestError {
    AttestError::CollateralMissing { what: what.into() }
}

/// The source could not be reached, timed out, broke off or answered with a server error.
fn unreachable(what: impl Into<String>) -> AttestError {
    AttestError::CollateralUnavailable { what: what.into() }
}

/// Checks that `url` is http or https with a host, and strips a trailing `/` and `suffixes`.
fn normalise_base_url(url: &str, suffixes: &[&str], service: &str) -> Result<String> {
    let mut base = url.trim().trim_end_matches('/');
    for suffix in suffixes {
        if let Some(stripped) = base.strip_suffix(suffix) {
            base = stripped.trim_end_matches('/');
        }
    }
    let bad = || {
        missing(format!(
            "{service} URL `{}` is not an http:// or https:// URL with a host",
            url.chars().take(200).collect::<String>()
        ))
    };
    let uri: ureq::http::Uri = base.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
        return Err(bad());
    }
    Ok(base.to_owned())
}

fn url_host(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    uri.host().map(str::to_owned)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// that a reader (or a restart after a crash) sees the old file or the new one, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        AttestError::io(path, e)
    })
}

/// Bytes as standard base64 in the cache files.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_and_checked() {
        for (given, expected) in [
            ("https://pccs.example:8081", "https://pccs.example:8081"),
            ("https://pccs.example:8081/", "https://pccs.example:8081"),
            (
                "https://localhost:8081/sgx/certification/v4/",
                "https://localhost:8081",
            ),
            (
                "http://127.0.0.1:8081/tdx/certification/v4",
                "http://127.0.0.1:8081",
            ),
        ] {
            let client = PccsClient::new(given, FetchOptions::default()).unwrap();
            assert_eq!(client.base_url(), expected);
        }
        for bad in [
            "",
            "pccs.example",
            "ftp://pccs.example",
            "https://",
            "https://x/?a=b",
        ] {
            let err = PccsClient::new(bad, FetchOptions::default()).unwrap_err();
            assert!(
                matches!(err, AttestError::CollateralMissing { .. }),
                "{bad}: {err}"
            );
        }
        assert!(
            PccsClient::new(INTEL_PCS_URL, FetchOptions::default())
                .unwrap()
                .is_intel_pcs
        );
        let kds = KdsClient::new("https://kdsintf.amd.com/vcek/v1/", FetchOptions::default());
        assert_eq!(kds.unwrap().base_url(), AMD_KDS_URL);
    }

    #[test]
    fn snp_tcb_layouts() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8];
        let legacy = SnpTcb::from_bytes(bytes, SnpProduct::Genoa);
        assert_eq!((legacy.fmc, legacy.bootloader, legacy.tee), (None, 1, 2));
        assert_eq!((legacy.snp, legacy.microcode), (7, 8));
        let turin = SnpTcb::from_bytes(bytes, SnpProduct::Turin);
        assert_eq!((turin.fmc, turin.bootloader, turin.tee), (Some(1), 2, 3));
        assert_eq!((turin.snp, turin.microcode), (4, 8));
        assert_eq!("turin".parse::<SnpProduct>().unwrap(), SnpProduct::Turin);
        assert!("naples".parse::<SnpProduct>().is_err());
    }

    #[test]
    fn expiry_is_next_update_or_ttl_capped_by_max_age() {
        let fetcher = Fetcher::new(
            FetchOptions::default()
                .with_ttl(Duration::from_secs(100))
                .with_max_age(Some(Duration::from_secs(1000)))
                .with_refresh_ahead(Duration::ZERO),
        )
        .unwrap();
        assert_eq!(fetcher.expiry(10, None), 110);
        assert_eq!(fetcher.expiry(10, Some(500)), 500);
        assert_eq!(fetcher.expiry(10, Some(5000)), 1010);
        // Collateral already past its nextUpdate is stale at once.
        assert_eq!(fetcher.expiry(10, Some(5)), 5);
    }

    #[test]
    fn entries_are_refreshed_ahead_of_next_update() {
        let fetcher = Fetcher::new(
            FetchOptions::default()
                .with_max_age(None)
                .with_refresh_ahead(Duration::from_secs(3600)),
        )
        .unwrap();
        assert_eq!(fetcher.expiry(0, Some(100_000)), 100_000 - 3600);
        // Within the refresh window: asked again a minute later, not on every call...
        assert_eq!(fetcher.expiry(99_000, Some(100_000)), 99_060);
        // ...and never later than nextUpdate itself.
        assert_eq!(fetcher.expiry(99_990, Some(100_000)), 100_000);
        assert_eq!(fetcher.expiry(100_001, Some(100_000)), 100_000);
    }
}
