#!/usr/bin/env python3
"""Floods a fresh key broker with failed logins and prints what it cost (issue: unauthenticated
memory exhaustion).

For each concurrency (64 and 256 by default), a fresh `adyton kbs serve` on loopback gets, for
DURATION seconds, that many clients posting `/kbs/v1/token` with a different username and password
each time, from 127.0.0.1 (or, with --spread, each request from another address of 127.1.0.0/16,
as a distributed flood would). Meanwhile an operator logs in with the right password from another
address once a second: 127.0.0.2, from which the operator logged in once before the flood (as
from the machine they work at), and 127.0.0.4, never seen before; and a client asks for a transfer
nonce twice a second. The
broker's resident memory is sampled every 50 ms (peak and the kernel's high-water mark VmHWM).

    scripts/login_flood.py [--binary target/release/adyton] [--duration 20] [--clients 64,256] [--spread]

Standard library only. Linux only (/proc).
"""

import argparse
import http.client
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

PASSWORD = "flood-test operator password"


def start_kbs(binary, data_dir):
    env = dict(os.environ, ADYTON_KBS_ADMIN_PASSWORD=PASSWORD)
    proc = subprocess.Popen(
        [binary, "kbs", "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    for line in proc.stderr:
        match = re.search(r"listening on http://(\S+)", line)
        if match:
            host, port = match.group(1).rsplit(":", 1)
            # Keep reading stderr so that the broker never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, host, int(port)
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit("the key broker did not start")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def post(conn, path, body):
    started = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


def run(binary, clients, duration, spread):
    with tempfile.TemporaryDirectory() as data_dir:
        proc, host, port = start_kbs(binary, data_dir)
        try:
            return measure(proc, host, port, clients, duration, spread)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def measure(proc, host, port, clients, duration, spread):
    idle_kib = rss_kib(proc.pid)
    stop = threading.Event()
    flood = Counter()
    flood_lock = threading.Lock()
    peak = [idle_kib]
    operator = []
    newcomer = []
    nonces = []

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(proc.pid))
            time.sleep(0.05)

    def source():
        if spread:
            return (f"127.1.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}", 0)
        return ("127.0.0.1", 0)

    def attacker():
        conn = http.client.HTTPConnection(host, port, timeout=30, source_address=source())
        while not stop.is_set():
            if spread:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30, source_address=source())
            body = {"username": secrets.token_hex(8), "password": secrets.token_hex(8)}
            try:
                status, _ = post(conn, "/kbs/v1/token", body)
            except (OSError, http.client.HTTPException):
                status = "error"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30, source_address=source())
            with flood_lock:
                flood[status] += 1

    def login_once(source, results):
        conn = http.client.HTTPConnection(host, port, timeout=30, source_address=(source, 0))
        try:
            results.append(post(conn, "/kbs/v1/token", {"username": "admin", "password": PASSWORD}))
        except (OSError, http.client.HTTPException):
            results.append(("error", 0.0))
        conn.close()

    def operator_logins():
        while not stop.is_set():
            login_once("127.0.0.2", operator)
            login_once("127.0.0.4", newcomer)
            stop.wait(1.0)

    before = []
    login_once("127.0.0.2", before)
    if before[0][0] != 200:
        sys.exit(f"the operator's login before the flood failed: {before[0][0]}")

    def nonce_requests():
        conn = http.client.HTTPConnection(host, port, timeout=30, source_address=("127.0.0.3", 0))
        while not stop.is_set():
            try:
                nonces.append(post(conn, "/kbs/v1/keys/any/transfer", {}))
            except (OSError, http.client.HTTPException):
                nonces.append(("error", 0.0))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30, source_address=("127.0.0.3", 0))
            stop.wait(0.5)

    threads = [threading.Thread(target=sampler)]
    threads += [threading.Thread(target=attacker) for _ in range(clients)]
    threads += [threading.Thread(target=operator_logins), threading.Thread(target=nonce_requests)]
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(2)
    return {
        "clients": clients,
        "idle_mib": idle_kib / 1024,
        "peak_mib": peak[0] / 1024,
        "hwm_mib": rss_kib(proc.pid, "VmHWM") / 1024,
        "after_mib": rss_kib(proc.pid) / 1024,
        "flood": dict(flood),
        "operator_ok": sum(1 for s, _ in operator if s == 200),
        "operator_total": len(operator),
        "operator_p50_ms": 1000 * statistics.median([t for s, t in operator if s == 200] or [0]),
        "operator_statuses": dict(Counter(s for s, _ in operator)),
        "newcomer_ok": sum(1 for s, _ in newcomer if s == 200),
        "newcomer_total": len(newcomer),
        "newcomer_statuses": dict(Counter(s for s, _ in newcomer)),
        "nonce_p50_ms": 1000 * statistics.median([t for s, t in nonces if s == 200] or [0]),
        "nonce_max_ms": 1000 * max([t for s, t in nonces if s == 200] or [0]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/adyton")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--clients", default="64,256")
    parser.add_argument("--spread", action="store_true", help="each failed login from another address")
    args = parser.parse_args()
    results = [run(args.binary, int(n), args.duration, args.spread) for n in args.clients.split(",")]
    print()
    origin = "127.1.0.0/16, a new address each" if args.spread else "127.0.0.1"
    print(f"login flood, {args.duration:.0f} s each, failed logins from {origin}")
    print("| clients | RSS idle | RSS peak (sampled) | VmHWM | RSS after | flood answers | operator logins OK | operator p50 | new address's logins | nonce p50 / max |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |")
    failed = False
    for r in results:
        flood = ", ".join(f"{k}: {v}" for k, v in sorted(r["flood"].items(), key=str))
        print(
            f"| {r['clients']} | {r['idle_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | {r['hwm_mib']:.0f} MiB "
            f"| {r['after_mib']:.0f} MiB | {flood} | {r['operator_ok']}/{r['operator_total']} "
            f"| {r['operator_p50_ms']:.0f} ms "
            f"| {r['newcomer_ok']}/{r['newcomer_total']} OK ({', '.join(f'{k}: {v}' for k, v in sorted(r['newcomer_statuses'].items(), key=str))}) "
            f"| {r['nonce_p50_ms']:.1f} / {r['nonce_max_ms']:.0f} ms |"
        )
        if r["hwm_mib"] >= 200 or r["operator_ok"] < r["operator_total"]:
            failed = True
    if failed:
        print("FAILED: peak memory over 200 MiB, or an operator's login failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
