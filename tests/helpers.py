"""Helpers shared by the tests: bounded waits, and driving a job through the HTTP API."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 15.0,
    message: str = "condition",
    *,
    interval: float = 0.01,
) -> T:
    """Poll ``condition`` until it returns something truthy, with a hard bound; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class ManualClock:
    """A wall clock (``time.time`` stand-in) that moves only when the test moves it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass at once."""
        self.now += seconds


def upload(
    client: Any,
    photo: bytes,
    *,
    field: str = "image",
    filename: str = "me.png",
    headers: Mapping[str, str] | None = None,
) -> str:
    """Upload a photo through an app's test client; its imageName."""
    answer = client.post(
        "/upload-image",
        data={field: (io.BytesIO(photo), filename, "image/png")},
        headers=dict(headers or {}),
    )
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()["imageName"]
