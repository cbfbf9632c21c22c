"""The one interface to where photos, face records and avatars live: ``Storage``.

A backend is chosen once, in the factory, from ``STORAGE_URL``: local folders (``LocalFolders``,
``UPLOAD_DIR`` and ``OUTPUT_DIR``) or an S3-compatible bucket (``S3Objects``). Files live in two
areas, ``photos`` (stored photos and their face records) and ``avatars``, under names the service
made. Every backend answers the same way::

    FileNotFoundError                 no such file or object
    errors.StorageUnavailable (503)   the store does not answer, or fails (never half a file)

Writes are atomic: a file or object appears whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

Area = Literal["photos", "avatars"]
AREAS: tuple[Area, ...] = ("photos", "avatars")

_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "json": "application/json",
}


def content_type_of(file_name: str) -> str:
    """The content type of a stored file, from the extension the service gave it."""
    return _CONTENT_TYPES.get(file_name.rsplit(".", 1)[-1].lower(), "image/png")


@dataclass(frozen=True)
class StoredFile:
    """One file of an area, as a listing shows it: its name and when it was last written."""

    name: str
    modified: float  # seconds since the epoch


@dataclass
class Download:
    """A stored file to send: a local ``path``, an open ``body`` to stream (closed by whoever
    sends it), or a short-lived ``link`` to the object itself."""

    name: str
    size: int | None = None
    modified: float | None = None
    etag: str | None = None
    path: Path | None = None
    body: BinaryIO | None = None
    link: str | None = None

    @property
    def content_type(self) -> str:
        """The file's content type."""
        return content_type_of(self.name)


class Storage(Protocol):
    """Where photos and avatars are written, read, listed and deleted (one class per backend)."""

    kind: str  # "local" or "s3"

    def publish(self, area: Area, name: str) -> AbstractContextManager[BinaryIO]:
        """A temporary local file to write (and read back); published whole when the block
        ends without error, never when it raises."""
        ...

    def write(self, area: Area, name: str, data: bytes) -> None:
        """Store small data atomically."""
        ...

    def read(self, area: Area, name: str) -> bytes:
        """The whole content of a (small) file."""
        ...

    def local_copy(self, area: Area, name: str) -> AbstractContextManager[Path]:
        """A local file holding the content, for libraries that want a path (a temporary
        download for an object, removed when the block ends)."""
        ...

    def exists(self, area: Area, name: str) -> bool:
        """Whether the file exists."""
        ...

    def open(self, area: Area, name: str) -> Download:
        """The file to send: its path, or its body opened for streaming."""
        ...

    def link(self, area: Area, name: str, *, expires: float) -> str | None:
        """A URL that reads the file directly for ``expires`` seconds (None: the backend has
        no such URLs, the service streams the file itself)."""
        ...

    def listing(self, area: Area) -> Iterator[StoredFile]:
        """Every file of the area (temporary files left by interrupted writes aside)."""
        ...

    def delete(self, area: Area, name: str) -> bool:
        """Delete a file; whether it was there to delete (always True where the store
        cannot tell)."""
        ...

    def describe(self) -> str:
        """Where the files live, for the log."""
        ...


def check_name(name: str) -> str:
    """A stored file's name: one path segment, never hidden; anything else is a bug."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a stored file name: {name!r}")
    return name
