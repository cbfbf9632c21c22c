"""The ranges of the per-request parameters (seed, width, height) and their check."""

from __future__ import annotations

from typing import Any

from .errors import InvalidParameterError
from .graph import int_literal

MAX_SEED = 2**64 - 1
MIN_SIZE = 16
MAX_SIZE = 16384


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """Return value if it is an int in [low, high], else raise InvalidParameterError."""
    if not int_literal(value) or not low <= value <= high:
        raise InvalidParameterError(
            f"{name} must be an integer from {low} to {high}, got {value!r}",
            parameter=name,
            value=value if isinstance(value, (int, float, str)) else repr(value),
            min=low,
            max=high,
        )
    return value
