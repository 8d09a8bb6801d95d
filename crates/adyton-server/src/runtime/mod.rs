//! The inference engine: one trait, tensors in the Open Inference Protocol's data types, model
//! signatures, and the checks an input passes before it reaches the engine.
//!
//! [`tract::TractEngine`] is the implementation; no other module knows tract.

pub mod onnxruntime;
mod reason;
mod staging;
pub mod tract;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::sync::Arc;

use zeroize::Zeroizing;

/// An Open Inference Protocol data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// One byte per element, 0 or 1.
    Bool,
    /// Unsigned integers.
    U8,
    /// Unsigned integers.
    U16,
    /// Unsigned integers.
    U32,
    /// Unsigned integers.
    U64,
    /// Signed integers.
    I8,
    /// Signed integers.
    I16,
    /// Signed integers.
    I32,
    /// Signed integers.
    I64,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Byte strings of any length.
    Bytes,
}

impl DataType {
    /// Every data type, in the protocol's order.
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// The protocol's name: `BOOL`, `UINT8`, ..., `FP32`, `BYTES`.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// The data type of a protocol name; `None` for names the protocol does not define here
    /// (BF16 included).
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element, or `None` for `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor. Both forms are zeroized on drop: tensors are the data owner's secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, row-major: the binary tensor extension's layout.
    Fixed(Zeroizing<Vec<u8>>),
    /// `BYTES` elements, row-major.
    Bytes(Vec<Zeroizing<Vec<u8>>>),
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorData::Fixed(bytes) => write!(f, "Fixed(<{} bytes>)", bytes.len()),
            TensorData::Bytes(elements) => write!(f, "Bytes(<{} elements>)", elements.len()),
        }
    }
}

impl Drop for TensorData {
    /// Fixed-size bytes are zeroized as a slice: one `memset` behind an optimisation barrier
    /// (`zeroize`'s implementation for `[u8]`), where `Zeroizing<Vec<u8>>` alone writes a
    /// vector's bytes one volatile byte at a time, about a millisecond per 4 MiB.
    fn drop(&mut self) {
        if let TensorData::Fixed(bytes) = self {
            // Each byte once: the spare capacity, then the bytes; the emptied vector is freed.
            let mut bytes = std::mem::take(&mut **bytes);
            zeroize::Zeroize::zeroize(bytes.spare_capacity_mut());
            zeroize::Zeroize::zeroize(bytes.as_mut_slice());
        }
    }
}

/// A tensor: a data type, a shape and its elements. Its contents never appear in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    datatype: DataType,
    shape: Vec<usize>,
    data: TensorData,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("datatype", &self.datatype)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Why a tensor could not be built from its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The element count overflows.
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<usize>,
    },
    /// The bytes do not fill the shape exactly.
    #[error("{datatype} tensor of shape {shape:?} needs {expected} bytes, got {actual}")]
    ByteLength {
        /// The data type.
        datatype: DataType,
        /// The shape.
        shape: Vec<usize>,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The number of strings does not fill the shape exactly.
    #[error("BYTES tensor of shape {shape:?} needs {expected} elements, got {actual}")]
    ElementCount {
        /// The shape.
        shape: Vec<usize>,
        /// Elements expected.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// A `BOOL` byte other than 0 or 1.
    #[error("BOOL elements must be 0 or 1")]
    BadBool,
    /// Fixed-size bytes given for `BYTES`, or strings for a fixed-size type.
    #[error("{datatype} does not take this kind of data")]
    WrongKind {
        /// The data type.
        datatype: DataType,
    },
}

/// Sizes as people read them: `1.0 GiB`.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    // Precision is not needed in a message; the value is only shown.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The number of elements of `shape`, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    /// A tensor of fixed-size elements from little-endian, row-major bytes.
    pub fn from_le_bytes(
        datatype: DataType,
        shape: Vec<usize>,
        bytes: Zeroizing<Vec<u8>>,
    ) -> Result<Tensor, TensorError> {
        let Some(size) = datatype.element_size() else {
            return Err(TensorError::WrongKind { datatype });
        };
        let expected = element_count(&shape)
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| TensorError::ShapeOverflow {
                shape: shape.clone(),
            })?;
        if bytes.len() != expected {
            return Err(TensorError::ByteLength {
                datatype,
                shape,
                expected,
                actual: bytes.len(),
            });
        }
        if datatype == DataType::Bool && bytes.iter().any(|&b| b > 1) {
            return Err(TensorError::BadBool);
        }
        Ok(Tensor {
            datatype,
            shape,
            data: TensorData::Fixed(bytes),
        })
    }

    /// A `BYTES` tensor from its elements, row-major.
    pub fn from_strings(
        shape: Vec<usize>,
        elements: Vec<Zeroizing<Vec<u8>>>,
    ) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.clone(),
        })?;
        if elements.len() != expected {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                actual: elements.len(),
            });
        }
        Ok(Tensor {
            datatype: DataType::Bytes,
            shape,
            data: TensorData::Bytes(elements),
        })
    }

    /// Its data type.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Its element count.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(bytes) => bytes.len() / self.datatype.element_size().unwrap_or(1),
            TensorData::Bytes(elements) => elements.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its size in bytes (for `BYTES`, the sum of the element lengths).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::Fixed(bytes) => bytes.len(),
            TensorData::Bytes(elements) => elements.iter().map(|e| e.len()).sum(),
        }
    }
}

/// A dimension of a declared tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// Any size (symbolic in the graph, such as a batch dimension); `-1` in model metadata.
    Dynamic,
}

impl Dim {
    /// The protocol's form: the size, or -1.
    pub fn as_i64(self) -> i64 {
        match self {
            Dim::Fixed(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Dim::Dynamic => -1,
        }
    }
}

/// A declared input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its name in the graph.
    pub name: String,
    /// Its data type.
    pub datatype: DataType,
    /// Its shape; `None` when the graph does not declare one (then any rank is accepted).
    pub shape: Option<Vec<Dim>>,
}

/// A model's declared inputs and outputs, in graph order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// Inputs, in the order [`LoadedModel::run`] takes them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order [`LoadedModel::run`] returns them.
    pub outputs: Vec<TensorSpec>,
}

/// How far the engine could optimise a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Fully optimised, one plan for every input shape.
    Optimized,
    /// An optimised plan per concrete input shape, compiled on first use and cached
    /// ([`PlanCacheOptions`]).
    PerShape,
    /// The optimiser failed; the decluttered (less optimised) plan runs.
    Decluttered,
    /// Both failed with the graph's value info; it loaded with that info ignored.
    ValueInfoIgnored,
    /// ONNX Runtime's own graph optimisations (the `onnxruntime` engine).
    OnnxRuntime,
}

impl Plan {
    /// A short name for metadata and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Optimized => "optimized",
            Plan::PerShape => "optimized-per-shape",
            Plan::Decluttered => "decluttered",
            Plan::ValueInfoIgnored => "value-info-ignored",
            Plan::OnnxRuntime => "onnxruntime",
        }
    }
}

/// The engines a model can run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// tract: pure Rust, the default, and the smaller trusted computing base.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from its shared library at run time.
    OnnxRuntime,
}

impl EngineKind {
    /// The name used in settings and on the command line: `tract` or `onnxruntime`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Tract => "tract",
            EngineKind::OnnxRuntime => "onnxruntime",
        }
    }

    /// The engine of a name ([`EngineKind::as_str`]).
    pub fn parse(name: &str) -> Option<EngineKind> {
        match name {
            "tract" => Some(EngineKind::Tract),
            "onnxruntime" => Some(EngineKind::OnnxRuntime),
            _ => None,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Concrete input shapes, by input name: one shape per input.
pub type ShapeSet = BTreeMap<String, Vec<usize>>;

/// The bounds of a model's cache of plans per input shape ([`Plan::PerShape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanCacheOptions {
    /// The most plans kept; the least recently used is evicted beyond it.
    pub max_plans: usize,
    /// The most memory the cached plans may take, by the engine's estimate; the least recently
    /// used are evicted beyond it, and a single plan over it is refused.
    pub max_bytes: u64,
    /// The most plans compiled in any minute; a request that needs one more is refused with
    /// [`EngineError::Busy`] (429), unless a plan for every shape can serve it.
    pub max_compiles_per_minute: u32,
}

impl Default for PlanCacheOptions {
    fn default() -> PlanCacheOptions {
        PlanCacheOptions {
            max_plans: 16,
            max_bytes: 1 << 30,
            max_compiles_per_minute: 30,
        }
    }
}

/// What a model's plans have cost and saved so far, for metrics and model metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlanStats {
    /// Plans compiled (ahead of time and on first use).
    pub compiled: u64,
    /// Requests served by a plan already cached.
    pub hits: u64,
    /// Plans evicted from the cache.
    pub evictions: u64,
    /// Shapes refused (each also cached, so that it is not compiled again).
    pub refusals: u64,
    /// Compilations refused by the per-minute cap.
    pub rate_limited: u64,
    /// Seconds spent compiling, in total.
    pub compile_seconds: f64,
    /// Plans in the cache now.
    pub cached_plans: u64,
    /// The cache's memory now, by the engine's estimate, in bytes.
    pub cached_bytes: u64,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes are not a model the engine can load; `reason` is the engine's own words.
    #[error("the model cannot be loaded: {reason}")]
    Load {
        /// Why.
        reason: String,
    },
    /// The model uses something the server does not serve (a data type, say).
    #[error("the model is not supported: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The inputs do not match the model's declared inputs; the message names the input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Running the model failed.
    #[error("inference failed: {reason}")]
    Run {
        /// Why.
        reason: String,
    },
    /// Reading the model failed.
    #[error("reading the model failed: {0}")]
    Io(#[from] std::io::Error),
    /// The [`LoadOptions`] do not fit the model; the message names the input.
    #[error(transparent)]
    InputShape(#[from] InputShapeError),
    /// The model's constants, declared or computed from constant shapes, need more memory than
    /// the engine's load budget; found on the graph before the engine allocates them.
    #[error(
        "model constants need {}, over the load budget of {} (the largest: {largest})",
        human_bytes(*.needed),
        human_bytes(u128::from(*.budget))
    )]
    OverBudget {
        /// Bytes the constants need.
        needed: u128,
        /// The budget, in bytes.
        budget: u64,
        /// The largest constant: where, its shape, type and size.
        largest: String,
    },
    /// The model cannot take an input of this shape (a plan for it cannot be built, or would be
    /// over the plan cache's memory bound); always names the input. The refusal is cached.
    #[error("input '{name}' of shape {shape:?} is refused: {reason}")]
    Shape {
        /// The input.
        name: String,
        /// The shape given.
        shape: Vec<usize>,
        /// Why.
        reason: String,
    },
    /// The engine has done as much work of this kind as it may for now (plans compiled this
    /// minute, say); the request may be repeated after `retry_after_secs` (429).
    #[error("{reason}")]
    Busy {
        /// Why.
        reason: String,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
    /// The engine refused the inputs while running them, for a reason of the inputs' own (an
    /// index out of range, dimensions that disagree between inputs): the request's fault, so a
    /// 400, never the server's. The reason quotes no tensor values.
    #[error("the model refused the inputs: {reason}")]
    InputRejected {
        /// Why.
        reason: String,
    },
    /// An output has more elements than the server sends (the same limit as an input's).
    #[error(
        "output '{name}' has {elements} elements, over the limit of {limit} elements per tensor \
         (max_tensor_elements)"
    )]
    OutputTooLarge {
        /// The output.
        name: String,
        /// Its element count.
        elements: usize,
        /// The limit.
        limit: usize,
    },
}

/// What the operator tells the engine about a model that its graph does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Input shapes by input name, given to the engine in place of the graph's declared shapes
    /// before the model is typed. Each must have the declared rank. On an axis, [`Dim::Fixed`]
    /// fixes the size (it may not contradict a size the graph declares); [`Dim::Dynamic`] keeps the
    /// graph's dimension, or makes it a symbol when the graph gives it neither a size nor a name.
    ///
    /// Some graphs cannot be typed without it: PaddleOCR's recognizer declares its input
    /// `[N, 3, ?, W]` and squeezes the height away after downsampling, which needs the height (48).
    /// A fixed dimension then shows as fixed in the model's [`Signature`], and inputs of another
    /// size are refused before they reach the engine.
    pub input_shapes: BTreeMap<String, Vec<Dim>>,
    /// Concrete input shapes whose plans are compiled at load, before the model is reported
    /// ready (for an engine with plans per shape; others check them against the signature).
    pub ahead_shapes: Vec<ShapeSet>,
    /// Threads for one inference's operators (intra-op); `None` for the engine's default.
    pub threads: Option<usize>,
    /// The bounds of the cache of plans per input shape.
    pub plan_cache: PlanCacheOptions,
    /// The batch sizes dynamic batching prefers to form (its `preferred_batch_size`): an engine
    /// may compile plans of their own for inputs of these sizes on axis 0.
    pub batch_sizes: Vec<usize>,
}

impl LoadOptions {
    /// Whether the options change nothing.
    pub fn is_empty(&self) -> bool {
        self.input_shapes.is_empty()
            && self.ahead_shapes.is_empty()
            && self.threads.is_none()
            && self.plan_cache == PlanCacheOptions::default()
            && self.batch_sizes.is_empty()
    }
}

/// [`LoadOptions`] that do not fit the model: always names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputShapeError {
    /// A shape given for a name that is not one of the model's inputs.
    #[error("a shape is given for input '{name}', which is not an input of this model (inputs: {inputs})")]
    UnknownInput {
        /// The name given.
        name: String,
        /// The model's inputs, comma-separated.
        inputs: String,
    },
    /// A shape of another rank than the input's declared one.
    #[error(
        "the shape given for input '{name}' has {given} dimensions, the model declares {declared}"
    )]
    Rank {
        /// The input.
        name: String,
        /// The declared rank.
        declared: usize,
        /// The rank given.
        given: usize,
    },
    /// A size that contradicts the size the model declares on that axis.
    #[error("the shape given for input '{name}' has {given} on axis {axis}, the model declares {declared}")]
    Dimension {
        /// The input.
        name: String,
        /// The axis.
        axis: usize,
        /// The declared size.
        declared: usize,
        /// The size given.
        given: usize,
    },
}

/// An input that does not match the model: always names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A declared input that was not given.
    #[error("input '{name}' is missing")]
    Missing {
        /// The input.
        name: String,
    },
    /// A given input that the model does not declare.
    #[error("input '{name}' is not an input of this model (inputs: {expected})")]
    Unknown {
        /// The input.
        name: String,
        /// The declared inputs, comma-separated.
        expected: String,
    },
    /// The same input given twice.
    #[error("input '{name}' is given more than once")]
    Duplicate {
        /// The input.
        name: String,
    },
    /// The wrong data type.
    #[error("input '{name}' must be {expected}, got {actual}")]
    DataType {
        /// The input.
        name: String,
        /// Declared.
        expected: DataType,
        /// Given.
        actual: DataType,
    },
    /// The wrong rank.
    #[error("input '{name}' must have {expected} dimensions, got shape {actual:?}")]
    Rank {
        /// The input.
        name: String,
        /// Declared rank.
        expected: usize,
        /// Given shape.
        actual: Vec<usize>,
    },
    /// A fixed dimension of the wrong size.
    #[error("input '{name}' dimension {axis} must be {expected}, got shape {actual:?}")]
    Dimension {
        /// The input.
        name: String,
        /// The axis.
        axis: usize,
        /// Declared size.
        expected: usize,
        /// Given shape.
        actual: Vec<usize>,
    },
    /// A `BYTES` element holding a NUL byte, given to an engine whose strings cannot hold one
    /// (ONNX Runtime's are C strings).
    #[error(
        "input '{name}' element {index} holds a NUL byte, which this model's engine cannot take"
    )]
    NulByte {
        /// The input.
        name: String,
        /// The element's row-major index.
        index: usize,
    },
    /// A `BYTES` element that is not UTF-8, given to a model whose input is a string tensor.
    #[error("input '{name}' element {index} is not UTF-8, and the model takes text")]
    NotUtf8 {
        /// The input.
        name: String,
        /// The element's row-major index.
        index: usize,
    },
}

/// The inference engine: turns ONNX bytes into a runnable model.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Loads a model from ONNX bytes in memory with `options` applied (input shapes, say), and
    /// optimises it once (falling back to a less optimised plan, then to ignoring the graph's
    /// value info, and failing only when nothing works, with the engine's reason). Options that
    /// do not fit the model are an [`EngineError::InputShape`].
    fn load_with(
        &self,
        onnx: &[u8],
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, EngineError>;

    /// Loads a model from ONNX bytes in memory, as its graph declares it: [`Engine::load_with`]
    /// without options.
    fn load(&self, onnx: &[u8]) -> Result<Arc<dyn LoadedModel>, EngineError> {
        self.load_with(onnx, &LoadOptions::default())
    }

    /// Loads a model from a reader (a decrypting stream, say) with `options` applied. The bytes
    /// are held only in memory that is zeroized afterwards.
    fn load_from_reader_with(
        &self,
        reader: &mut dyn Read,
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, EngineError> {
        let mut bytes = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut bytes)?;
        self.load_with(&bytes, options)
    }

    /// Loads a model from a reader without options.
    fn load_from_reader(&self, reader: &mut dyn Read) -> Result<Arc<dyn LoadedModel>, EngineError> {
        self.load_from_reader_with(reader, &LoadOptions::default())
    }
}

/// A loaded, optimised model. `run` may be called from many threads at once.
pub trait LoadedModel: Send + Sync + fmt::Debug {
    /// Its declared inputs and outputs.
    fn signature(&self) -> &Signature;

    /// How far it was optimised.
    fn plan(&self) -> Plan;

    /// The engine that runs it.
    fn engine(&self) -> EngineKind {
        EngineKind::Tract
    }

    /// Its plan cache's counters; all zero for a model with one plan.
    fn plan_stats(&self) -> PlanStats {
        PlanStats::default()
    }

    /// Runs it. `inputs` are in the signature's input order and have passed [`check_inputs`];
    /// the outputs come back in the signature's output order.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError>;

    /// [`LoadedModel::run`], refusing any output of more than `max_elements` elements with
    /// [`EngineError::OutputTooLarge`]. An engine that can should check before it copies its
    /// outputs out, so that a refused output is held in memory once; this default checks after.
    fn run_bounded(
        &self,
        inputs: Vec<Tensor>,
        max_elements: usize,
    ) -> Result<Vec<Tensor>, EngineError> {
        let outputs = self.run(inputs)?;
        for (spec, tensor) in self.signature().outputs.iter().zip(&outputs) {
            check_output_elements(&spec.name, tensor.len(), max_elements)?;
        }
        Ok(outputs)
    }
}

/// Refuses an output of more than `max_elements` elements.
pub fn check_output_elements(
    name: &str,
    elements: usize,
    max_elements: usize,
) -> Result<(), EngineError> {
    if elements > max_elements {
        return Err(EngineError::OutputTooLarge {
            name: name.to_owned(),
            elements,
            limit: max_elements,
        });
    }
    Ok(())
}

/// Checks named inputs against a signature (name, data type, rank, fixed dimensions), and puts
/// them in the signature's order. Every error names the input.
pub fn check_inputs(
    signature: &Signature,
    inputs: Vec<(String, Tensor)>,
) -> Result<Vec<Tensor>, InputError> {
    let mut slots: Vec<Option<Tensor>> = signature.inputs.iter().map(|_| None).collect();
    for (name, tensor) in inputs {
        let Some(index) = signature.inputs.iter().position(|s| s.name == name) else {
            let expected = signature
                .inputs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(InputError::Unknown { name, expected });
        };
        let spec = &signature.inputs[index];
        if tensor.datatype() != spec.datatype {
            return Err(InputError::DataType {
                name,
                expected: spec.datatype,
                actual: tensor.datatype(),
            });
        }
        if let Some(dims) = &spec.shape {
            if dims.len() != tensor.shape().len() {
                return Err(InputError::Rank {
                    name,
                    expected: dims.len(),
                    actual: tensor.shape().to_vec(),
                });
            }
            for (axis, (dim, &size)) in dims.iter().zip(tensor.shape()).enumerate() {
                if let Dim::Fixed(expected) = *dim {
                    if expected != size {
                        return Err(InputError::Dimension {
                            name,
                            axis,
                            expected,
                            actual: tensor.shape().to_vec(),
                        });
                    }
                }
            }
        }
        if slots[index].is_some() {
            return Err(InputError::Duplicate { name });
        }
        slots[index] = Some(tensor);
    }
    slots
        .into_iter()
        .zip(&signature.inputs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| InputError::Missing {
                name: spec.name.clone(),
            })
        })
        .collect()
}
