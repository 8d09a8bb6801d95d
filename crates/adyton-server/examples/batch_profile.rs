//! What a row costs tract at each batch size, on the symbolic plan the server runs and on plans
//! compiled for the concrete shape: why a batch of 8 costs more per row than one row does, and
//! why preferred batch sizes get plans of their own (`runtime::tract`, `batching`).
//!
//!     cargo run --release -p adyton-server --example batch_profile -- \
//!         target/models/paraphrase-MiniLM-L3-v2.onnx 128 8
//!
//! Prints, per operator kind, milliseconds per row at batch 1 and at the batch given (medians of
//! 15 rounds, the plans in turn). With `TOTALS=1`, milliseconds per row at batches 1, 2, 4 and 8
//! instead, as this thread's CPU time (from `/proc/thread-self/schedstat`, so that other load on
//! the machine weighs less); with `ONLY_BATCH=1`, the concrete plans bind the batch alone and keep
//! the sequence symbolic. The model's inputs are `input_ids` and `attention_mask`, INT64
//! `[batch, sequence]`; one thread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::HashMap;
use tract_onnx::tract_core::plan::{eval, SimpleState};

fn inputs(batch: usize, seq: usize) -> TVec<TValue> {
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| (i as i64 * 37) % 1000 + 100)
        .collect();
    let ids = tract_ndarray::Array2::from_shape_vec((batch, seq), ids).unwrap();
    let mask = tract_ndarray::Array2::<i64>::ones((batch, seq));
    tvec![
        Tensor::from(ids).into_tvalue(),
        Tensor::from(mask).into_tvalue()
    ]
}

fn profile(
    plan: &Arc<TypedRunnableModel>,
    batch: usize,
    seq: usize,
    runs: usize,
) -> BTreeMap<String, f64> {
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut state = SimpleState::new(plan).unwrap();
    for r in 0..runs + 1 {
        let mut local: BTreeMap<String, f64> = BTreeMap::new();
        state
            .run_plan_with_eval(inputs(batch, seq), |ctx, st, node, input| {
                let t = Instant::now();
                let out = eval(ctx, st, node, input);
                let name = node.op().name().to_string();
                *local.entry(name).or_default() += t.elapsed().as_secs_f64();
                out
            })
            .unwrap();
        if r >= 1 {
            for (k, v) in local {
                *totals.entry(k).or_default() += v;
            }
        }
    }
    for v in totals.values_mut() {
        *v = *v * 1e3 / (runs * batch) as f64;
    }
    totals
}

/// This thread's time on a CPU, in seconds.
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let seq: usize = args[2].parse().unwrap();
    let big: usize = args[3].parse().unwrap();
    let typed = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_typed()
        .unwrap();
    let sym = typed
        .clone()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let only_batch = std::env::var("ONLY_BATCH").is_ok();
    let concrete = |b: usize| {
        let mut values = HashMap::default();
        let dims: &[usize] = if only_batch { &[b] } else { &[b, seq] };
        for (input, dims) in [(0usize, dims)] {
            let fact = typed.input_fact(input).unwrap().clone();
            for (d, &s) in fact.shape.iter().zip(dims) {
                if let TDim::Sym(sym) = d {
                    values.insert(sym.clone(), s.to_dim());
                }
            }
        }
        typed
            .set_symbols(&values)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
    };
    if std::env::var("TOTALS").is_ok() {
        let sizes = [1usize, 2, 4, 8];
        let conc: Vec<_> = sizes.iter().map(|&b| concrete(b)).collect();
        let mut t: Vec<Vec<f64>> = vec![Vec::new(); 8];
        for _ in 0..12 {
            for (j, &b) in sizes.iter().enumerate() {
                for (k, plan) in [&sym, &conc[j]].into_iter().enumerate() {
                    let mut state = SimpleState::new(plan).unwrap();
                    state.run(inputs(b, seq)).unwrap();
                    let reps = 8 / b;
                    let started = cpu();
                    for _ in 0..reps {
                        state.run(inputs(b, seq)).unwrap();
                    }
                    t[j * 2 + k].push((cpu() - started) * 1e3 / 8.0);
                }
            }
        }
        for (j, &b) in sizes.iter().enumerate() {
            for (k, l) in ["sym", "conc"].iter().enumerate() {
                let v = &mut t[j * 2 + k];
                v.sort_by(f64::total_cmp);
                println!(
                    "{l} b{b}: {:.2} ms/row (median), min {:.2}",
                    v[v.len() / 2],
                    v[0]
                );
            }
        }
        return;
    }
    let c1 = concrete(1);
    let cb = concrete(big);
    let rounds = 15;
    let plans = [
        ("sym b1", &sym, 1),
        ("sym bB", &sym, big),
        ("conc b1", &c1, 1),
        ("conc bB", &cb, big),
    ];
    let mut all: Vec<BTreeMap<String, Vec<f64>>> = plans.iter().map(|_| BTreeMap::new()).collect();
    for _ in 0..rounds {
        for (i, (_, plan, b)) in plans.iter().enumerate() {
            let runs = if *b == 1 { 4 } else { 1 };
            for (k, v) in profile(plan, *b, seq, runs) {
                all[i].entry(k).or_default().push(v);
            }
        }
    }
    let p: Vec<(&str, BTreeMap<String, f64>)> = plans
        .iter()
        .zip(all)
        .map(|((l, _, _), m)| {
            (
                *l,
                m.into_iter()
                    .map(|(k, mut v)| {
                        v.sort_by(f64::total_cmp);
                        (k, v[v.len() / 2])
                    })
                    .collect(),
            )
        })
        .collect();
    let mut keys: Vec<&String> = p[0]
        .1
        .keys()
        .chain(p[1].1.keys())
        .chain(p[3].1.keys())
        .collect();
    keys.sort();
    keys.dedup();
    println!(
        "{:30} {:>9} {:>9} {:>9} {:>9}   (ms per row)",
        "op", p[0].0, p[1].0, p[2].0, p[3].0
    );
    let mut sums = [0f64; 4];
    for k in keys {
        let v: Vec<f64> = p.iter().map(|(_, m)| *m.get(k).unwrap_or(&0.0)).collect();
        for (s, x) in sums.iter_mut().zip(&v) {
            *s += x;
        }
        println!("{k:30} {:9.3} {:9.3} {:9.3} {:9.3}", v[0], v[1], v[2], v[3]);
    }
    println!(
        "{:30} {:9.3} {:9.3} {:9.3} {:9.3}",
        "total", sums[0], sums[1], sums[2], sums[3]
    );
}
