#!/usr/bin/env python3
"""Writes the tiny ONNX models that the inference server's runtime tests load.

Every model has fixed weights and a fixed behaviour, so the same call always writes the same
files, and the tests compute the expected outputs themselves:

- add.onnx: inputs a, b (FP32 [1, 3]); output sum = a + b.
- multi_io.onnx: inputs x (FP32 [2, 2]) and y (INT64 [3]); outputs x_times_2 = x * 2 (FP32 [2, 2]),
  y_plus_1 = y + 1 (INT64 [3]) and x_total = the sum of every element of x (FP32, a scalar).
- dynamic_batch.onnx: input x (FP32 [batch, 4], batch symbolic); output y = x @ W + B
  (FP32 [batch, 2]) with W = [[1, 0], [0, 1], [1, 1], [2, -1]] and B = [0.5, -1].
- unknown_dim.onnx: input x (FP32 [batch, ?, 4]: the second dimension has neither a size nor a
  name, as in PaddleOCR's recognizer); output y = squeeze(x, axis 1) * 2 (FP32 [batch, 4]). tract
  cannot type an input with an unknown dimension, and the squeeze needs that dimension to be 1, so
  the model loads only when the server is given the input's shape, e.g. [2, 1, 4] or [-1, 1, 4].
- identity_<type>.onnx, for every fixed-size type (bool, uint8, uint16, uint32, uint64, int8,
  int16, int32, int64, fp16, fp32, fp64) and for string: input x, output y = x, shape [2, 3].
- value_info_conflict.onnx: input x (FP32 [2, 3]); output y = -relu(x). The graph's value info
  declares the intermediate tensor h = relu(x) with shape [7, 7], which contradicts the graph, so
  the model loads only with its value info ignored.
- unsupported_op.onnx: input x (FP32 [2, 2, 2]); output y = Det(x). Det is a standard ONNX
  operator that tract does not implement, so the model cannot be loaded.
- external_data.onnx: input x (FP32 [2, 3]); output y = x + W, where W is ONNX external data in
  the file weights.bin (which is not written). The server loads models from memory only, so the
  model cannot be loaded.
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
# IR version 8 is read by every ONNX runtime released since 2021.
IR_VERSION = 8

IDENTITY_TYPES = {
    "bool": TensorProto.BOOL,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "fp16": TensorProto.FLOAT16,
    "fp32": TensorProto.FLOAT,
    "fp64": TensorProto.DOUBLE,
    "string": TensorProto.STRING,
}


def model(name, nodes, inputs, outputs, initializers=(), value_info=(), check=True):
    graph = helper.make_graph(
        nodes, name, inputs, outputs, list(initializers), value_info=list(value_info)
    )
    result = helper.make_model(
        graph,
        producer_name="adyton scripts/make_test_models.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    result.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(result)
    return result


def tensor(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def add():
    return model(
        "add",
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        [tensor("a", TensorProto.FLOAT, [1, 3]), tensor("b", TensorProto.FLOAT, [1, 3])],
        [tensor("sum", TensorProto.FLOAT, [1, 3])],
    )


def multi_io():
    return model(
        "multi_io",
        [
            helper.make_node("Mul", ["x", "two"], ["x_times_2"]),
            helper.make_node("Add", ["y", "one"], ["y_plus_1"]),
            helper.make_node("ReduceSum", ["x"], ["x_total"], keepdims=0),
        ],
        [tensor("x", TensorProto.FLOAT, [2, 2]), tensor("y", TensorProto.INT64, [3])],
        [
            tensor("x_times_2", TensorProto.FLOAT, [2, 2]),
            tensor("y_plus_1", TensorProto.INT64, [3]),
            tensor("x_total", TensorProto.FLOAT, []),
        ],
        [
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )


def dynamic_batch():
    weights = np.array([[1, 0], [0, 1], [1, 1], [2, -1]], dtype=np.float32)
    bias = np.array([0.5, -1], dtype=np.float32)
    return model(
        "dynamic_batch",
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )


def unknown_dim():
    return model(
        "unknown_dim",
        [
            helper.make_node("Squeeze", ["x", "axes"], ["squeezed"]),
            helper.make_node("Mul", ["squeezed", "two"], ["y"]),
        ],
        # dim_param "?" is how paddle2onnx writes a dimension it knows nothing about.
        [tensor("x", TensorProto.FLOAT, ["batch", "?", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        ],
    )


def identity(elem_type):
    return model(
        "identity",
        [helper.make_node("Identity", ["x"], ["y"])],
        [tensor("x", elem_type, [2, 3])],
        [tensor("y", elem_type, [2, 3])],
    )


def value_info_conflict():
    return model(
        "value_info_conflict",
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3])],
        value_info=[tensor("h", TensorProto.FLOAT, [7, 7])],
    )


def unsupported_op():
    return model(
        "unsupported_op",
        [helper.make_node("Det", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [2, 2, 2])],
        [tensor("y", TensorProto.FLOAT, [2])],
    )


def external_data():
    weights = numpy_helper.from_array(np.ones((2, 3), dtype=np.float32), "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    location = weights.external_data.add()
    location.key = "location"
    location.value = "weights.bin"
    # The checker insists that the external file exists, and its absence is the point.
    return model(
        "external_data",
        [helper.make_node("Add", ["x", "W"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [2, 3])],
        [tensor("y", TensorProto.FLOAT, [2, 3])],
        [weights],
        check=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="the directory to write the .onnx files into")
    args = parser.parse_args()
    models = {
        "add": add(),
        "multi_io": multi_io(),
        "dynamic_batch": dynamic_batch(),
        "unknown_dim": unknown_dim(),
        "value_info_conflict": value_info_conflict(),
        "unsupported_op": unsupported_op(),
        "external_data": external_data(),
    }
    for name, elem_type in IDENTITY_TYPES.items():
        models[f"identity_{name}"] = identity(elem_type)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, proto in models.items():
        onnx.save(proto, os.path.join(args.out_dir, f"{name}.onnx"))


if __name__ == "__main__":
    main()
