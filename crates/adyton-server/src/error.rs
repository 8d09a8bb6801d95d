//! [`ServerError`]: why the inference server refused or failed a request, one variant per outcome.
//!
//! The service ([`crate::service::Server`]) and the HTTP adapters ([`crate::http`]) both return
//! it; `http` alone maps it to statuses, in one place. The messages are what clients read in
//! `{"error": "..."}`, except for the server's own failures (500), whose details are logged and
//! never returned. No message carries a tensor value, a weight or a token.

use crate::batching::BatchError;
use crate::protocol::{OutputLimitError, ProtocolError};
use crate::repository::RepositoryError;
use crate::runtime::{EngineError, InputError};

/// Why a request to the inference server was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The request is malformed (its query, its path, its JSON body); the message says how.
    #[error("{reason}")]
    BadRequest {
        /// What is wrong, for the client.
        reason: String,
    },

    /// A header the server reads is given more than once: where a body is split or who is asking
    /// must not depend on which of two values a proxy and this server each take.
    #[error("the {header} header is given more than once")]
    RepeatedHeader {
        /// The header's name.
        header: String,
    },

    /// A header that holds a byte count holds something else.
    #[error("the {header} header must be one byte count")]
    BadByteCount {
        /// The header's name.
        header: String,
    },

    /// A body is over its limit (declared, or found while reading).
    #[error("the {what} is over the limit of {limit} bytes")]
    TooLarge {
        /// The body: "request body", "model", "pull request".
        what: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },

    /// A body could not be read from the connection.
    #[error("the {what} could not be read: {reason}")]
    Unreadable {
        /// The body.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// No endpoint has this method and path.
    #[error("no such endpoint")]
    NoSuchEndpoint,

    /// Uploads, pulls and deletes are refused: the server has no admin token.
    #[error("model upload and delete are disabled: the server has no token configured")]
    AdminDisabled,

    /// An admin request without a bearer token.
    #[error("this needs Authorization: Bearer <token>")]
    MissingToken,

    /// An admin request whose bearer token is not the server's.
    #[error("the token is not valid")]
    InvalidToken,

    /// The models' repository refused: an unknown model or version, a model not ready, a version
    /// taken, a full server, a bad name.
    #[error(transparent)]
    Repository(#[from] RepositoryError),

    /// An upload's `version` is not a positive integer.
    #[error("version must be a positive integer")]
    BadVersion,

    /// An uploaded model does not load (not ONNX, over the load budget, unsupported).
    #[error("{0}")]
    Load(#[source] EngineError),

    /// Pulls are refused: the server has no registry and key broker.
    #[error("this server has no registry and key broker configured for pulls")]
    PullsDisabled,

    /// A pull's `model_id` is not a registry id.
    #[error("model_id must be 1 to 128 letters, digits, '.', '_' or '-'")]
    BadModelId,

    /// A pull's `input_shapes` are out of bounds; the message names the input.
    #[error("{reason}")]
    BadInputShapes {
        /// What is wrong.
        reason: String,
    },

    /// A pull of this name is already under way.
    #[error("model '{name}' is already being pulled")]
    PullInProgress {
        /// The model's name.
        name: String,
    },

    /// The server has no attested TLS identity, so no evidence to give.
    #[error("this server has no attested TLS identity")]
    NoAttestation,

    /// The server has no collateral to serve: its evidence needs none (SIM) or brings its own
    /// (SNP with its VCEK), or no source is configured (`pccs_url`, `kds_url`).
    #[error(
        "this server serves no collateral for its evidence (SIM evidence, or no pccs_url or \
         kds_url configured): get it from a collateral source of your own"
    )]
    NoCollateral,

    /// The collateral of the server's evidence could not be fetched from its source, and none is
    /// cached. Why is logged by the service, not returned (it names the server's PCCS).
    #[error("the collateral of this server's evidence cannot be fetched now; try again later")]
    CollateralUnavailable,

    /// The nonce for fresh evidence is missing, not hexadecimal, or not of a length the TEE takes.
    #[error("{reason}")]
    BadNonce {
        /// Why.
        reason: String,
    },

    /// The TEE failed to make evidence.
    #[error("evidence failed: {reason}")]
    Evidence {
        /// The TEE's words: logged, never returned.
        reason: String,
    },

    /// An infer request does not follow the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),

    /// An infer request asks for an output the model does not have.
    #[error("output '{name}' is not an output of this model (outputs: {outputs})")]
    UnknownOutput {
        /// The output asked for.
        name: String,
        /// The model's outputs, comma-separated.
        outputs: String,
    },

    /// An infer request's inputs do not match the model's declared inputs.
    #[error(transparent)]
    Input(#[from] InputError),

    /// Every inference worker and queue slot is taken; the client may come back.
    #[error("the server is busy: every inference worker and queue slot is taken")]
    Busy {
        /// Seconds the client is told to wait.
        retry_after_secs: u64,
    },

    /// The inference workers are closed: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,

    /// The engine refused or failed a run: a refusal of the inputs (400), a limit on its work
    /// (429), an output over the limit (422), or its own failure (500, a panic included).
    #[error(transparent)]
    Engine(EngineError),

    /// The outputs asked for are over the output limits.
    #[error(transparent)]
    OutputLimit(#[from] OutputLimitError),

    /// A batching model's batcher could not be started.
    #[error("the model's batcher could not be started: {0}")]
    Batcher(#[source] BatchError),

    /// A task on a blocking thread ended without an answer (a panic).
    #[error("{task} failed: the worker stopped")]
    WorkerStopped {
        /// What the task was doing: "loading", "evidence", "collateral".
        task: &'static str,
    },
}

impl ServerError {
    /// A malformed request.
    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        Self::BadRequest {
            reason: reason.into(),
        }
    }
}
