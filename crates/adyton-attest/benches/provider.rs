//! What getting collateral costs a verification: the recorded SGX and TDX quotes verified through
//! a `CollateralProvider` whose source is the local imitation of Intel's PCS (HTTP on loopback,
//! so the network part is the least it can be), with a cold cache (a new provider for each
//! verification: four requests), a warm in-memory cache, and the cache directory after a
//! restart. Run with `cargo bench -p adyton-attest --bench provider`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/pcs_imitation.rs"]
mod pcs_imitation;

use std::time::{Duration, Instant};

use adyton_attest::pccs::FetchOptions;
use adyton_attest::provider::{CollateralOrigin, CollateralProvider, ProviderConfig};
use adyton_attest::{Evidence, TeeKind};

use pcs_imitation::{Sample, Server};

/// 2025-07-01T00:00:00Z: inside the validity of both recorded collaterals.
const FIXED_TIME: u64 = 1_751_328_000;

/// Median and 99th percentile of `runs` calls of `f`, in milliseconds.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(samples[runs / 2]), ms(samples[runs * 99 / 100]))
}

fn main() {
    let runs: usize = std::env::var("ADYTON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut routes = Sample::sgx().routes();
    routes.extend(Sample::tdx().routes());
    let server = Server::start(routes);
    let config = |cache: Option<&std::path::Path>| {
        let mut config = ProviderConfig::new()
            .with_pccs_url(server.url())
            .with_fetch_options(FetchOptions::default());
        if let Some(dir) = cache {
            config = config.with_cache_dir(dir);
        }
        config
    };

    println!("| evidence | collateral | p50 ms | p99 ms |");
    println!("| --- | --- | ---: | ---: |");
    for (name, sample, tee) in [
        ("SGX", Sample::sgx(), TeeKind::Sgx),
        ("TDX", Sample::tdx(), TeeKind::Tdx),
    ] {
        let evidence = Evidence {
            tee,
            quote: sample.quote.clone(),
            certificates: None,
            gpus: Vec::new(),
        };
        let verify = |provider: &CollateralProvider, origin: CollateralOrigin| {
            let (_, used) = provider.verify(&evidence, FIXED_TIME).unwrap();
            assert_eq!(used.origin, origin);
        };

        let (p50, p99) = time(runs, || {
            let cold = CollateralProvider::new(config(None)).unwrap();
            verify(&cold, CollateralOrigin::Network);
        });
        println!("| {name} | cold: fetched from the PCS on loopback | {p50:.2} | {p99:.2} |");

        let dir = tempfile::tempdir().unwrap();
        CollateralProvider::new(config(Some(dir.path())))
            .unwrap()
            .verify(&evidence, FIXED_TIME)
            .unwrap();
        let (p50, p99) = time(runs, || {
            let restarted = CollateralProvider::new(config(Some(dir.path()))).unwrap();
            verify(&restarted, CollateralOrigin::Cache);
        });
        println!("| {name} | after a restart: the cache directory | {p50:.2} | {p99:.2} |");

        let warm = CollateralProvider::new(config(None)).unwrap();
        verify(&warm, CollateralOrigin::Network);
        let (p50, p99) = time(runs * 10, || verify(&warm, CollateralOrigin::Cache));
        println!("| {name} | warm: the in-memory cache | {p50:.2} | {p99:.2} |");
    }
}
