//! The memory a model's constants take, read from the ONNX graph before tract builds anything.
//!
//! A model's weights are its initializers and `Constant` nodes, whose sizes the graph declares.
//! Other constants are computed when tract types and optimises the graph: an operator whose inputs
//! are all constant is folded into its result. A few operators make results far larger than their
//! inputs (`ConstantOfShape` of `[16384, 16384]` is 1 GiB of FP32 from a 187-byte model), so the
//! estimate follows constants through the graph, in its (topological) node order, and counts:
//!
//! - every initializer, sparse initializer and `Constant` node, at its declared size;
//! - the result of every amplifying operator whose inputs are known: `ConstantOfShape`, `Expand`,
//!   `Tile`, `Range`, `Resize` and `Upsample`, the broadcasting element-wise operators (`Add`,
//!   `Mul`, `Where`, ...), and `MatMul`.
//!
//! Shapes are followed through the operators that build them (`Shape` of a constant or of an
//! input of fixed size, `Concat`, `Reshape`, `Unsqueeze`, `Squeeze`, `Cast`, arithmetic on small
//! constants), and shape-preserving operators on constants (`Cast`, `Transpose`, `Relu`, ...) are
//! followed without being counted again: their result takes the place of their input. Operators
//! not listed end what is known. Subgraphs (`If`, `Loop`, `Scan`) are counted as well.
//!
//! The estimate is of constants only: the copies tract makes while it optimises, and the memory of
//! inference, come on top.

use std::collections::HashMap;
use std::fmt;

use super::super::human_bytes;

use tract_onnx::pb::{tensor_proto, AttributeProto, GraphProto, ModelProto};
use tract_onnx::pb::{NodeProto, TensorProto};

/// The most elements a constant may have for its values to be followed (shapes, repeats, scales,
/// bounds of a range); larger constants are followed by shape only.
const MAX_FOLLOWED_VALUES: u128 = 64;

/// Deepest nesting of subgraphs followed; deeper graphs are refused by tract anyway.
const MAX_DEPTH: usize = 16;

/// What is known of a constant value.
#[derive(Clone, Debug)]
struct Known {
    /// Bytes per element.
    element_size: u128,
    /// Its data type, for messages.
    datatype: &'static str,
    /// Its shape.
    dims: Vec<u128>,
    /// Its elements, when it has at most [`MAX_FOLLOWED_VALUES`] and they are numbers.
    values: Option<Vec<f64>>,
}

impl Known {
    fn elements(&self) -> u128 {
        self.dims.iter().fold(1u128, |n, &d| n.saturating_mul(d))
    }

    fn bytes(&self) -> u128 {
        self.elements().saturating_mul(self.element_size)
    }

    fn with_dims(&self, dims: Vec<u128>) -> Known {
        Known {
            dims,
            values: None,
            ..self.clone()
        }
    }
}

/// The largest constant found, for the refusal's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Largest {
    /// Where it is: an initializer's or a node's name, and the operator.
    pub what: String,
    /// Its shape.
    pub dims: Vec<u128>,
    /// Its data type.
    pub datatype: &'static str,
    /// Its size in bytes.
    pub bytes: u128,
}

impl fmt::Display for Largest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {}, {}",
            self.what,
            self.dims,
            self.datatype,
            human_bytes(self.bytes)
        )
    }
}

/// The bytes a model's constants take, and the largest of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConstantBytes {
    /// Their sum (saturating).
    pub total: u128,
    /// The largest.
    pub largest: Option<Largest>,
}

impl ConstantBytes {
    fn add(&mut self, what: impl FnOnce() -> String, known: &Known) {
        let bytes = known.bytes();
        self.total = self.total.saturating_add(bytes);
        if self.largest.as_ref().is_none_or(|l| bytes > l.bytes) {
            self.largest = Some(Largest {
                what: what(),
                dims: known.dims.clone(),
                datatype: known.datatype,
                bytes,
            });
        }
    }
}

/// The constants of `model` (see the module's documentation).
pub(crate) fn constant_bytes(model: &ModelProto) -> ConstantBytes {
    let mut out = ConstantBytes::default();
    if let Some(graph) = &model.graph {
        walk_graph(graph, &mut HashMap::new(), &mut out, 0);
    }
    out
}

/// Follows one graph. `known` holds the values of the enclosing graphs; what this graph defines is
/// added to it and taken out again at the end (a subgraph sees its outer scope, not the reverse),
/// so that a graph of many subgraphs costs no copy of the outer scope per subgraph.
fn walk_graph(
    graph: &GraphProto,
    known: &mut HashMap<String, Known>,
    out: &mut ConstantBytes,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let mut shadowed: Vec<(String, Option<Known>)> = Vec::new();
    let mut define = |known: &mut HashMap<String, Known>, name: &str, value: Known| {
        let previous = known.insert(name.to_owned(), value);
        shadowed.push((name.to_owned(), previous));
    };
    for tensor in &graph.initializer {
        let value = tensor_known(tensor);
        out.add(|| format!("initializer '{}'", tensor.name), &value);
        define(known, &tensor.name, value);
    }
    for sparse in &graph.sparse_initializer {
        // tract makes sparse initializers dense.
        if let Some(values) = &sparse.values {
            let value = Known {
                dims: dims_of(&sparse.dims),
                values: None,
                ..tensor_known(values)
            };
            out.add(|| format!("sparse initializer '{}'", values.name), &value);
            define(known, &values.name, value);
        }
    }
    // Inputs of fixed size give their shape to `Shape`, which tract folds into a constant.
    let mut fixed_inputs: HashMap<&str, Vec<u128>> = HashMap::new();
    for input in &graph.input {
        if let Some(dims) = fixed_shape(input) {
            fixed_inputs.insert(&input.name, dims);
        }
    }
    for node in &graph.node {
        for attribute in &node.attribute {
            if let Some(g) = &attribute.g {
                walk_graph(g, known, out, depth + 1);
            }
            for g in &attribute.graphs {
                walk_graph(g, known, out, depth + 1);
            }
        }
        let Some((result, counted)) = evaluate(node, known, &fixed_inputs) else {
            continue;
        };
        if counted {
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            out.add(|| format!("node '{name}' ({})", node.op_type), &result);
        }
        if let Some(output) = node.output.first() {
            define(known, output, result);
        }
    }
    for (name, previous) in shadowed.into_iter().rev() {
        match previous {
            Some(value) => known.insert(name, value),
            None => known.remove(&name),
        };
    }
}

/// The fixed shape of a graph input, when every dimension is a number.
fn fixed_shape(input: &tract_onnx::pb::ValueInfoProto) -> Option<Vec<u128>> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto::Value as TypeValue;
    let TypeValue::TensorType(tensor) = input.r#type.as_ref()?.value.as_ref()?;
    tensor
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(n)) => u128::try_from(n).ok(),
            _ => None,
        })
        .collect()
}

fn dims_of(dims: &[i64]) -> Vec<u128> {
    dims.iter()
        .map(|&d| u128::try_from(d).unwrap_or(0))
        .collect()
}

/// Bytes per element and the name of an ONNX data type. A string is counted as the `String` that
/// holds it, without its text (which the model's bytes already bound).
fn element_type(data_type: i32) -> (u128, &'static str) {
    use tensor_proto::DataType as T;
    match T::try_from(data_type).unwrap_or(T::Undefined) {
        T::Uint8 => (1, "UINT8"),
        T::Int8 => (1, "INT8"),
        T::Bool => (1, "BOOL"),
        T::Float8e4m3fn | T::Float8e4m3fnuz | T::Float8e5m2 | T::Float8e5m2fnuz => (1, "FLOAT8"),
        // Counted as a byte each, which can only overestimate.
        T::Uint4 | T::Int4 | T::Float4e2m1 => (1, "INT4"),
        T::Uint16 => (2, "UINT16"),
        T::Int16 => (2, "INT16"),
        T::Float16 => (2, "FLOAT16"),
        T::Bfloat16 => (2, "BFLOAT16"),
        T::Int32 => (4, "INT32"),
        T::Uint32 => (4, "UINT32"),
        T::Float | T::Undefined => (4, "FLOAT"),
        T::Int64 => (8, "INT64"),
        T::Uint64 => (8, "UINT64"),
        T::Double => (8, "DOUBLE"),
        T::Complex64 => (8, "COMPLEX64"),
        T::Complex128 => (16, "COMPLEX128"),
        T::String => (24, "STRING"),
        // A type added to ONNX later: counted as wide as any.
        #[allow(unreachable_patterns)]
        _ => (16, "OTHER"),
    }
}

/// A tensor's shape and type, and its values when it is small.
fn tensor_known(tensor: &TensorProto) -> Known {
    let (element_size, datatype) = element_type(tensor.data_type);
    let dims = dims_of(&tensor.dims);
    let mut known = Known {
        element_size,
        datatype,
        dims,
        values: None,
    };
    if known.elements() <= MAX_FOLLOWED_VALUES {
        known.values = tensor_values(tensor).filter(|v| v.len() as u128 == known.elements());
    }
    known
}

/// The values of a small numeric tensor, as f64 (exact for every shape and count that fits in
/// memory).
// Values are only used as sizes, counts and scales: precision beyond 2^53 does not matter.
#[allow(clippy::cast_precision_loss)]
fn tensor_values(tensor: &TensorProto) -> Option<Vec<f64>> {
    use tensor_proto::DataType as T;
    if !tensor.int64_data.is_empty() {
        return Some(tensor.int64_data.iter().map(|&v| v as f64).collect());
    }
    if !tensor.int32_data.is_empty() {
        return Some(tensor.int32_data.iter().map(|&v| f64::from(v)).collect());
    }
    if !tensor.float_data.is_empty() {
        return Some(tensor.float_data.iter().map(|&v| f64::from(v)).collect());
    }
    if !tensor.double_data.is_empty() {
        return Some(tensor.double_data.clone());
    }
    if !tensor.uint64_data.is_empty() {
        return Some(tensor.uint64_data.iter().map(|&v| v as f64).collect());
    }
    let raw = &tensor.raw_data;
    let le = |n: usize| raw.chunks_exact(n);
    Some(match T::try_from(tensor.data_type).ok()? {
        T::Int64 => le(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
            .collect(),
        T::Uint64 => le(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
            .collect(),
        T::Int32 => le(4)
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
            .collect(),
        T::Float => le(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
            .collect(),
        T::Double => le(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        _ => return None,
    })
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attribute(node: &NodeProto, name: &str) -> Option<i64> {
    attribute(node, name).map(|a| a.i)
}

/// A known input of `node`, by position (an empty name is an omitted optional input).
fn input<'a>(
    node: &NodeProto,
    index: usize,
    known: &'a HashMap<String, Known>,
) -> Option<&'a Known> {
    node.input
        .get(index)
        .filter(|n| !n.is_empty())
        .and_then(|n| known.get(n))
}

fn all_inputs<'a>(node: &NodeProto, known: &'a HashMap<String, Known>) -> Option<Vec<&'a Known>> {
    if node.input.is_empty() {
        return None;
    }
    node.input
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| known.get(n))
        .collect()
}

/// A small tensor's values as sizes; `None` when one is negative or not whole.
// Checked non-negative and whole; a float too large for u128 saturates, which is what a size bound
// wants.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn sizes(known: &Known) -> Option<Vec<u128>> {
    known
        .values
        .as_ref()?
        .iter()
        .map(|&v| (v >= 0.0 && v.fract() == 0.0).then_some(v as u128))
        .collect()
}

/// Numpy broadcasting of shapes (a dimension of 1 stretches; others must agree, or the larger is
/// taken, which can only overestimate).
fn broadcast<'a>(shapes: impl IntoIterator<Item = &'a [u128]>) -> Vec<u128> {
    let mut out: Vec<u128> = Vec::new();
    for shape in shapes {
        if shape.len() > out.len() {
            let mut wider = vec![1; shape.len() - out.len()];
            wider.extend_from_slice(&out);
            out = wider;
        }
        let offset = out.len() - shape.len();
        for (i, &d) in shape.iter().enumerate() {
            let slot = &mut out[offset + i];
            *slot = if *slot == 1 { d } else { (*slot).max(d) };
        }
    }
    out
}

/// An axis of a rank-`rank` tensor, negative counting from the end.
fn axis(value: i64, rank: usize) -> Option<usize> {
    let rank = i64::try_from(rank).ok()?;
    let a = if value < 0 { value + rank } else { value };
    usize::try_from(a)
        .ok()
        .filter(|&a| i64::try_from(a).is_ok_and(|a| a < rank.max(1)))
}

/// Element-wise arithmetic on small values, for shapes computed from shapes.
fn arithmetic(op: &str, a: &Known, b: &Known) -> Option<Vec<f64>> {
    let (x, y) = (a.values.as_ref()?, b.values.as_ref()?);
    let n = x.len().max(y.len());
    if !(x.len() == n || x.len() == 1) || !(y.len() == n || y.len() == 1) {
        return None;
    }
    let at = |v: &Vec<f64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
    (0..n)
        .map(|i| {
            let (p, q) = (at(x, i), at(y, i));
            Some(match op {
                "Add" => p + q,
                "Sub" => p - q,
                "Mul" => p * q,
                "Div" if q != 0.0 => (p / q).trunc(),
                "Max" => p.max(q),
                "Min" => p.min(q),
                _ => return None,
            })
        })
        .collect()
}

const BROADCASTING: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
    "PRelu",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
];

const SHAPE_PRESERVING: &[&str] = &[
    "Identity",
    "Cast",
    "CastLike",
    "Neg",
    "Abs",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Not",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Reciprocal",
    "Erf",
    "Sin",
    "Cos",
    "Softmax",
    "LogSoftmax",
    "Clip",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
];

/// The value `node` computes when what it needs is known, and whether it counts as a new
/// constant (see the module's documentation).
fn evaluate(
    node: &NodeProto,
    known: &HashMap<String, Known>,
    fixed_inputs: &HashMap<&str, Vec<u128>>,
) -> Option<(Known, bool)> {
    let op = node.op_type.as_str();
    let int64 = |dims: Vec<u128>, values: Option<Vec<f64>>| Known {
        element_size: 8,
        datatype: "INT64",
        dims,
        values,
    };
    match op {
        "Constant" => constant_node(node).map(|k| (k, true)),
        "ConstantOfShape" => {
            let dims = sizes(input(node, 0, known)?)?;
            // ONNX's default value is an FP32 zero, but tract makes an FP64 one: counted as tract
            // allocates it.
            let (element_size, datatype) = attribute(node, "value")
                .and_then(|a| a.t.as_ref())
                .map_or((8, "DOUBLE"), |t| element_type(t.data_type));
            Some((
                Known {
                    element_size,
                    datatype,
                    dims,
                    values: None,
                },
                true,
            ))
        }
        "Expand" => {
            let data = input(node, 0, known)?;
            let shape = sizes(input(node, 1, known)?)?;
            Some((
                data.with_dims(broadcast([&data.dims[..], &shape[..]])),
                true,
            ))
        }
        "Tile" => {
            let data = input(node, 0, known)?;
            let repeats = sizes(input(node, 1, known)?)?;
            if repeats.len() != data.dims.len() {
                return None;
            }
            let dims = data
                .dims
                .iter()
                .zip(&repeats)
                .map(|(&d, &r)| d.saturating_mul(r))
                .collect();
            Some((data.with_dims(dims), true))
        }
        "Range" => {
            let start = input(node, 0, known)?;
            let bound = |i| input(node, i, known)?.values.as_ref()?.first().copied();
            let (first, limit, delta) = (bound(0)?, bound(1)?, bound(2)?);
            if delta == 0.0 {
                return None;
            }
            // Non-negative and whole after `max` and `ceil`; saturates when huge.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let count = ((limit - first) / delta).ceil().max(0.0) as u128;
            Some((start.with_dims(vec![count]), true))
        }
        "Resize" | "Upsample" => {
            let data = input(node, 0, known)?;
            // Resize-11+: (X, roi, scales, sizes); Resize-10 and Upsample: (X, scales).
            let sized = input(node, 3, known)
                .and_then(sizes)
                .filter(|s| !s.is_empty());
            let dims = match sized {
                Some(dims) => dims,
                None => {
                    let scales = if node.input.len() >= 3 {
                        input(node, 2, known)?.values.clone()?
                    } else if node.input.len() == 2 {
                        input(node, 1, known)?.values.clone()?
                    } else {
                        attribute(node, "scales")?
                            .floats
                            .iter()
                            .map(|&f| f64::from(f))
                            .collect()
                    };
                    if scales.len() != data.dims.len() {
                        return None;
                    }
                    // Sizes are non-negative and whole after `max` and `floor`.
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_precision_loss
                    )]
                    data.dims
                        .iter()
                        .zip(&scales)
                        .map(|(&d, &s)| ((d as f64) * s).floor().max(0.0) as u128)
                        .collect()
                }
            };
            Some((data.with_dims(dims), true))
        }
        "MatMul" => {
            let (a, b) = (input(node, 0, known)?, input(node, 1, known)?);
            let (ra, rb) = (a.dims.len(), b.dims.len());
            let dims = match (ra, rb) {
                (0, _) | (_, 0) => return None,
                (1, 1) => Vec::new(),
                (1, _) => {
                    let mut d = b.dims.clone();
                    d.remove(rb - 2);
                    d
                }
                (_, 1) => a.dims[..ra - 1].to_vec(),
                _ => {
                    let mut d = broadcast([&a.dims[..ra - 2], &b.dims[..rb - 2]]);
                    d.extend([a.dims[ra - 2], b.dims[rb - 1]]);
                    d
                }
            };
            Some((a.with_dims(dims), true))
        }
        "Shape" => {
            let name = node.input.first()?;
            let dims = match known.get(name) {
                Some(k) => k.dims.clone(),
                None => fixed_inputs.get(name.as_str())?.clone(),
            };
            // Shapes of what fits in memory are far below 2^53.
            #[allow(clippy::cast_precision_loss)]
            let values = dims.iter().map(|&d| d as f64).collect::<Vec<_>>();
            Some((int64(vec![values.len() as u128], Some(values)), false))
        }
        "Concat" => {
            let inputs = all_inputs(node, known)?;
            let first = *inputs.first()?;
            let a = axis(int_attribute(node, "axis").unwrap_or(0), first.dims.len())
                .filter(|&a| a < first.dims.len())?;
            let mut dims = first.dims.clone();
            for k in &inputs[1..] {
                if k.dims.len() != dims.len() {
                    return None;
                }
                dims[a] = dims[a].saturating_add(k.dims[a]);
            }
            let values = inputs
                .iter()
                .map(|k| k.values.clone())
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat())
                .filter(|v| v.len() as u128 <= MAX_FOLLOWED_VALUES);
            Some((
                Known {
                    dims,
                    values,
                    ..first.clone()
                },
                false,
            ))
        }
        "Reshape" => {
            let data = input(node, 0, known)?;
            let target = input(node, 1, known)?.values.clone()?;
            let mut dims = Vec::with_capacity(target.len());
            let mut inferred = None;
            for (i, &t) in target.iter().enumerate() {
                // Whole numbers from a shape tensor; anything else ends what is known.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let d = match t {
                    0.0 => *data.dims.get(i)?,
                    -1.0 if inferred.is_none() => {
                        inferred = Some(i);
                        1
                    }
                    t if t > 0.0 && t.fract() == 0.0 => t as u128,
                    _ => return None,
                };
                dims.push(d);
            }
            if let Some(i) = inferred {
                let rest = dims.iter().fold(1u128, |n, &d| n.saturating_mul(d));
                dims[i] = data.elements().checked_div(rest).unwrap_or(0);
            }
            Some((
                Known {
                    dims,
                    ..data.clone()
                },
                false,
            ))
        }
        "Unsqueeze" | "Squeeze" => {
            let data = input(node, 0, known)?;
            let axes: Vec<i64> = match attribute(node, "axes") {
                Some(a) => a.ints.clone(),
                // Opset 13 gives the axes as an input; values are whole numbers.
                #[allow(clippy::cast_possible_truncation)]
                None => input(node, 1, known)
                    .and_then(|k| k.values.as_ref())
                    .map(|v| v.iter().map(|&x| x as i64).collect())
                    .unwrap_or_default(),
            };
            let dims = if op == "Unsqueeze" {
                let rank = data.dims.len() + axes.len();
                let mut positions: Vec<usize> =
                    axes.iter().map(|&a| axis(a, rank)).collect::<Option<_>>()?;
                positions.sort_unstable();
                let mut dims = data.dims.clone();
                for p in positions {
                    if p > dims.len() {
                        return None;
                    }
                    dims.insert(p, 1);
                }
                dims
            } else if axes.is_empty() {
                data.dims.iter().copied().filter(|&d| d != 1).collect()
            } else {
                let drop: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis(a, data.dims.len()))
                    .collect::<Option<_>>()?;
                data.dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !drop.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            };
            Some((
                Known {
                    dims,
                    ..data.clone()
                },
                false,
            ))
        }
        "Flatten" => {
            let data = input(node, 0, known)?;
            let rank = data.dims.len();
            let a = match int_attribute(node, "axis").unwrap_or(1) {
                a if a < 0 => usize::try_from(a + i64::try_from(rank).ok()?).ok()?,
                a => usize::try_from(a).ok()?.min(rank),
            };
            let product = |d: &[u128]| d.iter().fold(1u128, |n, &x| n.saturating_mul(x));
            Some((
                data.with_dims(vec![product(&data.dims[..a]), product(&data.dims[a..])]),
                false,
            ))
        }
        "Transpose" => {
            let data = input(node, 0, known)?;
            let dims = match attribute(node, "perm") {
                Some(p) => p
                    .ints
                    .iter()
                    .map(|&i| {
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| data.dims.get(i).copied())
                    })
                    .collect::<Option<Vec<_>>>()?,
                None => data.dims.iter().rev().copied().collect(),
            };
            Some((data.with_dims(dims), false))
        }
        op if SHAPE_PRESERVING.contains(&op) => {
            let data = input(node, 0, known)?;
            let mut result = data.clone();
            if op == "Cast" {
                if let Some(to) = int_attribute(node, "to").and_then(|t| i32::try_from(t).ok()) {
                    (result.element_size, result.datatype) = element_type(to);
                }
            } else if op != "Identity" {
                result.values = None;
            }
            Some((result, false))
        }
        op if BROADCASTING.contains(&op) => {
            let inputs = all_inputs(node, known)?;
            let dims = broadcast(inputs.iter().map(|k| &k.dims[..]));
            let widest = inputs
                .iter()
                .max_by_key(|k| k.element_size)
                .copied()?
                .clone();
            let values = match inputs.as_slice() {
                [a, b] => arithmetic(op, a, b),
                _ => None,
            };
            let result = Known {
                dims,
                values,
                ..widest
            };
            // Arithmetic on shapes is bookkeeping; a broadcast that grows is a new constant.
            let grows = inputs.iter().all(|k| result.elements() > k.elements());
            Some((result, grows))
        }
        _ => None,
    }
}

/// The value of a `Constant` node, from whichever attribute it has.
fn constant_node(node: &NodeProto) -> Option<Known> {
    let a = node.attribute.first()?;
    let scalar = |element_size, datatype, values: Option<Vec<f64>>, count: usize| Known {
        element_size,
        datatype,
        dims: if a.name.ends_with('s') {
            vec![count as u128]
        } else {
            Vec::new()
        },
        values,
    };
    Some(match a.name.as_str() {
        "value" => tensor_known(a.t.as_ref()?),
        "sparse_value" => {
            let sparse = a.sparse_tensor.as_ref()?;
            Known {
                dims: dims_of(&sparse.dims),
                values: None,
                ..tensor_known(sparse.values.as_ref()?)
            }
        }
        "value_float" => scalar(4, "FLOAT", Some(vec![f64::from(a.f)]), 1),
        // Shapes and counts only: precision beyond 2^53 does not matter.
        #[allow(clippy::cast_precision_loss)]
        "value_int" => scalar(8, "INT64", Some(vec![a.i as f64]), 1),
        "value_floats" => {
            let values = a.floats.iter().map(|&f| f64::from(f)).collect::<Vec<_>>();
            let n = values.len();
            scalar(4, "FLOAT", small(values), n)
        }
        #[allow(clippy::cast_precision_loss)]
        "value_ints" => {
            let values = a.ints.iter().map(|&i| i as f64).collect::<Vec<_>>();
            let n = values.len();
            scalar(8, "INT64", small(values), n)
        }
        "value_string" => scalar(24, "STRING", None, 1),
        "value_strings" => scalar(24, "STRING", None, a.strings.len()),
        _ => return None,
    })
}

fn small(values: Vec<f64>) -> Option<Vec<f64>> {
    (values.len() as u128 <= MAX_FOLLOWED_VALUES).then_some(values)
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb::{
        tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto,
    };

    use super::*;

    fn int64s(name: &str, values: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![i64::try_from(values.len()).unwrap()],
            data_type: tensor_proto::DataType::Int64 as i32,
            int64_data: values.to_vec(),
            ..TensorProto::default()
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.into()],
            ..NodeProto::default()
        }
    }

    fn model(initializer: Vec<TensorProto>, nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                initializer,
                node: nodes,
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    const GIB: u128 = 1 << 30;

    #[test]
    fn constant_of_shape_counts_its_result() {
        let mut fill = node("ConstantOfShape", &["shape"], "y");
        fill.attribute.push(AttributeProto {
            name: "value".into(),
            t: Some(TensorProto {
                dims: vec![1],
                data_type: tensor_proto::DataType::Float as i32,
                float_data: vec![0.0],
                ..TensorProto::default()
            }),
            ..AttributeProto::default()
        });
        let m = model(vec![int64s("shape", &[16384, 16384])], vec![fill]);
        let c = constant_bytes(&m);
        assert_eq!(c.total, GIB + 16);
        let largest = c.largest.unwrap();
        assert_eq!(largest.bytes, GIB);
        assert_eq!(
            largest.to_string(),
            "node 'y' (ConstantOfShape) [16384, 16384] FLOAT, 1.0 GiB"
        );
        // Without a value, tract fills it with FP64 zeros.
        let m = model(
            vec![int64s("shape", &[16384, 16384])],
            vec![node("ConstantOfShape", &["shape"], "y")],
        );
        let largest = constant_bytes(&m).largest.unwrap();
        assert_eq!(largest.bytes, 2 * GIB);
        assert_eq!(largest.datatype, "DOUBLE");
    }

    #[test]
    fn shapes_are_followed_through_the_operators_that_build_them() {
        // Expand(Tile(c, r), Concat(Shape(x), [2]) * 4): x is an input of fixed shape [1024].
        let x = ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(1024)),
                            ..Default::default()
                        }],
                    }),
                })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        };
        let mut m = model(
            vec![
                TensorProto {
                    name: "c".into(),
                    dims: vec![1, 1],
                    data_type: tensor_proto::DataType::Double as i32,
                    double_data: vec![0.5],
                    ..TensorProto::default()
                },
                int64s("r", &[1, 2]),
                int64s("two", &[2]),
                int64s("four", &[4]),
            ],
            vec![
                node("Tile", &["c", "r"], "tiled"),
                node("Shape", &["x"], "sx"),
                node("Concat", &["sx", "two"], "s"),
                node("Mul", &["s", "four"], "shape"),
                node("Expand", &["tiled", "shape"], "y"),
            ],
        );
        m.graph.as_mut().unwrap().input.push(x);
        if let Some(concat) = m.graph.as_mut().unwrap().node.get_mut(2) {
            concat.attribute.push(AttributeProto {
                name: "axis".into(),
                i: 0,
                ..AttributeProto::default()
            });
        }
        let largest = constant_bytes(&m).largest.unwrap();
        assert_eq!(largest.dims, [4096, 8]);
        assert_eq!(largest.bytes, 4096 * 8 * 8);
        assert!(largest.what.contains("Expand"), "{largest}");
    }

    #[test]
    fn initializers_count_at_their_declared_size() {
        let weights = TensorProto {
            name: "w".into(),
            dims: vec![1 << 20, 1 << 10],
            data_type: tensor_proto::DataType::Float16 as i32,
            ..TensorProto::default()
        };
        let c = constant_bytes(&model(vec![weights], vec![]));
        assert_eq!(c.total, 2 * GIB);
        assert!(c.largest.unwrap().what.contains("initializer 'w'"));
    }

    #[test]
    fn shape_preserving_operators_are_not_counted_twice() {
        let m = model(
            vec![TensorProto {
                name: "w".into(),
                dims: vec![256, 256],
                data_type: tensor_proto::DataType::Float as i32,
                ..TensorProto::default()
            }],
            vec![node("Transpose", &["w"], "wt"), node("Relu", &["wt"], "y")],
        );
        assert_eq!(constant_bytes(&m).total, 256 * 256 * 4);
    }

    #[test]
    fn odd_graphs_end_what_is_known_without_failing() {
        let scalar = TensorProto {
            name: "s".into(),
            data_type: tensor_proto::DataType::Int64 as i32,
            int64_data: vec![3],
            ..TensorProto::default()
        };
        let m = model(
            vec![
                scalar,
                int64s("neg", &[-1, 5]),
                int64s("huge", &[i64::MAX, i64::MAX]),
            ],
            vec![
                node("Concat", &["s", "s"], "c"),
                node("Unsqueeze", &["s", "neg"], "u"),
                node("MatMul", &["s", "neg"], "mm"),
                node("Range", &["s", "s", "s"], "r"),
                node("Reshape", &["neg", "neg"], "rs"),
                node("Flatten", &["s"], "f"),
                node("ConstantOfShape", &["neg"], "bad"),
                node("ConstantOfShape", &["huge"], "y"),
                node("Tile", &["huge", "huge"], "t"),
            ],
        );
        let c = constant_bytes(&m);
        assert_eq!(c.largest.unwrap().what, "node 'y' (ConstantOfShape)");
        assert!(c.total > 1 << 100, "{}", c.total);
    }

    #[test]
    fn subgraphs_see_their_outer_scope_and_count_too() {
        let branch = GraphProto {
            node: vec![node("ConstantOfShape", &["shape"], "inner")],
            initializer: vec![int64s("local", &[1])],
            ..GraphProto::default()
        };
        let mut branching = node("If", &["cond"], "z");
        branching.attribute.push(AttributeProto {
            name: "then_branch".into(),
            g: Some(branch),
            ..AttributeProto::default()
        });
        let m = model(
            vec![int64s("shape", &[16384, 16384])],
            vec![branching, node("ConstantOfShape", &["local"], "after")],
        );
        let c = constant_bytes(&m);
        assert_eq!(c.largest.unwrap().what, "node 'inner' (ConstantOfShape)");
        // The branch's `local` is not known after it: `after` is not counted.
        assert_eq!(c.total, 2 * GIB + 16 + 8);
    }

    #[test]
    fn sizes_read_as_people_do() {
        assert_eq!(human_bytes(187), "187 bytes");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(u128::MAX).split(' ').nth(1), Some("PiB"));
    }
}
