"""Photos and avatars in local folders (``UPLOAD_DIR``, ``OUTPUT_DIR``): the default backend."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from .atomic import open_atomic, write_atomic
from .base import Area, Download, StoredFile, check_name


class LocalFolders:
    """One folder per area; writes go through a temporary file and ``os.replace``."""

    kind = "local"

    def __init__(self, *, photos: Path, avatars: Path) -> None:
        self.directories: dict[Area, Path] = {"photos": photos, "avatars": avatars}

    def path(self, area: Area, name: str) -> Path:
        """The file of a stored name."""
        return self.directories[area] / check_name(name)

    def publish(self, area: Area, name: str) -> AbstractContextManager[BinaryIO]:
        """A temporary file beside the final one, renamed over it when the block ends."""
        return open_atomic(self.path(area, name))

    def write(self, area: Area, name: str, data: bytes) -> None:
        """Write the file atomically."""
        write_atomic(self.path(area, name), data)

    def read(self, area: Area, name: str) -> bytes:
        """The file's bytes."""
        return self.path(area, name).read_bytes()

    @contextmanager
    def local_copy(self, area: Area, name: str) -> Iterator[Path]:
        """The file itself (no copy is needed)."""
        path = self.path(area, name)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        yield path

    def exists(self, area: Area, name: str) -> bool:
        """Whether the file exists."""
        return self.path(area, name).is_file()

    def open(self, area: Area, name: str) -> Download:
        """The file's path (sent as a file, with ranges and conditional requests)."""
        path = self.path(area, name)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return Download(name=name, path=path)

    def link(self, area: Area, name: str, *, expires: float) -> str | None:
        """Local files have no URL of their own: the service streams them."""
        return None

    def listing(self, area: Area) -> Iterator[StoredFile]:
        """The regular files of the folder, hidden ones (temporary writes) aside."""
        directory = self.directories[area]
        with contextlib.suppress(FileNotFoundError):
            for path in directory.iterdir():
                if path.name.startswith("."):
                    continue
                try:
                    status = path.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(status.st_mode):
                    yield StoredFile(path.name, status.st_mtime)

    def delete(self, area: Area, name: str) -> bool:
        """Remove the file; False when it was already gone."""
        try:
            self.path(area, name).unlink()
        except FileNotFoundError:
            return False
        return True

    def describe(self) -> str:
        """The two folders."""
        return f"local folders {self.directories['photos']} and {self.directories['avatars']}"
