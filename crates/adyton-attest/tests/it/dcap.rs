//! Tests: dcap.
