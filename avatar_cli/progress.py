"""Progress displays: live bars on a terminal, one line per change elsewhere (logs, pipes)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from .jobs import JobResult


def queue_text(data: dict[str, Any]) -> str:
    """'queued #2, starts in ~12 s' from a record or a position event."""
    position = data.get("queuePosition")
    text = f"queued #{position}" if position else "queued"
    seconds = estimated_start(data)
    if seconds is not None:
        text += ", starting any moment" if seconds <= 1 else f", starts in ~{seconds} s"
    return text


def framing_lines(framing: dict[str, Any]) -> list[str]:
    """Two lines from GET /photos/<imageName>/framing: the face found, and the crop to be used."""
    faces = framing.get("faces") or []
    if faces:
        face = faces[0]
        line = f"face: {_box(face)}"
        if len(faces) > 1:
            line += f" (the largest of {len(faces)})"
    elif framing.get("policy") == "off":
        line = "face: not looked for (FACE_POLICY=off)"
    else:
        line = "face: none found"
    crop = framing.get("crop") or {}
    how = {"face": "around the face", "center": "centre"}.get(
        crop.get("source"), crop.get("source")
    )
    return [line, f"crop: {_box(crop)}, {how}"]


def _box(box: dict[str, Any]) -> str:
    """'90x110 at (180, 60)': a box's size and its top-left corner in the photo's pixels."""
    return f"{box.get('width')}x{box.get('height')} at ({box.get('x')}, {box.get('y')})"


def estimated_start(data: dict[str, Any]) -> int | None:
    """Seconds until the estimated start, when the service tells it."""
    seconds = data.get("estimatedStartSeconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return max(0, round(seconds))
    at = data.get("estimatedStartAt")
    if isinstance(at, str):
        try:
            moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            return None
        return max(0, round(moment.timestamp() - time.time()))
    return None


class BarReporter:
    """One rich progress bar per photo: status, sampler steps and time remaining."""

    def __init__(self, console: Console, photos: list[Path]) -> None:
        self.progress = Progress(
            TextColumn("{task.fields[name]}", style="bold"),
            TextColumn("{task.fields[state]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[Path, TaskID] = {
            photo: self.progress.add_task("", total=None, name=photo.name, state="waiting")
            for photo in photos
        }

    def __enter__(self) -> BarReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, photo: Path, record: dict[str, Any] | None = None, **change: Any) -> None:
        """Move the photo's bar."""
        task = self._tasks[photo]
        data = {**(record or {}), **change}
        status = data.get("status")
        fields: dict[str, Any] = {}
        if status == "queued" or "queuePosition" in change:
            fields["state"] = queue_text(data)
        elif status in {"uploading", "saving"}:
            fields["state"] = status
        elif status == "running":
            progress = data.get("progress") or {}
            fields["state"] = progress.get("nodeType") or "running"
            if isinstance(progress.get("max"), int) and isinstance(progress.get("value"), int):
                fields["total"] = progress["max"]
                fields["completed"] = progress["value"]
        elif "note" in change:
            fields["state"] = change["note"]
        if fields:
            self.progress.update(task, **fields)

    def framed(self, photo: Path, framing: dict[str, Any]) -> None:
        """Print the face and the crop above the bars."""
        for line in framing_lines(framing):
            self.progress.console.print(f"{photo.name}: {line}", markup=False, highlight=False)

    def finished(self, result: JobResult) -> None:
        """Fill or mark the bar with the outcome."""
        task = self._tasks[result.photo]
        state = "[green]done" if result.ok else f"[red]{result.status}"
        total = self.progress.tasks[task].total
        if result.ok:
            self.progress.update(task, state=state, total=total or 1, completed=total or 1)
        else:
            self.progress.update(task, state=state)
        self.progress.stop_task(task)


class LineReporter:
    """One line per change of a job, for output that is not a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._last: dict[Path, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LineReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, photo: Path, record: dict[str, Any] | None = None, **change: Any) -> None:
        """Print the change when it says something new."""
        data = {**(record or {}), **change}
        status = data.get("status")
        if "note" in change:
            line = change["note"]
        elif status == "queued" or "queuePosition" in change:
            line = queue_text(data)
            if record and record.get("jobId"):
                line = f"job {record['jobId']} {line}"
        elif status == "running":
            progress = data.get("progress") or {}
            value, top = progress.get("value"), progress.get("max")
            line = f"running {progress.get('nodeType') or ''}".rstrip()
            if isinstance(value, int) and isinstance(top, int) and top:
                # Every tenth of the way (and the last step), not every step.
                if value != top and value * 10 // top == (value - 1) * 10 // top:
                    return
                line += f" step {value}/{top}"
        elif status:
            line = str(status)
        else:
            return
        self._say(photo, line)

    def framed(self, photo: Path, framing: dict[str, Any]) -> None:
        """Say which face was found and which crop the job will use."""
        for line in framing_lines(framing):
            self._say(photo, line)

    def finished(self, result: JobResult) -> None:
        """Say how the photo's job ended."""
        if result.ok:
            self._say(result.photo, "done")
        else:
            self._say(result.photo, result.status)

    def _say(self, photo: Path, line: str) -> None:
        with self._lock:
            if self._last.get(photo) == line:
                return
            self._last[photo] = line
            self.console.print(f"{photo.name}: {line}", markup=False, highlight=False)
