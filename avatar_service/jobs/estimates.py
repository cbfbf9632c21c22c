"""Estimated start times: recent run times per style and server, and a schedule of the queue."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# How many recent runs of a style on a server the estimate averages.
WINDOW = 20


class RunTimes:
    """Recent run times (seconds from dispatch to the end) per server and style."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def record(self, server: str, style: str, seconds: float) -> None:
        """Remember one finished run."""
        with self._lock:
            self._times[(server, style)].append(max(0.0, seconds))

    def estimate(self, server: str, style: str) -> float | None:
        """The mean recent run time of a style on a server (else of the style anywhere, else
        of anything); None before the first run."""
        with self._lock:
            for keys in (
                [(server, style)],
                [key for key in self._times if key[1] == style],
                list(self._times),
            ):
                samples = [t for key in keys for t in self._times.get(key, ())]
                if samples:
                    return sum(samples) / len(samples)
        return None


@dataclass(frozen=True)
class Busy:
    """A job a server holds now: its style, and seconds it has run (None: not started)."""

    style: str
    elapsed: float | None


@dataclass(frozen=True)
class Schedule:
    """Estimated start (seconds from now) of each waiting job, and when the queue drains."""

    starts: Sequence[float | None]
    drain_seconds: float | None


def schedule(
    waiting_styles: Sequence[str],
    servers: Mapping[str, Sequence[Busy]],
    run_times: RunTimes,
) -> Schedule:
    """Play the queue forward: each waiting job starts on the server that frees up first.

    A server runs one prompt at a time, so it is free after the remaining time of everything it
    holds. ``servers`` lists the servers that can take jobs now.
    """
    if not servers:
        return Schedule([None] * len(waiting_styles), None)
    free_at: dict[str, float] = {}
    for server, held in servers.items():
        total = 0.0
        for busy in held:
            estimate = run_times.estimate(server, busy.style)
            if estimate is None:
                return Schedule([None] * len(waiting_styles), None)
            total += max(0.0, estimate - (busy.elapsed or 0.0))
        free_at[server] = total
    starts: list[float | None] = []
    for style in waiting_styles:
        server = min(free_at, key=lambda name: free_at[name])
        estimate = run_times.estimate(server, style)
        if estimate is None:
            return Schedule([None] * len(waiting_styles), None)
        starts.append(free_at[server])
        free_at[server] += estimate
    return Schedule(starts, max(free_at.values()))
