#!/usr/bin/env python3
"""Measures the protected-model cold start: from `adyton server serve` to the model ready, broken
into its steps, and the server's peak resident memory against plain tract loading the same
plaintext model.

    scripts/bench_cold_start.py [--runs N] [--no-offline] [--bin-dir DIR] [SIZE_MB ...]
                                                     # default: 90 400, one run each

For each size: an ONNX model of that many MB of weights (scripts/make_big_model.py) is published
encrypted (envelope v2) to a local registry, its key to a local key broker under a SIM policy for
this build; a fresh `adyton server serve --tee sim --pull` pulls it. The server logs the time of
every step (info, evidence, key transfer, download, decryption, load); the script reads them, and
the server's peak resident memory (VmHWM) once the model is ready. The baseline is
`examples/load_plain.rs`: the plaintext read from disk and loaded by the same engine, which is what
plain tract does. Release builds; prints a markdown table. With `--runs N`, the server and the
baseline start N times each, in turn, and the run with the median start-to-ready time is shown.

A second table is the timeline of each shown run, from the server's start (the time each line
reached the script): the SIM attester ready (its banner: the executable hashed), the attested TLS
identity made, the pull started ("pulling model"), listening, and the model ready.

`--bin-dir DIR` takes `adyton`, `adyton-server` and `load_plain` from DIR instead of building them (to compare two
builds close together on a busy machine).

Then (unless `--no-offline`) the same model on an offline device (flow D, docs/offline.md): a
provisioning request, the key broker's offline transfer and the device's acceptance (which checks
the key against the whole blob), each timed, and a fresh `adyton server serve --state-dir` with no
registry: the time from its start to the model ready (the key unsealed, the blob decrypted in
memory, the model loaded) and its peak resident memory. A third table.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
from sim_server import stop  # noqa: E402

PASSWORD = "cold-start-bench-password"
TOKEN = "cold-start-bench-token"


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return result.stdout


class Process:
    """A server process; waits for `listening on URL` and keeps every stderr line."""

    def __init__(self, command, cwd, env):
        self.lines = []
        self.url = None
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        self.started = time.monotonic()
        listening = threading.Event()

        def read():
            for line in self.process.stderr:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                match = re.search(r"listening on (\S+)", line)
                if match and self.url is None:
                    self.url = match.group(1)
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        listening.wait(120)
        if self.url is None:
            self.stop()
            sys.exit("a server did not start:\n" + "\n".join(l for _, l in self.lines[-10:]))

    def find(self, pattern):
        for at, line in self.lines:
            if re.search(pattern, line):
                return at, line
        return None

    def wait_for(self, *patterns, timeout=600):
        """The first (time, line) of the log that matches one of `patterns`, polled until one
        does; None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pattern in patterns:
                found = self.find(pattern)
                if found is not None:
                    return found
            time.sleep(0.05)
        return None

    def peak_rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        stop(self.process)


def fields(line):
    """key=value pairs of a tracing log line (colour codes removed)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return dict(re.findall(r"(\w+)=([^\s]+)", plain))


def timed(command, **kwargs):
    started = time.monotonic()
    run(command, **kwargs)
    return (time.monotonic() - started) * 1000


def offline_device(adyton, d, env, kbs_url, model_id, model, plain):
    """Provisions `model_id`'s blob on a fresh device state and times a restart with no network."""
    state = d / f"device-{model_id}"
    blob = d / "registry" / "blobs" / model_id
    device = ["--state-dir", str(state), "--tee", "sim"]
    request = timed([adyton, "server", "provision-request", *device, "--model", "m", "--blob", str(blob),
                     "-o", f"{model_id}-request.json"], cwd=d, env=env)
    transfer = timed([adyton, "kbs", "transfer", "--offline", f"{model_id}-request.json", "-o",
                      f"{model_id}-response.json", "--url", kbs_url, "--token-file", "kbs-token"],
                     cwd=d, env=env)
    accept = timed([adyton, "server", "provision-accept", f"{model_id}-response.json", *device], cwd=d, env=env)
    no_network = {**env, **{v: "http://127.0.0.1:9" for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}}
    server = Process([adyton, "server", "serve", "--listen", "127.0.0.1:0", *device], d, no_network)
    try:
        done = server.wait_for("sealed model unsealed and loaded", "sealed model not loaded")
        if done is None or "not loaded" in done[1]:
            sys.exit(f"the sealed model did not load: {done}")
        return {
            "size": f"{model.stat().st_size / 1e6:.0f} MB",
            "request": request, "transfer": transfer, "accept": accept,
            "ready": (done[0] - server.started) * 1000,
            "server_peak": server.peak_rss_mib(),
            "plain_peak": plain["peak_rss_kib"] / 1024,
        }
    finally:
        server.stop()


def since_start(server, pattern):
    """Milliseconds from the server's start to the first log line matching `pattern`, or "-"."""
    found = server.find(pattern)
    return "-" if found is None else f"{(found[0] - server.started) * 1000:.0f}"


def pull_once(adyton, d, env, registry_url, model_id, model, plain):
    """Starts a server that pulls `model_id`, and reads its steps from the log."""
    server = Process([adyton, "server", "serve", "--listen", "127.0.0.1:0", "--tee", "sim",
                      "--registry", registry_url, "--pull", f"m={model_id}"], d, env)
    try:
        done = server.wait_for("model pulled and loaded", "model not loaded")
        if done is None or "not loaded" in done[1]:
            sys.exit(f"the pull failed: {done}")
        t = fields(done[1])
        return {
            "size": f"{model.stat().st_size / 1e6:.0f} MB",
            "info": t["info_ms"], "evidence": t["evidence_ms"], "transfer": t["key_transfer_ms"],
            "download": t["download_ms"], "decrypt": t["decrypt_ms"], "load": t["load_ms"],
            # Logged since the key pair overlaps the download; an older build has neither.
            "key_wait": t.get("key_wait_ms", "-"), "pull": t.get("total_ms", "-"),
            "ready": f"{(done[0] - server.started) * 1000:.0f}",
            "server_peak": server.peak_rss_mib(),
            "plain_peak": plain["peak_rss_kib"] / 1024,
            "plain_load": plain["read_ms"] + plain["load_ms"],
            "timeline": {
                "sim": since_start(server, r"WARNING: tee = sim"),
                "tls": since_start(server, r"attested TLS:"),
                "pull": since_start(server, r"pulling model"),
                "listening": since_start(server, r"listening on"),
            },
        }
    finally:
        server.stop()


def main():
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__.strip())
        return
    usage = f"usage: {sys.argv[0]} [--runs N] [--no-offline] [--bin-dir DIR] [SIZE_MB ...] (--help for more)"
    args = sys.argv[1:]
    runs, offline_too, bin_dir, sizes = 1, True, None, []
    try:
        while args:
            arg = args.pop(0)
            if arg == "--runs":
                runs = int(args.pop(0))
            elif arg == "--no-offline":
                offline_too = False
            elif arg == "--bin-dir":
                bin_dir = Path(args.pop(0)).resolve()
            else:
                sizes.append(float(arg))
    except (ValueError, IndexError):
        sys.exit(usage)
    if runs < 1:
        sys.exit(usage)
    sizes = sizes or [90.0, 400.0]
    if bin_dir is None:
        print("building release binaries...", file=sys.stderr, flush=True)
        run(["cargo", "build", "--release", "-q", "-p", "adyton", "-p", "adyton-server"], cwd=ROOT)
        run(["cargo", "build", "--release", "-q", "-p", "adyton-server", "--example", "load_plain"], cwd=ROOT)
        adyton = ROOT / "target/release/adyton"
        load_plain = ROOT / "target/release/examples/load_plain"
    else:
        adyton, load_plain = bin_dir / "adyton", bin_dir / "load_plain"
    python = os.environ.get("PYTHON", str(ROOT / ".venv/bin/python"))

    work = tempfile.TemporaryDirectory(prefix="adyton-cold-start-")
    d = Path(work.name)
    env = {**os.environ, "ADYTON_SIM_KEY": str(d / "sim.key"), "ADYTON_LOG": "info"}
    (d / "token").write_text(TOKEN + "\n")
    kbs = Process([adyton, "kbs", "serve", "--listen", "127.0.0.1:0", "--data-dir", "kbs"], d,
                  {**env, "ADYTON_KBS_ADMIN_PASSWORD": PASSWORD})
    registry = Process([adyton, "registry", "serve", "--listen", "127.0.0.1:0", "--data-dir", "registry",
                        "--token-file", "token"], d, env)
    rows = []
    offline = []
    try:
        run([adyton, "kbs", "login", "--url", kbs.url, "--token-file", "kbs-token"], cwd=d,
            env={**env, "ADYTON_KBS_ADMIN_PASSWORD": PASSWORD})
        measurement = run([adyton, "attest", "measure"], cwd=d, env=env).strip().splitlines()[-1]
        (d / "policy.toml").write_text(f'[sim]\nmeasurement = ["{measurement}"]\n')
        policy = run([adyton, "kbs", "policy", "create", "--url", kbs.url, "--token-file", "kbs-token",
                      "--file", "policy.toml"], cwd=d, env=env).strip().splitlines()[-1]
        for size in sizes:
            model = d / f"big{size:g}.onnx"
            run([python, ROOT / "scripts/make_big_model.py", str(size), str(model)])
            model_id = f"big{size:g}"
            run([adyton, "model", "publish", str(model), "--registry", registry.url, "--registry-token-file",
                 "token", "--kbs", kbs.url, "--kbs-token-file", "kbs-token", "--policy", policy,
                 "--id", model_id], cwd=d, env=env)
            measured = []
            for _ in range(runs):
                plain = json.loads(run([load_plain, str(model)]))
                measured.append(pull_once(adyton, d, env, registry.url, model_id, model, plain))
            measured.sort(key=lambda r: float(r["ready"]))
            row = measured[len(measured) // 2]
            if runs > 1:
                row["ready_range"] = f"{measured[0]['ready']}-{measured[-1]['ready']}"
            rows.append(row)
            if offline_too:
                offline.append(offline_device(adyton, d, env, kbs.url, model_id, model, plain))
            model.unlink()
    finally:
        kbs.stop()
        registry.stop()

    print()
    print("| model | info ms | evidence ms | download ms | key wait ms | key transfer ms | decrypt ms | load ms "
          "| pull ms | start to ready ms | server peak RSS MiB | plain tract peak RSS MiB | difference MiB "
          "| plain read+load ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size']} | {r['info']} | {r['evidence']} | {r['download']} | {r['key_wait']} | {r['transfer']} "
              f"| {r['decrypt']} | {r['load']} | {r['pull']} | {r['ready']} | {r['server_peak']:.0f} "
              f"| {r['plain_peak']:.0f} | {r['server_peak'] - r['plain_peak']:+.0f} | {r['plain_load']} "
              f"| {float(r['ready']) / max(r['plain_load'], 1):.2f} |")
    if runs > 1:
        print()
        print(f"Median of {runs} runs; start to ready ranged " +
              ", ".join(f"{r['size']}: {r['ready_range']} ms" for r in rows) + ".")
    print()
    print("| model | SIM attester ready ms | TLS identity made ms | pull started ms | listening ms | ready ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        t = r["timeline"]
        print(f"| {r['size']} | {t['sim']} | {t['tls']} | {t['pull']} | {t['listening']} | {r['ready']} |")
    if not offline:
        return
    print()
    print("| model (offline device) | request ms | offline transfer ms | accept ms | start to ready ms "
          "| server peak RSS MiB | plain tract peak RSS MiB | difference MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in offline:
        print(f"| {r['size']} | {r['request']:.0f} | {r['transfer']:.0f} | {r['accept']:.0f} | {r['ready']:.0f} "
              f"| {r['server_peak']:.0f} | {r['plain_peak']:.0f} | {r['server_peak'] - r['plain_peak']:+.0f} |")


if __name__ == "__main__":
    main()
