"""Signed job-finished webhooks (Standard Webhooks), delivered through the outbox (outbox.py).

Every delivery is a JSON ``POST`` with the headers ``webhook-id`` (the same on every retry),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). The secret is ``whsec_<base64 key>``;
a secret without that prefix is used as is (its UTF-8 bytes are the key). Receivers check a
delivery against the raw body bytes, before parsing them, and deduplicate on ``webhook-id``::

    if not verify(secret, request.headers, request.get_data()):
        abort(401)

Delivery failures never raise: they are recorded per attempt and retried with backoff until
``max_attempts``. What does raise::

    WebhookError
    ├── InvalidSecret (also ValueError)    a whsec_ secret that is not base64, or an empty one
    └── InvalidWebhook (also ValueError)   enqueue with an unknown event type, a non-http(s)
                                           url, or data that is not JSON-serialisable
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ..persistence.database import Database
from ..times import iso
from .outbox import Due, Outbox, Sent
from .retry import parse_retry_after

logger = logging.getLogger(__name__)

EVENT_TYPES = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


class WebhookError(Exception):
    """Base of the errors this module raises."""


class InvalidSecret(WebhookError, ValueError):
    """The webhook secret cannot be turned into a signing key."""


class InvalidWebhook(WebhookError, ValueError):
    """A webhook that cannot be enqueued (event type, url or data)."""


# --- signing -------------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after ``whsec_``, else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecret("webhook secret after 'whsec_' is not valid base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic: a v1 signature matches and the timestamp is fresh.

    ``headers`` may be any mapping (names are matched case-insensitively) and ``body`` must be the
    raw bytes as received. The timestamp must be within ``tolerance`` seconds of ``now``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signatures:
        return False
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _signature(secret_key(secret), msg_id, timestamp, body).encode("ascii")
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Compare every candidate (no early exit) so timing says nothing about which one matched.
        if version == SIGNATURE_VERSION and hmac.compare_digest(
            value.encode("utf-8", errors="replace"), expected
        ):
            matched = True
    return matched


# --- callback allow-list -------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def _parse_target(url: str) -> _Target | None:
    """Scheme, host, port and path of a plain http(s) URL; None for anything ambiguous."""
    if not url or any(
        ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url
    ):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    # "@" anywhere in the authority is refused: user info is how "trusted.com@evil.com" works.
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    path = parts.path or "/"
    lowered = path.lower()
    # Encoded slashes and dot segments let the path a server acts on differ from the one checked.
    if not path.startswith("/") or "%2f" in lowered or "%5c" in lowered:
        return None
    if any(segment in {".", ".."} for segment in unquote(path).split("/")):
        return None
    return _Target(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], path)


def is_allowed_callback(url: str, allowed: Sequence[str]) -> bool:
    """Whether a callback URL matches an allow-list entry: same scheme, host and port, path prefix.

    An entry whose path ends without "/" matches that path and what lies below it
    ("/cb" allows "/cb" and "/cb/x", not "/cbx"). Entries that are not plain http(s) URLs match
    nothing.
    """
    target = _parse_target(url)
    if target is None:
        return False
    for entry in allowed:
        rule = _parse_target(entry)
        if rule is None or (rule.scheme, rule.host, rule.port) != (
            target.scheme,
            target.host,
            target.port,
        ):
            continue
        prefix = rule.path
        if prefix.endswith("/"):
            if target.path.startswith(prefix):
                return True
        elif target.path == prefix or target.path.startswith(prefix + "/"):
            return True
    return False


def allowed_url_pattern(entry: str) -> str:
    """A regular expression (ECMA-262 and Python alike) that every URL ``is_allowed_callback``
    allows under ``entry`` matches: scheme and host in any case, the default port optional,
    the path as written (paths are case-sensitive). A first filter, published in the request
    schema; ``is_allowed_callback`` decides."""
    rule = _parse_target(entry)
    if rule is None:
        return re.escape(entry)  # an entry that allows nothing
    host = _any_case(rule.host)
    if ":" in rule.host:  # an IPv6 address, written in brackets
        host = rf"\[{host}\]"
    port = rf"(?::{rule.port})?" if rule.port == _DEFAULT_PORTS[rule.scheme] else f":{rule.port}"
    path = "(?:[/?#]|$)" if rule.path == "/" else re.escape(rule.path)
    return f"{_any_case(rule.scheme)}://{host}{port}{path}"


def _any_case(text: str) -> str:
    """``text`` as a pattern that matches it in any case, without inline flags."""
    return "".join(
        f"[{ch.lower()}{ch.upper()}]" if ch.lower() != ch.upper() else re.escape(ch) for ch in text
    )


# --- message body --------------------------------------------------------------------------------


def new_message_id() -> str:
    """A fresh, unique ``webhook-id``."""
    return f"msg_{uuid.uuid4().hex}"


def build_body(event_type: str, data: Mapping[str, Any], *, at: float | None = None) -> bytes:
    """The compact UTF-8 JSON body: ``{"type", "timestamp", "data"}``."""
    if event_type not in EVENT_TYPES:
        raise InvalidWebhook(f"unknown event type {event_type!r}")
    message = {
        "type": event_type,
        "timestamp": iso(time.time() if at is None else at),
        "data": dict(data),
    }
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidWebhook(f"webhook data is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


# --- dispatcher ----------------------------------------------------------------------------------


class WebhookDispatcher(Outbox):
    """Delivers signed job-finished webhooks through the outbox (kind ``webhook``).

    Delivery is at least once: a receiver should deduplicate on ``webhook-id``.
    """

    kind = "webhook"

    def __init__(
        self,
        *,
        db_path: Path | None = None,
        database: Database | None = None,
        secret: str | None,
        timeout: httpx.Timeout,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        max_age: float | None = None,
        workers: int = 4,
    ) -> None:
        super().__init__(
            db_path=db_path,
            database=database,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            backoff_max=backoff_max,
            max_age=max_age,
            workers=workers,
        )
        self._key = None if secret is None else secret_key(secret)

    def start(self) -> None:
        """Deliver every pending webhook in the background (warns when they go unsigned)."""
        super().start()
        if self._key is None:
            logger.warning("no webhook secret configured: webhooks are sent unsigned")

    def enqueue(self, *, job_id: str, url: str, event_type: str, data: Mapping[str, Any]) -> str:
        """Store a delivery (one transaction), wake the scheduler, and return its webhook-id."""
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidWebhook("webhook url must start with http:// or https://")
        body = build_body(event_type, data)
        return self._store(
            msg_id=new_message_id(), job_id=job_id, url=url, label=event_type, body=body
        )

    def _send(self, client: httpx.Client, item: Due) -> Sent:
        """One signed POST; every failure (network, any non-2xx) may be retried."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            signature = _signature(self._key, item.id, timestamp, item.body)
            headers["webhook-signature"] = f"{SIGNATURE_VERSION},{signature}"
        # Streaming without reading keeps a huge or endless answer from costing anything.
        with client.stream("POST", item.url, content=item.body, headers=headers) as response:
            if response.is_success:
                return Sent(status=response.status_code, error=None)
            return Sent(
                status=response.status_code,
                error=f"HTTP {response.status_code}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
