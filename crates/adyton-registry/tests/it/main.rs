//! Integration tests of the registry: the blob store suite (filesystem and S3), and the HTTP API
//! over real sockets on 127.0.0.1 with the blocking client.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod http;
mod openapi;
mod store;
mod support;
