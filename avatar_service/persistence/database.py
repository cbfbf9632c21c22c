"""The service's database behind one thin SQL layer: SQLite (embedded default) or PostgreSQL.

Every table of the service (jobs, the queue, the outbox, the worker registry, the small tables
beside them) is reached through ``Database.transaction()``, which yields a connection with
``execute`` / ``executemany`` taking SQL written once with ``?`` placeholders. The SQL is kept to
what both engines speak (``RETURNING``, ``ON CONFLICT``); the few differences live here, in
``Dialect``. ``open_database`` picks the engine from ``DATABASE_URL``: empty means the SQLite
file in the instance folder, ``postgresql://...`` a PostgreSQL shared by every process.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

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
# A process without a role tries to take it at most this often (seconds).
LEADERSHIP_RETRY = 1.0


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (connection refused, lost, or the pool is exhausted)."""


class Cursor(Protocol):
    """What a statement answers: rows and the count of rows changed."""

    rowcount: int

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


class Database:
    """One database of the service; ``transaction()`` commits when the block ends."""

    dialect: Dialect
    # Where it is, for messages (a file path, or a URL without its password).
    where: str
    # The SQLite file (None for PostgreSQL).
    path: Path | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection; committed when the block ends, rolled back on error."""
        raise NotImplementedError
        yield  # pragma: no cover

    def run_script(self, script: str) -> None:
        """Run DDL statements written in SQLite's words (``CREATE ... IF NOT EXISTS``)."""
        raise NotImplementedError

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

    A connection is lent for one block and returned after it, so the number open stays at
    most the number of blocks running at once (``POOL_IDLE`` kept between them), however many
    threads the service starts over its life. A block nested in another on the same thread
    shares the outer block's connection and transaction.
    """

    dialect = SQLITE

    def __init__(self, path: Path, *, idle: int = POOL_IDLE) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._idle_max = idle
        self._idle: list[sqlite3.Connection] = []
        self._lent: set[sqlite3.Connection] = set()
        self._held = threading.local()
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
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool for the block, outside any transaction (migrations)."""
        held = getattr(self._held, "connection", None)
        if held is not None:
            yield held
            return
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open()
        with self._lock:
            self._lent.add(connection)
        self._held.connection = connection
        try:
            yield connection
        finally:
            self._held.connection = None
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
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection; committed when the block ends, rolled back on error."""
        if getattr(self._held, "connection", None) is not None:
            yield self._held.connection  # nested: part of the outer block's transaction
            return
        with self.connection() as connection, connection:
            yield connection

    def open_connections(self) -> int:
        """Connections open now (idle in the pool, or lent to a block)."""
        with self._lock:
            return len(self._idle) + len(self._lent)

    def run_script(self, script: str) -> None:
        """Run DDL statements in one go."""
        with self.transaction() as db:
            db.executescript(script)  # type: ignore[attr-defined]

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

        self.url = url
        self.where = _without_password(url)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": _row_factory, "connect_timeout": CONNECT_TIMEOUT},
            check=ConnectionPool.check_connection,
            timeout=POOL_TIMEOUT,
            open=False,
            name="avatar-service",
        )
        self._pool.open(wait=False)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection; committed when the block ends, rolled back on error."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as connection:
                yield _PostgresConnection(connection)
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"postgresql at {self.where}: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"postgresql at {self.where}: {exc}") from exc

    def run_script(self, script: str) -> None:
        """Run DDL statements written in SQLite's words, in one transaction."""
        with self.transaction() as db:
            self.lock_for_migration(db)
            db.execute(postgres_ddl(script))

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
        return _AdvisoryLeadership(self, name)

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


class Leadership:
    """A role held by one process at a time; ``held()`` tries to take it when free."""

    def held(self) -> bool:
        """Whether this process holds the role (taking it now if nobody does)."""
        return True

    def release(self) -> None:
        """Give the role up."""


class _AdvisoryLeadership(Leadership):
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


def ensure_schema(database: Database, schema: str) -> Database:
    """Create the tables of a small component (``CREATE ... IF NOT EXISTS``) and return the db."""
    database.run_script(schema)
    return database
