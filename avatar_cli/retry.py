"""Riding out a service that cannot be reached for a while (a restart): waits that double, up to
a cap, until a deadline that starts at the first failure."""

from __future__ import annotations

import time
from collections.abc import Callable

from .client import ApiError, ClientError, Unreachable

FIRST_WAIT = 0.5
MAX_WAIT = 8.0
# Answers a proxy or a starting service gives for a moment; the request may simply be repeated.
PASSING_STATUSES = frozenset({502, 503, 504})


def passing(error: ClientError) -> bool:
    """Whether an error may pass if the same request is sent again later."""
    if isinstance(error, ApiError):
        return error.status in PASSING_STATUSES
    return isinstance(error, Unreachable)


class Outage:
    """One stretch of failures: how long to wait before the next try, and when to give up."""

    def __init__(
        self,
        limit: float,
        *,
        first: float = FIRST_WAIT,
        cap: float = MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._next = first
        self._cap = cap
        self._clock = clock
        self._deadline: float | None = None

    def next_wait(self, error: ClientError) -> float:
        """Seconds to wait before the next try; Unreachable once the deadline has passed."""
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self.limit
        left = self._deadline - now
        if left <= 0:
            raise Unreachable(
                f"the avatar service could not be reached for {self.limit:g} s, giving up "
                f"(--timeout): {error.message}"
            ) from error
        wait = min(self._next, self._cap, left)
        self._next = min(self._next * 2, self._cap)
        return wait
