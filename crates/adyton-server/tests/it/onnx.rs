//! Small ONNX models written in the test itself: the protobuf fields of `onnx.proto` that these
//! models need, encoded by hand, so that a test says exactly which graph it serves.

/// ONNX element types (`TensorProto.DataType`).
pub const FLOAT: u64 = 1;
pub const INT64: u64 = 7;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A `TensorProto` of INT64 values with `dims`.
pub fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(&mut t, 1, d as u64);
    }
    field_varint(&mut t, 2, INT64);
    for &v in values {
        field_varint(&mut t, 7, v as u64);
    }
    if !name.is_empty() {
        field_bytes(&mut t, 8, name.as_bytes());
    }
    t
}

/// A `ValueInfoProto`: a tensor of `elem_type` whose dimensions are sizes, or -1 for a named
/// dynamic dimension.
pub fn value_info(name: &str, elem_type: u64, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for (axis, &d) in dims.iter().enumerate() {
        let mut dim = Vec::new();
        if d < 0 {
            field_bytes(&mut dim, 2, format!("{name}_{axis}").as_bytes());
        } else {
            field_varint(&mut dim, 1, d as u64);
        }
        field_bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    field_varint(&mut tensor, 1, elem_type);
    field_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tensor);
    let mut v = Vec::new();
    field_bytes(&mut v, 1, name.as_bytes());
    field_bytes(&mut v, 2, &ty);
    v
}

/// A `NodeProto`.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
    node_with(op, inputs, outputs, &[])
}

/// A `NodeProto` with attributes ([`tensor_attribute`]).
pub fn node_with(op: &str, inputs: &[&str], outputs: &[&str], attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        field_bytes(&mut n, 1, i.as_bytes());
    }
    for o in outputs {
        field_bytes(&mut n, 2, o.as_bytes());
    }
    field_bytes(&mut n, 4, op.as_bytes());
    for a in attributes {
        field_bytes(&mut n, 5, a);
    }
    n
}

/// An `AttributeProto` holding a tensor.
pub fn tensor_attribute(name: &str, tensor: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(&mut a, 1, name.as_bytes());
    field_bytes(&mut a, 5, tensor);
    field_varint(&mut a, 20, 4);
    a
}

/// A `TensorProto` of one FP32 zero, in `raw_data`.
pub fn float_zero() -> Vec<u8> {
    let mut t = Vec::new();
    field_varint(&mut t, 1, 1);
    field_varint(&mut t, 2, FLOAT);
    field_bytes(&mut t, 9, &0f32.to_le_bytes());
    t
}

/// A `ModelProto` (IR 8, the default opset 13) of one graph.
pub fn model(
    nodes: &[Vec<u8>],
    initializers: &[Vec<u8>],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
) -> Vec<u8> {
    let mut graph = Vec::new();
    for n in nodes {
        field_bytes(&mut graph, 1, n);
    }
    field_bytes(&mut graph, 2, b"g");
    for i in initializers {
        field_bytes(&mut graph, 5, i);
    }
    for i in inputs {
        field_bytes(&mut graph, 11, i);
    }
    for o in outputs {
        field_bytes(&mut graph, 12, o);
    }
    let mut opset = Vec::new();
    field_varint(&mut opset, 2, 13);
    let mut m = Vec::new();
    field_varint(&mut m, 1, 8);
    field_bytes(&mut m, 8, &opset);
    field_bytes(&mut m, 7, &graph);
    m
}

/// The model: `ConstantOfShape` of a constant `[16384, 16384]` filled with an FP32 zero,
/// 1 GiB of FP32 from a model of under 200 bytes.
pub fn constant_of_shape(side: i64) -> Vec<u8> {
    model(
        &[node_with(
            "ConstantOfShape",
            &["shape"],
            &["y"],
            &[tensor_attribute("value", &float_zero())],
        )],
        &[int64_tensor("shape", &[2], &[side, side])],
        &[],
        &[value_info("y", FLOAT, &[side, side])],
    )
}

/// `y = a + b` with `a` of shape `[n, 1]` and `b` of `[1, m]` (FP32): an output of `n * m`
/// elements from inputs of `n + m`, as large as the client asks (8192 and 4096 give 33.5 million).
pub fn outer_sum() -> Vec<u8> {
    model(
        &[node("Add", &["a", "b"], &["y"])],
        &[],
        &[
            value_info("a", FLOAT, &[-1, 1]),
            value_info("b", FLOAT, &[1, -1]),
        ],
        &[value_info("y", FLOAT, &[-1, -1])],
    )
}
