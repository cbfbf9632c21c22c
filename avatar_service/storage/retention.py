"""Deletes photos and avatars older than RETENTION_HOURS, and remembers which avatars it deleted.

Off by default (RETENTION_HOURS=0 keeps everything). A sweep runs every RETENTION_INTERVAL
seconds in a background thread; a file that a job still in flight needs is never deleted.
Only what the service wrote is deleted: photos under the names the photo store makes, and the
avatars that a job's record lists; any other file in the folders is left alone.
Deleted avatars are recorded so that ``GET /avatars/<name>`` answers 410 and the job record
says when they were deleted. Files are listed and deleted through the storage backend (local
folders or a bucket): with several processes on one bucket each may sweep; a file two of them
delete is deleted once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator

from ..persistence.database import Database
from .avatars import AVATAR_NAME_PATTERN
from .base import Area, Storage, StoredFile

logger = logging.getLogger(__name__)


class Retention:
    """Sweeps old files out of the photos and avatars of the storage."""

    def __init__(
        self,
        *,
        database: Database,
        files: Storage,
        max_age_hours: float,
        interval: float,
        in_use: Callable[[], Iterable[str]],  # photo names and job ids of jobs in flight
        # Whether a name is one the photo store makes; a job's avatar file names, per its record.
        # Without them no file counts as the service's own, so none is deleted.
        is_photo: Callable[[str], bool] = lambda name: False,
        avatars_of: Callable[[str], Collection[str]] = lambda job_id: (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = database
        self.files = files
        self.max_age = max_age_hours * 3600
        self.interval = interval
        self._in_use = in_use
        self._is_photo = is_photo
        self._avatars_of = avatars_of
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether files are deleted at all."""
        return self.max_age > 0

    def start(self) -> None:
        """Start sweeping in the background (when enabled)."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sweeping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # a failed sweep must not end the thread; the next one retries
                logger.exception("retention sweep failed")
            self._stop.wait(self.interval)

    def sweep(self) -> tuple[int, int]:
        """Delete every photo and avatar older than the age; return how many of each."""
        if not self.enabled:
            return 0, 0
        cutoff = self._clock() - self.max_age
        keep = set(self._in_use())
        photos = 0
        photo_files = self._older(self.files.listing("photos"), cutoff, keep)
        for stored in self._deleted("photos", (f for f in photo_files if self._is_photo(f.name))):
            # The record kept beside a photo (its faces, ``<imageName>.json``) goes with it.
            self.files.delete("photos", f"{stored.name}.json")
            photos += 1
        avatars = 0
        avatar_files = self._older(self.files.listing("avatars"), cutoff, keep)
        for stored in self._deleted("avatars", self._listed(avatar_files)):
            with self._db.transaction() as db:
                db.execute(
                    "INSERT INTO deleted_avatars (file_name, job_id, deleted_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (file_name) DO UPDATE SET "
                    "job_id = excluded.job_id, deleted_at = excluded.deleted_at",
                    (stored.name, stored.name.split("_", 1)[0], self._clock()),
                )
            avatars += 1
        if photos or avatars:
            logger.info(
                "retention: deleted %d photo(s) and %d avatar(s) older than %.4g h",
                photos,
                avatars,
                self.max_age / 3600,
            )
        return photos, avatars

    @staticmethod
    def _older(files: Iterable[StoredFile], cutoff: float, keep: set[str]) -> Iterator[StoredFile]:
        """The files older than the cutoff that no job in flight needs."""
        for stored in files:
            owner = stored.name.split("_", 1)[0]  # an avatar's job id
            if keep & {stored.name, owner}:
                continue
            if stored.modified < cutoff:
                yield stored

    def _listed(self, files: Iterable[StoredFile]) -> Iterator[StoredFile]:
        """The files that a job's record lists as its avatars (each job read once a sweep)."""
        listed: dict[str, Collection[str]] = {}
        for stored in files:
            if not AVATAR_NAME_PATTERN.fullmatch(stored.name):
                continue
            job_id = stored.name.split("_", 1)[0]
            if job_id not in listed:
                listed[job_id] = self._avatars_of(job_id)
            if stored.name in listed[job_id]:
                yield stored

    def _deleted(self, area: Area, files: Iterable[StoredFile]) -> Iterator[StoredFile]:
        """Delete each file; yield those this call deleted."""
        for stored in files:
            if self.files.delete(area, stored.name):
                yield stored

    def deleted_at(self, file_name: str) -> float | None:
        """When an avatar was deleted by retention (None: it was not)."""
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT deleted_at FROM deleted_avatars WHERE file_name = ?", (file_name,)
            ).fetchone()
        return row[0] if row else None

    def deleted_of_job(self, job_id: str) -> dict[str, float]:
        """The avatars of a job deleted by retention, with when."""
        with self._db.transaction() as db:
            rows = db.execute(
                "SELECT file_name, deleted_at FROM deleted_avatars WHERE job_id = ?", (job_id,)
            ).fetchall()
        return dict(rows)
