"""Shared fixtures: the stand-in ComfyUI on a free port, and the recorded ComfyUI transcripts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyui_standin import StandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDINGS_DIR = Path(
    os.environ.get("COMFYUI_RECORDINGS", REPO_ROOT.parent / "shared" / "comfyui-recordings")
)


@pytest.fixture(scope="session")
def recordings_dir() -> Path:
    """The directory of real ComfyUI transcripts (kept outside the repository)."""
    if not RECORDINGS_DIR.is_dir():
        pytest.fail(f"ComfyUI recordings not found at {RECORDINGS_DIR} (set COMFYUI_RECORDINGS)")
    return RECORDINGS_DIR


@pytest.fixture(scope="session")
def recording(recordings_dir: Path):
    """Load one recording by file name, e.g. recording("01_success.json")."""

    def load(name: str) -> dict:
        return json.loads((recordings_dir / name).read_text(encoding="utf-8"))

    return load


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    """A fresh stand-in ComfyUI on 127.0.0.1:<free port>, stopped after the test."""
    server = StandIn(root=tmp_path / "comfyui").start()
    try:
        yield server
    finally:
        server.stop()
