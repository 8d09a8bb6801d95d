//! End-to-end tests of the `adyton` binary, and interoperability with the reference Python code.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attest_cli;
mod client_e2e;
mod connections;
mod demo;
mod interop;
mod kbs_client_cli;
mod kbs_config;
mod kbs_e2e;
mod model_cli;
mod offline;
/// The local imitation of Intel's PCS and AMD's KDS, shared with adyton-attest's tests.
#[path = "../../../adyton-attest/tests/it/pcs_imitation.rs"]
mod pcs_imitation;
mod pipeline_e2e;
mod python_sdk;
mod real_models;
mod registry_e2e;
mod server_e2e;
mod special_outputs;
mod support;
