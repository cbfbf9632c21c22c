"""The services of one app, built once by create_app and kept in ``app.extensions``."""

from __future__ import annotations

import fcntl
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from .comfyui.client import ComfyUIClient, ComfyUIError, runs_standin
from .comfyui.workflow import (
    Workflow,
    WorkflowError,
    check_against_object_info,
    describe,
    load_workflows,
)
from .config import ConfigError, Settings
from .delivery.forwarding import AvatarForwarder
from .delivery.job_end import forwarding_hook, webhook_hook
from .delivery.webhooks import WebhookDispatcher, WebhookError
from .errors import ServiceUnavailable
from .jobs import Job, JobEngine, JobRecords
from .jobs.broadcast import EventBroadcast
from .jobs.dispatcher import Dispatcher
from .jobs.events import JobEvents
from .jobs.ledger import JobLedger
from .jobs.prompt import RunSettings
from .jobs.records import iso
from .persistence.database import Database, DatabaseUnavailable, PostgresDatabase, open_database
from .persistence.migrations import migrate
from .photos.faces import FaceDetector
from .photos.framing import Framing
from .photos.store import PhotoStore
from .storage.avatars import AvatarStore, write_atomic

logger = logging.getLogger(__name__)
# Threads kept for short requests (health, uploads, cancels) however large THREADS is.
RESERVED_THREADS_MAX = 16
# The longest pause between two attempts to forward an avatar to UPLOAD_URL.
UPLOAD_BACKOFF_MAX = 10.0


@dataclass
class Services:
    """Everything the routes call; built from Settings, closed at shutdown."""

    settings: Settings
    workflows: dict[str, Workflow]
    photos: PhotoStore
    framing: Framing
    avatars: AvatarStore
    database: Database
    records: JobRecords
    events: JobEvents
    clients: list[ComfyUIClient]
    runner: JobEngine
    forwarder: AvatarForwarder | None = None
    webhooks: WebhookDispatcher | None = None
    # Job events to and from other processes (a shared database only).
    broadcast: EventBroadcast | None = None
    # server URL -> style -> problems found in that server's /object_info (absent: not checked)
    workflow_problems: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    # server URL -> whether its last /system_stats answer came from the stand-in: a server that
    # is down says nothing, and the stand-in it was stays the stand-in until it answers again.
    standin_seen: dict[str, bool] = field(default_factory=dict)
    # Requests that hold a server thread for long (sync waits, event streams) may use only some
    # of THREADS, so /healthz, /readyz, cancel and uploads always find a free thread.
    long_requests: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(1), repr=False
    )
    # Called once when the service starts and when it closes (parts built beside it).
    on_start: list[Callable[[], None]] = field(default_factory=list, repr=False)
    on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _started: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)
    _start_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _lock_file: TextIO | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, *, root: Path, instance_path: Path) -> Services:
        """Create the folders, load the workflows, open the database and the ComfyUI clients."""
        workflows_dir = _resolve(root, settings.workflows_dir)
        try:
            workflows = load_workflows(workflows_dir)
        except WorkflowError as exc:
            raise ConfigError(f"workflows in {workflows_dir}: {exc}") from exc
        if settings.default_style not in workflows:
            raise ConfigError(
                f"DEFAULT_STYLE={settings.default_style!r} is not a workflow in {workflows_dir} "
                f"(found: {sorted(workflows)})"
            )
        upload_dir = _resolve(root, settings.upload_dir)
        output_dir = _resolve(root, settings.output_dir)
        for directory in (upload_dir, output_dir, instance_path):
            directory.mkdir(parents=True, exist_ok=True)
        photos = PhotoStore(
            upload_dir,
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            max_concurrent_decodes=settings.max_concurrent_decodes,
            decode_wait=settings.decode_wait,
        )
        framing = Framing(
            photos,
            FaceDetector() if settings.face_policy != "off" else None,
            policy=settings.face_policy,
            multiple=settings.face_multiple,
            margin=settings.face_margin,
        )
        avatars = AvatarStore(output_dir, strip_metadata=settings.strip_avatar_metadata)
        try:
            database = open_database(
                settings.database_url,
                sqlite_path=instance_path / "avatar_service.sqlite3",
                pool_size=settings.database_pool_size,
            )
        except ValueError as exc:
            raise ConfigError(f"DATABASE_URL: {exc}") from exc
        migrate(database)  # every table, before any part of the service reads one
        records = JobRecords(database)
        events = JobEvents()
        comfyui_timeout = httpx.Timeout(
            settings.comfyui_read_timeout, connect=settings.comfyui_connect_timeout
        )
        client_id = _stable_client_id(instance_path)
        clients = [
            ComfyUIClient(
                url,
                timeout=comfyui_timeout,
                reconnect_max=settings.comfyui_reconnect_max,
                client_id=client_id,
            )
            for url in (settings.comfyui_url if settings.local_workers else ())
        ]
        forwarder = None
        if settings.upload_url:
            forwarder = AvatarForwarder(
                database=database,
                url=settings.upload_url,
                field_name=settings.upload_field_name,
                timeout=httpx.Timeout(
                    settings.upload_timeout, connect=settings.comfyui_connect_timeout
                ),
                max_attempts=settings.upload_max_attempts,
                backoff=settings.upload_backoff,
                backoff_max=UPLOAD_BACKOFF_MAX,
                max_age=settings.delivery_deadline,
            )
        webhooks = None
        if settings.webhook_url or settings.webhook_allowed_urls:
            try:
                webhooks = WebhookDispatcher(
                    database=database,
                    secret=settings.webhook_secret or None,
                    timeout=httpx.Timeout(
                        settings.webhook_timeout, connect=settings.comfyui_connect_timeout
                    ),
                    max_attempts=settings.webhook_max_attempts,
                    backoff=settings.webhook_backoff,
                    max_age=settings.delivery_deadline,
                )
            except WebhookError as exc:
                raise ConfigError(f"WEBHOOK_SECRET: {exc}") from exc
        ledger = JobLedger(records=records, events=events)
        if forwarder is not None:
            ledger.on_end.append(forwarding_hook(forwarder, avatars))
        if webhooks is not None:
            ledger.on_end.append(webhook_hook(webhooks, settings.webhook_url))
        dispatcher = Dispatcher(
            records=records,
            ledger=ledger,
            clients=clients,
            workflows=workflows,
            photos=photos,
            avatars=avatars,
            settings=RunSettings(
                job_timeout=settings.job_timeout, poll_interval=settings.comfyui_poll_interval
            ),
            slots=settings.comfyui_slots,
            down_grace=settings.comfyui_down_grace,
            lease=settings.worker_lease,
            leadership=database.leadership("queue"),
        )
        broadcast = None
        if isinstance(database, PostgresDatabase):
            broadcast = EventBroadcast(
                database=database, records=records, events=events, origin=dispatcher.owner
            )
        runner = JobEngine(
            records=records,
            events=events,
            ledger=ledger,
            dispatcher=dispatcher,
            photos_exist=photos.path_of,
            job_timeout=settings.job_timeout,
            public_base_url=settings.public_base_url,
            max_active_jobs=settings.max_active_jobs,
            max_queued_jobs=settings.max_queued_jobs,
        )
        reserved = max(2, min(settings.threads // 4, RESERVED_THREADS_MAX))
        return cls(
            long_requests=threading.BoundedSemaphore(settings.threads - reserved),
            settings=settings,
            workflows=workflows,
            photos=photos,
            framing=framing,
            avatars=avatars,
            database=database,
            records=records,
            events=events,
            clients=clients,
            runner=runner,
            forwarder=forwarder,
            webhooks=webhooks,
            broadcast=broadcast,
        )

    def start(self) -> None:
        """Connect to ComfyUI, start webhook delivery, and take up jobs left in flight (once)."""
        with self._start_lock:
            if self._started or self._closed:
                return
            self._hold_instance_lock()
            self._started = True
        if self.broadcast is not None:
            self.broadcast.start()
        for client in self.clients:
            client.on_connect = self.check_workflows
            client.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.forwarder is not None:
            self.forwarder.start()
        for start in self.on_start:
            start()
        resumed = self.runner.start()
        if resumed:
            logger.info("resumed %d job(s) left in flight by the previous run", resumed)

    def _hold_instance_lock(self) -> None:
        """One running service per SQLite file: a second one would drive the same jobs.

        (On PostgreSQL many processes share the database: leases keep them apart.)
        """
        if self.database.path is None:
            return
        path = self.database.path.with_suffix(".lock")
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"another avatar service process is running on {self.database.path} "
                "(INSTANCE_PATH); stop it first, or give this one its own INSTANCE_PATH"
            ) from None
        self._lock_file = handle

    def wait_for_job(self, job_id: str) -> Job:
        """Wait up to SYNC_WAIT for a job, if a long-request slot is free; else answer now."""
        if not self.long_requests.acquire(blocking=False):
            return self.runner.get(job_id)
        try:
            return self.runner.wait(job_id, self.settings.sync_wait)
        finally:
            self.long_requests.release()

    def open_stream(self, stream: Iterator[str]) -> Iterable[str]:
        """An event stream holding a long-request slot until it is closed; 503 if none is free."""
        if not self.long_requests.acquire(blocking=False):
            raise ServiceUnavailable(
                "too many open event streams and waiting requests; poll GET /jobs/<jobId> "
                "or try again shortly",
                code="service_busy",
                retry_after=5,
            )
        return _Releasing(stream, self.long_requests.release)

    def begin_shutdown(self) -> None:
        """First step of stopping: waiting requests answer now (202 + Location), streams end,
        new jobs are refused; jobs in flight go on until close()."""
        self.events.close()

    def close(self) -> None:
        """Stop background threads and close connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for close in self.on_close:
            close()
        self.runner.stop(timeout=5)
        if self.broadcast is not None:
            self.broadcast.stop()
        for client in self.clients:
            client.close()
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.records.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the instance lock

    def check_workflows(self, client: ComfyUIClient) -> None:
        """Check every style against a server's /object_info (run each time it connects)."""
        try:
            object_info = client.object_info()
        except ComfyUIError as exc:
            logger.warning("could not read /object_info of %s: %s", client.base_url, exc)
            return
        except RuntimeError:  # the client was closed while the check ran (shutdown)
            return
        report = {}
        for name, workflow in sorted(self.workflows.items()):
            problems = check_against_object_info(workflow.graph, object_info)
            report[name] = [problem.to_dict() for problem in problems]
            for problem in problems:
                logger.warning(
                    "style %r cannot run on %s: node %s (%s): %s; fix: %s",
                    name,
                    client.base_url,
                    problem.node_id,
                    problem.class_type,
                    problem.message,
                    problem.fix,
                )
        self.workflow_problems[client.base_url] = report
        state = self.runner.dispatcher.states.get(client.base_url)
        if state is not None:
            state.catalogue_read(object_info)

    def describe_styles(self) -> list[dict[str, Any]]:
        """GET /styles: each workflow with its parameters (with a shared database, also the
        live servers of the fleet that can run it now: ``liveServers``)."""
        styles = [describe(workflow) for _, workflow in sorted(self.workflows.items())]
        if self.database.dialect.shared:
            try:
                live = [entry for entry in self.runner.dispatcher.fleet.live() if entry.usable]
            except DatabaseUnavailable:
                live = []
            for style in styles:
                style["liveServers"] = sorted(
                    {entry.server for entry in live if style["name"] not in entry.withheld}
                )
        return styles

    def readiness(self) -> dict[str, Any]:
        """Per ComfyUI server: websocket up, HTTP answering, stand-in or not; ready when one is.

        With a shared database: the database answers, and some live worker of the fleet (in
        any process) can take jobs.
        """
        if self.database.dialect.shared:
            return self._fleet_readiness()
        return self._local_readiness()

    def _fleet_readiness(self) -> dict[str, Any]:
        dispatcher = self.runner.dispatcher
        database: dict[str, Any] = {"ok": True, "engine": "postgresql"}
        workers: list[dict[str, Any]] = []
        try:
            self.database.ping()
            workers = [entry.to_dict() for entry in dispatcher.fleet.live()]
        except DatabaseUnavailable as exc:
            database = {"ok": False, "engine": "postgresql", "error": str(exc)}
        if dispatcher.database_error is not None:
            database = {"ok": False, "engine": "postgresql", "error": dispatcher.database_error}
        local = self._local_readiness()["servers"] if self.clients else {}
        ready = database["ok"] and any(worker["usable"] for worker in workers)
        report: dict[str, Any] = {
            "ready": ready,
            "database": database,
            "workers": workers,
            "servers": local,
        }
        if not ready:
            report["reason"] = (
                f"the database does not answer: {database['error']}"
                if not database["ok"]
                else "no live worker can take jobs (none registered, or their ComfyUI servers "
                "are unreachable)"
            )
        return report

    def _local_readiness(self) -> dict[str, Any]:
        """This process's own ComfyUI servers."""
        servers = {}
        dispatch = self.runner.dispatcher.snapshot()
        for client in self.clients:
            state: dict[str, Any] = {"websocket": client.connected}
            held = dispatch.get(client.base_url, {})
            state["down"] = held.get("down", False)
            if held.get("downSince") is not None:
                state["downSince"] = iso(held["downSince"])
            state["jobs"], state["slots"] = held.get("jobs", 0), held.get("slots", 0)
            if held.get("withheldStyles"):
                state["withheldStyles"] = held["withheldStyles"]
            try:
                stats = client.system_stats(timeout=self.settings.comfyui_connect_timeout)
                state["http"] = True
                state["version"] = (stats.get("system") or {}).get("comfyui_version")
                state["standin"] = self.standin_seen[client.base_url] = runs_standin(stats)
            except ComfyUIError as exc:
                state["http"] = False
                state["error"] = exc.message
                if client.base_url in self.standin_seen:
                    state["standin"] = self.standin_seen[client.base_url]
            if not client.connected and client.last_error:
                state.setdefault("error", client.last_error)
            checked = self.workflow_problems.get(client.base_url)
            if checked is not None:
                state["workflows"] = {
                    name: {"ok": not problems, "problems": problems}
                    for name, problems in checked.items()
                }
            default_ok = not (checked or {}).get(self.settings.default_style)
            state["ready"] = bool(
                state["websocket"] and state["http"] and default_ok and not state["down"]
            )
            servers[client.base_url] = state
        ready = any(state["ready"] for state in servers.values())
        # True when every server known (answering now, or last time it answered) is the stand-in:
        # its images are not real avatars. A server never heard from tells nothing.
        known = [state["standin"] for state in servers.values() if "standin" in state]
        standin = bool(known) and all(known)
        report: dict[str, Any] = {"ready": ready, "standin": standin, "servers": servers}
        if not ready:
            reachable = any(state["websocket"] and state["http"] for state in servers.values())
            report["reason"] = (
                f"no reachable ComfyUI server can run the default style "
                f"{self.settings.default_style!r}"
                if reachable
                else "no ComfyUI server is reachable"
            )
        return report


class _Releasing:
    """A WSGI body that calls ``release`` once when the server closes it (even unstarted)."""

    def __init__(self, stream: Iterator[str], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[str]:
        return self._stream

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def _stable_client_id(instance_path: Path) -> str:
    """The websocket clientId of this installation, kept across restarts.

    ComfyUI sends a prompt's events to the clientId it was queued with, so after a restart the
    service must come back under the same id to follow the jobs it takes up.
    """
    path = instance_path / "comfyui_client_id"
    try:
        client_id = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        client_id = ""
    if not client_id:
        client_id = f"avatar-service-{uuid.uuid4().hex}"
        write_atomic(path, client_id.encode())
    return client_id


def _resolve(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path
