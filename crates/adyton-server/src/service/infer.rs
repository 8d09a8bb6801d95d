//! The inference use case: a request checked, admitted, run alone or in its model's batch, and
//! its outputs checked against the output limits before they are encoded. Every outcome is
//! counted in the metrics under the model's name and version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::Server;
use crate::batching::{BatchRuntime, Batcher};
use crate::error::ServerError;
use crate::metrics::FailureReason;
use crate::protocol::{self, EncodedResponse, InferRequest, Output, RequestedOutput};
use crate::repository::ServedModel;
use crate::runtime::{check_inputs, EngineError, Tensor, TensorSpec};

/// An inference under way: the model it runs on, found before its request's body is read, and
/// when it started (for the metrics).
#[derive(Debug)]
pub struct Inference {
    served: Arc<ServedModel>,
    version: String,
    started: Instant,
}

impl Inference {
    /// The model the inference runs on.
    pub fn model(&self) -> &ServedModel {
        &self.served
    }
}

/// A run's outputs, its rows, and the time it waited for a worker.
struct Ran {
    encoded: EncodedResponse,
    rows: u64,
    queue_time: Duration,
}

impl Server {
    /// Finds the model of an inference (the latest version when none is named), before its
    /// request is read.
    pub fn begin_inference(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Inference, ServerError> {
        let started = Instant::now();
        let served = self.repository.get(name, version)?;
        Ok(Inference {
            version: served.version.to_string(),
            served,
            started,
        })
    }

    /// Counts `error`, a refusal of `inference`'s request before it was read whole, in the
    /// metrics, and returns it.
    pub fn refuse(&self, inference: &Inference, error: ServerError) -> ServerError {
        self.count_failure(inference, FailureReason::Rejected, error)
    }

    /// Runs an inference: the outputs asked for and the inputs checked against the model's
    /// signature, the request admitted, run, and its outputs encoded once they are within the
    /// output limits.
    pub async fn infer(
        &self,
        inference: Inference,
        request: InferRequest,
    ) -> Result<EncodedResponse, ServerError> {
        match self.run(&inference.served, request).await {
            Ok(ran) => {
                self.metrics.success(
                    &inference.served.name,
                    &inference.version,
                    ran.rows,
                    inference.started.elapsed(),
                    ran.queue_time,
                );
                Ok(ran.encoded)
            }
            Err(e) => {
                let reason = failure_reason(&e);
                Err(self.count_failure(&inference, reason, e))
            }
        }
    }

    fn count_failure(
        &self,
        inference: &Inference,
        reason: FailureReason,
        error: ServerError,
    ) -> ServerError {
        self.metrics.failure(
            &inference.served.name,
            &inference.version,
            reason,
            inference.started.elapsed(),
        );
        error
    }

    async fn run(
        &self,
        served: &Arc<ServedModel>,
        request: InferRequest,
    ) -> Result<Ran, ServerError> {
        let InferRequest {
            id,
            inputs,
            outputs: requested,
            binary_output,
        } = request;
        let signature = served.model.signature();
        check_requested_outputs(&signature.outputs, &requested)?;
        let rows = inputs
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .map_or(1, |b| b as u64);
        let inputs = check_inputs(signature, inputs)?;
        let _admitted = self.admit()?;
        let (outputs, queue_time) = self.execute(served, inputs, rows).await?;
        let encoded = self.encode(served, &requested, binary_output, id.as_deref(), &outputs)?;
        Ok(Ran {
            encoded,
            rows,
            queue_time,
        })
    }

    /// Admission: a bounded number run, a bounded number wait; the rest are told to come back.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ServerError> {
        Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| ServerError::Busy {
                retry_after_secs: self.settings.retry_after_secs,
            })
    }

    /// Runs checked inputs, in a batch when the model batches, else alone on a worker; the
    /// outputs and the time spent waiting for a worker.
    async fn execute(
        &self,
        served: &Arc<ServedModel>,
        inputs: Vec<Tensor>,
        rows: u64,
    ) -> Result<(Vec<Tensor>, Duration), ServerError> {
        let batcher = served
            .batcher(|options| {
                Batcher::start(
                    &served.name,
                    Arc::clone(&served.model),
                    options,
                    self.batch_runtime(served),
                )
            })
            .map_err(ServerError::Batcher)?;
        let (outputs, queued) = match batcher {
            Some(batcher) => {
                let answer = batcher.infer(inputs).await;
                (answer.outputs, answer.queued)
            }
            None => self.run_alone(served, inputs, rows).await?,
        };
        outputs.map(|o| (o, queued)).map_err(ServerError::Engine)
    }

    /// What a model's batcher needs from the server: its workers, and its metrics.
    fn batch_runtime(&self, served: &ServedModel) -> BatchRuntime {
        let metrics = self.metrics.clone();
        let (name, version) = (served.name.clone(), served.version.to_string());
        BatchRuntime {
            workers: Arc::clone(&self.running),
            handle: tokio::runtime::Handle::current(),
            max_elements: self.settings.limits.max_elements,
            on_exec: Arc::new(move |rows| metrics.exec(&name, &version, rows)),
        }
    }

    /// One request on one worker of its own.
    async fn run_alone(
        &self,
        served: &Arc<ServedModel>,
        inputs: Vec<Tensor>,
        rows: u64,
    ) -> Result<(Result<Vec<Tensor>, EngineError>, Duration), ServerError> {
        let queued = Instant::now();
        let running = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        let queue_time = queued.elapsed();
        let model = Arc::clone(&served.model);
        // The engine refuses an output over the element limit before copying it out (`encode`
        // repeats it on the outputs sent, with the byte and JSON bounds).
        let max_elements = self.settings.limits.max_elements;
        let outcome = tokio::task::spawn_blocking(move || {
            let _running = running;
            model.run_bounded(inputs, max_elements)
        })
        .await
        .unwrap_or_else(|_| {
            // A panic in the engine ends that task only: this request fails, the model serves on.
            Err(EngineError::Run {
                reason: "the engine panicked".to_owned(),
            })
        });
        self.metrics.exec(
            &served.name,
            &served.version.to_string(),
            usize::try_from(rows).unwrap_or(usize::MAX),
        );
        Ok((outcome, queue_time))
    }

    /// The outputs asked for, checked against the output limits first, encoded.
    fn encode(
        &self,
        served: &ServedModel,
        requested: &[RequestedOutput],
        binary_output: bool,
        id: Option<&str>,
        outputs: &[Tensor],
    ) -> Result<EncodedResponse, ServerError> {
        let chosen = choose_outputs(served, requested, binary_output, outputs);
        // The outputs are checked before anything is encoded: a small request can ask a model for
        // a huge output (two vectors broadcast into a matrix, an Expand), and its JSON, at about
        // 20 bytes and a serde_json value per element, would take many times the tensor's memory.
        let version = served.version.to_string();
        protocol::check_outputs(
            &chosen,
            &self.settings.limits,
            self.settings.max_infer_body,
            self.settings.max_json_response,
            protocol::json_response_overhead(&served.name, &version, id),
        )?;
        Ok(protocol::encode_response(
            &served.name,
            &version,
            id,
            &chosen,
        ))
    }
}

/// The metrics label of an inference's failure: the pool full, the engine's own failure, or a
/// refusal of the request.
fn failure_reason(error: &ServerError) -> FailureReason {
    match error {
        ServerError::Busy { .. } | ServerError::ShuttingDown => FailureReason::QueueFull,
        ServerError::Batcher(_) => FailureReason::Backend,
        ServerError::Engine(
            EngineError::Input(_)
            | EngineError::Shape { .. }
            | EngineError::InputRejected { .. }
            | EngineError::Busy { .. }
            | EngineError::OutputTooLarge { .. },
        ) => FailureReason::Rejected,
        ServerError::Engine(_) => FailureReason::Backend,
        _ => FailureReason::Rejected,
    }
}

/// Refuses an output asked for that the model does not have.
fn check_requested_outputs(
    specs: &[TensorSpec],
    requested: &[RequestedOutput],
) -> Result<(), ServerError> {
    match requested
        .iter()
        .find(|r| !specs.iter().any(|o| o.name == r.name))
    {
        None => Ok(()),
        Some(unknown) => Err(ServerError::UnknownOutput {
            name: unknown.name.clone(),
            outputs: specs
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The outputs to send: those asked for (all when none is named), each in binary or JSON.
fn choose_outputs<'a>(
    served: &'a ServedModel,
    requested: &[RequestedOutput],
    binary_default: bool,
    outputs: &'a [Tensor],
) -> Vec<Output<'a>> {
    let specs = &served.model.signature().outputs;
    if requested.is_empty() {
        specs
            .iter()
            .zip(outputs)
            .map(|(spec, tensor)| Output {
                name: &spec.name,
                tensor,
                binary: binary_default,
            })
            .collect()
    } else {
        requested
            .iter()
            .filter_map(|r| {
                let index = specs.iter().position(|s| s.name == r.name)?;
                Some(Output {
                    name: &specs[index].name,
                    tensor: outputs.get(index)?,
                    binary: r.binary.unwrap_or(binary_default),
                })
            })
            .collect()
    }
}
