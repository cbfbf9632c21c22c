"""Transactions of the service's database on both engines: nested blocks are savepoints of the
outer transaction, commit happens once at the outermost end, and ``after_commit`` runs then."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from avatar_service.persistence.database import Database, TransactionLost, open_database
from avatar_service.persistence.postgres import PostgresDatabase
from avatar_service.persistence.sqlite import SQLiteDatabase

# What each engine raises for a duplicate key.
DUPLICATE = (sqlite3.IntegrityError, psycopg.errors.UniqueViolation)


class Boom(Exception):
    """An error raised on purpose inside a block."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.live)])
def open_db(request, tmp_path: Path) -> Iterator[Callable[..., Database]]:
    """Open databases on one store (a SQLite file, or the test's PostgreSQL schema), each as a
    process of its own would; a ``notes`` table is there to write to. All closed afterwards."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    opened: list[Database] = []

    def open_one(**options) -> Database:
        if url:
            database = PostgresDatabase(url, **options)
        else:
            database = open_database("", sqlite_path=tmp_path / "db.sqlite3")
        opened.append(database)
        return database

    with open_one().transaction() as db:
        db.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)")
    yield open_one
    for database in opened:
        database.close()


def notes(database: Database) -> list[str]:
    """The notes committed, as another process sees them."""
    with database.transaction() as db:
        return [row[0] for row in db.execute("SELECT id FROM notes ORDER BY id").fetchall()]


def add(db, note: str) -> None:
    db.execute("INSERT INTO notes (id) VALUES (?)", (note,))


def test_a_nested_block_commits_with_the_outer_one_only(open_db):
    """The inner block's write is committed when the outermost block ends, not before."""
    database, other = open_db(), open_db()
    with database.transaction() as outer:
        add(outer, "a")
        with database.transaction() as inner:
            assert inner is outer  # the same connection
            add(inner, "b")
        assert notes(other) == []
    assert notes(other) == ["a", "b"]


def test_a_nested_block_after_reads_only_does_not_commit_by_itself(open_db):
    """An outer block that only read before: the savepoint's release commits nothing (SQLite's
    savepoint outside a transaction would), and an error later undoes the inner write too."""
    database, other = open_db(), open_db()
    with pytest.raises(Boom), database.transaction() as outer:
        assert outer.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0
        with database.transaction() as inner:
            add(inner, "b")
        assert notes(other) == []
        raise Boom
    assert notes(other) == []


def test_an_error_in_a_nested_block_undoes_only_that_block(open_db):
    """The inner block's writes are rolled back, its error propagates, the outer block goes on
    and commits its own writes (before and after the inner block)."""
    database, other = open_db(), open_db()
    with database.transaction() as outer:
        add(outer, "a")
        with pytest.raises(Boom), database.transaction() as inner:
            add(inner, "b")
            raise Boom
        add(outer, "c")
    assert notes(other) == ["a", "c"]


def test_a_failed_statement_in_a_nested_block_leaves_the_outer_usable(open_db):
    """A statement the database refuses (a duplicate key) inside a nested block: the outer
    transaction is still usable afterwards (PostgreSQL would otherwise refuse every statement)."""
    database, other = open_db(), open_db()
    with database.transaction() as outer:
        add(outer, "a")
        with pytest.raises(DUPLICATE), database.transaction() as inner:
            add(inner, "a")
        add(outer, "b")
    assert notes(other) == ["a", "b"]


def test_an_error_in_the_outer_block_undoes_the_nested_blocks(open_db):
    """Released savepoints are part of the outer transaction: its rollback takes them too."""
    database, other = open_db(), open_db()
    with pytest.raises(Boom), database.transaction() as outer:
        with database.transaction() as inner:
            add(inner, "b")
        add(outer, "a")
        raise Boom
    assert notes(other) == []


def test_blocks_nest_more_than_one_deep(open_db):
    """Each level is a savepoint of its own: an error two levels down keeps the level above."""
    database, other = open_db(), open_db()
    with database.transaction() as first:
        add(first, "a")
        with database.transaction() as second:
            add(second, "b")
            with pytest.raises(Boom), database.transaction() as third:
                add(third, "c")
                raise Boom
            add(second, "d")
    assert notes(other) == ["a", "b", "d"]


def test_after_commit_runs_once_the_outermost_block_has_committed(open_db):
    """A callback registered in a nested block runs after the outer commit: the write is
    visible to other processes by then."""
    database, other = open_db(), open_db()
    seen: list[list[str]] = []
    with database.transaction() as outer:
        add(outer, "a")
        with database.transaction():
            database.after_commit(lambda: seen.append(notes(other)))
        assert seen == []
    assert seen == [["a"]]


def test_after_commit_is_discarded_on_rollback(open_db):
    """Rolled back (the whole transaction, or only the savepoint it was registered in): the
    callback never runs; one registered in the outer block still does."""
    database = open_db()
    ran: list[str] = []
    with pytest.raises(Boom), database.transaction():
        database.after_commit(lambda: ran.append("outer rolled back"))
        raise Boom
    with database.transaction():
        database.after_commit(lambda: ran.append("outer"))
        with pytest.raises(Boom), database.transaction():
            database.after_commit(lambda: ran.append("inner rolled back"))
            raise Boom
    assert ran == ["outer"]


def test_after_commit_runs_at_once_without_a_transaction(open_db):
    """Outside any block of this thread the callback runs immediately."""
    ran: list[str] = []
    open_db().after_commit(lambda: ran.append("now"))
    assert ran == ["now"]


def test_a_failing_after_commit_callback_does_not_undo_the_block(open_db, caplog):
    """The transaction is committed: a callback's error is logged, the next callback runs."""
    database, other = open_db(), open_db()
    ran: list[str] = []

    def fail() -> None:
        raise Boom

    with database.transaction() as db:
        add(db, "a")
        database.after_commit(fail)
        database.after_commit(lambda: ran.append("second"))
    assert notes(other) == ["a"]
    assert ran == ["second"]
    assert "a callback run after a commit failed" in caplog.text


def test_blocks_of_other_threads_are_transactions_of_their_own(open_db):
    """A block opened by another thread while this one has a block open does not join it."""
    database, other = open_db(), open_db()
    done = threading.Event()

    def write() -> None:
        with database.transaction() as db:
            add(db, "t")
        done.set()

    with database.transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0
        thread = threading.Thread(target=write)
        thread.start()
        assert done.wait(10)
        thread.join(10)
        assert notes(other) == ["t"]


def test_a_transaction_ended_inside_a_nested_block_is_not_committed_as_if_whole(open_db):
    """When the whole transaction ends under a nested block (here an explicit ROLLBACK, as
    SQLite does by itself on some errors), the outer block fails instead of committing."""
    database, other = open_db(), open_db()
    with pytest.raises(TransactionLost), database.transaction() as outer:
        add(outer, "a")
        with pytest.raises(Boom), database.transaction() as inner:
            inner.execute("ROLLBACK")
            raise Boom
    assert notes(other) == []


def test_nested_blocks_on_postgresql_take_no_second_connection(postgres_url):
    """With a pool of one connection a nested block still runs (it shares the outer one)."""
    database = PostgresDatabase(postgres_url, pool_size=1)
    try:
        with database.transaction() as outer:
            outer.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)")
            with database.transaction() as inner:
                add(inner, "a")
        assert notes(database) == ["a"]
    finally:
        database.close()


def test_sqlite_lends_one_connection_to_nested_blocks(tmp_path: Path):
    """Nested blocks on SQLite use the outer block's pooled connection, none more."""
    database = SQLiteDatabase(tmp_path / "db.sqlite3")
    try:
        with database.transaction(), database.transaction():
            assert database.open_connections() == 1
    finally:
        database.close()
