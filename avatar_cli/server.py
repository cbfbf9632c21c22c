"""Where the service is when neither --server nor AVATAR_SERVER says: on this machine, at the
PORT the service itself reads (the environment, else a ``.env`` in the current directory)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

DEFAULT_PORT = 5000
HOST = "127.0.0.1"


def default_server(environ: Mapping[str, str] | None = None, directory: Path | None = None) -> str:
    """``http://127.0.0.1:<PORT>``; PORT as ``python app.py`` reads it, else 5000."""
    environ = os.environ if environ is None else environ
    port = _port(environ.get("PORT"))
    if port is None and not _dotenv_disabled(environ):
        env_file = (directory or Path.cwd()) / ".env"
        if env_file.is_file():
            port = _port(dotenv_values(env_file).get("PORT"))
    return f"http://{HOST}:{port or DEFAULT_PORT}"


def _port(value: str | None) -> int | None:
    """A port number, or None for nothing or anything else (the service would refuse it)."""
    text = (value or "").strip()
    if text.isascii() and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    return None


def _dotenv_disabled(environ: Mapping[str, str]) -> bool:
    """PYTHON_DOTENV_DISABLED, as python-dotenv's load_dotenv (and so the service) honours it."""
    return environ.get("PYTHON_DOTENV_DISABLED", "").casefold() in {"1", "true", "t", "yes", "y"}
