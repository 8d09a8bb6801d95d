"""Adyton's Python SDK: confidential inference on servers whose TEE attestation is verified.

Attestation is verified by the Rust client inside the native module ``adyton._adyton``, during
the TLS handshake and before any request carries data; this package only re-exports it.

    import adyton, numpy as np

    with adyton.connect("https://host:8443", policy="policy.toml", token=None) as c:
        print(c.claims)                         # verified TEE kind, measurement, TCB status
        c.upload_model("model.onnx", name="m")  # confidential upload over attested TLS
        out = c.predict("m", {"x": np.ones((1, 3), np.float32)})  # dict of numpy arrays
        c.delete_model("m")

    adyton.encrypt_model("model.onnx", "model.enc", key_out="model.key")

Errors are ``AdytonError`` or one of its subclasses: ``AttestationError``, ``PolicyError``,
``ServerError`` (with ``.status``) and ``InputError``.
"""

from ._adyton import (
    AdytonError,
    AttestationError,
    Connection,
    InputError,
    PolicyError,
    ServerError,
    __version__,
    connect,
    encrypt_model,
)

__all__ = [
    "AdytonError",
    "AttestationError",
    "Connection",
    "InputError",
    "PolicyError",
    "ServerError",
    "__version__",
    "connect",
    "encrypt_model",
]
