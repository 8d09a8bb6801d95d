//! Integration tests of the inference server.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batching;
mod coco;
mod collateral;
mod device;
mod engines;
mod gpus;
mod gramine;
mod http;
mod limits;
mod onnx;
mod openapi;
/// The local imitation of Intel's PCS and AMD's KDS, shared with adyton-attest's tests.
#[path = "../../../adyton-attest/tests/it/pcs_imitation.rs"]
mod pcs_imitation;
mod pull;
mod refusals;
mod runtime;
mod support;
mod tcb;
