//! Integration tests of the envelope formats and key wrapping.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kat;
mod properties;
mod sealed;
mod support;
mod tamper_v2;
mod whole_v2;
