"""Verifies a Standard Webhooks `v1a` (Ed25519) signature with Python's
`cryptography`, an implementation independent of hookd's (ring).

    python3 verify_v1a.py WHPK_KEY WEBHOOK_ID WEBHOOK_TIMESTAMP 'WEBHOOK_SIGNATURE' < body

Checks every `v1a,` entry of the signature header (others are skipped)
against `{id}.{timestamp}.{body}`; exits 0 and prints `verified` if one
matches, exits 1 and prints `no v1a signature verifies` otherwise.
"""

import base64
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def main() -> int:
    public, msg_id, timestamp, header = sys.argv[1:5]
    if not public.startswith("whpk_"):
        print("the key must be a whpk_ public key", file=sys.stderr)
        return 2
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public[len("whpk_"):], validate=True))
    content = f"{msg_id}.{timestamp}.".encode() + sys.stdin.buffer.read()
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(encoded, validate=True), content)
        except (InvalidSignature, ValueError):
            continue
        print("verified")
        return 0
    print("no v1a signature verifies")
    return 1


if __name__ == "__main__":
    sys.exit(main())
