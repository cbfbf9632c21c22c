"""Taking over the jobs of a process whose leases have passed (killed, or cut off).

For each expired job, one round decides, in this order:

- the job is this process's own (its lease lapsed while it was cut off): renewed next beat;
- its server has a live worker in another process: that process takes it (it can follow the
  prompt there);
- its server has a usable worker here and the prompt is known: follow the prompt here by id;
- otherwise take it: a job still in the queue goes back to it; a prompt that succeeded on its
  server (``/history``) is finished from its images; else the prompt is withdrawn (or left to
  be removed when a worker drives that server again) and the job goes to the head of the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..comfyui import ComfyUIClient
from .job import Job, JobStatus
from .records import is_agent_owner
from .results import collect_avatars
from .withdrawal import FOREIGN_TIMEOUT, withdraw_from

if TYPE_CHECKING:
    from .fleet import Fleet
    from .workers import ServerWorker

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Takeover:
    """One round of takeover, at time ``now``."""

    def __init__(self, fleet: Fleet, now: float) -> None:
        self.fleet = fleet
        self.dispatcher = fleet._dispatcher()
        self.records = fleet.records
        self.now = now

    def run(self) -> bool:
        """Take over what can be; whether any lease had passed."""
        expired = self.records.expired(self.now)
        if not expired:
            return False
        me = self.dispatcher.owner
        live = {e.server for e in self.fleet.registry.live(self.now) if e.process != me}
        running_here = {job_id for _worker, job_id in self.dispatcher.claimed()}
        for job in expired:
            if job.id in running_here:
                continue  # this process's own lease lapsed while it was cut off; renewed next
            if is_agent_owner(job.owner):
                continue  # a worker agent's: the agent desk puts it back (agents.py)
            worker = self.dispatcher.worker_for(job.server)
            if job.server is not None and worker is None and job.server in live:
                continue  # a process driving that server takes it (it can follow the prompt)
            if worker is not None and worker.state.usable and job.prompt_id is not None:
                self._follow_here(job, worker)
            else:
                self._take(job)
        return True

    def _follow_here(self, job: Job, worker: ServerWorker) -> None:
        until = self.now + self.fleet.lease
        taken = self.records.take_over(job, worker.owner, until=until, now=self.now)
        if taken is not None:
            logger.warning(
                "job %s: its holder %s is gone; following prompt %s on %s here",
                job.id,
                job.owner,
                job.prompt_id,
                job.server,
            )
            worker.take(taken)

    def _take(self, job: Job) -> None:
        until = self.now + self.fleet.lease
        owner = f"{self.dispatcher.owner}/takeover"
        taken = self.records.take_over(job, owner, until=until, now=self.now)
        if taken is None:
            return
        if taken.server is None:  # taken out of the queue by a process that died
            self.records.update(taken, owner=None, lease_expires=None)
            logger.warning("job %s: back in the queue (its process is gone)", job.id)
            return
        if taken.prompt_id is not None and self._finish_from_history(taken, holder=job.owner):
            return
        if taken.prompt_id is not None and not withdraw_from(taken.server, taken.prompt_id):
            # removed when a worker drives that server again
            self.records.abandon_prompt(taken.server, taken.prompt_id, taken.id)
        requeued = self.records.requeue(taken, front=True)
        self.dispatcher.ledger.requeued(requeued)
        logger.warning(
            "job %s: its holder %s is gone; back to the head of the queue", job.id, job.owner
        )

    def _finish_from_history(self, job: Job, *, holder: str | None) -> bool:
        """A job whose prompt already succeeded on its server (read from ComfyUI's /history by
        prompt id): fetch its images and end it, so it is not run again. False when the prompt
        has no success entry there (or the server does not answer)."""
        workflow = self.dispatcher.workflows.get(job.style)
        if workflow is None or job.server is None or job.prompt_id is None:
            return False
        client = ComfyUIClient(job.server, timeout=FOREIGN_TIMEOUT)
        try:
            entry = client.history(job.prompt_id)
            if entry is None or not entry.succeeded:
                return False
            avatars = collect_avatars(
                job,
                client,
                workflow,
                entry,
                self.dispatcher.avatars,
                patiently=_at_once,
            )
        except Exception as exc:  # the server is gone too, or its files are: run it again
            logger.warning("job %s: could not read its prompt on %s: %s", job.id, job.server, exc)
            return False
        finally:
            client.close()
        logger.warning(
            "job %s: its holder %s is gone; its prompt %s had succeeded on %s: finished from "
            "the server's history",
            job.id,
            holder,
            job.prompt_id,
            job.server,
        )
        self.dispatcher.ledger.finish(job, JobStatus.SUCCEEDED, None, avatars=avatars)
        return True


def _at_once(call: Callable[..., T], *, finished: bool = False) -> T:
    """``call()`` once, with the client's own timeouts: a server this process does not drive
    is not waited for."""
    return call()
