"""The embedded database: one SQLite file (WAL), its connections lent from a small pool."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from .database import SQLITE, Connection, Database, Row

# How long a statement waits for a lock (SQLite).
LOCK_TIMEOUT = 30.0
# SQLite connections kept open between transactions: enough for the usual number of blocks at
# once (more are opened while more run, and closed when they end; opening and closing them on
# every job fragments the heap: the soak benchmark's RSS grew 1.7 MiB per 1,000 jobs with 4).
POOL_IDLE = 16


class SQLiteDatabase(Database):
    """A small pool of connections to one SQLite file (WAL), each block a transaction.

    A connection is lent for one outermost block and returned after it, so the number open
    stays at most the number of blocks running at once (``POOL_IDLE`` kept between them),
    however many threads the service starts over its life. A block nested in another on the
    same thread is a savepoint on the outer block's connection.
    """

    dialect = SQLITE
    path: Path  # always a file here

    def __init__(self, path: Path, *, idle: int = POOL_IDLE) -> None:
        super().__init__()
        self.path = Path(path)
        self.where = str(self.path)
        self._idle_max = idle
        self._idle: list[sqlite3.Connection] = []
        self._lent: set[sqlite3.Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, check_same_thread=False)
        connection.row_factory = _sqlite_row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextmanager
    def _lend(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool for the block, given back after it."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open()
        with self._lock:
            self._lent.add(connection)
        try:
            yield connection
        finally:
            if connection.in_transaction:  # a block that did not end its own transaction
                connection.rollback()
            with self._lock:
                self._lent.discard(connection)
                keep = not self._closed and len(self._idle) < self._idle_max
                if keep:
                    self._idle.append(connection)
            if not keep:
                connection.close()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A pooled connection; committed when the block ends, rolled back on error."""
        with self._lend() as connection, connection:
            yield connection

    def _start_savepoint(self, connection: Any, name: str) -> None:
        if not connection.in_transaction:
            # Python's sqlite3 (legacy transaction control) opens no transaction before a
            # SAVEPOINT: SQLite would make the savepoint a transaction of its own, committed
            # by its RELEASE. IMMEDIATE takes the write lock now, so that the block's reads
            # followed by writes never meet a writer that came in between (SQLITE_BUSY).
            connection.execute("BEGIN IMMEDIATE")
        connection.execute(f"SAVEPOINT {name}")

    def lock_for_migration(self, connection: Connection) -> None:
        """Open the migration's transaction now (Python's sqlite3 opens none before DDL), and
        with the write lock, so the steps and their version bump commit together."""
        if not connection.in_transaction:  # type: ignore[attr-defined]
            connection.execute("BEGIN IMMEDIATE")

    def open_connections(self) -> int:
        """Connections open now (idle in the pool, or lent to a block)."""
        with self._lock:
            return len(self._idle) + len(self._lent)

    def table_exists(self, connection: Connection, name: str) -> bool:
        """Whether a table of this name exists."""
        row = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def columns(self, connection: Connection, table: str) -> set[str]:
        """The column names of a table."""
        return {row[1] for row in connection.execute(f"PRAGMA table_info({table})").fetchall()}

    def close(self) -> None:
        """Close the idle connections; those lent now are closed when their block ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(values, _index_of(tuple(column[0] for column in cursor.description)))


@lru_cache(maxsize=256)
def _index_of(names: tuple[str, ...]) -> dict[str, int]:
    return {name: position for position, name in enumerate(names)}
