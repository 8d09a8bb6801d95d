//! Integration tests of the clients: attested TLS handshakes over real loopback sockets.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attested_tls;
mod collateral;
mod gpus;
/// The local imitation of Intel's PCS and AMD's KDS, shared with adyton-attest's tests.
#[path = "../../../adyton-attest/tests/it/pcs_imitation.rs"]
mod pcs_imitation;
