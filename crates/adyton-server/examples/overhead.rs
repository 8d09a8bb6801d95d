//! The tract engine's cost per request around the model itself, on a 1 MiB input: converting
//! the input into tract's tensor and the output back, the way the engine did before (element by
//! element into a new `Vec`, then into a tract tensor, and back element by element) and the way
//! it does now (one copy each way on a little-endian host), and a fresh run state per call
//! against a reused one. The model is `dynamic_batch` of `scripts/make_test_models.py`
//! (x [batch, 4] to y [batch, 2]), at a batch of 65536: 1 MiB in, 512 KiB out.
//!
//!     .venv/bin/python scripts/make_test_models.py /tmp/models
//!     cargo run --release -p adyton-server --example overhead -- /tmp/models/dynamic_batch.onnx

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{DataType, Engine, LoadOptions, Tensor, TensorData};
use tract_onnx::prelude::{
    tvec, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor,
    TypedSimpleState,
};
use zeroize::Zeroizing;

const BATCH: usize = 65536;
const ROUNDS: usize = 50;

fn median(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs[runs.len() / 2].as_secs_f64() * 1e3
}

fn timed(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    median(
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .collect(),
    )
}

/// The input as the engine converted it before: element by element into a `Vec`, then copied
/// into a tract tensor.
fn input_before(bytes: &[u8]) -> TractTensor {
    let elements: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect();
    TractTensor::from_shape(&[BATCH, 4], &elements).unwrap()
}

/// The input as the engine converts it now: one copy.
fn input_now(bytes: &[u8]) -> TractTensor {
    let mut tensor =
        TractTensor::zero_dt(tract_onnx::prelude::DatumType::F32, &[BATCH, 4]).unwrap();
    tensor
        .try_as_plain_ram_mut()
        .unwrap()
        .as_bytes_mut()
        .copy_from_slice(bytes);
    tensor
}

/// The output as the engine converted it before: element by element.
fn output_before(tensor: &TractTensor) -> Zeroizing<Vec<u8>> {
    let view = tensor.to_plain_array_view::<f32>().unwrap();
    let mut bytes = Zeroizing::new(Vec::with_capacity(view.len() * 4));
    for &element in view.iter() {
        bytes.extend_from_slice(&element.to_le_bytes());
    }
    bytes
}

/// The output as the engine converts it now: one copy.
fn output_now(tensor: &TractTensor) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(tensor.try_as_plain_ram().unwrap().as_bytes().to_vec())
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: overhead dynamic_batch.onnx");
    let onnx = std::fs::read(&path).unwrap();
    let bytes: Vec<u8> = (0..BATCH * 4)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let input = input_now(&bytes);
    assert_eq!(input, input_before(&bytes));

    let runnable = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let output = runnable.run(tvec![input.clone().into_tvalue()]).unwrap();
    let output: TractTensor = (*output[0]).clone();
    assert_eq!(output_now(&output), output_before(&output));

    let input_old = timed(|| drop(input_before(&bytes)));
    let input_new = timed(|| drop(input_now(&bytes)));
    let output_old = timed(|| drop(output_before(&output)));
    let output_new = timed(|| drop(output_now(&output)));
    let fresh = timed(|| {
        runnable.run(tvec![input.clone().into_tvalue()]).unwrap();
    });
    let mut state = TypedSimpleState::new(&runnable).unwrap();
    let reused = timed(|| {
        state.run(tvec![input.clone().into_tvalue()]).unwrap();
    });
    let model = TractEngine::new()
        .load_with(
            &onnx,
            &LoadOptions {
                threads: Some(1),
                ..LoadOptions::default()
            },
        )
        .unwrap();
    let engine = timed(|| {
        let x = Tensor::from_le_bytes(DataType::F32, vec![BATCH, 4], Zeroizing::new(bytes.clone()))
            .unwrap();
        let y = model.run(vec![x]).unwrap();
        assert!(matches!(y[0].data(), TensorData::Fixed(b) if b.len() == BATCH * 8));
    });
    let copy = timed(|| drop(Zeroizing::new(bytes.clone())));
    println!("1 MiB input, 512 KiB output (dynamic_batch, batch {BATCH}), medians of {ROUNDS}:");
    println!("  input conversion:  before {input_old:.3} ms, now {input_new:.3} ms");
    println!("  output conversion: before {output_old:.3} ms, now {output_new:.3} ms");
    println!("  tract run:         fresh state {fresh:.3} ms, reused state {reused:.3} ms");
    println!(
        "  engine run, now:   {engine:.3} ms (of which {copy:.3} ms is this example's copy of the request bytes)"
    );
    println!(
        "  overhead per request: before {:.3} ms, now {:.3} ms",
        input_old + output_old + (fresh - reused).max(0.0),
        input_new + output_new
    );
}
