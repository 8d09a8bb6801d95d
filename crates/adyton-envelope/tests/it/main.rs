//! Integration tests of the envelope formats and key wrapping.

mod kat;
mod properties;
mod support;
mod tamper_v2;
