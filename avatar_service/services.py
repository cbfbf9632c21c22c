"""The one registry of the service: every part built once, from the settings, by create_app.

``build_services`` makes the parts in dependency order (workflows, the storage of photos and
avatars, photos, the database, the
ComfyUI clients, the deliveries, the job engine under its coordination strategy, what the HTTP
face adds) and ``Services`` holds them, starts their background work once, and closes them.
The routes reach the parts through ``Services.avatars`` (``http.avatars``), one method per
request.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from .comfyui import ComfyUIClient
from .comfyui.workflows import Workflow, WorkflowError, describe, load_workflows
from .config import ConfigError, Settings
from .delivery.forwarding import AvatarForwarder
from .delivery.job_end import forwarding_hook, webhook_hook
from .delivery.webhooks import WebhookDispatcher, WebhookError, is_allowed_callback
from .http.access import Access, read_keys_file, token_secret
from .http.avatars import Avatars
from .http.idempotency import IdempotencyKeys
from .http.metrics import Metrics
from .http.schemas import GenerateSchema
from .jobs import Job, JobEngine, JobRecords
from .jobs.agents import AgentDesk
from .jobs.coordination import Solo
from .jobs.dispatcher import Dispatcher
from .jobs.events import JobEvents
from .jobs.fleet import Fleet
from .jobs.ledger import JobLedger
from .jobs.prompt import RunSettings
from .jobs.registry import WorkerRegistry
from .persistence.database import Database, open_database
from .persistence.migrations import migrate
from .photos.faces import FaceDetector
from .photos.framing import Framing
from .photos.store import PhotoStore
from .readiness import Readiness
from .storage.atomic import write_atomic
from .storage.avatars import AvatarStore
from .storage.base import Storage
from .storage.choice import open_storage
from .storage.retention import Retention

logger = logging.getLogger(__name__)
# Threads kept for short requests (health, uploads, cancels) however large THREADS is.
RESERVED_THREADS_MAX = 16
# The longest pause between two attempts to forward an avatar to UPLOAD_URL.
UPLOAD_BACKOFF_MAX = 10.0
# Builds a ComfyUI client for a server URL (tests may give one of their own).
ClientFactory = Callable[..., ComfyUIClient]


@dataclass
class Services:
    """Every part of the service; built by ``build_services``, closed at shutdown."""

    settings: Settings
    workflows: dict[str, Workflow]
    files: Storage
    photos: PhotoStore
    framing: Framing
    avatar_files: AvatarStore
    database: Database
    records: JobRecords
    events: JobEvents
    clients: list[ComfyUIClient]
    engine: JobEngine
    readiness: Readiness
    access: Access
    idempotency: IdempotencyKeys
    retention: Retention
    metrics: Metrics
    generate_schema: GenerateSchema
    forwarder: AvatarForwarder | None = None
    webhooks: WebhookDispatcher | None = None
    # Worker agents' side of the engine, when WORKER_TOKENS admits agents.
    agents: AgentDesk | None = None
    # Requests that hold a server thread for long (sync waits, event streams) may use only some
    # of THREADS, so /healthz, /readyz, cancel and uploads always find a free thread.
    long_requests: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(1), repr=False
    )
    _started: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)
    _start_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _lock_file: TextIO | None = field(default=None, repr=False)

    @property
    def avatars(self) -> Avatars:
        """The use cases the routes call."""
        return Avatars(self)

    def start(self) -> None:
        """Connect to ComfyUI, start deliveries and retention, take up jobs in flight (once)."""
        with self._start_lock:
            if self._started or self._closed:
                return
            self._hold_instance_lock()
            self._started = True
        for client in self.clients:
            client.on_connect = self._connected
            client.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.forwarder is not None:
            self.forwarder.start()
        self.retention.start()
        resumed = self.engine.start()
        if resumed:
            logger.info("resumed %d job(s) left in flight by the previous run", resumed)

    def _connected(self, client: ComfyUIClient) -> None:
        """A ComfyUI server answers: waiting submits look again; check the styles against it."""
        self.engine.dispatcher.notify()
        self.readiness.check_workflows(client)

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

    def begin_shutdown(self) -> None:
        """First step of stopping: waiting requests answer now (202 + Location), streams end,
        new jobs are refused; jobs in flight go on until close()."""
        self.events.close()

    def close(self) -> None:
        """Stop background threads and close connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.retention.stop()
        self.engine.stop(timeout=5)
        for client in self.clients:
            client.close()
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.records.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the instance lock

    def describe_styles(self) -> list[dict[str, Any]]:
        """GET /styles: each workflow with its parameters (in a fleet, also the live servers
        that can run it now: ``liveServers``)."""
        styles = [describe(workflow) for _, workflow in sorted(self.workflows.items())]
        self.engine.dispatcher.coordination.describe_styles(styles)
        return styles


def build_services(
    settings: Settings,
    *,
    root: Path,
    instance_path: Path,
    client_factory: ClientFactory = ComfyUIClient,
) -> Services:
    """Create the folders, load the workflows, open the database, build every part once."""
    workflows = _load_workflows(settings, root)
    instance_path.mkdir(parents=True, exist_ok=True)
    files = open_storage(settings, root)
    photos, framing = _photo_parts(settings, files)
    avatar_files = AvatarStore(files, strip_metadata=settings.strip_avatar_metadata)
    try:
        database = open_database(
            settings.database_url,
            sqlite_path=instance_path / "avatar_service.sqlite3",
            pool_size=settings.database_pool_size,
        )
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL: {exc}") from exc
    migrate(database)  # every table, before any part of the service reads one
    events = JobEvents()
    clients = _clients(settings, instance_path, client_factory)
    forwarder, webhooks = _deliveries(settings, database, avatar_files)
    engine = _engine(
        settings,
        database=database,
        events=events,
        clients=clients,
        workflows=workflows,
        photos=photos,
        avatar_files=avatar_files,
        deliveries=(forwarder, webhooks),
    )
    dispatcher = engine.dispatcher
    reserved = max(2, min(settings.threads // 4, RESERVED_THREADS_MAX))
    return Services(
        long_requests=threading.BoundedSemaphore(settings.threads - reserved),
        settings=settings,
        workflows=workflows,
        files=files,
        photos=photos,
        framing=framing,
        avatar_files=avatar_files,
        database=database,
        records=engine.records,
        events=events,
        clients=clients,
        engine=engine,
        readiness=Readiness(
            settings=settings, workflows=workflows, clients=clients, dispatcher=dispatcher
        ),
        forwarder=forwarder,
        webhooks=webhooks,
        agents=_agents(settings, engine, database=database, photos=photos, avatars=avatar_files),
        **_http_parts(
            settings,
            database=database,
            instance_path=instance_path,
            engine=engine,
            framing=framing,
            avatar_files=avatar_files,
            clients=clients,
            deliveries=(forwarder, webhooks),
        ),
    )


def _engine(
    settings: Settings,
    *,
    database: Database,
    events: JobEvents,
    clients: list[ComfyUIClient],
    workflows: dict[str, Workflow],
    photos: PhotoStore,
    avatar_files: AvatarStore,
    deliveries: tuple[AvatarForwarder | None, WebhookDispatcher | None],
) -> JobEngine:
    """The job engine under its coordination strategy, chosen here once: a fleet when the
    database is shared (PostgreSQL), else one process."""
    records = JobRecords(database)
    forwarder, webhooks = deliveries
    coordination: Solo = (
        Fleet(records, database=database, events=events, lease=settings.worker_lease)
        if database.dialect.shared
        else Solo(records)
    )
    ledger = JobLedger(records=records, events=events, coordination=coordination)
    if forwarder is not None:
        ledger.on_end.append(forwarding_hook(forwarder))
    if webhooks is not None:
        ledger.on_end.append(webhook_hook(webhooks, settings.webhook_url))
    dispatcher = Dispatcher(
        records=records,
        ledger=ledger,
        clients=clients,
        workflows=workflows,
        photos=photos,
        avatars=avatar_files,
        settings=RunSettings(
            job_timeout=settings.job_timeout,
            poll_interval=settings.comfyui_poll_interval,
            stall_timeout=settings.comfyui_stall_timeout,
        ),
        coordination=coordination,
        slots=settings.comfyui_slots,
        down_grace=settings.comfyui_down_grace,
        lease=settings.worker_lease,
    )
    return JobEngine(
        records=records,
        events=events,
        ledger=ledger,
        dispatcher=dispatcher,
        photos_exist=photos.require,
        job_timeout=settings.job_timeout,
        public_base_url=settings.public_base_url,
        max_active_jobs=settings.max_active_jobs,
        max_queued_jobs=settings.max_queued_jobs,
    )


def _agents(
    settings: Settings,
    engine: JobEngine,
    *,
    database: Database,
    photos: PhotoStore,
    avatars: AvatarStore,
) -> AgentDesk | None:
    """The worker agents' desk, when WORKER_TOKENS admits agents."""
    if not settings.worker_tokens:
        return None
    return AgentDesk(
        records=engine.records,
        ledger=engine.ledger,
        registry=WorkerRegistry(database),
        dispatcher=engine.dispatcher,
        photos=photos,
        avatars=avatars,
        lease=settings.worker_lease,
    )


def _load_workflows(settings: Settings, root: Path) -> dict[str, Workflow]:
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
    return workflows


def _photo_parts(settings: Settings, files: Storage) -> tuple[PhotoStore, Framing]:
    photos = PhotoStore(
        files,
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
    return photos, framing


def _clients(
    settings: Settings, instance_path: Path, factory: ClientFactory
) -> list[ComfyUIClient]:
    """One client per ComfyUI server this process drives (none for an API-only replica)."""
    timeout = httpx.Timeout(settings.comfyui_read_timeout, connect=settings.comfyui_connect_timeout)
    client_id = _stable_client_id(instance_path)
    return [
        factory(
            url,
            timeout=timeout,
            reconnect_max=settings.comfyui_reconnect_max,
            client_id=client_id,
        )
        for url in (settings.comfyui_url if settings.local_workers else ())
    ]


def _deliveries(
    settings: Settings, database: Database, avatar_files: AvatarStore
) -> tuple[AvatarForwarder | None, WebhookDispatcher | None]:
    """The outboxes: forwarding to UPLOAD_URL and webhooks, when configured."""
    connect = settings.comfyui_connect_timeout
    forwarder = None
    if settings.upload_url:
        forwarder = AvatarForwarder(
            database=database,
            url=settings.upload_url,
            field_name=settings.upload_field_name,
            avatars=avatar_files,
            timeout=httpx.Timeout(settings.upload_timeout, connect=connect),
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
                timeout=httpx.Timeout(settings.webhook_timeout, connect=connect),
                max_attempts=settings.webhook_max_attempts,
                backoff=settings.webhook_backoff,
                max_age=settings.delivery_deadline,
            )
        except WebhookError as exc:
            raise ConfigError(f"WEBHOOK_SECRET: {exc}") from exc
    return forwarder, webhooks


def _http_parts(
    settings: Settings,
    *,
    database: Database,
    instance_path: Path,
    engine: JobEngine,
    framing: Framing,
    avatar_files: AvatarStore,
    clients: list[ComfyUIClient],
    deliveries: tuple[AvatarForwarder | None, WebhookDispatcher | None],
) -> dict[str, Any]:
    """What the HTTP face adds: keys and tokens, idempotency, retention, metrics, the schema."""
    keys, admins = list(settings.api_keys), list(settings.admin_api_keys)
    if settings.api_keys_file:
        from_file, admins_from_file = read_keys_file(Path(settings.api_keys_file))
        keys += from_file
        admins += admins_from_file
    records = engine.records
    forwarder, webhooks = deliveries
    webhook_db = database if webhooks is not None else None
    metrics = Metrics(
        clients=clients,
        unfinished=records.unfinished,
        webhook_db=lambda: webhook_db,
    )
    engine.events.add_listener(metrics.observe_event)
    if forwarder is not None:
        forwarder.on_settled.append(metrics.observe_forwarding)
    return {
        "access": Access(
            keys=keys,
            admin_keys=admins,
            secret=token_secret(settings.token_secret, instance_path),
            token_ttl=settings.token_ttl,
            database=database,
        ),
        "idempotency": IdempotencyKeys(database, ttl=settings.idempotency_ttl),
        "retention": Retention(
            database=database,
            files=avatar_files.files,
            max_age_hours=settings.retention_hours,
            interval=settings.retention_interval,
            in_use=lambda: [
                name for job in records.unfinished() for name in (job.id, job.image_name)
            ],
            is_photo=framing.photos.made_name,
            avatars_of=lambda job_id: _avatar_names(records.get(job_id)),
        ),
        "metrics": metrics,
        "generate_schema": GenerateSchema(
            workflows=engine.dispatcher.workflows,
            default_style=settings.default_style,
            callback_allowed=lambda url: is_allowed_callback(url, settings.webhook_allowed_urls),
            callback_prefixes=settings.webhook_allowed_urls,
            photo_size=framing.photo_size,
            callback_message=(
                "must start with one of the URLs allowed by WEBHOOK_ALLOWED_URLS"
                if settings.webhook_allowed_urls
                else "not accepted: WEBHOOK_ALLOWED_URLS allows no callback URL"
            ),
        ),
    }


def _avatar_names(job: Job | None) -> frozenset[str]:
    """The avatar file names a job's record lists (none for an unknown job)."""
    return frozenset(avatar.file_name for avatar in job.avatars) if job else frozenset()


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
