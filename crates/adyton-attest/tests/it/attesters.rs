//! Tests: attesters.
