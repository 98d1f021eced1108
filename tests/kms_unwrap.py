#!/usr/bin/env python3
"""Unwraps a tower-byok wrapped keyring, written from docs/FORMAT.md ("15. The wrapped
keyring") alone, with boto3: prints the plain keyring text (one `<id>:<base64>` line per
key, the active key first), as `Keyring::expose_text` writes it.

Usage: kms_unwrap.py FILE. boto3 takes the endpoint, region and credentials from the
standard AWS environment variables (AWS_ENDPOINT_URL for a local KMS such as moto).
"""
import base64
import sys

import boto3


def parse(text):
    lines = text.split("\n")
    if lines[0].rstrip("\r") != "tower-byok wrapped-keyring v1":
        raise ValueError("not a version 1 wrapped keyring")
    body = [l.rstrip("\r") for l in lines[1:]]
    body = [l for l in body if l and not l.startswith("#")]
    scheme_line, kms_key_line, entries = body[0], body[1], body[2:]
    if not scheme_line.startswith("scheme "):
        raise ValueError("missing the scheme line")
    if not kms_key_line.startswith("kms-key "):
        raise ValueError("missing the kms-key line")
    keys = []
    for entry in entries:
        key_id, b64 = entry.split(" ", 1)
        keys.append((key_id, base64.b64decode(b64, validate=True)))
    return scheme_line[len("scheme "):], kms_key_line[len("kms-key "):], keys


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        scheme, kms_key, keys = parse(f.read())
    if scheme != "aws-kms":
        raise ValueError(f"scheme {scheme!r} is not aws-kms")
    kms = boto3.client("kms")
    out = []
    for key_id, ciphertext in keys:
        plain = kms.decrypt(
            KeyId=kms_key,
            CiphertextBlob=ciphertext,
            EncryptionContext={
                "tower-byok:purpose": "master-key",
                "tower-byok:key-id": key_id,
            },
        )["Plaintext"]
        if len(plain) != 32:
            raise ValueError(f"master key {key_id} is not 32 bytes")
        out.append(f"{key_id}:{base64.b64encode(plain).decode()}\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
