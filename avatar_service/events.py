"""Live job events in memory: what sync waits and Server-Sent Events streams block on."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Events of ended jobs are kept this long for late SSE clients resuming with Last-Event-ID.
RETENTION_SECONDS = 600.0
RETENTION_JOBS = 2000


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job; ``id`` counts from 1 per job."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass
class _Channel:
    """One job's events; its condition shares the log's lock, so a publish wakes only the
    readers of that job (hundreds of sync waiters do not all wake for every event)."""

    changed: threading.Condition
    events: list[JobEvent] = field(default_factory=list)
    ended_at: float | None = None


class JobEvents:
    """A per-job append-only log of events with blocking reads."""

    def __init__(self) -> None:
        # Names this run of the service in event ids (event numbers restart with the process).
        self.epoch = format(time.time_ns() // 1_000_000, "x")
        self._lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._ended: deque[str] = deque()
        self._closing = False
        self._listeners: list[Callable[[str, str, dict[str, Any]], None]] = []

    def add_listener(self, listener: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Call ``listener(job_id, event, data)`` after each event is published (e.g. metrics)."""
        self._listeners.append(listener)

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

    def publish(
        self, job_id: str, event: str, data: dict[str, Any], *, final: bool = False
    ) -> None:
        """Append an event for a job and wake every reader; ``final`` marks the job's last event."""
        with self._lock:
            channel = self._channel(job_id)
            channel.events.append(JobEvent(len(channel.events) + 1, event, data))
            if final:
                channel.ended_at = time.monotonic()
                self._ended.append(job_id)
                self._prune()
            channel.changed.notify_all()
        for listener in self._listeners:
            try:
                listener(job_id, event, data)
            except Exception:  # an observer must never change a job's course
                logger.exception("event listener failed on %s of job %s", event, job_id)

    def read(self, job_id: str, after: int, timeout: float) -> tuple[list[JobEvent], bool]:
        """Events with id > ``after`` (waiting up to ``timeout``), and whether the log has ended."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                channel = self._channel(job_id)
                fresh = channel.events[after:] if after >= 0 else channel.events
                if fresh or channel.ended_at is not None:
                    return list(fresh), channel.ended_at is not None
                if self._closing:
                    return [], True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], False
                channel.changed.wait(remaining)

    def last_id(self, job_id: str) -> int:
        """The id of the newest event of a job (0 when none is known)."""
        with self._lock:
            channel = self._channels.get(job_id)
            return len(channel.events) if channel else 0

    def known(self, job_id: str) -> bool:
        """Whether events of this job are held in memory."""
        with self._lock:
            channel = self._channels.get(job_id)
            return channel is not None and bool(channel.events)

    def wait_ended(self, job_id: str, timeout: float) -> bool:
        """Block until the job's final event or the timeout; True when it ended."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                channel = self._channel(job_id)
                if channel.ended_at is not None:
                    return True
                if self._closing:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                channel.changed.wait(remaining)

    def _channel(self, job_id: str) -> _Channel:
        """The job's channel, made on first use; the caller holds the lock."""
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel(threading.Condition(self._lock))
        return channel

    def _prune(self) -> None:
        now = time.monotonic()
        while self._ended:
            oldest = self._channels.get(self._ended[0])
            expired = oldest is None or oldest.ended_at is None
            expired = expired or now - oldest.ended_at > RETENTION_SECONDS
            if not expired and len(self._ended) <= RETENTION_JOBS:
                break
            self._channels.pop(self._ended.popleft(), None)
