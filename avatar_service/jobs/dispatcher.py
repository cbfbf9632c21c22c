"""The dispatcher: the server workers, the queue sweeper and the monitor, under one strategy.

One ``ServerWorker`` per ComfyUI server pulls jobs from the service's queue when its server has
a free slot (``workers``). A monitor thread, every ``MONITOR_INTERVAL``:

1. runs the coordination's round (``coordination``: nothing for one process; heartbeats,
   leases, cancels and takeover for a fleet; without the database nothing else is done);
2. watches the servers: one unreachable for ``down_grace`` seconds is given up, and every job it
   held goes back to the head of the queue; when it answers again, the prompts left there are
   removed (one avatar per job, never two);
3. sweeps the queue (``sweeper``): deadlines, cancels, positions and estimated starts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..comfyui import ComfyUIClient
from ..comfyui.workflows import Workflow
from . import outcomes
from .coordination import Solo
from .estimates import RunTimes
from .job import Job, JobStatus
from .ledger import JobLedger
from .photo_source import AvatarSink, PhotoSource
from .prompt import FailoverAsked, PromptRun, RunSettings, ShutdownAsked
from .records import JobRecords
from .servers import ServerState
from .sweeper import QueueSweeper
from .withdrawal import withdraw
from .workers import ServerWorker

logger = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.25


class AgentServers(Protocol):
    """The servers that worker agents drive, as the dispatcher asks about them."""

    def any_usable(self) -> bool:
        """Whether some agent's server can take jobs now."""
        ...

    def reasons(self) -> dict[str, str | None]:
        """Why each agent's server cannot take jobs (None: it can)."""
        ...

    def sweep(self) -> None:
        """Put back in the queue the jobs of agents whose leases passed."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """The live agents, as readiness reports them."""
        ...


class Dispatcher:
    """The service's queue and its workers, one per server; server health and failover."""

    def __init__(
        self,
        *,
        records: JobRecords,
        ledger: JobLedger,
        clients: Sequence[ComfyUIClient],
        workflows: Mapping[str, Workflow],
        photos: PhotoSource,
        avatars: AvatarSink,
        settings: RunSettings,
        coordination: Solo,
        slots: int = 2,
        down_grace: float = 10.0,
        lease: float = 60.0,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.records = records
        self.ledger = ledger
        self.workflows = workflows
        self.photos = photos
        self.avatars = avatars
        self.settings = settings
        self.coordination = coordination
        self.down_grace = down_grace
        self.lease = lease
        self.clock = clock
        self.owner = owner or f"engine-{uuid.uuid4().hex[:12]}"
        self.started_at = clock()
        self.run_times = RunTimes()
        self.states = {client.base_url: ServerState(client) for client in clients}
        self.workers = [ServerWorker(self, state, slots) for state in self.states.values()]
        self.sweeper = QueueSweeper(self, clock=clock)
        self.changed = threading.Condition()
        self.version = 0
        # Counts the changes that may have made a job claimable (``notify(work=True)``).
        self.work = 0
        self.stopping = threading.Event()
        self.threads: set[threading.Thread] = set()
        self._monitor: threading.Thread | None = None
        # Jobs cancelled after a worker claimed them but before their run was registered.
        self._cancels: set[str] = set()
        # Worker agents' servers, when the service admits agents (``agents.AgentDesk``).
        self.agents: AgentServers | None = None
        coordination.attach(self)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Take up jobs as the coordination says, start one worker per server and the
        monitor; how many jobs were in flight."""
        in_flight = self.coordination.start()
        for worker in self.workers:
            worker.start()
        self._monitor = threading.Thread(target=self._watch, name="dispatcher", daemon=True)
        self._monitor.start()
        return in_flight

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling and following; unfinished jobs are left as the coordination says."""
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        for _worker, _job_id, run in self.runs():
            run.stop(ShutdownAsked())
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._monitor is not None:
            self._monitor.join(max(0.0, deadline - time.monotonic()))
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.coordination.stop()

    def notify(self, *, work: bool = True) -> None:
        """Something changed (a new job, a free slot, a server back): workers look again.

        ``work=False``: nothing new may be claimable (a slot was freed by a job that ended),
        so a worker that found the queue empty since need not ask it again at once.
        """
        with self.changed:
            self.version += 1
            if work:
                self.work += 1
            self.changed.notify_all()

    # -- questions -------------------------------------------------------------------------

    def runs(self) -> list[tuple[ServerWorker, str, PromptRun]]:
        """Every registered run held here: (worker, job id, run)."""
        with self.changed:
            return [
                (worker, job_id, run)
                for worker in self.workers
                for job_id, run in worker.runs.items()
                if run is not None
            ]

    def claimed(self) -> list[tuple[ServerWorker, str]]:
        """Every job held here, its run registered or not: (worker, job id)."""
        with self.changed:
            return [(worker, job_id) for worker in self.workers for job_id in worker.runs]

    def find_run(self, job_id: str) -> PromptRun | None:
        """The run of a job a worker holds, if any."""
        return next((run for _w, held, run in self.runs() if held == job_id), None)

    def worker_for(self, server: str | None) -> ServerWorker | None:
        """This process's worker for a server, if it drives that server."""
        return next((w for w in self.workers if w.state.url == server), None)

    @property
    def drain_seconds(self) -> float | None:
        """When the queue is estimated to empty (seconds), if known."""
        return self.sweeper.drain_seconds

    def any_usable(self) -> bool:
        """Whether some server can take jobs now (here, or elsewhere in a fleet)."""
        if any(state.usable for state in self.states.values()):
            return True
        if self.agents is not None and self.agents.any_usable():
            return True
        return self.coordination.usable_elsewhere()

    def reasons(self) -> dict[str, str | None]:
        """Why each server cannot take jobs (None: it can)."""
        reasons = self.coordination.reasons()
        if self.agents is not None:
            reasons.update(self.agents.reasons())
        reasons.update({url: state.reason() for url, state in self.states.items()})
        return reasons

    # -- cancels ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Tell a held job's run that it was cancelled (or its run, once it is registered)."""
        with self.changed:
            run = next(
                (w.runs[job_id] for w in self.workers if w.runs.get(job_id) is not None), None
            )
            claimed_here = any(job_id in w.runs for w in self.workers)
            if run is None and self.coordination.keeps_unclaimed_cancels(claimed_here=claimed_here):
                self._cancels.add(job_id)
        if run is not None:
            run.cancel()

    def take_early_cancel(self, job_id: str) -> bool:
        """Whether the job was cancelled before its run was registered (the caller holds
        ``changed``)."""
        cancelled = job_id in self._cancels
        self._cancels.discard(job_id)
        return cancelled

    # -- jobs ending -----------------------------------------------------------------------

    def released(self, worker: ServerWorker, job_id: str) -> None:
        """A slot thread let its job go: the slot is free."""
        with self.changed:
            worker.runs.pop(job_id, None)
            self._cancels.discard(job_id)
        self.threads.discard(threading.current_thread())
        self.notify(work=False)  # a job given back was announced by itself

    def fail(self, job: Job, exc: BaseException) -> None:
        """End a job failed, with the error its exception maps to."""
        error = outcomes.error_for(exc, job)
        if outcomes.is_expected(exc):
            logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
        else:
            logger.error("job %s failed unexpectedly", job.id, exc_info=exc)
        self.ledger.finish(job, JobStatus.FAILED, error)

    # -- the monitor -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stopping.wait(MONITOR_INTERVAL):
            try:
                self.ledger.pack_ended()  # off the threads that end jobs
                if not self.coordination.round():
                    continue  # nothing else can be done without the database
                if self.agents is not None:
                    self.agents.sweep()
                self._check_servers()
                if self.coordination.may_sweep():
                    self.sweeper.sweep()
            except Exception:  # the monitor must outlive any one bad round
                logger.exception("dispatcher monitor round failed")

    def _check_servers(self) -> None:
        for worker in self.workers:
            state = worker.state
            if state.client.connected:
                if state.down_since is not None:
                    logger.warning("ComfyUI %s answers again; giving it jobs", state.url)
                    state.down_since = None
                    self.notify()
                self._remove_abandoned(state)
            elif state.down_since is None and state.unreachable_for() >= self.down_grace:
                state.down_since = self.clock()
                runs = [run for w, _job_id, run in self.runs() if w is worker]
                logger.warning(
                    "ComfyUI %s unreachable for %.0f s: given up; %d job(s) go back to the queue",
                    state.url,
                    state.unreachable_for(),
                    len(runs),
                )
                for run in runs:
                    run.stop(FailoverAsked())

    def _remove_abandoned(self, state: ServerState) -> None:
        """Remove from a server the prompts of jobs that went elsewhere while it was away."""
        for prompt in self.records.abandoned_prompts(state.url):
            if withdraw(state.client, prompt.prompt_id):
                logger.info(
                    "removed prompt %s of job %s from %s (the job ran elsewhere)",
                    prompt.prompt_id,
                    prompt.job_id,
                    state.url,
                )
                self.records.forget_abandoned(state.url, prompt.prompt_id)

    def snapshot(self) -> dict[str, Any]:
        """Per server: given up since when, jobs held, styles withheld (for readiness)."""
        report: dict[str, Any] = {}
        with self.changed:
            for worker in self.workers:
                state = worker.state
                report[state.url] = {
                    "down": state.down_since is not None,
                    "downSince": state.down_since,
                    "stalled": state.stalled,
                    "stalledUntil": state.stalled_until if state.stalled else None,
                    "jobs": len(worker.runs),
                    "slots": worker.slots,
                    "withheldStyles": sorted(state.withheld()),
                }
        return report
