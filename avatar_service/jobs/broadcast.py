"""Job events across processes sharing a PostgreSQL: NOTIFY out, LISTEN in.

Every event a process publishes for a job is also sent with ``pg_notify`` on a channel of the
database's schema; every process listens on it and publishes the events of other processes
into its own ``JobEvents``, where sync waits and event streams read them. A notification
carries the event's data when it fits (PostgreSQL's limit is 8000 bytes), else only its name,
and the receiver reads the job's record. The database stays the source of truth: after the
listening connection is lost and made again, every job still followed here is read from its
record, and one that ended meanwhile gets its final event from it.

Events are sent by a thread of their own, so a job's run never waits for the database to pass
its progress on: whatever was published while the previous notifications were on their way
goes in one transaction (a sampler's steps come faster than one round trip each), in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import deque
from typing import Any

from ..persistence.postgres import PostgresDatabase
from .events import JobEvents
from .records import JobRecords

logger = logging.getLogger(__name__)

# Notifications larger than this carry no data (the receiver reads the record instead).
MAX_PAYLOAD = 7000
# The listener wakes at least this often to see whether it should stop (seconds).
LISTEN_WAKE = 0.5
# Pause before listening again after the connection was lost (seconds).
RECONNECT_PAUSE = 1.0
# Notifications sent in one transaction at most; beyond this many waiting, the oldest are
# dropped (the database is out of reach: receivers read the records when they catch up).
MAX_BATCH = 500
MAX_WAITING = 10_000


class EventBroadcast:
    """Sends this process's job events to the others, and theirs into this one's log."""

    def __init__(
        self, *, database: PostgresDatabase, records: JobRecords, events: JobEvents, origin: str
    ) -> None:
        self.database = database
        self.records = records
        self.events = events
        self.origin = origin
        self.channel = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._outgoing: deque[str] = deque(maxlen=MAX_WAITING)
        self._outgoing_changed = threading.Condition()
        self.listening = threading.Event()

    def start(self) -> None:
        """Name the channel, send local events there, and listen for the others'."""
        with self.database.transaction() as db:
            (schema,) = db.execute("SELECT current_schema()").fetchone()
        self.channel = "avatar_events_" + hashlib.sha256(schema.encode()).hexdigest()[:16]
        self.events.add_forwarder(self.send)
        self._sender = threading.Thread(target=self._send_forever, name="event-sender", daemon=True)
        self._sender.start()
        self._thread = threading.Thread(target=self._listen, name="event-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send what is still waiting, then stop sending and listening."""
        self._stopping.set()
        with self._outgoing_changed:
            self._outgoing_changed.notify_all()
        for thread in (self._sender, self._thread):
            if thread is not None:
                thread.join(5)

    def send(self, job_id: str, event: str, data: dict[str, Any], final: bool) -> None:
        """Queue one event (published here) for the other processes; the sender sends it."""
        message = {"o": self.origin, "j": job_id, "e": event, "f": final, "d": data}
        payload = json.dumps(message, separators=(",", ":"))
        if len(payload.encode()) > MAX_PAYLOAD:
            payload = json.dumps({**message, "d": None}, separators=(",", ":"))
        with self._outgoing_changed:
            self._outgoing.append(payload)
            self._outgoing_changed.notify_all()

    def _send_forever(self) -> None:
        while True:
            with self._outgoing_changed:
                while not self._outgoing and not self._stopping.is_set():
                    self._outgoing_changed.wait()
                if not self._outgoing:  # stopping, and nothing left to send
                    return
                batch = [
                    self._outgoing.popleft() for _ in range(min(MAX_BATCH, len(self._outgoing)))
                ]
            self._send(batch)

    def _send(self, batch: list[str]) -> None:
        """One transaction for the batch: PostgreSQL delivers its notifications in order."""
        try:
            with self.database.transaction() as db:
                db.executemany("SELECT pg_notify(?, ?)", [(self.channel, p) for p in batch])
        except Exception as exc:  # listeners re-read records when they miss one
            logger.warning(
                "could not notify other processes of %d job event(s): %s", len(batch), exc
            )

    def _listen(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                connection = self.database.connect(autocommit=True)
            except Exception as exc:
                if not failing:  # once per outage
                    logger.warning("event listener cannot connect (trying every second): %s", exc)
                failing = True
                self._stopping.wait(RECONNECT_PAUSE)
                continue
            failing = False
            try:
                connection.execute(f'LISTEN "{self.channel}"')
                self.listening.set()
                self._catch_up()
                while not self._stopping.is_set():
                    for note in connection.notifies(timeout=LISTEN_WAKE):
                        self._receive(note.payload)
            except Exception as exc:  # the connection was lost: listen again, then catch up
                logger.warning("event listener lost its connection: %s", exc)
                self._stopping.wait(RECONNECT_PAUSE)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):  # already broken
                    connection.close()

    def _receive(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            logger.warning("ignored a malformed event notification")
            return
        if message.get("o") == self.origin:
            return
        job_id, event, final, data = message["j"], message["e"], message["f"], message["d"]
        if data is None:
            job = self.records.get(job_id)
            if job is None:
                return
            data = job.to_dict()
        self.events.publish(job_id, event, data, final=bool(final), remote=True)

    def _catch_up(self) -> None:
        """Events may have been missed while not listening: read the records of open jobs."""
        for job_id in self.events.open_jobs():
            job = self.records.get(job_id)
            if job is not None and job.ended:
                self.events.publish(job_id, job.status, job.to_dict(), final=True, remote=True)
        time.sleep(0)  # let readers woken here run before the first notification
