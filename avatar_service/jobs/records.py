"""Job records: ``JobRecords``, the store of ``Job`` records (SQLite, or PostgreSQL).

``JobRecords`` is also the service's own queue: a job waits in it (``status`` queued, no
``server``) until a worker claims it for a server. A claim is one atomic statement, "take the
oldest waiting job this server may run", that names the claiming worker (``owner``) and a lease;
on PostgreSQL its sub-select is ``FOR UPDATE SKIP LOCKED``, so workers in many processes never
take one job twice. With SQLite one process holds the database (the instance lock), so a lease
is recorded but never reclaimed; on PostgreSQL workers renew their leases and take over expired
ones (``leases``). Schema changes go through ``migrations``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..persistence.database import Connection, Database, as_database
from ..persistence.migrations import migrate
from ..photos.geometry import Crop
from .job import Avatar, Job, JobError, JobProgress, JobStatus

# A job sent back to the queue by a failover goes before every new job, in its original order.
HEAD_OF_QUEUE_OFFSET = 1e10
# Marks a waiting job taken out of the queue by the service itself (cancel, deadline).
SERVICE_OWNER = "service"
# The owners of jobs that worker agents hold begin with this (the agent's id).
AGENT_OWNER_PREFIX = "agent-"


def is_agent_owner(owner: str | None) -> bool:
    """Whether a job's owner is a worker agent (``agents.py``), not a process of the service."""
    return owner is not None and owner.startswith(AGENT_OWNER_PREFIX)


class LeaseLost(RuntimeError):
    """A job's holder lost it: another process took it over after its lease passed."""

    def __init__(self, job_id: str, owner: str) -> None:
        super().__init__(f"job {job_id} is no longer held by {owner}")
        self.job_id = job_id
        self.owner = owner


@dataclass(frozen=True)
class AbandonedPrompt:
    """A prompt left on a server that was given up: removed there when the server comes back."""

    server: str
    prompt_id: str
    job_id: str


@dataclass(frozen=True)
class Waiting:
    """What the queue's monitor needs of a waiting job (read often, so kept small)."""

    id: str
    style: str
    deadline: float
    cancel_requested: bool


class JobRecords:
    """Reads and writes Job records, and is the service's queue; safe to use from many threads."""

    def __init__(self, database: Database | Path | str) -> None:
        self.database = as_database(database)
        self.dialect = self.database.dialect
        migrate(self.database)

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return self.database.path

    def close(self) -> None:
        """Close every connection this store opened."""
        self.database.close()

    # -- records ---------------------------------------------------------------------------

    def insert(self, job: Job) -> None:
        """Add a new job."""
        row = to_row(job)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._transaction() as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return from_row(row) if row else None

    def update(self, job: Job, *, expect_owner: str | None = None, **changes: Any) -> Job:
        """Apply changes to a job and persist them; return the new record.

        ``expect_owner``: write only while that owner still holds the job (else ``LeaseLost``:
        another process took it over).
        """
        updated = replace(job, **changes)
        row = to_row(updated)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [row[name] for name in changes]
        guard, extra = ("", ()) if expect_owner is None else (" AND owner = ?", (expect_owner,))
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?{guard}", (*values, job.id, *extra)
            )
            if expect_owner is not None and cursor.rowcount == 0:
                raise LeaseLost(job.id, expect_owner)
        return updated

    def unfinished(self) -> list[Job]:
        """Every job not yet in a terminal state, oldest first."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') "
                "ORDER BY created_at"
            ).fetchall()
        return [from_row(row) for row in rows]

    # -- the queue -------------------------------------------------------------------------

    def waiting(self) -> list[Job]:
        """The jobs waiting in the service's queue, in the order they will be taken."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND server IS NULL AND owner IS NULL "
                "ORDER BY queue_order, created_at"
            ).fetchall()
        return [from_row(row) for row in rows]

    def waiting_brief(self) -> list[Waiting]:
        """The waiting jobs in queue order, only what the monitor needs of each."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, style, deadline, cancel_requested FROM jobs WHERE status = 'queued' "
                "AND server IS NULL AND owner IS NULL ORDER BY queue_order, created_at"
            ).fetchall()
        return [Waiting(row[0], row[1], row[2], bool(row[3])) for row in rows]

    def unfinished_counts(self) -> tuple[int, int]:
        """How many jobs have not ended (waiting, or held by a server), and how many of them
        wait in the service's queue: one query."""
        with self._transaction() as db:
            unfinished, waiting = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'queued' AND server IS NULL "
                "AND owner IS NULL THEN 1 ELSE 0 END), 0) FROM jobs "
                "WHERE status IN ('queued', 'running')"
            ).fetchone()
        return int(unfinished), int(waiting)

    def count_waiting(self) -> int:
        """How many jobs wait in the service's queue."""
        return self.unfinished_counts()[1]

    def claim_next(
        self,
        server: str,
        owner: str,
        *,
        exclude_styles: Iterable[str] = (),
        lease_seconds: float = 60.0,
        now: float | None = None,
    ) -> Job | None:
        """Atomically take the oldest waiting job this server may run; None if there is none."""
        now = time.time() if now is None else now
        excluded = sorted(set(exclude_styles))
        style_filter = f"AND style NOT IN ({', '.join('?' for _ in excluded)})" if excluded else ""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET server = ?, owner = ?, lease_expires = ?, dispatched_at = ?, "
                "queue_position = NULL, estimated_start_at = NULL "
                "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND server IS NULL "
                f"AND owner IS NULL {style_filter} ORDER BY queue_order, created_at LIMIT 1"
                f"{self.dialect.skip_locked}) "
                "RETURNING *",
                (server, owner, now + lease_seconds, now, *excluded),
            ).fetchall()
        return from_row(row[0]) if row else None

    def take_waiting(self, job_id: str, *, lease_seconds: float = 60.0) -> Job | None:
        """Atomically take a waiting job out of the queue (to cancel or expire it); None if a
        worker claimed it first or it is not waiting. (Its lease lets another process put it
        back should this one die before ending it.)"""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET owner = ?, lease_expires = ? WHERE id = ? AND status = 'queued' "
                "AND server IS NULL AND owner IS NULL RETURNING *",
                (SERVICE_OWNER, time.time() + lease_seconds, job_id),
            ).fetchall()
        return from_row(row[0]) if row else None

    # -- leases (processes sharing the database) -------------------------------------------

    def renew_leases(self, owner_prefix: str, job_ids: Iterable[str], until: float) -> set[str]:
        """Extend the leases of the jobs ``job_ids`` (those this process follows) while their
        owner still starts with ``owner_prefix``; the ids still held (a job taken over by
        another process is not). A job nothing follows is not renewed: its lease passes and it
        is taken over."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        marks = ", ".join("?" for _ in ids)
        with self._transaction() as db:
            rows = db.execute(
                f"UPDATE jobs SET lease_expires = ? WHERE owner LIKE ? AND id IN ({marks}) "
                "AND status IN ('queued', 'running') RETURNING id",
                (until, _prefix_pattern(owner_prefix), *ids),
            ).fetchall()
        return {row[0] for row in rows}

    def held_by(self, owner_prefix: str, *, image_name: str | None = None) -> list[Job]:
        """The unfinished jobs whose owner starts with ``owner_prefix`` (of one photo, if
        ``image_name`` is given)."""
        image, values = ("", ()) if image_name is None else (" AND image_name = ?", (image_name,))
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE owner LIKE ? AND status IN ('queued', 'running')"
                f"{image} ORDER BY queue_order",
                (_prefix_pattern(owner_prefix), *values),
            ).fetchall()
        return [from_row(row) for row in rows]

    def held_ids(self, owner_prefix: str) -> dict[str, bool]:
        """The unfinished jobs whose owner starts with ``owner_prefix``: id -> cancel asked."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, cancel_requested FROM jobs WHERE owner LIKE ? "
                "AND status IN ('queued', 'running')",
                (_prefix_pattern(owner_prefix),),
            ).fetchall()
        return {row[0]: bool(row[1]) for row in rows}

    def cancel_requests(self, owner_prefix: str) -> list[str]:
        """Ids of unfinished jobs held under ``owner_prefix`` whose cancel was asked."""
        return [job_id for job_id, asked in self.held_ids(owner_prefix).items() if asked]

    def expired(self, now: float, limit: int = 50, *, owner_prefix: str = "") -> list[Job]:
        """Unfinished jobs whose holder's lease has passed (its process is gone), oldest first;
        only those whose owner begins with ``owner_prefix``, if given."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') AND owner LIKE ? "
                "AND lease_expires IS NOT NULL AND lease_expires < ? "
                "ORDER BY queue_order LIMIT ?",
                (_prefix_pattern(owner_prefix), now, limit),
            ).fetchall()
        return [from_row(row) for row in rows]

    def overdue(self, before: float, limit: int = 50) -> list[Job]:
        """Unfinished jobs held by someone (a server's, a process's) whose deadline passed
        before ``before``: their holder did not end them in time."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') AND deadline < ? "
                "AND (server IS NOT NULL OR owner IS NOT NULL) ORDER BY deadline LIMIT ?",
                (before, limit),
            ).fetchall()
        return [from_row(row) for row in rows]

    def seize(self, job: Job, owner: str, *, until: float) -> Job | None:
        """Become the holder of an unfinished job whatever its lease (its holder kept it past
        its deadline); None when it ended or changed hands meanwhile. The former holder's own
        end of it is refused from now on (``LeaseLost``)."""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET owner = ?, lease_expires = ? WHERE id = ? "
                "AND COALESCE(owner, '') = ? AND status IN ('queued', 'running') RETURNING *",
                (owner, until, job.id, job.owner or ""),
            ).fetchall()
        return from_row(row[0]) if row else None

    def take_over(self, job: Job, owner: str, *, until: float, now: float) -> Job | None:
        """Atomically become the holder of a job whose lease has passed; None when another
        process took it over first, or its holder came back and renewed it."""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET owner = ?, lease_expires = ? WHERE id = ? AND owner = ? "
                "AND lease_expires < ? AND status IN ('queued', 'running') RETURNING *",
                (owner, until, job.id, job.owner, now),
            ).fetchall()
        return from_row(row[0]) if row else None

    # -- live previews (served by any process) ---------------------------------------------

    def save_preview(self, job_id: str, content_type: str, data: bytes) -> None:
        """Keep the latest live preview of a running job."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO job_previews (job_id, content_type, data, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "content_type = excluded.content_type, data = excluded.data, "
                "updated_at = excluded.updated_at",
                (job_id, content_type, data, time.time()),
            )

    def preview(self, job_id: str) -> tuple[str, bytes] | None:
        """The latest live preview kept for a job (content type, bytes), or None."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT content_type, data FROM job_previews WHERE job_id = ?", (job_id,)
            ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def forget_preview(self, job_id: str) -> None:
        """The job ended: its live preview is no longer served."""
        with self._transaction() as db:
            db.execute("DELETE FROM job_previews WHERE job_id = ?", (job_id,))

    def requeue(self, job: Job, *, front: bool) -> Job:
        """Put a claimed job back into the queue: at its head (failover) or at its end.

        Its prompt count starts again: the next server may lose it once too.
        """
        order = job.created_at - HEAD_OF_QUEUE_OFFSET if front else time.time()
        return self.update(
            job,
            status=JobStatus.QUEUED,
            server=None,
            prompt_id=None,
            attempts=0,
            owner=None,
            lease_expires=None,
            dispatched_at=None,
            queue_position=None,
            progress=None,
            started_at=None,
            queue_order=order,
        )

    def set_positions(self, positions: Iterable[tuple[str, int, float | None]]) -> None:
        """Store the queue position and estimated start of waiting jobs, in one transaction."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE jobs SET queue_position = ?, estimated_start_at = ? "
                "WHERE id = ? AND status = 'queued' AND server IS NULL",
                [(position, start, job_id) for job_id, position, start in positions],
            )

    # -- prompts left behind on servers that were given up ---------------------------------

    def abandon_prompt(self, server: str, prompt_id: str, job_id: str) -> None:
        """Remember a prompt to remove from ``server`` when it answers again."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO abandoned_prompts (server, prompt_id, job_id, abandoned_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (server, prompt_id) DO UPDATE SET "
                "job_id = excluded.job_id, abandoned_at = excluded.abandoned_at",
                (server, prompt_id, job_id, time.time()),
            )

    def abandoned_prompts(self, server: str) -> list[AbandonedPrompt]:
        """The prompts still to remove from ``server``."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT server, prompt_id, job_id FROM abandoned_prompts WHERE server = ? "
                "ORDER BY abandoned_at",
                (server,),
            ).fetchall()
        return [AbandonedPrompt(*row) for row in rows]

    def forget_abandoned(self, server: str, prompt_id: str) -> None:
        """The prompt was removed from its server."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM abandoned_prompts WHERE server = ? AND prompt_id = ?",
                (server, prompt_id),
            )

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.database.transaction() as db:
            yield db


def _prefix_pattern(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` (ids use no wildcards)."""
    if "%" in prefix or "_" in prefix:
        raise ValueError(f"owner prefix {prefix!r} contains a LIKE wildcard")
    return f"{prefix}%"


_COLUMN_NAMES = tuple(f.name for f in fields(Job))


def to_row(job: Job) -> dict[str, Any]:
    """A job as its database row: JSON columns as text, the seed as text (it may pass 2**63)."""
    row: dict[str, Any] = {name: getattr(job, name) for name in _COLUMN_NAMES}
    row["status"] = str(job.status)
    row["seed"] = str(job.seed)
    row["cancel_requested"] = int(job.cancel_requested)
    row["progress"] = _json(None if job.progress is None else job.progress.to_dict())
    row["error"] = _json(None if job.error is None else job.error.to_dict())
    row["avatars"] = json.dumps([avatar.to_dict() for avatar in job.avatars])
    row["timings"] = json.dumps(job.timings)
    row["crop"] = _json(None if job.crop is None else job.crop.to_dict())
    return row


def from_row(row: Mapping[str, Any]) -> Job:
    """The job of a database row (see ``to_row``)."""
    values = {name: row[name] for name in _COLUMN_NAMES}
    progress, error, crop = (_parsed(row[name]) for name in ("progress", "error", "crop"))
    values.update(
        status=JobStatus(row["status"]),
        seed=int(row["seed"]),
        cancel_requested=bool(row["cancel_requested"]),
        progress=None if progress is None else JobProgress.from_dict(progress),
        error=None if error is None else JobError.from_dict(error),
        avatars=[Avatar.from_dict(avatar) for avatar in json.loads(row["avatars"])],
        timings=json.loads(row["timings"]),
        crop=None if crop is None else Crop.from_dict(crop),
    )
    return Job(**values)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _parsed(text: str | None) -> Any:
    return None if text is None else json.loads(text)
