#!/usr/bin/env python3
"""A small model provider client, written from CNAP's description of its model info
(`design.md`, "Model info") and not from the Rust code: it fetches a model's info from a registry,
downloads the blob from the info's `url`, gets the key through the KBS transfer at `kbs_url` (with
SIM evidence, as cnap_kbs_client.py does), decrypts the v1 envelope with the CNAP reader
(cnap_reference.py) and writes the plaintext model.

Usage:
  cnap_model_provider.py --registry URL --model ID --adyton PATH -o OUT

Only the standard library and the `cryptography` package are used. An HTTP error is reported on
stderr as `HTTP <status>: <body>` and exits with status 2.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnap_kbs_client  # noqa: E402
import cnap_reference  # noqa: E402

MANDATORY = ("id", "url")
CNAP_FIELDS = ("id", "framework", "target", "url", "name", "version", "dtype", "encrypted", "kbs",
               "kbs_url", "key_id")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise cnap_kbs_client.HttpError(e.code, e.read().decode(errors="replace").strip()) from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adyton", required=True, help="path of the adyton binary (SIM evidence)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    try:
        info = json.loads(get(f"{args.registry.rstrip('/')}/models/{args.model}"))
        for field in CNAP_FIELDS:
            if field not in info:
                raise cnap_kbs_client.ClientError(f"the model info has no `{field}`")
        for field in MANDATORY:
            if not info[field]:
                raise cnap_kbs_client.ClientError(f"the model info's `{field}` is empty")
        blob = get(info["url"])
        if info.get("encrypted"):
            # kbs_url is the full transfer URL: .../kbs/v1/keys/{key_id}/transfer.
            suffix = f"/kbs/v1/keys/{info['key_id']}/transfer"
            if not info["kbs_url"].endswith(suffix):
                raise cnap_kbs_client.ClientError("kbs_url does not name the key's transfer")
            kbs_base = info["kbs_url"][: -len(suffix)]
            key = cnap_kbs_client.transfer(kbs_base, info["key_id"], args.adyton)
            model = cnap_reference.unseal(key, blob)
        else:
            model = blob
        cnap_reference.write_file(args.output, model)
        print(info["id"])
    except cnap_kbs_client.HttpError as e:
        print(e, file=sys.stderr)
        return 2
    except (cnap_kbs_client.ClientError, cnap_reference.FormatError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
