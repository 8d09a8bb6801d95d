//! Integration tests of the clients: attested TLS handshakes over real loopback sockets.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attested_tls;
