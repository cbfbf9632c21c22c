"""Fixtures for the stand-in's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.register_assert_rewrite("standin_replay")

from standin_replay import png_bytes, synthetic_photo  # noqa: E402

from comfyui_standin import StandIn  # noqa: E402


@pytest.fixture
def lab_standin(tmp_path: Path) -> Iterator[StandIn]:
    """A stand-in configured like the recording lab: Impact custom node and previews on."""
    server = StandIn(root=tmp_path / "lab", custom_nodes=("impact",), previews=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(lab_standin: StandIn) -> Iterator[httpx.Client]:
    """An httpx client for the lab stand-in."""
    with httpx.Client(base_url=lab_standin.url, timeout=10) as http:
        yield http


@pytest.fixture
def photo() -> bytes:
    """A 64x64 photo-like PNG."""
    return png_bytes(synthetic_photo(64, 64))


@pytest.fixture
def seed_prompt(recording) -> dict:
    """The project's seed workflow as recorded in 01_success.json (API format)."""
    for step in recording("01_success.json")["steps"]:
        request = step.get("request", {})
        if request.get("path") == "/prompt" and request.get("method") == "POST":
            return request["json"]["prompt"]
    raise AssertionError("no prompt in 01_success.json")
