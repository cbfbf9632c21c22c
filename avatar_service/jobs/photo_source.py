"""What a run needs of where photos and avatars live: the photo ComfyUI gets, a place for avatars.

The service's own stores fit (``photos.store.PhotoStore``, ``storage.avatars.AvatarStore``); so do
a worker agent's, which fetch the photo from the service and send the avatars back to it.
``photo_on_server`` sends a job's photo to its server unless the server has it already.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..comfyui import ComfyUIClient
from ..photos.geometry import Crop

logger = logging.getLogger(__name__)

# Where photos go in ComfyUI's input folder.
UPLOAD_SUBFOLDER = "avatar_service"


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


def photo_on_server(
    client: ComfyUIClient,
    photos: PhotoSource,
    image_name: str,
    crop: Crop | None,
    *,
    resend: bool = False,
) -> tuple[str, bool]:
    """The LoadImage value of a job's photo on the client's server, and whether the server had
    it already (sent for an earlier job since it connected): sent now if not, or if ``resend``
    (the server lost it). What is sent is the stored photo cut to the crop, if any."""
    key = (image_name, crop)
    if resend:
        logger.warning(
            "%s no longer has photo %s sent before; sending it again", client.base_url, image_name
        )
    else:
        known = client.sent_photos.get(key)
        if known is not None:
            return known, True
    data = photos.prepared(image_name, crop)
    name = client.upload_image(data, image_name, subfolder=UPLOAD_SUBFOLDER)
    client.sent_photos.add(key, name)
    return name, False
