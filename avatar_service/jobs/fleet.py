"""The fleet: processes sharing one PostgreSQL (API replicas and worker processes).

Every process keeps a heartbeat in the worker registry (``registry``), renews the leases of the
jobs it holds, picks up cancels asked on other processes, and takes over the jobs of a process
whose leases have passed (killed, or cut off from the database): a job whose server still has a
worker here is followed again by its prompt id (through ``/history``, as after a restart); for
any other, the server is asked over HTTP: a prompt that succeeded there is finished from its
images, else it is withdrawn and the job goes back to the head of the queue (``takeover``). A
process that loses a job this way stops following it (fencing: its end would not count). One
process at a time (``leadership``) sweeps the queue. A process stopped with SIGTERM gives its
jobs back at once. Job events cross processes through ``broadcast``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..persistence.database import Database, DatabaseUnavailable
from ..persistence.leadership import Leadership
from .broadcast import EventBroadcast
from .coordination import Solo
from .events import JobEvents
from .job import Job
from .prompt import ShutdownAsked
from .records import JobRecords
from .registry import WorkerEntry, WorkerRegistry
from .takeover import Takeover
from .withdrawal import withdraw

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

# The longest time between two heartbeats (the registry shows a server's state this fresh),
# and how often expired leases are looked for (seconds).
HEARTBEAT_MAX = 1.0
RECLAIM_INTERVAL = 1.0
# A registry row whose lease passed this long ago is deleted.
FORGET_WORKERS_AFTER = 3600.0
# How often a request waiting for a job reads its record again (an event may be missed).
RECHECK_INTERVAL = 1.0


class Fleet(Solo):
    """Heartbeats, leases, fencing, takeover and leaving, for processes sharing PostgreSQL."""

    recheck_interval = RECHECK_INTERVAL
    left_unfinished = "(given back to the queue)"

    def __init__(
        self,
        records: JobRecords,
        *,
        database: Database,
        events: JobEvents,
        lease: float,
        leadership: Leadership | None = None,
    ) -> None:
        super().__init__(records)
        self.database = database
        self.events = events
        self.lease = lease
        self.registry = WorkerRegistry(database)
        self.leadership = leadership if leadership is not None else database.leadership("queue")
        self.broadcast: EventBroadcast | None = None
        self.database_error: str | None = None
        self._database_lost_at: float | None = None
        self._beat_at = 0.0
        self._reclaim_at = 0.0
        self._cancels_seen: set[str] = set()

    def attach(self, dispatcher: Dispatcher) -> None:
        """The dispatcher this strategy serves; its events reach the other processes."""
        super().attach(dispatcher)
        self.broadcast = EventBroadcast(
            database=self.database,  # type: ignore[arg-type]
            records=self.records,
            events=self.events,
            origin=dispatcher.owner,
        )

    # -- the dispatcher's life ---------------------------------------------------------------

    def start(self) -> int:
        """Listen to the other processes, join the registry: nothing is resumed here (jobs
        whose leases pass are taken over by whichever process sees them first)."""
        if self.broadcast is not None:
            self.broadcast.start()
        self.round()
        self._dispatcher().notify()
        return 0

    def round(self) -> bool:
        """Heartbeat, cancels and takeover; False when the database did not answer."""
        now = self._dispatcher().clock()
        try:
            if now >= self._beat_at:
                self._beat_at = now + min(self.lease / 3, HEARTBEAT_MAX)
                self._beat(now)
            self._take_cancels()
            if now >= self._reclaim_at:
                self._reclaim_at = now + RECLAIM_INTERVAL
                if Takeover(self, now).run():
                    self.registry.prune(now - FORGET_WORKERS_AFTER)
                    self._dispatcher().notify()
        except Exception as exc:  # the database is gone or broken: no new work until it is back
            self._database_failed(exc, now)
            return False
        if self.database_error is not None:
            logger.warning("the database answers again: taking jobs again")
            self.database_error = None
            self._database_lost_at = None
            self._dispatcher().notify()
        return True

    def may_sweep(self) -> bool:
        """Whether this process holds the queue sweeper's role."""
        return self.leadership.held()

    def stop(self) -> None:
        """Leave the fleet: the jobs this process holds go back to the queue at once."""
        dispatcher = self._dispatcher()
        try:
            for job in self.records.held_by(f"{dispatcher.owner}/"):
                worker = dispatcher.worker_for(job.server)
                withdrawn = (
                    worker is not None
                    and job.prompt_id is not None
                    and withdraw(worker.client, job.prompt_id)
                )
                if job.prompt_id and job.server and not withdrawn:
                    self.records.abandon_prompt(job.server, job.prompt_id, job.id)
                requeued = self.records.requeue(job, front=True)
                dispatcher.ledger.requeued(requeued)
                logger.info("job %s given back to the queue (this process stops)", job.id)
            self.registry.leave([worker.owner for worker in dispatcher.workers])
        except Exception:  # the database is gone: leases pass and other processes take over
            logger.exception("could not give jobs back when stopping; their leases will pass")
        self.leadership.release()
        if self.broadcast is not None:
            self.broadcast.stop()

    # -- one round ---------------------------------------------------------------------------

    def _beat(self, now: float) -> None:
        """Renew this process's leases and registry rows; fence off jobs taken from it."""
        dispatcher = self._dispatcher()
        followed = {job_id for _worker, job_id in dispatcher.claimed()}
        held = self.records.renew_leases(f"{dispatcher.owner}/", followed, now + self.lease)
        self.registry.beat(self._entries(now))
        lost = [
            run
            for _worker, job_id, run in dispatcher.runs()
            if job_id not in held and not run.job.ended
        ]
        for run in lost:
            current = self.records.get(run.job.id)
            if current is not None and not current.ended and current.owner != run.job.owner:
                logger.warning(
                    "job %s was taken over by another process; not followed here", run.job.id
                )
                run.stop(ShutdownAsked())

    def _entries(self, now: float) -> list[WorkerEntry]:
        dispatcher = self._dispatcher()
        with dispatcher.changed:
            return [
                WorkerEntry(
                    id=worker.owner,
                    process=dispatcher.owner,
                    server=worker.state.url,
                    slots=worker.slots,
                    jobs=len(worker.runs),
                    usable=worker.state.usable,
                    reason=worker.state.reason(),
                    started_at=dispatcher.started_at,
                    heartbeat_at=now,
                    lease_expires=now + self.lease,
                    withheld=sorted(worker.state.withheld()),
                )
                for worker in dispatcher.workers
            ]

    def _take_cancels(self) -> None:
        """Cancels asked on any process, for the jobs this one holds."""
        dispatcher = self._dispatcher()
        asked = set(self.records.cancel_requests(f"{dispatcher.owner}/"))
        for job_id in asked - self._cancels_seen:
            dispatcher.cancel(job_id)
        # Only jobs still held and cancelled are remembered: the set stays as small as they.
        self._cancels_seen = asked

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
            runs = [run for _worker, _job_id, run in self._dispatcher().runs()]
            if runs:
                logger.error(
                    "the database has not answered for %.0f s (past the lease): %d job(s) "
                    "left to the processes that take them over",
                    now - self._database_lost_at,
                    len(runs),
                )
                for run in runs:
                    run.stop(ShutdownAsked())

    # -- questions the engine asks -----------------------------------------------------------

    def keeps_unclaimed_cancels(self, *, claimed_here: bool) -> bool:
        """A job held by another process learns of its cancel from its record."""
        return claimed_here

    def usable_elsewhere(self) -> bool:
        """Whether a live worker of any process can take jobs now."""
        now = self._dispatcher().clock()
        return any(entry.usable for entry in self.registry.live(now))

    def reasons(self) -> dict[str, str | None]:
        """Why each server of the fleet cannot take jobs (None: some worker can)."""
        reasons: dict[str, str | None] = {}
        for entry in self.registry.live(self._dispatcher().clock()):
            if reasons.get(entry.server, "") is not None:
                reasons[entry.server] = None if entry.usable else entry.reason
        return reasons

    def end_guard(self, job: Job) -> str | None:
        """Only a job's holder may end it (a process cut off past its lease lost the job)."""
        return job.owner

    @property
    def keeps_previews(self) -> bool:
        """Other processes serve previews of jobs run here."""
        return True

    def describe_styles(self, styles: Sequence[dict[str, Any]]) -> None:
        """Add each style's ``liveServers``: the usable servers of the fleet that can run it."""
        try:
            live = [entry for entry in self.registry.live() if entry.usable]
        except DatabaseUnavailable:
            live = []
        for style in styles:
            style["liveServers"] = sorted(
                {entry.server for entry in live if style["name"] not in entry.withheld}
            )

    def readiness(self, local: dict[str, Any]) -> dict[str, Any]:
        """Ready when the database answers and some live worker of the fleet can take jobs."""
        database: dict[str, Any] = {"ok": True, "engine": "postgresql"}
        workers: list[dict[str, Any]] = []
        try:
            self.database.ping()
            workers = [entry.to_dict() for entry in self.registry.live()]
        except DatabaseUnavailable as exc:
            database = {"ok": False, "engine": "postgresql", "error": str(exc)}
        if self.database_error is not None:
            database = {"ok": False, "engine": "postgresql", "error": self.database_error}
        ready = database["ok"] and any(worker["usable"] for worker in workers)
        report: dict[str, Any] = {
            "ready": ready,
            "database": database,
            "workers": workers,
            "servers": local["servers"],
        }
        if not ready:
            report["reason"] = (
                f"the database does not answer: {database['error']}"
                if not database["ok"]
                else "no live worker can take jobs (none registered, or their ComfyUI servers "
                "are unreachable)"
            )
        return report
