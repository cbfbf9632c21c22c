"""Files on disk: atomic writes, and the folder of generated avatars."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import NotFound

# Avatar file names are made by the service: "<jobId>_<index>.<ext>".
AVATAR_NAME_PATTERN = re.compile(r"^[a-f0-9]{32}_\d{1,3}\.(png|jpg|jpeg|webp)$")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it, even after a crash."""
    with open_atomic(path) as handle:
        handle.write(data)


@contextmanager
def open_atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write in pieces; it appears at ``path`` whole when the block ends without error.

    The handle can also read back what was written (before it is published).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class AvatarStore:
    """The folder of generated avatars (``generated_avatar/`` by default)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        """Store one avatar of a job atomically and return its file name."""
        name = f"{job_id}_{index}.{extension}"
        write_atomic(self.directory / name, data)
        return name

    def path_of(self, file_name: str) -> Path:
        """The file of a generated avatar; NotFound for any name this service did not make."""
        if AVATAR_NAME_PATTERN.fullmatch(file_name):
            path = self.directory / file_name
            if path.is_file():
                return path
        raise NotFound("no such avatar", code="avatar_not_found", details={"fileName": file_name})
