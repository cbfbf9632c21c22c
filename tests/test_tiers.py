"""The suite's tiers: what collection marks `live`, and the guard that keeps fast tests
in-process (tests/tiers.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import types

import pytest

from tests.tiers import (
    TESTS_DIR,
    InProcessGuard,
    InProcessOnly,
    _starters,
    starts_something,
)


def functions_of(source: str, **namespace: object) -> dict[str, types.FunctionType]:
    """The functions defined by ``source``, as if written in a file of the tests."""
    code = compile(source, str(TESTS_DIR / "sample_module.py"), "exec")
    exec(code, namespace)
    return {k: v for k, v in namespace.items() if isinstance(v, types.FunctionType)}


SAMPLES = """
from tests.receivers import Receiver


def starts_a_receiver():
    with Receiver():
        pass


def imports_subprocess_itself():
    import subprocess

    subprocess.run(["true"])


def through_a_helper():
    return helper()


def helper():
    return nested()


def nested():
    def inner():
        return starts_a_receiver()

    return inner


def pure():
    return sum(range(3))
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("starts_a_receiver", True),
        ("imports_subprocess_itself", True),
        ("through_a_helper", True),
        ("pure", False),
    ],
)
def test_the_code_of_a_test_says_whether_it_is_live(name, expected):
    """A test using a server class, importing subprocess or calling a helper that does is
    live; one that does none of it is not."""
    functions = functions_of(SAMPLES)
    assert starts_something(functions[name], _starters(), set()) is expected


def test_functions_outside_the_tests_are_not_followed():
    """Only functions of the tests are read (the service's own code is what is under test)."""
    [function] = functions_of("def far():\n    import subprocess\n").values()
    function.__code__ = function.__code__.replace(co_filename="/elsewhere/module.py")
    assert starts_something(function, _starters(), set()) is False


def test_the_guard_refuses_sockets_lookups_and_processes():
    """While the guard is on, a socket, a host lookup and a process are refused and noted."""
    with InProcessGuard("this test") as guard:
        with pytest.raises(InProcessOnly, match="opened a socket"):
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(InProcessOnly, match=r"looked up the host 'example\.com'"):
            socket.getaddrinfo("example.com", 80)
        with pytest.raises(InProcessOnly, match="started a process"):
            subprocess.run(["true"], check=False)
    assert len(guard.attempts) == 3
    assert socket.socket is not None and socket.socket.__name__ == "socket"  # undone after


def test_the_guard_notes_what_a_thread_started_by_the_test_tried():
    """An attempt in a thread the test started is noted even when that thread swallows it."""
    with InProcessGuard("this test") as guard:

        def quietly() -> None:
            with contextlib.suppress(InProcessOnly):  # as a reconnecting client would
                socket.socket()

        thread = threading.Thread(target=quietly)
        thread.start()
        thread.join(5)
    assert guard.attempts == [f"opened a socket (in thread {thread.name})"]


def test_this_module_is_fast(request):
    """A test that opens nothing is left in the fast tier."""
    assert request.node.get_closest_marker("live") is None
