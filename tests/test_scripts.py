"""scripts/run and scripts/standin (what `make run` and `make standin` call), as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.helpers import wait_for
from tests.test_process import free_port

# What a checkout needs to run the scripts; linked, so .env can be written beside them.
_CHECKOUT = ("scripts", "app.py", "avatar_service", "comfyui_standin", "workflows", ".venv")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder laid out like the project (links to it), with its own .env and no stand-in."""
    root = tmp_path / "project"
    root.mkdir()
    for name in _CHECKOUT:
        (root / name).symlink_to(REPO_ROOT / name)
    return root


def write_env(root: Path, **settings: object) -> None:
    lines = [f"{key}={value}" for key, value in settings.items()]
    (root / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def clean_env() -> dict[str, str]:
    """This process's environment without any setting the scripts read (so .env decides), and
    with .env loading on (these tests are about it)."""
    drop = {"COMFYUI_URL", "STANDIN_PORT", "PORT", "INSTANCE_PATH", "UPLOAD_DIR", "OUTPUT_DIR"}
    drop.add("PYTHON_DOTENV_DISABLED")
    return {key: value for key, value in os.environ.items() if key not in drop}


@pytest.fixture
def launch() -> Iterator:
    """Start a script in its own process group; every group is killed after the test."""
    started: list[subprocess.Popen] = []

    def start(root: Path, script: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(root / "scripts" / script)],
            cwd=root,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_run_starts_the_standin_on_standin_port_from_env_file(checkout, launch, tmp_path):
    """STANDIN_PORT set in .env moves the stand-in, and the service talks to it there."""
    standin_port, port = free_port(), free_port()
    write_env(
        checkout,
        STANDIN_PORT=standin_port,
        PORT=port,
        INSTANCE_PATH=tmp_path / "instance",
        UPLOAD_DIR=tmp_path / "uploads",
        OUTPUT_DIR=tmp_path / "avatars",
    )
    process = launch(checkout, "run")
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/readyz"), 30, message="the service")
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert list(ready["servers"]) == [f"http://127.0.0.1:{standin_port}"]
    assert ready["standin"] is True, "the web page shows the stand-in banner"
    assert answers(f"http://127.0.0.1:{standin_port}/_standin/faults")
    assert answers(f"http://127.0.0.1:{port}/"), "the web page"
    process.send_signal(signal.SIGTERM)  # the script alone, as a process manager would
    assert process.wait(timeout=15) == 0
    output = process.stdout.read()
    assert f"STAND-IN ComfyUI on port {standin_port}" in output
    assert f"open the web page: http://127.0.0.1:{port}/\n" in output
    wait_for(lambda: not answers(f"http://127.0.0.1:{port}/healthz"), 30, "service gone")
    wait_for(
        lambda: not answers(f"http://127.0.0.1:{standin_port}/_standin/faults"),
        30,
        message="stand-in gone",
    )


def test_run_stops_when_the_standin_port_is_taken(checkout, launch, tmp_path):
    """A taken STANDIN_PORT (maybe a real ComfyUI) stops make run with a clear message."""
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        write_env(checkout, STANDIN_PORT=taken, PORT=port, INSTANCE_PATH=tmp_path / "i")
        process = launch(checkout, "run")
        assert process.wait(timeout=30) == 1
        output = process.stdout.read()
    assert f"port {taken} on 127.0.0.1 is already in use" in output
    assert "STANDIN_PORT" in output
    assert not answers(f"http://127.0.0.1:{port}/healthz")  # the service never started


def test_run_rejects_a_standin_port_that_is_not_a_port(checkout, launch):
    """STANDIN_PORT=abc is refused by name before anything starts."""
    write_env(checkout, STANDIN_PORT="abc")
    process = launch(checkout, "run")
    assert process.wait(timeout=30) == 2
    assert "STANDIN_PORT=abc is not a port number" in process.stdout.read()


def test_standin_script_uses_standin_port_from_env_file(checkout, launch):
    """`make standin` (scripts/standin) listens on STANDIN_PORT from .env, not always 8188."""
    standin_port = free_port()
    write_env(checkout, STANDIN_PORT=standin_port)
    launch(checkout, "standin")
    wait_for(lambda: answers(f"http://127.0.0.1:{standin_port}/_standin/faults"), 30, "stand-in")
