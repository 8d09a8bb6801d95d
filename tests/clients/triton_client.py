#!/usr/bin/env python3
"""Runs tritonclient (PyPI `tritonclient[http]`, unchanged) against an Adyton server over HTTPS
pinned to the server's attested certificate, and checks every answer.

    triton_client.py HOST:PORT CERT.pem

The server must serve `add` (a + b, FP32 [1, 3]) and `multi` (multi_io.onnx of
scripts/make_test_models.py). Prints one line per check; exits non-zero on the first failure.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(label, condition, detail=""):
    if not condition:
        print(f"FAIL {label} {detail}")
        sys.exit(1)
    print(f"ok   {label}")


def main():
    url, cert = sys.argv[1], sys.argv[2]
    client = httpclient.InferenceServerClient(
        url=url, ssl=True, ssl_options={"ca_certs": cert}, insecure=False
    )

    check("live", client.is_server_live())
    check("ready", client.is_server_ready())
    meta = client.get_server_metadata()
    check("server metadata", meta["name"] == "adyton" and "binary_tensor_data" in meta["extensions"], meta)
    check("model ready", client.is_model_ready("add"))
    model = client.get_model_metadata("add")
    check(
        "model metadata",
        [i["name"] for i in model["inputs"]] == ["a", "b"] and model["outputs"][0]["shape"] == [1, 3],
        model,
    )

    a = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    b = np.array([[0.5, -2.0, 10.0]], dtype=np.float32)
    for binary in (True, False):
        inputs = [httpclient.InferInput("a", [1, 3], "FP32"), httpclient.InferInput("b", [1, 3], "FP32")]
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("sum", binary_data=binary)]
        result = client.infer("add", inputs, outputs=outputs, request_id="triton-1")
        check(f"infer add binary={binary}", np.array_equal(result.as_numpy("sum"), a + b), result.as_numpy("sum"))
        check(f"request id echoed binary={binary}", result.get_response()["id"] == "triton-1")

    x = np.array([[1.5, -1.0], [0.0, 4.0]], dtype=np.float32)
    y = np.array([5, -6, 7], dtype=np.int64)
    inputs = [httpclient.InferInput("x", [2, 2], "FP32"), httpclient.InferInput("y", [3], "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(y, binary_data=False)
    result = client.infer("multi", inputs)
    check("infer multi x_times_2", np.array_equal(result.as_numpy("x_times_2"), x * 2))
    check("infer multi y_plus_1", np.array_equal(result.as_numpy("y_plus_1"), y + 1))

    wrong = [httpclient.InferInput("a", [1, 3], "INT32"), httpclient.InferInput("b", [1, 3], "FP32")]
    wrong[0].set_data_from_numpy(a.astype(np.int32))
    wrong[1].set_data_from_numpy(b)
    try:
        client.infer("add", wrong)
        check("wrong dtype refused", False)
    except InferenceServerException as e:
        check("wrong dtype refused, naming the input", "'a'" in str(e) and "FP32" in str(e), str(e))

    try:
        client.get_model_metadata("no-such-model")
        check("unknown model refused", False)
    except InferenceServerException as e:
        check("unknown model refused", "not known" in str(e), str(e))
    client.close()


if __name__ == "__main__":
    main()
