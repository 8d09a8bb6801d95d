//! The ONNX Runtime implementation of [`Engine`](super::Engine), over the `ort` crate, with the
//! onnxruntime shared library loaded at run time from a path the operator gives.
//!
//! The library is loaded once per process ([`OnnxRuntimeEngine::new`]): ONNX Runtime keeps one
//! environment per process, so every engine of a process uses the same library file, and asking
//! for another is an error. The `onnxruntime` package on PyPI ships the library
//! (`pip install onnxruntime`; it is `onnxruntime/capi/libonnxruntime.so.<version>` inside the
//! package); the server takes its path from the setting `onnxruntime_library` or the environment
//! variable [`LIBRARY_ENV`].
//!
//! A model is handed to ONNX Runtime from memory only, never as a file. ONNX external data (weights
//! in files beside the model) is refused before ONNX Runtime sees the model, since ONNX Runtime
//! would resolve it against the working directory ([`external_tensor`]). The constants the graph
//! declares or computes are checked against the load budget first, as the tract engine does: ONNX
//! Runtime folds constants while it optimises, so a small graph could otherwise allocate gigabytes.
//!
//! ONNX Runtime optimises with every graph optimisation it has (`ORT_ENABLE_ALL`, its default),
//! and binds dynamic dimensions from each run's inputs: one session serves every input shape
//! ([`Plan::OnnxRuntime`]).
//!
//! Concurrency: `ort`'s `Session::run` takes `&mut self` (its authors do not rely on ONNX
//! Runtime's `Run` being safe to call from several threads), so a model is a bounded pool of
//! sessions, each taken by one run at a time: as many runs proceed at once as the pool has
//! sessions ([`OnnxRuntimeEngine::with_sessions`]), and further runs wait for a session to come
//! back. The trade-off is memory: each session holds its own optimised copy of the graph and its
//! weights, so a model takes up to that many times its size; the weights ONNX Runtime prepacks
//! for its matrix kernels are shared by the sessions of one model (one prepacked weights
//! container per model), which keeps the largest part of a transformer's weights single.
//!
//! Threads: each session has its own intra-op thread pool ([`LoadOptions::threads`], ONNX
//! Runtime's default when unset: one thread per physical core), with spinning off, so that idle
//! threads do not burn the cores the other requests need; inter-op parallelism is off (one thread).
//!
//! Tensor memory: our copies of inputs (typed for ONNX Runtime) and of outputs are zeroized when
//! dropped; a `UINT8` input is handed to ONNX Runtime without a copy. ONNX Runtime's own buffers
//! (its copies of the weights, intermediate tensors, its outputs, string tensors it copies) are
//! freed by its allocator without being zeroized; in the TEE, memory encryption protects them.
//!
//! Every call into `ort` is guarded against panics, and an error from a run never quotes tensor
//! values: ONNX Runtime's messages can (an out-of-range index of a `Gather`, say), so the numbers
//! of a run's status message are withheld ([`run_reason`]).

use std::fmt;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::reason::{panic_message, truncate, without_numbers};
use super::staging::{check_type, utf8_strings, wrong_kind};
use half::f16;
use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};
use tract_onnx::pb::{type_proto, ModelProto, ValueInfoProto};
use tract_onnx::prelude::Framework;
use zeroize::{Zeroize, Zeroizing};

use super::tract::budget;
use super::{
    DataType, Dim, Engine, EngineError, InputError, InputShapeError, LoadOptions, LoadedModel,
    Plan, ShapeSet, Signature, Tensor, TensorData, TensorSpec,
};

/// The environment variable that gives the onnxruntime shared library's path.
pub const LIBRARY_ENV: &str = "ADYTON_ONNXRUNTIME_LIBRARY";

/// The default [`OnnxRuntimeEngine::with_load_budget`], the tract engine's.
pub const DEFAULT_LOAD_BUDGET: u64 = super::tract::DEFAULT_LOAD_BUDGET;

/// The deepest nesting of ONNX messages followed when looking for external data.
const MAX_PROTO_DEPTH: usize = 64;

/// How to get the library, for every error about it.
const LIBRARY_HELP: &str = "install ONNX Runtime with `pip install onnxruntime` (the library is \
     onnxruntime/capi/libonnxruntime.so.<version> in the package's site-packages directory) and \
     give its path in the setting `onnxruntime_library` or the environment variable \
     ADYTON_ONNXRUNTIME_LIBRARY";

/// The library's path from [`LIBRARY_ENV`], if set and not empty.
pub fn library_from_env() -> Option<PathBuf> {
    std::env::var_os(LIBRARY_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// The library for tests and benchmarks: [`LIBRARY_ENV`], else the `onnxruntime` package of the
/// workspace's `.venv` (`.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`,
/// which `scripts/setup` installs). The server itself never searches: it uses the path it is
/// given.
pub fn find_library() -> Option<PathBuf> {
    if let Some(path) = library_from_env() {
        return Some(path);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    let mut found: Vec<PathBuf> = fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|entry| fs::read_dir(entry.path().join("site-packages/onnxruntime/capi")).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("libonnxruntime.so")
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    // The versioned name sorts last, and is the file the package ships.
    found.pop()
}

/// The process's ONNX Runtime: the library it was loaded from and its environment.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The ONNX Runtime engine.
#[derive(Clone)]
pub struct OnnxRuntimeEngine {
    environment: Environment,
    library: PathBuf,
    load_budget: u64,
    sessions: usize,
}

impl OnnxRuntimeEngine {
    /// An engine over the onnxruntime shared library at `library`, loaded the first time an
    /// engine is made in the process. Refuses a missing or unusable library, and a library other
    /// than the one the process already loaded, with a message that says how to get it.
    pub fn new(library: &Path) -> Result<OnnxRuntimeEngine, EngineError> {
        if !library.is_file() {
            return Err(library_error(format!(
                "the onnxruntime library {} does not exist or is not a file; {LIBRARY_HELP}",
                library.display()
            )));
        }
        let requested = fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
        let mut runtime = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
        let environment = match &*runtime {
            Some((loaded, environment)) => {
                if *loaded != requested {
                    return Err(library_error(format!(
                        "the onnxruntime library {} is asked for, but this process has already \
                         loaded {}; a process uses one onnxruntime library",
                        requested.display(),
                        loaded.display()
                    )));
                }
                environment.clone()
            }
            None => {
                let environment = guarded(|| {
                    let environment = ort::init_from(&requested)
                        .map_err(|e| e.to_string())?
                        .with_name("adyton")
                        .with_telemetry(false)
                        .with_logger(Arc::new(log))
                        .build()
                        .map_err(|e| e.to_string())?;
                    environment.set_log_level(LogLevel::Warning);
                    Ok(environment)
                })
                .map_err(|reason| {
                    library_error(format!(
                        "the onnxruntime library {} cannot be used: {reason}; {LIBRARY_HELP}",
                        library.display()
                    ))
                })?;
                *runtime = Some((requested.clone(), environment.clone()));
                environment
            }
        };
        Ok(OnnxRuntimeEngine {
            environment,
            library: requested,
            load_budget: DEFAULT_LOAD_BUDGET,
            sessions: default_sessions(),
        })
    }

    /// The same engine, refusing models whose constants need more than `bytes` (see
    /// [`TractEngine::with_load_budget`](super::tract::TractEngine::with_load_budget): the same
    /// check, on the graph, before ONNX Runtime sees it).
    pub fn with_load_budget(mut self, bytes: u64) -> OnnxRuntimeEngine {
        self.load_budget = bytes;
        self
    }

    /// The load budget, in bytes.
    pub fn load_budget(&self) -> u64 {
        self.load_budget
    }

    /// The same engine, giving each model `sessions` sessions (at least one): the most runs of
    /// one model that proceed at once, and as many copies of its weights in memory. The default
    /// is the number of cores.
    pub fn with_sessions(mut self, sessions: usize) -> OnnxRuntimeEngine {
        self.sessions = sessions.max(1);
        self
    }

    /// The library this engine runs.
    pub fn library(&self) -> &Path {
        &self.library
    }
}

/// ONNX Runtime's log, into the server's: warnings and errors only, and without numbers, since
/// ONNX Runtime logs a failed run's status, which can quote tensor values ([`run_reason`]). Its
/// default logger would write them to standard error as they are.
fn log(level: LogLevel, category: &str, _id: &str, _location: &str, message: &str) {
    let message = run_reason(message);
    match level {
        LogLevel::Error | LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", %category, "{message}");
        }
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", %category, "{message}"),
        _ => tracing::debug!(target: "onnxruntime", %category, "{message}"),
    }
}

/// One session per core by default: more runs at once than cores only queue in the intra-op
/// thread pools, at the price of another copy of the model.
fn default_sessions() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn library_error(reason: String) -> EngineError {
    EngineError::Load { reason }
}

impl fmt::Debug for OnnxRuntimeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxRuntimeEngine")
            .field("library", &self.library)
            .field("load_budget", &self.load_budget)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl Engine for OnnxRuntimeEngine {
    fn load_with(
        &self,
        onnx: &[u8],
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, EngineError> {
        match external_tensor(onnx) {
            Ok(None) => {}
            Ok(Some(name)) => {
                return Err(EngineError::Load {
                    reason: format!(
                        "tensor '{name}' refers to external data, which is not served: weights \
                         must be inside the model"
                    ),
                })
            }
            Err(reason) => {
                return Err(EngineError::Load {
                    reason: format!("not an ONNX model: {reason}"),
                })
            }
        }
        let proto = guarded(|| {
            tract_onnx::onnx()
                .proto_model_for_read(&mut &onnx[..])
                .map_err(|e| e.to_string())
        })
        .map_err(|reason| EngineError::Load {
            reason: format!("not an ONNX model: {reason}"),
        })?;
        let constants = budget::constant_bytes(&proto);
        if constants.total > u128::from(self.load_budget) {
            return Err(EngineError::OverBudget {
                needed: constants.total,
                budget: self.load_budget,
                largest: constants
                    .largest
                    .map_or_else(String::new, |l| l.to_string()),
            });
        }

        let prepacked = guarded(|| Ok(PrepackedWeights::new())).map_err(load_error)?;
        // The first session gives the signature, which the options are checked against before
        // the others are built, in parallel: a model that fails, fails once.
        let first = self.session(onnx, options, &prepacked)?;
        let mut signature = signature_of(&first, &proto)?;
        apply_input_shapes(&mut signature, options)?;
        for shapes in &options.ahead_shapes {
            check_ahead_shape(&signature, shapes)?;
        }
        let mut sessions = vec![first];
        std::thread::scope(|scope| {
            let builders: Vec<_> = (1..self.sessions)
                .map(|_| scope.spawn(|| self.session(onnx, options, &prepacked)))
                .collect();
            for builder in builders {
                let session = builder.join().unwrap_or_else(|_| {
                    Err(EngineError::Load {
                        reason: "onnxruntime: building a session panicked".to_owned(),
                    })
                })?;
                sessions.push(session);
            }
            Ok::<(), EngineError>(())
        })?;
        Ok(Arc::new(OnnxRuntimeModel {
            pool: SessionPool::new(sessions),
            signature,
        }))
    }
}

impl OnnxRuntimeEngine {
    /// One session of the model, from memory.
    fn session(
        &self,
        onnx: &[u8],
        options: &LoadOptions,
        prepacked: &PrepackedWeights,
    ) -> Result<Session, EngineError> {
        guarded(|| {
            let builder = Session::builder(&self.environment).map_err(|e| e.to_string())?;
            let reason = |e: ort::Error<SessionBuilder>| e.to_string();
            let builder = builder
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(reason)?
                .with_inter_threads(1)
                .map_err(reason)?
                .with_intra_op_spinning(false)
                .map_err(reason)?
                .with_inter_op_spinning(false)
                .map_err(reason)?
                .with_prepacked_weights(prepacked)
                .map_err(reason)?;
            let mut builder = match options.threads {
                Some(threads) => builder.with_intra_threads(threads).map_err(reason)?,
                None => builder,
            };
            builder.commit_from_memory(onnx).map_err(|e| e.to_string())
        })
        .map_err(load_error)
    }
}

fn load_error(reason: String) -> EngineError {
    EngineError::Load {
        reason: format!("onnxruntime: {}", truncate(reason)),
    }
}

/// The name of the first tensor of the model that refers to external data (its
/// `data_location` is `EXTERNAL`, or it has `external_data` entries), if any. Reads the protobuf
/// wire format directly, through every place ONNX allows a tensor (initializers, sparse
/// initializers, attributes, subgraphs, local functions, training information), so that no field
/// a decoder of an older `onnx.proto` drops can hide one. An error when the bytes are not
/// well-formed protobuf.
pub fn external_tensor(model: &[u8]) -> Result<Option<String>, String> {
    find_external(model, Message::Model, 0)
}

/// The ONNX messages that can hold a tensor, directly or below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    Model,
    TrainingInfo,
    Function,
    Graph,
    Node,
    Attribute,
    SparseTensor,
    Tensor,
}

impl Message {
    /// The message a field holds, when it can hold a tensor (field numbers of `onnx.proto`).
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        match (self, field) {
            (Model, 7) | (TrainingInfo, 1 | 2) | (Attribute, 6 | 11) => Some(Graph),
            (Model, 20) => Some(TrainingInfo),
            (Model, 25) => Some(Function),
            (Graph, 1) | (Function, 7) => Some(Node),
            (Node, 5) => Some(Attribute),
            (Graph, 5) | (Attribute, 5 | 10) | (SparseTensor, 1 | 2) => Some(Tensor),
            (Graph, 15) | (Attribute, 22 | 23) => Some(SparseTensor),
            _ => None,
        }
    }
}

fn find_external(bytes: &[u8], message: Message, depth: usize) -> Result<Option<String>, String> {
    if depth > MAX_PROTO_DEPTH {
        return Err(format!("messages nested more than {MAX_PROTO_DEPTH} deep"));
    }
    let mut rest = bytes;
    let mut name = None;
    let mut external = false;
    while !rest.is_empty() {
        let key = varint(&mut rest)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value = varint(&mut rest)?;
                // TensorProto.data_location = EXTERNAL.
                if message == Message::Tensor && field == 14 && value == 1 {
                    external = true;
                }
            }
            1 => rest = skip(rest, 8)?,
            5 => rest = skip(rest, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut rest)?)
                    .map_err(|_| "a field longer than memory".to_owned())?;
                if len > rest.len() {
                    return Err("a field runs past the end of the model".to_owned());
                }
                let (value, tail) = rest.split_at(len);
                rest = tail;
                if message == Message::Tensor {
                    match field {
                        // TensorProto.name.
                        8 => name = Some(String::from_utf8_lossy(value).into_owned()),
                        // TensorProto.external_data.
                        13 => external = true,
                        _ => {}
                    }
                } else if let Some(child) = message.child(field) {
                    if let Some(found) = find_external(value, child, depth + 1)? {
                        return Ok(Some(found));
                    }
                }
            }
            other => return Err(format!("wire type {other} is not used by ONNX")),
        }
    }
    Ok(external.then(|| name.unwrap_or_else(|| "(unnamed)".to_owned())))
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = bytes.split_first() else {
            return Err("a number runs past the end of the model".to_owned());
        };
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number of more than 64 bits".to_owned())
}

fn skip(bytes: &[u8], len: usize) -> Result<&[u8], String> {
    bytes
        .get(len..)
        .ok_or_else(|| "a field runs past the end of the model".to_owned())
}

/// The protocol's type of an ONNX Runtime element type, if the server serves it.
fn served_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The signature of a session: names, types and shapes from ONNX Runtime (-1, a dynamic
/// dimension, for a symbolic or unnamed one). A tensor the graph declares without a shape has
/// none here either (ONNX Runtime reports it as rank 0), so that any rank is accepted.
fn signature_of(session: &Session, proto: &ModelProto) -> Result<Signature, EngineError> {
    let graph = proto.graph.as_ref();
    let declared = |name: &str, inputs: bool| -> bool {
        let Some(graph) = graph else { return true };
        let list = if inputs { &graph.input } else { &graph.output };
        list.iter()
            .find(|info| info.name == name)
            .is_none_or(declares_shape)
    };
    let spec = |name: &str, dtype: &ValueType, input: bool| {
        let role = if input { "input" } else { "output" };
        let ValueType::Tensor { ty, shape, .. } = dtype else {
            return Err(EngineError::Unsupported {
                reason: format!("{role} '{name}' is not a tensor ({dtype}), which is not served"),
            });
        };
        let datatype = served_type(*ty).ok_or_else(|| EngineError::Unsupported {
            reason: format!("{role} '{name}' has data type {ty}, which is not served"),
        })?;
        let shape = declared(name, input).then(|| {
            shape
                .iter()
                .map(|&d| usize::try_from(d).map_or(Dim::Dynamic, Dim::Fixed))
                .collect()
        });
        Ok(TensorSpec {
            name: name.to_owned(),
            datatype,
            shape,
        })
    };
    Ok(Signature {
        inputs: session
            .inputs()
            .iter()
            .map(|outlet| spec(outlet.name(), outlet.dtype(), true))
            .collect::<Result<_, _>>()?,
        outputs: session
            .outputs()
            .iter()
            .map(|outlet| spec(outlet.name(), outlet.dtype(), false))
            .collect::<Result<_, _>>()?,
    })
}

fn declares_shape(info: &ValueInfoProto) -> bool {
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tensor)) => tensor.shape.is_some(),
        _ => true,
    }
}

/// Applies [`LoadOptions::input_shapes`] to the signature: a fixed size shows as fixed, and
/// [`check_inputs`](super::check_inputs) then refuses inputs of another size. ONNX Runtime itself
/// needs no shape to type a graph, so nothing is given to it.
fn apply_input_shapes(signature: &mut Signature, options: &LoadOptions) -> Result<(), EngineError> {
    for (name, dims) in &options.input_shapes {
        let spec = input_spec(signature, name)?;
        check_rank(spec, dims.len())?;
        let declared = spec.shape.clone();
        let shape = dims
            .iter()
            .enumerate()
            .map(|(axis, &dim)| {
                let declared = declared.as_ref().and_then(|d| d.get(axis)).copied();
                match (dim, declared) {
                    (Dim::Fixed(given), Some(Dim::Fixed(size))) if given != size => {
                        Err(InputShapeError::Dimension {
                            name: name.clone(),
                            axis,
                            declared: size,
                            given,
                        })
                    }
                    (Dim::Fixed(given), _) => Ok(Dim::Fixed(given)),
                    (Dim::Dynamic, declared) => Ok(declared.unwrap_or(Dim::Dynamic)),
                }
            })
            .collect::<Result<Vec<Dim>, InputShapeError>>()?;
        if let Some(spec) = signature.inputs.iter_mut().find(|s| s.name == *name) {
            spec.shape = Some(shape);
        }
    }
    Ok(())
}

/// Checks a shape to compile ahead against the signature; ONNX Runtime has nothing to compile per
/// shape, so nothing runs.
fn check_ahead_shape(signature: &Signature, shapes: &ShapeSet) -> Result<(), EngineError> {
    for (name, shape) in shapes {
        let spec = input_spec(signature, name)?;
        check_rank(spec, shape.len())?;
        if let Some(dims) = &spec.shape {
            for (axis, (&dim, &given)) in dims.iter().zip(shape).enumerate() {
                if let Dim::Fixed(declared) = dim {
                    if declared != given {
                        return Err(InputShapeError::Dimension {
                            name: name.clone(),
                            axis,
                            declared,
                            given,
                        }
                        .into());
                    }
                }
            }
        }
    }
    Ok(())
}

fn input_spec<'s>(signature: &'s Signature, name: &str) -> Result<&'s TensorSpec, InputShapeError> {
    signature
        .inputs
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| InputShapeError::UnknownInput {
            name: name.to_owned(),
            inputs: signature
                .inputs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn check_rank(spec: &TensorSpec, given: usize) -> Result<(), InputShapeError> {
    match &spec.shape {
        Some(dims) if dims.len() != given => Err(InputShapeError::Rank {
            name: spec.name.clone(),
            declared: dims.len(),
            given,
        }),
        _ => Ok(()),
    }
}

/// A model's sessions, each used by one run at a time (see the module's documentation).
struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
}

impl SessionPool {
    fn new(sessions: Vec<Session>) -> SessionPool {
        SessionPool {
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
        }
    }

    /// A session, waiting for one to come back when all are in use.
    fn take(&self) -> PooledSession<'_> {
        let mut idle = self.lock();
        loop {
            if let Some(session) = idle.pop() {
                return PooledSession {
                    pool: self,
                    session: Some(session),
                };
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    // A poisoned lock still holds a list of whole sessions: a run panics outside it.
    fn lock(&self) -> MutexGuard<'_, Vec<Session>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A session taken from its pool, given back when dropped (after a failed or panicking run too).
struct PooledSession<'p> {
    pool: &'p SessionPool,
    session: Option<Session>,
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.lock().push(session);
            self.pool.returned.notify_one();
        }
    }
}

/// A model as ONNX Runtime runs it.
struct OnnxRuntimeModel {
    pool: SessionPool,
    signature: Signature,
}

impl fmt::Debug for OnnxRuntimeModel {
    // The sessions hold the weights, so only the signature is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxRuntimeModel")
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl LoadedModel for OnnxRuntimeModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self) -> Plan {
        Plan::OnnxRuntime
    }

    fn engine(&self) -> super::EngineKind {
        super::EngineKind::OnnxRuntime
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        self.run_bounded(inputs, usize::MAX)
    }

    fn run_bounded(
        &self,
        inputs: Vec<Tensor>,
        max_elements: usize,
    ) -> Result<Vec<Tensor>, EngineError> {
        if inputs.len() != self.signature.inputs.len() {
            return Err(EngineError::Run {
                reason: format!(
                    "the model takes {} inputs, got {}",
                    self.signature.inputs.len(),
                    inputs.len()
                ),
            });
        }
        let staged = self
            .signature
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(spec, tensor)| Staged::new(spec, tensor))
            .collect::<Result<Vec<Staged<'_>>, EngineError>>()?;
        let values = self
            .signature
            .inputs
            .iter()
            .zip(&staged)
            .map(|(spec, staged)| {
                guarded(|| staged.value()).map_err(|reason| EngineError::Run {
                    reason: format!("input '{}': {}", spec.name, run_reason(&reason)),
                })
            })
            .collect::<Result<Vec<SessionInputValue<'_>>, EngineError>>()?;

        let mut pooled = self.pool.take();
        let result = guarded(|| {
            let session = pooled
                .session
                .as_mut()
                .ok_or_else(|| "the session was given back".to_owned())?;
            // ONNX Runtime answers INVALID_ARGUMENT for what the inputs' values or their
            // combination cause once the declared types and ranks passed (a Gather index out of
            // range, inputs whose dynamic dimensions disagree): the request's fault.
            Ok(match session.run(values.as_slice()) {
                Ok(outputs) => Ok(outputs
                    .into_iter()
                    .map(|(_, value)| value)
                    .collect::<Vec<DynValue>>()),
                Err(e) => Err((
                    e.code() == ort::error::ErrorCode::InvalidArgument,
                    e.to_string(),
                )),
            })
        });
        let outputs = match result {
            Ok(Ok(outputs)) => outputs,
            Ok(Err((true, reason))) => {
                return Err(EngineError::InputRejected {
                    reason: run_reason(&reason),
                })
            }
            Ok(Err((false, reason))) | Err(reason) => {
                return Err(EngineError::Run {
                    reason: run_reason(&reason),
                })
            }
        };
        drop(values);
        drop(staged);
        drop(inputs);
        if outputs.len() != self.signature.outputs.len() {
            return Err(EngineError::Run {
                reason: format!(
                    "the model declares {} outputs, onnxruntime returned {}",
                    self.signature.outputs.len(),
                    outputs.len()
                ),
            });
        }
        // Checked before anything is copied out of ONNX Runtime's memory.
        let shapes = self
            .signature
            .outputs
            .iter()
            .zip(&outputs)
            .map(|(spec, value)| {
                let (ty, shape) = match value.dtype() {
                    ValueType::Tensor { ty, shape, .. } => (*ty, shape),
                    other => {
                        return Err(EngineError::Run {
                            reason: format!(
                                "output '{}': onnxruntime returned {other}, not a tensor",
                                spec.name
                            ),
                        })
                    }
                };
                let dims = shape
                    .iter()
                    .map(|&d| usize::try_from(d))
                    .collect::<Result<Vec<usize>, _>>()
                    .map_err(|_| EngineError::Run {
                        reason: format!("output '{}' has a negative dimension", spec.name),
                    })?;
                let elements = super::element_count(&dims).unwrap_or(usize::MAX);
                super::check_output_elements(&spec.name, elements, max_elements)?;
                if served_type(ty) != Some(spec.datatype) {
                    return Err(EngineError::Run {
                        reason: format!(
                            "output '{}': onnxruntime returned data type {ty}, the model declares {}",
                            spec.name, spec.datatype
                        ),
                    });
                }
                Ok(dims)
            })
            .collect::<Result<Vec<Vec<usize>>, EngineError>>()?;
        self.signature
            .outputs
            .iter()
            .zip(&outputs)
            .zip(shapes)
            .map(|((spec, value), shape)| {
                guarded(|| from_ort(spec, value, shape)).map_err(|reason| EngineError::Run {
                    reason: format!("output '{}': {}", spec.name, run_reason(&reason)),
                })
            })
            .collect()
    }
}

/// An input made ready for ONNX Runtime: typed elements in memory of ours (zeroized when
/// dropped), or the request's own bytes for `UINT8`, or a string tensor ONNX Runtime built.
enum Staged<'t> {
    Bytes(Vec<i64>, &'t [u8]),
    Bool(Vec<i64>, Zeroizing<Vec<bool>>),
    U16(Vec<i64>, Zeroizing<Vec<u16>>),
    U32(Vec<i64>, Zeroizing<Vec<u32>>),
    U64(Vec<i64>, Zeroizing<Vec<u64>>),
    I8(Vec<i64>, Zeroizing<Vec<i8>>),
    I16(Vec<i64>, Zeroizing<Vec<i16>>),
    I32(Vec<i64>, Zeroizing<Vec<i32>>),
    I64(Vec<i64>, Zeroizing<Vec<i64>>),
    F16(Vec<i64>, HalfBuffer),
    F32(Vec<i64>, Zeroizing<Vec<f32>>),
    F64(Vec<i64>, Zeroizing<Vec<f64>>),
    Strings(OrtTensor<String>),
}

impl<'t> Staged<'t> {
    fn new(spec: &TensorSpec, tensor: &'t Tensor) -> Result<Staged<'t>, EngineError> {
        check_type(spec, tensor)?;
        let shape = tensor
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| EngineError::Run {
                reason: format!("input '{}' has a dimension over 2^63", spec.name),
            })?;
        Ok(match tensor.data() {
            TensorData::Fixed(bytes) => match tensor.datatype() {
                DataType::U8 => Staged::Bytes(shape, bytes),
                DataType::Bool => Staged::Bool(shape, decode(bytes, |[b]| b != 0)),
                DataType::U16 => Staged::U16(shape, decode(bytes, u16::from_le_bytes)),
                DataType::U32 => Staged::U32(shape, decode(bytes, u32::from_le_bytes)),
                DataType::U64 => Staged::U64(shape, decode(bytes, u64::from_le_bytes)),
                DataType::I8 => Staged::I8(shape, decode(bytes, i8::from_le_bytes)),
                DataType::I16 => Staged::I16(shape, decode(bytes, i16::from_le_bytes)),
                DataType::I32 => Staged::I32(shape, decode(bytes, i32::from_le_bytes)),
                DataType::I64 => Staged::I64(shape, decode(bytes, i64::from_le_bytes)),
                DataType::F16 => Staged::F16(shape, HalfBuffer::decode(bytes)),
                DataType::F32 => Staged::F32(shape, decode(bytes, f32::from_le_bytes)),
                DataType::F64 => Staged::F64(shape, decode(bytes, f64::from_le_bytes)),
                DataType::Bytes => return Err(wrong_kind(spec)),
            },
            TensorData::Bytes(elements) => {
                if tensor.datatype() != DataType::Bytes {
                    return Err(wrong_kind(spec));
                }
                // ONNX Runtime's strings are UTF-8, handed over as C strings and copied into
                // memory of its own: an element cannot hold a NUL byte.
                if let Some(index) = elements.iter().position(|e| e.contains(&0)) {
                    return Err(InputError::NulByte {
                        name: spec.name.clone(),
                        index,
                    }
                    .into());
                }
                let strings = utf8_strings(spec, elements)?;
                let value = guarded(|| {
                    OrtTensor::from_string_array((shape, strings.as_slice()))
                        .map_err(|e| e.to_string())
                })
                .map_err(|reason| EngineError::Run {
                    reason: format!("input '{}': {}", spec.name, run_reason(&reason)),
                })?;
                Staged::Strings(value)
            }
        })
    }

    /// The input as ONNX Runtime takes it, borrowing our memory.
    fn value(&self) -> Result<SessionInputValue<'_>, String> {
        let result = match self {
            Staged::Bytes(shape, data) => {
                TensorRef::from_array_view((shape.clone(), *data)).map(Into::into)
            }
            Staged::Bool(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::U16(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::U32(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::U64(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::I8(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::I16(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::I32(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::I64(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::F16(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data.0[..])).map(Into::into)
            }
            Staged::F32(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::F64(shape, data) => {
                TensorRef::from_array_view((shape.clone(), &data[..])).map(Into::into)
            }
            Staged::Strings(value) => Ok(value.into()),
        };
        result.map_err(|e| e.to_string())
    }
}

/// Little-endian elements of `N` bytes, decoded into zeroized memory.
fn decode<T: Zeroize, const N: usize>(
    bytes: &[u8],
    element: fn([u8; N]) -> T,
) -> Zeroizing<Vec<T>> {
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() / N));
    out.extend(bytes.chunks_exact(N).map(|chunk| {
        let mut array = [0u8; N];
        array.copy_from_slice(chunk);
        element(array)
    }));
    out
}

/// FP16 elements, cleared when dropped (`half`'s type does not implement `Zeroize`).
struct HalfBuffer(Vec<f16>);

impl HalfBuffer {
    fn decode(bytes: &[u8]) -> HalfBuffer {
        HalfBuffer(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }
}

impl Drop for HalfBuffer {
    fn drop(&mut self) {
        self.0.fill(f16::ZERO);
        // Keeps the clearing from being optimised away as a store to memory about to be freed.
        std::hint::black_box(&self.0);
    }
}

/// An output as our tensor: fixed-size elements as little-endian bytes (`BOOL` as 0 or 1),
/// strings as `BYTES`.
fn from_ort(spec: &TensorSpec, value: &DynValue, shape: Vec<usize>) -> Result<Tensor, String> {
    fn encode<T: ort::value::PrimitiveTensorElementType + Copy, const N: usize>(
        value: &DynValue,
        element: fn(T) -> [u8; N],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let (_, elements) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(elements.len().saturating_mul(N)));
        for &e in elements {
            bytes.extend_from_slice(&element(e));
        }
        Ok(bytes)
    }
    let bytes = match spec.datatype {
        DataType::Bool => encode::<bool, 1>(value, |b| [u8::from(b)]),
        DataType::U8 => value
            .try_extract_tensor::<u8>()
            .map(|(_, e)| Zeroizing::new(e.to_vec()))
            .map_err(|e| e.to_string()),
        DataType::U16 => encode(value, u16::to_le_bytes),
        DataType::U32 => encode(value, u32::to_le_bytes),
        DataType::U64 => encode(value, u64::to_le_bytes),
        DataType::I8 => encode(value, i8::to_le_bytes),
        DataType::I16 => encode(value, i16::to_le_bytes),
        DataType::I32 => encode(value, i32::to_le_bytes),
        DataType::I64 => encode(value, i64::to_le_bytes),
        DataType::F16 => encode(value, f16::to_le_bytes),
        DataType::F32 => encode(value, f32::to_le_bytes),
        DataType::F64 => encode(value, f64::to_le_bytes),
        DataType::Bytes => {
            let (_, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
            let elements = strings
                .into_iter()
                .map(|s| Zeroizing::new(s.into_bytes()))
                .collect();
            return Tensor::from_strings(shape, elements).map_err(|e| e.to_string());
        }
    }?;
    Tensor::from_le_bytes(spec.datatype, shape, bytes).map_err(|e| e.to_string())
}

/// Runs a call into `ort`, turning its panics into errors.
fn guarded<T>(call: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(result) => result,
        Err(payload) => {
            // A panic's message can quote a value of the request (an index out of bounds).
            let message = without_numbers(&panic_message(payload.as_ref()));
            Err(format!("onnxruntime panicked: {message}"))
        }
    }
}

/// A run's error as a reason that quotes no tensor values. ONNX Runtime names the failing node
/// (`... running Gather node. Name:'/embed/Gather' Status Message: ...`), which is kept; its
/// status message can quote an input's values (`idx=30522`), so every number in it is replaced
/// with `#`. Without a node, every number of the message is replaced.
fn run_reason(message: &str) -> String {
    const MARK: &str = "Status Message:";
    let (kept, masked) = match message.find(MARK) {
        Some(at) => message.split_at(at + MARK.len()),
        None => ("", message),
    };
    truncate(format!("{kept}{}", without_numbers(masked)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reasons_withhold_the_numbers_of_the_status_message() {
        let message = "Non-zero status code returned while running Gather node. \
                       Name:'/embeddings/Gather_1' Status Message: indices element out of data \
                       bounds, idx=40000 must be within the inclusive range [-30522,30521]";
        let reason = run_reason(message);
        assert!(reason.contains("Name:'/embeddings/Gather_1'"), "{reason}");
        assert!(!reason.contains("40000"), "{reason}");
        assert!(!reason.contains("30521"), "{reason}");
        assert!(reason.contains("idx=#"), "{reason}");
        assert_eq!(run_reason("value 1.5e3 is wrong"), "value # is wrong");
        assert_eq!(
            without_numbers("index out of bounds: the len is 3 but the index is 40961."),
            "index out of bounds: the len is # but the index is #."
        );
        assert_eq!(
            without_numbers("-2.5e-3 and 7 elements"),
            "-# and # elements"
        );
    }

    #[test]
    fn external_data_is_found_in_an_attribute_of_a_local_function() {
        fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
            out.push(u8::try_from((number << 3) | 2).unwrap());
            out.push(u8::try_from(bytes.len()).unwrap());
            out.extend_from_slice(bytes);
        }
        // TensorProto { name: "w", data_location: EXTERNAL }.
        let mut tensor = Vec::new();
        field(&mut tensor, 8, b"w");
        tensor.extend_from_slice(&[14 << 3, 1]);
        let mut attribute = Vec::new();
        field(&mut attribute, 5, &tensor);
        let mut node = Vec::new();
        field(&mut node, 5, &attribute);
        let mut function = Vec::new();
        field(&mut function, 7, &node);
        let mut model = vec![1 << 3, 8];
        // ModelProto.functions is field 25: the two-byte key 25 << 3 | 2 = 202.
        model.extend_from_slice(&[0xca, 0x01, u8::try_from(function.len()).unwrap()]);
        model.extend_from_slice(&function);
        assert_eq!(external_tensor(&model), Ok(Some("w".to_owned())));

        // The same tensor stored inline is fine.
        let inline = model.iter().position(|&b| b == 14 << 3).unwrap();
        model[inline + 1] = 0;
        assert_eq!(external_tensor(&model), Ok(None));
    }

    #[test]
    fn malformed_protobuf_is_an_error() {
        assert!(external_tensor(&[0x3a, 0x10, 1]).is_err());
        assert!(external_tensor(&[0xff; 11]).is_err());
        assert!(external_tensor(&[0x0b]).is_err());
    }

    /// No other test of this binary loads onnxruntime, so this one is the first: the file is
    /// opened, refused, and the process can still load a real library afterwards.
    #[test]
    fn a_file_that_is_not_a_library_is_refused_with_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("libonnxruntime.so.1.32.0");
        std::fs::write(&junk, b"not a shared library").unwrap();
        let message = OnnxRuntimeEngine::new(&junk).unwrap_err().to_string();
        assert!(message.contains(&junk.display().to_string()), "{message}");
        assert!(message.contains("cannot be used"), "{message}");
        assert!(message.contains("pip install onnxruntime"), "{message}");
        assert!(message.contains(LIBRARY_ENV), "{message}");
        assert!(RUNTIME.lock().unwrap().is_none());
    }

    #[test]
    fn panics_become_reasons() {
        let reason = guarded::<()>(|| panic!("bad pointer")).unwrap_err();
        assert_eq!(reason, "onnxruntime panicked: bad pointer");
    }
}
