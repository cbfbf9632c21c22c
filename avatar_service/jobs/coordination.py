"""How the engine coordinates with other processes: chosen once, by the factory.

Two strategies share one interface:

- ``Solo`` (this module): one process holds the database (the embedded SQLite, with its
  instance lock). Jobs left in flight by the previous run are taken up at start; nothing is
  leased, fenced or taken over; a job's events are all published here.
- ``Fleet`` (``fleet.py``): API replicas and worker processes share a PostgreSQL. Each process
  keeps a heartbeat in the worker registry, renews the leases of the jobs it holds, picks up
  cancels asked elsewhere, takes over the jobs of processes whose leases passed, fences itself
  off jobs taken from it, and gives its jobs back when it stops.

The dispatcher, the engine's public face and the ledger ask the strategy at the few points
where the two differ; nothing else tests which one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..comfyui import Preview
from . import outcomes
from .job import Job, JobStatus
from .records import JobRecords, is_agent_owner

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)


class Solo:
    """One process: the embedded default (SQLite)."""

    # Why the database cannot be used now (None: it answers); a solo process never loses it.
    database_error: str | None = None
    # How often a waiting request reads the job's record again (None: events suffice, since
    # every event of every job is published in this process).
    recheck_interval: float | None = None
    # What becomes of a job this process stops following (for the log).
    left_unfinished = "for the next start"

    def __init__(self, records: JobRecords) -> None:
        self.records = records
        self.dispatcher: Dispatcher | None = None

    def attach(self, dispatcher: Dispatcher) -> None:
        """The dispatcher this strategy serves (set once, by the factory)."""
        self.dispatcher = dispatcher

    # -- the dispatcher's life ---------------------------------------------------------------

    def start(self) -> int:
        """Take up the jobs left unfinished by the previous run; how many were in flight."""
        dispatcher = self._dispatcher()
        in_flight = 0
        for job in self.records.unfinished():
            if is_agent_owner(job.owner):
                continue  # a worker agent holds it: its lease tells whether it still does
            if job.server is None:
                if job.owner is not None:  # taken out of the queue when the service stopped
                    self.records.update(job, owner=None)
                continue
            if job.prompt_id is None:
                self.records.requeue(job, front=True)  # claimed, never queued on its server
                continue
            in_flight += 1
            logger.info("resuming job %s (status %s, prompt %s)", job.id, job.status, job.prompt_id)
            worker = dispatcher.worker_for(job.server)
            if worker is None:
                dispatcher.ledger.finish(job, JobStatus.FAILED, outcomes.server_removed(job.server))
                continue
            worker.take(self.records.update(job, owner=worker.owner))
        dispatcher.notify()
        return in_flight

    def round(self) -> bool:
        """One monitor round of coordination; False when nothing else can be done now."""
        return True

    def may_sweep(self) -> bool:
        """Whether this process sweeps the queue now (deadlines, positions)."""
        return True

    def stop(self) -> None:
        """The dispatcher stopped: unfinished jobs stay for the next start."""

    # -- questions the engine asks -----------------------------------------------------------

    def keeps_unclaimed_cancels(self, *, claimed_here: bool) -> bool:
        """Whether a cancel for a job with no run here is kept for when its run registers."""
        return True

    def usable_elsewhere(self) -> bool:
        """Whether a server of another process can take jobs now."""
        return False

    def reasons(self) -> dict[str, str | None]:
        """Why each server of other processes cannot take jobs (None: it can)."""
        return {}

    def end_guard(self, job: Job) -> str | None:
        """The holder that must still hold a job for this process to end it (None: any)."""
        return None

    @property
    def keeps_previews(self) -> bool:
        """Whether live previews are written to the database for other processes to serve."""
        return False

    def stored_preview(self, job_id: str) -> Preview | None:
        """A live preview kept in the database: a worker agent's (None: none)."""
        kept = self.records.preview(job_id)
        return None if kept is None else Preview(content_type=kept[0], data=kept[1])

    def describe_styles(self, styles: Sequence[dict[str, Any]]) -> None:
        """Add what the fleet knows to GET /styles (nothing for one process)."""

    def readiness(self, local: dict[str, Any]) -> dict[str, Any]:
        """The readiness report: this process's own servers."""
        return local

    def _dispatcher(self) -> Dispatcher:
        assert self.dispatcher is not None, "attach() the dispatcher first"
        return self.dispatcher
