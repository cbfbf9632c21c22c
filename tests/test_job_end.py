"""A job's end and the deliveries it enqueues are one transaction: committed together, or not
at all; a failing end-of-job hook never changes the job's outcome.

The cheap form of the crash proof runs on SQLite: a real process is killed (SIGKILL) inside
the job's final transaction, after the final record is written and before any delivery is
stored, which is where the end used to be committed already. tests/test_fleet.py has the full
form on PostgreSQL (a worker killed while its delivery insert waits on a lock, and the job
taken over by another process).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from avatar_service.delivery.forwarding import AvatarForwarder
from avatar_service.delivery.job_end import forwarding_hook, webhook_hook
from avatar_service.delivery.webhooks import WebhookDispatcher
from avatar_service.jobs import Avatar, JobStatus
from avatar_service.jobs.coordination import Solo
from avatar_service.jobs.events import JobEvents
from avatar_service.jobs.ledger import JobLedger
from avatar_service.jobs.records import Job, JobRecords
from avatar_service.persistence.database import Database, open_database
from avatar_service.storage.avatars import AvatarStore
from tests.fleet import REPO_ROOT
from tests.receivers import Receiver
from tests.test_records import make_job

JOB_ID = "e" * 32
TIMEOUT = httpx.Timeout(5.0)


class Parts:
    """A ledger whose end hooks enqueue a webhook and the forwarding of the job's avatar."""

    def __init__(self, database: Database, avatar_dir: Path, *, url: str = "http://r/x") -> None:
        self.records = JobRecords(database)
        self.webhooks = WebhookDispatcher(database=database, secret=None, timeout=TIMEOUT)
        self.avatars = AvatarStore(avatar_dir)
        self.forwarder = AvatarForwarder(
            database=database, url=url, timeout=TIMEOUT, avatars=self.avatars
        )
        self.ledger = JobLedger(
            records=self.records, events=JobEvents(), coordination=Solo(self.records)
        )
        self.hooks = [
            forwarding_hook(self.forwarder),
            webhook_hook(self.webhooks, url),
        ]
        self.ledger.on_end.extend(self.hooks)

    def running_job(self) -> Job:
        """A running job with its avatar saved, as a worker has it just before the end."""
        job = make_job(JOB_ID)
        self.records.insert(job)
        return self.records.update(job, status="running", started_at=time.time())

    def succeed(self, job: Job) -> Job:
        """End the job as succeeded with its one avatar."""
        name = self.avatars.save(job.id, 0, b"\x89PNG\r\n\x1a\n avatar", "png")
        return self.ledger.finish(job, JobStatus.SUCCEEDED, None, avatars=[Avatar(name, 64, 64)])

    def deliveries(self) -> dict[str, int]:
        """How many deliveries of each kind the job has."""
        return {
            "webhook": len(self.webhooks.deliveries(JOB_ID)),
            "avatar": len(self.forwarder.deliveries(JOB_ID)),
        }


def crash_while_ending(db_path: str, avatar_dir: str) -> None:
    """Run in a child process: end the running job, and die (SIGKILL) in its final transaction
    right after the final record is written, before the first delivery is stored."""
    parts = Parts(open_database("", sqlite_path=Path(db_path)), Path(avatar_dir))

    def die(_job: Job, _body: dict) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    parts.ledger.on_end.insert(0, die)
    job = parts.records.get(JOB_ID)
    assert job is not None
    parts.succeed(job)


def test_a_process_killed_in_the_final_transaction_leaves_the_job_to_be_ended_again(tmp_path):
    """kill -9 between the final record and the delivery inserts: nothing of the end is
    committed (the job is still running, no delivery exists), so the process that takes the
    job up ends it with its deliveries, once each."""
    db_path, avatar_dir = tmp_path / "service.sqlite3", tmp_path / "avatars"
    avatar_dir.mkdir()
    parts = Parts(open_database("", sqlite_path=db_path), avatar_dir)
    parts.running_job()

    code = (
        "import sys; from tests.test_job_end import crash_while_ending; "
        "crash_while_ending(sys.argv[1], sys.argv[2])"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(db_path), str(avatar_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    [left] = parts.records.unfinished()
    assert (left.id, left.status, left.finished_at) == (JOB_ID, "running", None)
    assert parts.deliveries() == {"webhook": 0, "avatar": 0}
    ended = parts.succeed(left)
    assert parts.records.get(JOB_ID).status == ended.status == "succeeded"
    assert parts.deliveries() == {"webhook": 1, "avatar": 1}
    parts.records.close()


def test_a_failing_hook_is_undone_alone_and_the_job_still_ends(tmp_path, caplog):
    """A hook that stores a delivery and then fails: its delivery is rolled back with it (a
    savepoint), the other hooks' deliveries and the job's end are committed."""
    parts = Parts(open_database("", sqlite_path=tmp_path / "service.sqlite3"), tmp_path)
    job = parts.running_job()

    def half_done(done: Job, _body: dict) -> None:
        parts.webhooks.enqueue(
            job_id=done.id, url="http://other/x", event_type="job.succeeded", data={}
        )
        raise RuntimeError("this hook breaks after storing a delivery")

    parts.ledger.on_end.insert(1, half_done)

    ended = parts.succeed(job)

    assert ended.status == "succeeded"
    assert parts.records.get(JOB_ID).status == "succeeded"
    assert parts.deliveries() == {"webhook": 1, "avatar": 1}
    assert [d["url"] for d in parts.webhooks.deliveries(JOB_ID)] == ["http://r/x"]
    assert "an end-of-job hook failed" in caplog.text
    parts.records.close()


def test_a_job_whose_end_is_refused_enqueues_nothing(tmp_path):
    """An end that fails (here the record cannot be written) rolls back: no delivery is left
    behind for a job that did not end."""
    database = open_database("", sqlite_path=tmp_path / "service.sqlite3")
    parts = Parts(database, tmp_path)
    job = parts.running_job()
    with database.transaction() as db:  # a trigger refusing the final write
        db.execute(
            "CREATE TRIGGER refuse_end BEFORE UPDATE OF finished_at ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )

    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        parts.succeed(job)

    assert parts.records.get(JOB_ID).status == "running"
    assert parts.deliveries() == {"webhook": 0, "avatar": 0}
    parts.records.close()


def test_the_outbox_is_woken_after_the_commit_not_before(postgres_url, tmp_path):
    """A delivery stored inside a longer transaction is sent as soon as that transaction
    commits: woken earlier, the scheduler would find nothing and sleep its idle wait."""
    database = open_database(postgres_url, sqlite_path=tmp_path / "unused")
    with Receiver() as receiver:
        outbox = WebhookDispatcher(database=database, secret=None, timeout=TIMEOUT)
        outbox.start()

        def enqueue(job_id: str) -> None:
            outbox.enqueue(job_id=job_id, url=receiver.url(), event_type="job.failed", data={})

        try:
            with database.transaction():
                enqueue("late")
                # Another thread's enqueue commits at once and wakes the scheduler, which
                # sends it and then finds nothing more to send (``late`` is not committed).
                other = threading.Thread(target=enqueue, args=("early",))
                other.start()
                other.join(10)
                [early] = receiver.wait_for(1)
            [_, late] = receiver.wait_for(2, timeout=5)
            assert late.headers["webhook-id"] == outbox.deliveries("late")[0]["id"]
            assert early.headers["webhook-id"] == outbox.deliveries("early")[0]["id"]
        finally:
            outbox.stop()
            database.close()
