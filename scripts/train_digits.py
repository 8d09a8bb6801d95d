#!/usr/bin/env python3
"""Trains the demo's digit classifier and writes it as ONNX, with its held-out test set.

    scripts/train_digits.py OUT_DIR            # writes OUT_DIR/digits.onnx and digits_test.json
    scripts/train_digits.py --check DIR        # re-trains and compares with the files in DIR

The data is scikit-learn's bundled `load_digits()` (1797 8x8 images of handwritten digits, pixels
0..16; shipped inside the package, nothing is downloaded). A fixed, stratified 20 % is held out;
a multinomial logistic regression is trained on the rest (L-BFGS, deterministic). The graph is
written with the `onnx` package directly:

    pixels FP32 [batch, 64] (0..16, as load_digits gives them)
      -> Gemm (weights scaled by 1/16, the training scale) -> logits [batch, 10]
      -> Softmax -> probabilities FP32 [batch, 10]
      -> ArgMax  -> label INT64 [batch]

`digits_test.json` holds the held-out pixels and labels, scikit-learn's predictions and its
accuracy, which `adyton demo` compares with what the attested server answers. Running the script
again writes the same files; `--check` says whether a fresh training still matches (the test set
exactly, the weights to float32 rounding).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

SEED = 20240611
TEST_FRACTION = 0.2
# Training sees pixels scaled to 0..1; the graph folds the scale into the weights.
PIXEL_SCALE = 16.0


def train():
    digits = load_digits()
    x = digits.data.astype(np.float64)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    model = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8)
    model.fit(x_train / PIXEL_SCALE, y_train)
    predictions = model.predict(x_test / PIXEL_SCALE).astype(np.int64)
    weights = (model.coef_.T / PIXEL_SCALE).astype(np.float32)  # [64, 10]
    bias = model.intercept_.astype(np.float32)  # [10]
    return x_test, y_test, predictions, weights, bias


def graph(weights, bias):
    inputs = [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])]
    outputs = [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
    ]
    nodes = [
        helper.make_node("Gemm", ["pixels", "weights", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
    ]
    g = helper.make_graph(nodes, "digits", inputs, outputs, initializers)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="adyton scripts/train_digits.py",
        doc_string="Multinomial logistic regression on scikit-learn's digits; input 8x8 pixels 0..16",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_set(x_test, y_test, predictions):
    correct = int((predictions == y_test).sum())
    return {
        "source": "sklearn.datasets.load_digits(), held-out split of scripts/train_digits.py",
        "seed": SEED,
        "test_fraction": TEST_FRACTION,
        "count": int(len(y_test)),
        "sklearn_correct": correct,
        "sklearn_accuracy": correct / len(y_test),
        "labels": [int(v) for v in y_test],
        "sklearn_predictions": [int(v) for v in predictions],
        # Pixels are whole numbers 0..16.
        "pixels": [[int(v) for v in row] for row in x_test],
    }


def test_json(data):
    return json.dumps(data, separators=(",", ":")) + "\n"


def check_with_onnxruntime(onnx_bytes, data):
    """Runs the graph with onnxruntime (when installed) and returns its number of correct answers."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    pixels = np.asarray(data["pixels"], dtype=np.float32)
    probabilities, label = session.run(None, {"pixels": pixels})
    if not np.array_equal(label, probabilities.argmax(axis=1)):
        sys.exit("onnxruntime: label is not the argmax of probabilities")
    if not np.array_equal(label, np.asarray(data["sklearn_predictions"])):
        sys.exit("onnxruntime's predictions differ from scikit-learn's")
    return int((label == np.asarray(data["labels"])).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="where to write the files")
    parser.add_argument("--check", type=Path, metavar="DIR", help="compare with the files in DIR")
    args = parser.parse_args()
    if (args.out_dir is None) == (args.check is None):
        parser.error("give OUT_DIR or --check DIR")

    x_test, y_test, predictions, weights, bias = train()
    model = graph(weights, bias)
    onnx_bytes = model.SerializeToString()
    data = test_set(x_test, y_test, predictions)

    if args.check is not None:
        committed = onnx.load(str(args.check / "digits.onnx"))
        stored = {t.name: numpy_helper.to_array(t) for t in committed.graph.initializer}
        for name, fresh in (("weights", weights), ("bias", bias)):
            if stored[name].shape != fresh.shape or not np.allclose(
                stored[name], fresh, rtol=1e-5, atol=1e-6
            ):
                sys.exit(f"{args.check}/digits.onnx: `{name}` differs from a fresh training")
        committed_data = json.loads((args.check / "digits_test.json").read_text())
        if committed_data != data:
            sys.exit(f"{args.check}/digits_test.json differs from a fresh split and training")
        same = (args.check / "digits.onnx").read_bytes() == onnx_bytes
        print(f"{args.check}: matches a fresh training ({'byte for byte' if same else 'weights within float32 rounding'})")
        return

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "digits.onnx").write_bytes(onnx_bytes)
    (args.out_dir / "digits_test.json").write_text(test_json(data))
    print(f"trained on {len(load_digits().target) - data['count']} digits, held out {data['count']}")
    print(f"scikit-learn accuracy on the held-out digits: {data['sklearn_correct']}/{data['count']} = {data['sklearn_accuracy']:.4f}")
    ort_correct = check_with_onnxruntime(onnx_bytes, data)
    if ort_correct is not None:
        print(f"onnxruntime on digits.onnx: {ort_correct}/{data['count']}, the same predictions")
    print(f"wrote {args.out_dir / 'digits.onnx'} ({len(onnx_bytes)} bytes) and {args.out_dir / 'digits_test.json'}")


if __name__ == "__main__":
    main()
