"""Job records in SQLite (in the Flask instance folder), so a restart loses no record."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    style TEXT NOT NULL,
    image_name TEXT NOT NULL,
    gender TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    seed TEXT NOT NULL,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    server TEXT,
    prompt_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    deadline REAL NOT NULL,
    queue_position INTEGER,
    progress TEXT,
    error TEXT,
    avatars TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    crop TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""

# Columns added after the first release: (name, SQL type), added to older databases at open.
_ADDED_COLUMNS = (("crop", "TEXT"),)
_JSON_COLUMNS = frozenset({"progress", "error", "avatars", "timings", "crop"})


@dataclass(frozen=True)
class Job:
    """One generation request and everything known about it."""

    id: str
    status: str
    style: str
    image_name: str
    gender: str
    width: int
    height: int
    seed: int
    base_url: str
    deadline: float
    created_at: float = field(default_factory=time.time)
    callback_url: str | None = None
    server: str | None = None
    prompt_id: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    avatars: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    crop: dict[str, Any] | None = None

    @property
    def ended(self) -> bool:
        """Whether the job is in a terminal state."""
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """The public JSON record of the job."""
        avatars = [
            {**avatar, "url": f"{self.base_url}/avatars/{avatar['fileName']}"}
            for avatar in self.avatars
        ]
        return {
            "jobId": self.id,
            "status": self.status,
            "style": self.style,
            "imageName": self.image_name,
            "gender": self.gender,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "createdAt": _iso(self.created_at),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "queuePosition": self.queue_position,
            "progress": self.progress,
            "error": self.error,
            "avatars": avatars,
            "timings": self.timings,
            "crop": self.crop,
            "links": {
                "self": f"{self.base_url}/jobs/{self.id}",
                "events": f"{self.base_url}/jobs/{self.id}/events",
                "preview": f"{self.base_url}/jobs/{self.id}/preview",
            },
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class JobStore:
    """Reads and writes Job records; safe to use from many threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            db.executescript(_SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def insert(self, job: Job) -> None:
        """Add a new job."""
        row = _to_row(job)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if row else None

    def update(self, job: Job, **changes: Any) -> Job:
        """Apply changes to a job and persist them; return the new record."""
        updated = replace(job, **changes)
        row = _to_row(updated)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [row[name] for name in changes]
        with self._transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job.id))
        return updated

    def unfinished(self) -> list[Job]:
        """Every job not yet in a terminal state, oldest first."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') "
                "ORDER BY created_at"
            ).fetchall()
        return [_from_row(row) for row in rows]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        with connection:
            yield connection


_COLUMN_NAMES = tuple(f.name for f in fields(Job))


def _to_row(job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in _COLUMN_NAMES:
        value = getattr(job, name)
        if name in _JSON_COLUMNS:
            value = None if value is None else json.dumps(value)
        elif name == "seed":
            value = str(value)
        elif name == "cancel_requested":
            value = int(value)
        row[name] = value
    return row


def _from_row(row: Mapping[str, Any]) -> Job:
    values: dict[str, Any] = {}
    for name in _COLUMN_NAMES:
        value = row[name]
        if name in _JSON_COLUMNS and value is not None:
            value = json.loads(value)
        elif name == "seed":
            value = int(value)
        elif name == "cancel_requested":
            value = bool(value)
        values[name] = value
    return Job(**values)
