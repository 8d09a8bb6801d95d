#!/usr/bin/env python3
"""Figures of the Python SDK against a local SIM server.

1. `adyton.connect` with attestation verified (the SIM evidence in the TLS certificate, and fresh
   evidence over a nonce unless --no-fresh), median of 20.
2. Per-predict latency, p50 and p90 over keep-alive connections, for the `add` ([1, 3] FP32) and
   `dynamic_batch` ([64, 4] FP32) test models:
   - the SDK: `Connection.predict` (numpy in, numpy out);
   - raw HTTP: the same binary-tensor request body sent with `http.client` on one keep-alive
     connection pinned to the verified certificate, outputs decoded with `numpy.frombuffer`;
   - the CLI: one `adyton infer` process per request (start, attestation, request), median of 5.
   The SDK's extra cost is its p50 minus raw HTTP's p50.

Usage: python/bench_sdk.py [--adyton target/release/adyton] [--iterations 300]
"""

import argparse
import http.client
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Run as `python python/bench_sdk.py`, Python puts python/ first on the path, where the package's
# sources lack the built native module: the installed package is the one measured.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
import adyton  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def start_server(binary, directory):
    subprocess.run(
        [sys.executable, ROOT / "scripts" / "make_test_models.py", directory / "models"],
        check=True,
        capture_output=True,
    )
    measure = subprocess.run([binary, "attest", "measure"], check=True, capture_output=True, text=True)
    measurement = measure.stdout.strip().splitlines()[-1].strip()
    (directory / "policy.toml").write_text(f'[sim]\nmeasurement = ["{measurement}"]\n')
    process = subprocess.Popen(
        [
            binary, "server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim",
            "--sim-key", "sim.key", "--certificate-out", "server.pem",
            "--model", "add=models/add.onnx", "--model", "dynamic_batch=models/dynamic_batch.onnx",
        ],
        cwd=directory,
        # Request logging off: the figures are of the clients, not of the server's log.
        env={**os.environ, "ADYTON_LOG": "warn"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = None
    for line in process.stderr:
        found = re.search(r"listening on (https://\S+)", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    return process, url


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_request(inputs):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(value.shape),
                    "parameters": {"binary_data_size": value.nbytes},
                }
                for name, value in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header, header + b"".join(v.tobytes() for v in inputs.values())


def raw_predict(connection, model, inputs):
    header, body = raw_request(inputs)
    connection.request(
        "POST",
        f"/v2/models/{model}/infer",
        body=body,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    answer = connection.getresponse()
    data = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
    json_len = int(answer.getheader("Inference-Header-Content-Length"))
    meta = json.loads(data[:json_len])
    offset, outputs = json_len, {}
    for output in meta["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = np.frombuffer(data[offset : offset + size], np.float32).reshape(output["shape"])
        offset += size
    return outputs


def timed(function, iterations):
    for _ in range(min(20, iterations)):
        function()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adyton", default=os.environ.get("ADYTON_BIN"), help="the adyton binary")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    binary = Path(args.adyton).resolve() if args.adyton else None
    if binary is None:
        candidates = [ROOT / "target" / p / "adyton" for p in ("release", "debug")]
        candidates = [c for c in candidates if c.exists()]
        if not candidates:
            raise SystemExit("no adyton binary: run `cargo build -p adyton` or pass --adyton")
        binary = max(candidates, key=lambda c: c.stat().st_mtime)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        process, url = start_server(binary, directory)
        try:
            policy = directory / "policy.toml"
            rows = []
            for fresh in (True, False):
                samples = []
                for _ in range(20):
                    started = time.perf_counter()
                    adyton.connect(url, policy=policy, fresh_evidence=fresh).close()
                    samples.append(time.perf_counter() - started)
                label = "adyton.connect" + ("" if fresh else " (fresh_evidence=False)")
                rows.append((label, statistics.median(samples) * 1e3))

            context = ssl.create_default_context(cafile=str(directory / "server.pem"))
            context.check_hostname = False
            host, port = url.removeprefix("https://").rsplit(":", 1)
            rng = np.random.default_rng(1)
            cases = {
                "add": {"a": rng.standard_normal((1, 3), np.float32), "b": rng.standard_normal((1, 3), np.float32)},
                "dynamic_batch": {"x": rng.standard_normal((64, 4), np.float32)},
            }
            predict_rows = []
            with adyton.connect(url, policy=policy) as c:
                raw = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
                for model, inputs in cases.items():
                    sdk_out = c.predict(model, inputs)
                    raw_out = raw_predict(raw, model, inputs)
                    for name in sdk_out:
                        np.testing.assert_array_equal(sdk_out[name], raw_out[name])
                    # Interleaved rounds, so that both clients see the same background load.
                    sdk, http_raw = [], []
                    for _ in range(3):
                        sdk += timed(lambda: c.predict(model, inputs), args.iterations // 3)
                        http_raw += timed(lambda: raw_predict(raw, model, inputs), args.iterations // 3)
                    cli = []
                    for name, value in inputs.items():
                        np.save(directory / f"{name}.npy", value)
                    for _ in range(5):
                        started = time.perf_counter()
                        subprocess.run(
                            [binary, "infer", url, model, "--policy", policy,
                             *[a for name in inputs for a in ("--input", f"{name}={directory / (name + '.npy')}")],
                             "-o", directory / "out.npz"],
                            check=True,
                            capture_output=True,
                        )
                        cli.append(time.perf_counter() - started)
                        os.unlink(directory / "out.npz")
                    predict_rows.append((model, sdk, http_raw, cli))
                raw.close()
        finally:
            process.terminate()
            process.wait(10)

    print(f"server: {binary} (SIM), {args.iterations} predicts per client and model\n")
    print("| figure | median (ms) |")
    print("| --- | --- |")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} |")
    print()
    print("| model | SDK p50 (ms) | SDK p90 | raw HTTP p50 | raw HTTP p90 | SDK extra per predict | `adyton infer` process (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, sdk, http_raw, cli in predict_rows:
        s50, r50 = percentile(sdk, 0.5) * 1e3, percentile(http_raw, 0.5) * 1e3
        print(
            f"| {model} | {s50:.3f} | {percentile(sdk, 0.9) * 1e3:.3f} | {r50:.3f} | "
            f"{percentile(http_raw, 0.9) * 1e3:.3f} | {s50 - r50:+.3f} | {statistics.median(cli) * 1e3:.1f} |"
        )


if __name__ == "__main__":
    main()
