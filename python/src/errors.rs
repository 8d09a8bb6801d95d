//! The SDK's exceptions, and the mapping from the Rust client's errors to them.
//!
//! One class per outcome a caller handles differently: the server is not what it claims
//! (`AttestationError`), it is genuine but not what the policy accepts (`PolicyError`), it
//! answered with an error status (`ServerError`, with `.status`), or the caller's own arguments
//! were refused before anything was sent (`InputError`). Everything else (the network, an
//! unexpected answer) is the base class `AdytonError`.

use adyton_client::ClientError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    adyton,
    AdytonError,
    PyException,
    "Base class of every error the Adyton SDK raises."
);
create_exception!(
    adyton,
    AttestationError,
    AdytonError,
    "The server's attestation evidence is missing, not genuine, or not bound to its TLS key."
);
create_exception!(
    adyton,
    PolicyError,
    AdytonError,
    "The policy is invalid, or the verified claims do not satisfy it."
);
create_exception!(
    adyton,
    ServerError,
    AdytonError,
    "The server answered with an error status; `.status` holds the HTTP status."
);
create_exception!(
    adyton,
    InputError,
    AdytonError,
    "An argument refused before any request was sent: a tensor's name, dtype or shape, a path."
);

pub fn register(py: Python<'_>, m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("AdytonError", py.get_type::<AdytonError>())?;
    m.add("AttestationError", py.get_type::<AttestationError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    // A ServerError made by Python code rather than by the SDK still has the attribute.
    py.get_type::<ServerError>().setattr("status", py.None())?;
    Ok(())
}

/// The exception for an error of the Rust client.
pub fn client_error(py: Python<'_>, err: &ClientError) -> PyErr {
    let message = chain(err);
    match err {
        ClientError::Attestation { .. } => AttestationError::new_err(message),
        ClientError::Policy { .. } => PolicyError::new_err(message),
        ClientError::Api { status, .. } => server_error(py, message, *status),
        ClientError::InvalidInput { .. } => InputError::new_err(message),
        _ => AdytonError::new_err(message),
    }
}

/// A `ServerError` carrying `status`.
pub fn server_error(py: Python<'_>, message: String, status: u16) -> PyErr {
    let err = ServerError::new_err(message);
    // Setting an attribute on a fresh exception instance cannot fail short of memory exhaustion;
    // the message still names the status if it does.
    let _ = err.value(py).setattr("status", status);
    err
}

/// An `InputError` with `message`.
pub fn input_error(message: impl Into<String>) -> PyErr {
    InputError::new_err(message.into())
}

/// The error's message followed by the causes its message does not already include.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
