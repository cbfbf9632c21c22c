"""The dispatcher: one worker per ComfyUI server pulls jobs from the service's queue.

A worker claims the oldest waiting job only when its server is up and has a free slot
(``slots`` prompts at once: one running plus one waiting by default, so the GPU never idles
between prompts). Nothing is pushed to a server before it can run it. A monitor thread watches
the servers: one unreachable for ``down_grace`` seconds is given up, and every job it held goes
back to the head of the queue; when it answers again, the prompts left there are removed (one
avatar per job, never two). The monitor also ends waiting jobs at their deadline and keeps each
waiting job's position and estimated start up to date.

A worker's contract is small (claim when a slot is free, renew the lease, report through the
shared records, give back) so that it runs in a process of its own next to its GPU when the
database is shared (PostgreSQL). Then every process also keeps a heartbeat in the worker
registry (``fleet``), renews the leases of the jobs it holds, picks up cancels asked on other
processes, and takes over the jobs of a process whose leases have passed (killed, or cut off
from the database): a job whose server still has a worker here is followed again by its prompt
id (through ``/history``, as after a restart); for any other, the server is asked over HTTP:
a prompt that succeeded there is finished from its images, else it is withdrawn and the job goes
back to the head of the queue. One process at a time
(``leadership``) sweeps the queue. A process stopped with SIGTERM gives its jobs back at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from ..comfyui import ComfyUIClient, ComfyUIUnavailable, PromptRejected
from ..comfyui.workflows import Workflow
from ..persistence.database import DatabaseUnavailable, Leadership
from ..photos.store import PhotoStore
from ..storage.avatars import AvatarStore
from . import outcomes
from .estimates import Busy, RunTimes, schedule
from .fleet import Fleet, WorkerEntry
from .ledger import JobLedger, ms
from .prompt import FailoverAsked, Phase, PromptRun, RunSettings, ShutdownAsked, withdraw
from .records import Job, JobRecords, LeaseLost, Waiting
from .results import collect_avatars
from .servers import ServerState

logger = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.25
# A worker whose server failed a submission waits this long before claiming again.
SUBMIT_FAILURE_PAUSE = 1.0
# With a shared database: the longest time between two heartbeats (the registry shows a
# server's state this fresh), and how often expired leases are looked for (seconds).
HEARTBEAT_MAX = 1.0
RECLAIM_INTERVAL = 1.0
# A registry row whose lease passed this long ago is deleted.
FORGET_WORKERS_AFTER = 3600.0


def _withdraw_from(server: str, prompt_id: str) -> bool:
    """Withdraw a prompt from a server this process does not drive (HTTP only); True if sent."""
    client = ComfyUIClient(server, timeout=httpx.Timeout(5.0, connect=2.0))
    try:
        return withdraw(client, prompt_id)
    finally:
        client.close()


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
            self.dispatcher.database_error is None
            and self.state.usable
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
                    lease_seconds=dispatcher.lease,
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
        lease: float = 60.0,
        fleet: Fleet | None = None,
        leadership: Leadership | None = None,
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
        # Processes sharing the database: leases, the registry, the queue sweeper's role.
        self.shared = records.dialect.shared
        self.lease = lease
        self.fleet = fleet if fleet is not None else Fleet(records.database)
        self.leadership = leadership if leadership is not None else Leadership()
        self.started_at = clock()
        # Why the database cannot be used now (None: it answers), and since when.
        self.database_error: str | None = None
        self._database_lost_at: float | None = None
        self._beat_at = 0.0
        self._reclaim_at = 0.0
        self._cancels_seen: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start one worker per server and the monitor (with a shared database, the workers
        join the registry first)."""
        if self.shared:
            self._share()
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
        if self.shared:
            self._leave()

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
        """Tell a held job's run that it was cancelled (or its run, once it is registered).

        With a shared database a job held by another process learns it from its record.
        """
        with self.changed:
            run = next(
                (w.runs[job_id] for w in self.workers if w.runs.get(job_id) is not None), None
            )
            claimed_here = any(job_id in w.runs for w in self.workers)
            if run is None and (claimed_here or not self.shared):
                self._cancels.add(job_id)
        if run is not None:
            run.cancel()

    def any_usable(self) -> bool:
        """Whether some server can take jobs now (with a shared database: anywhere in the
        fleet)."""
        if any(state.usable for state in self.states.values()):
            return True
        return self.shared and any(entry.usable for entry in self.fleet.live(self.clock()))

    def reasons(self) -> dict[str, str | None]:
        """Why each server cannot take jobs (None: it can)."""
        reasons: dict[str, str | None] = {}
        if self.shared:
            for entry in self.fleet.live(self.clock()):
                if reasons.get(entry.server, "") is not None:
                    reasons[entry.server] = None if entry.usable else entry.reason
        reasons.update({url: state.reason() for url, state in self.states.items()})
        return reasons

    # -- taking up jobs after a restart ----------------------------------------------------

    def resume(self, jobs: Sequence[Job]) -> int:
        """Take up jobs left unfinished by the previous run; return how many were in flight.

        (With a shared database nothing is taken up here: jobs whose leases pass are taken
        over by whichever process sees them first.)
        """
        if self.shared:
            self.notify()
            return 0
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
            logger.info(
                "job %s left unfinished %s",
                job.id,
                "(given back to the queue)" if self.shared else "for the next start",
            )
        except outcomes.FailedOver:
            self._give_back(run.job if run else job, worker, "its server was given up")
        except (LeaseLost, DatabaseUnavailable) as exc:
            # Cut off from the database, or past the lease: the process that takes the job over
            # ends it; nothing is written from here.
            logger.error("job %s left to the process that takes it over: %s", job.id, exc)
        except Exception as exc:  # every failure ends the job; none escapes the thread
            current = run.job if run else job
            if self.stopping.is_set():
                logger.info(
                    "job %s left unfinished %s",
                    current.id,
                    "(given back to the queue)" if self.shared else "for the next start",
                )
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
                self._cancels_seen.discard(job.id)
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
                if self.shared and not self._share():
                    continue  # nothing else can be done without the database
                self._check_servers()
                if self.leadership.held():
                    self._sweep_queue()
            except Exception:  # the monitor must outlive any one bad round
                logger.exception("dispatcher monitor round failed")

    # -- a shared database: heartbeat, leases, cancels, takeover ---------------------------

    def _share(self) -> bool:
        """One round of what processes sharing the database owe each other; False when the
        database did not answer."""
        now = self.clock()
        try:
            if now >= self._beat_at:
                self._beat_at = now + min(self.lease / 3, HEARTBEAT_MAX)
                held = self.records.renew_leases(f"{self.owner}/", now + self.lease)
                self.fleet.beat(self._entries(now))
                self._fence(held)
            self._take_cancels()
            if now >= self._reclaim_at:
                self._reclaim_at = now + RECLAIM_INTERVAL
                self._reclaim(now)
        except Exception as exc:  # the database is gone or broken: no new work until it is back
            self._database_failed(exc, now)
            return False
        if self.database_error is not None:
            logger.warning("the database answers again: taking jobs again")
            self.database_error = None
            self._database_lost_at = None
            self.notify()
        return True

    def _database_failed(self, exc: Exception, now: float) -> None:
        if self.database_error is None:
            self._database_lost_at = now
            logger.error(
                "lost the database (%s): this process takes no new jobs until it answers again",
                exc,
            )
        self.database_error = f"the database does not answer: {exc}"
        self._beat_at = 0.0  # beat again as soon as it answers
        if self._database_lost_at is not None and now - self._database_lost_at > self.lease:
            with self.changed:
                runs = [run for w in self.workers for run in w.runs.values() if run is not None]
            if runs:
                logger.error(
                    "the database has not answered for %.0f s (past the lease): %d job(s) "
                    "left to the processes that take them over",
                    now - self._database_lost_at,
                    len(runs),
                )
                for run in runs:
                    run.stop(ShutdownAsked())

    def _entries(self, now: float) -> list[WorkerEntry]:
        with self.changed:
            return [
                WorkerEntry(
                    id=worker.owner,
                    process=self.owner,
                    server=worker.state.url,
                    slots=worker.slots,
                    jobs=len(worker.runs),
                    usable=worker.state.usable,
                    reason=worker.state.reason(),
                    started_at=self.started_at,
                    heartbeat_at=now,
                    lease_expires=now + self.lease,
                    withheld=sorted(worker.state.withheld()),
                )
                for worker in self.workers
            ]

    def _fence(self, held: set[str]) -> None:
        """Stop following jobs another process took over (this one's lease had passed)."""
        with self.changed:
            lost = [
                (job_id, run)
                for worker in self.workers
                for job_id, run in worker.runs.items()
                if run is not None and job_id not in held and not run.job.ended
            ]
        for job_id, run in lost:
            current = self.records.get(job_id)
            if current is not None and not current.ended and current.owner != run.job.owner:
                logger.warning(
                    "job %s was taken over by another process; not followed here", job_id
                )
                run.stop(ShutdownAsked())

    def _take_cancels(self) -> None:
        """Cancels asked on any process, for the jobs this one holds."""
        for job_id in self.records.cancel_requests(f"{self.owner}/"):
            if job_id not in self._cancels_seen:
                self._cancels_seen.add(job_id)
                self.cancel(job_id)

    def _reclaim(self, now: float) -> None:
        """Take over the jobs of processes whose leases have passed."""
        expired = self.records.expired(now)
        if not expired:
            return
        live = {entry.server for entry in self.fleet.live(now) if entry.process != self.owner}
        with self.changed:
            running_here = {job_id for worker in self.workers for job_id in worker.runs}
        for job in expired:
            if job.id in running_here:
                continue  # this process's own lease lapsed while it was cut off; renewed next
            worker = next((w for w in self.workers if w.state.url == job.server), None)
            if job.server is not None and worker is None and job.server in live:
                continue  # a process driving that server takes it (it can follow the prompt)
            if worker is not None and worker.state.usable and job.prompt_id is not None:
                taken = self.records.take_over(job, worker.owner, until=now + self.lease, now=now)
                if taken is not None:
                    logger.warning(
                        "job %s: its holder %s is gone; following prompt %s on %s here",
                        job.id,
                        job.owner,
                        job.prompt_id,
                        job.server,
                    )
                    worker.take(taken)
                continue
            taken = self.records.take_over(
                job, f"{self.owner}/takeover", until=now + self.lease, now=now
            )
            if taken is None:
                continue
            if taken.server is None:  # taken out of the queue by a process that died
                self.records.update(taken, owner=None, lease_expires=None)
                logger.warning("job %s: back in the queue (its process is gone)", job.id)
                continue
            if taken.prompt_id is not None and self._finish_from_history(taken):
                continue
            if taken.prompt_id is not None and not _withdraw_from(taken.server, taken.prompt_id):
                # removed when a worker drives that server again
                self.records.abandon_prompt(taken.server, taken.prompt_id, taken.id)
            requeued = self.records.requeue(taken, front=True)
            self.ledger.requeued(requeued)
            logger.warning(
                "job %s: its holder %s is gone; back to the head of the queue", job.id, job.owner
            )
        self.fleet.prune(now - FORGET_WORKERS_AFTER)
        self.notify()

    def _finish_from_history(self, job: Job) -> bool:
        """A job taken over from a process that is gone, whose prompt already succeeded on its
        server (read from ComfyUI's /history by prompt id): fetch its images and end it, so it
        is not run again. False when the prompt has no success entry there (or the server does
        not answer)."""
        workflow = self.workflows.get(job.style)
        if workflow is None or job.server is None or job.prompt_id is None:
            return False
        client = ComfyUIClient(job.server, timeout=httpx.Timeout(5.0, connect=2.0))
        try:
            entry = client.history(job.prompt_id)
            if entry is None or not entry.succeeded:
                return False
            avatars = collect_avatars(
                job, client, workflow, entry, self.avatars, patiently=lambda call, **_: call()
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
            job.owner,
            job.prompt_id,
            job.server,
        )
        self.ledger.finish(job, "succeeded", None, avatars=avatars)
        return True

    def _leave(self) -> None:
        """Leave the fleet: the jobs this process holds go back to the queue at once."""
        try:
            for job in self.records.held_by(f"{self.owner}/"):
                worker = next((w for w in self.workers if w.state.url == job.server), None)
                withdrawn = (
                    worker is not None
                    and job.prompt_id is not None
                    and withdraw(worker.client, job.prompt_id)
                )
                if job.prompt_id and job.server and not withdrawn:
                    self.records.abandon_prompt(job.server, job.prompt_id, job.id)
                requeued = self.records.requeue(job, front=True)
                self.ledger.requeued(requeued)
                logger.info("job %s given back to the queue (this process stops)", job.id)
            self.fleet.leave([worker.owner for worker in self.workers])
        except Exception:  # the database is gone: leases pass and other processes take over
            logger.exception("could not give jobs back when stopping; their leases will pass")
        self.leadership.release()

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
