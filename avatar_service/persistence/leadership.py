"""A role held by one process at a time: the service's queue monitor, for instance.

On SQLite one process uses the database, so it always holds every role; on PostgreSQL a role
is a session advisory lock held on a connection of its own, so that a process that dies (or
loses the database) lets another take it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .postgres import PostgresDatabase

logger = logging.getLogger(__name__)

# A process without a role tries to take it at most this often (seconds).
LEADERSHIP_RETRY = 1.0


class Leadership:
    """A role held by one process at a time; ``held()`` tries to take it when free."""

    def held(self) -> bool:
        """Whether this process holds the role (taking it now if nobody does)."""
        return True

    def release(self) -> None:
        """Give the role up."""


class AdvisoryLeadership(Leadership):
    """A PostgreSQL session advisory lock keyed by the schema and the role's name."""

    def __init__(self, database: PostgresDatabase, name: str) -> None:
        self._database = database
        self._name = name
        self._connection: Any = None
        self._lock = threading.Lock()
        self._next_try = 0.0

    def held(self) -> bool:
        with self._lock:
            if self._connection is None and time.monotonic() < self._next_try:
                return False
            self._next_try = time.monotonic() + LEADERSHIP_RETRY
            try:
                if self._connection is not None:
                    self._connection.execute("SELECT 1")  # still ours while the session lives
                    return True
                connection = self._database.connect(autocommit=True)
                (taken,) = connection.execute(
                    "SELECT pg_try_advisory_lock(hashtext(current_schema() || %s))",
                    (f":{self._name}",),
                ).fetchone()
                if taken:
                    self._connection = connection
                    logger.info("this process now holds the %s role", self._name)
                    return True
                connection.close()
                return False
            except Exception as exc:  # the database is gone: the role is lost with the session
                logger.warning("lost the %s role: %s", self._name, exc)
                self._drop()
                return False

    def release(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            # closing a broken connection may fail; it is gone either way
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
