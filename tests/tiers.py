"""The suite's two tiers: `live` tests (servers, processes, sockets) and fast, in-process ones.

At collection ``mark_live`` marks `live` every test that uses a fixture starting a server or a
process (``LIVE_FIXTURES``, or a fixture of its module whose code does), or whose own code does,
itself or through a function of the tests it calls (``_starts_something``). ``make test-fast``
runs the others (``pytest -m "not live"``), and ``InProcessGuard`` holds them to it: while a fast
test runs, opening a socket, looking up a host, connecting to PostgreSQL or starting a process
raises ``InProcessOnly`` and fails the test.
"""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent

# Fixtures of the conftest files that start a server or a process, or reach one (PostgreSQL):
# a test using one, directly or through other fixtures, is `live`. A fixture defined in a test
# module is judged by its code, as the tests are.
LIVE_FIXTURES = frozenset({"standin", "standins", "postgres_server", "lab_standin", "s3_server"})


def _starters() -> frozenset[tuple[str, ...]]:
    """What opens sockets or starts processes when a test (or one of its helpers) uses it."""
    import asyncio

    import websocket
    from aiohttp import web

    from comfyui_standin import StandIn
    from tests.conftest import LiveService
    from tests.fleet import Fleet
    from tests.receivers import Receiver
    from tests.replay_server import ReplayServer
    from tests.tcp_proxy import TcpProxy

    starters = (asyncio, socket, subprocess, websocket, web, StandIn, LiveService, Fleet, Receiver)
    return frozenset(_identity(value) for value in (*starters, ReplayServer, TcpProxy))


def _identity(value: object) -> tuple[str, ...]:
    """What a module or class is, the same for every copy of it (a test module may import
    tests/receivers.py as ``receivers`` and another as ``tests.receivers``)."""
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, type):
        module = sys.modules.get(value.__module__)
        return ("class", str(getattr(module, "__file__", "")), value.__qualname__)
    return ("other",)


def _code_names(code: types.CodeType) -> set[str]:
    """The names a function's code (and the functions nested in it) refers to."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def starts_something(function: Callable[..., Any], starters: frozenset, seen: set) -> bool:
    """Whether a function of the tests uses a starter, itself or through another function of
    the tests it calls."""
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code is None or function in seen or not _of_the_tests(code.co_filename):
        return False
    seen.add(function)
    for name in _code_names(code):
        value = function.__globals__.get(name)
        # A module imported inside the function is named by its code, not by its globals.
        if _identity(value) in starters or ("module", name) in starters:
            return True
        if inspect.isfunction(value) and starts_something(value, starters, seen):
            return True
    return False


def _of_the_tests(filename: str) -> bool:
    """Whether code comes from the tests (this module's own machinery aside)."""
    return filename.startswith(str(TESTS_DIR)) and filename != __file__


def mark_live(items: Iterable[pytest.Item]) -> None:
    """Mark `live` every test that starts a server or a process, or uses a fixture that does."""
    starters = _starters()
    judged: dict[object, bool] = {}

    def starts(function: Any) -> bool:
        if function is None:
            return False
        if function not in judged:
            judged[function] = starts_something(function, starters, set())
        return judged[function]

    for item in items:
        if item.get_closest_marker("live") is not None:
            continue
        names = getattr(item, "fixturenames", ())
        module = getattr(item, "module", None)
        if (
            LIVE_FIXTURES.intersection(names)
            or starts(getattr(item, "function", None))
            or any(starts(getattr(module, name, None)) for name in names)
        ):
            item.add_marker(pytest.mark.live)


class InProcessOnly(RuntimeError):
    """A test of the fast tier (not `live`) opened a socket or started a process."""


class InProcessGuard:
    """While on, sockets, host lookups, PostgreSQL connections and processes are refused with
    ``InProcessOnly``; the attempts of the thread that turned it on, and of the threads started
    meanwhile, are kept in ``attempts`` (even those the code under test caught)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: list[str] = []
        self._patches = pytest.MonkeyPatch()
        self._earlier: set[threading.Thread] = set()
        self._owner: threading.Thread | None = None

    def __enter__(self) -> InProcessGuard:
        self._earlier = set(threading.enumerate())
        self._owner = threading.current_thread()
        refuse = self._refuse

        class NoSocket(socket.socket):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise refuse("opened a socket")

        class NoProcess(subprocess.Popen):
            _child_created = False  # Popen.__del__ reads it

            def __init__(self, args: Any, *more: Any, **kwargs: Any) -> None:
                raise refuse(f"started a process ({args!r})")

        def no_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            raise refuse(f"looked up the host {host!r}")

        def no_database_server(cls: type, *args: Any, **kwargs: Any) -> Any:
            raise refuse("connected to PostgreSQL")

        self._patches.setattr(socket, "socket", NoSocket)
        self._patches.setattr(socket, "getaddrinfo", no_lookup)
        self._patches.setattr(subprocess, "Popen", NoProcess)
        try:  # libpq opens its sockets outside Python's socket module: refused by name
            import psycopg
        except ImportError:
            pass
        else:
            self._patches.setattr(psycopg.Connection, "connect", classmethod(no_database_server))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._patches.undo()

    def _refuse(self, what: str) -> InProcessOnly:
        thread = threading.current_thread()
        if thread is self._owner or thread not in self._earlier:
            self.attempts.append(f"{what} (in thread {thread.name})")
        return InProcessOnly(
            f"{self.name} {what}, yet it is not marked live: a test that needs sockets or "
            "processes uses a fixture that starts them (tests/tiers.py, LIVE_FIXTURES); "
            "otherwise use FakeComfyUI and app.test_client()"
        )
