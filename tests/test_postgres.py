"""Job records, the queue's claims and the outbox on a real PostgreSQL shared by many stores."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from avatar_service.delivery.webhooks import WebhookDispatcher
from avatar_service.jobs import JobProgress
from avatar_service.jobs.records import JobRecords
from avatar_service.persistence.database import open_database
from avatar_service.persistence.migrations import MIGRATIONS, migrate
from avatar_service.persistence.postgres import PostgresDatabase
from tests.helpers import wait_for
from tests.receivers import Receiver
from tests.test_records import (
    TABLES,
    check_previous_release_upgraded,
    make_job,
    make_previous_release_database,
)


@pytest.fixture
def open_store(postgres_url: str, tmp_path):
    """Open job stores on the test's schema, each with its own connection pool (as processes)."""
    opened: list[JobRecords] = []

    def open_one() -> JobRecords:
        store = JobRecords(open_database(postgres_url, sqlite_path=tmp_path / "unused"))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def test_database_url_opens_postgresql_and_migrates_to_the_newest_version(open_store):
    """A postgresql:// DATABASE_URL gives a shared database with every migration applied once."""
    store = open_store()
    assert isinstance(store.database, PostgresDatabase)
    assert store.database.dialect.shared
    assert store.path is None
    open_store()  # a second process opening the same database changes nothing
    with store.database.transaction() as db:
        rows = db.execute("SELECT component, version FROM schema_versions").fetchall()
        kinds = db.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'jobs' "
            "AND column_name IN ('created_at', 'deadline', 'lease_expires')"
        ).fetchall()
    assert {row[0]: row[1] for row in rows} == {"jobs": len(MIGRATIONS)}
    assert [row[0] for row in kinds] == ["double precision"] * 3


def test_processes_starting_together_migrate_once(open_store):
    """Stores opened at the same moment on an empty schema all start; versions are recorded once."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_store()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    store = open_store()
    with store.database.transaction() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM schema_versions").fetchone()
    assert count == 1


def test_a_new_schema_has_every_table_of_the_service(open_store):
    """One migration list creates every table on PostgreSQL too."""
    store = open_store()
    with store.database.transaction() as db:
        rows = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    assert {row[0] for row in rows} == TABLES


@pytest.mark.parametrize("outbox", ["v2", "none"])
def test_a_schema_of_the_previous_release_joins_the_one_list(postgres_url, tmp_path, outbox):
    """Job tables at version 4, the outbox's own component and the small tables made on start:
    migrated to the newest version with every row kept."""
    database = open_database(postgres_url, sqlite_path=tmp_path / "unused")
    try:
        make_previous_release_database(database, outbox)
        assert migrate(database) == 4
        check_previous_release_upgraded(database, outbox)
        with database.transaction() as db:
            (version,) = db.execute(
                "SELECT version FROM schema_versions WHERE component = 'jobs'"
            ).fetchone()
        assert version == len(MIGRATIONS)
    finally:
        database.close()


def test_a_record_reads_back_exactly(open_store):
    """Times keep their sub-second precision, JSON columns and flags come back as written."""
    store = open_store()
    job = make_job("a" * 32, created_at=1_790_000_000.123456)
    store.insert(job)
    progress = JobProgress("3", value=2)
    store.update(job, progress=progress, cancel_requested=True, seed=2**53 - 1)
    read = open_store().get(job.id)
    assert read is not None
    assert read.created_at == 1_790_000_000.123456
    assert read.progress == progress
    assert read.cancel_requested is True
    assert read.seed == 2**53 - 1
    assert read.avatars == [] and read.timings == {}


def test_claims_from_many_processes_never_take_one_job_twice(open_store):
    """Four stores (four pools, as four worker processes) claim 120 jobs at once: each once."""
    first = open_store()
    now = time.time()
    ids = [f"{index:032x}" for index in range(120)]
    for index, job_id in enumerate(ids):
        first.insert(make_job(job_id, created_at=now + index / 1000))
    claimed: Counter[str] = Counter()
    lock = threading.Lock()

    def claim_all(store: JobRecords, owner: str) -> None:
        while True:
            job = store.claim_next(f"http://gpu-{owner}", owner)
            if job is None:
                return
            assert job.owner == owner and job.server == f"http://gpu-{owner}"
            with lock:
                claimed[job.id] += 1

    stores = [open_store() for _ in range(4)]
    threads = [
        threading.Thread(target=claim_all, args=(store, f"w{index}"))
        for index, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == ids
    assert set(claimed.values()) == {1}
    assert first.count_waiting() == 0


def test_claims_take_the_oldest_job_a_server_may_run(open_store):
    """A claim skips styles the server withholds and takes the head of the queue first."""
    store = open_store()
    now = time.time()
    store.insert(make_job("1" * 32, style="sketch", created_at=now))
    store.insert(make_job("2" * 32, created_at=now + 1))
    store.insert(make_job("3" * 32, created_at=now + 2))
    claimed = store.claim_next("http://gpu", "w", exclude_styles={"sketch"})
    assert claimed is not None and claimed.id == "2" * 32
    back = store.requeue(claimed, front=True)
    assert [job.id for job in store.waiting()] == ["2" * 32, "1" * 32, "3" * 32]
    assert back.owner is None and back.server is None


def _race(store_a: JobRecords, store_b: JobRecords, job_id: str) -> dict[str, object]:
    """Cancel (take_waiting) on one store and claim on the other, released at one moment."""
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def cancel() -> None:
        barrier.wait()
        results["cancel"] = store_a.take_waiting(job_id)

    def claim() -> None:
        barrier.wait()
        results["claim"] = store_b.claim_next("http://gpu", "w")

    threads = [threading.Thread(target=cancel), threading.Thread(target=claim)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_a_cancel_and_a_claim_racing_for_one_job_have_one_winner(open_store):
    """take_waiting (cancel) and claim_next (a worker) on one job: exactly one of them gets it."""
    store_a, store_b = open_store(), open_store()
    for round_ in range(20):
        job_id = f"{round_:032x}"
        store_a.insert(make_job(job_id))
        results = _race(store_a, store_b, job_id)
        winners = [name for name, job in results.items() if job is not None]
        assert len(winners) == 1, results


def test_abandoned_prompts_are_remembered_once(open_store):
    """Abandoning one prompt twice keeps one row with the latest job; forgetting removes it."""
    store = open_store()
    store.abandon_prompt("http://gpu", "p1", "a" * 32)
    store.abandon_prompt("http://gpu", "p1", "b" * 32)
    assert [(p.prompt_id, p.job_id) for p in store.abandoned_prompts("http://gpu")] == [
        ("p1", "b" * 32)
    ]
    store.forget_abandoned("http://gpu", "p1")
    assert store.abandoned_prompts("http://gpu") == []


def test_two_processes_sharing_the_outbox_deliver_each_webhook_once(postgres_url, tmp_path):
    """Two webhook outboxes on one database: 30 deliveries reach the receiver once each."""
    databases = [open_database(postgres_url, sqlite_path=tmp_path / "x") for _ in range(2)]
    outboxes = [
        WebhookDispatcher(database=database, secret=None, timeout=httpx.Timeout(5.0))
        for database in databases
    ]
    with Receiver() as receiver:
        try:
            for outbox in outboxes:
                outbox.start()
            for index in range(30):
                outboxes[index % 2].enqueue(
                    job_id=f"{index:032x}",
                    url=receiver.url(),
                    event_type="job.succeeded",
                    data={"n": index},
                )
            receiver.wait_for(30, timeout=20)
            wait_for(
                lambda: all(
                    outboxes[0].deliveries(f"{i:032x}")[0]["state"] == "delivered"
                    for i in range(30)
                ),
                timeout=10,
            )
            ids = Counter(request.headers["webhook-id"] for request in receiver.received)
        finally:
            for outbox in outboxes:
                outbox.stop()
            for database in databases:
                database.close()
    assert len(ids) == 30
    assert set(ids.values()) == {1}
