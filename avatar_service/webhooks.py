"""Signed job-finished webhooks (Standard Webhooks), kept in SQLite until delivered.

Every delivery is a JSON ``POST`` with the headers ``webhook-id`` (the same on every retry),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). The secret is ``whsec_<base64 key>``;
a secret without that prefix is used as is (its UTF-8 bytes are the key). Receivers check a
delivery against the raw body bytes, before parsing them, and deduplicate on ``webhook-id``::

    if not verify(secret, request.headers, request.get_data()):
        abort(401)

Delivery failures never raise: they are recorded per attempt and retried with backoff until
``max_attempts``. What does raise::

    WebhookError
    ├── InvalidSecret (also ValueError)    a whsec_ secret that is not base64, or an empty one
    └── InvalidWebhook (also ValueError)   enqueue with an unknown event type, a non-http(s)
                                           url, or data that is not JSON-serialisable
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .retry import backoff_delay, describe_transport_error, parse_retry_after, redact_url

logger = logging.getLogger(__name__)

EVENT_TYPES = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"

# How long a connection waits for another writer (the job store shares the file).
DB_TIMEOUT = 30.0
# The longest the scheduler sleeps without looking at the table again.
IDLE_WAIT = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,          -- the webhook-id, the same on every attempt
    job_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            BLOB NOT NULL,             -- fixed at enqueue, sent unchanged on every attempt
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempt_count   INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                      -- unix seconds; NULL once delivered or failed
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt     INTEGER NOT NULL,              -- 1-based
    at          REAL NOT NULL,                 -- unix seconds the attempt started
    status      INTEGER,                       -- HTTP status, NULL when no answer came
    error       TEXT,                          -- NULL on success
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"""


class WebhookError(Exception):
    """Base of the errors this module raises."""


class InvalidSecret(WebhookError, ValueError):
    """The webhook secret cannot be turned into a signing key."""


class InvalidWebhook(WebhookError, ValueError):
    """A webhook that cannot be enqueued (event type, url or data)."""


# --- signing -------------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after ``whsec_``, else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecret("webhook secret after 'whsec_' is not valid base64") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64 HMAC-SHA256>``."""
    return f"{SIGNATURE_VERSION},{_signature(secret_key(secret), msg_id, timestamp, body)}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is authentic: a v1 signature matches and the timestamp is fresh.

    ``headers`` may be any mapping (names are matched case-insensitively) and ``body`` must be the
    raw bytes as received. The timestamp must be within ``tolerance`` seconds of ``now``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signatures:
        return False
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _signature(secret_key(secret), msg_id, timestamp, body).encode("ascii")
    matched = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Compare every candidate (no early exit) so timing says nothing about which one matched.
        if version == SIGNATURE_VERSION and hmac.compare_digest(
            value.encode("utf-8", errors="replace"), expected
        ):
            matched = True
    return matched


# --- callback allow-list -------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def _parse_target(url: str) -> _Target | None:
    """Scheme, host, port and path of a plain http(s) URL; None for anything ambiguous."""
    if not url or any(
        ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url
    ):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    # "@" anywhere in the authority is refused: user info is how "trusted.com@evil.com" works.
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    path = parts.path or "/"
    lowered = path.lower()
    # Encoded slashes and dot segments let the path a server acts on differ from the one checked.
    if not path.startswith("/") or "%2f" in lowered or "%5c" in lowered:
        return None
    if any(segment in {".", ".."} for segment in unquote(path).split("/")):
        return None
    return _Target(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], path)


def is_allowed_callback(url: str, allowed: Sequence[str]) -> bool:
    """Whether a callback URL matches an allow-list entry: same scheme, host and port, path prefix.

    An entry whose path ends without "/" matches that path and what lies below it
    ("/cb" allows "/cb" and "/cb/x", not "/cbx"). Entries that are not plain http(s) URLs match
    nothing.
    """
    target = _parse_target(url)
    if target is None:
        return False
    for entry in allowed:
        rule = _parse_target(entry)
        if rule is None or (rule.scheme, rule.host, rule.port) != (
            target.scheme,
            target.host,
            target.port,
        ):
            continue
        prefix = rule.path
        if prefix.endswith("/"):
            if target.path.startswith(prefix):
                return True
        elif target.path == prefix or target.path.startswith(prefix + "/"):
            return True
    return False


# --- message body --------------------------------------------------------------------------------


def _iso(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def new_message_id() -> str:
    """A fresh, unique ``webhook-id``."""
    return f"msg_{uuid.uuid4().hex}"


def build_body(event_type: str, data: Mapping[str, Any], *, at: float | None = None) -> bytes:
    """The compact UTF-8 JSON body: ``{"type", "timestamp", "data"}``."""
    if event_type not in EVENT_TYPES:
        raise InvalidWebhook(f"unknown event type {event_type!r}")
    message = {
        "type": event_type,
        "timestamp": _iso(time.time() if at is None else at),
        "data": dict(data),
    }
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidWebhook(f"webhook data is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


# --- dispatcher ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Due:
    id: str
    url: str
    body: bytes
    attempt_count: int


class WebhookDispatcher:
    """Delivers enqueued webhooks from a SQLite table with retries; pending ones survive restarts.

    One dispatcher per database file: a scheduler thread picks due deliveries in order of
    ``next_attempt_at`` and hands them to a small pool of ``workers`` threads, so one slow
    receiver does not hold up the others. Delivery is at least once: a receiver should
    deduplicate on ``webhook-id``.
    """

    def __init__(
        self,
        *,
        db_path: Path,
        secret: str | None,
        timeout: httpx.Timeout,
        max_attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        workers: int = 4,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, got {max_attempts}")
        if backoff < 0 or backoff_max < 0:
            raise ValueError("backoff and backoff_max must be 0 or more")
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self.db_path = Path(db_path)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._key = None if secret is None else secret_key(secret)
        self._timeout = timeout
        self._workers = workers
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        # Guards the scheduler state below; the scheduler waits on it between rounds.
        self._cond = threading.Condition()
        self._stopping = False
        self._wake = False
        self._in_flight: set[str] = set()
        self._futures: set[Future[None]] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle

    def start(self) -> None:
        """Create the tables if needed and deliver every pending delivery in a background thread."""
        if self._thread is not None:
            raise RuntimeError("webhook dispatcher already started")
        self._ensure_schema()
        with self._transaction() as connection:
            (pending,) = connection.execute(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'"
            ).fetchone()
        if pending:
            logger.info("resuming %d pending webhook deliveries", pending)
        if self._key is None:
            logger.warning("no webhook secret configured: webhooks are sent unsigned")
        self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
        self._pool = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="webhook-delivery"
        )
        with self._cond:
            self._stopping = False
            self._wake = True
            self._in_flight.clear()
            self._futures.clear()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
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
        if client is None:
            return
        if not not_done:
            client.close()
            return
        # Attempts still waiting on a receiver are bounded by the request timeout; they are
        # recorded when they end, and the last one closes the client.
        logger.warning(
            "%d webhook deliveries still in flight at stop; they finish in the background",
            len(not_done),
        )
        _close_when_done(client, not_done)

    def __enter__(self) -> WebhookDispatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- public operations

    def enqueue(self, *, job_id: str, url: str, event_type: str, data: Mapping[str, Any]) -> str:
        """Store a delivery (one transaction), wake the scheduler, and return its webhook-id."""
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidWebhook("webhook url must start with http:// or https://")
        body = build_body(event_type, data)
        msg_id = new_message_id()
        now = time.time()
        self._ensure_schema()
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO webhook_deliveries (id, job_id, url, event_type, body, state,"
                " attempt_count, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                (msg_id, job_id, url, event_type, body, now, now, now),
            )
        logger.debug("webhook %s for job %s enqueued (%s)", msg_id, job_id, event_type)
        self._notify()
        return msg_id

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The deliveries of a job with every attempt, oldest first, JSON-ready."""
        self._ensure_schema()
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT d.id, d.url, d.event_type, d.state, d.next_attempt_at,"
                " a.at, a.status, a.error, a.duration_ms"
                " FROM webhook_deliveries AS d"
                " LEFT JOIN webhook_attempts AS a ON a.delivery_id = d.id"
                " WHERE d.job_id = ? ORDER BY d.created_at, d.rowid, a.attempt",
                (job_id,),
            ).fetchall()
        result: dict[str, dict[str, Any]] = {}
        for msg_id, url, event_type, state, next_at, at, status, error, duration_ms in rows:
            delivery = result.setdefault(
                msg_id,
                {
                    "id": msg_id,
                    "url": redact_url(url),
                    "eventType": event_type,
                    "state": state,
                    "attempts": [],
                    "nextAttemptAt": None if next_at is None else _iso(next_at),
                },
            )
            if at is not None:
                delivery["attempts"].append(
                    {"at": _iso(at), "status": status, "error": error, "durationMs": duration_ms}
                )
        return list(result.values())

    # -- internals

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection of our own, committed on success and always closed."""
        connection = sqlite3.connect(self.db_path, timeout=DB_TIMEOUT)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.db_path, timeout=DB_TIMEOUT)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(SCHEMA)
            finally:
                connection.close()
            self._schema_ready = True

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
            except sqlite3.Error:
                logger.exception("webhook scheduler could not read the delivery table")
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

    def _find_due(self, free: int, busy: set[str]) -> tuple[list[_Due], float | None, bool]:
        """Due deliveries not in flight (at most ``free``), the next due time, whether more wait."""
        now = time.time()
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT id, url, body, attempt_count FROM webhook_deliveries"
                " WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, created_at LIMIT ?",
                (now, max(free, 0) + len(busy) + 1),
            ).fetchall()
            (next_at,) = connection.execute(
                "SELECT MIN(next_attempt_at) FROM webhook_deliveries"
                " WHERE state = 'pending' AND next_attempt_at > ?",
                (now,),
            ).fetchone()
        waiting = [_Due(*row) for row in rows if row[0] not in busy]
        return waiting[: max(free, 0)], next_at, len(waiting) > free

    def _submit(self, item: _Due) -> None:
        """Start one attempt in the pool; the caller holds ``self._cond``."""
        assert self._pool is not None
        self._in_flight.add(item.id)
        future = self._pool.submit(self._deliver, item)
        self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._cond:
            self._futures.discard(future)

    def _deliver(self, item: _Due) -> None:
        """Make one attempt and record it; never raises, always frees the delivery's slot."""
        try:
            self._attempt(item)
        except Exception:
            logger.exception("webhook %s: attempt could not be made or recorded", item.id)
        finally:
            with self._cond:
                self._in_flight.discard(item.id)
                self._wake = True
                self._cond.notify_all()

    def _attempt(self, item: _Due) -> None:
        client = self._client
        assert client is not None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            signature = _signature(self._key, item.id, timestamp, item.body)
            headers["webhook-signature"] = f"{SIGNATURE_VERSION},{signature}"
        started_at = time.time()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            # Streaming without reading keeps a huge or endless answer from costing anything.
            with client.stream("POST", item.url, content=item.body, headers=headers) as response:
                status = response.status_code
                if not response.is_success:
                    error = f"HTTP {status}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
        except httpx.RequestError as exc:
            error = describe_transport_error(exc)
        duration_ms = round((time.monotonic() - started) * 1000)
        self._record(item, started_at, status, error, duration_ms, retry_after)

    def _record(
        self,
        item: _Due,
        started_at: float,
        status: int | None,
        error: str | None,
        duration_ms: int,
        retry_after: float | None,
    ) -> None:
        """Store the attempt and the delivery's new state in one transaction, then log it."""
        attempt = item.attempt_count + 1
        now = time.time()
        next_at: float | None = None
        if error is None:
            state = "delivered"
        elif attempt >= self.max_attempts:
            state = "failed"
        else:
            state = "pending"
            delay = backoff_delay(
                attempt, self.backoff, self.backoff_max, retry_after, jitter=random.random()
            )
            next_at = now + delay
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO webhook_attempts"
                " (delivery_id, attempt, at, status, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (item.id, attempt, started_at, status, error, duration_ms),
            )
            connection.execute(
                "UPDATE webhook_deliveries SET state = ?, attempt_count = ?, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ?",
                (state, attempt, next_at, now, item.id),
            )
        url = redact_url(item.url)
        if state == "delivered":
            logger.info("webhook %s delivered to %s (attempt %d)", item.id, url, attempt)
        elif state == "failed":
            logger.error(
                "webhook %s to %s failed for good after %d attempts: %s",
                item.id,
                url,
                attempt,
                error,
            )
        else:
            logger.warning(
                "webhook %s to %s failed (attempt %d of %d, next in %.2fs): %s",
                item.id,
                url,
                attempt,
                self.max_attempts,
                delay,
                error,
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
