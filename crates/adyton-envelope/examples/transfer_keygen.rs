//! Times the making of a transfer key pair of each kind (median of 20), the cost that the
//! protected cold start pays before its key transfer: `cargo run --release -p adyton-envelope
//! --example transfer_keygen [RUNS]`.

use std::time::{Duration, Instant};

use adyton_envelope::wrap::{TeeKeyPair, TransferKeyKind};

fn main() -> Result<(), adyton_envelope::EnvelopeError> {
    let runs = std::env::args()
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20);
    for kind in [TransferKeyKind::Rsa3072, TransferKeyKind::P384] {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let pair = TeeKeyPair::generate_kind(kind)?;
            times.push(started.elapsed());
            drop(pair);
        }
        times.sort();
        let total: Duration = times.iter().sum();
        println!(
            "{kind:>8}: median {:?}, min {:?}, max {:?}, mean {:?} over {runs} runs",
            times[runs / 2],
            times[0],
            times[runs - 1],
            total / u32::try_from(runs).unwrap_or(u32::MAX),
        );
    }
    Ok(())
}
