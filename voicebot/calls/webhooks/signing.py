"""Standard Webhooks signing (https://www.standardwebhooks.com): the headers of one attempt.

Place in the flow: the sender serialises an outbox row's payload once (`body`) and signs
it with the current time for each attempt (`signed_headers`); the `webhook-id` is the row's
id, the same on every retry, so a receiver can drop the duplicates at-least-once delivery
brings. A receiver verifies with any Standard Webhooks library and the same `whsec_` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as the spec's
    libraries accept it either way)."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        # Unpadded base64 is accepted too, as the reference libraries do.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("webhooks.secret must be whsec_ followed by base64") from exc
    if not key:
        raise ValueError("webhooks.secret has an empty key")
    return key


def body(payload: dict[str, Any]) -> bytes:
    """The bytes sent and signed: compact JSON, UTF-8, keys in the payload's own order (the
    signature covers these exact bytes, so they are made once per attempt and not re-encoded
    by the HTTP client)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, msg_id: str, timestamp: int, content: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + content
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, content: bytes) -> dict[str, str]:
    """The request headers of one attempt made at unix time `timestamp`."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, content),
    }
