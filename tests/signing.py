"""Standard Webhooks signatures made the way a sender does, to check the service's receiving
side (``verify``) against: written here from the scheme, not taken from the service."""

from __future__ import annotations

import base64
import hashlib
import hmac

from avatar_service.delivery.webhooks import secret_key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
