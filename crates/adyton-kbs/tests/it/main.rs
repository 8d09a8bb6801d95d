//! Integration tests of the key broker library.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod audit;
mod http;
mod offline;
mod openapi;
mod postgres;
mod store;
mod transfer;
