"""What a job's end enqueues: the forwarding of its avatars and its webhooks.

Both are end-of-job hooks of ``JobLedger``: they run inside the transaction that writes the
job's final record, so their deliveries are committed with it or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .forwarding import AvatarForwarder, content_type_of
from .webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from ..jobs.job import Job

logger = logging.getLogger(__name__)


def forwarding_hook(forwarder: AvatarForwarder) -> Callable[[Job, dict[str, Any]], None]:
    """Queue the forwarding of a succeeded job's avatars to UPLOAD_URL (each read from the
    avatar store, by its file name, when it is sent)."""

    def forward(job: Job, _body: dict[str, Any]) -> None:
        if not job.succeeded:
            return
        for avatar in job.avatars:
            forwarder.enqueue(
                job_id=job.id,
                filename=avatar.file_name,
                content_type=content_type_of(avatar.file_name),
                fields={
                    "jobId": job.id,
                    "seed": str(job.seed),
                    "gender": job.gender,
                    "style": job.style,
                    "width": str(avatar.width),
                    "height": str(avatar.height),
                },
            )

    return forward


def webhook_hook(
    webhooks: WebhookDispatcher, webhook_url: str
) -> Callable[[Job, dict[str, Any]], None]:
    """Queue the webhook deliveries of an ended job: WEBHOOK_URL and its own callbackUrl."""

    def notify(job: Job, body: dict[str, Any]) -> None:
        for url in dict.fromkeys(u for u in (webhook_url, job.callback_url) if u):
            # Each delivery is stored in a savepoint of its own: one that cannot be stored
            # leaves the other in the job's final transaction.
            try:
                webhooks.enqueue(job_id=job.id, url=url, event_type=f"job.{job.status}", data=body)
            except Exception:  # a webhook problem must never change the job's outcome
                logger.exception("job %s: could not queue the webhook to %s", job.id, url)

    return notify
