"""Files on disk: atomic writes, and the folder of generated avatars."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import NotFound

# Avatar file names are made by the service: "<jobId>_<index>.<ext>".
AVATAR_NAME_PATTERN = re.compile(r"^[a-f0-9]{32}_\d{1,3}\.(png|jpg|jpeg|webp)$")


def read_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back: done once, at import, before the
    # service's threads create files (the umask is the whole process's).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The mode of the files written here: what open() would give under the umask the process was
# started with (mkstemp's temporary files are 0600 whatever the umask).
FILE_MODE = 0o666 & ~read_umask()


def write_atomic(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write a file so that readers see either nothing or all of it, even after a crash."""
    with open_atomic(path, mode=mode) as handle:
        handle.write(data)


@contextmanager
def open_atomic(path: Path, *, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A file to write in pieces; it appears at ``path`` whole when the block ends without error.

    The handle can also read back what was written (before it is published). The file gets
    ``mode`` (by default the umask's, as for any file the process creates).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class AvatarStore:
    """The folder of generated avatars (``generated_avatar/`` by default).

    ComfyUI writes the whole prompt (the graph, with the stored photo's name, the checkpoint
    and the prompt texts) into the text chunks of every PNG it saves; with ``strip_metadata``
    (the default) those chunks are dropped before the avatar is stored, served or forwarded.
    The pixels are not touched.
    """

    def __init__(self, directory: Path, *, strip_metadata: bool = True) -> None:
        self.directory = directory
        self.strip_metadata = strip_metadata

    def save(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        """Store one avatar of a job atomically and return its file name."""
        name = f"{job_id}_{index}.{extension}"
        if self.strip_metadata:
            data = without_png_text(data)
        write_atomic(self.directory / name, data)
        return name

    def path_of(self, file_name: str) -> Path:
        """The file of a generated avatar; NotFound for any name this service did not make."""
        if AVATAR_NAME_PATTERN.fullmatch(file_name):
            path = self.directory / file_name
            if path.is_file():
                return path
        raise NotFound("no such avatar", code="avatar_not_found", details={"fileName": file_name})


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
