#!/usr/bin/env python3
"""A small key broker client, written from the CNAP / Intel KBS API description (`design.md`,
"KBS key transfer"), not from the Rust code, so that the test suite can check the broker against it.

Only the standard library (urllib) and the `cryptography` package are used.

Subcommands:
  login          POST /kbs/v1/token; prints the token
  create-policy  POST /kbs/v1/key-transfer-policies (SIM, pinned to a measurement); prints its id
  import-key     POST /kbs/v1/keys with key_data; prints the key id
  transfer       the CNAP key transfer (optionally with the nonce flow); prints the key as hex

The admin token is read from --token or the environment variable KBS_TOKEN, and the password from
the environment variable named by --password-env, so that neither need appear on a command line.
An HTTP error is reported on stderr as `HTTP <status>: <body>` and exits with status 2.
"""

import argparse
import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RSA_BITS = 3072
PUBLIC_EXPONENT = 65537
SWK_LEN = 32
V1_HEADER = struct.Struct("<3I")
TAG_LEN = 16


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


class ClientError(Exception):
    """A failure reported as a one-line message."""


def request(method, url, body=None, headers=None):
    """Sends a request; returns the decoded JSON answer (or None for an empty one)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise HttpError(e.code, e.read().decode(errors="replace").strip()) from None
    return json.loads(raw) if raw.strip() else None


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def login(base, username, password):
    answer = request("POST", f"{base}/kbs/v1/token", {"username": username, "password": password})
    return answer["token"]


def create_sim_policy(base, token, measurement):
    body = {"attestation_type": "SIM", "sim": {"measurement": [measurement]}}
    return request("POST", f"{base}/kbs/v1/key-transfer-policies", body, auth(token))["id"]


def import_key(base, token, policy_id, key):
    body = {
        "key_information": {
            "algorithm": "AES",
            "key_length": 256,
            "key_data": base64.b64encode(key).decode(),
        },
        "transfer_policy_id": policy_id,
    }
    return request("POST", f"{base}/kbs/v1/keys", body, auth(token))["id"]


def user_data_of(public_key, raw):
    """The TEE's public key as `user_data`: DER SubjectPublicKeyInfo (what the CNAP client sends),
    or Intel's raw form, u32le exponent || big-endian modulus."""
    if not raw:
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    numbers = public_key.public_numbers()
    modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return struct.pack("<I", numbers.e) + modulus


def sim_evidence(adyton, report_data):
    """SIM evidence over `report_data`, made by `adyton attest report --tee sim`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ev.json")
        done = subprocess.run(
            [adyton, "attest", "report", "--tee", "sim", "--report-data", report_data.hex(),
             "-o", path],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClientError(f"adyton attest report failed: {done.stderr.strip()}")
        with open(path, "rb") as f:
            return f.read()


def open_v1(key, data):
    """Opens a v1 envelope: u32le iv_len, tag_len, data_len, then the IV, then ct || tag."""
    if len(data) < V1_HEADER.size:
        raise ClientError("wrapped_key is shorter than a v1 header")
    iv_len, tag_len, data_len = V1_HEADER.unpack_from(data)
    if tag_len != TAG_LEN or V1_HEADER.size + iv_len + data_len != len(data):
        raise ClientError("wrapped_key is not a well-formed v1 envelope")
    iv = data[V1_HEADER.size:V1_HEADER.size + iv_len]
    return AESGCM(key).decrypt(iv, data[V1_HEADER.size + iv_len:], None)


def transfer(base, key_id, adyton, raw=False, use_nonce=False):
    """The CNAP key transfer: returns the model key."""
    private = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=RSA_BITS)
    user_data = user_data_of(private.public_key(), raw)
    url = f"{base}/kbs/v1/keys/{key_id}/transfer"
    headers = {"Attestation-Type": "SIM"}
    body = {}
    if use_nonce:
        nonce = base64.b64decode(request("POST", url, {}, headers)["nonce"])
        report_data = hashlib.sha512(nonce + user_data).digest()
        body["nonce"] = base64.b64encode(nonce).decode()
    else:
        report_data = hashlib.sha512(user_data).digest()
    evidence = sim_evidence(adyton, report_data)
    body["quote"] = base64.b64encode(evidence).decode()
    body["user_data"] = base64.b64encode(user_data).decode()
    answer = request("POST", url, body, headers)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    swk = private.decrypt(base64.b64decode(answer["wrapped_swk"]), oaep)
    if len(swk) != SWK_LEN:
        raise ClientError(f"the SWK is {len(swk)} bytes, not {SWK_LEN}")
    return open_v1(swk, base64.b64decode(answer["wrapped_key"]))


def token_of(args):
    token = args.token or os.environ.get("KBS_TOKEN")
    if not token:
        raise ClientError("no admin token: pass --token or set KBS_TOKEN")
    return token


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the KBS base URL, e.g. http://127.0.0.1:8443")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("login", help="get an admin token (printed)")
    s.add_argument("--user", default="admin")
    s.add_argument("--password-env", default="ADYTON_KBS_ADMIN_PASSWORD",
                   help="environment variable holding the password")

    s = sub.add_parser("create-policy", help="create a SIM policy pinned to a measurement")
    s.add_argument("--token")
    s.add_argument("--measurement", required=True, help="96 hex digits (adyton attest measure)")

    s = sub.add_parser("import-key", help="import a 32-byte AES key under a policy")
    s.add_argument("--token")
    s.add_argument("--policy", required=True)
    s.add_argument("--key-hex", required=True)

    s = sub.add_parser("transfer", help="CNAP key transfer with SIM evidence; prints the key hex")
    s.add_argument("--key-id", required=True)
    s.add_argument("--adyton", required=True, help="path of the adyton binary")
    s.add_argument("--raw", action="store_true",
                   help="send user_data in Intel's raw form instead of DER SubjectPublicKeyInfo")
    s.add_argument("--nonce", action="store_true", help="fetch a nonce first and bind it")

    args = parser.parse_args()
    base = args.url.rstrip("/")
    try:
        if args.command == "login":
            password = os.environ.get(args.password_env)
            if password is None:
                raise ClientError(f"{args.password_env} is not set")
            print(login(base, args.user, password))
        elif args.command == "create-policy":
            print(create_sim_policy(base, token_of(args), args.measurement))
        elif args.command == "import-key":
            key = bytes.fromhex(args.key_hex)
            if len(key) != 32:
                raise ClientError("--key-hex must be 32 bytes")
            print(import_key(base, token_of(args), args.policy, key))
        else:
            print(transfer(base, args.key_id, args.adyton, args.raw, args.nonce).hex())
    except HttpError as e:
        print(e, file=sys.stderr)
        return 2
    except (ClientError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
