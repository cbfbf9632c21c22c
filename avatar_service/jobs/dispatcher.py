"""The dispatcher: one worker per ComfyUI server pulls jobs from the service's queue.

A worker claims the oldest waiting job only when its server is up and has a free slot
(``slots`` prompts at once: one running plus one waiting by default, so the GPU never idles
between prompts). Nothing is pushed to a server before it can run it. A monitor thread watches
the servers: one unreachable for ``down_grace`` seconds is given up, and every job it held goes
back to the head of the queue; when it answers again, the prompts left there are removed (one
avatar per job, never two). The monitor also ends waiting jobs at their deadline and keeps each
waiting job's position and estimated start up to date.

A worker's contract is small (claim, run, give back, finish) so that it can later run in a
process of its own next to its GPU, sharing the job database.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..comfyui_client import ComfyUIClient, ComfyUIUnavailable, PromptRejected
from ..images import PhotoStore
from ..storage import AvatarStore
from ..workflow import Workflow
from . import outcomes
from .estimates import Busy, RunTimes, schedule
from .ledger import JobLedger, ms
from .prompt import FailoverAsked, Phase, PromptRun, RunSettings, ShutdownAsked, withdraw
from .records import Job, JobRecords, Waiting
from .results import collect_avatars
from .servers import ServerState

logger = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.25
# A worker whose server failed a submission waits this long before claiming again.
SUBMIT_FAILURE_PAUSE = 1.0


class ServerWorker:
    """Pulls jobs for one server while it has free slots; runs each in a slot thread."""

    def __init__(self, dispatcher: Dispatcher, state: ServerState, slots: int) -> None:
        self.dispatcher = dispatcher
        self.state = state
        self.slots = slots
        self.owner = f"{dispatcher.owner}/{state.url}"
        self.runs: dict[str, PromptRun | None] = {}  # None: claimed, run not built yet
        self.paused_until = 0.0
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> ComfyUIClient:
        """The server's client."""
        return self.state.client

    def start(self) -> None:
        """Start pulling."""
        self._thread = threading.Thread(
            target=self._pull, name=f"worker {self.state.url}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the pulling loop to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def has_room(self) -> bool:
        """Whether the server is up, has a free slot, and holds no more jobs than any other
        server with room (least outstanding first: idle servers get the first jobs).

        The caller holds ``dispatcher.changed``.
        """
        if not self._open():
            return False
        others = [w for w in self.dispatcher.workers if w is not self and w._open()]
        return all(len(self.runs) <= len(other.runs) for other in others)

    def _open(self) -> bool:
        return (
            self.state.usable
            and len(self.runs) < self.slots
            and time.monotonic() >= self.paused_until
        )

    def _pull(self) -> None:
        dispatcher = self.dispatcher
        while not dispatcher.stopping.is_set():
            with dispatcher.changed:
                seen = dispatcher.version
                if not self.has_room():
                    dispatcher.changed.wait(0.5)
                    continue
            try:
                job = dispatcher.records.claim_next(
                    self.state.url,
                    self.owner,
                    exclude_styles=self.state.withheld(),
                )
            except Exception:  # the database is locked or broken: try again shortly
                logger.exception("worker %s could not claim a job", self.state.url)
                job = None
            if job is None:
                with dispatcher.changed:
                    if dispatcher.version == seen and not dispatcher.stopping.is_set():
                        dispatcher.changed.wait(0.5)
                continue
            self.take(job)

    def take(self, job: Job) -> None:
        """Run a claimed (or resumed) job in a slot thread."""
        with self.dispatcher.changed:
            self.runs[job.id] = None
        thread = threading.Thread(
            target=self.dispatcher.drive, args=(self, job), name=f"job {job.id}", daemon=True
        )
        self.dispatcher.threads.add(thread)
        thread.start()


class Dispatcher:
    """The service's queue and its workers, one per server; server health and failover."""

    def __init__(
        self,
        *,
        records: JobRecords,
        ledger: JobLedger,
        clients: Sequence[ComfyUIClient],
        workflows: Mapping[str, Workflow],
        photos: PhotoStore,
        avatars: AvatarStore,
        settings: RunSettings,
        slots: int = 2,
        down_grace: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.ledger = ledger
        self.workflows = workflows
        self.photos = photos
        self.avatars = avatars
        self.settings = settings
        self.down_grace = down_grace
        self.clock = clock
        self.owner = f"engine-{uuid.uuid4().hex[:12]}"
        self.run_times = RunTimes()
        self.states = {client.base_url: ServerState(client) for client in clients}
        self.workers = [ServerWorker(self, state, slots) for state in self.states.values()]
        self.changed = threading.Condition()
        self.version = 0
        self.stopping = threading.Event()
        self.threads: set[threading.Thread] = set()
        self._monitor: threading.Thread | None = None
        self._published: dict[str, tuple[int, int | None]] = {}
        # Jobs cancelled after a worker claimed them but before their run was registered.
        self._cancels: set[str] = set()
        self.drain_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per server and the monitor."""
        for worker in self.workers:
            worker.start()
        self._monitor = threading.Thread(target=self._watch, name="dispatcher", daemon=True)
        self._monitor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling and following; unfinished jobs stay for the next start."""
        self.stopping.set()
        with self.changed:
            runs = [run for worker in self.workers for run in worker.runs.values() if run]
            self.changed.notify_all()
        for run in runs:
            run.stop(ShutdownAsked())
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._monitor is not None:
            self._monitor.join(max(0.0, deadline - time.monotonic()))
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def notify(self) -> None:
        """Something changed (a new job, a free slot, a server back): workers look again."""
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    # -- questions -------------------------------------------------------------------------

    def find_run(self, job_id: str) -> PromptRun | None:
        """The run of a job a worker holds, if any."""
        with self.changed:
            for worker in self.workers:
                run = worker.runs.get(job_id)
                if run is not None:
                    return run
        return None

    def cancel(self, job_id: str) -> None:
        """Tell a held job's run that it was cancelled (or its run, once it is registered)."""
        with self.changed:
            run = next(
                (w.runs[job_id] for w in self.workers if w.runs.get(job_id) is not None), None
            )
            if run is None:
                self._cancels.add(job_id)
        if run is not None:
            run.cancel()

    def any_usable(self) -> bool:
        """Whether some server can take jobs now."""
        return any(state.usable for state in self.states.values())

    def reasons(self) -> dict[str, str | None]:
        """Why each server cannot take jobs (None: it can)."""
        return {url: state.reason() for url, state in self.states.items()}

    # -- taking up jobs after a restart ----------------------------------------------------

    def resume(self, jobs: Sequence[Job]) -> int:
        """Take up jobs left unfinished by the previous run; return how many were in flight."""
        in_flight = 0
        for job in jobs:
            if job.server is None:
                if job.owner is not None:  # taken out of the queue when the service stopped
                    self.records.update(job, owner=None)
                continue
            worker = next((w for w in self.workers if w.state.url == job.server), None)
            if job.prompt_id is None:
                self.records.requeue(job, front=True)  # claimed, never queued on its server
                continue
            in_flight += 1
            logger.info("resuming job %s (status %s, prompt %s)", job.id, job.status, job.prompt_id)
            if worker is None:
                self.ledger.finish(job, "failed", outcomes.server_removed(job.server))
                continue
            worker.take(self.records.update(job, owner=worker.owner))
        self.notify()
        return in_flight

    # -- one job on one server -------------------------------------------------------------

    def drive(self, worker: ServerWorker, job: Job) -> None:
        """Run a claimed job on the worker's server to its end (or give it back)."""
        run: PromptRun | None = None
        try:
            workflow = self.workflows.get(job.style)
            if workflow is None:
                raise outcomes.style_removed(job.style)
            run = PromptRun(
                job,
                client=worker.client,
                workflow=workflow,
                records=self.records,
                ledger=self.ledger,
                photos=self.photos,
                settings=self.settings,
                clock=self.clock,
            )
            with self.changed:
                worker.runs[job.id] = run
                cancelled = job.id in self._cancels
                self._cancels.discard(job.id)
            if cancelled or job.cancel_requested:
                run.cancel()  # cancelled before the run was registered, so it was not told
            if not worker.state.usable and worker.state.down_since is not None:
                run.stop(FailoverAsked())
            entry = run.run()
            job = run.job
            fetch_started = self.clock()
            avatars = collect_avatars(
                job, worker.client, workflow, entry, self.avatars, patiently=run.patiently
            )
            timings = {**job.timings, "fetchMs": ms(self.clock() - fetch_started)}
            job = replace(job, timings=timings)  # written by finish()
            if job.started_at is not None:
                self.run_times.record(worker.state.url, job.style, self.clock() - job.started_at)
            self.ledger.finish(job, "succeeded", None, avatars=avatars)
        except outcomes.Cancelled:
            self.ledger.finish(run.job if run else job, "cancelled", None)
        except outcomes.Shutdown:
            logger.info("job %s left unfinished for the next start", job.id)
        except outcomes.FailedOver:
            self._give_back(run.job if run else job, worker, "its server was given up")
        except Exception as exc:  # every failure ends the job; none escapes the thread
            current = run.job if run else job
            if self.stopping.is_set():
                logger.info("job %s left unfinished for the next start", current.id)
            elif self._may_run_elsewhere(exc, current, worker, run):
                self._give_back(current, worker, str(exc))
            else:
                self._fail(current, exc)
        finally:
            if run is not None:
                run.close()
            with self.changed:
                worker.runs.pop(job.id, None)
                self._cancels.discard(job.id)
            self.threads.discard(threading.current_thread())
            self.notify()

    def _may_run_elsewhere(
        self, exc: Exception, job: Job, worker: ServerWorker, run: PromptRun | None
    ) -> bool:
        """Whether a failure is the server's, not the job's, so another server may run it."""
        if isinstance(exc, PromptRejected) and exc.server_lacks_something:
            worker.state.withhold(job.style, exc)
            return any(job.style not in s.withheld() for s in self.states.values())
        if isinstance(exc, ComfyUIUnavailable) and (run is None or run.watch is None):
            # The server went away before the prompt was queued: no prompt to follow there.
            worker.paused_until = time.monotonic() + SUBMIT_FAILURE_PAUSE
            return True
        return False

    def _give_back(self, job: Job, worker: ServerWorker, reason: str) -> None:
        """Put a job back at the head of the queue; its prompt there is removed later."""
        current = self.records.get(job.id) or job
        if current.ended:
            return
        if current.prompt_id and current.server:
            self.records.abandon_prompt(current.server, current.prompt_id, current.id)
        logger.warning(
            "job %s goes back to the head of the queue (%s: %s)", job.id, worker.state.url, reason
        )
        requeued = self.records.requeue(current, front=True)
        self.ledger.requeued(requeued)

    def _fail(self, job: Job, exc: BaseException) -> None:
        error = outcomes.error_for(exc, job)
        if outcomes.is_expected(exc):
            logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
        else:
            logger.error("job %s failed unexpectedly", job.id, exc_info=exc)
        self.ledger.finish(job, "failed", error)

    # -- the monitor -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self.stopping.wait(MONITOR_INTERVAL):
            try:
                self._check_servers()
                self._sweep_queue()
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
                with self.changed:
                    runs = [run for run in worker.runs.values() if run is not None]
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

    def _sweep_queue(self) -> None:
        """End waiting jobs past their deadline or cancelled; refresh positions and estimates."""
        now = self.clock()
        waiting: list[Waiting] = []
        unrunnable_styles: dict[str, PromptRejected | None] = {}
        for job in self.records.waiting_brief():
            if job.style not in unrunnable_styles:
                unrunnable_styles[job.style] = self._unrunnable(job.style)
            unrunnable = unrunnable_styles[job.style]
            if job.deadline <= now or job.cancel_requested or unrunnable is not None:
                taken = self.records.take_waiting(job.id)
                if taken is None:
                    continue
                if taken.cancel_requested:
                    self.ledger.finish(taken, "cancelled", None)
                elif unrunnable is not None:
                    self._fail(taken, unrunnable)
                else:
                    error = outcomes.deadline_passed_waiting(
                        taken, timeout=self.settings.job_timeout, servers=self.reasons()
                    )
                    logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
                    self.ledger.finish(taken, "failed", error)
                self._published.pop(job.id, None)
                continue
            waiting.append(job)
        self._publish_positions(waiting, now)

    def _unrunnable(self, style: str) -> PromptRejected | None:
        """The rejection of a style every server withholds (None when one may run it)."""
        rejection = None
        for state in self.states.values():
            withheld = state.withheld().get(style)
            if withheld is None:
                return None
            rejection = withheld
        return rejection

    def _publish_positions(self, waiting: list[Waiting], now: float) -> None:
        held: dict[str, list[Busy]] = {}
        sent_ahead = 0
        with self.changed:
            for worker in self.workers:
                busy = []
                for run in worker.runs.values():
                    if run is None or run.phase is Phase.WAITING:
                        sent_ahead += 1
                    if run is not None:
                        started = run.job.started_at
                        busy.append(Busy(run.job.style, None if started is None else now - started))
                if worker.state.usable:
                    held[worker.state.url] = busy
        plan = schedule([job.style for job in waiting], held, self.run_times)
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
            self.records.set_positions((job.id, pos, moment) for job, pos, moment in changed)
            for job, position, moment in changed:
                self.ledger.waiting_at(job.id, position, moment)
        live = {job.id for job in waiting}
        for job_id in [key for key in self._published if key not in live]:
            del self._published[job_id]

    def snapshot(self) -> dict[str, Any]:
        """Per server: given up since when, jobs held, styles withheld (for readiness)."""
        report: dict[str, Any] = {}
        with self.changed:
            for worker in self.workers:
                state = worker.state
                report[state.url] = {
                    "down": state.down_since is not None,
                    "downSince": state.down_since,
                    "jobs": len(worker.runs),
                    "slots": worker.slots,
                    "withheldStyles": sorted(state.withheld()),
                }
        return report
