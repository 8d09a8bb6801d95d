//! The resident memory of a model with plans per shape: after loading, and after each of 8
//! shapes has compiled and run once, next to the engine's estimate of the cached plans
//! (`plan_stats().cached_bytes`).
//!
//!     scripts/fetch_models
//!     cargo run --release -p adyton-server --example plan_memory -- \
//!         target/models/ch_PP-OCRv4_rec_infer.onnx x 1x3x48x{} 160,200,240,280,320,360,400,440

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{human_bytes, DataType, Engine, LoadOptions, Tensor};
use zeroize::Zeroizing;

fn rss_bytes() -> u128 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u128>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, input, pattern, values] = &args[..] else {
        panic!("usage: plan_memory MODEL.onnx INPUT SHAPE_WITH_{{}} V1,V2,...");
    };
    let bytes = std::fs::read(path).unwrap();
    let before = rss_bytes();
    let options = LoadOptions {
        threads: Some(1),
        ..LoadOptions::default()
    };
    let model = TractEngine::new().load_with(&bytes, &options).unwrap();
    drop(bytes);
    let loaded = rss_bytes();
    println!(
        "{path}: plan {}, resident {} after loading ({} more than before)",
        model.plan().as_str(),
        human_bytes(loaded),
        human_bytes(loaded.saturating_sub(before))
    );
    assert_eq!(model.signature().inputs[0].name, *input);
    for value in values.split(',') {
        let shape: Vec<usize> = pattern
            .replace("{}", value)
            .split('x')
            .map(|d| d.parse().unwrap())
            .collect();
        let len = shape.iter().product::<usize>() * 4;
        let x = Tensor::from_le_bytes(DataType::F32, shape.clone(), Zeroizing::new(vec![0; len]))
            .unwrap();
        model.run(vec![x]).unwrap();
        let stats = model.plan_stats();
        println!(
            "  after {shape:?}: {} plans, estimated {}, resident {} ({} more than loaded)",
            stats.cached_plans,
            human_bytes(u128::from(stats.cached_bytes)),
            human_bytes(rss_bytes()),
            human_bytes(rss_bytes().saturating_sub(loaded))
        );
    }
}
