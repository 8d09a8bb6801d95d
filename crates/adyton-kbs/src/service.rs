//! What the key broker's services share, [`KbsState`] (the broker, the audit log and the clock),
//! and the transfer use case: a nonce, or a transfer decided and audited. The admin use cases are
//! [`crate::admin::AdminService`]'s. Neither knows HTTP: `http` adapts requests to them.

use std::sync::Arc;

use adyton_envelope::wrap::WrappedKey;

use crate::audit::AuditSink;
use crate::error::ServiceError;
use crate::transfer::{Broker, TransferRequest};

/// The current time in unix seconds; a plain function so tests can fix it.
pub type Clock = fn() -> u64;

/// The system clock. A clock before 1970 reads as 0, which every nonce and certificate check refuses.
pub fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the key broker's services share.
pub struct KbsState {
    /// The broker.
    pub broker: Broker,
    /// Where transfer decisions and admin actions go.
    pub audit: Arc<dyn AuditSink>,
    /// The time source.
    pub clock: Clock,
}

impl std::fmt::Debug for KbsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsState")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl KbsState {
    /// The state of a broker.
    pub fn new(broker: Broker, audit: Arc<dyn AuditSink>, clock: Clock) -> Self {
        Self {
            broker,
            audit,
            clock,
        }
    }

    /// A fresh nonce for the client's next transfer request.
    pub fn nonce(&self) -> Result<Vec<u8>, ServiceError> {
        Ok(self.broker.nonce((self.clock)())?)
    }

    /// Decides a transfer of `key_id`, and answers only once the decision is in the audit log.
    /// CPU work (signatures, certificate chains, RSA): call it off the async workers.
    pub fn transfer(
        &self,
        key_id: &str,
        request: &TransferRequest,
    ) -> Result<WrappedKey, ServiceError> {
        let (outcome, decision) = self.broker.transfer(key_id, request, (self.clock)());
        // Fail closed: no answer, and above all no key, without its audit record.
        self.audit.record(&decision)?;
        let (wrapped, _claims) = outcome?;
        Ok(wrapped)
    }
}
