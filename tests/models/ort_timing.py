#!/usr/bin/env python3
"""Times onnxruntime on one real model, for the serving benchmark
(crates/adyton-server/benches/serving.rs).

    ort_timing.py MODEL.onnx [--iterations N] [--warmup N] [--threads N]

Builds the same kind of inputs as compare.py (same names, shapes and value ranges), runs the model
N times in one CPU session with `intra_op_num_threads` threads, and prints one JSON object:
{"onnxruntime": VERSION, "threads", "iterations", "p50_ms", "p99_ms"}.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import MODELS  # noqa: E402


def percentile(sorted_samples, p):
    """Nearest rank, as the Rust benchmark computes it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    path = Path(args.model)
    _, build_inputs = MODELS[path.name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = build_inputs(session, np.random.default_rng(20240607))
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
