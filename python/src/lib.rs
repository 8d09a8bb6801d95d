//! `adyton._adyton`, the native module of the Adyton Python SDK (`python/adyton`).
//!
//! Everything that decides trust runs here, in Rust: the connection is made by
//! `adyton_client::ServerClient`, whose TLS verifier checks the server's attestation evidence
//! against the policy during the handshake, before any request is sent. Python only passes
//! arguments in and gets numpy arrays and dictionaries back.
//!
//! This crate is outside the workspace (see `python/Cargo.toml`), so it restates the workspace's
//! lints below. It cannot forbid `unsafe_code`: PyO3's and rust-numpy's macros expand to unsafe
//! code (the CPython ABI). The crate's own code has no `unsafe` block.

#![warn(missing_debug_implementations)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connection;
mod encrypt;
mod errors;
mod pyjson;
mod tensors;

use pyo3::prelude::*;

/// The native module. `adyton/__init__.py` re-exports it; users import `adyton`.
#[pymodule]
fn _adyton(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(py, m)?;
    m.add_class::<connection::Connection>()?;
    m.add_function(wrap_pyfunction!(connection::connect, m)?)?;
    m.add_function(wrap_pyfunction!(encrypt::encrypt_model, m)?)?;
    Ok(())
}
