"""The queue sweeper: ends waiting jobs that cannot start, and keeps the queue's places true.

Each round, for the jobs waiting in the service's own queue, in order:

- one past its deadline fails (``504 job_timeout``, or ``503 comfyui_unavailable`` when no
  server could take it), one cancelled ends ``cancelled``, and one whose style every server
  withholds fails with the rejection that caused it;
- every other gets its ``queuePosition`` (counting the jobs sent to a server but not started)
  and its ``estimatedStartAt`` (the queue played forward with the recent run times, per style
  and server), published when they change; ``drain_seconds`` says when the queue empties.

With a fleet, one process at a time sweeps (the coordination's ``may_sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..comfyui import PromptRejected
from . import outcomes
from .estimates import Busy, schedule
from .job import JobStatus
from .prompt_state import Phase
from .records import Waiting
from .withdrawal import withdraw, withdraw_from

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

# A job held past its deadline by this long is ended by the sweeper, whoever holds it (a run
# ends its own job at its deadline; this is for a job nothing follows any more).
OVERDUE_GRACE = 30.0
# How often held jobs are looked at for that (seconds).
OVERDUE_INTERVAL = 1.0


class QueueSweeper:
    """Deadlines, cancels and unrunnable styles of waiting jobs; their positions and estimates."""

    def __init__(self, dispatcher: Dispatcher, *, clock: Callable[[], float]) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        # When the queue is estimated to drain (seconds from the last sweep), if known.
        self.drain_seconds: float | None = None
        # The position and estimated start last published for each waiting job.
        self._published: dict[str, tuple[int, int | None]] = {}
        self._overdue_at = 0.0

    def sweep(self) -> None:
        """End waiting jobs past their deadline or cancelled; refresh positions and estimates;
        end jobs whose holder kept them past their deadline."""
        now = self.clock()
        if now >= self._overdue_at:
            self._overdue_at = now + OVERDUE_INTERVAL
            self._end_overdue(now)
        waiting: list[Waiting] = []
        unrunnable_styles: dict[str, PromptRejected | None] = {}
        for job in self.dispatcher.records.waiting_brief():
            if job.style not in unrunnable_styles:
                unrunnable_styles[job.style] = self._unrunnable(job.style)
            unrunnable = unrunnable_styles[job.style]
            if job.deadline <= now or job.cancel_requested or unrunnable is not None:
                self._end(job, unrunnable)
                self._published.pop(job.id, None)
                continue
            waiting.append(job)
        self._publish_positions(waiting, now)

    def _end(self, job: Waiting, unrunnable: PromptRejected | None) -> None:
        """Take a waiting job out of the queue and end it (unless a worker claimed it first)."""
        dispatcher = self.dispatcher
        taken = dispatcher.records.take_waiting(job.id)
        if taken is None:
            return
        if taken.cancel_requested:
            dispatcher.ledger.finish(taken, JobStatus.CANCELLED, None)
        elif unrunnable is not None:
            dispatcher.fail(taken, unrunnable)
        else:
            error = outcomes.deadline_passed_waiting(
                taken, timeout=dispatcher.settings.job_timeout, servers=dispatcher.reasons()
            )
            logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
            dispatcher.ledger.finish(taken, JobStatus.FAILED, error)

    def _end_overdue(self, now: float) -> None:
        """JOB_TIMEOUT ends any job, whoever holds it: one held (by another process, or by
        nobody: its run was lost) ``OVERDUE_GRACE`` past its deadline is taken from its holder
        (whose own end of it is then refused), its prompt withdrawn, and it fails 504."""
        dispatcher = self.dispatcher
        here = {job_id for _worker, job_id in dispatcher.claimed()}
        for job in dispatcher.records.overdue(now - OVERDUE_GRACE):
            if job.id in here:
                continue  # its run here ends it at its deadline
            taken = dispatcher.records.seize(
                job, f"{dispatcher.owner}/sweeper", until=now + dispatcher.lease
            )
            if taken is None:
                continue
            if taken.server is not None and taken.prompt_id is not None:
                worker = dispatcher.worker_for(taken.server)
                if worker is not None:
                    withdraw(worker.client, taken.prompt_id)
                else:
                    withdraw_from(taken.server, taken.prompt_id)
            error = outcomes.deadline_passed(
                taken, taken.prompt_id, unreachable=False, timeout=dispatcher.settings.job_timeout
            )
            logger.warning(
                "job %s failed: %s (its holder %s did not end it by its deadline)",
                job.id,
                error.code,
                job.owner,
            )
            dispatcher.ledger.finish(taken, JobStatus.FAILED, error)

    def _unrunnable(self, style: str) -> PromptRejected | None:
        """The rejection of a style every server withholds (None when one may run it)."""
        rejection = None
        for state in self.dispatcher.states.values():
            withheld = state.withheld().get(style)
            if withheld is None:
                return None
            rejection = withheld
        return rejection

    def _held(self, now: float) -> tuple[Mapping[str, list[Busy]], int]:
        """What each usable server holds now, and how many held jobs have not started."""
        dispatcher = self.dispatcher
        held: dict[str, list[Busy]] = {}
        sent_ahead = 0
        with dispatcher.changed:
            for worker in dispatcher.workers:
                busy = []
                for run in worker.runs.values():
                    if run is None or run.phase is Phase.WAITING:
                        sent_ahead += 1
                    if run is not None:
                        started = run.job.started_at
                        busy.append(Busy(run.job.style, None if started is None else now - started))
                if worker.state.usable:
                    held[worker.state.url] = busy
        return held, sent_ahead

    def _publish_positions(self, waiting: list[Waiting], now: float) -> None:
        held, sent_ahead = self._held(now)
        plan = schedule([job.style for job in waiting], held, self.dispatcher.run_times)
        self.drain_seconds = plan.drain_seconds
        changed = []
        for index, (job, start) in enumerate(zip(waiting, plan.starts, strict=True)):
            position = index + 1 + sent_ahead
            moment = None if start is None else now + start
            key = (position, None if moment is None else round(moment))
            if self._published.get(job.id) != key:
                self._published[job.id] = key
                changed.append((job, position, moment))
        if changed:
            records = self.dispatcher.records
            records.set_positions((job.id, pos, moment) for job, pos, moment in changed)
            for job, position, moment in changed:
                self.dispatcher.ledger.waiting_at(job.id, position, moment)
        live = {job.id for job in waiting}
        for job_id in [key for key in self._published if key not in live]:
            del self._published[job_id]
