//! The collateral of the server's own evidence, served at `GET /adyton/v1/collateral` to clients
//! that have none of their own (`docs/attested-tls.md`, "Collateral").
//!
//! The server fetches it from its platform's source (`pccs_url`, `kds_url`) through a
//! [`CollateralProvider`], whose cache keeps it and refreshes it ahead of its `nextUpdate`. It is
//! public and adds no trust: Intel or AMD signed every piece, and a client checks those
//! signatures up to the vendor's root whatever the collateral's source.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adyton_attest::collateral::MAX_COLLATERAL_LEN;
use adyton_attest::provider::{CollateralOrigin, CollateralProvider};
use adyton_attest::{pccs, Evidence};

/// How long a bundle made from the provider is served before the provider is asked again. The
/// provider's own cache decides when to fetch; this only spares it the work of every request.
const REUSE: Duration = Duration::from_secs(60);

/// How long after a failed fetch the failure is answered without asking again, so that
/// anonymous requests cannot make the server hammer its PCCS while it is down.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A bundle, none to serve, or why the source failed.
type Answer = Result<Option<Arc<[u8]>>, String>;

/// Where the bundle of the server's own evidence comes from.
pub trait OwnCollateral: Send + Sync + fmt::Debug {
    /// The collateral bundle JSON (`adyton_attest::pccs::bundle_json`) of the evidence in the
    /// server's certificate; `Ok(None)` when it needs none or none can be served (SIM, SNP
    /// evidence that carries its VCEK); `Err` with the reason when the source failed.
    fn bundle(&self) -> Result<Option<Arc<[u8]>>, String>;
}

/// [`OwnCollateral`] from a [`CollateralProvider`], for one piece of evidence.
pub struct EvidenceCollateral {
    provider: Arc<CollateralProvider>,
    evidence: Evidence,
    reuse: Duration,
    retry_after_failure: Duration,
    /// The last answer, and when it was made.
    last: Mutex<Option<(Instant, Answer)>>,
}

impl fmt::Debug for EvidenceCollateral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvidenceCollateral")
            .field("provider", &self.provider)
            .field("tee", &self.evidence.tee)
            .finish_non_exhaustive()
    }
}

impl EvidenceCollateral {
    /// The collateral of `evidence`, from `provider`.
    pub fn new(provider: Arc<CollateralProvider>, evidence: Evidence) -> Self {
        Self {
            provider,
            evidence,
            reuse: REUSE,
            retry_after_failure: RETRY_AFTER_FAILURE,
            last: Mutex::new(None),
        }
    }

    /// Serves a bundle for `reuse` before asking the provider again, and a failure for
    /// `retry_after_failure` (a minute and 30 s by default).
    pub fn with_intervals(mut self, reuse: Duration, retry_after_failure: Duration) -> Self {
        self.reuse = reuse;
        self.retry_after_failure = retry_after_failure;
        self
    }

    /// Asks the provider now (at start, so that the first client does not wait for the fetch).
    pub fn fetch_now(&self) -> Answer {
        let fetched = self.fetch();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), fetched.clone()));
        fetched
    }

    fn fetch(&self) -> Answer {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (collateral, used) = self
            .provider
            .collateral_for(&self.evidence, now)
            .map_err(|e| e.to_string())?;
        match used.origin {
            // Nothing a client could use: SIM needs none, and SNP evidence that carries its VCEK
            // brings it along in the certificate already.
            CollateralOrigin::None | CollateralOrigin::Evidence => return Ok(None),
            _ => {}
        }
        let bundle = pccs::bundle_json(&collateral).map_err(|e| e.to_string())?;
        if bundle.len() > MAX_COLLATERAL_LEN {
            return Err(format!(
                "the collateral bundle of {} bytes is over the {MAX_COLLATERAL_LEN}-byte limit",
                bundle.len()
            ));
        }
        Ok(Some(bundle.into()))
    }
}

impl OwnCollateral for EvidenceCollateral {
    fn bundle(&self) -> Answer {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, answer)) = last.as_ref() {
            let fresh_for = if answer.is_ok() {
                self.reuse
            } else {
                self.retry_after_failure
            };
            if at.elapsed() < fresh_for {
                return answer.clone();
            }
        }
        // The lock is held across the fetch: concurrent requests wait for one fetch.
        let fetched = self.fetch();
        let answer = match (&fetched, last.take()) {
            // A failed refresh keeps serving the bundle it had; the client's verifier judges its
            // dates.
            (Err(e), Some((_, Ok(Some(previous))))) => {
                tracing::warn!(error = %e, "cannot refresh the collateral of this server's evidence; serving the previous bundle");
                *last = Some((Instant::now(), Ok(Some(Arc::clone(&previous)))));
                return Ok(Some(previous));
            }
            _ => fetched,
        };
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}
