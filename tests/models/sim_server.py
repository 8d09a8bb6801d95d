"""An Adyton server with one model, as tritonclient users reach it: `adyton server serve --tee sim`
started as a subprocess, and tritonclient over HTTPS pinned to the certificate the server wrote
(its attested certificate: the client trusts exactly it). Shared by tests/models/compare.py and
scripts/bench_serving_triton.py, so that what is compared is what is timed. `stop` needs the
standard library only (numpy, onnxruntime and tritonclient are imported where they are used), so
that scripts/bench_cold_start.py, which runs without them, stops its servers alike.
"""

import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

LIBRARY_ENV = "ADYTON_ONNXRUNTIME_LIBRARY"
# A debug build of tract runs the larger models slowly.
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600


def onnxruntime_library():
    """$ADYTON_ONNXRUNTIME_LIBRARY, else the shared library of the imported onnxruntime package."""
    if os.environ.get(LIBRARY_ENV):
        return os.environ[LIBRARY_ENV]
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    found = sorted(p for p in capi.glob("libonnxruntime.so*") if p.is_file() and not p.is_symlink())
    if not found:
        sys.exit(f"{Path(sys.argv[0]).name}: no libonnxruntime.so in {capi}; set {LIBRARY_ENV}")
    return str(found[-1].resolve())


def stop(process):
    """Terminates `process` (a subprocess.Popen) if it still runs, and kills it if it has not
    exited 10 s later; returns once it has."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """`adyton server serve --tee sim` with model `name` from `path`, in a temporary directory,
    with `--engine ENGINE` (and the onnxruntime library of `onnxruntime_library`) unless `engine`
    is None. Raises RuntimeError with the server's reason when it does not start."""

    def __init__(self, binary, engine, name, path, prefix="adyton-"):
        self.dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.cert = os.path.join(self.dir.name, "server.pem")
        self.stderr = []
        self.url = None
        command = [
            str(binary), "server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim",
            "--sim-key", os.path.join(self.dir.name, "sim.key"),
            "--model", f"{name}={path}", "--certificate-out", self.cert, "--workers", "2",
        ]
        env = {**os.environ, "ADYTON_LOG": "warn"}
        if engine is not None:
            command += ["--engine", engine]
            env[LIBRARY_ENV] = onnxruntime_library()
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
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
        stop(self.process)
        self.dir.cleanup()


def triton_client(url, cert):
    """tritonclient's HTTP client for the server at `url` (HOST:PORT), trusting only `cert`."""
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        url=url, ssl=True, ssl_options={"ca_certs": cert},
        connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S,
    )


def datatype_of(array):
    import numpy as np

    return {
        np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
        np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
    }[array.dtype]


def infer(client, name, feeds, output_names):
    """One inference as a user calls it: InferInput built from each numpy array of `feeds`, binary
    tensors both ways; returns {output: array} for `output_names`."""
    import tritonclient.http as httpclient

    inputs = []
    for input_name, value in feeds.items():
        tensor = httpclient.InferInput(input_name, list(value.shape), datatype_of(value))
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in output_names]
    result = client.infer(name, inputs, outputs=outputs)
    return {n: result.as_numpy(n) for n in output_names}
