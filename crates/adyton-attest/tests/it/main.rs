//! Integration tests of attestation: real evidence, attesters against imitation directories,
//! policies.

// Tests may unwrap and panic: a failure is the test's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attested_tls;
mod attesters;
mod azure;
mod dcap;
mod nitro;
mod pccs;
mod pcs_imitation;
mod policy;
mod provider;
mod seal;
mod sim;
mod snp;
mod snp_vlek;
