//! The one error type of the key broker library.

use adyton_attest::AttestError;
use adyton_envelope::EnvelopeError;

/// Everything the key broker can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KbsError {
    /// No key with this id.
    #[error("unknown key `{id}`")]
    UnknownKey {
        /// The id asked for.
        id: String,
    },

    /// No transfer policy with this id.
    #[error("unknown transfer policy `{id}`")]
    UnknownPolicy {
        /// The id asked for.
        id: String,
    },

    /// A record with this id exists already.
    #[error("`{id}` exists already")]
    AlreadyExists {
        /// The id.
        id: String,
    },

    /// A policy that keys still use cannot be deleted.
    #[error("transfer policy `{id}` is used by {keys} key(s); delete or move them first")]
    PolicyInUse {
        /// The policy id.
        id: String,
        /// How many keys use it.
        keys: usize,
    },

    /// A request is malformed (bad base64, bad JSON, bad sizes).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },

    /// The `Attestation-Type` does not match the key's transfer policy.
    #[error("attestation type {found} does not match the key's transfer policy, which requires {expected}")]
    AttestationTypeMismatch {
        /// The policy's type.
        expected: String,
        /// The request's type.
        found: String,
    },

    /// The evidence's report data does not bind the presented public key (and nonce).
    #[error("report data mismatch: the evidence does not bind this public key")]
    ReportDataMismatch,

    /// An offline transfer for a TEE that cannot seal the key it would receive (TDX).
    #[error("{tee} has no sealing key: offline provisioning needs SGX or SEV-SNP")]
    NoSealingKey {
        /// The TEE named by the request.
        tee: String,
    },

    /// A nonce was expired, replayed, forged or malformed.
    #[error("bad nonce: {reason}")]
    BadNonce {
        /// Why.
        reason: String,
    },

    /// Evidence verification or the policy refused the transfer.
    #[error(transparent)]
    Attestation(#[from] AttestError),

    /// Key material could not be sealed, unsealed or wrapped.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),

    /// The store failed.
    #[error("store: {reason}")]
    Store {
        /// What failed.
        reason: String,
    },

    /// The store's disk (or the owner's quota) is full: the write did not happen, and the same
    /// request may succeed once space is freed. The store needs no restart for that.
    #[error("storage full: {reason}")]
    StorageFull {
        /// What failed, and on what.
        reason: String,
    },

    /// The master key is missing, unreadable or unsafe.
    #[error("master key: {reason}")]
    MasterKey {
        /// What is wrong.
        reason: String,
    },
}

impl KbsError {
    /// Whether this is no verdict on the evidence but an outage: the collateral source could not
    /// be reached and no valid copy was cached, so the same request may succeed later.
    pub fn is_collateral_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Attestation(AttestError::CollateralUnavailable { .. })
        )
    }

    /// The error of an I/O failure: [`KbsError::StorageFull`] for a full disk or quota (`ENOSPC`,
    /// `EDQUOT`), [`KbsError::Store`] otherwise.
    pub(crate) fn from_io(context: &str, err: &std::io::Error) -> Self {
        let reason = format!("{context}: {err}");
        if is_storage_full(err) {
            Self::StorageFull { reason }
        } else {
            Self::Store { reason }
        }
    }
}

/// `ENOSPC` (no space left on the device) and `EDQUOT` (the disk quota is exceeded): Linux's
/// numbers, the only platform the broker builds for.
pub(crate) fn is_storage_full(err: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    err.kind() == std::io::ErrorKind::StorageFull
        || matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// The result type of this crate.
pub type Result<T, E = KbsError> = std::result::Result<T, E>;

/// What a use case of the key broker's services ([`crate::service::KbsState`],
/// [`crate::admin::AdminService`]) refuses or fails at. `http` maps each variant to a status in
/// one place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed before it reaches the broker (an unknown key algorithm, a policy
    /// document of the wrong shape, a provisioning request for another key). Nothing was attempted,
    /// so nothing is audited.
    #[error("{reason}")]
    InvalidRequest {
        /// What is wrong, for the client.
        reason: String,
    },

    /// The broker or its store refused or failed; the attempt is in the audit log.
    #[error(transparent)]
    Broker(#[from] KbsError),

    /// An operator's login was refused, or a token is not live.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),

    /// The audit record could not be written: nothing was done or released (fail closed).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),

    /// A task of the service ended without an answer (a panic on a blocking thread).
    #[error("internal: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

impl ServiceError {
    /// A malformed request.
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidRequest {
            reason: reason.into(),
        }
    }
}
