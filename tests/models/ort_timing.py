#!/usr/bin/env python3
"""Times onnxruntime on one real model, and gives the serving benchmark its inputs
(crates/adyton-server/benches/serving.rs, scripts/bench_serving_triton.py).

    ort_timing.py MODEL.onnx [--iterations N] [--warmup N] [--threads N]
    ort_timing.py MODEL.onnx --dump-inputs

Both build the inputs compare.py builds (same names, shapes, value ranges and seed). The first runs
the model N times in one CPU session (`intra_op_num_threads` threads, 0 for onnxruntime's default;
intra-op spinning off, as the benchmark's other columns run) and prints one JSON object:
{"onnxruntime": VERSION, "threads", "iterations", "p50_ms", "p99_ms"}. The second prints the inputs
as one JSON object: {"inputs": [{"name", "datatype", "shape", "data_base64"}]}, the data in
little-endian row-major order, for a benchmark that is not written in Python.
"""

import argparse
import base64
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import MODELS  # noqa: E402
from sim_server import datatype_of  # noqa: E402

SEED = 20240607


def percentile(sorted_samples, p):
    """Nearest rank, as the Rust benchmark computes it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def session_for(path, threads):
    """A CPU session with `threads` intra-op threads (0: onnxruntime's default), spinning off."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inputs_for(path, session):
    """compare.py's inputs for the model at `path`."""
    if path.name not in MODELS:
        sys.exit(f"ort_timing.py: unknown model {path.name} (known: {', '.join(MODELS)})")
    entry = MODELS[path.name]
    build_inputs = entry.build_inputs if hasattr(entry, "build_inputs") else entry[1]
    feeds = build_inputs(session, np.random.default_rng(SEED))
    # A model compared on several requests (shapes) is timed on the first.
    return feeds[0] if isinstance(feeds, list) else feeds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dump-inputs", action="store_true")
    args = parser.parse_args()

    path = Path(args.model)
    session = session_for(path, args.threads)
    feeds = inputs_for(path, session)
    if args.dump_inputs:
        print(json.dumps({"inputs": [
            {
                "name": name,
                "datatype": datatype_of(value),
                "shape": list(value.shape),
                "data_base64": base64.b64encode(
                    np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
                ).decode(),
            }
            for name, value in feeds.items()
        ]}))
        return
    for _ in range(args.warmup):
        session.run(None, feeds)
    samples = []
    for _ in range(args.iterations):
        started = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "iterations": args.iterations,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
    }))


if __name__ == "__main__":
    main()
