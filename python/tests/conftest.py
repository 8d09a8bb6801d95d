"""A SIM inference server for the SDK's tests, started once per session.

The server is `adyton server serve --tee sim` (the binary from ADYTON_BIN, else
target/debug/adyton), serving the test models of scripts/make_test_models.py; the policy pins
this build's SIM measurement, as `adyton attest measure` prints it.
"""

import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sdk-test-upload-token"


def adyton_bin():
    return Path(os.environ.get("ADYTON_BIN") or ROOT / "target" / "debug" / "adyton").resolve()


class Server:
    """The running server: its URL, files, and what it has logged."""

    def __init__(self, directory):
        self.dir = directory
        self.models = directory / "models"
        self.certificate = directory / "server.pem"
        self.policy = directory / "policy.toml"
        self.url = None
        self.log = []
        self._lock = threading.Lock()
        self.process = None

    def start(self):
        subprocess.run(
            [os.environ.get("PYTHON", sys.executable), ROOT / "scripts" / "make_test_models.py", self.models],
            check=True,
            capture_output=True,
        )
        (self.dir / "token").write_text(TOKEN + "\n")
        measure = subprocess.run(
            [adyton_bin(), "attest", "measure"], check=True, capture_output=True, text=True
        )
        self.measurement = measure.stdout.strip().splitlines()[-1].strip()
        self.policy.write_text(f'[sim]\nmeasurement = ["{self.measurement}"]\n')
        self.process = subprocess.Popen(
            [
                adyton_bin(), "server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim",
                "--sim-key", "sim.key", "--token-file", "token",
                "--certificate-out", str(self.certificate),
                "--model", "add=models/add.onnx",
                "--model", "multi=models/multi_io.onnx",
                "--workers", "4",
            ],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()

        def drain():
            # Reads stderr to the end, so that the server never blocks on a full pipe.
            for line in self.process.stderr:
                with self._lock:
                    self.log.append(line.rstrip("\n"))
                found = re.search(r"listening on (https://\S+)", line)
                if found and self.url is None:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.log))

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log_lines(self):
        with self._lock:
            return list(self.log)

    def metrics(self):
        """`GET /metrics`, over TLS pinned to the certificate the server wrote."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        # The certificate names no host; it is pinned, which is the stronger check.
        context.check_hostname = False
        with urllib.request.urlopen(self.url + "/metrics", context=context, timeout=30) as answer:
            return answer.read().decode()

    def inference_counts(self):
        """The sum of every `nv_inference_request_success` and `_failure` sample."""
        total = 0.0
        for line in self.metrics().splitlines():
            if re.match(r"nv_inference_request_(success|failure)\{", line):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not adyton_bin().exists():
        pytest.fail(f"{adyton_bin()} is missing: run `cargo build` (adyton and adyton-server) or set ADYTON_BIN")
    running = Server(tmp_path_factory.mktemp("server"))
    running.start()
    # Logging lines arrive on a thread; a short pause lets the start-up lines land first.
    time.sleep(0.1)
    yield running
    running.stop()
