//! Integration tests of the key broker library.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod answer;
mod audit;
mod collateral;
mod gpu;
mod http;
mod offline;
mod openapi;
/// The local imitation of Intel's PCS and AMD's KDS, shared with adyton-attest's tests.
#[path = "../../../adyton-attest/tests/it/pcs_imitation.rs"]
mod pcs_imitation;
mod postgres;
mod store;
mod transfer;
