//! Which plan the tract engine runs for each real model, and what it costs: the load time, the
//! first request (which compiles a plan per shape, if the model has them), and the in-process
//! latency after it (median of 20 runs, one intra-op thread). For models with symbolic
//! dimensions, it also times tract's symbolic optimised plan against a plan compiled for the
//! concrete shape, which is how the engine's rule (one symbolic plan when tract optimises it) was
//! chosen.
//!
//!     scripts/fetch_models
//!     cargo run --release -p adyton-server --example plans -- \
//!         target/models/paraphrase-MiniLM-L3-v2.onnx:input_ids=1x128,attention_mask=1x128 \
//!         target/models/fr_feature.onnx:input=1x3x112x112 \
//!         target/models/open_nsfw.onnx:input_0=1x224x224x3 \
//!         target/models/ch_PP-OCRv4_rec_infer.onnx:x=1x3x48x320

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{Engine, LoadOptions, LoadedModel, Tensor};
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec, Tensor as TractTensor,
    ToDim, TypedRunnableModel,
};
use tract_onnx::tract_core::internal::HashMap;
use zeroize::Zeroizing;

fn median(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

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

/// The medians of two plans run in turn, so that the machine's load weighs on both alike.
fn alternating(
    a: &std::sync::Arc<TypedRunnableModel>,
    b: &std::sync::Arc<TypedRunnableModel>,
    values: &TVec<TValue>,
) -> (f64, f64) {
    let time = |plan: &std::sync::Arc<TypedRunnableModel>| {
        let started = Instant::now();
        plan.run(values.clone()).unwrap();
        started.elapsed()
    };
    for _ in 0..3 {
        time(a);
        time(b);
    }
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        runs_a.push(time(a));
        runs_b.push(time(b));
    }
    (median(runs_a), median(runs_b))
}

/// tract's symbolic optimised plan against one compiled for `shapes`, on tract directly.
fn symbolic_against_concrete(bytes: &[u8], shapes: &BTreeMap<String, Vec<usize>>) {
    let Ok(typed) = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_typed()
    else {
        println!("  tract directly: the graph cannot be typed without sizes");
        return;
    };
    let mut values = HashMap::default();
    let mut tensors = TVec::new();
    for (index, outlet) in typed.input_outlets().unwrap().iter().enumerate() {
        let name = &typed.nodes()[outlet.node].name;
        let shape = &shapes[name];
        let fact = typed.input_fact(index).unwrap();
        for (dim, &size) in fact.shape.iter().zip(shape) {
            if let tract_onnx::tract_core::internal::TDim::Sym(symbol) = dim {
                values.insert(symbol.clone(), size.to_dim());
            }
        }
        tensors.push(
            TractTensor::zero_dt(fact.datum_type, shape)
                .unwrap()
                .into_tvalue(),
        );
    }
    if values.is_empty() {
        return;
    }
    let concrete = typed.set_symbols(&values).unwrap();
    let started = Instant::now();
    let symbolic = typed
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable());
    let symbolic_compile = started.elapsed();
    let started = Instant::now();
    let concrete = concrete.into_optimized().and_then(|m| m.into_runnable());
    let concrete_compile = started.elapsed();
    match (symbolic, concrete) {
        (Ok(symbolic), Ok(concrete)) => {
            let (symbolic_ms, concrete_ms) = alternating(&symbolic, &concrete, &tensors);
            println!(
                "  tract directly: symbolic optimised plan {symbolic_ms:.2} ms (compiled in {} ms), \
                 concrete plan {concrete_ms:.2} ms (compiled in {} ms), medians of 60 runs each, \
                 alternating",
                symbolic_compile.as_millis(),
                concrete_compile.as_millis()
            )
        }
        (Err(_), Err(_)) => {
            // What the engine did before (the symbolic decluttered plan) against what it does
            // now (a concrete plan, optimised without tract's ChangeAxes pass).
            let before = typed
                .clone()
                .into_decluttered()
                .and_then(|m| m.into_runnable());
            let mut now = typed.set_symbols(&values).unwrap();
            let mut declutter = tract_onnx::tract_core::optim::Optimizer::declutter();
            declutter
                .passes
                .retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
            let now = declutter
                .optimize(&mut now)
                .and_then(|()| now.optimize())
                .and_then(|()| now.into_runnable());
            if let (Ok(before), Ok(now)) = (before, now) {
                let (before_ms, now_ms) = alternating(&before, &now, &tensors);
                println!(
                    "  tract directly: symbolic and concrete optimisation fail; symbolic \
                     decluttered plan {before_ms:.2} ms, concrete plan optimised without \
                     ChangeAxes {now_ms:.2} ms, medians of 60 runs each, alternating"
                );
            }
        }
        (symbolic, concrete) => println!(
            "  tract directly: symbolic optimisation {}, concrete optimisation {}",
            if symbolic.is_ok() { "works" } else { "fails" },
            if concrete.is_ok() { "works" } else { "fails" },
        ),
    }
}

fn main() {
    for arg in std::env::args().skip(1) {
        let (path, shapes) = arg.split_once(':').expect("MODEL.onnx:name=AxB,...");
        let shapes: BTreeMap<String, Vec<usize>> = shapes
            .split(',')
            .map(|pair| {
                let (name, dims) = pair.split_once('=').unwrap();
                let dims = dims.split('x').map(|d| d.parse().unwrap()).collect();
                (name.to_owned(), dims)
            })
            .collect();
        let bytes = std::fs::read(path).expect("the model reads");
        let options = LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        };
        let started = Instant::now();
        let model = TractEngine::new().load_with(&bytes, &options).unwrap();
        let load = started.elapsed();
        let started = Instant::now();
        model.run(inputs(&*model, &shapes)).unwrap();
        let first = started.elapsed();
        let latency = median(
            (0..20)
                .map(|_| {
                    let inputs = inputs(&*model, &shapes);
                    let started = Instant::now();
                    model.run(inputs).unwrap();
                    started.elapsed()
                })
                .collect(),
        );
        println!(
            "{path}: plan {}, load {} ms, first request {} ms, then {latency:.2} ms (p50, 1 thread); {:?}",
            model.plan().as_str(),
            load.as_millis(),
            first.as_millis(),
            model.plan_stats()
        );
        symbolic_against_concrete(&bytes, &shapes);
    }
}
