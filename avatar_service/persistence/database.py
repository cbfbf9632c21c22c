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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from .leadership import AdvisoryLeadership, Leadership

logger = logging.getLogger(__name__)

# How long a statement waits for a lock (SQLite).
LOCK_TIMEOUT = 30.0
# SQLite connections kept open between transactions: enough for the usual number of blocks at
# once (more are opened while more run, and closed when they end; opening and closing them on
# every job fragments the heap: the soak benchmark's RSS grew 1.7 MiB per 1,000 jobs with 4).
POOL_IDLE = 16
# How long a connection to PostgreSQL may take to open, and a transaction may wait for one from
# the pool (when the database is gone, callers learn it after this, not later).
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 10.0
# A transaction asks the pool for a connection in steps of this long: a pool that could grow
# but gives none in a step, or that lost connections meanwhile, means the database is gone, and
# the caller learns it now (503) rather than after POOL_TIMEOUT; a pool that is only busy (all
# its connections lent) is waited for up to POOL_TIMEOUT.
POOL_STEP = 0.5
# How long the pool keeps retrying a failed connection (with its backoff) before it gives up;
# the next transaction then tries again at once: kept short, so the pool is back within a
# couple of seconds of the database, however long the outage was.
RECONNECT_WINDOW = 2.0


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


class PostgresDatabase(Database):
    """A pool of connections to PostgreSQL (psycopg 3), each block a transaction."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        from psycopg_pool import ConnectionPool

        super().__init__()
        self.url = url
        self.where = _without_password(url)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": _row_factory, "connect_timeout": CONNECT_TIMEOUT},
            check=self._check,
            timeout=POOL_TIMEOUT,
            reconnect_timeout=RECONNECT_WINDOW,
            open=False,
            name="avatar-service",
        )
        # When a pooled connection was last found broken, or the pool gave none (None: fine).
        self._down_since: float | None = None
        self._pool.open(wait=False)

    def _check(self, connection: Any) -> None:
        """The pool's check of a connection before lending it; a broken one marks the
        database as gone until a transaction succeeds again."""
        from psycopg_pool import ConnectionPool

        try:
            ConnectionPool.check_connection(connection)
        except Exception:
            self._down_since = self._down_since or time.monotonic()
            raise

    def _getconn(self) -> Any:
        """A connection from the pool, or DatabaseUnavailable: at once while the database is
        known to be gone, after a step when the pool cannot grow, after POOL_TIMEOUT when it
        is only busy."""
        from psycopg_pool import PoolTimeout

        deadline = time.monotonic() + POOL_TIMEOUT
        while True:
            lost = self._pool.get_stats().get("connections_errors", 0)
            try:
                return self._pool.getconn(timeout=POOL_STEP)
            except PoolTimeout as exc:
                stats = self._pool.get_stats()
                could_grow = stats.get("pool_size", 0) < self._pool.max_size
                failing = stats.get("connections_errors", 0) > lost
                gone = self._down_since is not None or could_grow or failing
                if gone or time.monotonic() >= deadline:
                    self._down_since = self._down_since or time.monotonic()
                    raise DatabaseUnavailable(
                        f"postgresql at {self.where}: no connection ({exc})"
                    ) from exc

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A pooled connection; committed when the block ends, rolled back on error."""
        import psycopg

        connection = self._getconn()
        try:
            with connection:
                yield _PostgresConnection(connection)
        except psycopg.OperationalError as exc:
            self._down_since = self._down_since or time.monotonic()
            raise DatabaseUnavailable(f"postgresql at {self.where}: {exc}") from exc
        finally:
            self._pool.putconn(connection)
        self._down_since = None

    def table_exists(self, connection: Connection, name: str) -> bool:
        """Whether a table of this name exists in the connection's search path."""
        row = connection.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])

    def columns(self, connection: Connection, table: str) -> set[str]:
        """The column names of a table in the connection's schema."""
        rows = connection.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {row[0] for row in rows}

    def lock_for_migration(self, connection: Connection) -> None:
        """Processes starting together migrate one after the other."""
        connection.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")

    def ping(self) -> None:
        """Open a connection of its own and run one statement (the pool may hold broken ones)."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"postgresql at {self.where}: {exc}") from exc

    def leadership(self, name: str) -> Leadership:
        """A role held by one process at a time: a session advisory lock on a connection of
        its own, so a process that dies (or loses the database) lets another take it."""
        return AdvisoryLeadership(self, name)

    def connect(self, **options: Any) -> Any:
        """A connection of its own, outside the pool (LISTEN needs one held for long)."""
        import psycopg

        return psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT, **options)

    def open_connections(self) -> int:
        """Connections the pool holds now (idle or lent), at most its size."""
        return int(self._pool.get_stats().get("pool_size", 0))

    def close(self) -> None:
        """Close the pool."""
        self._pool.close(timeout=5)


class _PostgresConnection:
    """A psycopg connection taking the service's ``?`` placeholders."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        if not parameters:
            return self._connection.execute(sql)
        return self._connection.execute(_placeholders(sql), tuple(parameters))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        with self._connection.cursor() as cursor:
            cursor.executemany(_placeholders(sql), [tuple(row) for row in rows])


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


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(values, _index_of(tuple(column[0] for column in cursor.description)))


@lru_cache(maxsize=256)
def _index_of(names: tuple[str, ...]) -> dict[str, int]:
    return {name: position for position, name in enumerate(names)}


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    index = {column.name: position for position, column in enumerate(description)}
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


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
    if not url:
        return SQLiteDatabase(sqlite_path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    raise ValueError(f"not a postgresql:// or sqlite:/// URL: {_without_password(url)!r}")


def as_database(target: Database | Path | str) -> Database:
    """A Database for a Database, or for the path of a SQLite file."""
    if isinstance(target, Database):
        return target
    return SQLiteDatabase(Path(target))
