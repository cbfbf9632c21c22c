"""The prompt's life on one server: a small state machine fed by typed events.

A run uploads the photo, queues a patched copy of the workflow under a prompt_id of its own and
follows the prompt through three phases::

    WAITING (in ComfyUI's queue) -> RUNNING -> ENDED

Events come from the server's websocket (``comfyui_client``'s typed events) and from the run's
owner (``Check`` when it is time to ask ComfyUI itself, ``CancelAsked``, ``ShutdownAsked``,
``FailoverAsked``). A ``Check`` asks the shared ``/queue`` view and, for a prompt no longer in
it, ``/history``: that is how a missed message, a dropped socket or a server that forgot the
prompt is noticed. The run ends with the prompt's success entry; every other ending is an
exception that ``outcomes`` maps to the job's result.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    Disconnected,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionStarted,
    HistoryEntry,
    NodeStarted,
    PreviewReady,
    Progress,
    PromptRejected,
    PromptWatch,
    QueueChanged,
    Reconnected,
)
from ..comfyui.workflows import Workflow, patch_workflow
from ..photos.framing import prepared_bytes
from ..photos.store import PhotoStore
from . import outcomes
from .ledger import JobLedger, ms
from .records import Job, JobRecords

logger = logging.getLogger(__name__)
T = TypeVar("T")

UPLOAD_SUBFOLDER = "avatar_service"
# A prompt that vanished from ComfyUI (restart) is queued again this many times.
MAX_RESUBMITS = 1
# A job still waiting a moment after queueing asks for its position, then on queue changes
# (at most once a second).
FIRST_POSITION_CHECK_SECONDS = 0.3
POSITION_REFRESH_SECONDS = 1.0
# How old the shared view of ComfyUI's queue may be when a run consults it.
QUEUE_VIEW_MAX_AGE = 1.0
# Waits for the history entry ComfyUI writes just before ``executing`` null (a lagging server).
HISTORY_RETRY_DELAYS = (0.0, 0.1, 0.3, 0.6, 1.0)


@dataclass(frozen=True)
class Check:
    """Time to ask ComfyUI where the prompt is."""


@dataclass(frozen=True)
class CancelAsked:
    """The job's owner cancelled it (the prompt has been withdrawn, or will be)."""


@dataclass(frozen=True)
class ShutdownAsked:
    """The service is stopping."""


@dataclass(frozen=True)
class FailoverAsked:
    """The server was given up: stop following the prompt here."""


class Phase(enum.Enum):
    """Where the prompt is on its server."""

    WAITING = "waiting"
    RUNNING = "running"
    ENDED = "ended"


# Events after which the run asks ComfyUI itself where its prompt is.
_ASKS = (Check, Reconnected, Disconnected, CancelAsked)


@dataclass(frozen=True)
class RunSettings:
    """The timing settings a run needs."""

    job_timeout: float
    poll_interval: float


class PromptRun:
    """One job's prompt on one server, from upload to its history entry."""

    def __init__(
        self,
        job: Job,
        *,
        client: ComfyUIClient,
        workflow: Workflow,
        records: JobRecords,
        ledger: JobLedger,
        photos: PhotoStore,
        settings: RunSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.client = client
        self.workflow = workflow
        self.records = records
        self.ledger = ledger
        self.photos = photos
        self.settings = settings
        self.clock = clock
        self.watch: PromptWatch | None = None
        self.phase = Phase.WAITING
        self.failure: ExecutionFailed | None = None
        self.interrupted = False
        self.unreachable_since: float | None = None
        self._stop = threading.Event()  # shutdown or failover: end the run at once
        self._stop_event: ShutdownAsked | FailoverAsked | None = None
        self._cancel_asked = job.cancel_requested
        self._withdraw_pending = False
        self._last_withdraw = 0.0
        self._queued_at = 0.0  # time.monotonic() when POST /prompt answered
        self._received_at_queue: int | None = None
        self._check_pending = False
        self._first_check_at: float | None = None
        self._last_position_check = 0.0

    # -- asked from other threads ----------------------------------------------------------

    def cancel(self) -> None:
        """Withdraw the prompt from ComfyUI (again later if unreachable) and wake the run."""
        self._cancel_asked = True
        prompt_id = self.job.prompt_id
        if prompt_id:
            self._withdraw_pending = not withdraw(self.client, prompt_id)
        self._post(CancelAsked())

    def stop(self, event: ShutdownAsked | FailoverAsked) -> None:
        """End the run as soon as it can (the service stops, or the server was given up)."""
        self._stop_event = event
        self._stop.set()
        self._post(event)

    @property
    def preview(self) -> Any:
        """The latest live preview of the prompt, or None."""
        return self.watch.preview if self.watch is not None else None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> HistoryEntry:
        """Queue (or take up) the prompt and follow it to its end; its success entry."""
        started = self.clock()
        resumed = self.job.prompt_id is not None
        if resumed:
            self.watch = self.client.watch(self.job.prompt_id)
        else:
            self._submit()
        if "prepareMs" not in self.job.timings:
            timings = {"prepareMs": ms(self.clock() - started)}
            if self.job.dispatched_at is not None:
                # Time in the service's own queue, before a server took the job.
                timings["waitMs"] = ms(self.job.dispatched_at - self.job.created_at)
            # Written with the job's next change (running, or its end).
            self.job = replace(self.job, timings={**self.job.timings, **timings})
        self._follow(check_first=resumed)
        if "executionMs" not in self.job.timings and self.job.started_at:
            self._set_timing("executionMs", self.clock() - self.job.started_at)
        entry = self._history()
        return outcomes.judge(
            entry,
            failure=self.failure,
            interrupted=self.interrupted,
            cancel_requested=self._cancel_requested(),
            prompt_id=self._prompt_id,
        )

    def close(self) -> None:
        """Stop routing the prompt's events."""
        if self.watch is not None:
            self.client.unwatch(self.watch.prompt_id)

    @property
    def _prompt_id(self) -> str:
        assert self.watch is not None
        return self.watch.prompt_id

    def _submit(self) -> None:
        """Upload the photo, patch the workflow copy and queue it under a prompt_id of ours."""
        if self._cancel_asked:
            raise outcomes.Cancelled
        # The photo as ComfyUI should see it: cut to the job's crop (face or request), if any.
        photo = prepared_bytes(self.photos.path_of(self.job.image_name), self.job.crop)
        image = self.client.upload_image(photo, self.job.image_name, subfolder=UPLOAD_SUBFOLDER)
        graph = patch_workflow(
            self.workflow,
            image=image,
            gender=self.job.gender,
            seed=self.job.seed,
            width=self.job.width,
            height=self.job.height,
        )
        prompt_id = str(uuid.uuid4())
        # Stored before queueing, so a restart can always find the prompt again.
        self.job = self.records.update(
            self.job, prompt_id=prompt_id, attempts=self.job.attempts + 1
        )
        self.watch = self.client.watch(prompt_id)
        # ComfyUI broadcasts a status message to every registered socket when it queues.
        self._received_at_queue = self.client.messages_received
        node_errors = self.client.queue_prompt(graph, prompt_id=prompt_id)
        self._queued_at = time.monotonic()
        if node_errors:
            # Accepted with only some outputs valid: not the avatar that was asked for.
            withdraw(self.client, prompt_id)
            raise PromptRejected(
                "ComfyUI accepted only part of the graph",
                server=self.client.base_url,
                node_errors=node_errors,
            )
        if self._cancel_requested():
            withdraw(self.client, prompt_id)

    def _follow(self, *, check_first: bool) -> None:
        """Feed events to the state machine until the prompt has ended."""
        self._check_pending = check_first
        self._first_check_at = time.monotonic() + FIRST_POSITION_CHECK_SECONDS
        self._last_position_check = time.monotonic()
        while True:
            self._enforce_deadline()
            self._retry_withdraw()
            event = self._next_event()
            if event is None or self._step(event):
                return

    def _next_event(self) -> Any:
        """The next event: a pending check, a queued one, or a ``Check`` when none comes in time.

        Once the prompt has ENDED, only the events already received are applied (None after).
        """
        assert self.watch is not None
        if self._check_pending:
            self._check_pending = False
            return Check()
        if self.phase is Phase.ENDED:
            try:
                return self.watch.events.get_nowait()
            except queue.Empty:
                return None
        timeout = min(self.job.deadline - self.clock(), self.settings.poll_interval)
        if self._first_check_at is not None:
            timeout = min(timeout, self._first_check_at - time.monotonic())
        try:
            return self.watch.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return Check()

    def _step(self, event: Any) -> bool:
        """Apply one event; True when the prompt has ended (``executing`` null)."""
        if isinstance(event, ShutdownAsked):
            raise outcomes.Shutdown
        if isinstance(event, FailoverAsked):
            raise outcomes.FailedOver
        if isinstance(event, Check | Reconnected | ExecutionStarted):
            self._first_check_at = None
        if isinstance(event, ExecutionStarted):
            self._running()
        elif isinstance(event, NodeStarted):
            self._running()
            self._progress(event.node)
        elif isinstance(event, ExecutionEnded):
            return True
        elif isinstance(event, Progress):
            self._progress(event.node, event.value, event.max)
        elif isinstance(event, ExecutionFailed):
            self.failure = event
        elif isinstance(event, ExecutionInterrupted):
            self.interrupted = True
        elif isinstance(event, PreviewReady):
            self.ledger.preview(self.job, self.preview)
        elif isinstance(event, QueueChanged):
            if (
                self.phase is Phase.WAITING
                and time.monotonic() - self._last_position_check > POSITION_REFRESH_SECONDS
            ):
                self._last_position_check = time.monotonic()
                self._check_pending = True
        elif isinstance(event, _ASKS) and self.phase is not Phase.ENDED:
            self._ask_comfyui()
        return False

    def _ask_comfyui(self) -> None:
        """Where is the prompt? Apply the answer (a position, running, ended, or lost)."""
        self._check_socket_heard()
        try:
            where = self._where()
            self.unreachable_since = None
        except ComfyUIUnavailable:
            self.unreachable_since = self.unreachable_since or self.clock()
            return
        if where == "ended":
            self.phase = Phase.ENDED
        elif where == "absent":
            if self._cancel_requested():
                raise outcomes.Cancelled
            self._resubmit()
        elif where == "running":
            self._running()
        elif isinstance(where, int):
            self.job = self.ledger.queued_at(self.job, where)

    def _where(self) -> str | int:
        """ "ended", "running", a queue position, or "absent".

        The queue view is shared by all runs on the server and may be up to a second old, but
        never older than this run's POST /prompt; only a prompt missing from it costs a
        /history call of its own.
        """
        newer_than = max(time.monotonic() - QUEUE_VIEW_MAX_AGE, self._queued_at)
        where, position = self.client.queue_state(self._prompt_id, newer_than=newer_than)
        if where == "running":
            return "running"
        if where == "pending":
            return position or 1
        return "ended" if self.client.history(self._prompt_id) is not None else "absent"

    def _resubmit(self) -> None:
        if self.job.attempts > MAX_RESUBMITS:
            raise outcomes.PromptLost(self.job.prompt_id)
        logger.warning(
            "job %s: prompt %s vanished from %s; queueing it again",
            self.job.id,
            self.job.prompt_id,
            self.client.base_url,
        )
        self.close()
        self.job = self.records.update(
            self.job, status="queued", queue_position=None, progress=None
        )
        self.phase = Phase.WAITING
        self.ledger.requeued(self.job)
        self._submit()

    def _enforce_deadline(self) -> None:
        """At the deadline: collect a prompt that ended anyway, else withdraw it and fail."""
        self._raise_if_stopped()
        if self.job.deadline - self.clock() > 0 or self.phase is Phase.ENDED:
            return
        if self._ended_anyway():
            self.phase = Phase.ENDED  # e.g. finished while the service was stopped
            return
        withdraw(self.client, self._prompt_id)
        raise outcomes.deadline_passed(
            self.job,
            self._prompt_id,
            unreachable=self.unreachable_since is not None,
            timeout=self.settings.job_timeout,
        )

    def _ended_anyway(self) -> bool:
        try:
            return self.client.history(self._prompt_id) is not None
        except ComfyUIError:
            return False

    def _retry_withdraw(self) -> None:
        if self._withdraw_pending and time.monotonic() - self._last_withdraw > 1.0:
            self._last_withdraw = time.monotonic()
            self._withdraw_pending = not withdraw(self.client, self._prompt_id)

    def _check_socket_heard(self) -> None:
        """Reconnect a websocket that heard nothing, not even the broadcast of our own queueing."""
        mark, self._received_at_queue = self._received_at_queue, None
        if mark is not None and self.client.connected and self.client.messages_received == mark:
            self.client.reconnect(
                f"no message since prompt {self.job.prompt_id} was queued; ComfyUI no longer "
                "sends to this socket"
            )

    def _history(self) -> HistoryEntry | None:
        """The history entry (written before ``executing`` null; a lagging server gets a moment)."""
        for delay in HISTORY_RETRY_DELAYS:
            time.sleep(delay)
            entry = self.patiently(lambda: self.client.history(self._prompt_id), finished=True)
            if entry is not None:
                return entry
        return None

    def patiently(self, call: Callable[[], T], *, finished: bool = False) -> T:
        """``call()``, retried with backoff while ComfyUI refuses connections, until the deadline.

        A server that accepts but does not answer in time is not asked again for a prompt that
        may still run: its read timeout has already been waited for. Once the prompt has
        ``finished`` (its images exist), slow answers and 5xx are retried too: a blip must not
        cost a finished render.
        """
        delay = 0.2
        while True:
            try:
                return call()
            except (ComfyUIUnavailable, ComfyUIProtocolError) as exc:
                if not _is_transient(exc, finished=finished):
                    raise
                if self.clock() + delay > self.job.deadline:
                    raise
                self._raise_if_stopped()
                logger.info("job %s: %s; retrying in %.1f s", self.job.id, exc.message, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.poll_interval)

    def _raise_if_stopped(self) -> None:
        if self._stop.is_set():
            if isinstance(self._stop_event, FailoverAsked):
                raise outcomes.FailedOver
            raise outcomes.Shutdown

    # -- state changes ---------------------------------------------------------------------

    def _running(self) -> None:
        self.phase = Phase.RUNNING if self.phase is Phase.WAITING else self.phase
        self.job = self.ledger.running(self.job)

    def _progress(self, node: str, value: Any = None, maximum: Any = None) -> None:
        node_type = (self.workflow.graph.get(node) or {}).get("class_type")
        self.job = self.ledger.progress(
            self.job, node=node, node_type=node_type, value=value, maximum=maximum
        )

    def _set_timing(self, name: str, seconds: float) -> None:
        """Note a timing on the job; it is written with the job's next change."""
        self.job = replace(self.job, timings={**self.job.timings, name: ms(seconds)})

    def _cancel_requested(self) -> bool:
        """Whether the job was cancelled (its owner calls cancel() once the run is registered;
        an earlier cancel is read from the record when the run starts)."""
        return self._cancel_asked

    def _post(self, event: Any) -> None:
        if self.watch is not None:
            self.watch.events.put(event)


def _is_transient(exc: ComfyUIError, *, finished: bool) -> bool:
    """Whether asking again may succeed: refused connections always; timeouts and 5xx only for
    a finished prompt (asking again cannot start anything twice)."""
    if isinstance(exc, ComfyUIUnavailable):
        return finished or not exc.timed_out
    return finished and isinstance(exc, ComfyUIProtocolError) and (exc.status or 0) >= 500


def withdraw(client: ComfyUIClient, prompt_id: str) -> bool:
    """Remove a prompt from ComfyUI's queue, or interrupt it if it runs; True when sent.

    Deleting first means it cannot start between the two calls; the interrupt names the prompt,
    so ComfyUI ignores it unless that very prompt is running.
    """
    try:
        client.delete_pending([prompt_id])
        client.interrupt(prompt_id)
    except ComfyUIError as exc:
        logger.warning("could not withdraw prompt %s from ComfyUI: %s", prompt_id, exc)
        return False
    return True
