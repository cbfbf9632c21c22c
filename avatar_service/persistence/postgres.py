"""A PostgreSQL shared by every process of a fleet: a psycopg 3 pool, failing fast when the
database is gone and back within a couple of seconds when it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from .database import (
    POSTGRESQL,
    Connection,
    Cursor,
    Database,
    DatabaseUnavailable,
    Row,
    _without_password,
)
from .leadership import AdvisoryLeadership, Leadership

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


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    index = {column.name: position for position, column in enumerate(description)}
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")
