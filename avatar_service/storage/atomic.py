"""Atomic writes of local files: readers see nothing or the whole file, even after a crash."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
