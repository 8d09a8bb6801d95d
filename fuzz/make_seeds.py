#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus under fuzz/corpus/<target>/ (fuzz/corpus/README.md says
where each seed comes from). Standard library only, and `openssl` for one RSA public key; run from
anywhere: `python3 fuzz/make_seeds.py`. Existing seeds of the same names are replaced; others are
left alone (the fuzzer's own finds live under target/, not here)."""

import base64
import json
import re
import struct
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
TESTDATA = ROOT / "testdata"


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def doc_blocks(doc, lang):
    text = (ROOT / "docs" / doc).read_text()
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


def b64(data):
    return base64.b64encode(data).decode()


def rsa_spki_der():
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True, capture_output=True).stdout
    return subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=key,
                          check=True, capture_output=True).stdout


def spki_modulus(der):
    """The modulus of a 2048-bit RSA SubjectPublicKeyInfo (its 256 bytes before `02 03 01 00 01`)."""
    end = der.rindex(b"\x02\x03\x01\x00\x01")
    return der[end - 256:end]


def evidence_json(tee, quote, certificates=None):
    doc = {"format": "adyton-evidence-v1", "tee": tee, "quote": b64(quote)}
    if certificates is not None:
        doc["certificates"] = b64(certificates)
    return json.dumps(doc, indent=2)


def infer_body(inputs, outputs=None, request_id=None, parameters=None):
    doc = {"inputs": inputs}
    if request_id is not None:
        doc["id"] = request_id
    if parameters is not None:
        doc["parameters"] = parameters
    if outputs is not None:
        doc["outputs"] = outputs
    return json.dumps(doc).encode()


def main():
    sgx_quote = (TESTDATA / "dcap" / "sgx_quote").read_bytes()
    tdx_quote = (TESTDATA / "dcap" / "tdx_quote").read_bytes()
    snp_report = bytes.fromhex((TESTDATA / "snp" / "report_milan.hex").read_text().strip())
    snp_chain = (TESTDATA / "snp" / "cert_chain_milan").read_bytes()
    vectors = json.loads((TESTDATA / "envelope" / "v2-kat.json").read_text())["vectors"]
    spki = rsa_spki_der()
    modulus = spki_modulus(spki)

    # Envelopes: the v2 known-answer vectors (small ones), and v1 layouts.
    for vector in vectors:
        envelope = bytes.fromhex(vector["envelope_hex"])
        if len(envelope) <= 4096:
            write("envelope_v2", f"kat-{vector['name']}", envelope)
    iv, tag, ct = bytes(range(12)), bytes(range(16)), b"\x42" * 32
    write("envelope_v1", "layout-12-16-32", struct.pack("<III", 12, 16, 32) + iv + ct + tag)
    write("envelope_v1", "layout-empty", struct.pack("<III", 12, 16, 0) + iv + tag)
    write("envelope_v1", "v2-header", bytes.fromhex(vectors[0]["envelope_hex"]))

    # Public keys: DER SubjectPublicKeyInfo and Intel's `u32le exponent || modulus`, both orders.
    write("public_key", "spki-rsa2048.der", spki)
    write("public_key", "intel-be", struct.pack("<I", 65537) + modulus)
    write("public_key", "intel-le", struct.pack("<I", 65537) + modulus[::-1])

    # Evidence: the JSON form, and `selector byte || quote` (TeeKind::ALL: SGX, TDX, SNP, SIM, NITRO).
    write("evidence", "sgx.json", evidence_json("SGX", sgx_quote))
    write("evidence", "snp.json", evidence_json("SNP", snp_report, snp_chain))
    write("evidence", "sim.json", evidence_json("SIM", b"\x00" * 64))
    write("evidence", "raw-sgx", b"\x00" + sgx_quote)
    write("evidence", "raw-tdx", b"\x01" + tdx_quote)
    write("evidence", "raw-snp", b"\x02" + snp_report)
    write("evidence", "raw-nitro", b"\x04" + (TESTDATA / "nitro" / "valid-attestation-doc-bytes").read_bytes())
    for i, block in enumerate(doc_blocks("evidence.md", "json")):
        write("evidence", f"doc-{i}.json", block)

    write("dcap_quote", "sgx_quote", sgx_quote)
    write("dcap_quote", "tdx_quote", tdx_quote)
    write("snp_report", "report_milan", snp_report)
    write("snp_report", "report_milan_with_chain", snp_report + snp_chain[:1024])

    # NVIDIA GPU reports (hex in testdata) and RIMs.
    gpu = TESTDATA / "nvidia-gpu"
    for name in ["hopperAttestationReport", "blackwellAttestationReport",
                 "hopperAttestationReportInvalidSignature"]:
        write("gpu_report", name, bytes.fromhex((gpu / f"{name}.txt").read_text().strip()))
    for name in ["NV_GPU_DRIVER_GH100_550.144.03.xml", "incorrect_signature_driver_rim.xml"]:
        write("gpu_rim", name, (gpu / name).read_bytes())
    # AWS Nitro: the three recorded documents, the base64 one decoded.
    nitro = TESTDATA / "nitro"
    write("nitro_document", "valid", (nitro / "valid-attestation-doc-bytes").read_bytes())
    write("nitro_document", "debug", (nitro / "debug-mode-attestation-doc-bytes").read_bytes())
    write("nitro_document", "debug-2023",
          base64.b64decode((nitro / "valid-attestation-doc-base64").read_text().strip()))

    # Policies: the documentation's, in TOML and JSON.
    mrenclave, mrsigner = "ab" * 32, "cd" * 32
    sgx_table = {"mrenclave": [mrenclave], "mrsigner": [mrsigner], "isvprodid": [0], "min_isvsvn": 1,
                 "enforce_tcb_upto_date": True}
    for i, block in enumerate(doc_blocks("policy.md", "toml")):
        write("policy", f"doc-{i}.toml", block)
    write("policy", "sgx.json", json.dumps({"sgx": sgx_table}))
    write("policy", "sim.toml", f'[sim]\nmeasurement = ["{"ef" * 48}"]\n')

    # The key broker's policy bodies (docs/kbs.md, the admin API).
    write("kbs_policy", "sgx.json", json.dumps({"attestation_type": "SGX", "sgx": sgx_table}))
    write("kbs_policy", "tdx.json", json.dumps({"attestation_type": "TDX", "tdx": {
        "mrtd": ["01" * 48], "rtmr0": [], "min_seamsvn": 3, "enforce_tcb_upto_date": True}}))
    write("kbs_policy", "snp.json", json.dumps({"attestation_type": "SNP", "snp": {
        "measurement": ["02" * 48], "require_nonce": True}}))
    write("kbs_policy", "sim.json", json.dumps({"attestation_type": "SIM", "sim": {
        "measurement": ["03" * 48], "signer": ["04" * 32]}}))

    # Configuration files: the documentation's examples.
    for doc, name in [("server-config.md", "server"), ("kbs-config.md", "kbs"),
                      ("registry.md", "registry"), ("policy.md", "policy")]:
        for i, block in enumerate(doc_blocks(doc, "toml")):
            write("config", f"{name}-{i}.toml", block)
    write("config", "registry-fs.toml", '[store]\nbackend = "fs"\ndata_dir = "/var/lib/adyton"\n')

    # Provisioning files (docs/offline.md): requests from SGX, SNP and SIM devices, and a response.
    def request(tee, evidence, policy="exact-build"):
        return json.dumps({
            "format": "adyton-provision-request/1",
            "request_id": "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b",
            "model": "scanner-v3",
            "key_id": "0b0e11aa-2222-4333-8444-555566667777",
            "tee": tee,
            "sealing_policy": policy,
            "public_key": b64(spki),
            "evidence": b64(evidence.encode()),
            "created_at": 1_800_000_000,
        }, indent=2) + "\n"
    write("provision_request", "sgx.json", request("SGX", evidence_json("SGX", sgx_quote)))
    write("provision_request", "snp.json", request("SNP", evidence_json("SNP", snp_report), "signer"))
    write("provision_request", "sim.json", request("SIM", evidence_json("SIM", b"\x00" * 64)))
    write("provision_request", "tdx-refused.json", request("TDX", evidence_json("TDX", b"\x00" * 64)))
    write("provision_response", "response.json", json.dumps({
        "format": "adyton-provision-response/1",
        "request_id": "5b0c2f7e-3c1d-4e6f-8a9b-0c1d2e3f4a5b",
        "model": "scanner-v3",
        "key_id": "0b0e11aa-2222-4333-8444-555566667777",
        "public_key_sha256": "5d" * 32,
        "wrapped_key": b64(struct.pack("<III", 12, 16, 32) + bytes(60)),
        "wrapped_swk": b64(bytes(256)),
        "issued_at": 1_800_000_100,
    }, indent=2) + "\n")

    # Key transfer bodies: the exact JSON of adyton-proto's transfer tests and of the key
    # broker's HTTP tests (crates/adyton-kbs/tests/it/http.rs, audit.rs), and a SIM device's body
    # as the broker's tests build it (evidence JSON, a DER public key, an extra field, a nonce).
    for name, body in [
        ("cnap", '{"quote":"ZXZpZGVuY2U=","user_data":"a2V5"}'),
        ("cnap-nonce", '{"quote":"ZXZpZGVuY2U=","user_data":"a2V5","nonce":"bg=="}'),
        ("extras-whitespace", '{"quote": " ZXZpZGVuY2U= ", "user_data": "a2V5", "tee": "sgx"}'),
        ("nonce-request", "{}"),
        ("nonce-request-user-data", '{"user_data": "a2V5"}'),
        ("missing-user-data", '{"quote": "AAAA"}'),
        ("null-quote", '{"quote": null, "user_data": "AAAA"}'),
        ("null-nonce", '{"nonce": null}'),
        ("not-base64", '{"quote": "AA==", "user_data": "not base64!", "nonce": "AA=="}'),
    ]:
        write("transfer_body", f"{name}.json", body)
    sim_body = {"quote": b64(evidence_json("SIM", b"\x00" * 64).encode()), "user_data": b64(spki),
                "extra_field": "ignored"}
    write("transfer_body", "sim.json", json.dumps(sim_body))
    write("transfer_body", "sim-nonce.json", json.dumps({**sim_body, "nonce": b64(bytes(range(32)))}))

    # The key broker's transfer answers: adyton-proto's tests, and one of real sizes (a v1
    # envelope of a 32-byte key, an RSA-2048 ciphertext).
    for name, body in [
        ("small", '{"wrapped_key":"AQID","wrapped_swk":"BAU="}'),
        ("bad-key", '{"wrapped_key": "!", "wrapped_swk": "AA=="}'),
        ("missing-swk", '{"wrapped_key": "AA=="}'),
    ]:
        write("transfer_answer", f"{name}.json", body)
    write("transfer_answer", "real-sizes.json", json.dumps({
        "wrapped_key": b64(struct.pack("<III", 12, 16, 32) + bytes(60)),
        "wrapped_swk": b64(bytes(256))}))

    # Model info: the exact JSON of adyton-proto's model info tests (the registry's answer, a
    # publisher's request, a numeric version, a misspelt field), the registry's test of an
    # unknown field, and the documentation's answer.
    for name, body in [
        ("answer", '{"id":"resnet-50","framework":"onnx","target":null,"url":"http://registry/blobs/'
                   'resnet-50","name":null,"version":null,"dtype":null,"encrypted":true,"kbs":null,'
                   '"kbs_url":"http://kbs/kbs/v1/keys/k1/transfer","key_id":"k1","format":"v2"}'),
        ("request", '{"id":"resnet-50","framework":"onnx","url":"http://registry/blobs/resnet-50",'
                    '"encrypted":true,"kbs_url":"http://kbs/kbs/v1/keys/k1/transfer","key_id":"k1",'
                    '"format":"v2"}'),
        ("numeric-version", '{"id": "m", "version": 3}'),
        ("text-version", '{"version": "1.2"}'),
        ("misspelt", '{"id": "m", "framwork": "onnx"}'),
        ("unknown", '{"id":"m","colour":"red"}'),
        ("negative-size", '{"blob_size": -1}'),
        # A past crash: the strict reader kept the last of a field given twice.
        ("duplicate-field", '{"id": "m", "kbs_url": "http://a", "kbs_url": "http://b"}'),
    ]:
        write("model_info", f"{name}.json", body)
    for i, block in enumerate(doc_blocks("registry.md", "json")):
        if '"framework"' in block:
            write("model_info", f"doc-{i}.json", block)

    # Infer requests as JSON: every data type, nested and flat data, ids, parameters, outputs.
    write("infer_json", "fp32-nested", infer_body(
        [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1.0, 2.5], [-3.0, 1e-7]]}],
        outputs=[{"name": "y"}], request_id="42"))
    write("infer_json", "special-floats", infer_body(
        [{"name": "a", "shape": [4], "datatype": "FP16", "data": ["NaN", "Infinity", "-inf", 65504]},
         {"name": "b", "shape": [3], "datatype": "FP64", "data": [0.1, -0.0, "nan"]}]))
    write("infer_json", "integers", infer_body(
        [{"name": n, "shape": [2], "datatype": t, "data": v} for n, t, v in [
            ("u8", "UINT8", [0, 255]), ("i8", "INT8", [-128, 127]), ("u16", "UINT16", [0, 65535]),
            ("i16", "INT16", [-1, 1]), ("u32", "UINT32", [0, 4294967295]), ("i32", "INT32", [-5, 5]),
            ("u64", "UINT64", [0, 18446744073709551615]),
            ("i64", "INT64", [-9223372036854775808, 9223372036854775807])]]))
    write("infer_json", "bool-bytes", infer_body(
        [{"name": "flags", "shape": [1, 3], "datatype": "BOOL", "data": [[True, False, 1]]},
         {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "wörld"]}],
        parameters={"binary_data_output": True},
        outputs=[{"name": "y", "parameters": {"binary_data": False}}]))
    write("infer_json", "scalar", infer_body(
        [{"name": "s", "shape": [], "datatype": "INT64", "data": 7}]))
    write("infer_json", "empty-dim", infer_body(
        [{"name": "e", "shape": [0, 3], "datatype": "FP32", "data": []}]))

    # Infer requests with binary tensor data: `u16le header length || JSON || tensor bytes`.
    def binary(inputs, tensors, **kwargs):
        header = infer_body(inputs, **kwargs)
        return struct.pack("<H", len(header)) + header + b"".join(tensors)
    fp32 = struct.pack("<4f", 1.0, -2.0, float("nan"), 3.5)
    write("infer_binary", "fp32", binary(
        [{"name": "x", "shape": [1, 4], "datatype": "FP32",
          "parameters": {"binary_data_size": len(fp32)}}], [fp32],
        parameters={"binary_data_output": True}))
    strings = b"".join(struct.pack("<I", len(s)) + s for s in [b"ab", b"", b"\xff\xfe"])
    write("infer_binary", "bytes-and-bool", binary(
        [{"name": "t", "shape": [3], "datatype": "BYTES",
          "parameters": {"binary_data_size": len(strings)}},
         {"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}],
        [strings, b"\x01\x02"]))
    i64 = struct.pack("<2q", -1, 1 << 40)
    write("infer_binary", "mixed-json-binary", binary(
        [{"name": "j", "shape": [2], "datatype": "UINT8", "data": [1, 2]},
         {"name": "k", "shape": [2], "datatype": "INT64",
          "parameters": {"binary_data_size": len(i64)}}], [i64], request_id="r1"))
    json_only = infer_body([{"name": "x", "shape": [1], "datatype": "FP16", "data": [0.5]}])
    write("infer_binary", "json-only", struct.pack("<H", len(json_only)) + json_only)

    # The same bodies read in chunks: `flags || [u64le header length] || split count || u16le
    # chunk lengths || body` (fuzz/fuzz_targets/infer_chunked.rs). Flags: 1 binary extension,
    # 2 Content-Length known.
    def chunked(body, header_length=None, known=True, splits=()):
        flags = (1 if header_length is not None else 0) | (2 if known else 0)
        head = bytes([flags])
        if header_length is not None:
            head += struct.pack("<Q", header_length)
        return head + bytes([len(splits)]) + struct.pack(f"<{len(splits)}H", *splits) + body
    strings_header = infer_body(
        [{"name": "t", "shape": [3], "datatype": "BYTES",
          "parameters": {"binary_data_size": len(strings)}},
         {"name": "j", "shape": [1], "datatype": "FP32", "data": [0.5]},
         {"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}],
        outputs=[{"name": "y", "parameters": {"binary_data": True}}], request_id="r1")
    write("infer_chunked", "bytes-bool-bytewise",
          chunked(strings_header + strings + b"\x01\x00", len(strings_header), splits=[1]))
    fp32_header = infer_body(
        [{"name": "x", "shape": [1, 4], "datatype": "FP32",
          "parameters": {"binary_data_size": len(fp32)}},
         {"name": "e", "shape": [0], "datatype": "INT8", "parameters": {"binary_data_size": 0}},
         {"name": "k", "shape": [2], "datatype": "INT64",
          "parameters": {"binary_data_size": len(i64)}}],
        parameters={"binary_data_output": True})
    # Split inside the JSON part, at its end, inside a tensor and between tensors, with an empty
    # chunk; and the same body without a Content-Length.
    fp32_body = fp32_header + fp32 + i64
    splits = [7, 0, len(fp32_header) - 7, 5, len(fp32) - 5, 3]
    write("infer_chunked", "fp32-int64-split", chunked(fp32_body, len(fp32_header), splits=splits))
    write("infer_chunked", "fp32-int64-no-length",
          chunked(fp32_body, len(fp32_header), known=False, splits=[2, 61]))
    # Refused alike: a tensor shorter than claimed, and bytes that no input claims.
    write("infer_chunked", "short-tensor",
          chunked(fp32_header + fp32 + i64[:5], len(fp32_header), splits=[50]))
    write("infer_chunked", "unclaimed-bytes",
          chunked(fp32_body + b"\0" * 4, len(fp32_header), known=False, splits=[9]))
    write("infer_chunked", "json-only", chunked(json_only, splits=[3, 11]))

    onnx_seeds()
    azure_seeds()


def azure_seeds():
    """The Azure vTPM samples: HCL reports, the quote's TPMS_ATTEST, runtime data, a container."""
    azure = TESTDATA / "azure-vtpm"
    for name in ["hcl-report-snp.bin", "hcl-report-tdx.bin", "var-data.bin"]:
        write("azure_vtpm", name, (azure / name).read_bytes())
    quote = (azure / "quote.bin").read_bytes()
    (sig_len,) = struct.unpack_from("<Q", quote, 0)
    (msg_len,) = struct.unpack_from("<Q", quote, 8 + sig_len)
    message = quote[16 + sig_len : 16 + sig_len + msg_len]
    signature = quote[8 : 8 + sig_len]
    write("azure_vtpm", "quote-message", message)
    write("azure_vtpm", "quote-signature-then-message", signature + message)
    container = {
        "format": "adyton-azure-vtpm-v1",
        "hcl_report": b64((azure / "hcl-report-snp.bin").read_bytes()),
        "report_data": "00" * 64,
        "tpm_quote": {
            "message": b64(message),
            "signature": b64(signature),
            "pcrs": {"0": "00" * 32},
        },
    }
    write("azure_vtpm", "container.json", json.dumps(container))


def field(number, payload):
    """A length-delimited protobuf field (numbers and lengths under 128 here)."""
    key = number << 3 | 2
    key_bytes = bytes([key]) if key < 128 else bytes([key & 0x7F | 0x80, key >> 7])
    return key_bytes + bytes([len(payload)]) + payload


def onnx_seeds():
    """Small ONNX models for the external data check, encoded by hand (onnx.proto's numbers)."""
    inline = field(8, b"w") + struct.pack("<BB", 2 << 3, 1) + field(9, struct.pack("<f", 1.0))
    external = (field(8, b"w") + field(13, field(1, b"location") + field(2, b"weights.bin"))
                + struct.pack("<BB", 14 << 3, 1))
    node = field(1, b"x") + field(1, b"w") + field(2, b"y") + field(4, b"Add")
    for name, tensor in [("inline", inline), ("external", external)]:
        graph = field(1, node) + field(2, b"g") + field(5, tensor)
        write("onnx_external_data", f"initializer-{name}",
              struct.pack("<BB", 1 << 3, 8) + field(7, graph))
    # A Constant node's tensor attribute inside a local function (ModelProto.functions, 25).
    function = field(7, field(5, field(1, b"value") + field(5, external)))
    write("onnx_external_data", "function-constant-external",
          struct.pack("<BB", 1 << 3, 8) + field(25, function))

if __name__ == "__main__":
    main()
