"""The ``avatar`` command rides out a restart of the service mid-job, and gives up clearly when
the service stays away past its --timeout."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from avatar_cli.client import ApiError, ClientError, Unreachable
from avatar_cli.retry import Outage, passing
from tests.conftest import make_photo
from tests.service_process import ServiceProcess

AVATAR = Path(sys.executable).with_name("avatar")


@pytest.fixture
def service_process(tmp_path: Path, standin):
    """The service as a real process (stopped after the test)."""
    process = ServiceProcess(tmp_path, standin.url)
    process.start()
    yield process
    process.kill()


class Cli:
    """``avatar`` running with plain output; its stderr lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"AVATAR_SERVER", "AVATAR_KEY"}}
        self.process = subprocess.Popen(
            [str(AVATAR), *args],
            cwd=cwd,
            env={**env, "NO_COLOR": "1", "COLUMNS": "200"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._lines.put(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Collect stderr lines until one contains ``text`` (bounded)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            assert time.monotonic() < deadline, f"{text!r} never came: {self.seen}"
            try:
                self.seen.append(self._lines.get(timeout=0.5))
            except queue.Empty:
                ended = not self._reader.is_alive() and self._lines.empty()
                assert not ended, f"ended without {text!r}: {self.seen}"

    def finish(self, timeout: float = 60) -> str:
        """Wait for the end (bounded, killed after); its stdout, with every stderr line seen."""
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        stdout = self.process.stdout.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return stdout


def test_generate_rides_out_a_restart_of_the_service(service_process, standin, tmp_path):
    """Killed and restarted mid-job, the service finishes the job and the command saves it."""
    photo = tmp_path / "me.png"
    photo.write_bytes(make_photo((30, 120, 200)))
    out = tmp_path / "out"
    standin.set_faults(step_delay=0.05)
    cli = Cli(
        "generate", str(photo), "--server", service_process.url, "--out", str(out), cwd=tmp_path
    )
    try:
        cli.wait_for("running KSampler")
        service_process.kill()
        cli.wait_for("me.png: service unreachable, retrying in ")
        assert cli.process.poll() is None, cli.seen
        service_process.start()
    finally:
        stdout = cli.finish()
    seen = cli.seen
    assert cli.process.returncode == 0, "".join(seen)
    saved = list(out.glob("me-*.png"))
    assert len(saved) == 1
    assert saved[0].read_bytes().startswith(b"\x89PNG")
    assert stdout == f"{photo} -> {saved[0]}\n"
    assert seen[-1] == "me.png: done\n"


def test_generate_gives_up_clearly_after_its_timeout(service_process, standin, tmp_path):
    """A service that stays away past --timeout: exit 1, saying so and naming the option."""
    photo = tmp_path / "me.png"
    photo.write_bytes(make_photo((30, 120, 200)))
    standin.set_faults(hang=True)
    cli = Cli(
        "generate", str(photo), "--server", service_process.url, "--timeout", "1.5", cwd=tmp_path
    )
    try:
        cli.wait_for("running")
        service_process.kill()
    finally:
        cli.finish()
        standin.set_faults(hang=False)
    seen = cli.seen
    assert cli.process.returncode == 1, "".join(seen)
    assert any("service unreachable, retrying in 0.5 s..." in line for line in seen), seen
    assert seen[-2] == "me.png: failed\n"
    assert seen[-1].startswith(
        f"{photo}: the avatar service could not be reached for 1.5 s, giving up (--timeout): "
        f"cannot reach the avatar service at {service_process.url}"
    ), seen


def test_outage_waits_double_up_to_the_cap_and_end_at_the_deadline():
    """Waits double from 0.5 s to the cap, the last is cut to the deadline, then it gives up."""
    now = [0.0]
    outage = Outage(10, first=0.5, cap=4, clock=lambda: now[0])
    error = Unreachable("refused")
    waits = []
    with pytest.raises(Unreachable) as gave_up:
        while True:
            waits.append(outage.next_wait(error))
            now[0] += waits[-1]
    assert waits == [0.5, 1, 2, 4, 2.5]
    assert str(gave_up.value) == (
        "the avatar service could not be reached for 10 s, giving up (--timeout): refused"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (Unreachable("refused"), True),
        (ApiError(503, "database_unavailable", "busy"), True),
        (ApiError(502, "http_502", "bad gateway"), True),
        (ApiError(404, "job_not_found", "unknown job"), False),
        (ApiError(401, "unauthorized", "no key"), False),
        (ClientError("answered a body that is not JSON"), False),
    ],
)
def test_only_passing_failures_are_retried(error, expected):
    """No answer, or 502/503/504, is worth another try; an error the service meant is not."""
    assert passing(error) is expected
