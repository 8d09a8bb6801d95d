//! Collateral over HTTP: Intel's PCS/PCCS API for DCAP, AMD's KDS for SNP, with caching.
