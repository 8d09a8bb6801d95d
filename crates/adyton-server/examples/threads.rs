//! Intra-op threads on the tract engine: the latency of one client (median and 99th percentile
//! of 30 runs) and the throughput of 8 threads calling `run` at once, for one thread per request,
//! a pool of as many threads as cores for every request, and the engine's default (that pool for
//! a request that runs alone, its own thread for a request that runs while others do). The
//! settings take turns, five runs at a time, so that other load on the machine weighs on each
//! alike.
//!
//!     scripts/fetch_models
//!     cargo run --release -p adyton-server --example threads -- \
//!         target/models/paraphrase-MiniLM-L3-v2.onnx:input_ids=1x128,attention_mask=1x128 \
//!         target/models/fr_feature.onnx:input=1x3x112x112

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adyton_server::runtime::tract::{threads::default_threads, TractEngine};
use adyton_server::runtime::{Engine, LoadOptions, LoadedModel, Tensor};
use zeroize::Zeroizing;

const CLIENTS: usize = 8;
const ROUNDS: usize = 30;

fn inputs(model: &dyn LoadedModel, shapes: &BTreeMap<String, Vec<usize>>) -> Vec<Tensor> {
    model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape = shapes[&spec.name].clone();
            let bytes = shape.iter().product::<usize>() * spec.datatype.element_size().unwrap();
            Tensor::from_le_bytes(spec.datatype, shape, Zeroizing::new(vec![0; bytes])).unwrap()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    println!("| model | threads | 1 client p50 | 1 client p99 | {CLIENTS} clients, requests/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for arg in std::env::args().skip(1) {
        let (path, shapes) = arg.split_once(':').expect("MODEL.onnx:name=AxB,...");
        let shapes: BTreeMap<String, Vec<usize>> = shapes
            .split(',')
            .map(|pair| {
                let (name, dims) = pair.split_once('=').unwrap();
                (
                    name.to_owned(),
                    dims.split('x').map(|d| d.parse().unwrap()).collect(),
                )
            })
            .collect();
        let bytes = std::fs::read(path).expect("the model reads");
        let name = std::path::Path::new(path)
            .file_stem()
            .unwrap()
            .to_string_lossy();
        let settings = [Some(1), Some(default_threads()), None];
        let models: Vec<_> = settings
            .iter()
            .map(|&threads| {
                let options = LoadOptions {
                    threads,
                    ..LoadOptions::default()
                };
                let model = TractEngine::new().load_with(&bytes, &options).unwrap();
                for _ in 0..3 {
                    model.run(inputs(&*model, &shapes)).unwrap();
                }
                model
            })
            .collect();
        // The settings take turns, a few runs at a time, so that the machine's other load
        // weighs on each alike.
        let mut one = vec![Vec::new(); settings.len()];
        let mut busy = vec![(0usize, Duration::ZERO); settings.len()];
        for _ in 0..ROUNDS / 5 {
            for (index, model) in models.iter().enumerate() {
                for _ in 0..5 {
                    let inputs = inputs(&**model, &shapes);
                    let started = Instant::now();
                    model.run(inputs).unwrap();
                    one[index].push(started.elapsed());
                }
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..CLIENTS {
                        let model = Arc::clone(model);
                        let shapes = &shapes;
                        scope.spawn(move || {
                            for _ in 0..5 {
                                model.run(inputs(&*model, shapes)).unwrap();
                            }
                        });
                    }
                });
                busy[index].0 += CLIENTS * 5;
                busy[index].1 += started.elapsed();
            }
        }
        for (index, threads) in settings.iter().enumerate() {
            one[index].sort();
            let throughput = busy[index].0 as f64 / busy[index].1.as_secs_f64();
            let label = match threads {
                Some(n) => n.to_string(),
                None => format!("default (adaptive, {})", default_threads()),
            };
            println!(
                "| {name} | {label} | {:.2} ms | {:.2} ms | {throughput:.1} |",
                percentile(&one[index], 50),
                percentile(&one[index], 99)
            );
        }
    }
}
