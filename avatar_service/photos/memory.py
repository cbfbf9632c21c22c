"""Giving the memory freed by large image work back to the operating system (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter for the number of malloc arenas (glibc's malloc.h).
_M_ARENA_MAX = -8
# glibc's default is 8 arenas per core; the service's threads mostly wait on sockets.
SERVICE_ARENAS = 2


def _load_libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``malloc_trim``), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


def release_free_memory() -> None:
    """Hand free heap pages back to the system (a no-op without glibc).

    glibc keeps the memory of freed large blocks in its arenas (one per thread that allocated,
    up to 8 per core), so after decoding a big photo the process would stay that big for good.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def limit_malloc_arenas(count: int = SERVICE_ARENAS) -> None:
    """Share ``count`` malloc arenas between all threads, unless MALLOC_ARENA_MAX says otherwise.

    Call before the server starts its threads: fewer arenas hold less freed memory between
    trims (a no-op without glibc).
    """
    if _libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _libc.mallopt(_M_ARENA_MAX, count)
