"""The Python SDK against a real SIM server: claims, upload, predict (checked against
onnxruntime), delete, every exception type made to happen, keyword-only arguments, and
encrypt_model opened by `adyton model decrypt`."""

import datetime
import hashlib
import http.server
import os
import ssl
import stat
import subprocess
import threading

import numpy as np
import onnxruntime
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import adyton

from conftest import TOKEN, adyton_bin


def connect(server, **options):
    options.setdefault("policy", server.policy)
    return adyton.connect(server.url, **options)


def ort_run(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def pem_to_der(pem):
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem).public_bytes(
        serialization.Encoding.DER
    )


def test_connect_verifies_and_reports_claims(server):
    with connect(server) as c:
        claims = c.claims
        assert claims["tee"] == "SIM"
        assert claims["measurement"] == server.measurement
        assert claims["insecure"] is True
        assert claims["debug"] is False
        assert claims["tcb_status"] == "NotApplicable"
        assert claims["details"]["sim"]["measurement"] == server.measurement
        # The certificate the SDK verified is the one the server wrote, and the one reported.
        written = pem_to_der(server.certificate.read_bytes())
        assert pem_to_der(c.certificate_pem) == written
        assert claims["certificate_sha256"] == hashlib.sha256(written).hexdigest()
        assert c.server_metadata()["name"] == "adyton"
        assert "tee=SIM" in repr(c)
    assert c.closed
    with pytest.raises(adyton.AdytonError, match="closed"):
        c.server_metadata()


def test_policy_may_be_given_as_text_or_path_object(server):
    text = server.policy.read_text()
    with adyton.connect(server.url, policy=text) as c:
        assert c.claims["measurement"] == server.measurement
    with adyton.connect(server.url, policy=server.policy, fresh_evidence=False) as c:
        assert c.claims["tee"] == "SIM"


def test_upload_predict_delete_matches_onnxruntime(server):
    path = server.models / "dynamic_batch.onnx"
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4), dtype=np.float32)
    with connect(server, token=TOKEN) as c:
        answer = c.upload_model(path, name="sdk_dynamic")
        assert answer["name"] == "sdk_dynamic"
        meta = c.model_metadata("sdk_dynamic")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]

        out = c.predict("sdk_dynamic", {"x": x})
        expected = ort_run(path, {"x": x})
        assert set(out) == {"y"}
        assert out["y"].dtype == np.float32 and out["y"].shape == (5, 2)
        np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-6, atol=1e-6)

        # Layouts that are not C-contiguous are read in row-major order.
        fortran = np.asfortranarray(x)
        strided = np.ascontiguousarray(np.repeat(x, 2, axis=0))[::2]
        for view in (fortran, strided, x.T.copy().T):
            np.testing.assert_array_equal(c.predict("sdk_dynamic", {"x": view})["y"], out["y"])

        c.delete_model("sdk_dynamic")
        with pytest.raises(adyton.ServerError) as refused:
            c.predict("sdk_dynamic", {"x": x})
        assert refused.value.status == 404


def test_multiple_inputs_outputs_and_scalars(server):
    x = np.array([[1.5, -2.0], [3.25, 4.0]], np.float32)
    y = np.array([1, -7, 2**40], np.int64)
    with connect(server) as c:
        out = c.predict("multi", {"y": y, "x": x})
    expected = ort_run(server.models / "multi_io.onnx", {"x": x, "y": y})
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name].dtype == value.dtype, name
        assert out[name].shape == value.shape, name
        np.testing.assert_array_equal(out[name], value)


IDENTITY = {
    "bool": np.array([[True, False, True], [False, False, True]]),
    "uint8": np.arange(6, dtype=np.uint8).reshape(2, 3) + 250,
    "uint16": np.arange(6, dtype=np.uint16).reshape(2, 3) * 10000,
    "uint32": np.arange(6, dtype=np.uint32).reshape(2, 3) * 700_000_000,
    "uint64": np.arange(6, dtype=np.uint64).reshape(2, 3) * np.uint64(3_000_000_000_000_000_000),
    "int8": np.array([[-128, -1, 0], [1, 2, 127]], np.int8),
    "int16": np.array([[-32768, -1, 0], [1, 2, 32767]], np.int16),
    "int32": np.array([[-(2**31), -1, 0], [1, 2, 2**31 - 1]], np.int32),
    "int64": np.array([[-(2**63), -1, 0], [1, 2, 2**63 - 1]], np.int64),
    "fp16": np.array([[0.5, -1.25, 65504], [np.inf, -0.0, 3.0]], np.float16),
    "fp32": np.array([[0.1, -1e30, 3.5], [np.inf, -np.inf, 7.0]], np.float32),
    "fp64": np.array([[0.1, -1e300, 3.5], [1e-300, -0.0, 7.0]], np.float64),
    "string": np.array([[b"a", b"", b"\x00\xc3\xa9"], ["h\u00e9", "x" * 100, b"z"]], dtype=object),
}


@pytest.mark.parametrize("kind", sorted(IDENTITY))
def test_every_dtype_round_trips(server, kind):
    value = IDENTITY[kind]
    name = f"sdk_identity_{kind}"
    with connect(server, token=TOKEN) as c:
        c.upload_model((server.models / f"identity_{kind}.onnx").read_bytes(), name=name)
        try:
            got = c.predict(name, {"x": value})["y"]
        finally:
            c.delete_model(name)
    if kind == "string":
        encoded = [v.encode() if isinstance(v, str) else v for v in value.ravel()]
        assert got.dtype == object and got.shape == value.shape
        assert list(got.ravel()) == encoded
    else:
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


class PlainTlsServer:
    """An HTTPS server whose self-signed certificate carries no attestation evidence; it counts
    the HTTP requests that reach it."""

    def __init__(self, directory):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = directory / "plain.pem", directory / "plain.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the standard library's name)
                outer.requests += 1
                self.send_response(200)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_server_without_evidence_raises_attestation_error(server, tmp_path):
    plain = PlainTlsServer(tmp_path)
    try:
        with pytest.raises(adyton.AttestationError) as refused:
            adyton.connect(plain.url, policy=server.policy, timeout=10)
        assert plain.requests == 0
    finally:
        plain.close()
    assert isinstance(refused.value, adyton.AdytonError)
    assert "evidence" in str(refused.value).lower() or "extension" in str(refused.value).lower()


def served_requests(server):
    """The server's log lines of finished requests, except its own /metrics."""
    return [
        line
        for line in server.log_lines()
        if "done" in line and "request" in line and "/metrics" not in line
    ]


def test_policy_mismatch_raises_before_any_request(server):
    other = "00" * 48
    counts_before = server.inference_counts()
    requests_before = served_requests(server)
    with pytest.raises(adyton.PolicyError) as refused:
        adyton.connect(server.url, policy=f'[sim]\nmeasurement = ["{other}"]\n', token=TOKEN)
    assert "measurement" in str(refused.value)
    # No request reached the server: no inference counted, no request served.
    assert server.inference_counts() == counts_before
    assert served_requests(server) == requests_before
    # The counters do move when a request does get through.
    with connect(server) as c:
        c.predict("add", {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 3), np.float32)})
    assert server.inference_counts() == counts_before + 1
    assert len(served_requests(server)) > len(requests_before)


def test_invalid_policies_raise_policy_error(server, tmp_path):
    with pytest.raises(adyton.PolicyError):
        adyton.connect(server.url, policy="[sim]\nmeasurement = [\"not hex\"]\n")
    with pytest.raises(adyton.PolicyError):
        adyton.connect(server.url, policy=tmp_path / "missing.toml")
    with pytest.raises(adyton.PolicyError):
        adyton.connect(server.url, policy="[sim]\nunknown_field = 1\n")
    with pytest.raises(TypeError):
        adyton.connect(server.url, policy=42)


def test_wrong_token_raises_server_error_with_status(server):
    with connect(server, token="not-the-token") as c:
        with pytest.raises(adyton.ServerError) as refused:
            c.upload_model(server.models / "add.onnx", name="sdk_refused")
    assert refused.value.status == 401


def test_input_errors_are_raised_before_sending(server):
    a = np.ones((1, 3), np.float32)
    with connect(server) as c:
        c.model_metadata("add")
        before = server.inference_counts()
        cases = [
            ([a, a], "dict"),
            (a, "dict"),
            ({"a": a}, "missing input `b`"),
            ({"a": a, "b": a, "c": a}, "no input `c`"),
            ({"a": a, "b": a.astype(np.float64)}, "FP32"),
            ({"a": a, "b": np.ones((1, 4), np.float32)}, "shape"),
            ({"a": a, "b": np.ones((3,), np.float32)}, "shape"),
            ({"a": a, "b": [1.0, 2.0, 3.0]}, "numpy array"),
            ({"a": a, "b": np.ones((1, 3), np.complex64)}, "dtype"),
            ({"a": a, "b": np.ones((1, 3), ">f4")}, "dtype"),
            ({"a": a, 7: a}, "str"),
        ]
        for inputs, message in cases:
            with pytest.raises(adyton.InputError, match=message):
                c.predict("add", inputs)
        assert server.inference_counts() == before
        with pytest.raises(adyton.InputError):
            adyton.connect(server.url, policy=server.policy, timeout=-1)


def test_keyword_only_arguments(server, tmp_path):
    with connect(server, token=TOKEN) as c:
        with pytest.raises(TypeError):
            c.upload_model(server.models / "add.onnx", "sdk_positional")
        with pytest.raises(TypeError):
            c.upload_model(model=server.models / "add.onnx")
        with pytest.raises(adyton.ServerError) as missing:
            c.model_metadata("sdk_positional")
        assert missing.value.status == 404
    with pytest.raises(TypeError):
        adyton.connect(server.url, server.policy)
    with pytest.raises(TypeError):
        adyton.encrypt_model(server.models / "add.onnx", tmp_path / "e", tmp_path / "k")


def test_threads_share_one_connection(server):
    a = np.arange(3, dtype=np.float32).reshape(1, 3)
    results, errors = [], []
    with connect(server) as c:

        def work(i):
            try:
                for _ in range(10):
                    out = c.predict("add", {"a": a, "b": np.full((1, 3), i, np.float32)})
                    results.append((i, out["sum"]))
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 40
    for i, total in results:
        np.testing.assert_array_equal(total, a + i)


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_encrypt_model_is_opened_by_the_cli(server, tmp_path, fmt):
    src = server.models / "dynamic_batch.onnx"
    enc, key, out = tmp_path / "model.enc", tmp_path / "model.key", tmp_path / "model.onnx"
    adyton.encrypt_model(src, enc, key_out=key, format=fmt)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert enc.read_bytes() != src.read_bytes()
    subprocess.run(
        [adyton_bin(), "model", "decrypt", enc, "-o", out, "--key", key],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(FileExistsError):
        adyton.encrypt_model(src, enc, key_out=tmp_path / "other.key", format=fmt)
    assert not (tmp_path / "other.key").exists()
    adyton.encrypt_model(src, enc, key_out=key, format=fmt, overwrite=True)
    with pytest.raises(adyton.InputError):
        adyton.encrypt_model(src, enc, key_out=key, format="v3", overwrite=True)
    with pytest.raises(FileNotFoundError):
        adyton.encrypt_model(tmp_path / "absent.onnx", tmp_path / "x.enc", key_out=tmp_path / "x.key")
    assert not (tmp_path / "x.key").exists()


def test_collateral_sources(server, tmp_path):
    # SIM evidence needs no collateral: unreachable sources change nothing, and are not asked.
    with connect(
        server,
        pccs_url="http://127.0.0.1:1",
        kds_url="http://127.0.0.1:1",
        collateral_cache_dir=tmp_path / "cache",
    ) as c:
        assert c.claims["tee"] == "SIM"
    assert (tmp_path / "cache").is_dir()
    # The server's own collateral is fetched only for evidence that needs collateral; turning it
    # off changes nothing for SIM.
    with connect(server, server_collateral=False) as c:
        assert c.claims["tee"] == "SIM"
    with pytest.raises(TypeError):
        connect(server, server_collateral="no")
    # Bad settings are refused before connecting, naming what is wrong.
    with pytest.raises(adyton.InputError, match="not an http:// or https:// URL"):
        connect(server, pccs_url="pccs.example")
    with pytest.raises(adyton.InputError, match="KDS URL"):
        connect(server, kds_url="ftp://kds.example")
    with pytest.raises(OSError):
        connect(server, collateral=tmp_path / "missing.json")


def test_policy_nvidia_gpu_table_applies_to_the_servers_gpus(server, tmp_path):
    sim = server.policy.read_text()
    # The SIM test server drives no GPU: a policy that requires them refuses it before any request.
    with pytest.raises(adyton.PolicyError, match="nvidia_gpu.required"):
        adyton.connect(server.url, policy=sim + "\n[nvidia_gpu]\nrequired = true\n")
    # Without the requirement, every attached GPU (none) verifies.
    with adyton.connect(server.url, policy=sim + "\n[nvidia_gpu]\n") as c:
        assert c.claims["tee"] == "SIM"
    # A RIM directory that cannot be read is refused before connecting, naming it.
    with pytest.raises(adyton.InputError, match="gpu_rims"):
        connect(server, gpu_rims=tmp_path / "no-such-dir")
    rims = tmp_path / "rims"
    rims.mkdir()
    with connect(server, gpu_rims=rims) as c:
        assert c.claims["tee"] == "SIM"
