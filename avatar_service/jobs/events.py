"""Live job events in memory: what sync waits and Server-Sent Events streams block on.

What is kept per job is bounded: the events of a job that has ended are packed into one
compressed block (all but the final event, which late readers ask for most), and kept for
``RETENTION_SECONDS`` after the end, for at most ``RETENTION_JOBS`` ended jobs, so that a
client resuming with ``Last-Event-ID`` still gets what it missed. The packing is left to
``pack_ended`` (the dispatcher's monitor calls it four times a second), not done by the thread
that ended the job: that thread would hold the GIL the job's waiters need to answer; more than
``PACK_BACKLOG`` ended jobs waiting to be packed are packed at once. A channel a reader opened
for a job that never published here is dropped when its last reader leaves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Events of ended jobs are kept this long for late SSE clients resuming with Last-Event-ID.
RETENTION_SECONDS = 600.0
RETENTION_JOBS = 2000
# Ended jobs whose events wait for ``pack_ended`` at most; past it they are packed at once.
PACK_BACKLOG = 64


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job; ``id`` counts from 1 per job."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass
class _Channel:
    """One job's events; its conditions share the log's lock, so a publish wakes only the
    readers of that job (hundreds of sync waiters do not all wake for every event), and a
    wait for the job's end only at its end (not at each of its ~80 progress events)."""

    changed: threading.Condition
    finished: threading.Condition
    # Events not packed yet (of an ended job: only the final one).
    events: list[JobEvent] = field(default_factory=list)
    # The ids given so far (the newest event's id).
    count: int = 0
    ended_at: float | None = None
    # Events up to ``packed_upto`` (of an ended job), compressed JSON.
    packed: bytes | None = None
    packed_upto: int = 0
    # What the final event's publisher handed its waiters (the job's record), until packed.
    outcome: Any = None
    # Readers in ``read`` or ``wait_ended``; of them, those in ``read`` (woken by every event).
    readers: int = 0
    streams: int = 0

    def after(self, after: int) -> list[JobEvent]:
        """The events with an id above ``after`` (every one when ``after`` is negative)."""
        if self.packed is not None and after < self.packed_upto:
            rows = json.loads(zlib.decompress(self.packed))
            older = [JobEvent(*row) for row in rows if row[0] > after]
            return older + self.events
        return [event for event in self.events if event.id > after]

    def pack(self, lock: threading.Lock) -> None:
        """Compress every event but the last (the job has ended: none is added any more).

        Called without ``lock``, which is taken only to swap the events for the block."""
        older = self.events[:-1]
        if not older:
            return
        rows = [[event.id, event.event, event.data] for event in older]
        packed = zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 1)
        with lock:
            self.packed, self.packed_upto = packed, older[-1].id
            self.events = self.events[len(older) :]
            self.outcome = None


class JobEvents:
    """A per-job append-only log of events with blocking reads."""

    def __init__(
        self,
        *,
        retention_seconds: float = RETENTION_SECONDS,
        retention_jobs: int = RETENTION_JOBS,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.retention_jobs = retention_jobs
        # Names this run of the service in event ids (event numbers restart with the process).
        self.epoch = format(time.time_ns() // 1_000_000, "x")
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._ended: deque[str] = deque()
        self._unpacked: deque[_Channel] = deque()  # ended, their events not packed yet
        self._closing = False
        self._listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        self._forwarders: list[Callable[[str, str, dict[str, Any], bool], None]] = []

    def add_listener(self, listener: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Call ``listener(job_id, event, data)`` after each event is published (e.g. metrics)."""
        self._listeners.append(listener)

    def add_forwarder(self, forwarder: Callable[[str, str, dict[str, Any], bool], None]) -> None:
        """Call ``forwarder(job_id, event, data, final)`` after each event published here (not
        those received from other processes), e.g. to notify them."""
        self._forwarders.append(forwarder)

    @property
    def closing(self) -> bool:
        """Whether close() was called."""
        return self._closing

    def close(self) -> None:
        """The service is stopping: wake every reader; waits and streams end at once."""
        with self._lock:
            self._closing = True
            for channel in self._channels.values():
                channel.changed.notify_all()
                channel.finished.notify_all()

    def publish(
        self,
        job_id: str,
        event: str,
        data: dict[str, Any],
        *,
        final: bool = False,
        remote: bool = False,
        outcome: Any = None,
    ) -> None:
        """Append an event for a job and wake every reader; ``final`` marks the job's last event.

        ``remote``: the event comes from another process (listeners and forwarders, which
        observe this process's own events, are not called). ``outcome``: what a final event's
        waiters get from ``wait_ended`` (the job's record: none needs to read it again).
        """
        with self._lock:
            channel = self._channel(job_id)
            if remote and channel.ended_at is not None:
                return  # already ended here (e.g. read from the record while catching up)
            channel.count += 1
            channel.events.append(JobEvent(channel.count, event, data))
            if final and channel.ended_at is None:
                channel.ended_at = time.monotonic()
                channel.outcome = outcome
                self._unpacked.append(channel)
                self._ended.append(job_id)
                self._prune()
                channel.finished.notify_all()
            if channel.streams:
                channel.changed.notify_all()
            backlog = len(self._unpacked) > PACK_BACKLOG
        if backlog:
            self.pack_ended()
        if remote:
            return
        for forwarder in self._forwarders:
            try:
                forwarder(job_id, event, data, final)
            except Exception:  # other processes fall back on the record
                logger.exception("event forwarder failed on %s of job %s", event, job_id)
        for listener in self._listeners:
            try:
                listener(job_id, event, data)
            except Exception:  # an observer must never change a job's course
                logger.exception("event listener failed on %s of job %s", event, job_id)

    def pack_ended(self) -> None:
        """Compress the events of the jobs that ended since the last call."""
        with self._lock:
            channels, self._unpacked = self._unpacked, deque()
        for channel in channels:
            channel.pack(self._lock)

    def read(self, job_id: str, after: int, timeout: float) -> tuple[list[JobEvent], bool]:
        """Events with id > ``after`` (waiting up to ``timeout``), and whether the log has ended."""
        deadline = time.monotonic() + timeout
        with self._lock, self._reading(job_id, stream=True) as channel:
            while True:
                fresh = channel.after(after)
                if fresh or channel.ended_at is not None:
                    return fresh, channel.ended_at is not None
                if self._closing:
                    return [], True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], False
                channel.changed.wait(remaining)

    def open_jobs(self) -> list[str]:
        """Jobs whose events are held here and have not ended."""
        with self._lock:
            return [
                job_id for job_id, channel in self._channels.items() if channel.ended_at is None
            ]

    def last_id(self, job_id: str) -> int:
        """The id of the newest event of a job (0 when none is known)."""
        with self._lock:
            channel = self._channels.get(job_id)
            return channel.count if channel else 0

    def known(self, job_id: str) -> bool:
        """Whether events of this job are held in memory."""
        with self._lock:
            channel = self._channels.get(job_id)
            return channel is not None and channel.count > 0

    def wait_ended(self, job_id: str, timeout: float) -> tuple[bool, Any]:
        """Block until the job's final event or the timeout: whether it ended, and the outcome
        its publisher handed over (None when there is none, or it was packed since)."""
        deadline = time.monotonic() + timeout
        with self._lock, self._reading(job_id) as channel:
            while True:
                if channel.ended_at is not None:
                    return True, channel.outcome
                if self._closing:
                    return False, None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, None
                channel.finished.wait(remaining)

    def _channel(self, job_id: str) -> _Channel:
        """The job's channel, made on first use; the caller holds the lock."""
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel(
                threading.Condition(self._lock), threading.Condition(self._lock)
            )
        return channel

    @contextlib.contextmanager
    def _reading(self, job_id: str, *, stream: bool = False) -> Iterator[_Channel]:
        """The job's channel for one reader (``stream``: one woken by every event); the caller
        holds the lock. A channel that is still empty when its last reader leaves is dropped
        (nothing was published for that job)."""
        channel = self._channel(job_id)
        channel.readers += 1
        channel.streams += stream
        try:
            yield channel
        finally:
            channel.readers -= 1
            channel.streams -= stream
            unused = not channel.readers and not channel.count and channel.ended_at is None
            if unused and self._channels.get(job_id) is channel:
                del self._channels[job_id]

    def held(self) -> int:
        """How many jobs' events are held in memory (bounded: see the module's docstring)."""
        with self._lock:
            return len(self._channels)

    def _prune(self) -> None:
        now = time.monotonic()
        while self._ended:
            oldest = self._channels.get(self._ended[0])
            ended_at = None if oldest is None else oldest.ended_at
            expired = ended_at is None or now - ended_at > self.retention_seconds
            if not expired and len(self._ended) <= self.retention_jobs:
                break
            self._channels.pop(self._ended.popleft(), None)
