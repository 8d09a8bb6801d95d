#!/usr/bin/env python3
"""Writes an ONNX model of about SIZE_MB megabytes of FP32 weights, for cold-start measurements.

    make_big_model.py SIZE_MB OUT.onnx

The model is a chain of dense layers y = relu(x @ W_i + b_i) on a width of 1024, with as many
layers as the size needs; the weights are seeded random values (they do not compress), so the
encrypted blob has the same size. Input x: FP32 [batch, 1024]; output y: FP32 [batch, 1024].
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 1024


def main():
    size_mb, out = float(sys.argv[1]), sys.argv[2]
    layer_bytes = WIDTH * WIDTH * 4
    layers = max(1, round(size_mb * 1e6 / layer_bytes))
    rng = np.random.default_rng(2026)
    nodes, initializers = [], []
    previous = "x"
    for i in range(layers):
        w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)).astype(np.float32)
        b = np.zeros(WIDTH, dtype=np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], ["y" if i == layers - 1 else f"r{i}"]),
        ]
        previous = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, out)
    print(f"{out}: {layers} layers, {layers * layer_bytes / 1e6:.0f} MB of weights")


if __name__ == "__main__":
    main()
