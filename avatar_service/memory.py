"""Giving the memory freed by large image work back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> None:
    """Hand free heap pages back to the system (a no-op without glibc).

    glibc keeps the memory of freed large blocks in its arenas (one per thread that allocated),
    so after decoding a big photo the process would stay that big for good.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
