#!/usr/bin/env python3
"""What a user of tritonclient sees: Adyton served over attested TLS against onnxruntime in Python.

    scripts/bench_serving_triton.py [--adyton BIN] [--engines tract,onnxruntime] [--iterations N]
                                    [--warmup N] [MODEL...]

For each model (default: every model of tests/models/compare.py present in target/models/), starts
`adyton server serve --tee sim` (the release binary by default) once per engine, each with that one
model, and connects tritonclient over HTTPS pinned to the certificate the server wrote (its
attested certificate; the client trusts exactly it), both with tests/models/sim_server.py, as
tests/models/compare.py does. Then, N times, in turn: one onnxruntime run in this process
(onnxruntime's default threads, intra-op spinning off), and one inference on each server, as a
user calls it (InferInput built from the numpy array, binary tensors both ways, outputs read back
as numpy arrays). The inputs are compare.py's. Prints progress on stderr and a markdown table of p50 and p90 (ms) on stdout, each
served figure with the largest relative difference of its outputs from onnxruntime's (compare.py
judges them; this only shows that the model served is the model timed).

The server runs with --workers 2, as compare.py starts it; a model that does not load on an engine
gets the server's reason in the table. Engines the binary does not know (no --engine flag) are left
out, with a note.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
from compare import MODELS, relative_error  # noqa: E402
from ort_timing import inputs_for, percentile, session_for  # noqa: E402
from sim_server import Server, infer, triton_client  # noqa: E402


def log(message):
    print(f"bench_serving_triton: {message}", file=sys.stderr, flush=True)


def supports_engines(binary):
    """Whether `adyton server serve` takes --engine."""
    out = subprocess.run(
        [str(binary), "server", "serve", "--help"], capture_output=True, text=True, check=False
    )
    return "--engine" in out.stdout


class Caller:
    """One served model, called as a tritonclient user calls it."""

    def __init__(self, server, name, feeds):
        self.server = server
        self.name = name
        self.feeds = feeds
        self.client = triton_client(server.url, server.cert)
        metadata = self.client.get_model_metadata(name)
        self.output_names = [o["name"] for o in metadata["outputs"]]
        self.plan = metadata.get("parameters", {}).get("plan", "?")

    def call(self):
        return infer(self.client, self.name, self.feeds, self.output_names)

    def close(self):
        self.client.close()
        self.server.close()


def largest_error(name, served, reference):
    """The served outputs' largest difference from onnxruntime's, relative to their largest
    magnitude, as compare.py measures it (which judges it, with a tolerance per model: a quantized
    model's differs more); a missing output or another shape is an error."""
    worst = 0.0
    for out_name, expected in reference.items():
        got = served.get(out_name)
        if got is None or got.shape != expected.shape:
            raise RuntimeError(f"{name}: output {out_name} is missing or has another shape")
        if np.issubdtype(expected.dtype, np.floating):
            worst = max(worst, relative_error(got, expected))
    return worst


def measure(binary, engines, path, iterations, warmup):
    """One table row: {"model", "ort": (p50, p90), engine: (p50, p90) or a reason, "plans"}."""
    name = path.stem.replace(".", "_").replace("-", "_")
    session = session_for(path, 0)
    feeds = inputs_for(path, session)
    output_names = [o.name for o in session.get_outputs()]
    reference = dict(zip(output_names, session.run(None, feeds)))
    row = {"model": path.name, "plans": {}}
    callers = {}
    for engine in engines:
        log(f"{path.name}: starting the server ({engine or 'default engine'})")
        try:
            server = Server(binary, engine, name, path, prefix="adyton-bench-")
        except Exception as e:  # noqa: BLE001 - any failure is reported in the table
            row[engine] = f"n/a: {type(e).__name__}: {e}"
            continue
        try:
            caller = Caller(server, name, feeds)
        except Exception as e:  # noqa: BLE001
            server.close()
            row[engine] = f"n/a: {type(e).__name__}: {e}"
            continue
        try:
            error = largest_error(f"{path.name} on {engine}", caller.call(), reference)
            callers[engine] = caller
            row["plans"][engine] = caller.plan
            row.setdefault("errors", {})[engine] = error
        except Exception as e:  # noqa: BLE001 - any failure is reported in the table
            caller.close()
            row[engine] = f"n/a: {type(e).__name__}: {e}"
    try:
        runs = [("ort", lambda: session.run(None, feeds))]
        runs += [(engine, caller.call) for engine, caller in callers.items()]
        for _ in range(warmup):
            for _, run in runs:
                run()
        samples = {key: [] for key, _ in runs}
        log(f"{path.name}: {iterations} calls of {len(runs)} columns in turn")
        for i in range(iterations):
            for k in range(len(runs)):
                key, run = runs[(i + k) % len(runs)]
                started = time.perf_counter()
                run()
                samples[key].append((time.perf_counter() - started) * 1000.0)
        for key, values in samples.items():
            values.sort()
            row[key] = (percentile(values, 50), percentile(values, 90))
    finally:
        for caller in callers.values():
            caller.close()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adyton", default=str(ROOT / "target" / "release" / "adyton"))
    parser.add_argument("--engines", default="tract,onnxruntime")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models-dir", default=str(ROOT / "target" / "models"))
    parser.add_argument("models", nargs="*", help="model file names (default: all fetched)")
    args = parser.parse_args()
    if args.iterations < 30:
        sys.exit("bench_serving_triton.py: --iterations must be at least 30")

    binary = Path(args.adyton)
    if not binary.exists():
        sys.exit(f"bench_serving_triton.py: no {binary}; build it (cargo build --release: adyton and adyton-server)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    notes = []
    if not supports_engines(binary):
        notes.append(f"{binary} has no --engine flag: one column, its default engine (tract)")
        engines = [None]
    models_dir = Path(args.models_dir)
    names = args.models or [m for m in MODELS if (models_dir / m).exists()]
    if not names:
        sys.exit(f"bench_serving_triton.py: no model in {models_dir}; run scripts/fetch_models")

    rows = []
    for m in names:
        rows.append(measure(binary, engines, models_dir / m, args.iterations, args.warmup))
        log(f"{m}: done")

    def cell(value):
        return f"{value[0]:.2f} / {value[1]:.2f}" if isinstance(value, tuple) else value

    def ratio(value, ort_value):
        return f"{value[0] / ort_value[0]:.2f}×" if isinstance(value, tuple) else "–"

    label = {None: "Adyton", "tract": "Adyton + tract", "onnxruntime": "Adyton + onnxruntime"}
    print()
    print(
        f"tritonclient over attested TLS (binary tensors, pinned certificate) against onnxruntime "
        f"{ort.__version__} in Python (default threads, spinning off); {args.iterations} calls of "
        f"each, in turn; p50 / p90 in ms; {os.cpu_count()} cores."
    )
    print()
    header = ["model", "onnxruntime (Python)"]
    for engine in engines:
        header += [label.get(engine, engine), f"{label.get(engine, engine)} / onnxruntime p50"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        cells = [row["model"], cell(row["ort"])]
        for engine in engines:
            value = row.get(engine, "n/a")
            plan = row["plans"].get(engine)
            error = row.get("errors", {}).get(engine)
            notes_here = [plan] if plan and engine == "tract" else []
            if error is not None:
                notes_here.append(f"error {error:.0e}")
            text = cell(value) + (f" ({', '.join(notes_here)})" if notes_here else "")
            cells += [text, ratio(value, row["ort"])]
        print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
