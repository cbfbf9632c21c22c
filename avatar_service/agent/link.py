"""How an agent's engine coordinates with the service: a third strategy beside Solo and Fleet.

Each monitor round beats (at most every ``HEARTBEAT_INTERVAL``): the agent says which jobs it
follows and whether its ComfyUI can take jobs; the service renews their leases and answers
which it still holds (a job taken from the agent is no longer followed: fencing), which were
cancelled (withdrawn from ComfyUI within about a heartbeat), which to follow (a job given to
it, or whose claim's answer it never got) and which prompts to remove from its server. While
the service does not answer, the agent takes no new job; past the lease its runs stop (the
service has put their jobs back). On stop, its prompts are withdrawn and the service gives its
jobs back to the queue at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..jobs.agents import HEARTBEAT_INTERVAL
from ..jobs.coordination import Solo
from ..jobs.prompt import ShutdownAsked
from ..jobs.records import AbandonedPrompt, from_row
from ..jobs.withdrawal import withdraw
from ..persistence.database import DatabaseUnavailable
from .api import AgentUnknown, ServiceApi
from .remote import EventSender, RemoteLedger

logger = logging.getLogger(__name__)


class AgentLink(Solo):
    """Heartbeats, fencing, cancels and leaving, for an agent's engine."""

    left_unfinished = "(given back to the queue when the agent stops)"

    def __init__(
        self,
        api: ServiceApi,
        ledger: RemoteLedger,
        sender: EventSender,
        *,
        name: str,
        lease: float,
    ) -> None:
        super().__init__(ledger.remote)
        self.api = api
        self.ledger = ledger
        self.remote = ledger.remote
        self.sender = sender
        self.name = name
        self.lease = lease
        self.database_error: str | None = None
        self._lost_at: float | None = None
        self._beat_at = 0.0
        self._cancels_seen: set[str] = set()
        self._released: dict[str, int] = {}  # job id -> beats it was kept but not followed
        self._elsewhere = False  # whether another server could take jobs, at the last beat

    def start(self) -> int:
        """Beat once: the service learns whether the server can take jobs."""
        self.round()
        self._dispatcher().notify()
        return 0

    def round(self) -> bool:
        """One heartbeat when due; False while the service does not answer."""
        now = time.monotonic()
        if now < self._beat_at:
            return self.database_error is None
        self._beat_at = now + HEARTBEAT_INTERVAL
        dispatcher = self._dispatcher()
        worker = dispatcher.workers[0]
        reported = [job_id for _worker, job_id in dispatcher.claimed()]
        beat = {
            "jobs": reported,
            "usable": worker.state.usable,
            "reason": worker.state.reason(),
            "slots": worker.slots,
            "withheld": sorted(worker.state.withheld()),
        }
        try:
            answer = self.api.heartbeat(beat)
        except AgentUnknown:
            logger.warning("the service forgot this agent; registering again")
            self._register_again()
            return self.database_error is None
        except DatabaseUnavailable as exc:
            self._unreachable(exc, now)
            return False
        if self.database_error is not None:
            logger.warning("the service answers again: taking jobs again")
            self.database_error = None
            self._lost_at = None
            dispatcher.notify()
        self._apply(answer, set(reported))
        self._forget_released()
        return True

    def may_sweep(self) -> bool:
        """The service sweeps its queue; an agent never does."""
        return False

    def usable_elsewhere(self) -> bool:
        """Whether a server other than this agent's could take jobs (the last heartbeat's)."""
        return self._elsewhere

    def keeps_unclaimed_cancels(self, *, claimed_here: bool) -> bool:
        """A cancel reaches the agent only for jobs it holds."""
        return claimed_here

    def stop(self) -> None:
        """Withdraw this agent's prompts from its ComfyUI and give its jobs back at once."""
        client = self._dispatcher().workers[0].client
        withdrawn = [prompt for prompt in self.remote.prompts() if withdraw(client, prompt)]
        try:
            self.sender.flush(timeout=5.0)
            self.api.leave(withdrawn)
        except Exception as exc:  # the service is gone: the leases pass, it takes the jobs back
            logger.error("could not give jobs back when stopping (%s); their leases will pass", exc)
        self.sender.stop()

    # -- one beat ----------------------------------------------------------------------------

    def _apply(self, answer: dict[str, Any], reported: set[str]) -> None:
        dispatcher = self._dispatcher()
        self._elsewhere = bool(answer.get("elsewhere"))
        held = set(answer.get("held") or [])
        for _worker, job_id, run in dispatcher.runs():
            if job_id in reported and job_id not in held and not run.job.ended:
                logger.warning("job %s is no longer this agent's; not followed here", job_id)
                run.stop(ShutdownAsked())
        cancels = set(answer.get("cancel") or [])
        for job_id in cancels - self._cancels_seen:
            dispatcher.cancel(job_id)
        self._cancels_seen = cancels
        claimed = {job_id for _worker, job_id in dispatcher.claimed()}
        for row in answer.get("adopt") or []:
            job = from_row(row)
            if job.id not in claimed:
                logger.warning("following job %s (prompt %s) here", job.id, job.prompt_id)
                self.remote.note(job)
                dispatcher.workers[0].take(job)
        self.remote.abandoned = [
            AbandonedPrompt(self.name, item["promptId"], item["jobId"])
            for item in answer.get("abandoned") or []
        ]

    def _forget_released(self) -> None:
        """What is kept for jobs no longer followed here (ended, given back, taken away) is
        dropped after two beats: nothing accumulates per job."""
        followed = {job_id for _worker, job_id in self._dispatcher().claimed()}
        kept = self.ledger.known() - followed
        self._released = {job_id: self._released.get(job_id, 0) + 1 for job_id in kept}
        for job_id, beats in list(self._released.items()):
            if beats >= 2:
                self.ledger.forget(job_id)
                del self._released[job_id]

    def _register_again(self) -> None:
        worker = self._dispatcher().workers[0]
        try:
            self.api.register(name=self.name, slots=worker.slots)
        except DatabaseUnavailable as exc:
            self._unreachable(exc, time.monotonic())

    def _unreachable(self, exc: Exception, now: float) -> None:
        if self.database_error is None:
            self._lost_at = now
            logger.error("the service does not answer (%s): taking no new job until it does", exc)
        self.database_error = f"the service does not answer: {exc}"
        self._beat_at = now + min(HEARTBEAT_INTERVAL, 1.0)
        if self._lost_at is not None and now - self._lost_at > self.lease:
            runs = [run for _worker, _job_id, run in self._dispatcher().runs()]
            if runs:
                logger.error(
                    "the service has not answered for %.0f s (past the lease): %d job(s) left "
                    "to it to put back in the queue",
                    now - self._lost_at,
                    len(runs),
                )
                for run in runs:
                    run.stop(ShutdownAsked())
