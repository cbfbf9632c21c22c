"""Helpers shared by the tests: bounded waits, a manual clock, and driving jobs through the API.

``start_job`` and ``read_sse`` take anything with an ``http`` client to the service (a
``LiveService``, a fleet's ``Replica``); ``upload`` takes an app's test client.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Transcripts recorded from a real ComfyUI 0.3.64 (see tests/recordings/README.md); they live in
# the repository so the suite needs nothing beside it.
RECORDINGS_DIR = Path(
    os.environ.get("COMFYUI_RECORDINGS", Path(__file__).resolve().parent / "recordings")
)


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
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message} (last value: {result!r})"
            )
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


def start_job(service: Any, name: str, **extra: Any) -> str:
    """Start an async job for an uploaded photo (``service.http``: a client to the service);
    its id."""
    answer = service.http.post(
        "/generate-avatar-by-image", json={"imageName": name, "async": True, **extra}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["jobId"]


def read_sse(
    service: Any, job_id: str, headers: Mapping[str, str] | None = None, *, timeout: float = 30
) -> list[dict[str, Any]]:
    """Read the whole SSE stream of a job (it ends with the job): each event's fields, its
    ``data`` read as JSON."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with service.http.stream(
        "GET", f"/jobs/{job_id}/events", headers=dict(headers or {}), timeout=timeout
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
    return events


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


def wait_for_preview(http: Any, job_id: str) -> Any:
    """The job's live preview once ``GET /jobs/<id>/preview`` serves one (``http``: a client of
    the service), checked to be an image."""

    def served() -> Any:
        answer = http.get(f"/jobs/{job_id}/preview")
        return answer if answer.status_code == 200 else None

    preview = wait_for(served, timeout=10, message="a live preview")
    assert preview.headers["content-type"] in {"image/jpeg", "image/png"}
    assert len(preview.content) > 100
    return preview
