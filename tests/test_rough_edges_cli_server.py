"""The ``avatar`` command finds the service at the PORT it serves on: from the environment or a
``.env`` in the current directory, after --server and AVATAR_SERVER."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from avatar_cli.server import default_server

AVATAR = Path(sys.executable).with_name("avatar")
NOTHING_LISTENS = "9"  # the discard port: nothing answers there


def styles(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``avatar styles`` in ``cwd``, with ``.env`` loading on and only the given variables."""
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AVATAR_SERVER", "AVATAR_KEY", "PORT", "PYTHON_DOTENV_DISABLED"}
    }
    return subprocess.run(
        [str(AVATAR), "styles", "--json", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def port(service) -> str:
    """The port of a live service (not 5000)."""
    return str(urlsplit(service.url).port)


def test_port_from_a_dotenv_in_the_current_directory(port, tmp_path):
    """`avatar styles` in a folder whose .env says PORT reaches the service there."""
    (tmp_path / ".env").write_text(f"# the service\nCOMFYUI_URL=http://x\nPORT={port}\n")
    answer = styles(tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert '"default": "avatar"' in answer.stdout


def test_port_from_the_environment_before_the_dotenv(port, tmp_path):
    """PORT in the environment wins over the .env, as it does for the service."""
    (tmp_path / ".env").write_text(f"PORT={NOTHING_LISTENS}\n")
    answer = styles(tmp_path, PORT=port)
    assert answer.returncode == 0, answer.stderr


@pytest.mark.parametrize("how", ["--server", "AVATAR_SERVER"])
def test_server_and_avatar_server_come_first(service, tmp_path, how):
    """--server and AVATAR_SERVER are used whatever PORT says."""
    (tmp_path / ".env").write_text(f"PORT={NOTHING_LISTENS}\n")
    if how == "--server":
        answer = styles(tmp_path, "--server", service.url, PORT=NOTHING_LISTENS)
    else:
        answer = styles(tmp_path, AVATAR_SERVER=service.url, PORT=NOTHING_LISTENS)
    assert answer.returncode == 0, answer.stderr


def test_the_message_names_the_server_it_tried(tmp_path):
    """With PORT from the .env and nothing there, the error names that URL."""
    (tmp_path / ".env").write_text(f"PORT={NOTHING_LISTENS}\n")
    answer = styles(tmp_path)
    assert answer.returncode == 1
    assert answer.stderr.startswith(
        f"error: cannot reach the avatar service at http://127.0.0.1:{NOTHING_LISTENS}"
    )


@pytest.mark.parametrize(
    ("environ", "dotenv", "expected"),
    [
        ({}, None, "http://127.0.0.1:5000"),
        ({}, "PORT=8080\n", "http://127.0.0.1:8080"),
        ({}, "export PORT='8081'\n", "http://127.0.0.1:8081"),
        ({"PORT": "7000"}, "PORT=8080\n", "http://127.0.0.1:7000"),
        ({"PORT": " "}, "PORT=8080\n", "http://127.0.0.1:8080"),
        ({}, "PORT=http\n", "http://127.0.0.1:5000"),
        ({}, "PORT=70000\n", "http://127.0.0.1:5000"),
        ({"PORT": "\u0665\u0660\u0660\u0661"}, None, "http://127.0.0.1:5000"),
        ({"PYTHON_DOTENV_DISABLED": "1"}, "PORT=8080\n", "http://127.0.0.1:5000"),
        ({"PYTHON_DOTENV_DISABLED": "1", "PORT": "7000"}, None, "http://127.0.0.1:7000"),
    ],
)
def test_default_server(tmp_path, environ, dotenv, expected):
    """PORT from the environment, else the .env, else 5000; a PORT that is no port is ignored."""
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    assert default_server(environ, tmp_path) == expected
