//! Tests: snp.
