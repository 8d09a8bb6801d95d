#!/usr/bin/env python3
"""Writes a small ONNX model with deterministic weights, for the demo and the tests.

The model is a two-layer perceptron, y = relu(x @ W1 + b1) @ W2 + b2, with input "x" of shape
[batch, inputs] (batch is dynamic) and output "y" of shape [batch, outputs]. The weights come from
a seeded generator, so the same arguments always give the same file.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(inputs: int, hidden: int, outputs: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.standard_normal((inputs, hidden), dtype=np.float32) / np.sqrt(inputs),
        "b1": rng.standard_normal(hidden, dtype=np.float32) * 0.1,
        "W2": rng.standard_normal((hidden, outputs), dtype=np.float32) / np.sqrt(hidden),
        "b2": rng.standard_normal(outputs, dtype=np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "adyton_sample_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(
        graph,
        producer_name="adyton scripts/make_model.py",
        opset_imports=[helper.make_opsetid("", 13)],
    )
    # IR version 8 is read by every ONNX runtime released since 2021.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the .onnx file")
    parser.add_argument("--inputs", type=int, default=4, help="input features (default 4)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units (default 16)")
    parser.add_argument("--outputs", type=int, default=3, help="output features (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="weight seed (default 7)")
    args = parser.parse_args()
    model = build(args.inputs, args.hidden, args.outputs, args.seed)
    onnx.save(model, args.output)


if __name__ == "__main__":
    main()
