"""Patience: a run's call to ComfyUI, tried again while it may yet succeed, up to the deadline.

Refused connections are always tried again (ComfyUI restarting); a slow answer or a 5xx only
once the prompt has ``finished`` (its images exist, and asking again cannot start anything twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ..comfyui import ComfyUIError, ComfyUIProtocolError, ComfyUIUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A prompt that ended by its deadline may still have its images fetched this long after it.
COLLECT_GRACE = 2.0
# The first pause between tries (seconds); it doubles up to the caller's ``max_delay``.
FIRST_DELAY = 0.2


def patiently(
    call: Callable[..., T],
    *,
    deadline: float,
    clock: Callable[[], float],
    pause: Callable[[float], None],
    max_delay: float,
    finished: bool = False,
    job_id: str = "",
) -> T:
    """``call(timeout=...)``, retried with backoff while ComfyUI refuses connections, until
    ``deadline`` (on ``clock``). No try lasts past the deadline, but for ``COLLECT_GRACE`` to
    fetch what a prompt that ended at its deadline made; the error of a try that fails then is
    raised. ``pause(seconds)`` waits between tries (and raises to give up at once).

    A server that accepts but does not answer in time is not asked again for a prompt that may
    still run: its read timeout has already been waited for. Once the prompt has ``finished``
    (its images exist), slow answers and 5xx are retried too: a blip must not cost a finished
    render.
    """
    delay = FIRST_DELAY
    while True:
        left = deadline - clock()
        try:
            return call(timeout=max(left, COLLECT_GRACE))
        except (ComfyUIUnavailable, ComfyUIProtocolError) as exc:
            if not is_transient(exc, finished=finished):
                raise
            if clock() + delay > deadline:
                raise
            logger.info("job %s: %s; retrying in %.1f s", job_id, exc.message, delay)
            pause(delay)
            delay = min(delay * 2, max_delay)


def is_transient(exc: ComfyUIError, *, finished: bool) -> bool:
    """Whether asking again may succeed: refused connections always; timeouts and 5xx only for
    a finished prompt (asking again cannot start anything twice)."""
    if isinstance(exc, ComfyUIUnavailable):
        return finished or not exc.timed_out
    return finished and isinstance(exc, ComfyUIProtocolError) and (exc.status or 0) >= 500
