//! The tract implementation of [`Engine`](super::Engine).
//!
//! A model is parsed from bytes in memory, typed, and optimised once, into one runnable plan that
//! every request shares. Symbolic dimensions (a `batch` axis, say) stay symbolic through
//! optimisation: tract binds them from the shapes of each run's inputs, so one plan serves every
//! batch size and no plan is built per shape.
//!
//! Loading tries, in order, and keeps the first that works:
//! 1. the optimised plan ([`Plan::Optimized`]);
//! 2. the decluttered plan, when tract's optimiser fails ([`Plan::Decluttered`]);
//! 3. both again with the graph's `value_info` ignored, when that information contradicts the
//!    graph or tract cannot type the model with it ([`Plan::ValueInfoIgnored`]).
//!
//! [`LoadOptions`] input shapes are given to tract as the inputs' facts before the graph is typed
//! (`apply_input_shapes`), in every attempt, so the signature shows the sizes they fix.
//!
//! Every call into tract is guarded against panics, so a malformed model or an engine bug becomes
//! an [`EngineError`] and never takes the server down.
//!
//! Tensor contents and weights never appear in logs or errors. tract's own messages can quote
//! tensor values (a constant in a fact description, a value in a debug-build check), so every
//! message taken from tract goes through [`tract_reason`], which withholds the parts that can.
//!
//! Limitation: the copies of weights and tensors that tract keeps internally are plain `Vec`s and
//! are not zeroized when freed; in the TEE, memory encryption protects them.

use std::borrow::Cow;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{
    f16, tract_ndarray, Datum, DatumType, Framework, InferenceFact, InferenceModel,
    InferenceModelExt, IntoTValue, OutletId, RunOptions, TValue, TVec, Tensor as TractTensor,
    ToDim, TractError, TractResult, TypedFact, TypedModel, TypedRunnableModel,
};
use tract_onnx::tract_hir::infer::{DimFact, Factoid, GenericFactoid, ShapeFactoid};
use tract_onnx::Onnx;
use zeroize::Zeroizing;

use super::{
    DataType, Dim, Engine, EngineError, InputError, InputShapeError, LoadOptions, LoadedModel,
    Plan, Signature, Tensor, TensorData, TensorSpec,
};

pub(crate) mod budget;

/// The default [`TractEngine::with_load_budget`]: 4 GiB. An ONNX model without external data
/// (which is refused) is one protobuf message, at most 2 GiB, so a model's stored weights are at
/// most 2 GiB; 4 GiB leaves as much again for constants computed from them, and refuses a
/// model whose graph computes more than that from a few bytes of shape.
pub const DEFAULT_LOAD_BUDGET: u64 = 4 << 30;

/// The longest reason taken from tract, in bytes. Longer ones are cut: a reason names the node
/// and the cause, and anything beyond this is a dump of the graph.
const MAX_REASON_LEN: usize = 2048;

/// The tract ONNX engine.
#[derive(Clone)]
pub struct TractEngine {
    onnx: Onnx,
    load_budget: u64,
}

impl TractEngine {
    /// An engine with every ONNX operator tract implements.
    pub fn new() -> TractEngine {
        // External data (weights in files beside the model) would make tract read the file
        // system while parsing; models come from memory only, so it is refused outright.
        let onnx = Onnx {
            provider: Arc::new(NoExternalData),
            ..tract_onnx::onnx()
        };
        TractEngine {
            onnx,
            load_budget: DEFAULT_LOAD_BUDGET,
        }
    }

    /// The same engine, refusing models whose constants need more than `bytes`: the declared
    /// initializers and constants, and the constants the graph computes from constant shapes
    /// (`ConstantOfShape`, `Expand`, `Tile`, `Range`, `Resize`, ...). The check reads the ONNX
    /// graph before tract builds or allocates anything, so such a model is refused at once.
    pub fn with_load_budget(mut self, bytes: u64) -> TractEngine {
        self.load_budget = bytes;
        self
    }

    /// The load budget, in bytes.
    pub fn load_budget(&self) -> u64 {
        self.load_budget
    }
}

impl Default for TractEngine {
    fn default() -> TractEngine {
        TractEngine::new()
    }
}

impl fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TractEngine")
            .field("load_budget", &self.load_budget)
            .finish_non_exhaustive()
    }
}

impl Engine for TractEngine {
    fn load_with(
        &self,
        onnx: &[u8],
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>, EngineError> {
        let proto = guarded(|| self.onnx.proto_model_for_read(&mut &onnx[..])).map_err(|e| {
            EngineError::Load {
                reason: format!("not an ONNX model: {e}"),
            }
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
        let has_value_info = proto
            .graph
            .as_ref()
            .is_some_and(|graph| !graph.value_info.is_empty());

        let mut failures = Vec::new();
        match self.plan(&proto, options, false, &mut failures)? {
            Some(model) => return Ok(Arc::new(model)),
            // Without value info, the second attempt would repeat the first.
            None if !has_value_info => {}
            None => {
                if let Some(model) = self.plan(&proto, options, true, &mut failures)? {
                    return Ok(Arc::new(model));
                }
            }
        }
        failures.dedup();
        Err(EngineError::Load {
            reason: failures.join("; "),
        })
    }
}

impl TractEngine {
    /// Types the model and builds the most optimised plan that tract manages. `None` when every
    /// step failed, with the reasons pushed to `failures`; an error only when the model is typed
    /// but uses something the server does not serve, or when `options` do not fit it.
    fn plan(
        &self,
        proto: &ModelProto,
        options: &LoadOptions,
        ignore_value_info: bool,
        failures: &mut Vec<String>,
    ) -> Result<Option<TractModel>, EngineError> {
        let note = if ignore_value_info {
            " (with the graph's value info ignored)"
        } else {
            ""
        };
        let onnx = self.onnx.clone().with_ignore_value_info(ignore_value_info);
        let mut graph = match guarded(|| onnx.model_for_proto_model(proto)) {
            Ok(graph) => graph,
            Err(reason) => {
                failures.push(format!("tract cannot read the graph{note}: {reason}"));
                return Ok(None);
            }
        };
        apply_input_shapes(&mut graph, options)?;
        let typed = match guarded(|| graph.into_typed()) {
            Ok(typed) => typed,
            Err(reason) => {
                failures.push(format!("tract cannot type the model{note}: {reason}"));
                return Ok(None);
            }
        };
        // The signature comes from the typed graph before optimisation, which keeps the graph's
        // names for every input and output; optimisation keeps their order.
        let signature = signature_of(&typed)?;
        let Some((runnable, plan)) = first_runnable(&typed, &STEPS, note, failures) else {
            return Ok(None);
        };
        let plan = if ignore_value_info {
            Plan::ValueInfoIgnored
        } else {
            plan
        };
        Ok(Some(TractModel {
            runnable,
            signature,
            plan,
        }))
    }
}

/// Gives the graph's inputs the shapes of `options` (see [`LoadOptions::input_shapes`]), keeping
/// their declared data types. Refuses an unknown input, another rank than the declared one, and a
/// size that contradicts a declared size.
fn apply_input_shapes(
    graph: &mut InferenceModel,
    options: &LoadOptions,
) -> Result<(), EngineError> {
    if options.input_shapes.is_empty() {
        return Ok(());
    }
    let load_error = |e: TractError| EngineError::Load {
        reason: tract_reason(&e),
    };
    let names: Vec<String> = graph
        .input_outlets()
        .map_err(load_error)?
        .iter()
        .map(|outlet| graph.nodes()[outlet.node].name.clone())
        .collect();
    for (name, dims) in &options.input_shapes {
        let Some(index) = names.iter().position(|n| n == name) else {
            return Err(InputShapeError::UnknownInput {
                name: name.clone(),
                inputs: names.join(", "),
            }
            .into());
        };
        let declared = graph.input_fact(index).map_err(load_error)?.clone();
        // An open shape is one whose rank the graph does not declare: any rank fits it.
        let declared_rank = declared.shape.dims().count();
        if !declared.shape.is_open() && declared_rank != dims.len() {
            return Err(InputShapeError::Rank {
                name: name.clone(),
                declared: declared_rank,
                given: dims.len(),
            }
            .into());
        }
        let mut shape: TVec<DimFact> = TVec::new();
        for (axis, &dim) in dims.iter().enumerate() {
            let declared_dim = declared.shape.dim(axis).and_then(|d| d.concretize());
            let dim = match (dim, declared_dim) {
                (Dim::Fixed(given), declared_dim) => {
                    let declared_size = declared_dim
                        .and_then(|d| d.to_i64().ok())
                        .and_then(|d| usize::try_from(d).ok());
                    if let Some(declared) = declared_size.filter(|&d| d != given) {
                        return Err(InputShapeError::Dimension {
                            name: name.clone(),
                            axis,
                            declared,
                            given,
                        }
                        .into());
                    }
                    given.to_dim()
                }
                (Dim::Dynamic, Some(declared)) => declared,
                // tract cannot type an input with an unknown dimension: a fresh symbol stands
                // for it, bound from each run's input like a named one.
                (Dim::Dynamic, None) => graph
                    .symbols
                    .new_with_prefix(&symbol_prefix(name, axis))
                    .to_dim(),
            };
            shape.push(GenericFactoid::Only(dim));
        }
        let fact = InferenceFact {
            shape: ShapeFactoid::closed(shape),
            ..declared
        };
        graph.set_input_fact(index, fact).map_err(load_error)?;
    }
    Ok(())
}

/// A symbol's name for axis `axis` of input `name`: letters, digits and `_` only, since tract
/// reads symbols back from text in places.
fn symbol_prefix(name: &str, axis: usize) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{name}_axis{axis}")
}

/// A step from a typed model to one that runs.
type Transform = fn(TypedModel) -> TractResult<TypedModel>;

/// The steps tried in turn, most optimised first.
const STEPS: [(Plan, &str, Transform); 2] = [
    (Plan::Optimized, "optimise", TypedModel::into_optimized),
    (Plan::Decluttered, "declutter", TypedModel::into_decluttered),
];

/// The runnable plan of the first step that works, with reasons pushed to `failures` for those
/// that do not.
fn first_runnable(
    typed: &TypedModel,
    steps: &[(Plan, &str, Transform)],
    note: &str,
    failures: &mut Vec<String>,
) -> Option<(Arc<TypedRunnableModel>, Plan)> {
    for &(plan, verb, transform) in steps {
        match guarded(|| {
            transform(typed.clone())?.into_runnable_with_options(&RunOptions::default())
        }) {
            Ok(runnable) => return Some((runnable, plan)),
            Err(reason) => failures.push(format!("tract cannot {verb} the model{note}: {reason}")),
        }
    }
    None
}

/// Refuses ONNX external data: a model is the bytes it was loaded from, and nothing on disk.
struct NoExternalData;

impl ModelDataResolver for NoExternalData {
    fn read_bytes_from_path(
        &self,
        _buf: &mut Vec<u8>,
        _path: &Path,
        _offset: usize,
        _length: Option<usize>,
    ) -> TractResult<()> {
        Err(TractError::msg(
            "the model refers to external data, which is not served: weights must be inside the model",
        ))
    }
}

/// A model as tract runs it: one plan shared by every request.
struct TractModel {
    runnable: Arc<TypedRunnableModel>,
    signature: Signature,
    plan: Plan,
}

impl fmt::Debug for TractModel {
    // The graph holds the weights, so only the signature and the plan are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TractModel")
            .field("signature", &self.signature)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl LoadedModel for TractModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self) -> Plan {
        self.plan
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
        let values = self
            .signature
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(spec, tensor)| to_tract(spec, tensor).map(IntoTValue::into_tvalue))
            .collect::<Result<TVec<TValue>, EngineError>>()?;
        drop(inputs);
        // `run` spawns a fresh state for this call: the plan itself is shared and never mutated,
        // which is what lets many threads run one model at once.
        let outputs =
            guarded(|| self.runnable.run(values)).map_err(|reason| EngineError::Run { reason })?;
        if outputs.len() != self.signature.outputs.len() {
            return Err(EngineError::Run {
                reason: format!(
                    "the model declares {} outputs, tract returned {}",
                    self.signature.outputs.len(),
                    outputs.len()
                ),
            });
        }
        // Checked before the copy out of tract: a refused output is held in memory once.
        for (spec, value) in self.signature.outputs.iter().zip(&outputs) {
            super::check_output_elements(&spec.name, value.len(), max_elements)?;
        }
        self.signature
            .outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| from_tract(spec, &value))
            .collect()
    }
}

/// The signature of a typed model: names from the graph, types and shapes from tract's facts.
fn signature_of(model: &TypedModel) -> Result<Signature, EngineError> {
    let facts = |outlets: &[OutletId], inputs: bool| {
        outlets
            .iter()
            .map(|&outlet| {
                let node = &model.nodes()[outlet.node];
                let name = if inputs {
                    node.name.clone()
                } else {
                    model
                        .outlet_label(outlet)
                        .map_or_else(|| node.name.clone(), str::to_owned)
                };
                let fact = model.outlet_fact(outlet).map_err(|e| EngineError::Load {
                    reason: tract_reason(&e),
                })?;
                spec_of(name, fact, inputs)
            })
            .collect::<Result<Vec<_>, EngineError>>()
    };
    let inputs = model.input_outlets().map_err(|e| EngineError::Load {
        reason: tract_reason(&e),
    })?;
    let outputs = model.output_outlets().map_err(|e| EngineError::Load {
        reason: tract_reason(&e),
    })?;
    Ok(Signature {
        inputs: facts(inputs, true)?,
        outputs: facts(outputs, false)?,
    })
}

/// The protocol's type for a tract type, if the server serves it.
fn served_type(datum_type: DatumType) -> Option<DataType> {
    Some(match datum_type {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec_of(name: String, fact: &TypedFact, input: bool) -> Result<TensorSpec, EngineError> {
    let datatype = match fact.datum_type {
        // tract computes shapes as symbolic integers (an output of `Shape`, say); they leave the
        // model as INT64, the type ONNX gives them.
        DatumType::TDim if !input => DataType::I64,
        other => served_type(other).ok_or_else(|| {
            let role = if input { "input" } else { "output" };
            EngineError::Unsupported {
                reason: format!("{role} '{name}' has data type {other:?}, which is not served"),
            }
        })?,
    };
    // A typed fact always has a rank; a dimension is fixed only when it is a plain number.
    let shape = fact
        .shape
        .iter()
        .map(|dim| match dim.as_i64().map(usize::try_from) {
            Some(Ok(size)) => Dim::Fixed(size),
            _ => Dim::Dynamic,
        })
        .collect();
    Ok(TensorSpec {
        name,
        datatype,
        shape: Some(shape),
    })
}

/// Our tensor as tract's, checked against the input's declared type.
fn to_tract(spec: &TensorSpec, tensor: &Tensor) -> Result<TractTensor, EngineError> {
    if tensor.datatype() != spec.datatype {
        return Err(InputError::DataType {
            name: spec.name.clone(),
            expected: spec.datatype,
            actual: tensor.datatype(),
        }
        .into());
    }
    let shape = tensor.shape();
    let converted = match tensor.data() {
        TensorData::Fixed(bytes) => match tensor.datatype() {
            DataType::Bool => from_le::<bool, 1>(shape, bytes, |[b]| b != 0),
            DataType::U8 => from_le(shape, bytes, u8::from_le_bytes),
            DataType::U16 => from_le(shape, bytes, u16::from_le_bytes),
            DataType::U32 => from_le(shape, bytes, u32::from_le_bytes),
            DataType::U64 => from_le(shape, bytes, u64::from_le_bytes),
            DataType::I8 => from_le(shape, bytes, i8::from_le_bytes),
            DataType::I16 => from_le(shape, bytes, i16::from_le_bytes),
            DataType::I32 => from_le(shape, bytes, i32::from_le_bytes),
            DataType::I64 => from_le(shape, bytes, i64::from_le_bytes),
            DataType::F16 => from_le(shape, bytes, f16::from_le_bytes),
            DataType::F32 => from_le(shape, bytes, f32::from_le_bytes),
            DataType::F64 => from_le(shape, bytes, f64::from_le_bytes),
            DataType::Bytes => return Err(wrong_kind(spec)),
        },
        TensorData::Bytes(elements) => {
            if tensor.datatype() != DataType::Bytes {
                return Err(wrong_kind(spec));
            }
            // tract's strings are Rust strings, so BYTES elements must be UTF-8.
            let strings = elements
                .iter()
                .enumerate()
                .map(|(index, element)| {
                    std::str::from_utf8(element)
                        .map(str::to_owned)
                        .map_err(|_| InputError::NotUtf8 {
                            name: spec.name.clone(),
                            index,
                        })
                })
                .collect::<Result<Vec<String>, InputError>>()?;
            tract_ndarray::ArrayD::from_shape_vec(shape, strings)
                .map(TractTensor::from)
                .map_err(TractError::from)
        }
    };
    converted.map_err(|e| EngineError::Run {
        reason: format!("input '{}': {}", spec.name, tract_reason(&e)),
    })
}

/// A tract tensor of `T` from little-endian elements of `N` bytes.
fn from_le<T: Datum + Copy, const N: usize>(
    shape: &[usize],
    bytes: &[u8],
    decode: fn([u8; N]) -> T,
) -> TractResult<TractTensor> {
    let elements: Vec<T> = bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut element = [0u8; N];
            element.copy_from_slice(chunk);
            decode(element)
        })
        .collect();
    TractTensor::from_shape(shape, &elements)
}

fn wrong_kind(spec: &TensorSpec) -> EngineError {
    EngineError::Run {
        reason: format!(
            "input '{}': {} does not take this kind of data",
            spec.name, spec.datatype
        ),
    }
}

/// tract's tensor as ours: fixed-size elements as little-endian bytes (`BOOL` as 0 or 1),
/// strings as `BYTES`.
fn from_tract(spec: &TensorSpec, value: &TValue) -> Result<Tensor, EngineError> {
    let run_error = |reason: String| EngineError::Run {
        reason: format!("output '{}': {reason}", spec.name),
    };
    let shape = value.shape().to_vec();
    let value: Cow<'_, TractTensor> = if value.datum_type() == DatumType::TDim {
        value
            .cast_to::<i64>()
            .map_err(|e| run_error(tract_reason(&e)))?
    } else {
        Cow::Borrowed(&**value)
    };
    if served_type(value.datum_type()) != Some(spec.datatype) {
        return Err(run_error(format!(
            "tract returned data type {:?}, the model declares {}",
            value.datum_type(),
            spec.datatype
        )));
    }
    let bytes = match value.datum_type() {
        DatumType::Bool => to_le::<bool, 1>(&value, |b| [u8::from(b)]),
        DatumType::U8 => to_le(&value, u8::to_le_bytes),
        DatumType::U16 => to_le(&value, u16::to_le_bytes),
        DatumType::U32 => to_le(&value, u32::to_le_bytes),
        DatumType::U64 => to_le(&value, u64::to_le_bytes),
        DatumType::I8 => to_le(&value, i8::to_le_bytes),
        DatumType::I16 => to_le(&value, i16::to_le_bytes),
        DatumType::I32 => to_le(&value, i32::to_le_bytes),
        DatumType::I64 => to_le(&value, i64::to_le_bytes),
        DatumType::F16 => to_le(&value, f16::to_le_bytes),
        DatumType::F32 => to_le(&value, f32::to_le_bytes),
        DatumType::F64 => to_le(&value, f64::to_le_bytes),
        DatumType::String => {
            let elements = value
                .to_plain_array_view::<String>()
                .map_err(|e| run_error(tract_reason(&e)))?
                .iter()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .collect();
            return Tensor::from_strings(shape, elements).map_err(|e| run_error(e.to_string()));
        }
        other => return Err(run_error(format!("tract returned data type {other:?}"))),
    }
    .map_err(|e| run_error(tract_reason(&e)))?;
    Tensor::from_le_bytes(spec.datatype, shape, bytes).map_err(|e| run_error(e.to_string()))
}

/// The elements of a tract tensor of `T`, row-major, each encoded by `encode`.
fn to_le<T: Datum + Copy, const N: usize>(
    tensor: &TractTensor,
    encode: fn(T) -> [u8; N],
) -> TractResult<Zeroizing<Vec<u8>>> {
    let view = tensor.to_plain_array_view::<T>()?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(view.len().saturating_mul(N)));
    for &element in view.iter() {
        bytes.extend_from_slice(&encode(element));
    }
    Ok(bytes)
}

/// Runs a call into tract, turning its panics into errors, and its errors into reasons that
/// quote no tensor values.
fn guarded<T>(call: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(tract_reason(&e)),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(format!("tract panicked: {}", without_values(&message)))
        }
    }
}

/// tract's error chain, outermost first, without the messages that can quote tensor values, cut
/// to [`MAX_REASON_LEN`].
fn tract_reason(error: &TractError) -> String {
    let reason = error
        .chain()
        .map(|cause| without_values(&cause.to_string()).into_owned())
        .collect::<Vec<_>>()
        .join(": ");
    truncate(reason)
}

/// The message, or a placeholder when it may quote tensor values. tract prints a tensor as its
/// shape, `,`, its datum type and a space, then its elements (`2,3,F32 1, 2, 3...`), and a
/// constant fact after `🟰` or `◻️`: a message with any of these is withheld whole.
fn without_values(message: &str) -> Cow<'_, str> {
    const WITHHELD: &str = "[a message that may quote tensor values, withheld]";
    const DATUM_TYPES: [&str; 17] = [
        "Bool", "U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64", "F16", "F32", "F64", "TDim",
        "Blob", "String", "QI8", "QU8",
    ];
    let quotes_values = message.contains('🟰')
        || message.contains("◻️")
        || DATUM_TYPES
            .iter()
            .any(|dt| message.contains(&format!(",{dt} ")) || message.contains(&format!(",{dt}(")));
    if quotes_values {
        Cow::Borrowed(WITHHELD)
    } else {
        Cow::Borrowed(message)
    }
}

fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
    reason
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::{tvec, SpecialOps};

    use super::*;

    #[test]
    fn messages_quoting_tensors_are_withheld() {
        let tensor = TractTensor::from_shape(&[2, 3], &[1.5f32, 2.0, 3.0, 4.0, 5.0, 6.25]).unwrap();
        let message = format!("Evaluating #3 \"add\": input 0, got {tensor:?}");
        assert!(message.contains("6.25"), "{message}");
        assert!(!without_values(&message).contains("6.25"));

        let scalar = TractTensor::from_shape(&[], &[42i64]).unwrap();
        assert!(!without_values(&format!("got {scalar:?}")).contains("42"));

        let plain = "Translating node #1 \"y\" Det: operator is not implemented";
        assert_eq!(without_values(plain), plain);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = truncate("é".repeat(MAX_REASON_LEN));
        assert!(reason.len() <= MAX_REASON_LEN + 3);
        assert!(reason.ends_with("..."));
    }

    /// A typed model whose output is its input doubled.
    fn doubling() -> TypedModel {
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", TypedFact::dt_shape(DatumType::F32, [3]))
            .unwrap();
        let two = model
            .add_const("two", TractTensor::from_shape(&[1], &[2.0f32]).unwrap())
            .unwrap();
        let y = model
            .wire_node("y", tract_onnx::tract_core::ops::math::mul(), &[x, two])
            .unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn a_failing_optimiser_falls_back_to_the_next_step() {
        fn fails(_: TypedModel) -> TractResult<TypedModel> {
            Err(TractError::msg("the optimiser gave up"))
        }
        fn panics(_: TypedModel) -> TractResult<TypedModel> {
            panic!("the optimiser crashed")
        }
        for broken in [fails as Transform, panics] {
            let steps = [
                (Plan::Optimized, "optimise", broken),
                (
                    Plan::Decluttered,
                    "declutter",
                    TypedModel::into_decluttered as Transform,
                ),
            ];
            let mut failures = Vec::new();
            let (runnable, plan) = first_runnable(&doubling(), &steps, "", &mut failures).unwrap();
            assert_eq!(plan, Plan::Decluttered);
            assert_eq!(failures.len(), 1);
            assert!(
                failures[0].starts_with("tract cannot optimise the model: "),
                "{failures:?}"
            );
            let x = TractTensor::from_shape(&[3], &[1.0f32, -2.0, 3.5]).unwrap();
            let y = runnable.run(tvec![x.into_tvalue()]).unwrap();
            let y = y[0].to_plain_array_view::<f32>().unwrap();
            assert_eq!(y.iter().copied().collect::<Vec<_>>(), [2.0, -4.0, 7.0]);
        }

        let steps = [(Plan::Optimized, "optimise", fails as Transform)];
        let mut failures = Vec::new();
        assert!(first_runnable(&doubling(), &steps, "", &mut failures).is_none());
        assert_eq!(
            failures,
            ["tract cannot optimise the model: the optimiser gave up"]
        );
    }

    #[test]
    fn panics_become_reasons() {
        let reason = guarded::<()>(|| panic!("index out of bounds")).unwrap_err();
        assert_eq!(reason, "tract panicked: index out of bounds");
    }
}
