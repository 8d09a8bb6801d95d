#!/usr/bin/env python3
"""Disk full: the key broker and the registry on small tmpfs mounts, filled, then freed (issue 13).

    sudo .venv/bin/python scripts/check_disk_full.py [--adyton target/release/adyton]

Mounts two small tmpfs file systems in a temporary directory (root is needed; without it the script
says so and exits 2) and starts `adyton kbs serve` with its data directory on the first and
`adyton registry serve` with its data directory on the second. Then:

1. KBS: logs in, creates a SIM policy pinned to `adyton attest measure`, imports one key, and
   creates keys in a loop (with transfers of the imported key and logins among them), recording
   every acknowledged (201) key id, until the disk is full: after --fill-seconds of key creation, a
   filler file (dd) takes all but a little of the space, keys fill that, and a second filler takes
   the rest. On the full disk it goes on for --full-rounds rounds (create, transfer, login, list,
   and transfers that are denied or ask for an unknown key), counting the answers by status.
2. Registry: uploads 1 MiB blobs, a filler file takes all but 1.5 MiB, blobs fill that until one
   is refused, a second filler takes the rest, and it goes on with small uploads and model info
   writes, counting the answers by status.
3. Frees the space (removes the fillers) and, without restarting either service, checks that
   creating and listing keys, transfers (the CNAP flow of tests/reference/cnap_kbs_client.py) and
   uploads work again.
4. Lists the keys: every acknowledged key id must be there; then stops the KBS (SIGTERM), starts it
   again on the same data directory and lists them again. Every acknowledged blob must be served
   whole.
5. Parses every line of the audit log (audit.jsonl and rotated files) and checks that every answered
   transfer, login and key creation has its record (with --audit-max-file-bytes, where rotation
   deletes the oldest records, only the records' parsing is checked).
6. Prints a table of the figures and exits 1 if an invariant fails (0 otherwise). The mounts and the
   temporary directory are removed whatever happens.

Invariants: no transfer answered 200 without its audit record (so none while the audit log cannot
be written), no 500 on the full disk (a full disk is 507, a failed audit write 503), recovery
without restart, 0 acknowledged keys or blobs lost, 0 unparsable audit lines.
"""

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import cnap_kbs_client as cnap  # noqa: E402  (the CNAP-style client, reused, not copied)

PASSWORD = "disk-full-check-password"
REGISTRY_TOKEN = "disk-full-check-registry-token"
MIB = 1 << 20
# Space the first filler leaves free, for the KBS's own writes to run into the full disk.
KBS_MARGIN = 192 << 10
# The registry's: blobs fill its disk down to REGISTRY_KEEP free, then a filler down to
# REGISTRY_MARGIN free.
REGISTRY_KEEP = 6 * MIB
REGISTRY_MARGIN = 3 * MIB // 2


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adyton", default=os.path.join(ROOT, "target", "release", "adyton"),
                   help="the adyton binary (copied, so that a rebuild cannot change it mid-run)")
    p.add_argument("--kbs-size", type=int, default=24, help="the KBS's tmpfs, in MiB")
    p.add_argument("--registry-size", type=int, default=16, help="the registry's tmpfs, in MiB")
    p.add_argument("--fill-seconds", type=float, default=15.0,
                   help="seconds of key creation before the filler file takes the rest")
    p.add_argument("--full-rounds", type=int, default=150,
                   help="rounds of requests on each full disk")
    p.add_argument("--audit-max-file-bytes", type=int, metavar="BYTES",
                   help="start the KBS with a configuration file whose [audit] rotates the log at "
                        "this size (with --audit-max-files files), so that rotation meets the full "
                        "disk too [default: the local-trial mode, flags only, no rotation on so "
                        "small a disk]")
    p.add_argument("--audit-max-files", type=int, default=4,
                   help="files kept with --audit-max-file-bytes")
    p.add_argument("--keep", metavar="DIR",
                   help="copy the services' stderr and the audit logs here before cleaning up")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# HTTP with exact status codes (cnap.request raises on errors but hides 200 versus 201)


def http(method, url, body=None, headers=None, raw=None, timeout=60):
    """Returns (status, decoded JSON or text); status 0 for a connection failure."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if raw is not None:
        req.add_header("Content-Type", "application/octet-stream")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError) as e:
        return 0, f"connection failure: {e}"
    text = text.decode(errors="replace")
    try:
        return status, json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return status, text.strip()


def error_of(answer):
    if isinstance(answer, dict) and "error" in answer:
        return str(answer["error"])
    return str(answer)[:200]


class Tally:
    """Answers counted by (phase, request, status), with the first message of each error."""

    def __init__(self):
        self.counts = collections.Counter()
        self.messages = {}

    def add(self, phase, what, status, answer):
        self.counts[(phase, what, status)] += 1
        if status >= 300 or status == 0:
            self.messages.setdefault((what, status), error_of(answer))

    def count(self, phase=None, what=None, status=None):
        return sum(n for (p, w, s), n in self.counts.items()
                   if (phase is None or p == phase) and (what is None or w == what)
                   and (status is None or s == status))


# ---------------------------------------------------------------------------------------------
# Services


class Service:
    """A service started with `listening on http://ADDR` awaited on stderr, stderr kept in a file."""

    def __init__(self, name, argv, env, log_path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc = None
        self.base = None
        self.exit_code = None

    def start(self):
        log = open(self.log_path, "a", encoding="utf-8")
        log.write(f"--- start: {' '.join(self.argv)}\n")
        log.flush()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                m = re.search(r"listening on (https?://\S+)", line)
                if m and not ready.is_set():
                    self.base = m.group(1).rstrip("/")
                    ready.set()
            log.close()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or self.base is None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; its stderr:\n{self.stderr_tail()}")

    def stop(self):
        """SIGTERM, then SIGKILL after 30 s; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
        return self.exit_code

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines=15):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def mount_tmpfs(path, mib):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", path],
                   check=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def dd(path, count_4k=None):
    """Writes a filler file with dd: `count_4k` blocks of 4 KiB, or until the disk is full."""
    argv = ["dd", "if=/dev/zero", f"of={path}", "bs=4096", "status=none"]
    if count_4k is not None:
        argv.append(f"count={count_4k}")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stderr.strip()


# ---------------------------------------------------------------------------------------------
# KBS requests


class Kbs:
    def __init__(self, service, tally, adyton):
        self.service, self.tally, self.adyton = service, tally, adyton
        self.token = None
        self.acked_keys = []
        self.transfers_200 = collections.Counter()  # key id -> transfers answered 200
        self.logins_200 = 0
        # One TEE key pair and its SIM evidence for every fast transfer: without a nonce the
        # evidence binds only SHA-512(user_data), so it can be presented again (CNAP style).
        self.private = rsa.generate_private_key(public_exponent=cnap.PUBLIC_EXPONENT,
                                                key_size=cnap.RSA_BITS)
        self.user_data = cnap.user_data_of(self.private.public_key(), False)
        self.evidence = cnap.sim_evidence(adyton, hashlib.sha512(self.user_data).digest())

    @property
    def base(self):
        return self.service.base

    def auth(self):
        return cnap.auth(self.token)

    def login(self, phase):
        status, answer = http("POST", f"{self.base}/kbs/v1/token",
                              {"username": "admin", "password": PASSWORD})
        self.tally.add(phase, "login", status, answer)
        if status == 200:
            self.logins_200 += 1
            self.token = answer["token"]
        return status

    def create_key(self, phase, policy_id):
        body = {"key_information": {"algorithm": "AES", "key_length": 256},
                "transfer_policy_id": policy_id}
        status, answer = http("POST", f"{self.base}/kbs/v1/keys", body, self.auth())
        self.tally.add(phase, "create key", status, answer)
        if status == 201:
            self.acked_keys.append(answer["id"])
        return status, answer

    def transfer(self, phase, key_id, expect_key=None, what="transfer"):
        body = {"quote": base64.b64encode(self.evidence).decode(),
                "user_data": base64.b64encode(self.user_data).decode()}
        status, answer = http("POST", f"{self.base}/kbs/v1/keys/{key_id}/transfer", body,
                              {"Attestation-Type": "SIM"})
        self.tally.add(phase, what, status, answer)
        if status == 200:
            self.transfers_200[key_id] += 1
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                label=None)
            swk = self.private.decrypt(base64.b64decode(answer["wrapped_swk"]), oaep)
            key = cnap.open_v1(swk, base64.b64decode(answer["wrapped_key"]))
            if expect_key is not None and key != expect_key:
                raise RuntimeError(f"transfer of {key_id} released another key")
        return status

    def list_keys(self, phase):
        status, answer = http("GET", f"{self.base}/kbs/v1/keys", headers=self.auth())
        self.tally.add(phase, "list keys", status, answer)
        ids = {k["id"] for k in answer} if status == 200 else None
        return status, ids


def retry(fn, attempts=5, pause=1.0):
    """Calls fn() until it returns True; returns (ok, statuses seen)."""
    seen = []
    for i in range(attempts):
        ok, status = fn()
        seen.append(status)
        if ok:
            return True, seen
        if i + 1 < attempts:
            time.sleep(pause)
    return False, seen


# ---------------------------------------------------------------------------------------------


def run(args, work, results, checks):
    adyton = os.path.join(work, "adyton")
    shutil.copy2(args.adyton, adyton)
    kbs_mnt, reg_mnt = os.path.join(work, "kbs-fs"), os.path.join(work, "registry-fs")
    kbs_data, reg_data = os.path.join(kbs_mnt, "data"), os.path.join(reg_mnt, "data")
    for mnt, mib in ((kbs_mnt, args.kbs_size), (reg_mnt, args.registry_size)):
        mount_tmpfs(mnt, mib)
        results["mounts"].append(mnt)
    token_file = os.path.join(work, "registry-token")
    with open(token_file, "w", encoding="utf-8") as f:
        f.write(REGISTRY_TOKEN)
    os.chmod(token_file, 0o600)

    env = dict(os.environ, ADYTON_KBS_ADMIN_PASSWORD=PASSWORD, NO_COLOR="1")
    env.pop("ADYTON_KBS_MASTER_KEY", None)
    kbs_argv = [adyton, "kbs", "serve", "--listen", "127.0.0.1:0", "--data-dir", kbs_data]
    if args.audit_max_file_bytes:
        # With --config the operators come from [[admin]] only, so the password is hashed.
        hashed = subprocess.run([adyton, "kbs", "hash-password"], env=env, capture_output=True,
                                text=True, check=True).stdout.strip()
        config = os.path.join(work, "kbs.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f'[[admin]]\nusername = "admin"\npassword_hash = "{hashed}"\n\n'
                    f"[audit]\nmax_file_bytes = {args.audit_max_file_bytes}\n"
                    f"max_files = {args.audit_max_files}\n")
        kbs_argv += ["--config", config]
    kbs_svc = Service("KBS", kbs_argv, env, os.path.join(work, "kbs.stderr"))
    reg_svc = Service("registry", [adyton, "registry", "serve", "--listen", "127.0.0.1:0",
                                   "--data-dir", reg_data, "--token-file", token_file],
                      env, os.path.join(work, "registry.stderr"))
    results["services"] = [kbs_svc, reg_svc]
    kbs_svc.start()
    reg_svc.start()

    measure = subprocess.run([adyton, "attest", "measure"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    tally = results["tally"]
    kbs = Kbs(kbs_svc, tally, adyton)
    results["kbs"] = kbs

    # ---- 1. KBS: fill the disk -----------------------------------------------------------
    if kbs.login("setup") != 200:
        raise RuntimeError("the first login failed")
    policy = cnap.create_sim_policy(kbs.base, kbs.token, measure)
    key0 = os.urandom(32)
    key0_id = cnap.import_key(kbs.base, kbs.token, policy, key0)
    kbs.acked_keys.append(key0_id)
    # A key whose policy no SIM evidence of this build meets: its transfers are denied (403), and
    # audited through the rate limit on records anyone can cause.
    other_policy = cnap.create_sim_policy(kbs.base, kbs.token, "00" * 48)
    denied_id = cnap.import_key(kbs.base, kbs.token, other_policy, os.urandom(32))
    kbs.acked_keys.append(denied_id)

    def fill_round(phase, i):
        status, _ = kbs.create_key(phase, policy)
        if i % 10 == 0:
            kbs.transfer(phase, key0_id, key0)
        if i % 50 == 0:
            kbs.login(phase)
        return status

    t0, i = time.monotonic(), 0
    status = 201
    while status == 201 and time.monotonic() - t0 < args.fill_seconds:
        i += 1
        status = fill_round("filling", i)
    results["keys by creation alone"] = len(kbs.acked_keys)
    results["key creation rate"] = len(kbs.acked_keys) / (time.monotonic() - t0)
    results["kbs free before filler"] = free_bytes(kbs_mnt)
    filler = os.path.join(kbs_mnt, "filler")
    if status == 201:
        blocks = max(0, (free_bytes(kbs_mnt) - KBS_MARGIN) // 4096)
        dd(filler, blocks)
        t1 = time.monotonic()
        while status == 201 and time.monotonic() - t1 < 300:
            i += 1
            status = fill_round("filling", i)
    results["first refusal while filling"] = status
    # Whatever space is left (partial pages, space freed by a rolled-back write) goes too.
    rc, err = dd(filler + "2")
    results["kbs filler2 dd"] = f"rc {rc}: {err or 'no error'}"
    results["kbs free when full"] = free_bytes(kbs_mnt)
    results["keys acked before full"] = len(kbs.acked_keys)

    transfers_200_before = sum(kbs.transfers_200.values())
    for i in range(args.full_rounds):
        kbs.create_key("kbs full", policy)
        kbs.transfer("kbs full", key0_id, key0)
        if i % 5 == 0:
            kbs.login("kbs full")
            kbs.transfer("kbs full", denied_id, what="denied xfer")
            kbs.transfer("kbs full", "no-such-key", what="unknown xfer")
        if i % 10 == 0:
            kbs.list_keys("kbs full")
    results["transfers 200 while full"] = sum(kbs.transfers_200.values()) - transfers_200_before
    results["kbs alive while full"] = kbs_svc.alive()

    # ---- 2. Registry: fill the disk ------------------------------------------------------
    acked_blobs = {}
    rauth = {"Authorization": f"Bearer {REGISTRY_TOKEN}"}

    def upload(phase, size):
        blob_id = f"blob-{len(acked_blobs)}-{os.urandom(4).hex()}"
        data = os.urandom(size)
        status, answer = http("PUT", f"{reg_svc.base}/blobs/{blob_id}", raw=data, headers=rauth)
        tally.add(phase, "upload", status, answer)
        if status == 201:
            acked_blobs[blob_id] = hashlib.sha256(data).hexdigest()
        return status

    # Blobs take the disk down to REGISTRY_KEEP free, a filler all but REGISTRY_MARGIN of that (so
    # that freeing it leaves room for a 1 MiB upload), blobs the rest, and a second filler the
    # partial pages left.
    status = 201
    while status == 201 and free_bytes(reg_mnt) > REGISTRY_KEEP:
        status = upload("filling", MIB)
    reg_filler = os.path.join(reg_mnt, "filler")
    if status == 201:
        dd(reg_filler, max(0, (free_bytes(reg_mnt) - REGISTRY_MARGIN) // 4096))
        while status == 201 and len(acked_blobs) < 4 * args.registry_size:
            status = upload("filling", MIB)
    results["registry first refusal"] = status
    rc, err = dd(reg_filler + "2")
    results["registry filler dd"] = f"rc {rc}: {err or 'no error'}"
    results["registry free when full"] = free_bytes(reg_mnt)
    for i in range(args.full_rounds):
        upload("registry full", 4096 if i % 2 else 64 << 10)
        if i % 5 == 0 and acked_blobs:
            mid = next(iter(acked_blobs))
            status, answer = http("PUT", f"{reg_svc.base}/models/{mid}", {"name": "m"},
                                  headers=rauth)
            tally.add("registry full", "put info", status, answer)
    results["registry alive while full"] = reg_svc.alive()

    # ---- 3. Free the space; no restart ---------------------------------------------------
    for path in (filler, filler + "2", reg_filler, reg_filler + "2"):
        if os.path.exists(path):
            os.remove(path)
    results["kbs free after freeing"] = free_bytes(kbs_mnt)
    results["registry free after freeing"] = free_bytes(reg_mnt)

    def kbs_login():
        s = kbs.login("recovery")
        return s == 200, s

    def kbs_create():
        s, _ = kbs.create_key("recovery", policy)
        return s == 201, s

    def kbs_list():
        s, ids = kbs.list_keys("recovery")
        return s == 200, s

    def kbs_transfer():
        s = kbs.transfer("recovery", key0_id, key0)
        return s == 200, s

    def kbs_cnap_flow():
        # The whole CNAP flow of the reference client: import a key, transfer it (fresh TEE key
        # pair and evidence), and get the same key back.
        try:
            key = os.urandom(32)
            key_id = cnap.import_key(kbs.base, kbs.token, policy, key)
            kbs.acked_keys.append(key_id)
            tally.add("recovery", "create key", 201, None)
            got = cnap.transfer(kbs.base, key_id, adyton)
            tally.add("recovery", "transfer", 200, None)
            kbs.transfers_200[key_id] += 1
            return got == key, 200 if got == key else "wrong key"
        except cnap.HttpError as e:
            tally.add("recovery", "cnap flow", e.status, str(e))
            return False, e.status

    def reg_upload():
        s = upload("recovery", 64 << 10)
        return s == 201, s

    def reg_upload_big():
        s = upload("recovery", MIB)
        return s == 201, s

    recovery = {}
    for name, fn in (("KBS login", kbs_login), ("KBS create key", kbs_create),
                     ("KBS list keys", kbs_list), ("KBS transfer", kbs_transfer),
                     ("KBS CNAP import+transfer", kbs_cnap_flow),
                     ("registry upload 64 KiB", reg_upload),
                     ("registry upload 1 MiB", reg_upload_big)):
        recovery[name] = retry(fn)
    results["recovery"] = recovery
    results["services restarted before recovery"] = not (kbs_svc.alive() and reg_svc.alive())

    # ---- 4. Acknowledged keys: present now, and after a restart --------------------------
    def lost_keys(phase):
        """(acknowledged keys missing, listed keys never acknowledged), or (None, None)."""
        listed = {}

        def attempt():
            status, ids = kbs.list_keys(phase)
            listed["ids"] = ids
            return status == 200, status

        ok, _ = retry(attempt)
        if not ok:
            return None, None
        acked = set(kbs.acked_keys)
        return len(acked - listed["ids"]), len(listed["ids"] - acked)

    results["keys acked"] = len(set(kbs.acked_keys))
    results["keys lost, no restart"], results["keys present unacked, no restart"] = \
        lost_keys("check")
    results["kbs exit on SIGTERM"] = kbs_svc.stop()
    kbs_svc.start()
    kbs.login("after restart")
    results["keys lost, after restart"], results["keys present unacked, after restart"] = \
        lost_keys("after restart")
    ok, _ = retry(kbs_transfer)
    results["transfer after restart"] = ok

    lost_blobs = 0
    for blob_id, digest in acked_blobs.items():
        try:
            with urllib.request.urlopen(f"{reg_svc.base}/blobs/{blob_id}", timeout=60) as resp:
                if hashlib.sha256(resp.read()).hexdigest() != digest:
                    lost_blobs += 1
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            lost_blobs += 1
    results["blobs acked"] = len(acked_blobs)
    results["blobs lost or changed"] = lost_blobs
    tmp_left = [n for _, _, files in os.walk(reg_data) for n in files if n.startswith(".tmp-")]
    results["registry .tmp- files left"] = len(tmp_left)

    # ---- 5. The audit log ----------------------------------------------------------------
    kbs_svc.stop()
    audit = audit_figures(kbs_data)
    results["audit"] = audit
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        for name in os.listdir(kbs_data):
            if name.startswith("audit.jsonl"):
                shutil.copy2(os.path.join(kbs_data, name), args.keep)

    # ---- Invariants ----------------------------------------------------------------------
    # Rotation deletes the oldest records once max_files are kept: then records may be missing
    # for a good reason, and only their parsing is checked.
    complete = not args.audit_max_file_bytes or len(audit["files"]) < args.audit_max_files
    results["audit complete (no file deleted)"] = complete
    unaudited_creates = len(set(kbs.acked_keys) - audit["create_key allowed targets"])
    unaudited_transfers = sum(max(0, n - audit["transfers allowed"].get(k, 0))
                              for k, n in kbs.transfers_200.items())
    unaudited_logins = max(0, kbs.logins_200 - audit["logins allowed"])
    results["acked creates without audit record"] = unaudited_creates if complete else "n/a"
    results["200 transfers without audit record"] = unaudited_transfers if complete else "n/a"
    results["200 logins without audit record"] = unaudited_logins if complete else "n/a"
    if complete:
        checks.extend([
            ("no transfer answered 200 without its audit record", unaudited_transfers == 0),
            ("no login answered 200 without its audit record", unaudited_logins == 0),
            ("no key acknowledged without its audit record", unaudited_creates == 0),
        ])

    full_kbs_500 = tally.count("kbs full", status=500)
    full_reg_500 = tally.count("registry full", status=500)
    checks.extend([
        ("KBS full disk: some requests refused 503 or 507",
         tally.count("kbs full", status=503) + tally.count("kbs full", status=507) > 0),
        ("KBS full disk: key creation answered 507", tally.count("kbs full", "create key", 507) > 0),
        ("KBS full disk: no 500", full_kbs_500 == 0),
        ("registry full disk: uploads answered 507",
         tally.count("registry full", "upload", 507) > 0),
        ("registry full disk: no 500", full_reg_500 == 0),
        ("both services alive through the full disk",
         results["kbs alive while full"] and results["registry alive while full"]),
    ])
    for name, (ok, _) in recovery.items():
        checks.append((f"recovered without restart: {name}", ok))
    checks.extend([
        ("0 acknowledged keys lost (no restart)", results["keys lost, no restart"] == 0),
        ("0 acknowledged keys lost (after restart)", results["keys lost, after restart"] == 0),
        ("KBS stops on SIGTERM with status 0", results["kbs exit on SIGTERM"] == 0),
        ("transfer works after restart", results["transfer after restart"]),
        ("0 acknowledged blobs lost", lost_blobs == 0),
        ("0 unparsable audit lines", audit["unparsable lines"] == 0),
        ("audit files end with a newline", audit["files not ending in newline"] == 0),
    ])


def audit_figures(data_dir):
    names = sorted(n for n in os.listdir(data_dir) if n.startswith("audit.jsonl"))
    fig = {"files": names, "bytes": 0, "lines": 0, "unparsable lines": 0,
           "files not ending in newline": 0, "examples": [],
           "transfers allowed": collections.Counter(), "transfer records": 0,
           "logins allowed": 0, "admin records": 0, "other records": 0,
           "create_key allowed targets": set()}
    for name in names:
        with open(os.path.join(data_dir, name), "rb") as f:
            raw = f.read()
        fig["bytes"] += len(raw)
        if raw and not raw.endswith(b"\n"):
            fig["files not ending in newline"] += 1
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line:
                continue
            fig["lines"] += 1
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                fig["unparsable lines"] += 1
                if len(fig["examples"]) < 3:
                    fig["examples"].append(f"{name}:{n}: {line[:160]!r}")
                continue
            if "key_id" in rec and "allowed" in rec:
                fig["transfer records"] += 1
                if rec["allowed"] and "offline" not in rec:
                    fig["transfers allowed"][rec["key_id"]] += 1
            elif "action" in rec:
                fig["admin records"] += 1
                if rec["allowed"] and rec["action"] == "login":
                    fig["logins allowed"] += 1
                if rec["allowed"] and rec["action"] == "create_key":
                    fig["create_key allowed targets"].add(rec.get("target"))
            else:
                fig["other records"] += 1
    return fig


def summary(results, checks):
    tally = results["tally"]
    out = []
    w = out.append
    w("")
    w("== Disk full: figures ==")
    for key in ("keys by creation alone", "key creation rate", "kbs free before filler",
                "first refusal while filling", "kbs filler2 dd", "kbs free when full",
                "keys acked before full", "transfers 200 while full", "registry first refusal",
                "registry filler dd", "registry free when full", "kbs free after freeing",
                "registry free after freeing", "keys acked", "keys lost, no restart",
                "keys present unacked, no restart", "kbs exit on SIGTERM",
                "keys lost, after restart", "keys present unacked, after restart",
                "transfer after restart", "blobs acked", "blobs lost or changed",
                "registry .tmp- files left", "audit complete (no file deleted)",
                "acked creates without audit record",
                "200 transfers without audit record", "200 logins without audit record"):
        if key in results:
            value = results[key]
            if isinstance(value, float):
                value = f"{value:.0f}/s"
            w(f"  {key:<40} {value}")
    audit = results.get("audit")
    if audit:
        w(f"  {'audit files':<40} {', '.join(audit['files'])} ({audit['bytes']} bytes)")
        w(f"  {'audit lines':<40} {audit['lines']} (transfers {audit['transfer records']}, "
          f"admin {audit['admin records']}, other {audit['other records']})")
        w(f"  {'audit unparsable lines':<40} {audit['unparsable lines']}")
        for ex in audit["examples"]:
            w(f"    {ex}")
    w("")
    w("== Answers by phase, request and status ==")
    w(f"  {'phase':<15} {'request':<12} " + " ".join(f"{s:>6}" for s in
                                                    ("200", "201", "503", "507", "500", "other")))
    rows = sorted({(p, r) for p, r, _ in tally.counts})
    order = ["setup", "filling", "kbs full", "registry full", "recovery", "check", "after restart"]
    rows.sort(key=lambda pr: (order.index(pr[0]) if pr[0] in order else 99, pr[1]))
    for phase, req in rows:
        cells = [tally.count(phase, req, s) for s in (200, 201, 503, 507, 500)]
        other = tally.count(phase, req) - sum(cells)
        w(f"  {phase:<15} {req:<12} " + " ".join(f"{c:>6}" for c in cells + [other]))
    if tally.messages:
        w("")
        w("== First message of each error ==")
        for (req, status), msg in sorted(tally.messages.items(), key=lambda x: (x[0][0], x[0][1])):
            w(f"  {req} {status}: {msg}")
    if "recovery" in results:
        w("")
        w("== Recovery after freeing the space (no restart): statuses of the attempts ==")
        for name, (ok, seen) in results["recovery"].items():
            w(f"  {name:<28} {'ok' if ok else 'FAILED'} {seen}")
    w("")
    w("== Invariants ==")
    for name, ok in checks:
        w(f"  {'PASS' if ok else 'FAIL'}  {name}")
    failed = [name for name, ok in checks if not ok]
    if failed or results.get("error"):
        for svc in results.get("services", []):
            w("")
            w(f"== {svc.name} stderr (last lines) ==")
            w(svc.stderr_tail(25).rstrip())
    print("\n".join(out))
    return failed


def main():
    args = parse_args()
    if os.geteuid() != 0:
        print("check_disk_full: root is needed to mount the tmpfs file systems; run it as root",
              file=sys.stderr)
        return 2
    if not os.access(args.adyton, os.X_OK):
        print(f"check_disk_full: {args.adyton} is not an executable; build it with "
              "`cargo build --release` (adyton and adyton-server)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="adyton-disk-full-")
    results = {"mounts": [], "tally": Tally()}
    checks = []
    try:
        run(args, work, results, checks)
    except Exception as e:  # reported in the summary, which still prints what was measured
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        for svc in results.get("services", []):
            svc.stop()
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for name in ("kbs.stderr", "registry.stderr"):
                if os.path.exists(os.path.join(work, name)):
                    shutil.copy2(os.path.join(work, name), args.keep)
        try:
            failed = summary(results, checks)
        finally:
            for mnt in reversed(results["mounts"]):
                subprocess.run(["umount", mnt], check=False)
            shutil.rmtree(work, ignore_errors=True)
    if results.get("error"):
        print(f"\ncheck_disk_full: stopped early: {results['error']}", file=sys.stderr)
        return 1
    if failed:
        print(f"\ncheck_disk_full: {len(failed)} invariant(s) failed", file=sys.stderr)
        return 1
    print("\ncheck_disk_full: every invariant holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
