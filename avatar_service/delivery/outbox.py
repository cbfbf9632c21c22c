"""Durable outbound deliveries: webhooks and avatar forwarding, one design.

A delivery is a row in the service's database: its kind, target URL, a body fixed when it
is enqueued, its state (pending, delivered, failed), attempts made and the time of the next
one, and a deadline. An ``Outbox`` per kind has a scheduler thread that hands due deliveries to
a small pool; every attempt is recorded (``delivery_attempts``); failures are retried with
exponential backoff until ``max_attempts`` or the delivery's deadline; pending deliveries are
sent after a restart. On PostgreSQL several processes share the outbox: a delivery is taken for
an attempt with ``FOR UPDATE SKIP LOCKED`` and pushed ``CLAIM_LEASE`` seconds ahead, so one
process makes each attempt, and a process that dies mid-attempt leaves it due again.
A job's deliveries are enqueued in the transaction that ends the job (``Outbox._store`` joins
the caller's transaction), so a job never ends without them; they are sent beside the jobs,
never inside them: a job is "succeeded" for its caller before its avatar is forwarded or its
webhook sent. Kinds differ only in how one attempt is made (``Outbox._send``):
``webhooks.WebhookDispatcher`` signs a JSON body, ``forwarding.AvatarForwarder`` posts the
avatar file as multipart.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..persistence.database import Database, DatabaseUnavailable, as_database
from ..persistence.migrations import migrate
from ..times import iso
from .retry import backoff_delay, describe_transport_error, redact_url

logger = logging.getLogger(__name__)

# A delivery taken for an attempt by one process is not due for the others this long (longer
# than any attempt's timeout); a process that died mid-attempt leaves it due again after.
CLAIM_LEASE = 300.0
# The longest the scheduler sleeps without looking at the table again.
IDLE_WAIT = 30.0


@dataclass(frozen=True)
class Due:
    """A delivery due for an attempt."""

    id: str
    url: str
    body: bytes
    attempt_count: int
    deadline: float | None


@dataclass(frozen=True)
class Sent:
    """What one attempt got: HTTP status (None without an answer), error (None on success),
    the Retry-After asked for, whether trying again may help, and the receiver's answer."""

    status: int | None
    error: str | None
    retry_after: float | None = None
    retryable: bool = True
    response: object | None = None


class Outbox:
    """Delivers enqueued deliveries of one ``kind`` from SQLite with retries; pending ones
    survive restarts.

    One outbox per kind and database file: a scheduler thread picks due deliveries in order of
    ``next_attempt_at`` and hands them to a small pool of ``workers`` threads, so one slow
    receiver does not hold up the others. A subclass says how one attempt is made (``_send``).
    Delivery is at least once.
    """

    kind = ""

    def __init__(
        self,
        *,
        db_path: Path | None = None,
        database: Database | None = None,
        timeout: httpx.Timeout,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        max_age: float | None = None,
        workers: int = 4,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, got {max_attempts}")
        if backoff < 0 or backoff_max < 0:
            raise ValueError("backoff and backoff_max must be 0 or more")
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self._owns_database = database is None  # opened here from a path: closed by stop()
        if database is None:
            if db_path is None:
                raise ValueError("an outbox needs a database (or the path of a SQLite file)")
            database = as_database(Path(db_path))
        self.database = database
        self.db_path = self.database.path
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_age = max_age
        # Called with "delivered" or "failed" when a delivery ends (e.g. metrics).
        self.on_settled: list[Callable[[str], None]] = []
        self._timeout = timeout
        self._workers = workers
        # Guards the scheduler state below; the scheduler waits on it between rounds.
        self._cond = threading.Condition()
        self._stopping = False
        self._wake = False
        self._in_flight: set[str] = set()
        self._futures: set[Future[None]] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None
        migrate(self.database)  # at once when the service's factory has done it already

    # -- lifecycle

    def start(self) -> None:
        """Deliver every pending delivery in a background thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.kind} outbox already started")
        with self._transaction() as connection:
            (pending,) = connection.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND kind = ?",
                (self.kind,),
            ).fetchone()
        if pending:
            logger.info("resuming %d pending %s deliveries", pending, self.kind)
        self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
        self._pool = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix=f"{self.kind}-delivery"
        )
        with self._cond:
            self._stopping = False
            self._wake = True
            self._in_flight.clear()
            self._futures.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling at once and wait up to ``timeout`` seconds for attempts in flight."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            futures = set(self._futures)
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0))
            self._thread = None
        pool, client = self._pool, self._client
        self._pool = self._client = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        _, not_done = wait_futures(futures, timeout=max(deadline - time.monotonic(), 0))
        if self._owns_database and not not_done:
            self.database.close()
        if client is None:
            return
        if not not_done:
            client.close()
            return
        # Attempts still waiting on a receiver are bounded by the request timeout; they are
        # recorded when they end, and the last one closes the client.
        logger.warning(
            "%d %s deliveries still in flight at stop; they finish in the background",
            len(not_done),
            self.kind,
        )
        _close_when_done(client, not_done)

    def __enter__(self) -> Outbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- public operations

    def _store(self, *, msg_id: str, job_id: str, url: str, label: str, body: bytes) -> str:
        """Store a delivery and wake the scheduler once it is committed; its id.

        Called inside a transaction of this thread (the one that ends a job), the delivery is
        part of it: committed with it, or gone with it.
        """
        now = time.time()
        deadline = None if self.max_age is None else now + self.max_age
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO deliveries (id, kind, job_id, url, event_type, body, state,"
                " attempt_count, next_attempt_at, deadline, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
                (msg_id, self.kind, job_id, url, label, body, now, deadline, now, now),
            )
            # Woken before the commit, the scheduler might look and not see it yet.
            self.database.after_commit(self._notify)
        logger.debug("%s delivery %s for job %s enqueued (%s)", self.kind, msg_id, job_id, label)
        return msg_id

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The deliveries of a job with every attempt, oldest first, JSON-ready."""
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT d.id, d.url, d.event_type, d.state, d.next_attempt_at,"
                " a.at, a.status, a.error, a.duration_ms, a.response"
                " FROM deliveries AS d"
                " LEFT JOIN delivery_attempts AS a ON a.delivery_id = d.id"
                " WHERE d.job_id = ? AND d.kind = ? ORDER BY d.created_at, d.id, a.attempt",
                (job_id, self.kind),
            ).fetchall()
        result: dict[str, dict[str, Any]] = {}
        for msg_id, url, label, state, next_at, at, status, error, duration, response in rows:
            delivery = result.setdefault(
                msg_id,
                {
                    "id": msg_id,
                    "url": redact_url(url),
                    "eventType": label,
                    "state": state,
                    "attempts": [],
                    "nextAttemptAt": None if next_at is None else iso(next_at),
                },
            )
            if at is not None:
                attempt = {
                    "at": iso(at),
                    "status": status,
                    "error": error,
                    "durationMs": duration,
                }
                if response is not None:
                    attempt["response"] = json.loads(response)
                delivery["attempts"].append(attempt)
        return list(result.values())

    # -- internals

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A connection of the service's database, committed on success."""
        with self.database.transaction() as connection:
            yield connection

    def _notify(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _run(self) -> None:
        """Scheduler loop: hand due deliveries to the pool, then sleep until the next is due."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._wake = False
                free = self._workers - len(self._in_flight)
                busy = set(self._in_flight)
            try:
                due, next_at, backlog = self._find_due(free, busy)
            except (DatabaseUnavailable, Exception):  # the database is locked, gone or broken
                logger.exception("%s outbox could not read the delivery table", self.kind)
                due, next_at, backlog = [], time.time() + 1.0, False
            with self._cond:
                if self._stopping:
                    return
                for item in due:
                    self._submit(item)
                if self._wake:
                    continue
                if backlog or next_at is None:
                    # A finishing attempt or an enqueue wakes us; the bound is only a safety net.
                    wait = IDLE_WAIT
                else:
                    wait = min(max(next_at - time.time(), 0.0), IDLE_WAIT)
                self._cond.wait(wait)

    def _find_due(self, free: int, busy: set[str]) -> tuple[list[Due], float | None, bool]:
        """Due deliveries not in flight (at most ``free``), the next due time, whether more wait."""
        now = time.time()
        with self._transaction() as connection:
            if self.database.dialect.shared:
                return self._claim_due(connection, free, now)
            rows = connection.execute(
                "SELECT id, url, body, attempt_count, deadline FROM deliveries"
                " WHERE state = 'pending' AND kind = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, created_at LIMIT ?",
                (self.kind, now, max(free, 0) + len(busy) + 1),
            ).fetchall()
            (next_at,) = connection.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries"
                " WHERE state = 'pending' AND kind = ? AND next_attempt_at > ?",
                (self.kind, now),
            ).fetchone()
        waiting = [Due(*row) for row in rows if row[0] not in busy]
        return waiting[: max(free, 0)], next_at, len(waiting) > free

    def _claim_due(
        self, connection: Any, free: int, now: float
    ) -> tuple[list[Due], float | None, bool]:
        """Take due deliveries for this process (several share the outbox): each one is
        pushed ``CLAIM_LEASE`` ahead, so no other process attempts it meanwhile."""
        rows = []
        if free > 0:
            rows = connection.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE id IN (SELECT id FROM deliveries"
                " WHERE state = 'pending' AND kind = ? AND next_attempt_at <= ?"
                f" ORDER BY next_attempt_at, created_at LIMIT ?{self.database.dialect.skip_locked})"
                " RETURNING id, url, body, attempt_count, deadline",
                (now + CLAIM_LEASE, self.kind, now, free),
            ).fetchall()
        (next_at,) = connection.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries"
            " WHERE state = 'pending' AND kind = ? AND next_attempt_at > ?",
            (self.kind, now),
        ).fetchone()
        due = [Due(row[0], row[1], bytes(row[2]), row[3], row[4]) for row in rows]
        return due, next_at, len(due) >= free

    def _submit(self, item: Due) -> None:
        """Start one attempt in the pool; the caller holds ``self._cond``."""
        assert self._pool is not None
        self._in_flight.add(item.id)
        future = self._pool.submit(self._deliver, item)
        self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._cond:
            self._futures.discard(future)

    def _deliver(self, item: Due) -> None:
        """Make one attempt and record it; never raises, always frees the delivery's slot."""
        try:
            self._attempt(item)
        except Exception:
            logger.exception("%s %s: attempt could not be made or recorded", self.kind, item.id)
        finally:
            with self._cond:
                self._in_flight.discard(item.id)
                self._wake = True
                self._cond.notify_all()

    def _attempt(self, item: Due) -> None:
        client = self._client
        assert client is not None
        started_at = time.time()
        started = time.monotonic()
        try:
            sent = self._send(client, item)
        except httpx.RequestError as exc:
            sent = Sent(status=None, error=describe_transport_error(exc))
        duration_ms = round((time.monotonic() - started) * 1000)
        self._record(item, started_at, sent, duration_ms)

    def _send(self, client: httpx.Client, item: Due) -> Sent:
        """Make one attempt of a delivery (subclasses)."""
        raise NotImplementedError

    def _record(self, item: Due, started_at: float, sent: Sent, duration_ms: int) -> None:
        """Store the attempt and the delivery's new state in one transaction, then log it."""
        attempt = item.attempt_count + 1
        now = time.time()
        next_at: float | None = None
        delay = 0.0
        if sent.error is None:
            state = "delivered"
        elif attempt >= self.max_attempts or not sent.retryable:
            state = "failed"
        else:
            delay = backoff_delay(
                attempt, self.backoff, self.backoff_max, sent.retry_after, jitter=random.random()
            )
            next_at = now + delay
            past_deadline = item.deadline is not None and next_at > item.deadline
            state = "failed" if past_deadline else "pending"
            next_at = None if past_deadline else next_at
        response = None if sent.response is None else json.dumps(sent.response)
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempt, at, status, error,"
                " duration_ms, response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item.id, attempt, started_at, sent.status, sent.error, duration_ms, response),
            )
            connection.execute(
                "UPDATE deliveries SET state = ?, attempt_count = ?, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ?",
                (state, attempt, next_at, now, item.id),
            )
        if state != "pending":
            for hook in self.on_settled:
                try:
                    hook(state)
                except Exception:  # an observer must never change a delivery's course
                    logger.exception("%s %s: a settle hook failed", self.kind, item.id)
        url = redact_url(item.url)
        if state == "delivered":
            logger.info("%s %s delivered to %s (attempt %d)", self.kind, item.id, url, attempt)
        elif state == "failed":
            logger.error(
                "%s %s to %s failed for good after %d attempts: %s",
                self.kind,
                item.id,
                url,
                attempt,
                sent.error,
            )
        else:
            logger.warning(
                "%s %s to %s failed (attempt %d of %d, next in %.2fs): %s",
                self.kind,
                item.id,
                url,
                attempt,
                self.max_attempts,
                delay,
                sent.error,
            )


def _close_when_done(client: httpx.Client, futures: set[Future[None]]) -> None:
    """Close ``client`` once every future in ``futures`` has finished."""
    remaining = len(futures)
    lock = threading.Lock()

    def done(_: Future[None]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            client.close()

    for future in futures:
        future.add_done_callback(done)
