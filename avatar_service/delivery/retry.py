"""Retry timing shared by the outbound deliveries (avatar uploads and webhooks)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

# Statuses that say "try again later" rather than "this request is wrong".
RETRYABLE_STATUSES = frozenset({408, 429})

# The largest share of a delay added as jitter, so that many senders do not retry in step.
JITTER_FRACTION = 0.1

_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    *,
    jitter: float = 0.0,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based), never more than ``cap``.

    The delay doubles with each attempt (``base``, ``2 * base``, ``4 * base``...); a
    ``retry_after`` given by the server replaces it. ``jitter`` is a number in [0, 1) drawn by the
    caller (usually ``random.random()``) and adds up to ``JITTER_FRACTION`` of the delay, so the
    function stays pure.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    # The exponent is capped first because 2.0 ** 1024 overflows.
    exponential = base * 2.0 ** min(attempt - 1, 62)
    delay = exponential if retry_after is None else max(retry_after, 0.0)
    delay += delay * JITTER_FRACTION * min(max(jitter, 0.0), 1.0)
    return min(delay, cap)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status means the same request may succeed later (5xx, 408, 429)."""
    return status >= 500 or status in RETRYABLE_STATUSES


def describe_transport_error(exc: httpx.RequestError) -> str:
    """A short, human-readable reason for a failed exchange (no response was received)."""
    if isinstance(exc, httpx.TimeoutException):
        kind = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        kind = "connection failed"
    elif isinstance(exc, httpx.RemoteProtocolError):
        kind = "connection dropped"
    elif isinstance(exc, httpx.TransportError):
        kind = "transport error"
    else:
        kind = "bad response"
    detail = str(exc) or type(exc).__name__
    return f"{kind}: {detail}"


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment, which may carry credentials; safe to log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
