"""The service's database behind one thin SQL layer: SQLite (embedded default) or PostgreSQL.

Every table of the service (jobs, the queue, the outbox, the worker registry, the small tables
beside them) is reached through ``Database.transaction()``, which yields a connection with
``execute`` / ``executemany`` taking SQL written once with ``?`` placeholders. The SQL is kept to
what both engines speak (``RETURNING``, ``ON CONFLICT``); the few differences live here, in
``Dialect``. ``open_database`` picks the engine from ``DATABASE_URL``: empty means the SQLite
file in the instance folder, ``postgresql://...`` a PostgreSQL shared by every process.

A block opened inside another on the same thread joins the outer block's transaction as a
savepoint: an error inside it undoes only its own writes (and propagates), and the commit
happens once, when the outermost block ends. ``after_commit`` runs code after that commit.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .leadership import Leadership

logger = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (connection refused, lost, or the pool is exhausted)."""


class TransactionLost(RuntimeError):
    """The database rolled back a whole transaction under a nested block: nothing to commit."""


class Cursor(Protocol):
    """What a statement answers: rows and the count of rows changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One connection inside a transaction."""

    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """What differs between the two engines, in the words the SQL of the service needs."""

    name: str
    # Appended to the sub-select of a claim: several processes never take one row twice.
    skip_locked: str

    @property
    def shared(self) -> bool:
        """Whether several processes may use the database at once."""
        return self.name == "postgresql"


SQLITE = Dialect(name="sqlite", skip_locked="")
POSTGRESQL = Dialect(name="postgresql", skip_locked=" FOR UPDATE SKIP LOCKED")


@dataclass
class _Open:
    """The transaction a thread has open: its connection, nested depth, and what runs after."""

    connection: Any
    depth: int = 0
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # The database ended the whole transaction under a nested block (see _undo_savepoint).
    lost: bool = False


class Database:
    """One database of the service; ``transaction()`` commits when the outermost block ends."""

    dialect: Dialect
    # Where it is, for messages (a file path, or a URL without its password).
    where: str
    # The SQLite file (None for PostgreSQL).
    path: Path | None = None

    def __init__(self) -> None:
        self._thread = threading.local()  # .open: the _Open of this thread, or None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection; committed when the outermost block ends, rolled back on error.

        Inside another block of this thread, the block is a savepoint of the outer transaction.
        """
        current: _Open | None = getattr(self._thread, "open", None)
        if current is not None:
            with self._savepoint(current):
                yield current.connection
            return
        with self._begin() as connection:
            current = self._thread.open = _Open(connection)
            try:
                yield connection
                if current.lost:
                    raise TransactionLost(f"{self.dialect.name} at {self.where}")
            finally:
                self._thread.open = None
        for callback in current.after_commit:
            try:
                callback()
            except Exception:  # the transaction is committed: its block has succeeded
                logger.exception("a callback run after a commit failed")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the outermost transaction of this thread commits (never if it
        rolls back); at once when this thread has no transaction open."""
        current: _Open | None = getattr(self._thread, "open", None)
        if current is None:
            callback()
        else:
            current.after_commit.append(callback)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """An outermost transaction: committed when the block ends, rolled back on error."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _start_savepoint(self, connection: Any, name: str) -> None:
        connection.execute(f"SAVEPOINT {name}")

    @contextmanager
    def _savepoint(self, current: _Open) -> Iterator[None]:
        """A nested block: released into the outer transaction, or rolled back alone."""
        current.depth += 1
        name = f"nested_{current.depth}"
        callbacks = len(current.after_commit)
        try:
            self._start_savepoint(current.connection, name)
            try:
                yield
                current.connection.execute(f"RELEASE SAVEPOINT {name}")
            except BaseException:
                del current.after_commit[callbacks:]
                self._undo_savepoint(current, name)
                raise
        finally:
            current.depth -= 1

    def _undo_savepoint(self, current: _Open, name: str) -> None:
        try:
            current.connection.execute(f"ROLLBACK TO SAVEPOINT {name}")
            current.connection.execute(f"RELEASE SAVEPOINT {name}")
        except Exception as exc:
            # SQLite rolls a whole transaction back on some errors (and a lost connection takes
            # it too): the outer block must then fail rather than commit what is left.
            current.lost = True
            logger.warning("%s: the transaction was lost in a nested block: %s", self.where, exc)

    def table_exists(self, connection: Connection, name: str) -> bool:
        """Whether a table of this name exists."""
        raise NotImplementedError

    def columns(self, connection: Connection, table: str) -> set[str]:
        """The column names of a table."""
        raise NotImplementedError

    def lock_for_migration(self, connection: Connection) -> None:
        """Hold, until the transaction ends, the lock that serialises migrations."""

    def leadership(self, name: str) -> Leadership:
        """A role held by one process at a time (always this one on SQLite)."""
        return Leadership()

    def open_connections(self) -> int:
        """Connections open now (pooled, idle or lent)."""
        raise NotImplementedError

    def ping(self) -> None:
        """Run one trivial statement; DatabaseUnavailable when the database does not answer."""
        try:
            with self.transaction() as db:
                db.execute("SELECT 1").fetchone()
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(f"{self.dialect.name} at {self.where}: {exc}") from exc

    def close(self) -> None:
        """Close every connection."""


class Row(tuple):
    """A row read by index or column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


_DDL_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bBLOB\b"), "BYTEA"))


def postgres_ddl(script: str) -> str:
    """DDL written in SQLite's words, in PostgreSQL's (REAL is 8 bytes there, BLOB is BYTEA)."""
    for pattern, replacement in _DDL_TYPES:
        script = pattern.sub(replacement, script)
    return script


def _without_password(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def open_database(url: str, *, sqlite_path: Path, pool_size: int = 10) -> Database:
    """The database ``DATABASE_URL`` names: empty for the SQLite file at ``sqlite_path``."""
    from .postgres import PostgresDatabase
    from .sqlite import SQLiteDatabase

    if not url:
        return SQLiteDatabase(sqlite_path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    raise ValueError(f"not a postgresql:// or sqlite:/// URL: {_without_password(url)!r}")


def as_database(target: Database | Path | str) -> Database:
    """A Database for a Database, or for the path of a SQLite file."""
    from .sqlite import SQLiteDatabase

    if isinstance(target, Database):
        return target
    return SQLiteDatabase(Path(target))
