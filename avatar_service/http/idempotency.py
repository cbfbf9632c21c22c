"""Idempotency-Key on generate: one key and request make one job, however often it is sent.

A key is reserved in the database before the job is made (so two concurrent requests with one
key cannot both start a job), bound to the job once it exists, and forgotten when making the job
failed or IDEMPOTENCY_TTL has passed. Keys belong to the caller (its API key, or "anonymous").
Requests are compared as parsed (``request_fingerprint``), so bodies that differ only in how
they say the same thing (``64.0`` for ``64``, a default spelled out) are one request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass

from ..jobs import GenerateRequest
from ..persistence.database import Database

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Reservation:
    """The outcome of presenting a key: new (make the job), or the job it already names."""

    new: bool
    job_id: str | None = None
    same_body: bool = True


def request_fingerprint(request: GenerateRequest, respond_async: bool) -> str:
    """A fingerprint of a validated generate request and its ``async`` flag."""
    fields = {**dataclasses.asdict(request), "async": respond_async}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    """Reserves, binds and looks up idempotency keys (kept IDEMPOTENCY_TTL seconds)."""

    def __init__(self, database: Database, *, ttl: float, clock=time.time) -> None:
        self._db = database
        self.ttl = ttl
        self._clock = clock
        # Counts binds and releases made here, so a request waiting on a key of this process
        # wakes as soon as it is settled (one in another process is read again).
        self.version = 0
        self._changed = threading.Condition()

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Wait until a key is bound or released here after ``version`` was ``seen``."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen, timeout)

    def _settled(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    def reserve(self, scope: str, key: str, fingerprint: str) -> Reservation:
        """Reserve ``key`` for a new job, or say which job (if any yet) it already names."""
        now = self._clock()
        with self._db.transaction() as db:
            db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - self.ttl,))
            inserted = db.execute(
                "INSERT INTO idempotency_keys (scope, key, body_hash, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (scope, key, fingerprint, now),
            ).rowcount
            if inserted:
                return Reservation(new=True)
            stored_hash, job_id = db.execute(
                "SELECT body_hash, job_id FROM idempotency_keys WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
        return Reservation(new=False, job_id=job_id, same_body=stored_hash == fingerprint)

    def job_of(self, scope: str, key: str) -> str | None:
        """The job a key already names (None: unknown, expired, or its job not made yet)."""
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT job_id FROM idempotency_keys "
                "WHERE scope = ? AND key = ? AND created_at >= ?",
                (scope, key, self._clock() - self.ttl),
            ).fetchone()
        return row[0] if row else None

    def bind(self, scope: str, key: str, job_id: str) -> None:
        """Name the job made for a reserved key."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE idempotency_keys SET job_id = ? WHERE scope = ? AND key = ?",
                (job_id, scope, key),
            )
        self._settled()

    def release(self, scope: str, key: str) -> None:
        """Forget a reservation whose job could not be made, so a retry may try again."""
        with self._db.transaction() as db:
            db.execute(
                "DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND job_id IS NULL",
                (scope, key),
            )
        self._settled()
