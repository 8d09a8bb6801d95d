//! The tract implementation of [`Engine`](super::Engine).
//!
//! A model is parsed from bytes in memory and typed. What runs then depends on its inputs:
//!
//! - **One plan** when every input dimension is fixed, or when tract optimises the graph with
//!   its symbolic dimensions (a `batch` or `sequence` axis): tract binds the symbols from each
//!   run's inputs, so the one plan serves every shape, and no request waits for a compilation or
//!   is refused as busy. A plan compiled for one concrete shape is a little faster (on
//!   paraphrase-MiniLM-L3 at 1x128, 6 to 9% in four runs of `examples/plans.rs`: 20.6 against
//!   19.2 ms, say), but costs a compilation (25 to 35 ms) and a packed copy of the weights per
//!   shape, and a text model's requests bring a new sequence length nearly every time. So the
//!   rule: such a model gets plans of their own only for the shape sets the operator lists in
//!   [`LoadOptions::ahead_shapes`], compiled at load, and for inputs whose axis 0 is one of the
//!   batch sizes dynamic batching prefers ([`LoadOptions::batch_sizes`]), compiled on first use
//!   within the plan cache's bounds and cap; every other shape runs on the symbolic plan. Batches
//!   are where the symbolic plan loses most: on MiniLM-L3 at 128 tokens (one thread), 23.2 ms a
//!   row at 4 rows and 24.2 at 8, against 21.2 at 1 row; plans for 4 and 8 rows, 18.2 and 20.2.
//! - **A plan per concrete shape set** ([`Plan::PerShape`]) when tract cannot optimise the
//!   symbolic graph (Yahoo's open_nsfw: its optimiser fails on the symbolic batch), or cannot
//!   type the graph at all without sizes (PaddleOCR's recognizer, input `[N, 3, ?, W]`, whose
//!   height is squeezed away). The symbolic typed model (or, when it cannot be typed, the
//!   inference model) is kept as the base; each shape set a request brings gets its symbols
//!   bound and is optimised on first use, within a bounded cache ([`plans`]). The base is never
//!   parsed again from the protobuf.
//!
//! For each plan, the steps are tried in order, and the first that works is kept:
//! 1. tract's optimiser ([`Plan::Optimized`]);
//! 2. the optimiser without its axis-changing pass (`ChangeAxes`), which fails on some graphs
//!    with a batch of one (open_nsfw: a convolution's bias after the batch axis is removed);
//!    still an optimised plan;
//! 3. the decluttered plan ([`Plan::Decluttered`]), several times slower;
//!
//! and all of it again with the graph's `value_info` ignored when that information contradicts
//! the graph ([`Plan::ValueInfoIgnored`]).
//!
//! [`LoadOptions`] input shapes are given to tract as the inputs' facts before the graph is typed
//! (`apply_input_shapes`), so the signature shows the sizes they fix. Intra-op threads
//! ([`LoadOptions::threads`]) come from shared pools ([`threads`]).
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
use std::sync::{Arc, Mutex, PoisonError};

use threads::Threads;
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::{type_proto, ModelProto};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, OutletId,
    RunOptions, TValue, TVec, ToDim, TractError, TractResult, TypedFact, TypedModel,
    TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_core::internal::{HashMap as TractHashMap, TDim};
use tract_onnx::tract_core::optim::Optimizer;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, GenericFactoid, ShapeFactoid};
use tract_onnx::Onnx;

use super::reason::{panic_message, truncate, without_numbers};
use super::{
    DataType, Dim, Engine, EngineError, InputShapeError, LoadOptions, LoadedModel, Plan, PlanStats,
    ShapeSet, Signature, Tensor, TensorSpec,
};
use plans::{Admission, Compiled, Lookup, PlanCache, Refusal, ShapeKey};

pub(crate) mod budget;
mod convert;
mod plans;
pub mod threads;

/// The default [`TractEngine::with_load_budget`]: 4 GiB. An ONNX model without external data
/// (which is refused) is one protobuf message, at most 2 GiB, so a model's stored weights are at
/// most 2 GiB; 4 GiB leaves as much again for constants computed from them, and refuses a
/// model whose graph computes more than that from a few bytes of shape.
pub const DEFAULT_LOAD_BUDGET: u64 = 4 << 30;

/// The most idle run states kept per plan, for the next requests (see [`RunPlan`]).
const POOLED_STATES: usize = 8;

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
        let threads = Threads::new(options.threads);
        let weights = u64::try_from(constants.total).unwrap_or(u64::MAX);

        let mut failures = Vec::new();
        let mut untyped = None;
        // Without value info, the second attempt would repeat the first.
        let attempts: &[bool] = if has_value_info {
            &[false, true]
        } else {
            &[false]
        };
        for &ignore_value_info in attempts {
            match self.attempt(&proto, options, ignore_value_info, &threads, &mut failures)? {
                Attempt::Loaded(model) => return model.ready(options),
                Attempt::Untyped(graph) => {
                    untyped.get_or_insert(graph);
                }
                Attempt::Failed => {}
            }
        }
        // A graph that tract types only with sizes: typed per shape, if some input leaves a
        // size open (with every size fixed, no request could bring what typing lacks).
        if let Some(graph) = untyped.filter(has_open_input) {
            let signature = untyped_signature(&graph, &proto)?;
            let model =
                TractModel::per_shape(signature, Base::Untyped(graph), weights, options, threads);
            return model.ready(options);
        }
        failures.dedup();
        Err(EngineError::Load {
            reason: failures.join("; "),
        })
    }
}

/// What one attempt at loading made of the model.
enum Attempt {
    /// A model that runs.
    Loaded(TractModel),
    /// The graph, which tract could not type as it is.
    Untyped(InferenceModel),
    /// Nothing: the reasons are in the failures.
    Failed,
}

impl TractEngine {
    /// Types the model and builds the most optimised plans that tract manages. An error only
    /// when the model is typed but uses something the server does not serve, or when `options`
    /// do not fit it; otherwise the reasons of what failed are pushed to `failures`.
    fn attempt(
        &self,
        proto: &ModelProto,
        options: &LoadOptions,
        ignore_value_info: bool,
        threads: &Threads,
        failures: &mut Vec<String>,
    ) -> Result<Attempt, EngineError> {
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
                return Ok(Attempt::Failed);
            }
        };
        apply_input_shapes(&mut graph, options)?;
        // Typing consumes the graph; the copy is kept for typing per shape should this fail.
        // Its constants are shared, not copied.
        let typed = match guarded(|| graph.clone().into_typed()) {
            Ok(typed) => typed,
            Err(reason) => {
                failures.push(format!("tract cannot type the model{note}: {reason}"));
                return Ok(Attempt::Untyped(graph));
            }
        };
        drop(graph);
        // The signature comes from the typed graph before optimisation, which keeps the graph's
        // names for every input and output; optimisation keeps their order.
        let signature = signature_of(&typed)?;
        let symbolic = signature
            .inputs
            .iter()
            .any(|spec| spec.shape.iter().flatten().any(|d| *d == Dim::Dynamic));
        // A symbolic graph is worth one plan only if it optimises: its decluttered plan is
        // several times slower than the plans per shape would be.
        let steps: &[Step] = if symbolic { &STEPS[..2] } else { &STEPS };
        if let Some((runnable, plan)) = first_runnable(&typed, steps, note, failures) {
            let plan = if ignore_value_info {
                Plan::ValueInfoIgnored
            } else {
                plan
            };
            let one = Arc::new(RunPlan::new(runnable));
            // Shapes the operator lists, and batches of the preferred sizes, get plans of their
            // own (see the module's notes); every other shape runs on the symbolic plan.
            let plans = if symbolic
                && !(options.ahead_shapes.is_empty() && options.batch_sizes.is_empty())
            {
                let weights = model_weights(proto);
                let ahead = PerShape::new(&signature, Base::Typed(typed), weights, options);
                Plans::Ahead(one, Box::new(ahead))
            } else {
                Plans::One(one)
            };
            return Ok(Attempt::Loaded(TractModel {
                signature,
                plan,
                plans,
                threads: threads.clone(),
            }));
        }
        if !symbolic {
            return Ok(Attempt::Failed);
        }
        let weights = model_weights(proto);
        Ok(Attempt::Loaded(TractModel::per_shape(
            signature,
            Base::Typed(typed),
            weights,
            options,
            threads.clone(),
        )))
    }
}

/// The bytes of a model's constants, as the load budget counts them.
fn model_weights(proto: &ModelProto) -> u64 {
    u64::try_from(budget::constant_bytes(proto).total).unwrap_or(u64::MAX)
}

/// Whether some input of the graph has a dimension that is not a known size.
fn has_open_input(graph: &InferenceModel) -> bool {
    (0..graph.inputs.len()).any(|index| {
        graph.input_fact(index).map_or(true, |fact| {
            fact.shape.is_open()
                || fact
                    .shape
                    .dims()
                    .any(|dim| dim.concretize().and_then(|d| d.to_i64().ok()).is_none())
        })
    })
}

/// The signature of a graph that tract cannot type without sizes: the inputs' names, data types
/// and known sizes from tract's facts; the outputs' names and data types from the ONNX graph
/// (their shapes are known once a plan is built for a shape).
fn untyped_signature(graph: &InferenceModel, proto: &ModelProto) -> Result<Signature, EngineError> {
    let load_error = |e: TractError| EngineError::Load {
        reason: tract_reason(&e),
    };
    let mut inputs = Vec::new();
    for (index, outlet) in graph
        .input_outlets()
        .map_err(load_error)?
        .iter()
        .enumerate()
    {
        let name = graph.nodes()[outlet.node].name.clone();
        let fact = graph.input_fact(index).map_err(load_error)?;
        let datatype = fact
            .datum_type
            .concretize()
            .and_then(served_type)
            .ok_or_else(|| EngineError::Unsupported {
                reason: format!("input '{name}' has no data type the server serves"),
            })?;
        let shape = (!fact.shape.is_open()).then(|| {
            fact.shape
                .dims()
                .map(|dim| {
                    match dim
                        .concretize()
                        .and_then(|d| d.to_i64().ok())
                        .and_then(|d| usize::try_from(d).ok())
                    {
                        Some(size) => Dim::Fixed(size),
                        None => Dim::Dynamic,
                    }
                })
                .collect()
        });
        inputs.push(TensorSpec {
            name,
            datatype,
            shape,
        });
    }
    let declared = proto.graph.as_ref().map_or(&[][..], |g| &g.output[..]);
    let mut outputs = Vec::new();
    for output in declared {
        let tensor = match output.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(tensor)) => tensor,
            _ => {
                return Err(EngineError::Unsupported {
                    reason: format!("output '{}' is not a tensor", output.name),
                })
            }
        };
        let datatype = onnx_type(tensor.elem_type).ok_or_else(|| EngineError::Unsupported {
            reason: format!(
                "output '{}' has ONNX element type {}, which is not served",
                output.name, tensor.elem_type
            ),
        })?;
        let shape = tensor.shape.as_ref().map(|shape| {
            shape
                .dim
                .iter()
                .map(|dim| match dim.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(size)) => {
                        usize::try_from(size).map_or(Dim::Dynamic, Dim::Fixed)
                    }
                    _ => Dim::Dynamic,
                })
                .collect()
        });
        outputs.push(TensorSpec {
            name: output.name.clone(),
            datatype,
            shape,
        });
    }
    if outputs.len() != graph.outputs.len() {
        return Err(EngineError::Load {
            reason: format!(
                "the graph declares {} outputs, tract reads {}",
                outputs.len(),
                graph.outputs.len()
            ),
        });
    }
    Ok(Signature { inputs, outputs })
}

/// The protocol's type for an ONNX element type (`TensorProto.DataType`).
fn onnx_type(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        _ => return None,
    })
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

/// A step: the plan it makes, a verb for its failure, and the transform.
type Step = (Plan, &'static str, Transform);

/// The steps tried in turn, most optimised first.
const STEPS: [Step; 3] = [
    (Plan::Optimized, "optimise", TypedModel::into_optimized),
    (
        Plan::Optimized,
        "optimise (without changing axes)",
        optimized_keeping_axes,
    ),
    (Plan::Decluttered, "declutter", TypedModel::into_decluttered),
];

/// tract's optimisation without its `ChangeAxes` pass, which moves and removes axes across the
/// graph: on open_nsfw with a batch of one it removes the batch axis and leaves a convolution's
/// bias with a shape the convolution refuses. The rest (constant folding, fusing, code
/// generation) still runs; open_nsfw then runs in 57 ms instead of the decluttered plan's
/// 100 ms (`examples/plans.rs`).
fn optimized_keeping_axes(mut model: TypedModel) -> TractResult<TypedModel> {
    let mut declutter = Optimizer::declutter();
    declutter
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
    declutter.optimize(&mut model)?;
    model.optimize()?;
    Ok(model)
}

/// The runnable plan of the first step that works, with reasons pushed to `failures` for those
/// that do not. The plan sets no executor: each run picks its threads ([`Threads::scope`]).
fn first_runnable(
    typed: &TypedModel,
    steps: &[Step],
    note: &str,
    failures: &mut Vec<String>,
) -> Option<(Arc<TypedRunnableModel>, Plan)> {
    let options = RunOptions::default();
    for &(plan, verb, transform) in steps {
        match guarded(|| transform(typed.clone())?.into_runnable_with_options(&options)) {
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

/// A lock that survives a panic of another holder (the data it guards is consistent between
/// statements).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A runnable plan, and the run states it keeps for the next requests.
///
/// tract makes a fresh state per run (a slot per node, and the operators' own states). A plan
/// whose operators keep no state between runs gets its states back after each successful run,
/// up to [`POOLED_STATES`]: a state then holds only the plan's constants between runs (tract
/// clears every computed value at the end of a run), so nothing of one request reaches the
/// next. A plan with stateful operators (a recurrent loop, say) gets a fresh state every time.
struct RunPlan {
    runnable: Arc<TypedRunnableModel>,
    states: Option<Mutex<Vec<TypedSimpleState>>>,
}

impl RunPlan {
    fn new(runnable: Arc<TypedRunnableModel>) -> RunPlan {
        let stateless = TypedSimpleState::new(&runnable)
            .is_ok_and(|state| state.op_states.iter().all(Option::is_none));
        RunPlan {
            runnable,
            states: stateless.then(|| Mutex::new(Vec::new())),
        }
    }

    fn run(&self, values: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(states) = &self.states else {
            return self.runnable.run(values);
        };
        let pooled = lock(states).pop();
        let mut state = match pooled {
            Some(state) => state,
            None => TypedSimpleState::new(&self.runnable)?,
        };
        // A failed run drops its state: what it left behind is not known.
        let outputs = state.run(values)?;
        let mut states = lock(states);
        if states.len() < POOLED_STATES {
            states.push(state);
        }
        Ok(outputs)
    }
}

/// What plans per shape start from.
enum Base {
    /// The typed model with its symbolic dimensions: each shape binds them.
    Typed(TypedModel),
    /// The graph, which tract types only with sizes: each shape is typed anew.
    Untyped(InferenceModel),
}

/// A model's plans per concrete shape set.
struct PerShape {
    base: Base,
    cache: PlanCache<RunPlan>,
    /// The addresses of the base's constant tensors, which a plan shares rather than copies
    /// (not counted in its size).
    weights: u64,
    max_bytes: u64,
    max_compiles_per_minute: u32,
    /// The input blamed when a refusal concerns the shape set as a whole: the first with a
    /// dimension that is not fixed.
    blame: usize,
    /// The batch sizes ([`LoadOptions::batch_sizes`]) whose shapes get plans of their own on
    /// a symbolic model.
    batch_sizes: Vec<usize>,
}

/// The plans of a model.
enum Plans {
    /// One plan for every shape.
    One(Arc<RunPlan>),
    /// A plan per shape set, compiled on first use.
    PerShape(Box<PerShape>),
    /// A symbolic plan for every shape, and plans of their own for the shape sets compiled
    /// ahead, at load, and for batches of the preferred sizes, on first use.
    Ahead(Arc<RunPlan>, Box<PerShape>),
}

/// A model as tract runs it.
struct TractModel {
    signature: Signature,
    plan: Plan,
    plans: Plans,
    threads: Threads,
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

impl TractModel {
    fn per_shape(
        signature: Signature,
        base: Base,
        weights: u64,
        options: &LoadOptions,
        threads: Threads,
    ) -> TractModel {
        let per_shape = PerShape::new(&signature, base, weights, options);
        TractModel {
            signature,
            plan: Plan::PerShape,
            plans: Plans::PerShape(Box::new(per_shape)),
            threads,
        }
    }

    /// The model, with the shapes of [`LoadOptions::ahead_shapes`] checked against its
    /// signature and, for plans per shape, compiled.
    fn ready(self, options: &LoadOptions) -> Result<Arc<dyn LoadedModel>, EngineError> {
        for shapes in &options.ahead_shapes {
            let key = key_of(shapes, &self.signature)?;
            if let Plans::PerShape(per_shape) | Plans::Ahead(_, per_shape) = &self.plans {
                per_shape.plan_for(&key, &self.signature, Admission::Ahead)?;
            }
        }
        Ok(Arc::new(self))
    }
}

/// A shape set as a key in the signature's input order, checked against the signature: every
/// input given, of its rank, with its fixed sizes.
fn key_of(shapes: &ShapeSet, signature: &Signature) -> Result<ShapeKey, EngineError> {
    let names = || {
        signature
            .inputs
            .iter()
            .map(|spec| spec.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = shapes
        .keys()
        .find(|name| !signature.inputs.iter().any(|spec| &spec.name == *name))
    {
        return Err(InputShapeError::UnknownInput {
            name: name.clone(),
            inputs: names(),
        }
        .into());
    }
    let mut key = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let Some(shape) = shapes.get(&spec.name) else {
            return Err(EngineError::Shape {
                name: spec.name.clone(),
                shape: Vec::new(),
                reason:
                    "a shape set compiled ahead gives every input a shape, and this one has none"
                        .to_owned(),
            });
        };
        if let Some(dims) = &spec.shape {
            if dims.len() != shape.len() {
                return Err(InputShapeError::Rank {
                    name: spec.name.clone(),
                    declared: dims.len(),
                    given: shape.len(),
                }
                .into());
            }
            for (axis, (dim, &given)) in dims.iter().zip(shape).enumerate() {
                if let Dim::Fixed(declared) = *dim {
                    if declared != given {
                        return Err(InputShapeError::Dimension {
                            name: spec.name.clone(),
                            axis,
                            declared,
                            given,
                        }
                        .into());
                    }
                }
            }
        }
        key.push(shape.clone());
    }
    Ok(key)
}

impl PerShape {
    fn new(signature: &Signature, base: Base, weights: u64, options: &LoadOptions) -> PerShape {
        let blame = signature
            .inputs
            .iter()
            .position(|spec| {
                spec.shape
                    .as_ref()
                    .is_none_or(|s| s.contains(&Dim::Dynamic))
            })
            .unwrap_or(0);
        PerShape {
            base,
            cache: PlanCache::new(options.plan_cache),
            weights,
            max_bytes: options.plan_cache.max_bytes,
            max_compiles_per_minute: options.plan_cache.max_compiles_per_minute,
            blame,
            batch_sizes: options.batch_sizes.clone(),
        }
    }

    /// On a symbolic model, the plan of its own for a batch of a preferred size (every input's
    /// axis 0 one of [`PerShape::batch_sizes`]), compiled on first use; `None` for any other
    /// shape, and when the shape is refused or the compilation cap is reached, so that the
    /// symbolic plan runs it. On MiniLM-L3 at 128 tokens, one thread, a plan for 4 rows took
    /// 18.2 ms a row against the symbolic plan's 23.2 at 4 rows and 21.2 at 1 row
    /// (`examples/batch_profile.rs`).
    fn batch_plan(&self, key: &ShapeKey) -> Option<Arc<RunPlan>> {
        let rows = *key.first()?.first()?;
        let batched = self.batch_sizes.contains(&rows)
            && key.iter().all(|shape| shape.first() == Some(&rows));
        if !batched {
            return None;
        }
        match self
            .cache
            .get(key, Admission::Request, || self.compile(key))
        {
            Lookup::Plan(plan) => Some(plan),
            Lookup::Refused(_) | Lookup::Busy { .. } => None,
        }
    }

    /// The plan for `key`, from the cache or compiled now.
    fn plan_for(
        &self,
        key: &ShapeKey,
        signature: &Signature,
        admission: Admission,
    ) -> Result<Arc<RunPlan>, EngineError> {
        match self.cache.get(key, admission, || self.compile(key)) {
            Lookup::Plan(plan) => Ok(plan),
            Lookup::Refused(refusal) => {
                let input = refusal.input.min(signature.inputs.len().saturating_sub(1));
                Err(EngineError::Shape {
                    name: signature
                        .inputs
                        .get(input)
                        .map_or_else(String::new, |spec| spec.name.clone()),
                    shape: key.get(input).cloned().unwrap_or_default(),
                    reason: refusal.reason.clone(),
                })
            }
            Lookup::Busy { retry_after_secs } => Err(EngineError::Busy {
                reason: format!(
                    "this input shape needs a plan of its own, and the model has compiled as many \
                     this minute as it may ({}, max_compiles_per_minute)",
                    self.max_compiles_per_minute
                ),
                retry_after_secs,
            }),
        }
    }

    /// Compiles the plan for `key`: the base with its sizes bound, optimised.
    fn compile(&self, key: &ShapeKey) -> Result<Compiled<RunPlan>, Refusal> {
        let refusal = |reason: String| Refusal {
            input: self.blame,
            reason,
        };
        let concrete = match &self.base {
            Base::Typed(base) => concretize(base, key, self.blame)?,
            Base::Untyped(graph) => type_for(graph, key, self.blame)?,
        };
        // Checked before tract optimises anything: a shape whose values would not fit is refused
        // without the work.
        let before = plan_bytes(&concrete, self.weights);
        if before > self.max_bytes {
            return Err(refusal(format!(
                "its values need about {}, over the model's plan memory bound of {} \
                 (max_plan_bytes)",
                super::human_bytes(u128::from(before)),
                super::human_bytes(u128::from(self.max_bytes)),
            )));
        }
        let mut failures = Vec::new();
        let Some((runnable, _)) = first_runnable(&concrete, &STEPS, "", &mut failures) else {
            failures.dedup();
            return Err(refusal(failures.join("; ")));
        };
        let bytes = plan_bytes(runnable.model(), self.weights);
        Ok(Compiled {
            plan: RunPlan::new(runnable),
            bytes,
        })
    }
}

/// The typed model with its inputs' symbols bound to the sizes of `key`. Refuses a rank or a
/// fixed size other than the model's, one symbol given two sizes, and a shape whose sizes tract
/// cannot take.
fn concretize(base: &TypedModel, key: &ShapeKey, blame: usize) -> Result<TypedModel, Refusal> {
    let mut values: TractHashMap<_, TDim> = TractHashMap::default();
    for (input, shape) in key.iter().enumerate() {
        let fact = base.input_fact(input).map_err(|e| Refusal {
            input,
            reason: tract_reason(&e),
        })?;
        if fact.rank() != shape.len() {
            return Err(Refusal {
                input,
                reason: format!("the model takes {} dimensions", fact.rank()),
            });
        }
        for (axis, (dim, &size)) in fact.shape.iter().zip(shape).enumerate() {
            let size_dim = size.to_dim();
            match dim {
                TDim::Sym(symbol) => match values.get(symbol) {
                    Some(bound) if *bound != size_dim => {
                        return Err(Refusal {
                            input,
                            reason: format!(
                            "dimension {axis} is {symbol}, which another dimension makes {bound}"
                        ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        values.insert(symbol.clone(), size_dim);
                    }
                },
                TDim::Val(fixed) if *fixed != size_dim.to_i64().unwrap_or(-1) => {
                    return Err(Refusal {
                        input,
                        reason: format!("dimension {axis} must be {fixed}"),
                    })
                }
                _ => {}
            }
        }
    }
    let concrete = guarded(|| base.set_symbols(&values)).map_err(|reason| Refusal {
        input: blame,
        reason: format!("tract cannot bind the model's sizes to it: {reason}"),
    })?;
    check_concrete(&concrete, key)?;
    Ok(concrete)
}

/// The graph typed with the sizes of `key` as its inputs' shapes.
fn type_for(graph: &InferenceModel, key: &ShapeKey, blame: usize) -> Result<TypedModel, Refusal> {
    let mut graph = graph.clone();
    for (input, shape) in key.iter().enumerate() {
        let declared = graph
            .input_fact(input)
            .map_err(|e| Refusal {
                input,
                reason: tract_reason(&e),
            })?
            .clone();
        let dims: TVec<DimFact> = shape
            .iter()
            .map(|&size| GenericFactoid::Only(size.to_dim()))
            .collect();
        let fact = InferenceFact {
            shape: ShapeFactoid::closed(dims),
            ..declared
        };
        graph.set_input_fact(input, fact).map_err(|e| Refusal {
            input,
            reason: tract_reason(&e),
        })?;
    }
    let typed = guarded(|| graph.into_typed()).map_err(|reason| Refusal {
        input: blame,
        reason: format!("tract cannot type the model for it: {reason}"),
    })?;
    check_concrete(&typed, key)?;
    Ok(typed)
}

/// Refuses a model whose inputs are not exactly the shapes of `key`.
fn check_concrete(model: &TypedModel, key: &ShapeKey) -> Result<(), Refusal> {
    for (input, shape) in key.iter().enumerate() {
        let fact = model.input_fact(input).map_err(|e| Refusal {
            input,
            reason: tract_reason(&e),
        })?;
        if fact.shape.as_concrete() != Some(&shape[..]) {
            return Err(Refusal {
                input,
                reason: format!(
                    "the model takes [{}]",
                    fact.shape
                        .iter()
                        .map(|dim| dim.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The engine's estimate of a plan's memory, in bytes: the model's constants (`weights`, as the
/// load budget counts them on the ONNX graph), since tract's optimiser packs a plan's weights
/// into buffers of its own operators, which the graph does not show; plus the most memory the
/// plan's computed values take at once, walking the plan in tract's order and freeing each value
/// after its last consumer, as tract does. A size tract does not know counts as the whole bound.
///
/// Measured with `examples/plan_memory.rs` (8 plans, resident memory added against the
/// estimate): PaddleOCR's recognizer at widths 160 to 440, 109 MiB against 103 MiB; open_nsfw at
/// batches 1 to 8, 246 MiB against 408 MiB. Counting every value as alive at once instead
/// overestimated PaddleOCR's 8 plans at 823 MiB.
fn plan_bytes(model: &TypedModel, weights: u64) -> u64 {
    let size = |fact: &TypedFact| {
        fact.mem_size()
            .to_i64()
            .ok()
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(u64::MAX)
    };
    let nodes = model.nodes();
    let constants = weights;
    let mut values = vec![0u64; nodes.len()];
    for node in nodes {
        for outlet in node.outputs.iter().filter(|o| o.fact.konst.is_none()) {
            values[node.id] = values[node.id].saturating_add(size(&outlet.fact));
        }
    }
    let Ok(order) = model.eval_order() else {
        // Without an order, every value counts as alive at once.
        return values.iter().fold(constants, |a, &b| a.saturating_add(b));
    };
    // The step after which each node's values are no longer needed: its last consumer's, or the
    // end for the model's outputs.
    let mut last_use: Vec<usize> = (0..nodes.len()).collect();
    for (step, &id) in order.iter().enumerate() {
        last_use[id] = step;
        for input in &nodes[id].inputs {
            last_use[input.node] = last_use[input.node].max(step);
        }
    }
    for output in model
        .output_outlets()
        .map(|o| o.to_vec())
        .unwrap_or_default()
    {
        last_use[output.node] = order.len();
    }
    let mut freed_after = vec![0u64; order.len() + 1];
    for &id in &order {
        freed_after[last_use[id]] = freed_after[last_use[id]].saturating_add(values[id]);
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (step, &id) in order.iter().enumerate() {
        live = live.saturating_add(values[id]);
        peak = peak.max(live);
        live = live.saturating_sub(freed_after[step]);
    }
    constants.saturating_add(peak)
}

impl LoadedModel for TractModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn plan(&self) -> Plan {
        self.plan
    }

    fn plan_stats(&self) -> PlanStats {
        match &self.plans {
            Plans::One(_) => PlanStats::default(),
            Plans::PerShape(per_shape) | Plans::Ahead(_, per_shape) => per_shape.cache.stats(),
        }
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
        let plan = match &self.plans {
            Plans::One(plan) => Arc::clone(plan),
            Plans::Ahead(symbolic, ahead) => {
                let key: ShapeKey = inputs.iter().map(|t| t.shape().to_vec()).collect();
                ahead
                    .cache
                    .cached(&key)
                    .or_else(|| ahead.batch_plan(&key))
                    .unwrap_or_else(|| Arc::clone(symbolic))
            }
            Plans::PerShape(per_shape) => {
                let key: ShapeKey = inputs.iter().map(|t| t.shape().to_vec()).collect();
                per_shape.plan_for(&key, &self.signature, Admission::Request)?
            }
        };
        let values = self
            .signature
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(spec, tensor)| convert::to_tract(spec, tensor).map(IntoTValue::into_tvalue))
            .collect::<Result<TVec<TValue>, EngineError>>()?;
        drop(inputs);
        // The plan itself is shared and never mutated; each run has a state of its own, which
        // is what lets many threads run one model at once.
        let outputs = guarded(|| self.threads.scope(|| plan.run(values)))
            .map_err(|reason| EngineError::Run { reason })?;
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
            .map(|(spec, value)| convert::from_tract(spec, &value))
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

/// Runs a call into tract, turning its panics into errors, and its errors into reasons that
/// quote no tensor values.
fn guarded<T>(call: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(tract_reason(&e)),
        Err(payload) => {
            // A panic's message can quote a value of the request (an index out of bounds).
            let message = without_numbers(&without_values(&panic_message(payload.as_ref())));
            Err(format!("tract panicked: {message}"))
        }
    }
}

/// tract's error chain, outermost first, without the messages that can quote tensor values, cut
/// to [`MAX_REASON_LEN`](super::reason::MAX_REASON_LEN).
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

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::{tvec, SpecialOps, Tensor as TractTensor};

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
