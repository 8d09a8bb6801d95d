//! The one way every verifier gets collateral for a piece of evidence: [`CollateralProvider`].
//!
//! The KBS, the clients and the SDK each build one from the same settings ([`ProviderConfig`]):
//!
//! - a bundle file (for offline sites, and as a fallback when a network source fails);
//! - a PCCS or Intel's PCS (API v4) for SGX and TDX ([`crate::pccs::PccsClient`]);
//! - AMD's KDS for SNP ([`crate::pccs::KdsClient`]), unless the evidence carries its VCEK or VLEK
//!   (configfs-tsm's certificate table), which then needs no network at all.
//!
//! # What is cached, and for how long
//!
//! Collateral is keyed by what it is for ([`CollateralKey`]): the TEE and the FMSPC (with the
//! PCK CA) for DCAP, the chip id and the reported TCB for SNP. The network clients keep every
//! response in memory and, with a cache directory, on disk, under a URL that encodes that key,
//! and refresh it ahead of its `nextUpdate` ([`crate::pccs::FetchOptions::refresh_ahead`]).
//!
//! When the source is unreachable, the cached copy is served: the verifier accepts it while it
//! is valid and refuses it after (`AttestError::CollateralExpired`). Only when the operator sets
//! a grace period is expired collateral accepted, for at most that long, and the claims then
//! say by how much it had expired ([`Claims::collateral_grace_secs`]).
//!
//! Concurrent verifications that need the same collateral fetch it once: the first takes the
//! key's lock and fetches, the others wait for it and then read the cache.
//!
//! Nothing here adds trust: the collateral's authenticity comes from Intel's and AMD's
//! signatures, which the verifier checks whatever the source.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use sev::firmware::host::CertType;

use crate::claims::Claims;
use crate::collateral::{Collateral, SnpCollateral};
use crate::error::{AttestError, Result};
use crate::evidence::{Evidence, TeeKind};
use crate::pccs::{
    parse_quote, quote_platform, FetchOptions, FetchTrace, KdsClient, PccsClient, Served,
    SnpProduct,
};
use crate::verifier;

/// Where REPORTED_TCB lies in an SNP report (SEV-SNP ABI, "ATTESTATION_REPORT").
const SNP_REPORTED_TCB: std::ops::Range<usize> = 0x180..0x188;

/// Most keys whose single-flight locks are kept; a few per platform are ever needed.
const MAX_FLIGHT_KEYS: usize = 4096;

/// Where a [`CollateralProvider`] gets collateral from.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// A bundle of collateral ([`Collateral::from_json`]), with the file it came from (for the
    /// audit log).
    pub bundle: Option<(Collateral, String)>,
    /// A PCCS or Intel's PCS, for SGX and TDX.
    pub pccs_url: Option<String>,
    /// AMD's KDS or a mirror of it, for SNP.
    pub kds_url: Option<String>,
    /// Timeouts, cache directory, CA certificates and freshness of the network sources.
    pub fetch: FetchOptions,
    /// How long after its expiry collateral is still accepted; `None` (the default) for not at
    /// all.
    pub grace_period: Option<Duration>,
}

impl ProviderConfig {
    /// No source (enough for SIM evidence).
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `collateral`, read from `label` (a file name, for the audit log).
    pub fn with_bundle(mut self, collateral: Collateral, label: impl Into<String>) -> Self {
        self.bundle = Some((collateral, label.into()));
        self
    }

    /// Fetches SGX and TDX collateral from the PCCS or PCS at `url`.
    pub fn with_pccs_url(mut self, url: impl Into<String>) -> Self {
        self.pccs_url = Some(url.into());
        self
    }

    /// Fetches SNP certificates from the KDS at `url`.
    pub fn with_kds_url(mut self, url: impl Into<String>) -> Self {
        self.kds_url = Some(url.into());
        self
    }

    /// Sets the network sources' options.
    pub fn with_fetch_options(mut self, options: FetchOptions) -> Self {
        self.fetch = options;
        self
    }

    /// Keeps fetched collateral in `dir` too.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.fetch = self.fetch.with_cache_dir(dir);
        self
    }

    /// Accepts collateral up to `grace` after its expiry, and says so in the claims.
    pub fn with_grace_period(mut self, grace: Option<Duration>) -> Self {
        self.grace_period = grace.filter(|g| !g.is_zero());
        self
    }

    /// Whether any source is configured.
    pub fn is_empty(&self) -> bool {
        self.bundle.is_none() && self.pccs_url.is_none() && self.kds_url.is_none()
    }
}

/// What a piece of collateral is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CollateralKey {
    /// The TEE.
    pub tee: TeeKind,
    /// DCAP: the FMSPC (upper-case hex) and the PCK CA, as `FMSPC/ca`; SNP: the chip id (hex)
    /// and the reported TCB (hex), as `chip/tcb`.
    pub platform: String,
}

impl fmt::Display for CollateralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.tee, self.platform)
    }
}

/// Where the collateral of one verification came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CollateralOrigin {
    /// The configured bundle file.
    Bundle,
    /// The network source, just now.
    Network,
    /// The cache (memory or disk), still fresh.
    Cache,
    /// The cache, past its refresh time, because the source could not be reached.
    Stale,
    /// The certificates the evidence carries (SNP); no collateral of ours was needed.
    Evidence,
    /// Collateral sent with the evidence (the TEE fetched it from its platform's source), used
    /// because this verifier had none of its own.
    Carried,
    /// No collateral (SIM evidence).
    None,
}

/// Which collateral a verification used, from where, and its dates: for the audit log and the
/// metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollateralUse {
    /// What it is for; absent for SIM, and when the evidence could not be read.
    pub key: Option<CollateralKey>,
    /// Where it came from.
    pub origin: CollateralOrigin,
    /// The bundle file or the source URL; empty when there was none.
    pub source: String,
    /// When the responses were fetched from the network (unix seconds), for network sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<u64>,
    /// The collateral's earliest issue date, once verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// The collateral's earliest expiry, once verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Seconds past its expiry that it was accepted under the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
}

impl CollateralUse {
    fn new(key: Option<CollateralKey>, origin: CollateralOrigin, source: &str) -> Self {
        Self {
            key,
            origin,
            source: source.to_owned(),
            fetched_at: None,
            issued_at: None,
            expires_at: None,
            grace_secs: None,
        }
    }
}

/// Counters of a provider, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProviderStats {
    /// Collateral assembled with at least one response from the network.
    pub network: u64,
    /// Collateral served fresh from the cache.
    pub cache: u64,
    /// Collateral served from the cache past its refresh time, the source being unreachable.
    pub stale: u64,
    /// Collateral taken from the bundle file.
    pub bundle: u64,
    /// Evidence whose own certificates sufficed.
    pub evidence: u64,
    /// Collateral sent with the evidence, used for want of our own.
    pub carried: u64,
    /// Failures to get collateral from any source.
    pub failures: u64,
    /// Verifications accepted within the grace period only.
    pub grace: u64,
}

#[derive(Debug, Default)]
struct Counters {
    network: AtomicU64,
    cache: AtomicU64,
    stale: AtomicU64,
    bundle: AtomicU64,
    evidence: AtomicU64,
    carried: AtomicU64,
    failures: AtomicU64,
    grace: AtomicU64,
}

impl Counters {
    fn count(&self, origin: CollateralOrigin) {
        let counter = match origin {
            CollateralOrigin::Network => &self.network,
            CollateralOrigin::Cache => &self.cache,
            CollateralOrigin::Stale => &self.stale,
            CollateralOrigin::Bundle => &self.bundle,
            CollateralOrigin::Evidence => &self.evidence,
            CollateralOrigin::Carried => &self.carried,
            CollateralOrigin::None => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Collateral for evidence, from the configured sources; see the module documentation.
pub struct CollateralProvider {
    bundle: Option<(Collateral, String)>,
    pccs: Option<PccsClient>,
    kds: Option<KdsClient>,
    grace_period: Option<Duration>,
    flights: Mutex<HashMap<CollateralKey, Arc<Mutex<()>>>>,
    counters: Counters,
}

impl fmt::Debug for CollateralProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollateralProvider")
            .field("bundle", &self.bundle.as_ref().map(|(_, label)| label))
            .field("pccs", &self.pccs.as_ref().map(PccsClient::base_url))
            .field("kds", &self.kds.as_ref().map(KdsClient::base_url))
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

impl CollateralProvider {
    /// A provider of the sources in `config`; a bad URL or CA file is an error here, not at the
    /// first verification.
    pub fn new(config: ProviderConfig) -> Result<Self> {
        let pccs = config
            .pccs_url
            .as_deref()
            .map(|url| PccsClient::new(url, config.fetch.clone()))
            .transpose()?;
        let kds = config
            .kds_url
            .as_deref()
            .map(|url| KdsClient::new(url, config.fetch.clone()))
            .transpose()?;
        Ok(Self {
            bundle: config.bundle,
            pccs,
            kds,
            grace_period: config.grace_period,
            flights: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    /// A provider of one bundle of collateral, as verifiers took it before there were network
    /// sources. An empty bundle ([`Collateral::none`]) is no source.
    pub fn from_collateral(collateral: Collateral, label: impl Into<String>) -> Self {
        let empty = collateral.dcap.is_none() && collateral.snp.is_none();
        Self {
            bundle: (!empty).then(|| (collateral, label.into())),
            pccs: None,
            kds: None,
            grace_period: None,
            flights: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// A provider with no source: SIM evidence only.
    pub fn none() -> Self {
        Self::from_collateral(Collateral::none(), "")
    }

    /// Whether this provider can get collateral for `tee` at all.
    pub fn serves(&self, tee: TeeKind) -> bool {
        let bundle = self.bundle.as_ref().map(|(c, _)| c);
        match tee {
            TeeKind::Sim => true,
            TeeKind::Sgx | TeeKind::Tdx => {
                self.pccs.is_some() || bundle.is_some_and(|c| c.dcap.is_some())
            }
            // SNP evidence may carry its own certificates, and so may AZURE-SNP evidence.
            TeeKind::Snp | TeeKind::AzureSnp => true,
            TeeKind::AzureTdx => self.pccs.is_some() || bundle.is_some_and(|c| c.dcap.is_some()),
            // A Nitro document carries its whole chain, to a root pinned in the verifier.
            TeeKind::Nitro => true,
        }
    }

    /// The counters since this provider was made.
    pub fn stats(&self) -> ProviderStats {
        let c = &self.counters;
        ProviderStats {
            network: c.network.load(Ordering::Relaxed),
            cache: c.cache.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            bundle: c.bundle.load(Ordering::Relaxed),
            evidence: c.evidence.load(Ordering::Relaxed),
            carried: c.carried.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            grace: c.grace.load(Ordering::Relaxed),
        }
    }

    /// Verifies `evidence` as of `now` with the collateral it needs, and says which collateral
    /// that was. Expired collateral is accepted only within the grace period, and the claims
    /// then say so.
    pub fn verify(&self, evidence: &Evidence, now: u64) -> Result<(Claims, CollateralUse)> {
        let (outcome, used) = self.verify_traced(evidence, now);
        let claims = outcome?;
        let used = used.ok_or_else(|| missing("no record of the collateral used"))?;
        Ok((claims, used))
    }

    /// As [`Self::verify`], with the collateral used also when the verification fails (for the
    /// audit log of a refusal); `None` when no collateral could be had.
    pub fn verify_traced(
        &self,
        evidence: &Evidence,
        now: u64,
    ) -> (Result<Claims>, Option<CollateralUse>) {
        self.verify_traced_with(evidence, None, now)
    }

    /// As [`Self::verify_traced`], with `carried`: collateral that came with the evidence, used
    /// only when this provider has none of its own for it (no source for its TEE, or a source
    /// that failed with nothing cached). It adds no trust: the verifier checks its signatures up
    /// to Intel's or AMD's root like any other.
    pub fn verify_traced_with(
        &self,
        evidence: &Evidence,
        carried: Option<&Collateral>,
        now: u64,
    ) -> (Result<Claims>, Option<CollateralUse>) {
        let own = self.collateral_for(evidence, now);
        let (collateral, mut used) = match (own, carried) {
            (Ok((_, used)), Some(carried)) if used.origin == CollateralOrigin::None => {
                self.counters.carried.fetch_add(1, Ordering::Relaxed);
                let used = CollateralUse::new(used.key, CollateralOrigin::Carried, "");
                (carried.clone(), used)
            }
            (
                Err(
                    AttestError::CollateralMissing { .. }
                    | AttestError::CollateralUnavailable { .. },
                ),
                Some(carried),
            ) => {
                self.counters.carried.fetch_add(1, Ordering::Relaxed);
                let used = CollateralUse::new(None, CollateralOrigin::Carried, "");
                (carried.clone(), used)
            }
            (Ok(found), _) => found,
            (Err(e), _) => return (Err(e), None),
        };
        // The grace period is the operator's allowance for its own sources' outages; collateral
        // the evidence brought along (whose sender chooses it) gets none.
        let grace = self
            .grace_period
            .filter(|_| used.origin != CollateralOrigin::Carried);
        let outcome = match verifier::verify(evidence, &collateral, now) {
            Err(AttestError::CollateralExpired { what }) => match grace {
                None => Err(expired(what, &used)),
                Some(grace) => self.verify_in_grace(evidence, &collateral, now, grace, what, &used),
            },
            other => other,
        };
        if let Ok(claims) = &outcome {
            used.issued_at = claims.collateral_issued_at;
            used.expires_at = claims.collateral_expires_at;
            used.grace_secs = claims.collateral_grace_secs;
        }
        (outcome, Some(used))
    }

    /// Verification as of the start of the grace period: everything is checked as it was then
    /// (signatures, revocation, TCB level); only the dates are forgiven, by at most `grace`.
    fn verify_in_grace(
        &self,
        evidence: &Evidence,
        collateral: &Collateral,
        now: u64,
        grace: Duration,
        what: String,
        used: &CollateralUse,
    ) -> Result<Claims> {
        let then = now.saturating_sub(grace.as_secs());
        let mut claims = verifier::verify(evidence, collateral, then).map_err(|e| match e {
            AttestError::CollateralExpired { .. } => expired(
                format!("{what}, beyond the grace period of {} s", grace.as_secs()),
                used,
            ),
            other => other,
        })?;
        let expired_for = claims
            .collateral_expires_at
            .map_or(grace.as_secs(), |expires| now.saturating_sub(expires));
        claims.collateral_grace_secs = Some(expired_for);
        self.counters.grace.fetch_add(1, Ordering::Relaxed);
        Ok(claims)
    }

    /// The collateral `evidence` needs as of `now`, and where it came from.
    pub fn collateral_for(
        &self,
        evidence: &Evidence,
        now: u64,
    ) -> Result<(Collateral, CollateralUse)> {
        let outcome = match evidence.tee {
            // SIM needs none; a Nitro document carries its whole chain.
            TeeKind::Sim | TeeKind::Nitro => Ok((
                Collateral::none(),
                CollateralUse::new(None, CollateralOrigin::None, ""),
            )),
            TeeKind::Sgx | TeeKind::Tdx => self.dcap(evidence, now),
            TeeKind::Snp => self.snp(evidence, now),
            TeeKind::AzureSnp | TeeKind::AzureTdx => self.azure(evidence, now),
        };
        match &outcome {
            Ok((_, used)) => self.counters.count(used.origin),
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    fn dcap(&self, evidence: &Evidence, now: u64) -> Result<(Collateral, CollateralUse)> {
        let Some(pccs) = &self.pccs else {
            // Without a network source the bundle serves every quote, as it did before there
            // were other sources: the key only names the platform in the audit log, and a quote
            // whose PCK certificate cannot be read here (one that does not carry its chain) is
            // the verifier's to judge with the bundle.
            return self.bundle_or_none(dcap_key(evidence).ok());
        };
        let key = dcap_key(evidence)?;
        let fetched =
            self.single_flight(&key, || pccs.dcap_collateral_traced(&evidence.quote, now));
        match fetched {
            Ok((dcap, trace)) => {
                let collateral = Collateral {
                    dcap: Some(dcap),
                    snp: None,
                };
                Ok((collateral, traced_use(key, pccs.base_url(), trace)))
            }
            Err(e) => self.fall_back(key, e),
        }
    }

    /// Azure evidence needs the collateral of the hardware report inside it: the TD quote's, or
    /// the SNP report's unless the evidence carries the VCEK chain itself.
    fn azure(&self, evidence: &Evidence, now: u64) -> Result<(Collateral, CollateralUse)> {
        let inner = verifier::azure::hardware_evidence(evidence)?;
        match inner.tee {
            TeeKind::Snp if evidence.certificates.is_some() => {
                // As for SNP evidence with its own VEK: the chain that came with the report is
                // the one used.
                Ok((
                    self.bundle_without_vek(),
                    CollateralUse::new(None, CollateralOrigin::Evidence, "evidence"),
                ))
            }
            TeeKind::Snp => self.snp(&inner, now),
            _ => self.dcap(&inner, now),
        }
    }

    /// The bundle's SNP collateral without its VEK, for evidence that carries its own: the
    /// verifier takes a VEK from the collateral before the evidence's, so none is given.
    fn bundle_without_vek(&self) -> Collateral {
        Collateral {
            dcap: None,
            snp: self
                .bundle
                .as_ref()
                .and_then(|(c, _)| c.snp.as_ref())
                .map(|snp| SnpCollateral {
                    vcek: None,
                    ..snp.clone()
                }),
        }
    }

    fn snp(&self, evidence: &Evidence, now: u64) -> Result<(Collateral, CollateralUse)> {
        let report = verifier::snp::parse_report(&evidence.quote)?;
        let key = CollateralKey {
            tee: TeeKind::Snp,
            platform: format!(
                "{}/{}",
                hex::encode(report.chip_id),
                hex::encode(&evidence.quote[SNP_REPORTED_TCB])
            ),
        };
        if carries_vek(evidence)? {
            // The certificates that came with the report are the ones for its chip.
            return Ok((
                self.bundle_without_vek(),
                CollateralUse::new(Some(key), CollateralOrigin::Evidence, "evidence"),
            ));
        }
        let Some(kds) = &self.kds else {
            return self.bundle_or_none(Some(key));
        };
        let products = match (report.cpuid_fam_id, report.cpuid_mod_id) {
            (Some(family), Some(model)) => vec![product_of(family, model)?],
            // Version 2 reports do not say; Turin reports are version 3 or later.
            _ => vec![SnpProduct::Milan, SnpProduct::Genoa],
        };
        let fetched = self.single_flight(&key, || {
            let mut last = None;
            for product in &products {
                match kds.snp_collateral_traced(&evidence.quote, *product, now) {
                    Ok(found) => return Ok(found),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| missing("no AMD product to ask KDS for")))
        });
        match fetched {
            Ok((snp, trace)) => {
                let collateral = Collateral {
                    dcap: None,
                    snp: Some(snp),
                };
                Ok((collateral, traced_use(key, kds.base_url(), trace)))
            }
            Err(e) => self.fall_back(key, e),
        }
    }

    /// The bundle, when there is one; else no collateral, which the verifier refuses with a
    /// message that names what is missing.
    fn bundle_or_none(&self, key: Option<CollateralKey>) -> Result<(Collateral, CollateralUse)> {
        Ok(match &self.bundle {
            Some((collateral, label)) => (
                collateral.clone(),
                CollateralUse::new(key, CollateralOrigin::Bundle, label),
            ),
            None => (
                Collateral::none(),
                CollateralUse::new(key, CollateralOrigin::None, ""),
            ),
        })
    }

    /// After a network source failed with no cached copy: the bundle if there is one, else the
    /// failure.
    fn fall_back(
        &self,
        key: CollateralKey,
        error: AttestError,
    ) -> Result<(Collateral, CollateralUse)> {
        match &self.bundle {
            Some(_) => self.bundle_or_none(Some(key)),
            None => Err(match error {
                AttestError::CollateralMissing { what } => AttestError::CollateralMissing {
                    what: format!("collateral for {key}: {what}"),
                },
                AttestError::CollateralUnavailable { what } => AttestError::CollateralUnavailable {
                    what: format!("collateral for {key}, none cached: {what}"),
                },
                other => other,
            }),
        }
    }

    /// Runs `fetch` with `key`'s lock held, so that concurrent callers for the same key wait
    /// for the first one's fetch and then read what it cached.
    fn single_flight<T>(
        &self,
        key: &CollateralKey,
        fetch: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let lock = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if flights.len() >= MAX_FLIGHT_KEYS && !flights.contains_key(key) {
                // Locks only matter while held; dropping idle ones bounds the map.
                flights.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            flights.entry(key.clone()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        fetch()
    }
}

/// The key of an SGX or TDX quote: its platform ([`crate::pccs::quote_platform`]).
fn dcap_key(evidence: &Evidence) -> Result<CollateralKey> {
    let platform = quote_platform(&parse_quote(&evidence.quote)?)?;
    Ok(CollateralKey {
        tee: platform.tee,
        platform: platform.to_string(),
    })
}

/// Whether SNP evidence carries a VCEK or VLEK in its certificate table.
fn carries_vek(evidence: &Evidence) -> Result<bool> {
    let Some(bytes) = &evidence.certificates else {
        return Ok(false);
    };
    let table = verifier::snp::parse_cert_table(bytes)?;
    Ok([CertType::VCEK, CertType::VLEK]
        .iter()
        .any(|wanted| verifier::snp::table_entry(&table, wanted).is_some()))
}

fn product_of(family: u8, model: u8) -> Result<SnpProduct> {
    match sev::Generation::identify_cpu(family, model) {
        Ok(sev::Generation::Milan) => Ok(SnpProduct::Milan),
        Ok(sev::Generation::Genoa) => Ok(SnpProduct::Genoa),
        Ok(sev::Generation::Turin) => Ok(SnpProduct::Turin),
        _ => Err(missing(format!(
            "KDS has no product for CPUID family {family:#x}, model {model:#x}"
        ))),
    }
}

fn traced_use(key: CollateralKey, url: &str, trace: FetchTrace) -> CollateralUse {
    let origin = match trace.served {
        Some(Served::Network) => CollateralOrigin::Network,
        Some(Served::Stale) => CollateralOrigin::Stale,
        Some(Served::Memory) | Some(Served::Disk) | None => CollateralOrigin::Cache,
    };
    let mut used = CollateralUse::new(Some(key), origin, url);
    used.fetched_at = trace.fetched_at;
    used
}

fn describe(used: &CollateralUse) -> String {
    let origin = match used.origin {
        CollateralOrigin::Bundle => "the bundle file",
        CollateralOrigin::Network => "the network",
        CollateralOrigin::Cache => "the cache",
        CollateralOrigin::Stale => "the cache, the source being unreachable,",
        CollateralOrigin::Evidence => "the evidence",
        CollateralOrigin::Carried => "the collateral sent with the evidence",
        CollateralOrigin::None => "nowhere",
    };
    match &used.key {
        Some(key) if used.source.is_empty() => format!("{origin} for {key}"),
        Some(key) => format!("{origin} {} for {key}", used.source),
        None => origin.to_owned(),
    }
}

/// The refusal of expired collateral `used`: [`AttestError::CollateralExpired`], a verdict on
/// what the source serves; but [`AttestError::CollateralUnavailable`] when the collateral is a
/// cached copy kept only because the source could not be reached, since the source may have
/// fresh collateral once it is back.
fn expired(what: String, used: &CollateralUse) -> AttestError {
    let what = format!("{what} (collateral from {})", describe(used));
    match used.origin {
        CollateralOrigin::Stale => AttestError::CollateralUnavailable {
            what: format!("no valid collateral cached: {what}"),
        },
        _ => AttestError::CollateralExpired { what },
    }
}

fn missing(what: impl Into<String>) -> AttestError {
    AttestError::CollateralMissing { what: what.into() }
}
