"""Worker agents: processes next to a ComfyUI anywhere, reaching the service over HTTP only.

An agent (``avatar-worker``, package ``agent``) registers and gets an id of its own; the desk
keeps it in the worker registry as one server, ``agent:<name>``, renewed by its heartbeats. An
agent claims the oldest waiting job when its server has a free slot (the same ``claim_next`` as
every worker, under an owner that begins with its id), fetches the photo as ComfyUI should get
it, reports its prompt's life (the record's fields it may change, and the ledger's events) and
ends the job with its avatars, which the service stores. Every call names a job the agent holds:
an agent sees no other job, and one that lost a job (its lease passed) is told so (``LeaseLost``).

Leases are the desk's in any mode, one process or a fleet: each heartbeat renews the leases of
the jobs the agent follows and answers which of them were cancelled; a job whose agent stopped
beating goes back to the head of the queue (``sweep``), its prompt left for that server's agent
to remove when it is back, or followed again by its id when another agent of the same server
beats (``adopt``): a prompt that already ended there is not run twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Conflict, NotFound
from . import agent_reports as reports
from .job import Avatar, Job, JobStatus
from .ledger import JobLedger
from .photo_source import AvatarSink, PhotoSource
from .records import AGENT_OWNER_PREFIX, JobRecords, LeaseLost, to_row
from .registry import WorkerEntry, WorkerRegistry

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger(__name__)

SERVER_PREFIX = "agent:"
AGENT_ID = re.compile(rf"^{AGENT_OWNER_PREFIX}[0-9a-f]{{32}}$")
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
# How often an agent beats (seconds): a cancel reaches it within about this long.
HEARTBEAT_INTERVAL = 0.5
# A waiting claim looks at the queue again this often, besides being woken by new jobs.
CLAIM_RECHECK = 0.5
CLAIM_WAIT_MAX = 20.0
# How many heartbeats a job must go unreported before its agent is told to follow it.
ADOPT_AFTER_BEATS = 2


@dataclass(frozen=True)
class AgentBeat:
    """What an agent says of itself at each heartbeat."""

    jobs: tuple[str, ...]
    usable: bool
    reason: str | None
    slots: int
    withheld: tuple[str, ...] = ()


class AgentDesk:
    """The service's side of worker agents: registration, heartbeats, claims, and their jobs."""

    def __init__(
        self,
        *,
        records: JobRecords,
        ledger: JobLedger,
        registry: WorkerRegistry,
        dispatcher: Dispatcher,
        photos: PhotoSource,
        avatars: AvatarSink,
        lease: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.ledger = ledger
        self.registry = registry
        self.dispatcher = dispatcher
        self.photos = photos
        self.avatars = avatars
        self.lease = lease
        self.clock = clock
        self._lock = threading.Lock()
        self._unreported: dict[str, int] = {}  # job id -> heartbeats it went unreported
        self._found_empty_at = -1  # the dispatcher's version when a claim last found no job
        dispatcher.agents = self

    # -- agents ------------------------------------------------------------------------------

    def register(self, *, name: str, slots: int, agent_id: str | None = None) -> WorkerEntry:
        """A new agent (or one coming back under its id); its registry entry."""
        if not AGENT_NAME.fullmatch(name):
            raise BadRequest(
                "name: 1-128 letters, digits or ._:/@- (the agent's server is agent:<name>)",
                code="invalid_agent",
                details={"name": name},
            )
        if agent_id is not None and not AGENT_ID.fullmatch(agent_id):
            raise BadRequest("agentId: not an id this service gives", code="invalid_agent")
        now = self.clock()
        entry = WorkerEntry(
            id=agent_id or f"{AGENT_OWNER_PREFIX}{uuid.uuid4().hex}",
            process=agent_id or "",
            server=f"{SERVER_PREFIX}{name}",
            slots=slots,
            jobs=0,
            usable=False,  # until its first heartbeat says its ComfyUI answers
            reason="the agent has not reported its server yet",
            started_at=now,
            heartbeat_at=now,
            lease_expires=now + self.lease,
        )
        entry = replace(entry, process=entry.id)
        self.registry.beat([entry])
        logger.info("worker agent %s registered for %s (%d slots)", entry.id, entry.server, slots)
        return entry

    def heartbeat(self, agent_id: str, beat: AgentBeat) -> dict[str, Any]:
        """Renew the agent and its jobs' leases: which it still holds, which were cancelled,
        which it should follow (given to it), and the prompts to remove from its server."""
        entry = self._entry(agent_id, alive=False)
        now = self.clock()
        was_usable = entry.usable and entry.lease_expires >= now
        entry = replace(
            entry,
            slots=beat.slots,
            jobs=len(beat.jobs),
            usable=beat.usable,
            reason=beat.reason,
            withheld=sorted(beat.withheld),
            heartbeat_at=now,
            lease_expires=now + self.lease,
        )
        self.registry.beat([entry])
        prefix = f"{agent_id}/"
        held = self.records.renew_leases(prefix, beat.jobs, now + self.lease)
        holds = self.records.held_ids(prefix)  # job id -> its cancel was asked
        cancels = [job_id for job_id, asked in holds.items() if asked]
        adopt = self._to_adopt(set(holds), set(beat.jobs))
        if beat.usable and not was_usable:
            self.dispatcher.notify()  # waiting submits and claims look again
        return {
            "held": sorted(held),
            "cancel": sorted(cancels),
            "elsewhere": self._usable_besides(agent_id),
            "adopt": [to_row(job) for job in adopt],
            "abandoned": [
                {"promptId": p.prompt_id, "jobId": p.job_id}
                for p in self.records.abandoned_prompts(entry.server)
            ],
        }

    def leave(self, agent_id: str, *, withdrawn: Iterable[str] = ()) -> int:
        """The agent stops: its jobs go back to the head of the queue at once; how many."""
        entry = self._entry(agent_id, alive=False)
        removed = set(withdrawn)
        jobs = self.records.held_by(f"{agent_id}/")
        for job in jobs:
            self._requeue(job, entry.server, abandon=job.prompt_id not in removed)
            logger.info("job %s given back to the queue (its agent %s stops)", job.id, agent_id)
        self.registry.leave([agent_id])
        self.dispatcher.notify()
        return len(jobs)

    def any_usable(self) -> bool:
        """Whether some live agent's server can take jobs now."""
        return any(entry.usable for entry in self._live())

    def reasons(self) -> dict[str, str | None]:
        """Why each live agent's server cannot take jobs (None: it can)."""
        return {entry.server: None if entry.usable else entry.reason for entry in self._live()}

    def _usable_besides(self, agent_id: str) -> bool:
        """Whether a server other than this agent's can take jobs now (the agent's engine asks,
        e.g. before it fails a job that stalled on its own server)."""
        if any(state.usable for state in self.dispatcher.states.values()):
            return True
        return any(e.usable for e in self.registry.live(self.clock()) if e.id != agent_id)

    def describe(self) -> list[dict[str, Any]]:
        """The live agents, as readiness reports them."""
        return [entry.to_dict() for entry in self._live()]

    def _live(self) -> list[WorkerEntry]:
        return [e for e in self.registry.live(self.clock()) if e.server.startswith(SERVER_PREFIX)]

    def _entry(self, agent_id: str, *, alive: bool = True) -> WorkerEntry:
        """The agent's registry entry (its lease may have passed unless ``alive``)."""
        entry = self.registry.get(agent_id) if AGENT_ID.fullmatch(agent_id) else None
        if entry is None or (alive and entry.lease_expires < self.clock()):
            raise NotFound(
                "no such worker agent (never registered, left, or silent past its lease): "
                "register again",
                code="agent_not_found",
                details={"agentId": agent_id},
            )
        return entry

    # -- claims ------------------------------------------------------------------------------

    def claim(
        self, agent_id: str, owner: str, *, exclude_styles: Iterable[str] = (), wait: float = 0.0
    ) -> Job | None:
        """The oldest waiting job the agent's server may run, waiting up to ``wait`` seconds for
        one; None when none came."""
        if not owner.startswith(f"{agent_id}/"):
            raise BadRequest("owner: must begin with the agent's id and '/'", code="invalid_agent")
        entry = self._entry(agent_id)
        dispatcher = self.dispatcher
        deadline = time.monotonic() + min(max(wait, 0.0), CLAIM_WAIT_MAX)
        # One process hears of every new job (it is notified); a fleet also looks again
        # every CLAIM_RECHECK for jobs made on other processes.
        recheck = None if dispatcher.coordination.recheck_interval is None else CLAIM_RECHECK
        woken = False
        while True:
            with dispatcher.changed:
                seen = dispatcher.version
            # Woken for a change another waiting claim already found no job in: not asked again.
            if not (woken and self._found_empty_at == seen):
                job = self.records.claim_next(
                    entry.server, owner, exclude_styles=exclude_styles, lease_seconds=self.lease
                )
                if job is not None:
                    logger.info("job %s claimed by agent %s (%s)", job.id, agent_id, entry.server)
                    return job
                if not exclude_styles:
                    self._found_empty_at = seen
            remaining = deadline - time.monotonic()
            if remaining <= 0 or dispatcher.stopping.is_set():
                return None
            with dispatcher.changed:
                if dispatcher.version == seen:
                    dispatcher.changed.wait(min(remaining, recheck or remaining))
                woken = dispatcher.version != seen

    # -- the jobs an agent holds ---------------------------------------------------------------

    def job(self, agent_id: str, job_id: str) -> Job:
        """A job the agent holds (NotFound for any other: agents see only their own)."""
        job = self.records.get(job_id) if len(job_id) == 32 else None
        if job is None or job.ended or not (job.owner or "").startswith(f"{agent_id}/"):
            raise NotFound(
                "no such job held by this agent", code="job_not_found", details={"jobId": job_id}
            )
        return job

    def _held(self, agent_id: str, job_id: str) -> Job:
        """A job the agent holds; Conflict ``lease_lost`` when it was taken from it."""
        try:
            return self.job(agent_id, job_id)
        except NotFound:
            raise Conflict(
                "this agent no longer holds the job (it ended, was cancelled, or its lease "
                "passed and it went back to the queue)",
                code="lease_lost",
                details={"jobId": job_id},
            ) from None

    def update(self, agent_id: str, job_id: str, changes: Mapping[str, Any]) -> Job:
        """Change the fields of a held job's record that an agent may change."""
        current = self._held(agent_id, job_id)
        changed = reports.changes(current, changes)
        try:
            return self.records.update(current, expect_owner=current.owner, **changed)
        except LeaseLost:
            raise self._lost(job_id) from None

    def events(self, agent_id: str, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Events of the agent's jobs, in order (each job's record read once per batch); the
        jobs it no longer holds (their events are dropped: the agent stops following them at
        its next heartbeat)."""
        lost: list[str] = []
        current: dict[str, Job] = {}
        for item in items:
            job_id = str(item.get("jobId"))
            if job_id in lost:
                continue
            if job_id not in current:
                try:
                    current[job_id] = self._held(agent_id, job_id)
                except Conflict:
                    lost.append(job_id)
                    continue
            data = item.get("data")
            current[job_id] = self._apply(
                current[job_id], str(item.get("kind")), data if isinstance(data, Mapping) else {}
            )
        return lost

    def _apply(self, current: Job, kind: str, data: Mapping[str, Any]) -> Job:
        """One event of a held job's prompt, written and published by the ledger."""
        reported = reports.timings(data.get("timings"))
        if reported:
            current = replace(current, timings={**current.timings, **reported})
        if kind == "running":
            return self.ledger.running(current)
        if kind == "progress":
            return self.ledger.progress(current, reports.progress(data))
        if kind == "position":
            position = data.get("position")
            if not isinstance(position, int) or isinstance(position, bool) or position < 1:
                raise BadRequest("position: a whole number from 1", code="invalid_agent")
            return self.ledger.queued_at(current, position)
        if kind == "requeued":
            self.ledger.requeued(current)
            return current
        raise BadRequest(f"unknown event {kind!r}", code="invalid_agent")

    def preview(self, agent_id: str, job_id: str, content_type: str, data: bytes) -> None:
        """The latest live preview of a held job: kept for GET /jobs/<id>/preview on any process."""
        job = self._held(agent_id, job_id)
        self.records.save_preview(job.id, content_type, data)
        self.ledger.preview(job)

    def photo(self, agent_id: str, image_name: str, crop: Mapping[str, Any] | None) -> bytes:
        """A photo as ComfyUI should get it, cut to ``crop``: the photo and crop of a job the
        agent holds (its jobs with one photo and crop all send ComfyUI the same bytes)."""
        for job in self.records.held_by(f"{agent_id}/", image_name=image_name):
            if (None if job.crop is None else job.crop.to_dict()) == crop:
                return self.photos.prepared(job.image_name, job.crop)
        raise Conflict(
            "this agent holds no job with this photo and crop",
            code="lease_lost",
            details={"imageName": image_name},
        )

    def give_back(self, agent_id: str, job_id: str, *, abandon_prompt: bool) -> Job:
        """The agent gives a held job back: to the head of the queue (its server failed, or
        lacks something the style needs); its prompt, unless withdrawn, is left to be removed."""
        job = self._held(agent_id, job_id)
        entry = self._entry(agent_id, alive=False)
        return self._requeue(job, entry.server, abandon=abandon_prompt)

    def forget_abandoned(self, agent_id: str, prompt_id: str) -> None:
        """The agent removed an abandoned prompt from its server."""
        entry = self._entry(agent_id, alive=False)
        self.records.forget_abandoned(entry.server, prompt_id)

    def finish(
        self,
        agent_id: str,
        job_id: str,
        result: Mapping[str, Any],
        files: Mapping[str, bytes],
    ) -> Job:
        """End a held job as its agent says: its avatars stored here, its error as recorded."""
        current = self._held(agent_id, job_id)
        status = reports.end_status(result.get("status"))
        error = reports.error(result.get("error")) if status == JobStatus.FAILED else None
        avatars = None
        if status == JobStatus.SUCCEEDED:
            avatars = [
                Avatar(self.avatars.save(current.id, index, data, extension), width, height)
                for index, (extension, data, width, height) in enumerate(
                    reports.avatar_files(current, files)
                )
            ]
        current = replace(
            current, timings={**current.timings, **reports.timings(result.get("timings"))}
        )
        if isinstance(result.get("progress"), Mapping):
            current = replace(current, progress=reports.progress(result["progress"]))
        try:
            job = self.ledger.finish(current, status, error, avatars=avatars, held_by=current.owner)
        except LeaseLost:
            raise self._lost(job_id) from None
        self.records.forget_preview(job.id)
        self._record_run_time(job)
        return job

    # -- leases --------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Jobs of agents whose leases passed: handed to a live agent of the same server (it
        follows the prompt by its id), else back to the head of the queue (once each)."""
        now = self.clock()
        expired = self.records.expired(now, owner_prefix=AGENT_OWNER_PREFIX)
        if not expired:
            return
        heirs = {entry.server: entry for entry in self._live() if entry.usable}
        for job in expired:
            if job.server is None:
                continue
            silent = (job.owner or "").split("/")[0]
            heir = heirs.get(job.server)
            if heir is not None and heir.id != silent and job.prompt_id is not None:
                owner = f"{heir.id}/adopted"
                if self.records.take_over(job, owner, until=now + self.lease, now=now):
                    logger.warning(
                        "job %s: its agent %s is silent past its lease; agent %s of %s follows "
                        "its prompt %s",
                        job.id,
                        silent,
                        heir.id,
                        job.server,
                        job.prompt_id,
                    )
                continue
            taken = self.records.take_over(job, f"{job.owner}#expired", until=now + 60, now=now)
            if taken is None:
                continue  # another process of the fleet took it first
            self._requeue(taken, job.server, abandon=True)
            logger.warning(
                "job %s: its agent %s is silent past its lease; back to the head of the queue",
                job.id,
                silent,
            )

    def _requeue(self, job: Job, server: str, *, abandon: bool) -> Job:
        if abandon and job.prompt_id:
            # Removed from that server when an agent of it beats again, or followed there by id.
            self.records.abandon_prompt(server, job.prompt_id, job.id)
        requeued = self.records.requeue(job, front=True)
        self.ledger.requeued(requeued)
        self.dispatcher.notify()
        return requeued

    def _to_adopt(self, holds: set[str], reported: set[str]) -> list[Job]:
        """Jobs held under the agent's id that it has not reported for ``ADOPT_AFTER_BEATS``
        beats (handed to it, or a claim whose answer it never got): it is told to follow them."""
        unreported = holds - reported
        due = []
        with self._lock:
            for job_id in unreported:
                count = self._unreported.get(job_id, 0) + 1
                self._unreported[job_id] = count
                if count >= ADOPT_AFTER_BEATS:
                    due.append(job_id)
            for job_id in [j for j in self._unreported if j not in unreported]:
                del self._unreported[job_id]
        found = (self.records.get(job_id) for job_id in due)
        return [job for job in found if job is not None and not job.ended]

    def _lost(self, job_id: str) -> Conflict:
        return Conflict(
            "this agent no longer holds the job", code="lease_lost", details={"jobId": job_id}
        )

    def _record_run_time(self, job: Job) -> None:
        if job.succeeded and job.started_at is not None and job.server and job.finished_at:
            self.dispatcher.run_times.record(
                job.server, job.style, job.finished_at - job.started_at
            )
