"""The generated avatars: stored (atomically) and read back through the storage backend."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import NotFound
from .atomic import FILE_MODE, open_atomic, read_umask, write_atomic
from .base import Download, Storage
from .local import LocalFolders

__all__ = [
    "AVATAR_NAME_PATTERN",
    "FILE_MODE",
    "AvatarStore",
    "open_atomic",
    "read_umask",
    "without_png_text",
    "write_atomic",
]

# Avatar file names are made by the service: "<jobId>_<index>.<ext>".
AVATAR_NAME_PATTERN = re.compile(r"^[a-f0-9]{32}_\d{1,3}\.(png|jpg|jpeg|webp)$")


class AvatarStore:
    """The avatars of the jobs, in the ``avatars`` area of the storage (by default the folder
    ``generated_avatar/``; a Path is taken as that folder).

    ComfyUI writes the whole prompt (the graph, with the stored photo's name, the checkpoint
    and the prompt texts) into the text chunks of every PNG it saves; with ``strip_metadata``
    (the default) those chunks are dropped before the avatar is stored, served or forwarded.
    The pixels are not touched.
    """

    def __init__(self, files: Storage | Path, *, strip_metadata: bool = True) -> None:
        self.files: Storage = (
            LocalFolders(photos=files, avatars=files) if isinstance(files, Path) else files
        )
        self.strip_metadata = strip_metadata

    def save(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        """Store one avatar of a job atomically and return its file name."""
        name = f"{job_id}_{index}.{extension}"
        if self.strip_metadata:
            data = without_png_text(data)
        self.files.write("avatars", name, data)
        return name

    def exists(self, file_name: str) -> bool:
        """Whether an avatar of this name (one the service makes) is stored."""
        return bool(AVATAR_NAME_PATTERN.fullmatch(file_name)) and self.files.exists(
            "avatars", file_name
        )

    def open(self, file_name: str, *, link_for: float | None = None) -> Download:
        """The avatar to send: its file or stream, or with ``link_for`` (seconds) a link to
        the object where the backend has them; NotFound for any name this service did not
        make or does not have."""
        if AVATAR_NAME_PATTERN.fullmatch(file_name):
            if link_for is not None and self.files.exists("avatars", file_name):
                link = self.files.link("avatars", file_name, expires=link_for)
                if link is not None:
                    return Download(name=file_name, link=link)
            try:
                return self.files.open("avatars", file_name)
            except FileNotFoundError:
                pass
        raise NotFound("no such avatar", code="avatar_not_found", details={"fileName": file_name})

    def read(self, file_name: str) -> bytes:
        """The avatar's bytes (FileNotFoundError when it is not stored)."""
        if not AVATAR_NAME_PATTERN.fullmatch(file_name):
            raise FileNotFoundError(file_name)
        return self.files.read("avatars", file_name)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that carry text (ComfyUI's "prompt" and "workflow" are tEXt chunks).
_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def without_png_text(data: bytes) -> bytes:
    """The PNG without its text chunks, every other chunk byte for byte; other data unchanged.

    Anything that is not a well-formed chunk sequence is returned as it came.
    """
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept = [PNG_SIGNATURE]
    offset = len(PNG_SIGNATURE)
    while offset < len(data):
        if offset + 12 > len(data):
            return data
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            return data
        if kind not in _TEXT_CHUNKS:
            kept.append(data[offset:end])
        offset = end
        if kind == b"IEND":
            break
    return b"".join(kept)
