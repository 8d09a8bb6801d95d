//! Integration tests of the inference server.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batching;
mod device;
mod engines;
mod gramine;
mod http;
mod limits;
mod onnx;
mod openapi;
mod pull;
mod refusals;
mod runtime;
mod support;
mod tcb;
