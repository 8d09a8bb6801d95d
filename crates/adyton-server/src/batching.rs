//! Dynamic batching, as Triton's `dynamic_batching`: requests to one model that agree on every
//! dimension but the first (the batch axis) and on every data type are concatenated along axis 0,
//! run once, and their outputs split back by rows, so that each caller gets its own rows.
//!
//! One thread per model forms the batches. It takes the first request waiting and adds the
//! requests that fit until the batch holds `max_batch_size` rows or `max_queue_delay_us` has passed
//! since the first request arrived; then it waits for one of the server's workers (a batch
//! occupies one worker, as one request does without batching), adds the requests that came
//! meanwhile if they fit, and hands the batch to a blocking thread. Requests
//! that do not fit the batch being formed (another shape, or too many rows) wait for the next one,
//! in their order of arrival. A request of more rows than `max_batch_size` runs alone, as it would
//! without batching.
//!
//! Preferred sizes (Triton's `preferred_batch_size`): a batch stops growing at the largest, goes
//! at once when it holds one of them and nothing more is queued, and is cut to its longest prefix
//! of requests whose rows make a preferred size (the requests cut lead the next batch). So a
//! model sees few batch sizes (for tract, each size gets a plan of its own: see
//! `runtime::tract`), and when more requests wait than one batch takes, several batches of a
//! preferred size run at once on the workers instead of one large batch on one. With eight
//! clients on two workers, tract ran MiniLM-L3 at 128 tokens faster as two batches of 4 at once,
//! each on one thread, than as one batch of 8 (which took both threads of its pool): a batch of 8
//! rows costs tract more per row than one row does (`benches/serving.rs`, `docs/server.md`).
//!
//! Each caller gets its own errors: when a combined run fails (one bad request, an engine panic,
//! an output over the element limit, outputs that cannot be split by rows), each request of the
//! batch runs again alone. No caller waits forever: a panic or a stopped batcher drops the
//! caller's answer channel, which the caller reads as an error.
//!
//! The module knows tensors and [`LoadedModel`] only, not the engine behind it. The concatenated
//! tensors are zeroized, as every tensor is.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::runtime::{DataType, Dim, EngineError, LoadedModel, Signature, Tensor, TensorData};

/// The most rows a batch may be configured to hold.
pub const MAX_BATCH_SIZE: usize = 4096;

/// The longest queue delay that may be configured: 10 s.
pub const MAX_QUEUE_DELAY_US: u64 = 10_000_000;

/// The most preferred batch sizes a model may list.
pub const MAX_PREFERRED_SIZES: usize = 8;

/// A model's dynamic batching settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// The most rows (along axis 0, summed over the requests) run at once.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others, in microseconds; 0 batches only
    /// the requests already waiting.
    pub max_queue_delay_us: u64,
    /// The batch sizes the batcher forms when it can (none: batches of up to `max_batch_size`).
    pub preferred_batch_size: PreferredBatchSizes,
}

/// Triton's `preferred_batch_size`: the sizes, in rows, that a batch is cut to when the requests
/// waiting allow it (see the module's documentation). At most [`MAX_PREFERRED_SIZES`], each
/// from 1 to [`MAX_BATCH_SIZE`], kept in ascending order without repeats. A fixed array, so that
/// the settings stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PreferredBatchSizes {
    sizes: [u16; MAX_PREFERRED_SIZES],
    len: u8,
}

impl PreferredBatchSizes {
    /// No preferred size.
    pub const NONE: PreferredBatchSizes = PreferredBatchSizes {
        sizes: [0; MAX_PREFERRED_SIZES],
        len: 0,
    };

    /// The sizes given, sorted, repeats removed. Refuses a size of 0 or over
    /// [`MAX_BATCH_SIZE`], and more than [`MAX_PREFERRED_SIZES`] sizes; the message names the
    /// key.
    pub fn new(sizes: &[usize]) -> Result<PreferredBatchSizes, BatchError> {
        let mut sorted = sizes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if let Some(&bad) = sorted
            .iter()
            .find(|&&size| !(1..=MAX_BATCH_SIZE).contains(&size))
        {
            return Err(BatchError::Setting(format!(
                "preferred_batch_size: each size must be from 1 to {MAX_BATCH_SIZE}, not {bad}"
            )));
        }
        if sorted.len() > MAX_PREFERRED_SIZES {
            return Err(BatchError::Setting(format!(
                "preferred_batch_size lists {} sizes, at most {MAX_PREFERRED_SIZES} are allowed",
                sorted.len()
            )));
        }
        let mut preferred = PreferredBatchSizes::NONE;
        for (slot, &size) in preferred.sizes.iter_mut().zip(&sorted) {
            // At most MAX_BATCH_SIZE (4096), checked above.
            *slot = u16::try_from(size).unwrap_or(u16::MAX);
        }
        preferred.len = u8::try_from(sorted.len()).unwrap_or(u8::MAX);
        Ok(preferred)
    }

    /// The sizes, in ascending order.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.sizes[..usize::from(self.len)]
            .iter()
            .map(|&size| usize::from(size))
    }

    /// Whether `rows` is one of the sizes.
    pub fn contains(&self, rows: usize) -> bool {
        self.sizes().any(|size| size == rows)
    }

    /// The largest size, if any.
    pub fn largest(&self) -> Option<usize> {
        self.sizes().last()
    }

    /// Whether no size is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for PreferredBatchSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.sizes()).finish()
    }
}

impl BatchOptions {
    /// Checks the settings: `max_batch_size` from 1 to [`MAX_BATCH_SIZE`], no preferred size
    /// over it, `max_queue_delay_us` at most [`MAX_QUEUE_DELAY_US`]. The message names the key.
    pub fn check(&self) -> Result<(), BatchError> {
        if !(1..=MAX_BATCH_SIZE).contains(&self.max_batch_size) {
            return Err(BatchError::Setting(format!(
                "max_batch_size must be from 1 to {MAX_BATCH_SIZE}, not {}",
                self.max_batch_size
            )));
        }
        if let Some(largest) = self
            .preferred_batch_size
            .largest()
            .filter(|&largest| largest > self.max_batch_size)
        {
            return Err(BatchError::Setting(format!(
                "preferred_batch_size {largest} is over max_batch_size {}",
                self.max_batch_size
            )));
        }
        if self.max_queue_delay_us > MAX_QUEUE_DELAY_US {
            return Err(BatchError::Setting(format!(
                "max_queue_delay_us must be at most {MAX_QUEUE_DELAY_US} (10 s), not {}",
                self.max_queue_delay_us
            )));
        }
        Ok(())
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }
}

/// Why dynamic batching cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The model has no batch dimension: axis 0 must be dynamic on every input and output.
    #[error(
        "dynamic batching needs a batch dimension (axis 0 dynamic on every input and output): \
         {what}"
    )]
    NoBatchDimension {
        /// The input or output without one, and what it declares.
        what: String,
    },
    /// A setting out of its range; the message names the key.
    #[error("{0}")]
    Setting(String),
    /// The batching thread could not be started.
    #[error("the batching thread could not be started: {0}")]
    Thread(String),
}

/// Checks that `signature` has a batch dimension: every input and output declares a shape whose
/// axis 0 is dynamic.
pub fn check_batchable(signature: &Signature) -> Result<(), BatchError> {
    let inputs = signature.inputs.iter().map(|s| ("input", s));
    let outputs = signature.outputs.iter().map(|s| ("output", s));
    for (kind, spec) in inputs.chain(outputs) {
        let declared = match &spec.shape {
            None => Some("no shape".to_owned()),
            Some(dims) if dims.first() != Some(&Dim::Dynamic) => Some(format!(
                "shape [{}]",
                dims.iter()
                    .map(|d| d.as_i64().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Some(_) => None,
        };
        if let Some(declared) = declared {
            return Err(BatchError::NoBatchDimension {
                what: format!("{kind} '{}' declares {declared}", spec.name),
            });
        }
    }
    Ok(())
}

/// What the batching thread needs from the server.
#[derive(Clone)]
pub struct BatchRuntime {
    /// The server's workers: a batch holds one while it runs.
    pub workers: Arc<Semaphore>,
    /// The runtime whose blocking threads run the batches.
    pub handle: tokio::runtime::Handle,
    /// The element limit of an output ([`LoadedModel::run_bounded`]).
    pub max_elements: usize,
    /// Called after each run of the engine with the rows it ran (for metrics).
    pub on_exec: Arc<dyn Fn(usize) + Send + Sync>,
}

impl fmt::Debug for BatchRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRuntime")
            .field("max_elements", &self.max_elements)
            .finish_non_exhaustive()
    }
}

/// What a caller gets back: its outputs or its error, and how long it waited for its batch to
/// start.
#[derive(Debug)]
pub struct BatchAnswer {
    /// The outputs, in the signature's order, or why not.
    pub outputs: Result<Vec<Tensor>, EngineError>,
    /// From the request's arrival to the start of its run.
    pub queued: Duration,
}

/// A request's rows, and the data type and shape past axis 0 of each input: requests of one
/// batch share the latter.
type BatchKey = (usize, Vec<(DataType, Vec<usize>)>);

/// One request waiting for its batch.
struct Job {
    inputs: Vec<Tensor>,
    /// Its rows and the shape every request of its batch must share; `None` runs it alone.
    key: Option<BatchKey>,
    arrived: Instant,
    reply: oneshot::Sender<BatchAnswer>,
}

impl Job {
    /// Its rows: axis 0 of its first input, or 1 (for metrics, as `nv_inference_count` counts).
    fn rows(&self) -> usize {
        self.key.as_ref().map_or_else(
            || {
                self.inputs
                    .first()
                    .and_then(|t| t.shape().first().copied())
                    .unwrap_or(1)
            },
            |(rows, _)| *rows,
        )
    }

    /// Whether `other` may join a batch that starts with `self`.
    fn joins(&self, other: &Job) -> bool {
        match (&self.key, &other.key) {
            (Some((_, a)), Some((_, b))) => a == b,
            _ => false,
        }
    }
}

/// The rows of a request (axis 0, the same on every input) and the rest of its shape, or `None`
/// when it cannot be batched (a scalar input, inputs of different rows, no rows, or more rows than
/// a batch holds).
fn batch_key(inputs: &[Tensor], max_batch_size: usize) -> Option<BatchKey> {
    let rows = *inputs.first()?.shape().first()?;
    if rows == 0 || rows > max_batch_size {
        return None;
    }
    let mut key = Vec::with_capacity(inputs.len());
    for tensor in inputs {
        let (&first, rest) = tensor.shape().split_first()?;
        if first != rows {
            return None;
        }
        key.push((tensor.datatype(), rest.to_vec()));
    }
    Some((rows, key))
}

/// The batcher of one model: requests go in, each caller's answer comes back. Dropping it stops
/// its thread once the requests already given to it are answered.
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    max_batch_size: usize,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch_size", &self.max_batch_size)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching thread of `model` (named after `name`), which must have a batch
    /// dimension ([`check_batchable`]).
    pub fn start(
        name: &str,
        model: Arc<dyn LoadedModel>,
        options: BatchOptions,
        runtime: BatchRuntime,
    ) -> Result<Batcher, BatchError> {
        options.check()?;
        check_batchable(model.signature())?;
        let (jobs, receiver) = mpsc::channel();
        let former = Former {
            model,
            options,
            runtime,
            receiver,
            waiting: VecDeque::new(),
        };
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || former.serve())
            .map_err(|e| BatchError::Thread(e.to_string()))?;
        Ok(Batcher {
            jobs,
            max_batch_size: options.max_batch_size,
        })
    }

    /// Runs `inputs` (checked against the signature, in its order) in a batch, and returns this
    /// caller's outputs or error.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> BatchAnswer {
        self.submit(inputs).answer().await
    }

    /// Queues `inputs` for a batch at once; the ticket's [`Ticket::answer`] waits for it.
    pub fn submit(&self, inputs: Vec<Tensor>) -> Ticket {
        let arrived = Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key: batch_key(&inputs, self.max_batch_size),
            inputs,
            arrived,
            reply,
        };
        // A batcher that stopped has dropped its receiver, and the job with its reply: the
        // ticket then answers with an error.
        let _ = self.jobs.send(job);
        Ticket { answer, arrived }
    }
}

/// A request given to a batcher.
#[derive(Debug)]
pub struct Ticket {
    answer: oneshot::Receiver<BatchAnswer>,
    arrived: Instant,
}

impl Ticket {
    /// This caller's outputs or error.
    pub async fn answer(self) -> BatchAnswer {
        // A batch that panicked, or a batcher that stopped, drops the reply: an error, never a
        // wait without end.
        let arrived = self.arrived;
        self.answer.await.unwrap_or_else(|_| stopped(arrived))
    }
}

fn stopped(arrived: Instant) -> BatchAnswer {
    BatchAnswer {
        outputs: Err(EngineError::Run {
            reason: "the batch stopped before it answered".to_owned(),
        }),
        queued: arrived.elapsed(),
    }
}

/// The batching thread's state.
struct Former {
    model: Arc<dyn LoadedModel>,
    options: BatchOptions,
    runtime: BatchRuntime,
    receiver: mpsc::Receiver<Job>,
    /// Requests taken from the channel that did not fit the batch being formed, oldest first.
    waiting: VecDeque<Job>,
}

impl Former {
    fn serve(mut self) {
        loop {
            let Some(first) = self
                .waiting
                .pop_front()
                .or_else(|| self.receiver.recv().ok())
            else {
                // Every sender is gone and nothing waits: the model is no longer served.
                return;
            };
            let deadline = first.arrived + self.options.delay();
            let mut batch = vec![first];
            // The queue delay passes before a worker is taken, so that a batch waiting for more
            // requests holds no worker meanwhile.
            self.fill(&mut batch, Some(deadline));
            let workers = Arc::clone(&self.runtime.workers);
            let Ok(permit) = self.runtime.handle.block_on(workers.acquire_owned()) else {
                // The workers are closed: the server is stopping. Dropping the jobs answers them.
                return;
            };
            // Requests that came while the batch waited for a worker join it, if they fit.
            self.fill(&mut batch, None);
            let run = Run {
                model: Arc::clone(&self.model),
                max_elements: self.runtime.max_elements,
                on_exec: Arc::clone(&self.runtime.on_exec),
            };
            self.runtime
                .handle
                .spawn_blocking(move || run.execute(batch, permit));
        }
    }

    /// Adds to `batch` the waiting requests that fit, then new ones, until it holds the largest
    /// preferred size (or `max_batch_size`) or, with a `deadline`, that has passed; without one,
    /// only requests already queued are taken. Then cuts it to its longest prefix of a preferred
    /// size, if any: the requests cut wait, first in line, for the next batch.
    fn fill(&mut self, batch: &mut Vec<Job>, deadline: Option<Instant>) {
        if batch[0].key.is_none() {
            return;
        }
        let max = self.options.max_batch_size;
        let preferred = self.options.preferred_batch_size;
        let goal = preferred.largest().unwrap_or(max).min(max);
        let mut rows: usize = batch.iter().map(Job::rows).sum();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(job) = self.waiting.pop_front() {
            if rows < goal && batch[0].joins(&job) && rows + job.rows() <= max {
                rows += job.rows();
                batch.push(job);
            } else {
                kept.push_back(job);
            }
        }
        self.waiting = kept;
        while rows < goal {
            let job = match self.receiver.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // A preferred size with nothing more queued goes at once.
                    if preferred.contains(rows) {
                        break;
                    }
                    let Some(left) =
                        deadline.and_then(|d| d.checked_duration_since(Instant::now()))
                    else {
                        break;
                    };
                    match self.receiver.recv_timeout(left) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if batch[0].joins(&job) && rows + job.rows() <= max {
                rows += job.rows();
                batch.push(job);
            } else {
                self.waiting.push_back(job);
            }
        }
        let preferred = self.options.preferred_batch_size;
        let mut prefix = 0;
        let mut cut = None;
        for (i, job) in batch.iter().enumerate() {
            prefix += job.rows();
            if preferred.contains(prefix) {
                cut = Some(i + 1);
            }
        }
        if let Some(cut) = cut.filter(|&c| c < batch.len()) {
            self.waiting.extend(batch.drain(cut..));
            self.waiting
                .make_contiguous()
                .sort_by_key(|job| job.arrived);
        }
    }
}

/// One batch's run, on a blocking thread.
struct Run {
    model: Arc<dyn LoadedModel>,
    max_elements: usize,
    on_exec: Arc<dyn Fn(usize) + Send + Sync>,
}

impl Run {
    fn execute(&self, batch: Vec<Job>, permit: OwnedSemaphorePermit) {
        let _permit = permit;
        if batch.len() > 1 {
            let rows: Vec<usize> = batch.iter().map(Job::rows).collect();
            let started = Instant::now();
            let outputs = concat(&batch)
                .and_then(|inputs| self.run(inputs, rows.iter().sum()))
                .and_then(|outputs| split(&outputs, &rows));
            if let Ok(per_caller) = outputs {
                for (job, outputs) in batch.into_iter().zip(per_caller) {
                    let queued = started.saturating_duration_since(job.arrived);
                    let _ = job.reply.send(BatchAnswer {
                        outputs: Ok(outputs),
                        queued,
                    });
                }
                return;
            }
        }
        // Alone, or again alone after a combined run failed: each caller gets its own answer.
        for job in batch {
            let queued = job.arrived.elapsed();
            let rows = job.rows();
            let outputs = self.run(job.inputs, rows);
            let _ = job.reply.send(BatchAnswer { outputs, queued });
        }
    }

    /// One run of the engine, its panic turned into an error.
    fn run(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>, EngineError> {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.model.run_bounded(inputs, self.max_elements)
        }));
        (self.on_exec)(rows);
        outcome.unwrap_or_else(|_| {
            Err(EngineError::Run {
                reason: "the engine panicked".to_owned(),
            })
        })
    }
}

/// Not an error any caller sees: the batch runs again request by request.
#[derive(Debug)]
struct Unbatchable;

impl From<Unbatchable> for EngineError {
    fn from(_: Unbatchable) -> EngineError {
        EngineError::Run {
            reason: "the batch could not be combined".to_owned(),
        }
    }
}

/// The inputs of every job of a batch, concatenated along axis 0 (copies: the jobs keep theirs,
/// to run alone if the batch fails).
fn concat(batch: &[Job]) -> Result<Vec<Tensor>, EngineError> {
    let inputs = batch[0].inputs.len();
    let total_rows: usize = batch.iter().map(Job::rows).sum();
    (0..inputs)
        .map(|i| {
            let first = &batch[0].inputs[i];
            let mut shape = first.shape().to_vec();
            shape[0] = total_rows;
            let parts = batch.iter().map(|job| &job.inputs[i]);
            match first.data() {
                TensorData::Fixed(_) => {
                    let size = parts.clone().map(Tensor::byte_len).sum();
                    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
                    for part in parts {
                        let TensorData::Fixed(b) = part.data() else {
                            return Err(Unbatchable.into());
                        };
                        bytes.extend_from_slice(b);
                    }
                    Tensor::from_le_bytes(first.datatype(), shape, bytes)
                }
                TensorData::Bytes(_) => {
                    let mut elements = Vec::with_capacity(parts.clone().map(Tensor::len).sum());
                    for part in parts {
                        let TensorData::Bytes(e) = part.data() else {
                            return Err(Unbatchable.into());
                        };
                        elements.extend(e.iter().cloned());
                    }
                    Tensor::from_strings(shape, elements)
                }
            }
            .map_err(|_| Unbatchable.into())
        })
        .collect()
}

/// Each caller's rows of the batch's outputs, in the order of `rows`.
fn split(outputs: &[Tensor], rows: &[usize]) -> Result<Vec<Vec<Tensor>>, EngineError> {
    let total: usize = rows.iter().sum();
    let mut per_caller: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let Some((&first, rest)) = output.shape().split_first() else {
            return Err(Unbatchable.into());
        };
        if first != total {
            return Err(Unbatchable.into());
        }
        let mut start = 0;
        for (caller, &n) in per_caller.iter_mut().zip(rows) {
            let mut shape = Vec::with_capacity(output.shape().len());
            shape.push(n);
            shape.extend_from_slice(rest);
            let part = match output.data() {
                TensorData::Fixed(bytes) => {
                    let row = bytes.len() / total.max(1);
                    let slice = bytes
                        .get(start * row..(start + n) * row)
                        .ok_or(Unbatchable)?;
                    Tensor::from_le_bytes(output.datatype(), shape, Zeroizing::new(slice.to_vec()))
                }
                TensorData::Bytes(elements) => {
                    let row = elements.len() / total.max(1);
                    let slice = elements
                        .get(start * row..(start + n) * row)
                        .ok_or(Unbatchable)?;
                    Tensor::from_strings(shape, slice.to_vec())
                }
            }
            .map_err(|_| EngineError::from(Unbatchable))?;
            caller.push(part);
            start += n;
        }
    }
    Ok(per_caller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TensorSpec;

    fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_le_bytes(DataType::F32, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
    }

    fn spec(name: &str, shape: Option<Vec<Dim>>) -> TensorSpec {
        TensorSpec {
            name: name.to_owned(),
            datatype: DataType::F32,
            shape,
        }
    }

    #[test]
    fn only_models_with_a_batch_dimension_are_batched() {
        let batched = Signature {
            inputs: vec![spec("x", Some(vec![Dim::Dynamic, Dim::Fixed(4)]))],
            outputs: vec![spec("y", Some(vec![Dim::Dynamic]))],
        };
        assert_eq!(check_batchable(&batched), Ok(()));
        let mut fixed = batched.clone();
        fixed.outputs[0].shape = Some(vec![Dim::Fixed(1)]);
        let e = check_batchable(&fixed).unwrap_err().to_string();
        assert!(e.contains("output 'y' declares shape [1]"), "{e}");
        let mut unknown = batched;
        unknown.inputs[0].shape = None;
        let e = check_batchable(&unknown).unwrap_err().to_string();
        assert!(e.contains("input 'x' declares no shape"), "{e}");
    }

    #[test]
    fn settings_out_of_range_name_their_key() {
        for (options, key) in [
            (
                BatchOptions {
                    max_batch_size: 0,
                    max_queue_delay_us: 0,
                    preferred_batch_size: PreferredBatchSizes::NONE,
                },
                "max_batch_size",
            ),
            (
                BatchOptions {
                    max_batch_size: MAX_BATCH_SIZE + 1,
                    max_queue_delay_us: 0,
                    preferred_batch_size: PreferredBatchSizes::NONE,
                },
                "max_batch_size",
            ),
            (
                BatchOptions {
                    max_batch_size: 8,
                    max_queue_delay_us: MAX_QUEUE_DELAY_US + 1,
                    preferred_batch_size: PreferredBatchSizes::NONE,
                },
                "max_queue_delay_us",
            ),
        ] {
            let e = options.check().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn preferred_sizes_are_sorted_and_checked() {
        let preferred = PreferredBatchSizes::new(&[8, 2, 4, 2]).unwrap();
        assert_eq!(preferred.sizes().collect::<Vec<_>>(), [2, 4, 8]);
        assert!(preferred.contains(4) && !preferred.contains(3));
        assert_eq!(preferred.largest(), Some(8));
        assert!(PreferredBatchSizes::NONE.is_empty());
        for bad in [
            &[0][..],
            &[MAX_BATCH_SIZE + 1],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9],
        ] {
            let e = PreferredBatchSizes::new(bad).unwrap_err().to_string();
            assert!(e.contains("preferred_batch_size"), "{e}");
        }
        let over = BatchOptions {
            max_batch_size: 4,
            max_queue_delay_us: 0,
            preferred_batch_size: PreferredBatchSizes::new(&[2, 8]).unwrap(),
        };
        let e = over.check().unwrap_err().to_string();
        assert!(
            e.contains("preferred_batch_size 8 is over max_batch_size 4"),
            "{e}"
        );
    }

    #[test]
    fn keys_agree_on_every_dimension_but_the_first() {
        let a = batch_key(&[f32s(&[2, 3], &[0.0; 6])], 8).unwrap();
        assert_eq!(a.0, 2);
        let b = batch_key(&[f32s(&[1, 3], &[0.0; 3])], 8).unwrap();
        assert_eq!(a.1, b.1);
        let c = batch_key(&[f32s(&[1, 4], &[0.0; 4])], 8).unwrap();
        assert_ne!(a.1, c.1);
        // Too many rows, no rows, a scalar, or inputs of different rows: alone.
        assert!(batch_key(&[f32s(&[9, 1], &[0.0; 9])], 8).is_none());
        assert!(batch_key(&[f32s(&[0, 1], &[])], 8).is_none());
        assert!(batch_key(&[f32s(&[], &[0.0])], 8).is_none());
        assert!(batch_key(&[f32s(&[1, 1], &[0.0]), f32s(&[2, 1], &[0.0; 2])], 8).is_none());
    }

    #[test]
    fn bytes_tensors_split_by_rows() {
        fn strings(v: &[&str]) -> Vec<Zeroizing<Vec<u8>>> {
            v.iter()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .collect()
        }
        let t = Tensor::from_strings(vec![3, 2], strings(&["a", "b", "c", "d", "e", "f"])).unwrap();
        let parts = split(&[t], &[1, 2]).unwrap();
        assert_eq!(parts[0][0].shape(), &[1, 2]);
        assert_eq!(
            parts[1][0],
            Tensor::from_strings(vec![2, 2], strings(&["c", "d", "e", "f"])).unwrap()
        );
        // An output whose first dimension is not the batch's cannot be split.
        assert!(split(&[f32s(&[2], &[0.0; 2])], &[1, 2]).is_err());
    }
}
