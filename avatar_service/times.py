"""The one way the service writes a moment: ISO 8601 in UTC, milliseconds, ``Z``.

Every timestamp a client reads (job records, events, deliveries, readiness, errors, webhook
bodies) is written by ``iso``, e.g. ``2026-12-06T20:50:38.556Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso(timestamp: float) -> str: ...


@overload
def iso(timestamp: None) -> None: ...


def iso(timestamp: float | None) -> str | None:
    """A unix time as ISO 8601 UTC with milliseconds and a ``Z`` (None stays None)."""
    if timestamp is None:
        return None
    stamp = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
