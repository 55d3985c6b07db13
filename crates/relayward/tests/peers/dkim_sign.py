#!/usr/bin/env python3
"""Signs messages with dkimpy, as the original senders' own servers would.

Usage: dkim_sign.py DIR
DIR/jobs.json lists {"file": name, "domain": d, "selector": s}; each DIR/name (a message with
CRLF line ends) is signed in place with relaxed/relaxed canonicalization and one RSA-2048 key,
made here with openssl. DIR/key.txt gets the key's DNS TXT value ("v=DKIM1; k=rsa; p=...").
"""
import base64
import json
import os
import subprocess
import sys

import dkim

def main():
    out = sys.argv[1]
    key_path = os.path.join(out, "key.pem")
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", key_path, "2048"],
        check=True, capture_output=True,
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", key_path, "-pubout", "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout
    with open(os.path.join(out, "key.txt"), "w") as f:
        f.write("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    with open(key_path, "rb") as f:
        key = f.read()
    with open(os.path.join(out, "jobs.json")) as f:
        jobs = json.load(f)
    for job in jobs:
        path = os.path.join(out, job["file"])
        with open(path, "rb") as f:
            msg = f.read()
        sig = dkim.sign(
            msg,
            job["selector"].encode(),
            job["domain"].encode(),
            key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        with open(path, "wb") as f:
            f.write(sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg)

if __name__ == "__main__":
    main()
