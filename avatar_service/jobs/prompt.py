"""The prompt's life on one server: submit it, follow its state to the end, read its history.

A run sends the photo (once per server: ``photo_source.photo_on_server``), queues a patched copy
of the workflow under a prompt_id of its own and feeds every event to the prompt's state
(``prompt_state``: WAITING -> RUNNING -> ENDED), acting on each: the job's record and events
(``ledger``), and asking ComfyUI itself on a ``Check``, a reconnect or a cancel (the shared
``/queue`` view and, for a prompt no longer in it, ``/history``): that is how a missed message,
a dropped socket or a server that forgot the prompt is noticed. The run ends with the prompt's
success entry (told by its messages when every one was heard, else read from ``/history``);
every other ending is an exception that ``outcomes`` maps to the job's result.

Once the prompt runs, its steps are published from the client's reader thread
(``step_relay``): the run's own thread sleeps until something it must act on comes.

Besides the state, a run keeps three small things of its own: its ``Submission`` (when the
prompt was queued, for the socket check), its ``Withdrawal`` (a cancel to send to ComfyUI, again
while unreachable) and its ``CheckTimer`` (when to ask ComfyUI next).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from ..comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIUnavailable,
    Disconnected,
    ExecutionEnded,
    ExecutionStarted,
    HistoryEntry,
    NodeStarted,
    Preview,
    PreviewReady,
    Progress,
    PromptRejected,
    PromptWatch,
    QueueChanged,
    Reconnected,
)
from ..comfyui.workflows import Workflow, patch_workflow
from . import outcomes
from .job import Job, JobStatus
from .ledger import JobLedger, ms
from .patience import patiently
from .photo_source import PhotoSource, photo_on_server
from .prompt_state import (
    ABSENT,
    ENDED,
    RUNNING,
    CancelAsked,
    Check,
    CheckTimer,
    FailoverAsked,
    Phase,
    ProgressDue,
    PromptState,
    RunEvent,
    RunSettings,
    ShutdownAsked,
    StepsHeard,
    Submission,
    Where,
    Withdrawal,
)
from .records import JobRecords
from .step_relay import StepRelay, step_of
from .withdrawal import withdraw

__all__ = ["FailoverAsked", "Phase", "PromptRun", "RunSettings", "ShutdownAsked", "withdraw"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A prompt that vanished from ComfyUI (restart) is queued again this many times.
MAX_RESUBMITS = 1
# How old the shared view of ComfyUI's queue may be when a run consults it.
QUEUE_VIEW_MAX_AGE = 1.0
# Waits for the history entry ComfyUI writes just before ``executing`` null (a lagging server).
HISTORY_RETRY_DELAYS = (0.0, 0.1, 0.3, 0.6, 1.0)
# A withdrawal ComfyUI did not receive is sent again at most this often (seconds).
WITHDRAW_RETRY = 1.0

# Events after which the run asks ComfyUI itself where its prompt is.
_ASKS = (Check, Reconnected, Disconnected, CancelAsked)
# Events that are no sign of life from ComfyUI (for the stall timer; relayed ones set it).
_OWN = (Check, CancelAsked, ShutdownAsked, FailoverAsked, ProgressDue, StepsHeard)
_NOT_FROM_COMFYUI = (*_OWN, Disconnected)


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
        photos: PhotoSource,
        settings: RunSettings,
        turn: Callable[[], AbstractContextManager[None]] = nullcontext,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        # Held while the prompt is queued (the server's first-come-first-served order); one use.
        self._turn: Callable[[], AbstractContextManager[None]] | None = turn
        self.client = client
        self.workflow = workflow
        self.records = records
        self.ledger = ledger
        self.photos = photos
        self.settings = settings
        self.clock = clock
        self.watch: PromptWatch | None = None
        self.state = PromptState()
        self.submission = Submission()
        self.withdrawal = Withdrawal(asked=job.cancel_requested)
        self.checks = CheckTimer()
        # When ComfyUI last gave a sign of life for this prompt (monotonic): a message about
        # it, or a change of its queue.
        self.heard_at = time.monotonic()
        self._stopped = threading.Event()  # shutdown or failover: end the run at once
        self._stop_reason: ShutdownAsked | FailoverAsked | None = None
        self.relay = StepRelay(self)

    # -- asked from other threads ----------------------------------------------------------

    def cancel(self) -> None:
        """Withdraw the prompt from ComfyUI (again later if unreachable) and wake the run."""
        self.withdrawal.asked = True
        prompt_id = self.job.prompt_id
        if prompt_id:
            self.withdrawal.pending = not withdraw(self.client, prompt_id)
            if not self.withdrawal.pending:
                self.withdrawal.sent_at = time.monotonic()
        self.watch_post(CancelAsked())

    def stop(self, event: ShutdownAsked | FailoverAsked) -> None:
        """End the run as soon as it can (the service stops, or the server was given up)."""
        self._stop_reason = event
        self._stopped.set()
        self.watch_post(event)

    @property
    def phase(self) -> Phase:
        """Where the prompt is on its server."""
        return self.state.phase

    @property
    def preview(self) -> Preview | None:
        """The latest live preview of the prompt, or None."""
        return self.watch.preview if self.watch is not None else None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> HistoryEntry:
        """Queue (or take up) the prompt and follow it to its end; its success entry."""
        started = self.clock()
        resumed = self.job.prompt_id is not None
        if self.job.prompt_id is not None:
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
        try:
            self._follow(check_first=resumed)
        finally:
            self.relay.stop()
        if "executionMs" not in self.job.timings and self.job.started_at:
            self._set_timing("executionMs", self.clock() - self.job.started_at)
        return outcomes.judge(
            self._history(),
            state=self.state,
            cancel_requested=self.withdrawal.asked,
            prompt_id=self._prompt_id,
        )

    def close(self) -> None:
        """Stop routing the prompt's events."""
        if self.watch is not None:
            self.relay.stop()
            self.client.unwatch(self.watch.prompt_id)

    @property
    def _prompt_id(self) -> str:
        assert self.watch is not None
        return self.watch.prompt_id

    def _submit(self) -> None:
        """Send the photo (unless the server has it), patch the workflow copy and queue it
        under a prompt_id of ours."""
        if self.withdrawal.asked:
            raise outcomes.Cancelled
        job = self.job
        image, sent_before = photo_on_server(self.client, self.photos, job.image_name, job.crop)
        graph = self._graph(image)
        prompt_id = str(uuid.uuid4())
        # Stored before queueing, so a restart can always find the prompt again.
        self.job = self.records.update(
            self.job, prompt_id=prompt_id, attempts=self.job.attempts + 1
        )
        self.watch = self.client.watch(prompt_id, new_prompt=True)
        turn, self._turn = self._turn or nullcontext, None
        with turn():
            # ComfyUI broadcasts a status message to every registered socket when it queues.
            self.submission.messages_at_queue = self.client.messages_received
            try:
                node_errors = self.client.queue_prompt(graph, prompt_id=prompt_id)
            except PromptRejected as exc:
                if not (sent_before and exc.refuses_input(self.workflow.roles.image, "image")):
                    raise
                # The server lost the photo sent for an earlier job (an emptied input folder):
                # it is sent again, and the refused prompt (never queued) queued once more.
                image, _ = photo_on_server(
                    self.client, self.photos, job.image_name, job.crop, resend=True
                )
                graph = self._graph(image)
                node_errors = self.client.queue_prompt(graph, prompt_id=prompt_id)
        self.submission.queued_at = time.monotonic()
        if node_errors:
            # Accepted with only some outputs valid: not the avatar that was asked for.
            withdraw(self.client, prompt_id)
            raise PromptRejected(
                "ComfyUI accepted only part of the graph",
                server=self.client.base_url,
                node_errors=node_errors,
            )
        if self.withdrawal.asked:
            withdraw(self.client, prompt_id)

    def _graph(self, image: str) -> dict[str, Any]:
        """The job's copy of the workflow, patched with its photo, text, seed and size."""
        return patch_workflow(
            self.workflow,
            image=image,
            gender=self.job.gender,
            seed=self.job.seed,
            width=self.job.width,
            height=self.job.height,
        )

    def _follow(self, *, check_first: bool) -> None:
        """Feed events to the state until the prompt has ended."""
        self.checks.start(check_first=check_first)
        self.heard_at = time.monotonic()
        while True:
            self._enforce_deadline()
            self._check_stall()
            self._retry_withdraw()
            event = self._next_event()
            if event is None or self._step(event):
                return
            if not self.relay.active and self.relay.start():
                self.checks.first_at = None  # heard of: no first position check

    def _next_event(self) -> RunEvent | None:
        """The next event: a pending check, a queued one, or a ``Check`` when none comes in time
        (``StepsHeard`` instead when the reader thread relayed steps within the poll interval).

        Once the prompt has ENDED, only the events already received are applied (None after).
        """
        assert self.watch is not None
        # The client's queue also carries this run's own events (``_post``).
        events: queue.SimpleQueue[RunEvent] = self.watch.events
        if self.checks.pending:
            self.checks.pending = False
            return Check()
        if self.state.ended:
            try:
                return events.get_nowait()
            except queue.Empty:
                return None
        try:  # the common case, events waiting: no timeout to work out
            return events.get_nowait()
        except queue.Empty:
            pass
        timeout = min(self.job.deadline - self.clock(), self.settings.poll_interval)
        if self.settings.stall_timeout:
            timeout = min(timeout, self.heard_at + self.settings.stall_timeout - time.monotonic())
        if self.checks.first_at is not None:
            timeout = min(timeout, self.checks.first_at - time.monotonic())
        try:
            return events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            pass
        if self.relay.active and time.monotonic() - self.heard_at < self.settings.poll_interval:
            return StepsHeard()
        return Check()

    def _step(self, event: RunEvent) -> bool:
        """Apply one event; True when the prompt has ended (``executing`` null)."""
        if type(event) is Progress:  # most events (a step each): what the rest does for one
            self.heard_at = time.monotonic()
            self._progress(event.node, event.value, event.max)
            return False
        if type(event) is ProgressDue:
            self.relay.written()
            self.job = self.ledger.write_progress(self.job)
            return False
        if isinstance(event, ShutdownAsked):
            raise outcomes.Shutdown
        if isinstance(event, FailoverAsked):
            raise outcomes.FailedOver
        if isinstance(event, Check | Reconnected | ExecutionStarted):
            self.checks.first_at = None
        if not isinstance(event, _NOT_FROM_COMFYUI):
            self.heard_at = time.monotonic()
        asked_in = self.state.phase
        self.state = self.state.after(event)
        if isinstance(event, ExecutionStarted | NodeStarted):
            self.job = self.ledger.running(self.job)
        if isinstance(event, NodeStarted):
            self._progress(event.node)
        elif isinstance(event, Progress):
            self._progress(event.node, event.value, event.max)
        elif isinstance(event, PreviewReady):
            self.ledger.preview(self.job, self.preview)
        elif isinstance(event, QueueChanged):
            self.checks.queue_changed(self.state.phase)
        elif isinstance(event, _ASKS) and asked_in is not Phase.ENDED:
            self._ask_comfyui()
        return isinstance(event, ExecutionEnded)

    def _ask_comfyui(self) -> None:
        """Where is the prompt? Apply the answer (a position, running, ended, or lost)."""
        self._check_socket_heard()
        try:
            where = self._where()
        except ComfyUIUnavailable:
            self.state = self.state.unreachable(self.clock())
            return
        logger.debug("job %s: prompt %s is %s", self.job.id, self.job.prompt_id, where)
        self.state = self.state.where(where)
        if where == ABSENT:
            if self.withdrawal.asked:
                raise outcomes.Cancelled
            self._resubmit()
        elif where == RUNNING:
            self.job = self.ledger.running(self.job)
        elif isinstance(where, int):
            self.job = self.ledger.queued_at(self.job, where)

    def _where(self) -> Where:
        """ENDED, RUNNING, a queue position, or ABSENT.

        The queue view is shared by all runs on the server and may be up to a second old, but
        never older than this run's POST /prompt or its withdrawal (a cancel): a view from
        before still lists the prompt. Only a prompt missing from it costs a /history call of
        its own.
        """
        newer_than = max(
            time.monotonic() - QUEUE_VIEW_MAX_AGE,
            self.submission.queued_at,
            self.withdrawal.sent_at,
        )
        where, position = self.client.queue_state(self._prompt_id, newer_than=newer_than)
        if where == "running":
            return RUNNING
        if where == "pending":
            return position or 1
        return ENDED if self.client.history(self._prompt_id) is not None else ABSENT

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
            self.job, status=JobStatus.QUEUED, queue_position=None, progress=None
        )
        self.state = self.state.queued_again()
        self.ledger.requeued(self.job)
        self._submit()

    def _enforce_deadline(self) -> None:
        """At the deadline: collect a prompt that ended anyway, else withdraw it and fail."""
        self._raise_if_stopped()
        if self.job.deadline - self.clock() > 0 or self.state.ended:
            return
        if self._ended_anyway():
            self.state = self.state.where(ENDED)  # e.g. finished while the service was stopped
            return
        withdraw(self.client, self._prompt_id)
        raise outcomes.deadline_passed(
            self.job,
            self._prompt_id,
            unreachable=self.state.unreachable_since is not None,
            timeout=self.settings.job_timeout,
        )

    def _check_stall(self) -> None:
        """A prompt that ComfyUI has said nothing about for ``stall_timeout`` (no message, no
        queue change) is withdrawn there, and the run ends ``Stalled``."""
        timeout = self.settings.stall_timeout
        silent = time.monotonic() - self.heard_at
        if not timeout or self.state.ended or silent < timeout:
            return
        withdrawn = withdraw(self.client, self._prompt_id)
        raise outcomes.Stalled(self.client.base_url, silent, withdrawn=withdrawn)

    def _ended_anyway(self) -> bool:
        try:
            return self.client.history(self._prompt_id) is not None
        except ComfyUIError:
            return False

    def _retry_withdraw(self) -> None:
        withdrawal = self.withdrawal
        if withdrawal.pending and time.monotonic() - withdrawal.last_try > WITHDRAW_RETRY:
            withdrawal.last_try = time.monotonic()
            withdrawal.pending = not withdraw(self.client, self._prompt_id)
            if not withdrawal.pending:
                withdrawal.sent_at = time.monotonic()

    def _check_socket_heard(self) -> None:
        """Reconnect a websocket that heard nothing, not even the broadcast of our own queueing."""
        mark, self.submission.messages_at_queue = self.submission.messages_at_queue, None
        if mark is not None and self.client.connected and self.client.messages_received == mark:
            self.client.reconnect(
                f"no message since prompt {self.job.prompt_id} was queued; ComfyUI no longer "
                "sends to this socket"
            )

    def _history(self) -> HistoryEntry | None:
        """The history entry: as the prompt's messages told it when every one was heard (no
        call), else from ``/history`` (written before ``executing`` null; a lagging server gets
        a moment)."""
        outputs = self.workflow.roles.outputs
        heard = self.watch.heard_entry(outputs) if self.watch is not None else None
        if heard is not None:
            return heard
        for delay in HISTORY_RETRY_DELAYS:
            time.sleep(delay)
            entry = self.patiently(partial(self.client.history, self._prompt_id), finished=True)
            if entry is not None:
                return entry
        return None

    def patiently(self, call: Callable[..., T], *, finished: bool = False) -> T:
        """``call(timeout=...)``, tried again while ComfyUI may yet answer, until the job's
        deadline (see ``patience``)."""
        return patiently(
            call,
            deadline=self.job.deadline,
            clock=self.clock,
            pause=self._pause,
            max_delay=self.settings.poll_interval,
            finished=finished,
            job_id=self.job.id,
        )

    def _pause(self, seconds: float) -> None:
        self._raise_if_stopped()
        self._stopped.wait(seconds)

    def _raise_if_stopped(self) -> None:
        if self._stopped.is_set():
            if isinstance(self._stop_reason, FailoverAsked):
                raise outcomes.FailedOver
            raise outcomes.Shutdown

    # -- state changes ---------------------------------------------------------------------

    def _progress(self, node: str, value: Any = None, maximum: Any = None) -> None:
        self.job = self.ledger.progress(self.job, step_of(self, node, value, maximum))

    def _set_timing(self, name: str, seconds: float) -> None:
        """Note a timing on the job; it is written with the job's next change."""
        self.job = replace(self.job, timings={**self.job.timings, name: ms(seconds)})

    def watch_post(self, event: RunEvent) -> None:
        """Queue an event of the run's own for its thread."""
        if self.watch is not None:
            self.watch.events.put(event)
