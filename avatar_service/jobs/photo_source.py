"""What a run needs of where photos and avatars live: the photo ComfyUI gets, a place for avatars.

The service's own stores fit (``photos.store.PhotoStore``, ``storage.avatars.AvatarStore``); so do
a worker agent's, which fetch the photo from the service and send the avatars back to it.
"""

from __future__ import annotations

from typing import Protocol

from ..photos.geometry import Crop


class PhotoSource(Protocol):
    """Gives the bytes ComfyUI should receive for a job's photo."""

    def prepared(self, image_name: str, crop: Crop | None) -> bytes:
        """The stored photo ``image_name`` as ComfyUI should see it: cut to ``crop``, if any."""
        ...


class AvatarSink(Protocol):
    """Takes the images a job made."""

    def save(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        """Keep one avatar of a job (whole or not at all); its file name."""
        ...
