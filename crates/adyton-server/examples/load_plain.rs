//! Loads a plaintext ONNX file with the engine, the way plain tract would, and prints the time
//! and the peak resident memory: the baseline of the protected-model pull's cold start.
//!
//!     cargo run --release -p adyton-server --example load_plain -- MODEL.onnx

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::Engine;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: load_plain MODEL.onnx");
    let started = Instant::now();
    let bytes = std::fs::read(&path).expect("the model file reads");
    let read = started.elapsed();
    let model = TractEngine::new().load(&bytes).expect("the model loads");
    drop(bytes);
    let total = started.elapsed();
    println!(
        "{{\"read_ms\": {}, \"load_ms\": {}, \"plan\": \"{}\", \"peak_rss_kib\": {}}}",
        read.as_millis(),
        (total - read).as_millis(),
        model.plan().as_str(),
        peak_rss_kib()
    );
}
