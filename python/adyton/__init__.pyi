"""Type stubs of Adyton's Python SDK (the native module ``adyton._adyton``)."""

import os
from types import TracebackType
from typing import Any, Dict, List, Literal, Mapping, Optional, Type, Union

import numpy as np
import numpy.typing as npt

__version__: str

StrPath = Union[str, "os.PathLike[str]"]

class AdytonError(Exception):
    """Base class of every error the Adyton SDK raises."""

class AttestationError(AdytonError):
    """The server's attestation evidence is missing, not genuine, or not bound to its TLS key."""

class PolicyError(AdytonError):
    """The policy is invalid, or the verified claims do not satisfy it."""

class ServerError(AdytonError):
    """The server answered with an error status."""

    status: Optional[int]
    """The HTTP status (None only for a ServerError made outside the SDK)."""

class InputError(AdytonError):
    """An argument refused before any request was sent: a tensor's name, dtype or shape."""

class Connection:
    """An attested connection to an inference server, made by :func:`connect`."""

    @property
    def claims(self) -> Dict[str, Any]:
        """What the verified evidence proved: ``tee``, ``measurement`` (hex), ``tcb_status``,
        ``debug``, ``insecure``, ``advisory_ids``, ``report_data``, ``collateral_expires_at``,
        ``collateral_issued_at``, ``details`` and ``certificate_sha256`` (hex)."""
    @property
    def certificate_pem(self) -> str:
        """The verified server certificate, PEM."""
    @property
    def url(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def server_metadata(self) -> Dict[str, Any]: ...
    def model_metadata(self, model: str) -> Dict[str, Any]:
        """``{"name", "versions", "inputs", "outputs"}``; each tensor ``{"name", "datatype",
        "shape"}`` with -1 for a dynamic dimension."""
    def upload_model(self, model: Union[StrPath, bytes, bytearray], *, name: str) -> Dict[str, Any]:
        """Uploads a plaintext ONNX model (a path or its bytes) over attested TLS."""
    def predict(
        self, model: str, inputs: Mapping[str, npt.NDArray[Any]]
    ) -> Dict[str, npt.NDArray[Any]]:
        """Runs ``model`` on a dict of numpy arrays; returns a dict of numpy arrays."""
    def delete_model(self, model: str) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Connection": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> bool: ...

def connect(
    url: str,
    *,
    policy: StrPath,
    token: Optional[str] = None,
    collateral: Optional[StrPath] = None,
    pccs_url: Optional[str] = None,
    kds_url: Optional[str] = None,
    collateral_cache_dir: Optional[StrPath] = None,
    server_collateral: bool = True,
    fresh_evidence: bool = True,
    gpu_rims: Optional[StrPath] = None,
    timeout: float = 60.0,
) -> Connection:
    """Connects to ``url`` and verifies the server's attestation against ``policy`` (a path to a
    TOML policy file, or the TOML text) before any request is sent. Collateral for SGX, TDX and
    SNP evidence comes from ``collateral`` (a bundle file), ``pccs_url`` (a PCCS or Intel's PCS)
    and ``kds_url`` (AMD's KDS), fetched collateral also kept in ``collateral_cache_dir``; when
    none of these has it, the server's own (``GET /adyton/v1/collateral``) is fetched and used,
    unless ``server_collateral`` is false. Under a policy with ``[nvidia_gpu]``, the server's GPUs
    are verified against NVIDIA's pinned roots and the RIMs they carry or ``gpu_rims`` (a
    directory of NVIDIA reference integrity manifests) holds."""

def encrypt_model(
    src: StrPath,
    dst: StrPath,
    *,
    key_out: StrPath,
    format: Literal["v1", "v2"] = "v2",
    overwrite: bool = False,
) -> None:
    """Encrypts ``src`` into ``dst`` with a new key written to ``key_out`` (32 raw bytes,
    mode 0600)."""

__all__: List[str]
