//! Dynamic batching over a fake model that doubles its input and records the rows of every run:
//! each caller gets its own rows and its own errors, partial batches are flushed, shapes that
//! differ are not combined, and `max_batch_size` holds.
//!
//! The batches are made deterministic without timing: the test holds the only worker while it
//! queues the requests, so that they all wait in the batcher when the worker is released.

use std::sync::{Arc, Mutex};

use adyton_server::batching::{BatchOptions, BatchRuntime, Batcher, PreferredBatchSizes};
use adyton_server::runtime::{
    DataType, Dim, EngineError, LoadedModel, Plan, Signature, Tensor, TensorData, TensorSpec,
};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Doubles FP32 inputs and echoes BYTES; fails on a negative value and panics on 666.
#[derive(Debug)]
struct Doubler {
    signature: Signature,
    runs: Mutex<Vec<usize>>,
}

impl Doubler {
    fn new(datatype: DataType) -> Arc<Doubler> {
        let spec = |name: &str| TensorSpec {
            name: name.to_owned(),
            datatype,
            shape: Some(vec![Dim::Dynamic, Dim::Dynamic]),
        };
        Arc::new(Doubler {
            signature: Signature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
            runs: Mutex::new(Vec::new()),
        })
    }

    fn runs(&self) -> Vec<usize> {
        self.runs.lock().unwrap().clone()
    }
}

impl LoadedModel for Doubler {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self) -> Plan {
        Plan::Optimized
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let x = &inputs[0];
        self.runs.lock().unwrap().push(x.shape()[0]);
        if x.datatype() == DataType::Bytes {
            return Ok(inputs);
        }
        let values = values(x);
        if values.contains(&666.0) {
            panic!("the fake engine panics");
        }
        if values.iter().any(|v| *v < 0.0) {
            return Err(EngineError::Run {
                reason: "a negative value".to_owned(),
            });
        }
        let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
        Ok(vec![f32s(x.shape(), &doubled)])
    }
}

fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::F32, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    let TensorData::Fixed(bytes) = tensor.data() else {
        panic!("not FP32");
    };
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `rows` rows of `width` values, starting at `first`.
fn rows(rows: usize, width: usize, first: f32) -> Tensor {
    let values: Vec<f32> = (0..rows * width).map(|i| first + i as f32).collect();
    f32s(&[rows, width], &values)
}

struct Setup {
    model: Arc<Doubler>,
    workers: Arc<Semaphore>,
    batcher: Batcher,
    execs: Arc<Mutex<Vec<usize>>>,
}

fn setup(datatype: DataType, max_batch_size: usize, max_queue_delay_us: u64) -> Setup {
    setup_preferring(datatype, max_batch_size, max_queue_delay_us, &[])
}

fn setup_preferring(
    datatype: DataType,
    max_batch_size: usize,
    max_queue_delay_us: u64,
    preferred: &[usize],
) -> Setup {
    let model = Doubler::new(datatype);
    let workers = Arc::new(Semaphore::new(1));
    let execs = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&execs);
    let runtime = BatchRuntime {
        workers: Arc::clone(&workers),
        handle: tokio::runtime::Handle::current(),
        max_elements: 1 << 20,
        on_exec: Arc::new(move |rows| recorded.lock().unwrap().push(rows)),
    };
    let options = BatchOptions {
        max_batch_size,
        max_queue_delay_us,
        preferred_batch_size: PreferredBatchSizes::new(preferred).unwrap(),
    };
    let batcher = Batcher::start("fake", Arc::clone(&model) as _, options, runtime).unwrap();
    Setup {
        model,
        workers,
        batcher,
        execs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_gets_its_own_rows_and_max_batch_size_holds() {
    let s = setup(DataType::F32, 8, 0);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    // 1 + 3 + 2 + 2 rows fill a batch of 8; the next request waits for the next batch, and one
    // of more rows than a batch holds runs alone.
    let sizes = [1, 3, 2, 2, 1, 10];
    let tickets: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| s.batcher.submit(vec![rows(n, 3, 100.0 * i as f32)]))
        .collect();
    drop(held);
    for (i, (ticket, &n)) in tickets.into_iter().zip(&sizes).enumerate() {
        let outputs = ticket.answer().await.outputs.unwrap();
        let expected: Vec<f32> = (0..n * 3)
            .map(|j| 2.0 * (100.0 * i as f32 + j as f32))
            .collect();
        assert_eq!(outputs[0].shape(), &[n, 3], "caller {i}");
        assert_eq!(values(&outputs[0]), expected, "caller {i}");
    }
    assert_eq!(s.model.runs(), vec![8, 1, 10]);
    assert_eq!(*s.execs.lock().unwrap(), vec![8, 1, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_of_different_batch_sizes_get_their_rows() {
    let s = Arc::new(setup(DataType::F32, 6, 200));
    let callers: Vec<_> = (0..12)
        .map(|caller| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for round in 0..10 {
                    let n = 1 + (caller + round) % 4;
                    let first = (caller * 1000 + round * 10) as f32;
                    let answer = s.batcher.infer(vec![rows(n, 2, first)]).await;
                    let outputs = answer.outputs.unwrap();
                    let expected: Vec<f32> = (0..n * 2).map(|j| 2.0 * (first + j as f32)).collect();
                    assert_eq!(values(&outputs[0]), expected, "caller {caller}");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let runs = s.model.runs();
    assert_eq!(
        runs.iter().sum::<usize>(),
        (0..12)
            .map(|c| (0..10).map(|r| 1 + (c + r) % 4).sum::<usize>())
            .sum::<usize>()
    );
    assert!(runs.iter().all(|&r| r <= 6), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_gets_its_own_error_and_the_others_their_rows() {
    let s = setup(DataType::F32, 8, 0);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    let good = s.batcher.submit(vec![rows(2, 2, 1.0)]);
    let bad = s.batcher.submit(vec![f32s(&[1, 2], &[5.0, -1.0])]);
    let panicking = s.batcher.submit(vec![f32s(&[1, 2], &[666.0, 0.0])]);
    let also_good = s.batcher.submit(vec![rows(1, 2, 7.0)]);
    drop(held);
    assert_eq!(
        values(&good.answer().await.outputs.unwrap()[0]),
        vec![2.0, 4.0, 6.0, 8.0]
    );
    let e = bad.answer().await.outputs.unwrap_err().to_string();
    assert!(e.contains("a negative value"), "{e}");
    let e = panicking.answer().await.outputs.unwrap_err().to_string();
    assert!(e.contains("panicked"), "{e}");
    assert_eq!(
        values(&also_good.answer().await.outputs.unwrap()[0]),
        vec![14.0, 16.0]
    );
    // The combined run failed, then each ran alone.
    assert_eq!(s.model.runs(), vec![5, 2, 1, 1, 1]);
    // The model serves on.
    let after = s.batcher.infer(vec![rows(1, 2, 0.0)]).await;
    assert_eq!(values(&after.outputs.unwrap()[0]), vec![0.0, 2.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_to_preferred_sizes_and_each_caller_gets_its_rows() {
    let s = setup_preferring(DataType::F32, 8, 0, &[2, 4]);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    // Nine one-row requests: two batches of the largest preferred size, then the last alone
    // (nothing else waits for it). Then 3 + 2 rows pass the largest preferred size with no
    // prefix of a preferred size, so they run together; the next two rows make a preferred
    // batch, whose failing request gets its own error.
    let mut tickets: Vec<_> = (0..9)
        .map(|i| s.batcher.submit(vec![rows(1, 2, 10.0 * i as f32)]))
        .collect();
    drop(held);
    for (i, ticket) in tickets.drain(..).enumerate() {
        let first = 10.0 * i as f32;
        let outputs = ticket.answer().await.outputs.unwrap();
        assert_eq!(
            values(&outputs[0]),
            vec![2.0 * first, 2.0 * first + 2.0],
            "{i}"
        );
    }
    assert_eq!(s.model.runs(), vec![4, 4, 1]);

    // The last batch may still hold the worker for a moment after it answered.
    let held = Arc::clone(&s.workers).acquire_owned().await.unwrap();
    let three = s.batcher.submit(vec![rows(3, 1, 0.0)]);
    let two = s.batcher.submit(vec![rows(2, 1, 5.0)]);
    let bad = s.batcher.submit(vec![f32s(&[1, 1], &[-1.0])]);
    let good = s.batcher.submit(vec![rows(1, 1, 9.0)]);
    drop(held);
    assert_eq!(
        values(&three.answer().await.outputs.unwrap()[0]),
        vec![0.0, 2.0, 4.0]
    );
    assert_eq!(
        values(&two.answer().await.outputs.unwrap()[0]),
        vec![10.0, 12.0]
    );
    let e = bad.answer().await.outputs.unwrap_err().to_string();
    assert!(e.contains("a negative value"), "{e}");
    assert_eq!(values(&good.answer().await.outputs.unwrap()[0]), vec![18.0]);
    // The batch of two failed, and each of its requests ran again alone.
    assert_eq!(s.model.runs()[3..], [5, 2, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_delay_flushes_a_partial_batch() {
    let s = setup(DataType::F32, 8, 50_000);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    let a = s.batcher.submit(vec![rows(1, 2, 0.0)]);
    let b = s.batcher.submit(vec![rows(2, 2, 10.0)]);
    drop(held);
    // Three rows of eight: the batch goes when the delay has passed, not when it is full.
    assert_eq!(
        values(&a.answer().await.outputs.unwrap()[0]),
        vec![0.0, 2.0]
    );
    assert!(b.answer().await.outputs.is_ok());
    assert_eq!(s.model.runs(), vec![3]);
    // A lone request is answered too.
    assert!(s.batcher.infer(vec![rows(1, 2, 0.0)]).await.outputs.is_ok());
    assert_eq!(s.model.runs(), vec![3, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_other_shapes_are_not_combined() {
    let s = setup(DataType::F32, 8, 0);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    let narrow = s.batcher.submit(vec![rows(1, 2, 0.0)]);
    let wide = s.batcher.submit(vec![rows(1, 3, 0.0)]);
    let narrow_again = s.batcher.submit(vec![rows(2, 2, 4.0)]);
    drop(held);
    assert_eq!(narrow.answer().await.outputs.unwrap()[0].shape(), &[1, 2]);
    assert_eq!(
        values(&wide.answer().await.outputs.unwrap()[0]),
        vec![0.0, 2.0, 4.0]
    );
    assert_eq!(
        values(&narrow_again.answer().await.outputs.unwrap()[0]),
        vec![8.0, 10.0, 12.0, 14.0]
    );
    // The two of width 2 ran together, the one of width 3 alone, after them.
    assert_eq!(s.model.runs(), vec![3, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_tensors_are_batched() {
    let s = setup(DataType::Bytes, 4, 0);
    let strings = |v: &[&str]| {
        let elements = v
            .iter()
            .map(|e| Zeroizing::new(e.as_bytes().to_vec()))
            .collect();
        Tensor::from_strings(vec![v.len(), 1], elements).unwrap()
    };
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    let a = s.batcher.submit(vec![strings(&["a"])]);
    let b = s.batcher.submit(vec![strings(&["bb", "ccc"])]);
    drop(held);
    assert_eq!(a.answer().await.outputs.unwrap()[0], strings(&["a"]));
    assert_eq!(
        b.answer().await.outputs.unwrap()[0],
        strings(&["bb", "ccc"])
    );
    assert_eq!(s.model.runs(), vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_answered_when_the_batcher_is_dropped_or_the_workers_close() {
    // Dropped (the model deleted while requests wait): they are still answered.
    let Setup {
        model,
        workers,
        batcher,
        ..
    } = setup(DataType::F32, 8, 0);
    let held = Arc::clone(&workers).try_acquire_owned().unwrap();
    let a = batcher.submit(vec![rows(1, 2, 0.0)]);
    let b = batcher.submit(vec![rows(1, 2, 1.0)]);
    drop(batcher);
    drop(held);
    assert!(a.answer().await.outputs.is_ok());
    assert!(b.answer().await.outputs.is_ok());
    assert_eq!(model.runs(), vec![2]);

    // The workers closed (the server stopping): an error, not a wait without end.
    let s = setup(DataType::F32, 8, 0);
    let held = Arc::clone(&s.workers).try_acquire_owned().unwrap();
    let waiting = s.batcher.submit(vec![rows(1, 2, 0.0)]);
    s.workers.close();
    let e = waiting.answer().await.outputs.unwrap_err().to_string();
    assert!(e.contains("stopped"), "{e}");
    let e = s.batcher.infer(vec![rows(1, 2, 0.0)]).await;
    assert!(e.outputs.is_err());
    drop(held);
    assert!(s.model.runs().is_empty());
}

#[test]
fn a_model_without_a_batch_dimension_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let model = Doubler::new(DataType::F32);
    let fixed = Arc::new(Doubler {
        signature: Signature {
            inputs: model.signature.inputs.clone(),
            outputs: vec![TensorSpec {
                name: "y".into(),
                datatype: DataType::F32,
                shape: Some(vec![Dim::Fixed(1), Dim::Dynamic]),
            }],
        },
        runs: Mutex::new(Vec::new()),
    });
    let batch_runtime = BatchRuntime {
        workers: Arc::new(Semaphore::new(1)),
        handle: runtime.handle().clone(),
        max_elements: 1,
        on_exec: Arc::new(|_| {}),
    };
    let options = BatchOptions {
        max_batch_size: 4,
        max_queue_delay_us: 0,
        preferred_batch_size: PreferredBatchSizes::NONE,
    };
    let e = Batcher::start("fixed", fixed, options, batch_runtime)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("output 'y'") && e.contains("batch dimension"),
        "{e}"
    );
}

#[test]
fn tract_compiles_plans_for_preferred_batch_sizes_only() {
    use adyton_server::runtime::tract::TractEngine;
    use adyton_server::runtime::{Engine, LoadOptions};

    // y = x @ [[1, 0], [0, 1], [1, 1], [2, -1]] + [0.5, -1], with a symbolic batch: one plan
    // serves every batch, and batches of 4 get a plan of their own.
    let options = LoadOptions {
        batch_sizes: vec![4],
        ..LoadOptions::default()
    };
    let model = TractEngine::new()
        .load_with(&crate::support::model("dynamic_batch"), &options)
        .unwrap();
    assert_eq!(model.plan(), Plan::Optimized);
    let expected = |x: &[f32]| -> Vec<f32> {
        x.chunks(4)
            .flat_map(|r| [r[0] + r[2] + 2.0 * r[3] + 0.5, r[1] + r[2] - r[3] - 1.0])
            .collect()
    };
    let mut compiled = Vec::new();
    for batch in [1usize, 4, 3, 4, 2] {
        let x = rows(batch, 4, batch as f32);
        let outputs = model.run(vec![x.clone()]).unwrap();
        assert_eq!(outputs[0].shape(), &[batch, 2]);
        assert_eq!(values(&outputs[0]), expected(&values(&x)), "batch {batch}");
        compiled.push(model.plan_stats().compiled);
    }
    // Compiled once, for the first batch of 4; the second was a hit.
    assert_eq!(compiled, [0, 1, 1, 1, 1]);
    assert_eq!(model.plan_stats().cached_plans, 1);

    // Without preferred sizes, every batch runs on the one symbolic plan.
    let model = TractEngine::new()
        .load(&crate::support::model("dynamic_batch"))
        .unwrap();
    model.run(vec![rows(4, 4, 0.0)]).unwrap();
    assert_eq!(model.plan_stats().compiled, 0);
}
