"""Server workers: one per ComfyUI server, pulling jobs when the server has a free slot.

A worker claims the oldest waiting job only when its server is up and has a free slot
(``slots`` prompts at once: one running plus one waiting by default, so the GPU never idles
between prompts); among servers with room, the one holding fewest jobs takes first. Nothing is
pushed to a server before it can run it. Each held job runs in a slot thread of its own
(``drive``): its prompt's life (``prompt.PromptRun``), its images collected, and its end written;
a failure that is the server's rather than the job's sends it back to the head of the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from ..comfyui import ComfyUIClient, ComfyUIUnavailable, PromptRejected
from ..persistence.database import DatabaseUnavailable
from . import outcomes
from .job import Job, JobStatus
from .ledger import ms
from .prompt import FailoverAsked, PromptRun, ShutdownAsked
from .records import LeaseLost
from .results import collect_avatars
from .servers import ServerState
from .submit_order import SubmitOrder

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

# A worker whose server failed a submission waits this long before claiming again.
SUBMIT_FAILURE_PAUSE = 1.0
# The longest a worker waits before looking at the queue again without being told.
IDLE_WAIT = 0.5
# A job whose prompt stalled on this many servers fails (comfyui_stalled).
MAX_STALLS = 2
# A job cut off from the database asks for its record again this often (seconds).
DATABASE_RETRY = 1.0


class ServerWorker:
    """Pulls jobs for one server while it has free slots; runs each in a slot thread."""

    def __init__(self, dispatcher: Dispatcher, state: ServerState, slots: int) -> None:
        self.dispatcher = dispatcher
        self.state = state
        self.slots = slots
        self.owner = f"{dispatcher.owner}/{state.url}"
        self.runs: dict[str, PromptRun | None] = {}  # None: claimed, run not built yet
        self.order = SubmitOrder()
        self._tickets: dict[str, int] = {}
        self.paused_until = 0.0
        self._thread: threading.Thread | None = None
        # When a claim last found nothing: the dispatcher's ``work`` count then, the jobs this
        # worker claimed since, and the time (monotonic).
        self._found_nothing: tuple[int, int, float] | None = None

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
            self.dispatcher.coordination.database_error is None
            and self.state.usable
            and len(self.runs) < self.slots
            and time.monotonic() >= self.paused_until
        )

    def _pull(self) -> None:
        dispatcher = self.dispatcher
        while not dispatcher.stopping.is_set():
            with dispatcher.changed:
                seen, work = dispatcher.version, dispatcher.work
                if not self.has_room():
                    dispatcher.changed.wait(IDLE_WAIT)
                    continue
                quiet = self._nothing_new(work)
                if quiet:
                    dispatcher.changed.wait(quiet)
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
            self._found_nothing = self._after_claim(job is not None, work)
            if job is None:
                with dispatcher.changed:
                    if dispatcher.version == seen and not dispatcher.stopping.is_set():
                        dispatcher.changed.wait(IDLE_WAIT)
                continue
            if not self.state.usable:
                # The server was given up or stalled while the claim waited (a worker agent's
                # claim waits at the service): the job goes to a server that can run it.
                self._give_back(job, "its server stopped taking jobs while the claim waited")
                continue
            self.take(job)

    def _nothing_new(self, work: int) -> float:
        """How long the queue need not be asked again (0: ask now): the rest of IDLE_WAIT
        after a claim that found nothing, if what may have made jobs claimable since (a slot
        freed by a job that ended adds none) made no more than this worker has claimed since.
        Past IDLE_WAIT the queue is asked anyway: other processes add jobs, and leases expire."""
        found = self._found_nothing
        if found is None or work - found[0] > found[1]:
            return 0.0
        return max(0.0, found[2] + IDLE_WAIT - time.monotonic())

    def _after_claim(self, claimed: bool, work: int) -> tuple[int, int, float] | None:
        """What ``_nothing_new`` goes by after a claim: a claim that found nothing starts it
        anew; one that found a job counts it (each new job is one notification: once this
        worker has claimed as many as were announced, asking again would find nothing)."""
        found = self._found_nothing
        if not claimed:
            return (work, 0, time.monotonic())
        if found is None:
            return None
        return (found[0], found[1] + 1, found[2])

    def take(self, job: Job) -> None:
        """Run a claimed (or resumed) job in a slot thread."""
        with self.dispatcher.changed:
            self.runs[job.id] = None
            self._tickets[job.id] = self.order.ticket()
        thread = threading.Thread(target=self.drive, args=(job,), name=f"job {job.id}", daemon=True)
        self.dispatcher.threads.add(thread)
        thread.start()

    # -- one job ---------------------------------------------------------------------------

    def drive(self, job: Job) -> None:
        """Run a claimed job on this server to its end (or give it back)."""
        dispatcher = self.dispatcher
        run: PromptRun | None = None
        resume: Job | None = None
        try:
            run = self._register(job)
            self._finish(run)
        except outcomes.Cancelled:
            dispatcher.ledger.finish(run.job if run else job, JobStatus.CANCELLED, None)
        except outcomes.Shutdown:
            self._left(job)
        except outcomes.FailedOver:
            self._give_back(run.job if run else job, "its server was given up")
        except outcomes.Stalled as stall:
            self._stalled(run.job if run else job, stall)
        except LeaseLost as exc:
            # Past the lease: the process that took the job over ends it.
            logger.error("job %s left to the process that took it over: %s", job.id, exc)
        except DatabaseUnavailable as exc:
            resume = self._when_database_answers(run.job if run else job, exc)
        except Exception as exc:  # every failure ends the job; none escapes the thread
            current = run.job if run else job
            if dispatcher.stopping.is_set():
                self._left(current)
            elif self._may_run_elsewhere(exc, current, run):
                self._give_back(current, str(exc))
            else:
                dispatcher.fail(current, exc)
        finally:
            if run is not None:
                run.close()
            with dispatcher.changed:
                ticket = self._tickets.pop(job.id)
            self.order.done(ticket)  # never queued (resumed, failed, cancelled): next in line
            dispatcher.released(self, job.id)
            if resume is not None:
                self.take(resume)  # its prompt is followed again by id, from its record

    def _when_database_answers(self, job: Job, exc: DatabaseUnavailable) -> Job | None:
        """Cut off from the database mid-job: wait (up to the lease) for it to answer, then
        the job's record, still held here, to be followed again; None when the lease passed
        first (the job is taken over, here or elsewhere), or the job ended or changed hands."""
        dispatcher = self.dispatcher
        logger.error(
            "job %s: the database does not answer (%s); its prompt is followed again when it "
            "answers, within the lease (%.0f s)",
            job.id,
            exc,
            dispatcher.lease,
        )
        deadline = time.monotonic() + dispatcher.lease
        while not dispatcher.stopping.wait(DATABASE_RETRY):
            try:
                current = dispatcher.records.get(job.id)
            except DatabaseUnavailable:
                if time.monotonic() < deadline:
                    continue
                logger.error("job %s left to the process that takes it over", job.id)
                return None
            if current is None or current.ended or current.owner != self.owner:
                return None
            logger.warning("job %s: the database answers again; following it again", job.id)
            return current
        return None

    def _register(self, job: Job) -> PromptRun:
        """The job's run, registered where cancels and failovers reach it."""
        dispatcher = self.dispatcher
        workflow = dispatcher.workflows.get(job.style)
        if workflow is None:
            raise outcomes.style_removed(job.style)
        run = PromptRun(
            job,
            client=self.client,
            workflow=workflow,
            records=dispatcher.records,
            ledger=dispatcher.ledger,
            photos=dispatcher.photos,
            settings=dispatcher.settings,
            turn=partial(self.order.turn, self._tickets[job.id]),
            clock=dispatcher.clock,
        )
        with dispatcher.changed:
            self.runs[job.id] = run
            cancelled = dispatcher.take_early_cancel(job.id)
        if cancelled or job.cancel_requested:
            run.cancel()  # cancelled before the run was registered, so it was not told
        if not self.state.usable and self.state.down_since is not None:
            run.stop(FailoverAsked())
        if dispatcher.stopping.is_set():
            run.stop(ShutdownAsked())  # the stop began before the run was registered
        return run

    def _finish(self, run: PromptRun) -> None:
        """Follow the prompt to its end, collect its images, and end the job succeeded."""
        dispatcher = self.dispatcher
        entry = run.run()
        job = run.job
        fetch_started = dispatcher.clock()
        avatars = collect_avatars(
            job, self.client, run.workflow, entry, dispatcher.avatars, patiently=run.patiently
        )
        timings = {**job.timings, "fetchMs": ms(dispatcher.clock() - fetch_started)}
        job = replace(job, timings=timings)  # written by finish()
        if job.started_at is not None:
            dispatcher.run_times.record(
                self.state.url, job.style, dispatcher.clock() - job.started_at
            )
        dispatcher.ledger.finish(job, JobStatus.SUCCEEDED, None, avatars=avatars)

    def _left(self, job: Job) -> None:
        note = self.dispatcher.coordination.left_unfinished
        logger.info("job %s left unfinished %s", job.id, note)

    def _may_run_elsewhere(self, exc: Exception, job: Job, run: PromptRun | None) -> bool:
        """Whether a failure is the server's, not the job's, so another server may run it."""
        if isinstance(exc, PromptRejected) and exc.server_lacks_something:
            self.state.withhold(job.style, exc)
            return any(job.style not in s.withheld() for s in self.dispatcher.states.values())
        if isinstance(exc, ComfyUIUnavailable) and (run is None or run.watch is None):
            # The server went away before the prompt was queued: no prompt to follow there.
            self.paused_until = time.monotonic() + SUBMIT_FAILURE_PAUSE
            return True
        return False

    def _stalled(self, job: Job, stall: outcomes.Stalled) -> None:
        """The job's prompt made no progress here: the server gets no jobs for a while, the
        other prompts it holds go back to the queue, and the job runs elsewhere (it fails
        ``comfyui_stalled`` when no other server can take it, or after ``MAX_STALLS``)."""
        dispatcher = self.dispatcher
        cooldown = dispatcher.settings.stall_timeout
        self.state.stall(cooldown=cooldown)
        logger.warning(
            "ComfyUI %s made no progress on job %s for %.0f s (no message, no queue change): its "
            "prompt is interrupted, and the server gets no jobs for %.0f s",
            self.state.url,
            job.id,
            stall.seconds,
            cooldown,
        )
        for worker, job_id, other in dispatcher.runs():
            if worker is self and job_id != job.id:
                other.stop(FailoverAsked())
        current = dispatcher.records.get(job.id) or job
        if current.ended:
            return
        stalls = current.stalls + 1
        if stalls >= MAX_STALLS or not dispatcher.any_usable():
            error = outcomes.stalled(current, stall, stalls=stalls, elsewhere=stalls >= MAX_STALLS)
            logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
            dispatcher.ledger.finish(current, JobStatus.FAILED, error)
            return
        requeued = dispatcher.records.update(current, stalls=stalls)
        self._give_back(requeued, str(stall), withdrawn=stall.withdrawn)

    def _give_back(self, job: Job, reason: str, *, withdrawn: bool = False) -> None:
        """Put a job back at the head of the queue; its prompt there is removed later, unless
        it was ``withdrawn`` already."""
        records = self.dispatcher.records
        current = records.get(job.id) or job
        if current.ended:
            return
        if current.prompt_id and current.server and not withdrawn:
            records.abandon_prompt(current.server, current.prompt_id, current.id)
        logger.warning(
            "job %s goes back to the head of the queue (%s: %s)", job.id, self.state.url, reason
        )
        requeued = records.requeue(current, front=True)
        self.dispatcher.ledger.requeued(requeued)
        self.dispatcher.notify()
