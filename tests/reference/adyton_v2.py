#!/usr/bin/env python3
"""Independent reference implementation of Adyton envelope v2 (docs/envelope-v2.md).

It is written from that document alone, not from the Rust code, so that agreement between the two
implementations is evidence that both follow the document. It also writes the known-answer vectors
in testdata/envelope/v2-kat.json. Only the standard library and `cryptography` are used.
"""

import argparse
import hashlib
import io
import json
import os
import struct
import sys
import tempfile
from collections import namedtuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ADYTON"
VERSION = 0x02
ALGORITHM_AES_256_GCM = 0x01
KEY_LEN = 32
TAG_LEN = 16
PREFIX_LEN = 7
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_STRING_LEN = 255
MAX_CHUNKS = 2**32
FIXED_HEADER_LEN = 68  # The header without key_id and content_type.
MAX_HEADER_LEN = FIXED_HEADER_LEN + 2 * MAX_STRING_LEN

# magic, version, algorithm, header_len, chunk_size, plaintext_len, plaintext_sha256,
# nonce_prefix, flags, key_id_len: the part of the header before key_id.
HEAD = struct.Struct("<6sBBIIQ32s7sBH")
assert HEAD.size == 66

Header = namedtuple(
    "Header", "chunk_size plaintext_len plaintext_sha256 nonce_prefix key_id content_type")


class EnvelopeError(Exception):
    """A malformed, truncated or unauthentic envelope, or arguments the format cannot encode."""


def chunk_count(plaintext_len, chunk_size):
    # An empty plaintext still has one (empty) chunk, so that its tag authenticates the header.
    return max(1, -(-plaintext_len // chunk_size))


def chunk_plaintext_len(header, i, n):
    if i < n - 1:
        return header.chunk_size
    return header.plaintext_len - (n - 1) * header.chunk_size


def chunk_nonce(prefix, i, last):
    return prefix + struct.pack(">I", i) + (b"\x01" if last else b"\x00")


def check_fields(chunk_size, plaintext_len, key_id, content_type):
    """Checks shared by writer and reader; key_id and content_type are already UTF-8 bytes."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise EnvelopeError(f"chunk_size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    for name, value in (("key_id", key_id), ("content_type", content_type)):
        if len(value) > MAX_STRING_LEN:
            raise EnvelopeError(f"{name} is {len(value)} bytes, at most {MAX_STRING_LEN} allowed")
    if chunk_count(plaintext_len, chunk_size) > MAX_CHUNKS:
        raise EnvelopeError(f"more than 2^32 chunks of {chunk_size} bytes")


def encode_header(h):
    key_id = h.key_id.encode("utf-8")
    content_type = h.content_type.encode("utf-8")
    check_fields(h.chunk_size, h.plaintext_len, key_id, content_type)
    if len(h.nonce_prefix) != PREFIX_LEN:
        raise EnvelopeError(f"nonce prefix must be {PREFIX_LEN} bytes")
    header_len = FIXED_HEADER_LEN + len(key_id) + len(content_type)
    return (HEAD.pack(MAGIC, VERSION, ALGORITHM_AES_256_GCM, header_len, h.chunk_size,
                      h.plaintext_len, h.plaintext_sha256, h.nonce_prefix, 0, len(key_id))
            + key_id + struct.pack("<H", len(content_type)) + content_type)


def read_exact(f, n, what):
    data = bytearray()
    while len(data) < n:
        part = f.read(n - len(data))
        if not part:
            raise EnvelopeError(f"truncated: end of input inside {what}")
        data += part
    return bytes(data)


def decode_utf8(value, name):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError(f"{name} is not valid UTF-8") from None


def read_header(f):
    """Reading step 1: returns the parsed header and its raw bytes (the AAD of every chunk)."""
    start = read_exact(f, 12, "header")
    magic, version, algorithm, header_len = struct.unpack("<6sBBI", start)
    if magic != MAGIC:
        raise EnvelopeError("bad magic: not an Adyton envelope")
    if version != VERSION:
        raise EnvelopeError(f"unsupported version {version}")
    if algorithm != ALGORITHM_AES_256_GCM:
        raise EnvelopeError(f"unsupported algorithm {algorithm}")
    # Bound header_len before reading, so that a hostile value cannot make us read much.
    if not FIXED_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise EnvelopeError(f"header_len {header_len} outside {FIXED_HEADER_LEN}..{MAX_HEADER_LEN}")
    raw = start + read_exact(f, header_len - 12, "header")

    _, _, _, _, chunk_size, plaintext_len, sha256, prefix, flags, key_id_len = \
        HEAD.unpack_from(raw)
    if flags != 0:
        raise EnvelopeError(f"reserved flags 0x{flags:02x}")
    if key_id_len > MAX_STRING_LEN:
        raise EnvelopeError(f"key_id_len {key_id_len} exceeds {MAX_STRING_LEN}")
    # Reading content_type_len needs key_id_len to stay inside header_len.
    if HEAD.size + key_id_len + 2 > header_len:
        raise EnvelopeError("header_len does not match key_id_len and content_type_len")
    key_id = raw[HEAD.size:HEAD.size + key_id_len]
    (content_type_len,) = struct.unpack_from("<H", raw, HEAD.size + key_id_len)
    if content_type_len > MAX_STRING_LEN:
        raise EnvelopeError(f"content_type_len {content_type_len} exceeds {MAX_STRING_LEN}")
    if header_len != FIXED_HEADER_LEN + key_id_len + content_type_len:
        raise EnvelopeError("header_len does not match key_id_len and content_type_len")
    content_type = raw[FIXED_HEADER_LEN + key_id_len:]
    check_fields(chunk_size, plaintext_len, key_id, content_type)
    header = Header(chunk_size, plaintext_len, sha256, prefix,
                    decode_utf8(key_id, "key_id"), decode_utf8(content_type, "content_type"))
    return header, raw


def encrypt(key, src, dst, chunk_size=DEFAULT_CHUNK_SIZE, key_id="",
            content_type="application/octet-stream", nonce_prefix=None):
    """Seals the seekable binary file `src` into `dst`.

    The header, which holds the plaintext's length and hash, is the AAD of every chunk, so it must
    be known before the first chunk is sealed: the input is read twice, once to hash it.
    """
    if nonce_prefix is None:
        nonce_prefix = os.urandom(PREFIX_LEN)
    start = src.tell()
    digest, length = hashlib.sha256(), 0
    while part := src.read(DEFAULT_CHUNK_SIZE):
        digest.update(part)
        length += len(part)
    src.seek(start)

    header = Header(chunk_size, length, digest.digest(), nonce_prefix, key_id, content_type)
    raw = encode_header(header)
    dst.write(raw)
    aead = AESGCM(key)
    n = chunk_count(length, chunk_size)
    second = hashlib.sha256()
    for i in range(n):
        plaintext = read_exact(src, chunk_plaintext_len(header, i, n), f"input chunk {i}")
        second.update(plaintext)
        dst.write(aead.encrypt(chunk_nonce(nonce_prefix, i, i == n - 1), plaintext, raw))
    # The header is already written, so an input that changed between the passes must be an error.
    if src.read(1) or second.digest() != header.plaintext_sha256:
        raise EnvelopeError("input changed while it was being encrypted")
    return header


def decrypt(key, src, dst, check_hash=True):
    """Opens the envelope read from `src`, writing only authenticated plaintext to `dst`."""
    header, raw = read_header(src)
    aead = AESGCM(key)
    n = chunk_count(header.plaintext_len, header.chunk_size)
    digest = hashlib.sha256()
    for i in range(n):
        last = i == n - 1
        sealed = read_exact(src, chunk_plaintext_len(header, i, n) + TAG_LEN, f"chunk {i}")
        try:
            plaintext = aead.decrypt(chunk_nonce(header.nonce_prefix, i, last), sealed, raw)
        except InvalidTag:
            raise EnvelopeError(f"chunk {i}: authentication failed") from None
        digest.update(plaintext)
        if not last:
            dst.write(plaintext)
    # The last chunk is held back until the end of input and the hash have been checked.
    if src.read(1):
        raise EnvelopeError("trailing bytes after the last chunk")
    if check_hash and digest.digest() != header.plaintext_sha256:
        raise EnvelopeError("plaintext SHA-256 does not match the header")
    dst.write(plaintext)
    return header


def read_key(path):
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != KEY_LEN:
        raise EnvelopeError(
            f"{path}: a key file must hold exactly {KEY_LEN} bytes, found {len(key)}")
    return key


def write_atomically(path, produce):
    # Output goes to a temporary file that is renamed only on success, so a failure leaves no OUT.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        # mkstemp makes the file readable by its owner only; give it the usual mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            produce(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def kat_vectors():
    key = bytes(range(32))
    cases = [  # name, plaintext length, chunk_size, key_id, content_type
        ("empty", 0, 16, "", "application/octet-stream"),
        ("short-5", 5, 16, "", "application/octet-stream"),
        ("one-full-chunk-16", 16, 16, "", "application/octet-stream"),
        ("partial-last-chunk-40", 40, 16, "", "application/octet-stream"),
        ("full-last-chunk-48", 48, 16, "", "application/octet-stream"),
        ("key-id-content-type-100", 100, 64, "kbs-key-7", "application/x-onnx"),
        ("non-ascii-key-id-20", 20, 16, "cl\u00e9-\u00fc", "application/octet-stream"),
    ]
    vectors = []
    for index, (name, length, chunk_size, key_id, content_type) in enumerate(cases):
        # A distinct prefix per vector, as a real writer would use; the first is a0a1a2a3a4a5a6.
        prefix = bytes([0xA0 + index]) + bytes.fromhex("a1a2a3a4a5a6")
        plaintext = bytes(i % 251 for i in range(length))
        out = io.BytesIO()
        encrypt(key, io.BytesIO(plaintext), out, chunk_size, key_id, content_type, prefix)
        envelope = out.getvalue()
        # Check the vector against the reader and the length formula before publishing it.
        back = io.BytesIO()
        decrypt(key, io.BytesIO(envelope), back)
        header_len = FIXED_HEADER_LEN + len(key_id.encode()) + len(content_type.encode())
        assert back.getvalue() == plaintext
        assert len(envelope) == header_len + length + TAG_LEN * chunk_count(length, chunk_size)
        vectors.append({
            "name": name, "key_hex": key.hex(), "nonce_prefix_hex": prefix.hex(),
            "chunk_size": chunk_size, "key_id": key_id, "content_type": content_type,
            "plaintext_hex": plaintext.hex(), "envelope_hex": envelope.hex(),
        })
    return {
        "description": "Known-answer vectors for Adyton envelope v2 (docs/envelope-v2.md). "
                       "Plaintext byte i is i % 251; key_id strings are NFC UTF-8.",
        "generator": "tests/reference/adyton_v2.py",
        "vectors": vectors,
    }


def cmd_encrypt(args):
    key = read_key(args.key)
    prefix = None
    if args.nonce_prefix is not None:
        try:
            prefix = bytes.fromhex(args.nonce_prefix)
        except ValueError:
            raise EnvelopeError("--nonce-prefix is not hexadecimal") from None
    with open(args.input, "rb") as src:
        write_atomically(args.output, lambda dst: encrypt(
            key, src, dst, args.chunk_size, args.key_id, args.content_type, prefix))


def cmd_decrypt(args):
    key = read_key(args.key)
    with open(args.input, "rb") as src:
        write_atomically(args.output, lambda dst: decrypt(key, src, dst))


def cmd_kat(args):
    text = json.dumps(kat_vectors(), indent=2, ensure_ascii=False) + "\n"
    write_atomically(args.output, lambda f: f.write(text.encode("utf-8")))


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("encrypt", help="seal a file in a v2 envelope")
    s.add_argument("--key", required=True, help="file holding the 32-byte AES-256 key")
    s.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    s.add_argument("--key-id", default="")
    s.add_argument("--content-type", default="application/octet-stream")
    s.add_argument("--nonce-prefix", metavar="HEX", help="7 bytes in hex (default: random)")
    s.add_argument("input", metavar="IN")
    s.add_argument("output", metavar="OUT")
    s.set_defaults(func=cmd_encrypt)

    s = sub.add_parser("decrypt", help="open a v2 envelope")
    s.add_argument("--key", required=True, help="file holding the 32-byte AES-256 key")
    s.add_argument("input", metavar="IN")
    s.add_argument("output", metavar="OUT")
    s.set_defaults(func=cmd_decrypt)

    s = sub.add_parser("kat", help="write the known-answer vectors as JSON")
    s.add_argument("output", metavar="OUT.json")
    s.set_defaults(func=cmd_kat)
    return p


def main():
    args = parser().parse_args()
    try:
        args.func(args)
    except Exception as e:  # Every failure becomes one line on stderr and exit status 1.
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"adyton_v2: {args.command}: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
