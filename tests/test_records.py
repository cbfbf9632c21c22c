"""Job records in SQLite: versioned migrations, and the queue's claim API on a real database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from avatar_service.jobs.records import Job, JobRecords
from avatar_service.persistence.database import Database, postgres_ddl
from avatar_service.persistence.migrations import (
    DELIVERIES_V1_SCHEMA,
    DELIVERIES_V2_SCHEMA,
    MIGRATIONS,
    V1_SCHEMA,
    V2_SCHEMA,
    V4_SCHEMA,
    migrate,
)
from avatar_service.persistence.sqlite import SQLiteDatabase
from avatar_service.photos.geometry import Box, Crop


def make_job(job_id: str, *, style: str = "avatar", created_at: float | None = None) -> Job:
    created = time.time() if created_at is None else created_at
    return Job(
        id=job_id,
        status="queued",
        style=style,
        image_name="photo.png",
        gender="neutral",
        width=64,
        height=64,
        seed=1,
        base_url="http://service",
        deadline=created + 600,
        created_at=created,
        queue_order=created,
    )


def version_of(path: Path, component: str) -> int:
    """The schema version a database file records for a component."""
    connection = sqlite3.connect(path)
    try:
        row = connection.execute(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        ).fetchone()
    finally:
        connection.close()
    return row[0]


@pytest.fixture
def records(tmp_path: Path):
    """A job store on a fresh database file."""
    store = JobRecords(tmp_path / "jobs.sqlite3")
    yield store
    store.close()


def test_old_database_is_upgraded_not_broken(tmp_path: Path):
    """A database of the first schema (no version recorded) is migrated; its jobs are kept."""
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(V1_SCHEMA)
    connection.execute(
        "INSERT INTO jobs (id, status, style, image_name, gender, width, height, seed, base_url,"
        " server, prompt_id, created_at, deadline) VALUES ('a' || hex(randomblob(15)), 'running',"
        " 'avatar', 'p.png', 'male', 64, 64, '7', 'http://s', 'http://gpu:8188', 'p-1', 100.0,"
        " 700.0)"
    )
    connection.commit()
    connection.close()

    store = JobRecords(path)
    try:
        [job] = store.unfinished()
        assert (job.status, job.server, job.prompt_id, job.seed) == (
            "running",
            "http://gpu:8188",
            "p-1",
            7,
        )
        assert job.queue_order == 100.0
        assert job.owner is None
        assert version_of(path, "jobs") == len(MIGRATIONS)
    finally:
        store.close()
    JobRecords(path).close()  # opening again changes nothing
    assert version_of(path, "jobs") == len(MIGRATIONS)


def test_new_database_starts_at_the_newest_version(tmp_path: Path):
    """A fresh database gets every migration and records the newest version."""
    path = tmp_path / "new.sqlite3"
    JobRecords(path).close()
    assert version_of(path, "jobs") == len(MIGRATIONS)
    connection = sqlite3.connect(path)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "abandoned_prompts"} <= tables


def test_jobs_are_queried_by_status_through_one_index(tmp_path: Path):
    """The index on status alone is gone (version 9): jobs_waiting, which begins with status,
    serves the queries by status, and a change of status writes one index less."""
    path = tmp_path / "new.sqlite3"
    JobRecords(path).close()
    connection = sqlite3.connect(path)
    indexes = {
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs' "
            "AND sql IS NOT NULL"
        )
    }
    assert indexes == {"jobs_waiting", "jobs_owner"}
    plan = connection.execute(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
    ).fetchall()
    assert "jobs_waiting" in plan[0][3]


def test_claim_takes_the_oldest_waiting_job_once(records: JobRecords):
    """Claims come in queue order, each job once, and name the worker that holds it."""
    for index, job_id in enumerate(["a" * 32, "b" * 32, "c" * 32]):
        records.insert(make_job(job_id, created_at=1000.0 + index))
    first = records.claim_next("http://gpu1", "worker-1")
    second = records.claim_next("http://gpu2", "worker-2")
    assert (first.id, first.server, first.owner) == ("a" * 32, "http://gpu1", "worker-1")
    assert (second.id, second.server) == ("b" * 32, "http://gpu2")
    assert [job.id for job in records.waiting()] == ["c" * 32]
    assert records.claim_next("http://gpu1", "worker-1").id == "c" * 32
    assert records.claim_next("http://gpu1", "worker-1") is None


def test_claim_skips_styles_a_server_may_not_run(records: JobRecords):
    """A server that withholds a style gets the next job of another style."""
    records.insert(make_job("a" * 32, style="cartoon", created_at=1.0))
    records.insert(make_job("b" * 32, style="avatar", created_at=2.0))
    assert records.claim_next("http://gpu1", "w", exclude_styles={"cartoon"}).id == "b" * 32
    assert records.claim_next("http://gpu1", "w", exclude_styles={"cartoon"}) is None


def test_job_given_back_goes_to_the_head_of_the_queue(records: JobRecords):
    """A claimed job put back at the front is taken before jobs queued earlier than it."""
    records.insert(make_job("a" * 32, created_at=1.0))
    records.insert(make_job("b" * 32, created_at=2.0))
    records.insert(make_job("c" * 32, created_at=3.0))
    claimed = records.claim_next("http://gpu1", "w")
    claimed_b = records.claim_next("http://gpu1", "w")
    records.requeue(records.update(claimed_b, prompt_id="p-b"), front=True)
    records.requeue(records.update(claimed, prompt_id="p-a"), front=True)
    assert [job.id for job in records.waiting()] == ["a" * 32, "b" * 32, "c" * 32]
    again = records.claim_next("http://gpu2", "w2")
    assert (again.id, again.prompt_id, again.server) == ("a" * 32, None, "http://gpu2")


def test_a_taken_waiting_job_cannot_be_claimed(records: JobRecords):
    """Cancel and claim race for a waiting job: exactly one of them gets it."""
    records.insert(make_job("a" * 32))
    assert records.take_waiting("a" * 32) is not None
    assert records.claim_next("http://gpu1", "w") is None
    assert records.take_waiting("a" * 32) is None
    records.insert(make_job("b" * 32))
    assert records.claim_next("http://gpu1", "w").id == "b" * 32
    assert records.take_waiting("b" * 32) is None


def test_webhook_tables_of_an_old_database_become_the_outbox(tmp_path: Path):
    """A pending webhook stored by the first schema is kept, as a webhook, in the new outbox."""
    import httpx

    from avatar_service.delivery.webhooks import WebhookDispatcher

    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(DELIVERIES_V1_SCHEMA)
    connection.execute(
        "INSERT INTO webhook_deliveries (id, job_id, url, event_type, body, state, attempt_count,"
        " next_attempt_at, created_at, updated_at) VALUES ('msg_1', 'j1', 'http://r/x',"
        " 'job.failed', X'7B7D', 'pending', 0, 1.0, 1.0, 1.0)"
    )
    connection.commit()
    connection.close()

    outbox = WebhookDispatcher(db_path=path, secret=None, timeout=httpx.Timeout(1.0))
    [delivery] = outbox.deliveries("j1")
    assert (delivery["id"], delivery["state"], delivery["eventType"]) == (
        "msg_1",
        "pending",
        "job.failed",
    )
    assert version_of(path, "jobs") == len(MIGRATIONS)  # the outbox's version is in the one list


def test_database_that_already_has_the_crop_column_is_upgraded(tmp_path: Path):
    """A database whose store added ``crop`` by itself (no versions recorded) keeps its crops."""
    path = tmp_path / "cropped.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(V1_SCHEMA)
    connection.execute("ALTER TABLE jobs ADD COLUMN crop TEXT")
    connection.execute(
        "INSERT INTO jobs (id, status, style, image_name, gender, width, height, seed, base_url,"
        " created_at, deadline, crop) VALUES (?, 'queued', 'avatar', 'p.png', 'male', 64, 64, '7',"
        " 'http://s', 100.0, 700.0, ?)",
        ("c" * 32, '{"x": 1, "y": 2, "width": 30, "height": 30, "source": "face"}'),
    )
    connection.commit()
    connection.close()

    store = JobRecords(path)
    try:
        [job] = store.waiting()
        assert job.crop == Crop(Box(1, 2, 30, 30), "face")
        assert job.to_dict()["crop"] == {
            "x": 1,
            "y": 2,
            "width": 30,
            "height": 30,
            "source": "face",
        }
        assert version_of(path, "jobs") == len(MIGRATIONS)
    finally:
        store.close()


# Every table of the service, as a fresh database has them.
TABLES = {
    "schema_versions",
    "jobs",
    "abandoned_prompts",
    "workers",
    "job_previews",
    "deliveries",
    "delivery_attempts",
    "job_owners",
    "idempotency_keys",
    "deleted_avatars",
    "photo_owners",
}

# The tables the HTTP layer and retention created when a service of the release before the one
# migration list started (``CREATE ... IF NOT EXISTS``, outside any version), as it shipped.
PREVIOUS_SMALL_TABLES = """
CREATE TABLE IF NOT EXISTS job_owners (
    job_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS deleted_avatars (
    file_name TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deleted_avatars_job ON deleted_avatars(job_id);
"""


def make_previous_release_database(database: Database, outbox: str = "v2") -> None:
    """Leave a database as the release before the one migration list did: the job tables at
    version 4, the small tables, and the outbox's own component (``outbox``: "v2" recorded,
    "v1" from before versions were recorded, "none": never used), with a row in each."""
    scripts = [V1_SCHEMA, V2_SCHEMA, "ALTER TABLE jobs ADD COLUMN crop TEXT", V4_SCHEMA]
    scripts += {
        "v2": [DELIVERIES_V1_SCHEMA, DELIVERIES_V2_SCHEMA],
        "v1": [DELIVERIES_V1_SCHEMA],
    }.get(outbox, [])
    scripts.append(PREVIOUS_SMALL_TABLES)
    scripts.append(
        "CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    job = make_job("d" * 32)
    with database.transaction() as db:
        for script in scripts:
            if database.dialect.shared:
                script = postgres_ddl(script)
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("INSERT INTO schema_versions VALUES ('jobs', 4)")
        db.execute(
            "INSERT INTO jobs (id, status, style, image_name, gender, width, height, seed,"
            " base_url, created_at, deadline, queue_order) VALUES (?, 'succeeded', 'avatar',"
            " 'p.png', 'male', 64, 64, '7', 'http://s', ?, ?, ?)",
            (job.id, job.created_at, job.deadline, job.queue_order),
        )
        if outbox != "none":
            table = "deliveries" if outbox == "v2" else "webhook_deliveries"
            db.execute(
                f"INSERT INTO {table} (id, job_id, url, event_type, body, state, attempt_count,"
                " next_attempt_at, created_at, updated_at) VALUES ('msg_1', ?, 'http://r/x',"
                " 'job.succeeded', ?, 'pending', 0, 1.0, 1.0, 1.0)",
                (job.id, b"{}"),
            )
        if outbox == "v2":
            db.execute("INSERT INTO schema_versions VALUES ('deliveries', 2)")
        db.execute("INSERT INTO job_owners VALUES (?, 'key_1')", (job.id,))
        db.execute(
            "INSERT INTO idempotency_keys VALUES ('key_1', 'k', 'hash', ?, ?)",
            (job.id, time.time()),
        )
        db.execute("INSERT INTO deleted_avatars VALUES (?, ?, 5.0)", (f"{job.id}_0.png", job.id))


def check_previous_release_upgraded(database: Database, outbox: str) -> None:
    """Every row of ``make_previous_release_database`` reads back through the service's parts."""
    import httpx

    from avatar_service.delivery.webhooks import WebhookDispatcher
    from avatar_service.http.access import Access
    from avatar_service.http.idempotency import IdempotencyKeys
    from avatar_service.storage.local import LocalFolders
    from avatar_service.storage.retention import Retention

    job_id = "d" * 32
    assert JobRecords(database).get(job_id).status == "succeeded"
    outbox_ = WebhookDispatcher(database=database, secret=None, timeout=httpx.Timeout(1.0))
    states = [(d["id"], d["state"], d["eventType"]) for d in outbox_.deliveries(job_id)]
    assert states == ([] if outbox == "none" else [("msg_1", "pending", "job.succeeded")])
    access = Access(keys=[], admin_keys=[], secret=b"s", token_ttl=60, database=database)
    assert access.owner(job_id) == "key_1"
    found = IdempotencyKeys(database, ttl=3600).reserve("key_1", "k", "hash")
    assert (found.new, found.job_id) == (False, job_id)
    retention = Retention(
        database=database,
        files=LocalFolders(photos=Path("."), avatars=Path(".")),
        max_age_hours=0,
        interval=60,
        in_use=list,
    )
    assert retention.deleted_at(f"{job_id}_0.png") == 5.0


@pytest.mark.parametrize("outbox", ["v2", "v1", "none"])
def test_database_of_the_previous_release_joins_the_one_list(tmp_path: Path, outbox: str):
    """Job tables at version 4, the outbox at any version of its own list, and the small tables
    made on start: one migration brings all to the newest version and keeps every row."""
    path = tmp_path / "previous.sqlite3"
    database = SQLiteDatabase(path)
    make_previous_release_database(database, outbox)

    assert migrate(database) == 4
    check_previous_release_upgraded(database, outbox)
    database.close()

    assert version_of(path, "jobs") == len(MIGRATIONS)
    connection = sqlite3.connect(path)
    try:
        tables = {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    finally:
        connection.close()
    assert tables == TABLES
    again = SQLiteDatabase(path)
    assert migrate(again) == len(MIGRATIONS)  # a later start finds nothing to do
    again.close()


def test_a_new_database_has_every_table_of_the_service(tmp_path: Path):
    """One migration creates every table: jobs, queue, fleet, outbox and the small tables."""
    path = tmp_path / "new.sqlite3"
    database = SQLiteDatabase(path)
    assert migrate(database) == 0
    assert migrate(database) == len(MIGRATIONS)  # once per database: the second call is free
    database.close()
    connection = sqlite3.connect(path)
    try:
        tables = {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        rows = connection.execute("SELECT component, version FROM schema_versions").fetchall()
    finally:
        connection.close()
    assert tables == TABLES
    assert rows == [("jobs", len(MIGRATIONS))]


def test_a_failing_step_leaves_the_database_as_it_was(tmp_path: Path):
    """The steps run in one transaction: a database that cannot be upgraded is not half done."""
    path = tmp_path / "odd.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY)"
    )  # not the service's: no created_at
    connection.commit()
    connection.close()
    database = SQLiteDatabase(path)
    with pytest.raises(sqlite3.OperationalError):
        migrate(database)
    database.close()
    connection = sqlite3.connect(path)
    try:
        tables = {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        columns = [r[1] for r in connection.execute("PRAGMA table_info(jobs)")]
    finally:
        connection.close()
    assert tables == {"jobs"}
    assert columns == ["id"]
