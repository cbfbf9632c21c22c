"""The job runner: takes each generation from request to a terminal state, and survives restarts.

A job runs in its own thread: upload the photo to ComfyUI, patch a copy of the style's workflow,
queue it under a prompt_id chosen here, follow its events until ``executing`` with ``node: null``,
read the history, fetch the images with ``/view``, save them, forward them to UPLOAD_URL, and
notify the webhook. Every wait has a deadline; every failure becomes a ``ServiceError`` record on
the job in one place (``_failure``).
"""

from __future__ import annotations

import io
import logging
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from .comfyui_client import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    Preview,
    PromptRejected,
    PromptWatch,
)
from .errors import (
    BadGateway,
    Conflict,
    GatewayTimeout,
    NotFound,
    ServiceError,
    ServiceUnavailable,
)
from .events import JobEvents
from .images import PhotoStore
from .publish import Publisher
from .storage import AvatarStore
from .store import Job, JobStore
from .webhooks import WebhookDispatcher
from .workflow import Workflow, patch_workflow

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Seeds chosen by the service stay below 2**53 so JavaScript clients read them exactly.
RANDOM_SEED_LIMIT = 2**53
# How often a queued job may re-read its queue position when the queue changes.
POSITION_REFRESH_SECONDS = 1.0
FIRST_POSITION_CHECK_SECONDS = 0.3
# How old the shared view of ComfyUI's queue may be when a job consults it.
QUEUE_VIEW_MAX_AGE = 1.0
# A prompt that vanished from ComfyUI (restart) is queued again this many times.
MAX_RESUBMITS = 1
UPLOAD_SUBFOLDER = "avatar_service"
_IMAGE_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# Watch events after which the job asks ComfyUI itself where its prompt is.
_CHECKS = frozenset({"check", "status", "reconnected", "disconnected", "cancel"})


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request for one avatar generation."""

    image_name: str
    gender: str
    width: int
    height: int
    style: str
    seed: int | None = None
    callback_url: str | None = None


class _Cancelled(Exception):
    """The job was cancelled by its owner."""


class _Shutdown(Exception):
    """The service is stopping: leave the job as it is for the next start to take up."""


class _PromptLost(Exception):
    """ComfyUI no longer knows the prompt (it restarted, or someone removed it)."""


@dataclass
class _Live:
    """What a running job thread shares with cancel() and the preview route."""

    client: ComfyUIClient | None = None
    watch: PromptWatch | None = None
    received_at_queue: int | None = None
    queued_at: float = 0.0  # time.monotonic() when POST /prompt answered
    # A cancel asked for but not yet delivered to ComfyUI (it was unreachable): sent again.
    withdraw_pending: bool = False


class JobRunner:
    """Creates jobs, runs each one in a thread, and answers questions about them."""

    def __init__(
        self,
        *,
        store: JobStore,
        events: JobEvents,
        clients: Sequence[ComfyUIClient],
        workflows: Mapping[str, Workflow],
        photos: PhotoStore,
        avatars: AvatarStore,
        job_timeout: float,
        poll_interval: float,
        public_base_url: str = "",
        publisher: Publisher | None = None,
        webhooks: WebhookDispatcher | None = None,
        webhook_url: str = "",
        connect_wait: float = 2.0,
        max_active_jobs: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.events = events
        self.clients = list(clients)
        self.workflows = workflows
        self.photos = photos
        self.avatars = avatars
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.public_base_url = public_base_url.rstrip("/")
        self.publisher = publisher
        self.webhooks = webhooks
        self.webhook_url = webhook_url
        self.connect_wait = connect_wait
        self.max_active_jobs = max_active_jobs
        self.clock = clock
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()

    # -- public face -----------------------------------------------------------------------

    def resume_unfinished(self) -> int:
        """Take up every job that was in flight when the service stopped; return how many."""
        jobs = self.store.unfinished()
        for job in jobs:
            logger.info("resuming job %s (status %s, prompt %s)", job.id, job.status, job.prompt_id)
            self._start_thread(job)
        return len(jobs)

    def submit(self, request: GenerateRequest, *, base_url: str) -> Job:
        """Record a new job and start it; the photo must exist."""
        self.photos.path_of(request.image_name)
        if self._stopping.is_set() or self.events.closing:
            raise ServiceUnavailable("the service is restarting; try again shortly", retry_after=5)
        job_id = uuid.uuid4().hex
        with self._lock:  # count and reserve in one step, so a burst cannot overshoot
            if len(self._live) >= self.max_active_jobs:
                raise ServiceUnavailable(
                    f"{len(self._live)} jobs are in flight (MAX_ACTIVE_JOBS); try again shortly",
                    code="service_busy",
                    details={"maxActiveJobs": self.max_active_jobs},
                )
            self._live[job_id] = _Live()
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_LIMIT)
        now = self.clock()
        job = Job(
            id=job_id,
            status="queued",
            style=request.style,
            image_name=request.image_name,
            gender=request.gender,
            width=request.width,
            height=request.height,
            seed=seed,
            base_url=self.public_base_url or base_url.rstrip("/"),
            callback_url=request.callback_url,
            created_at=now,
            deadline=now + self.job_timeout,
        )
        try:
            self.store.insert(job)
        except BaseException:
            with self._lock:
                self._live.pop(job_id, None)
            raise
        self.events.publish(job.id, "queued", job.to_dict())
        self._start_thread(job)
        return job

    def get(self, job_id: str) -> Job:
        """The job record; NotFound if unknown."""
        job = self.store.get(job_id) if _looks_like_job_id(job_id) else None
        if job is None:
            raise NotFound("unknown job", code="job_not_found", details={"jobId": job_id})
        return job

    def wait(self, job_id: str, timeout: float) -> Job:
        """Wait up to ``timeout`` seconds for the job to end; return its record either way."""
        job = self.get(job_id)
        if not job.ended and timeout > 0:
            self.events.wait_ended(job_id, timeout)
            job = self.get(job_id)
        return job

    def cancel(self, job_id: str, *, wait: float = 0.0) -> Job:
        """Cancel a job: remove its prompt from ComfyUI's queue or interrupt it (only it).

        Waits up to ``wait`` seconds for the job to end; Conflict if it ended otherwise.
        """
        job = self.get(job_id)
        if job.ended:
            raise _already_ended(job)
        if not job.cancel_requested:
            job = self.store.update(job, cancel_requested=True)
        live = self._live.get(job_id)
        if live is not None and live.client is not None and job.prompt_id:
            live.withdraw_pending = not self._withdraw(live.client, job.prompt_id)
        if live is not None and live.watch is not None:
            live.watch.events.put(("cancel", {}))
        job = self.wait(job_id, wait)
        if job.ended and job.status != "cancelled":
            raise _already_ended(job)
        return job

    def preview(self, job_id: str) -> Preview:
        """The latest live preview image of a running job; NotFound when there is none."""
        self.get(job_id)
        live = self._live.get(job_id)
        if live is None or live.watch is None or live.watch.preview is None:
            raise NotFound(
                "no preview for this job (none sent yet, or the job is not running)",
                code="preview_not_found",
                details={"jobId": job_id},
            )
        return live.watch.preview

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following jobs, leaving unfinished ones to be resumed by the next start."""
        self._stopping.set()
        with self._lock:
            watches = [live.watch for live in self._live.values() if live.watch is not None]
        for watch in watches:
            watch.events.put(("shutdown", {}))
        self.join(timeout)

    def join(self, timeout: float = 10.0) -> None:
        """Wait for job threads to finish."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the job thread --------------------------------------------------------------------

    def _start_thread(self, job: Job) -> None:
        with self._lock:
            self._live.setdefault(job.id, _Live())
        thread = threading.Thread(target=self._run, args=(job,), name=f"job {job.id}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _run(self, job: Job) -> None:
        try:
            job = self._drive(job)
        except _Cancelled:
            job = self._finish(job, "cancelled", None)
        except Exception as exc:  # every failure ends the job; none escapes the thread
            if self._stopping.is_set():
                logger.info("job %s left unfinished for the next start", job.id)
                return
            error = _failure(exc, job)
            if not isinstance(exc, ServiceError | ComfyUIError | _PromptLost):
                logger.exception("job %s failed unexpectedly", job.id)
            else:
                logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
            job = self._finish(job, "failed", error)
        finally:
            with self._lock:
                live = self._live.pop(job.id, None)
            if live is not None and live.client is not None and live.watch is not None:
                live.client.unwatch(live.watch.prompt_id)
            self._threads.discard(threading.current_thread())

    def _drive(self, job: Job) -> Job:
        started = self.clock()
        workflow = self.workflows.get(job.style)
        if workflow is None:
            raise NotFound(
                f"style {job.style!r} is no longer configured",
                code="style_not_found",
                details={"style": job.style},
            )
        client = self._client_for(job)
        live = self._live[job.id]
        if job.server != client.base_url:
            job = self.store.update(job, server=client.base_url)
        resumed = job.prompt_id is not None
        if resumed:
            live.watch = client.watch(job.prompt_id)
        else:
            job = self._submit_prompt(job, client, workflow)
        timings = dict(job.timings)
        timings.setdefault("prepareMs", _ms(self.clock() - started))
        job = self.store.update(job, timings=timings)
        entry = self._follow(job, client, workflow, check_first=resumed)
        job = self.get(job.id)
        if "executionMs" not in job.timings and job.started_at:
            job = self.store.update(
                job, timings={**job.timings, "executionMs": _ms(self.clock() - job.started_at)}
            )
        avatars = self._collect(job, client, workflow, entry)
        return self._finish(job, "succeeded", None, avatars=avatars)

    def _client_for(self, job: Job) -> ComfyUIClient:
        """The server of a resumed job, or the least busy reachable server for a new one.

        The choice is recorded on the job's live entry, so concurrent choices see each other.
        """
        if job.server is not None:
            for client in self.clients:
                if client.base_url == job.server:
                    self._live[job.id].client = client
                    return client
            if job.prompt_id is not None:
                raise BadGateway(
                    f"the job ran on {job.server}, which is no longer configured",
                    code="comfyui_server_removed",
                    details={"server": job.server},
                )
        candidates = [client for client in self.clients if client.connected]
        if not candidates:
            deadline = time.monotonic() + self.connect_wait
            while not candidates and time.monotonic() < deadline:
                self.clients[0].wait_connected(0.05)
                candidates = [client for client in self.clients if client.connected]
        if not candidates:
            reasons = {c.base_url: c.last_error or "not connected" for c in self.clients}
            raise ServiceUnavailable(
                "ComfyUI is not reachable; try again shortly",
                details={"servers": reasons},
            )
        with self._lock:
            load = {c.base_url: 0 for c in candidates}
            for live in self._live.values():
                if live.client is not None and live.client.base_url in load:
                    load[live.client.base_url] += 1
            chosen = min(candidates, key=lambda c: load[c.base_url])
            self._live[job.id].client = chosen
        return chosen

    def _submit_prompt(self, job: Job, client: ComfyUIClient, workflow: Workflow) -> Job:
        """Upload the photo, patch the workflow copy and queue it under a prompt_id of ours."""
        if self.get(job.id).cancel_requested:
            raise _Cancelled
        photo = self.photos.path_of(job.image_name).read_bytes()
        comfy_image = client.upload_image(photo, job.image_name, subfolder=UPLOAD_SUBFOLDER)
        graph = patch_workflow(
            workflow,
            image=comfy_image,
            gender=job.gender,
            seed=job.seed,
            width=job.width,
            height=job.height,
        )
        prompt_id = str(uuid.uuid4())
        # Stored before queueing, so a restart can always find the prompt again.
        job = self.store.update(job, prompt_id=prompt_id, attempts=job.attempts + 1)
        live = self._live[job.id]
        live.watch = client.watch(prompt_id)
        # ComfyUI broadcasts a status message to every registered socket when it queues.
        live.received_at_queue = client.messages_received
        answer = client.queue_prompt(graph, prompt_id=prompt_id)
        live.queued_at = time.monotonic()
        if answer.get("node_errors"):
            # Accepted with only some outputs valid: not the avatar that was asked for.
            self._withdraw(client, prompt_id)
            raise PromptRejected(
                "ComfyUI accepted only part of the graph",
                server=client.base_url,
                node_errors=answer["node_errors"],
            )
        if self.get(job.id).cancel_requested:
            self._withdraw(client, prompt_id)
        return job

    def _follow(
        self, job: Job, client: ComfyUIClient, workflow: Workflow, *, check_first: bool
    ) -> dict[str, Any]:
        """Follow the prompt's events until it ends; return its history entry (success only)."""
        watch = self._live[job.id].watch
        assert watch is not None
        prompt_id = watch.prompt_id
        failure: dict[str, Any] | None = None
        interrupted = False
        unreachable_since: float | None = None
        # The broadcast right after queueing says nothing new; a job still waiting a moment
        # later asks for its position, then on queue changes (at most once a second).
        last_position_check = time.monotonic()
        first_check_at: float | None = time.monotonic() + FIRST_POSITION_CHECK_SECONDS
        check_now = check_first
        # Set when /history says the prompt ended: the events already received are still
        # applied (running, progress), then the loop ends.
        ended = False
        last_withdraw = 0.0
        while True:
            if self._stopping.is_set():
                raise _Shutdown
            remaining = job.deadline - self.clock()
            if remaining <= 0 and not ended and self._ended_anyway(client, prompt_id):
                ended = True  # e.g. finished while the service was stopped: not a timeout
            if remaining <= 0 and not ended:
                self._withdraw(client, prompt_id)
                if unreachable_since is not None:
                    raise ServiceUnavailable(
                        "ComfyUI became unreachable during the job and did not come back "
                        "before its deadline",
                        details={"jobId": job.id, "promptId": prompt_id},
                    )
                raise GatewayTimeout(
                    f"the job did not finish within {self.job_timeout:g} s; its prompt was "
                    "removed from ComfyUI",
                    details={"jobId": job.id, "promptId": prompt_id, "status": job.status},
                )
            live = self._live[job.id]
            if live.withdraw_pending and time.monotonic() - last_withdraw > 1.0:
                last_withdraw = time.monotonic()
                live.withdraw_pending = not self._withdraw(client, prompt_id)
            if check_now:
                kind, data = "check", {}
                check_now = False
            elif ended:
                try:
                    kind, data = watch.events.get_nowait()
                except queue.Empty:
                    break
            else:
                timeout = min(remaining, self.poll_interval)
                if first_check_at is not None:
                    timeout = max(0.0, min(timeout, first_check_at - time.monotonic()))
                try:
                    kind, data = watch.events.get(timeout=timeout)
                except queue.Empty:
                    kind, data = "check", {}
            if kind in {"check", "reconnected", "execution_start"}:
                first_check_at = None
            if ended and kind in _CHECKS:
                continue
            if kind == "execution_start":
                job = self._mark_running(job)
            elif kind == "executing":
                if data.get("node") is None:
                    break
                job = self._mark_running(job)
                job = self._progress(job, workflow, node=str(data["node"]))
            elif kind == "progress":
                job = self._progress(
                    job,
                    workflow,
                    node=str(data.get("node")),
                    value=data.get("value"),
                    maximum=data.get("max"),
                )
            elif kind == "execution_error":
                failure = data
            elif kind == "execution_interrupted":
                interrupted = True
            elif kind == "preview":
                self.events.publish(job.id, "preview", {"url": job.to_dict()["links"]["preview"]})
            elif kind == "status":
                if job.status == "queued" and time.monotonic() - last_position_check > (
                    POSITION_REFRESH_SECONDS
                ):
                    last_position_check = time.monotonic()
                    check_now = True
            elif kind in _CHECKS:
                self._check_socket_heard(job, client)
                try:
                    state = self._reconcile(job, client, prompt_id)
                    unreachable_since = None
                except ComfyUIUnavailable:
                    unreachable_since = unreachable_since or self.clock()
                    continue
                if state == "ended":
                    ended = True
                if state == "absent":
                    if self.get(job.id).cancel_requested:
                        raise _Cancelled
                    job = self._resubmit(job, client, workflow)
                    watch = self._live[job.id].watch
                    assert watch is not None
                    prompt_id = watch.prompt_id
                elif state == "running":
                    job = self._mark_running(job)
                elif isinstance(state, int):
                    job = self._queued_at(job, state)
        entry = self._history(job, client, prompt_id)
        status = (entry or {}).get("status") or {}
        messages = {name: payload for name, payload in status.get("messages") or []}
        failure = failure or messages.get("execution_error")
        interrupted = interrupted or "execution_interrupted" in messages
        cancelled = self.get(job.id).cancel_requested
        if cancelled and (
            interrupted or (failure is None and status.get("status_str") != "success")
        ):
            raise _Cancelled
        if failure is not None:
            raise BadGateway(
                f"ComfyUI failed while running node {failure.get('node_id')} "
                f"({failure.get('node_type')}): "
                f"{str(failure.get('exception_message', '')).strip()}",
                code="comfyui_execution_error",
                details={
                    "promptId": prompt_id,
                    "nodeId": failure.get("node_id"),
                    "nodeType": failure.get("node_type"),
                    "exceptionType": failure.get("exception_type"),
                    "exceptionMessage": str(failure.get("exception_message", "")).strip(),
                },
            )
        if interrupted:
            raise BadGateway(
                "the prompt was interrupted on the ComfyUI server (not by this service)",
                code="comfyui_interrupted",
                details={"promptId": prompt_id},
            )
        if entry is None or status.get("status_str") != "success":
            raise BadGateway(
                "ComfyUI ended the prompt without a successful history entry",
                code="comfyui_no_history",
                details={"promptId": prompt_id, "status": status or None},
            )
        return entry

    def _ended_anyway(self, client: ComfyUIClient, prompt_id: str) -> bool:
        """Whether ComfyUI has a history entry for the prompt (asked once, at the deadline)."""
        try:
            return client.history(prompt_id) is not None
        except ComfyUIError:
            return False

    def _check_socket_heard(self, job: Job, client: ComfyUIClient) -> None:
        """Reconnect a websocket that heard nothing, not even the broadcast of our own queueing."""
        live = self._live[job.id]
        mark, live.received_at_queue = live.received_at_queue, None
        if mark is not None and client.connected and client.messages_received == mark:
            client.reconnect(
                f"no message since prompt {job.prompt_id} was queued; ComfyUI no longer "
                "sends to this socket"
            )

    def _reconcile(self, job: Job, client: ComfyUIClient, prompt_id: str) -> str | int:
        """Ask ComfyUI where the prompt is: "ended", "running", a queue position, or "absent".

        The queue view is shared by all jobs on the server and may be up to a second old, but
        never older than this job's POST /prompt; only a prompt missing from it costs a
        /history call of its own.
        """
        newer_than = max(time.monotonic() - QUEUE_VIEW_MAX_AGE, self._live[job.id].queued_at)
        where, position = client.queue_state(prompt_id, newer_than=newer_than)
        if where == "running":
            return "running"
        if where == "pending":
            return position or 1
        return "ended" if client.history(prompt_id) is not None else "absent"

    def _resubmit(self, job: Job, client: ComfyUIClient, workflow: Workflow) -> Job:
        if job.attempts > MAX_RESUBMITS:
            raise _PromptLost(job.prompt_id)
        logger.warning(
            "job %s: prompt %s vanished from %s; queueing it again",
            job.id,
            job.prompt_id,
            client.base_url,
        )
        if job.prompt_id:
            client.unwatch(job.prompt_id)
        job = self.store.update(job, status="queued", queue_position=None, progress=None)
        self.events.publish(job.id, "queued", job.to_dict())
        return self._submit_prompt(job, client, workflow)

    def _history(self, job: Job, client: ComfyUIClient, prompt_id: str) -> dict[str, Any] | None:
        """The history entry (written before ``executing`` null; a lagging server gets a moment)."""
        for delay in (0.0, 0.1, 0.3, 0.6, 1.0):
            time.sleep(delay)
            entry = self._patiently(job, lambda: client.history(prompt_id), finished=True)
            if entry is not None:
                return entry
        return None

    def _patiently(self, job: Job, call: Callable[[], T], *, finished: bool = False) -> T:
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
                if self._stopping.is_set() or self.clock() + delay > job.deadline:
                    raise
                logger.info("job %s: %s; retrying in %.1f s", job.id, exc.message, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.poll_interval)

    def _withdraw(self, client: ComfyUIClient, prompt_id: str) -> bool:
        """Remove a prompt from ComfyUI's queue, or interrupt it if it runs; True when sent.

        Deleting first means it cannot start between the two calls; the interrupt names the
        prompt, so ComfyUI ignores it unless that very prompt is running.
        """
        try:
            client.delete_pending([prompt_id])
            client.interrupt(prompt_id)
        except ComfyUIError as exc:
            logger.warning("could not withdraw prompt %s from ComfyUI: %s", prompt_id, exc)
            return False
        return True

    # -- results ---------------------------------------------------------------------------

    def _collect(
        self, job: Job, client: ComfyUIClient, workflow: Workflow, entry: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Fetch every output image with /view, save it atomically, forward it if configured."""
        fetch_started = self.clock()
        outputs = entry.get("outputs") or {}
        images = [
            image
            for node_id in workflow.roles.outputs
            for image in (outputs.get(node_id) or {}).get("images") or []
        ]
        if not images:
            raise BadGateway(
                "ComfyUI finished but reported no image from the workflow's output nodes",
                code="comfyui_no_output",
                details={"outputNodes": list(workflow.roles.outputs), "outputs": outputs},
            )
        avatars: list[dict[str, Any]] = []
        for index, image in enumerate(images):
            try:
                data, _ = self._patiently(
                    job,
                    lambda image=image: client.view(
                        filename=image["filename"],
                        subfolder=image.get("subfolder", ""),
                        folder_type=image.get("type", "output"),
                    ),
                    finished=True,
                )
            except ComfyUIError as exc:
                logger.error("job %s: fetching %s failed: %s", job.id, image.get("filename"), exc)
                raise BadGateway(
                    f"could not fetch the generated image {image.get('filename')!r} from ComfyUI: "
                    f"{exc.message}",
                    code="avatar_fetch_failed",
                    details={"promptId": job.prompt_id, "image": image},
                ) from exc
            try:
                with Image.open(io.BytesIO(data)) as decoded:
                    width, height = decoded.size
                    extension = _IMAGE_EXTENSIONS.get(decoded.format or "", "png")
            except (UnidentifiedImageError, OSError) as exc:
                logger.error("job %s: ComfyUI sent an unreadable image: %s", job.id, exc)
                raise BadGateway(
                    "ComfyUI sent an image that cannot be decoded",
                    code="avatar_fetch_failed",
                    details={"promptId": job.prompt_id, "image": image},
                ) from exc
            try:
                file_name = self.avatars.save(job.id, index, data, extension)
            except OSError as exc:
                logger.error("job %s: saving avatar failed: %s", job.id, exc)
                raise ServiceError(
                    "the avatar could not be saved on the service",
                    code="avatar_save_failed",
                    details={"jobId": job.id},
                ) from exc
            avatars.append({"fileName": file_name, "width": width, "height": height})
        timings = {**job.timings, "fetchMs": _ms(self.clock() - fetch_started)}
        if self.publisher is not None:
            publish_started = self.clock()
            for avatar in avatars:
                outcome = self.publisher.publish(
                    self.avatars.path_of(avatar["fileName"]),
                    filename=avatar["fileName"],
                    content_type=_content_type(avatar["fileName"]),
                    fields={
                        "jobId": job.id,
                        "seed": str(job.seed),
                        "gender": job.gender,
                        "style": job.style,
                        "width": str(avatar["width"]),
                        "height": str(avatar["height"]),
                    },
                )
                avatar["upload"] = outcome.to_dict()
            timings["publishMs"] = _ms(self.clock() - publish_started)
        self.store.update(job, timings=timings)
        return avatars

    # -- state changes ---------------------------------------------------------------------

    def _mark_running(self, job: Job) -> Job:
        if job.status == "running":
            return job
        now = self.clock()
        timings = dict(job.timings)
        if job.timings.get("prepareMs") is not None:
            submitted = job.created_at + job.timings["prepareMs"] / 1000
            timings["queuedMs"] = _ms(max(0.0, now - submitted))
        job = self.store.update(
            job,
            status="running",
            started_at=job.started_at or now,
            queue_position=None,
            timings=timings,
        )
        self.events.publish(job.id, "running", job.to_dict())
        return job

    def _queued_at(self, job: Job, position: int) -> Job:
        if job.queue_position == position:
            return job
        job = self.store.update(job, queue_position=position)
        self.events.publish(job.id, "position", {"queuePosition": position})
        return job

    def _progress(
        self,
        job: Job,
        workflow: Workflow,
        *,
        node: str,
        value: Any = None,
        maximum: Any = None,
    ) -> Job:
        node_type = (workflow.graph.get(node) or {}).get("class_type")
        progress = {"node": node, "nodeType": node_type, "value": value, "max": maximum}
        if value is None and job.progress and job.progress.get("node") == node:
            return job
        job = self.store.update(job, progress=progress)
        self.events.publish(job.id, "progress", progress)
        return job

    def _finish(
        self,
        job: Job,
        status: str,
        error: ServiceError | None,
        *,
        avatars: list[dict[str, Any]] | None = None,
    ) -> Job:
        current = self.store.get(job.id) or job
        now = self.clock()
        record = None
        if error is not None:
            record = {"status": error.status, **error.to_dict()}
            record.setdefault("details", {})["jobId"] = job.id
        timings = {**current.timings, "totalMs": _ms(now - current.created_at)}
        job = self.store.update(
            current,
            status=status,
            finished_at=now,
            error=record,
            avatars=avatars if avatars is not None else current.avatars,
            timings=timings,
            queue_position=None,
        )
        body = job.to_dict()
        self._notify(job, body)
        self.events.publish(job.id, status, body, final=True)
        return job

    def _notify(self, job: Job, body: dict[str, Any]) -> None:
        """Queue the webhook deliveries: WEBHOOK_URL and the job's own callbackUrl, if any."""
        if self.webhooks is None:
            return
        for url in dict.fromkeys(u for u in (self.webhook_url, job.callback_url) if u):
            try:
                self.webhooks.enqueue(
                    job_id=job.id, url=url, event_type=f"job.{job.status}", data=body
                )
            except Exception:  # a webhook problem must never change the job's outcome
                logger.exception("job %s: could not queue the webhook to %s", job.id, url)


def _failure(exc: BaseException, job: Job) -> ServiceError:
    """The one place where an exception becomes a job's error record."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, PromptRejected):
        return BadGateway(
            f"ComfyUI rejected the workflow: {exc.message}",
            code="comfyui_rejected_prompt",
            details={"error": exc.error, "node_errors": exc.node_errors, "server": exc.server},
        )
    if isinstance(exc, ComfyUIUnavailable):
        return ServiceUnavailable(
            "ComfyUI is not reachable; try again shortly",
            details={"server": exc.server, "reason": exc.message},
        )
    if isinstance(exc, ComfyUIProtocolError):
        return BadGateway(
            f"ComfyUI answered unexpectedly: {exc.message}",
            code="comfyui_bad_response",
            details={"server": exc.server, "status": exc.status},
        )
    if isinstance(exc, _PromptLost):
        return BadGateway(
            "ComfyUI lost the prompt (did the server restart?) and it was lost again after "
            "being queued once more",
            code="comfyui_lost_prompt",
            details={"promptId": job.prompt_id, "server": job.server},
        )
    if isinstance(exc, ComfyUIError):
        return BadGateway(exc.message, code="comfyui_error", details={"server": exc.server})
    return ServiceError("internal error while running the job; see the service log")


def _is_transient(exc: ComfyUIError, *, finished: bool) -> bool:
    """Whether asking again may succeed: refused connections always; timeouts and 5xx only for
    a finished prompt (asking again cannot start anything twice)."""
    if isinstance(exc, ComfyUIUnavailable):
        return finished or not exc.timed_out
    return finished and isinstance(exc, ComfyUIProtocolError) and (exc.status or 0) >= 500


def _already_ended(job: Job) -> Conflict:
    return Conflict(
        f"the job has already ended ({job.status})",
        code="job_already_ended",
        details={"jobId": job.id, "status": job.status},
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _content_type(file_name: str) -> str:
    extension = file_name.rsplit(".", 1)[-1]
    return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}.get(
        extension, "image/png"
    )


def _looks_like_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
