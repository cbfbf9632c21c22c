"""Result collection: fetch a finished prompt's images with /view and save them as avatars."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol, TypeVar

from PIL import Image, UnidentifiedImageError

from ..comfyui import ComfyUIClient, ComfyUIError, HistoryEntry
from ..comfyui.workflows import Workflow
from . import outcomes
from .job import Avatar, Job
from .photo_source import AvatarSink

logger = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
T = TypeVar("T")


class Patiently(Protocol):
    """Runs a call to ComfyUI, retrying it as the caller sees fit (``PromptRun.patiently``)."""

    def __call__(self, call: Callable[..., T], *, finished: bool = ...) -> T:
        """``call(timeout=...)``, perhaps tried again (more patiently once the prompt has
        ``finished``), each try bounded by what is left of the job's deadline."""
        ...


def collect_avatars(
    job: Job,
    client: ComfyUIClient,
    workflow: Workflow,
    entry: HistoryEntry,
    avatars: AvatarSink,
    *,
    patiently: Patiently,
) -> list[Avatar]:
    """Fetch every output image, check it decodes, save it atomically; the avatar records.

    ``patiently(call)`` retries a call while ComfyUI refuses connections, up to the job's deadline.
    """
    images = entry.images(workflow.roles.outputs)
    if not images:
        raise outcomes.no_output(workflow.roles.outputs, entry.outputs)
    saved: list[Avatar] = []
    for index, image in enumerate(images):
        try:
            data, _ = patiently(partial(client.view, image), finished=True)
        except ComfyUIError as exc:
            logger.error("job %s: fetching %s failed: %s", job.id, image.filename, exc)
            raise outcomes.fetch_failed(job.prompt_id, image, exc.message) from exc
        try:
            with Image.open(io.BytesIO(data)) as decoded:
                width, height = decoded.size
                extension = _IMAGE_EXTENSIONS.get(decoded.format or "", "png")
        except (UnidentifiedImageError, OSError) as exc:
            logger.error("job %s: ComfyUI sent an unreadable image: %s", job.id, exc)
            raise outcomes.fetch_failed(
                job.prompt_id, image, "the image cannot be decoded"
            ) from exc
        try:
            # A storage outage (StorageUnavailable, after the backend's bounded retries) ends
            # the job failed with its own code, storage_unavailable; nothing half-written stays.
            file_name = avatars.save(job.id, index, data, extension)
        except OSError as exc:
            logger.error("job %s: saving avatar failed: %s", job.id, exc)
            raise outcomes.save_failed(job.id) from exc
        saved.append(Avatar(file_name, width, height))
    return saved
