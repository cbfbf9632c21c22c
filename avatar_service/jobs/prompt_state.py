"""The state of one prompt on its server: where it is, and how it is ending.

A prompt goes through three phases::

    WAITING (in ComfyUI's queue) --started--> RUNNING --ended--> ENDED

``PromptState`` is an immutable value; ``after(event)`` is the one table of transitions, applied
to every event the run receives, and ``where(answer)`` applies what asking ComfyUI said. Nothing
here does I/O: ``prompt.PromptRun`` acts on the states (it writes the job's record, asks
ComfyUI, ends the run), and ``outcomes.judge`` turns an ENDED state and the prompt's history
entry into the job's result.

The events besides ComfyUI's messages (``comfyui.client``'s typed events) come from the run's
owner: ``Check`` (time to ask ComfyUI itself), ``CancelAsked``, ``ShutdownAsked`` and
``FailoverAsked``; and from the run itself, once the reader thread publishes its steps:
``ProgressDue`` (the record is due a write of the latest progress) and ``StepsHeard``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace

from ..comfyui import (
    ExecutionEnded,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionStarted,
    NodeStarted,
    PromptEvent,
)


@dataclass(frozen=True)
class Check:
    """Time to ask ComfyUI where the prompt is."""


@dataclass(frozen=True)
class CancelAsked:
    """The job's owner cancelled it (the prompt has been withdrawn, or will be)."""


@dataclass(frozen=True)
class ShutdownAsked:
    """The service is stopping."""


@dataclass(frozen=True)
class FailoverAsked:
    """The server was given up: stop following the prompt here."""


@dataclass(frozen=True)
class ProgressDue:
    """Steps published from the reader thread are due a write to the job's record."""


@dataclass(frozen=True)
class StepsHeard:
    """Nothing came for the run's own thread, but the reader thread relayed steps meanwhile:
    the prompt is alive, and ComfyUI need not be asked."""


# Every event a run receives: ComfyUI's, its owner's, and its own.
RunEvent = (
    PromptEvent | Check | CancelAsked | ShutdownAsked | FailoverAsked | ProgressDue | StepsHeard
)


class Phase(enum.Enum):
    """Where the prompt is on its server."""

    WAITING = "waiting"
    RUNNING = "running"
    ENDED = "ended"


# What asking ComfyUI can answer about a prompt: its place in the queue (1 = next), or one of
# these. "absent": neither queued, running nor in the history (the server forgot it).
Where = int | str
RUNNING, ENDED, ABSENT = "running", "ended", "absent"


@dataclass(frozen=True)
class PromptState:
    """Where a prompt is, what ComfyUI said of its ending, and since when it is unreachable."""

    phase: Phase = Phase.WAITING
    # The ``execution_error`` ComfyUI sent for the prompt, if any.
    failure: ExecutionFailed | None = None
    # Whether ComfyUI sent ``execution_interrupted`` for it.
    interrupted: bool = False
    # Wall-clock time since which asking ComfyUI fails (None: it answers).
    unreachable_since: float | None = None

    @property
    def ended(self) -> bool:
        """Whether the prompt has ended on its server (its history entry is written)."""
        return self.phase is Phase.ENDED

    def after(self, event: RunEvent) -> PromptState:
        """The state after one of ComfyUI's messages (other events leave it as it is)."""
        if isinstance(event, ExecutionStarted | NodeStarted) and self.phase is Phase.WAITING:
            return replace(self, phase=Phase.RUNNING)
        if isinstance(event, ExecutionEnded):
            return replace(self, phase=Phase.ENDED)
        if isinstance(event, ExecutionFailed):
            return replace(self, failure=event)
        if isinstance(event, ExecutionInterrupted):
            return replace(self, interrupted=True)
        return self

    def where(self, answer: Where) -> PromptState:
        """The state after ComfyUI answered where the prompt is (ABSENT leaves it: the run
        decides whether to queue it again)."""
        reachable = replace(self, unreachable_since=None)
        if answer == ENDED:
            return replace(reachable, phase=Phase.ENDED)
        if answer == RUNNING and self.phase is Phase.WAITING:
            return replace(reachable, phase=Phase.RUNNING)
        return reachable

    def unreachable(self, now: float) -> PromptState:
        """Asking ComfyUI failed at ``now``."""
        return replace(self, unreachable_since=self.unreachable_since or now)

    def queued_again(self) -> PromptState:
        """The prompt was queued once more after the server forgot it."""
        return replace(self, phase=Phase.WAITING)


# A job still waiting a moment after queueing asks for its position, then on queue changes
# (at most once a second).
FIRST_POSITION_CHECK_SECONDS = 0.3
POSITION_REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class RunSettings:
    """The timing settings a run needs."""

    job_timeout: float
    poll_interval: float
    # Seconds a prompt may go without a message for it or a change of ComfyUI's queue before
    # it counts as stalled (0: never).
    stall_timeout: float = 0.0


@dataclass
class Submission:
    """When the prompt was queued (monotonic), and the socket's message count then."""

    queued_at: float = 0.0
    # None once the socket was checked (or for a prompt taken up rather than queued).
    messages_at_queue: int | None = None


@dataclass
class Withdrawal:
    """A cancel: asked, and whether ComfyUI still has to be told (it was unreachable)."""

    asked: bool = False
    pending: bool = False
    last_try: float = 0.0
    # When ComfyUI last received it (monotonic): a queue view older than that still lists the
    # prompt, and must not be believed.
    sent_at: float = 0.0


@dataclass
class CheckTimer:
    """When the run asks ComfyUI next, beside the poll interval."""

    # Ask before waiting for the next event (a run taken up, or a queue change).
    pending: bool = False
    # A first position check soon after queueing (None once the prompt was heard of).
    first_at: float | None = None
    last_position: float = 0.0

    def start(self, *, check_first: bool) -> None:
        """The prompt is being followed from now."""
        now = time.monotonic()
        self.pending = check_first
        self.first_at = now + FIRST_POSITION_CHECK_SECONDS
        self.last_position = now

    def queue_changed(self, phase: Phase) -> None:
        """ComfyUI's queue changed: a waiting prompt asks its place (at most once a second)."""
        now = time.monotonic()
        if phase is Phase.WAITING and now - self.last_position > POSITION_REFRESH_SECONDS:
            self.last_position = now
            self.pending = True
