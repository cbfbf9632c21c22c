"""The registry of live workers: processes sharing the database (PostgreSQL), and worker agents.

Each process writes one row per worker it runs (one ComfyUI server: its slots, the jobs it
holds, whether the server is usable, the styles it withholds) and renews it with every
heartbeat. A row whose lease has passed belongs to a process that is gone (killed, or cut off
from the database): readiness and admission ignore it, and the jobs of that process are taken
over once their own leases pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..persistence.database import Database
from ..times import iso


@dataclass(frozen=True)
class WorkerEntry:
    """One worker of the fleet as the registry knows it."""

    id: str
    process: str
    server: str
    slots: int
    jobs: int
    usable: bool
    reason: str | None
    started_at: float
    heartbeat_at: float
    lease_expires: float
    withheld: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The worker as readiness reports it."""
        return {
            "id": self.id,
            "server": self.server,
            "slots": self.slots,
            "jobs": self.jobs,
            "usable": self.usable,
            "reason": self.reason,
            "withheldStyles": self.withheld,
            "startedAt": iso(self.started_at),
            "heartbeatAt": iso(self.heartbeat_at),
        }


class WorkerRegistry:
    """Reads and writes the worker registry."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def beat(self, entries: Iterable[WorkerEntry]) -> None:
        """Write (or renew) the rows of this process's workers, in one transaction."""
        rows = [
            (
                entry.id,
                entry.process,
                entry.server,
                entry.slots,
                entry.jobs,
                int(entry.usable),
                entry.reason,
                json.dumps(entry.withheld),
                entry.started_at,
                entry.heartbeat_at,
                entry.lease_expires,
            )
            for entry in entries
        ]
        if not rows:
            return
        with self.database.transaction() as db:
            db.executemany(
                "INSERT INTO workers (id, process, server, slots, jobs, usable, reason, withheld, "
                "started_at, heartbeat_at, lease_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET slots = excluded.slots, jobs = excluded.jobs, "
                "usable = excluded.usable, reason = excluded.reason, "
                "withheld = excluded.withheld, heartbeat_at = excluded.heartbeat_at, "
                "lease_expires = excluded.lease_expires",
                rows,
            )

    def leave(self, ids: Iterable[str]) -> None:
        """Remove workers from the registry (their process stops)."""
        with self.database.transaction() as db:
            db.executemany("DELETE FROM workers WHERE id = ?", [(i,) for i in ids])

    def live(self, now: float | None = None) -> list[WorkerEntry]:
        """The workers whose lease has not passed, by server."""
        now = time.time() if now is None else now
        with self.database.transaction() as db:
            rows = db.execute(
                f"{_SELECT} WHERE lease_expires >= ? ORDER BY server, id", (now,)
            ).fetchall()
        return [_entry(row) for row in rows]

    def get(self, worker_id: str) -> WorkerEntry | None:
        """One worker's row, live or not (None: never written, left, or pruned)."""
        with self.database.transaction() as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (worker_id,)).fetchone()
        return None if row is None else _entry(row)

    def prune(self, before: float) -> None:
        """Forget workers whose lease passed before ``before`` (their process is long gone)."""
        with self.database.transaction() as db:
            db.execute("DELETE FROM workers WHERE lease_expires < ?", (before,))


_SELECT = (
    "SELECT id, process, server, slots, jobs, usable, reason, started_at, heartbeat_at, "
    "lease_expires, withheld FROM workers"
)


def _entry(row: Sequence[Any]) -> WorkerEntry:
    return WorkerEntry(
        id=row[0],
        process=row[1],
        server=row[2],
        slots=int(row[3]),
        jobs=int(row[4]),
        usable=bool(row[5]),
        reason=row[6],
        started_at=row[7],
        heartbeat_at=row[8],
        lease_expires=row[9],
        withheld=json.loads(row[10]),
    )
