"""What the HTTP layer adds around the job engine: keys, idempotency, retention, metrics, schemas.

Built once by create_app next to ``Services`` and kept in ``app.extensions["avatar_api"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..delivery.webhooks import is_allowed_callback
from ..errors import Conflict, UnprocessableContent
from ..jobs import GenerateRequest, Job
from ..persistence.database import Database
from ..services import Services
from ..storage.retention import Retention
from .access import Access, Caller, read_keys_file, token_secret
from .idempotency import IdempotencyKeys, body_hash
from .metrics import Metrics
from .schemas import GenerateSchema

# How long a request with an Idempotency-Key waits for a concurrent one with the same key.
IDEMPOTENCY_WAIT_SECONDS = 5.0


@dataclass
class ApiServices:
    """The HTTP-facing services of one app."""

    settings: Settings
    access: Access
    idempotency: IdempotencyKeys
    retention: Retention
    metrics: Metrics
    generate_schema: GenerateSchema
    database: Database

    @classmethod
    def build(cls, settings: Settings, services: Services, *, instance_path: Path) -> ApiServices:
        """Build each part from the settings, on the service's database (migrated already)."""
        database = services.database
        keys, admins = list(settings.api_keys), list(settings.admin_api_keys)
        if settings.api_keys_file:
            from_file, admins_from_file = read_keys_file(Path(settings.api_keys_file))
            keys += from_file
            admins += admins_from_file
        access = Access(
            keys=keys,
            admin_keys=admins,
            secret=token_secret(settings.token_secret, instance_path),
            token_ttl=settings.token_ttl,
            database=database,
        )
        retention = Retention(
            database=database,
            photo_dir=services.photos.directory,
            avatar_dir=services.avatars.directory,
            max_age_hours=settings.retention_hours,
            interval=settings.retention_interval,
            in_use=lambda: [
                name for job in services.records.unfinished() for name in (job.id, job.image_name)
            ],
        )
        webhook_db = services.database if services.webhooks is not None else None
        metrics = Metrics(
            clients=services.clients,
            unfinished=services.records.unfinished,
            webhook_db=lambda: webhook_db,
        )
        services.events.add_listener(metrics.observe_event)
        if services.forwarder is not None:
            services.forwarder.on_settled.append(metrics.observe_forwarding)
        generate_schema = GenerateSchema(
            workflows=services.workflows,
            default_style=settings.default_style,
            callback_allowed=lambda url: is_allowed_callback(url, settings.webhook_allowed_urls),
            callback_prefixes=settings.webhook_allowed_urls,
            photo_size=services.framing.photo_size,
            callback_message=(
                "must start with one of the URLs allowed by WEBHOOK_ALLOWED_URLS"
                if settings.webhook_allowed_urls
                else "not accepted: WEBHOOK_ALLOWED_URLS allows no callback URL"
            ),
        )
        api = cls(
            settings=settings,
            access=access,
            idempotency=IdempotencyKeys(database, ttl=settings.idempotency_ttl),
            retention=retention,
            metrics=metrics,
            generate_schema=generate_schema,
            database=database,
        )
        services.on_start.append(retention.start)
        services.on_close.append(api.close)
        return api

    def close(self) -> None:
        """Stop the retention thread (the database, shared with the jobs, closes with them)."""
        self.retention.stop()

    def submit(
        self,
        services: Services,
        generate: GenerateRequest,
        *,
        base_url: str,
        caller: Caller | None,
        idempotency_key: str | None,
        body: Any,
    ) -> tuple[Job, bool]:
        """Start a job, or find the one an Idempotency-Key already started; True when new."""
        if idempotency_key is None:
            return self._submit(services, generate, base_url, caller), True
        scope = caller.key_id if caller else "anonymous"
        fingerprint = body_hash(body)
        deadline = time.monotonic() + IDEMPOTENCY_WAIT_SECONDS
        while True:
            found = self.idempotency.reserve(scope, idempotency_key, fingerprint)
            if not found.same_body:
                raise UnprocessableContent(
                    "this Idempotency-Key was already used with a different body; "
                    "use a new key for a new request",
                    code="idempotency_key_reused",
                    details={"idempotencyKey": idempotency_key, "jobId": found.job_id},
                )
            if found.new:
                break
            if found.job_id is not None:
                return services.runner.get(found.job_id), False
            if time.monotonic() > deadline:
                raise Conflict(
                    "a request with this Idempotency-Key is still being made; retry shortly",
                    code="idempotency_key_in_use",
                    details={"idempotencyKey": idempotency_key},
                )
            time.sleep(0.05)
        try:
            job = self._submit(services, generate, base_url, caller)
        except BaseException:
            self.idempotency.release(scope, idempotency_key)
            raise
        self.idempotency.bind(scope, idempotency_key, job.id)
        return job, True

    def _submit(
        self, services: Services, generate: GenerateRequest, base_url: str, caller: Caller | None
    ) -> Job:
        job = services.runner.submit(services.framing.frame(generate), base_url=base_url)
        if caller is not None:
            self.access.claim(job.id, caller)
        return job
