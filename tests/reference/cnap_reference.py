#!/usr/bin/env python3
"""Reference implementation of the CNAP model format ("envelope v1") and its RSA-OAEP key wrapping.

It does what the reference Python tools do, so that the Rust test suite can check interoperability
against an implementation that was written from the format description and not from the Rust code.
Only the standard library and the `cryptography` package are used; `openssl` is not needed.

A v1 file is a 12-byte header of three little-endian u32 (IV length, tag length, length of the
ciphertext with its tag), then the IV, then the AES-256-GCM ciphertext with the tag appended.
"""

import argparse
import os
import struct
import sys
import tempfile

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_LEN = 32
IV_LEN = 12
TAG_LEN = 16
HEADER = struct.Struct("<3I")
PUBLIC_EXPONENT = 65537


class FormatError(Exception):
    """A failure that is reported to the user as a one-line message."""


def oaep():
    # SHA-256 for both the message digest and MGF1, with no label, as the reference tools use.
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def read_key(path):
    key = read_file(path)
    if len(key) != KEY_LEN:
        raise FormatError(f"{path}: a key file must hold exactly {KEY_LEN} bytes, found {len(key)}")
    return key


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def write_file(path, data):
    # Write to a temporary file and rename it, so that a failure never leaves a partial output.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        # mkstemp makes the file readable by its owner only; give it the usual mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def seal(key, plaintext):
    iv = os.urandom(IV_LEN)
    ct_and_tag = AESGCM(key).encrypt(iv, plaintext, None)
    return HEADER.pack(len(iv), TAG_LEN, len(ct_and_tag)) + iv + ct_and_tag


def unseal(key, data):
    if len(data) < HEADER.size:
        raise FormatError("file shorter than the 12-byte header")
    iv_len, tag_len, data_len = HEADER.unpack_from(data)
    if iv_len != IV_LEN:
        raise FormatError(f"IV length is {iv_len}, expected {IV_LEN}")
    if tag_len != TAG_LEN:
        raise FormatError(f"tag length is {tag_len}, expected {TAG_LEN}")
    if HEADER.size + iv_len + data_len != len(data):
        raise FormatError(
            f"header announces {HEADER.size + iv_len + data_len} bytes, file has {len(data)}")
    iv = data[HEADER.size:HEADER.size + iv_len]
    try:
        return AESGCM(key).decrypt(iv, data[HEADER.size + iv_len:], None)
    except InvalidTag:
        raise FormatError("authentication failed (wrong key or modified file)") from None


def load_public(path):
    key = serialization.load_der_public_key(read_file(path))
    if not isinstance(key, rsa.RSAPublicKey):
        raise FormatError(f"{path}: not an RSA public key")
    return key


def load_private(path):
    key = serialization.load_pem_private_key(read_file(path), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FormatError(f"{path}: not an RSA private key")
    return key


def cmd_encrypt(args):
    write_file(args.output, seal(read_key(args.key), read_file(args.input)))


def cmd_decrypt(args):
    write_file(args.output, unseal(read_key(args.key), read_file(args.input)))


def cmd_rsa_generate(args):
    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=args.bits)
    write_file(args.private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    write_file(args.public, key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def cmd_rsa_public_raw(args):
    numbers = load_public(args.public).public_numbers()
    if numbers.e >= 2**32:
        raise FormatError("public exponent does not fit in a u32")
    # The modulus is padded to the modulus byte length, so the form has a fixed size per key size.
    modulus_len = (numbers.n.bit_length() + 7) // 8
    byteorder = "big" if args.order == "be" else "little"
    modulus = numbers.n.to_bytes(modulus_len, byteorder)
    write_file(args.output, struct.pack("<I", numbers.e) + modulus)


def cmd_rsa_wrap(args):
    write_file(args.output, load_public(args.public).encrypt(read_key(args.key), oaep()))


def cmd_rsa_unwrap(args):
    private = load_private(args.private)
    try:
        key = private.decrypt(read_file(args.input), oaep())
    except ValueError:
        raise FormatError("RSA-OAEP decryption failed") from None
    if len(key) != KEY_LEN:
        raise FormatError(f"unwrapped key has {len(key)} bytes, expected {KEY_LEN}")
    write_file(args.output, key)


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    for name, func, text in (("encrypt", cmd_encrypt, "seal a file in a v1 envelope"),
                             ("decrypt", cmd_decrypt, "open a v1 envelope")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--key", required=True, help="file holding the 32-byte AES key")
        s.add_argument("input", metavar="IN")
        s.add_argument("output", metavar="OUT")
        s.set_defaults(func=func)

    s = sub.add_parser("rsa-generate", help="generate an RSA key pair")
    s.add_argument("--bits", type=int, required=True)
    s.add_argument("--private", required=True, help="output: PKCS#8 PEM, unencrypted")
    s.add_argument("--public", required=True, help="output: DER SubjectPublicKeyInfo")
    s.set_defaults(func=cmd_rsa_generate)

    s = sub.add_parser("rsa-public-raw", help="write the raw public key form (u32 LE e, modulus)")
    s.add_argument("--public", required=True, help="DER SubjectPublicKeyInfo")
    s.add_argument("--order", choices=("be", "le"), required=True, help="modulus byte order")
    s.add_argument("output", metavar="OUT")
    s.set_defaults(func=cmd_rsa_public_raw)

    s = sub.add_parser("rsa-wrap", help="encrypt a 32-byte key with RSA-OAEP-SHA256")
    s.add_argument("--public", required=True, help="DER SubjectPublicKeyInfo")
    s.add_argument("--key", required=True, help="file holding the 32-byte key")
    s.add_argument("output", metavar="OUT")
    s.set_defaults(func=cmd_rsa_wrap)

    s = sub.add_parser("rsa-unwrap", help="decrypt a key wrapped with RSA-OAEP-SHA256")
    s.add_argument("--private", required=True, help="PKCS#8 PEM private key")
    s.add_argument("input", metavar="IN")
    s.add_argument("output", metavar="OUT")
    s.set_defaults(func=cmd_rsa_unwrap)
    return p


def main():
    args = parser().parse_args()
    try:
        args.func(args)
    except Exception as e:  # Every failure becomes one line on stderr and exit status 1.
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"cnap_reference: {args.command}: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
